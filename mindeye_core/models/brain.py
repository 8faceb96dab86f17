"""MindEye's high-level brain model: residual MLP backbone (voxels -> tokens) + per-token MLP projector.

Architecture (official code, ``BrainNetwork``; paper Algorithm 1 has typos, see below)::

    h0      = Dropout_0.5( GELU( LN( W0 x + b0 ) ) )                 x: (B, n_voxels) -> (B, hidden)
    h_{k+1} = Dropout_0.15( GELU( LN( Wk h_k + bk ) ) ) + h_k         k = 0..n_blocks-1 (residual)
    tokens  = reshape( W1 h_n + b1, (B, n_tokens, dim) )              backbone output (diffusion prior input)
    proj    = Linear(2048->dim)( GELU( LN( Linear(2048->2048)( GELU( LN( Linear(dim->2048)( GELU( LN(tokens) ))))))))
                                                                      per token; contrastive (retrieval) output

Parameter count for NSD subject 1 (``n_voxels=15724, hidden=4096, 257 x 768``):

- backbone (``lin0`` + LayerNorm + 4 blocks + ``lin1``): **940,225,280** (the paper's "940 million");
- projector: 7,354,624;
- whole module: **947,579,904**. This is the number the official training script prints
  (``utils.count_params(voxel2clip)`` on ``BrainNetwork`` *including* its projector).

Paper vs code (we follow the code): Algorithm 1 prints ``lin0`` and the blocks without biases, the
blocks as ``Linear(in_dim, h)`` and the projector's middle layer as ``Linear(clip_size, 2048)``; the
released code has biases everywhere, blocks ``Linear(h, h)`` and a ``Linear(2048, 2048)`` middle layer.

Shapes: ``forward(voxels (B, n_voxels)) -> (backbone_tokens (B, n_tokens, dim), projector_tokens
(B, n_tokens, dim))``. With ``use_projector=False`` (the "backbone + prior" ablation) both outputs are
the backbone tokens.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError, DataFormatError
from ..io import ConfigModule

__all__ = ["BrainMLP", "MindEyeHighLevel", "ResidualMLPBackbone", "check_voxels", "load_official_brain_checkpoint"]


def check_voxels(x: torch.Tensor, n_voxels: int, model: str) -> None:
    """Raise :class:`DataFormatError` (a ``ValueError``) unless ``x`` is a finite ``(B, n_voxels)`` tensor
    (NaN / inf voxels would silently give NaN tokens)."""
    if not isinstance(x, torch.Tensor):
        raise DataFormatError(f"{model}: voxels must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise DataFormatError(f"{model}: voxels must be (batch, {n_voxels}), got shape {tuple(x.shape)}")
    if x.shape[1] != n_voxels:
        raise DataFormatError(f"{model}: expected {n_voxels} voxels (n_voxels), got {x.shape[1]}")
    # meta tensors (shape-only dry runs) have no values to check
    if x.is_floating_point() and not x.is_meta and not bool(torch.isfinite(x).all()):
        rows = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten()[:5].tolist()
        raise DataFormatError(f"{model}: voxels contain NaN or infinite values (rows {rows})")


class ResidualMLPBackbone(nn.Module):
    """``lin0`` + ``n_blocks`` residual blocks shared by the high- and low-level models.

    Each layer is ``Linear -> LayerNorm -> activation -> Dropout``; block ``k`` returns
    ``block_k(h) + h``. Output ``(B, hidden)``.
    """

    def __init__(
        self,
        n_voxels: int,
        hidden: int,
        n_blocks: int,
        act: type[nn.Module] = nn.GELU,
        dropout_in: float = 0.5,
        dropout_block: float = 0.15,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.lin0 = nn.Sequential(nn.Linear(n_voxels, hidden, bias=bias), nn.LayerNorm(hidden), act(), nn.Dropout(dropout_in))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden, bias=bias), nn.LayerNorm(hidden), act(), nn.Dropout(dropout_block))
            for _ in range(n_blocks)
        )
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin0(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False) + h
            else:
                h = block(h) + h
        return h


class BrainMLP(ConfigModule):
    """MindEye high-level backbone + projector (see module docstring for the formulas).

    Args:
        n_voxels: voxels of the subject (15724 for NSD subj01).
        hidden: MLP width ``h`` (4096).
        n_blocks: residual blocks (4).
        n_tokens: output tokens (257 for CLIP ViT-L/14 hidden states, 1 for the final embedding).
        dim: token width (768).
        proj_hidden: projector width (2048).
        use_projector: build the projector (False: contrastive loss goes on the backbone tokens).
        dropout_in: dropout after ``lin0`` (0.5).
        dropout_block: dropout inside each residual block (0.15).

    Gradient checkpointing (runtime switch, not part of the config): :meth:`enable_gradient_checkpointing`
    recomputes each residual block and the per-token projector in the backward pass, which removes
    the ``(B, 257, 2048)`` projector activations from memory at the cost of ~1 extra forward.
    """

    def __init__(
        self,
        n_voxels: int = 15724,
        hidden: int = 4096,
        n_blocks: int = 4,
        n_tokens: int = 257,
        dim: int = 768,
        proj_hidden: int = 2048,
        use_projector: bool = True,
        dropout_in: float = 0.5,
        dropout_block: float = 0.15,
    ) -> None:
        super().__init__()
        for name, value in (("n_voxels", n_voxels), ("hidden", hidden), ("n_tokens", n_tokens), ("dim", dim), ("proj_hidden", proj_hidden)):
            if int(value) != value or value < 1:
                raise ValueError(f"BrainMLP: {name} must be a positive integer, got {value!r}")
        if n_blocks < 0:
            raise ValueError(f"BrainMLP: n_blocks must be >= 0, got {n_blocks}")
        self.n_voxels = n_voxels
        self.n_tokens = n_tokens
        self.dim = dim
        self.backbone = ResidualMLPBackbone(n_voxels, hidden, n_blocks, nn.GELU, dropout_in, dropout_block, bias=True)
        self.lin1 = nn.Linear(hidden, n_tokens * dim)
        self.projector: nn.Module | None = None
        if use_projector:
            self.projector = nn.Sequential(
                nn.LayerNorm(dim),
                nn.GELU(),
                nn.Linear(dim, proj_hidden),
                nn.LayerNorm(proj_hidden),
                nn.GELU(),
                nn.Linear(proj_hidden, proj_hidden),
                nn.LayerNorm(proj_hidden),
                nn.GELU(),
                nn.Linear(proj_hidden, dim),
            )
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self, enabled: bool = True) -> "BrainMLP":
        """Turn activation checkpointing of the residual blocks and the projector on or off."""
        self.gradient_checkpointing = bool(enabled)
        self.backbone.gradient_checkpointing = bool(enabled)
        return self

    def num_parameters(self, part: str = "all") -> int:
        """Parameter count of ``"all"``, ``"backbone"`` (everything but the projector) or ``"projector"``.

        Works on the meta device (``with torch.device("meta"): BrainMLP()``), so NSD-size counts are instant.
        """
        proj = sum(p.numel() for p in self.projector.parameters()) if self.projector is not None else 0
        total = sum(p.numel() for p in self.parameters())
        if part == "all":
            return total
        if part == "backbone":
            return total - proj
        if part == "projector":
            return proj
        raise ValueError(f"part must be 'all', 'backbone' or 'projector', got {part!r}")

    def forward_backbone(self, voxels: torch.Tensor) -> torch.Tensor:
        """``(B, n_voxels) -> (B, n_tokens, dim)`` backbone tokens."""
        check_voxels(voxels, self.n_voxels, type(self).__name__)
        h = self.backbone(voxels)
        return self.lin1(h).reshape(voxels.shape[0], self.n_tokens, self.dim)

    def forward(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(backbone_tokens, projector_tokens)``, each ``(B, n_tokens, dim)``."""
        tokens = self.forward_backbone(voxels)
        if self.projector is None:
            return tokens, tokens
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            proj = checkpoint(self.projector, tokens, use_reentrant=False)
        else:
            proj = self.projector(tokens)
        return tokens, proj


class MindEyeHighLevel(ConfigModule):
    """The trained high-level unit: :class:`BrainMLP` (backbone + projector) + :class:`DiffusionPrior`.

    One checkpoint folder holds both. The training objective (see :mod:`mindeye_core.schedule`) is
    ``contrastive(projector_tokens, target) + prior_weight * prior_mse`` with ``prior_weight = 30``
    (the official code; the paper text says 0.3).

    Args:
        n_voxels, hidden, n_blocks, n_tokens, dim, proj_hidden, use_projector, dropout_in,
        dropout_block: passed to :class:`BrainMLP`.
        use_prior: build the diffusion prior.
        prior_depth, prior_heads, prior_dim_head, prior_timesteps, cond_drop_prob, image_drop_prob:
            passed to :class:`~mindeye_core.models.prior.DiffusionPrior` (``dim``/``num_tokens`` shared).
        prior_options: further :class:`~mindeye_core.models.prior.DiffusionPrior` keyword arguments
            (e.g. :data:`~mindeye_core.models.prior.OFFICIAL_257X768_STRUCTURE` for converted official
            checkpoints); may not repeat the arguments above.
    """

    def __init__(
        self,
        n_voxels: int = 15724,
        hidden: int = 4096,
        n_blocks: int = 4,
        n_tokens: int = 257,
        dim: int = 768,
        proj_hidden: int = 2048,
        use_projector: bool = True,
        dropout_in: float = 0.5,
        dropout_block: float = 0.15,
        use_prior: bool = True,
        prior_depth: int = 6,
        prior_heads: int = 12,
        prior_dim_head: int = 64,
        prior_timesteps: int = 100,
        cond_drop_prob: float = 0.2,
        image_drop_prob: float = 0.2,
        prior_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from .prior import DiffusionPrior

        options = dict(prior_options or {})
        shared = sorted(set(options) & {"dim", "num_tokens", "depth", "heads", "dim_head", "timesteps",
                                          "cond_drop_prob", "image_drop_prob"})
        if shared:
            raise ValueError(f"MindEyeHighLevel: prior_options may not set {shared} (use the prior_* arguments)")

        self.brain = BrainMLP(
            n_voxels=n_voxels,
            hidden=hidden,
            n_blocks=n_blocks,
            n_tokens=n_tokens,
            dim=dim,
            proj_hidden=proj_hidden,
            use_projector=use_projector,
            dropout_in=dropout_in,
            dropout_block=dropout_block,
        )
        self.prior: DiffusionPrior | None = None
        if use_prior:
            self.prior = DiffusionPrior(
                dim=dim,
                num_tokens=n_tokens,
                depth=prior_depth,
                heads=prior_heads,
                dim_head=prior_dim_head,
                timesteps=prior_timesteps,
                cond_drop_prob=cond_drop_prob,
                image_drop_prob=image_drop_prob,
                **options,
            )

    @property
    def n_voxels(self) -> int:
        return self.brain.n_voxels

    def enable_gradient_checkpointing(self, enabled: bool = True) -> "MindEyeHighLevel":
        self.brain.enable_gradient_checkpointing(enabled)
        return self

    def forward(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, n_voxels) -> (backbone_tokens, projector_tokens)``, each ``(B, n_tokens, dim)``."""
        return self.brain(voxels)

    def prior_loss(
        self, backbone_tokens: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion-prior ``(mse_loss, x0_prediction)`` for a batch (see :meth:`DiffusionPrior.forward`)."""
        if self.prior is None:
            raise RuntimeError("this MindEyeHighLevel was built with use_prior=False")
        return self.prior(backbone_tokens, target, generator=generator)

    @torch.no_grad()
    def sample_embeddings(
        self, voxels: torch.Tensor, *, generator: torch.Generator | None = None, cond_scale: float = 1.0
    ) -> torch.Tensor:
        """Voxels -> aligned target embeddings ``(B, n_tokens, dim)`` from the prior's sampling loop."""
        if self.prior is None:
            raise RuntimeError("this MindEyeHighLevel was built with use_prior=False")
        backbone, _ = self.brain(voxels)
        return self.prior.sample(backbone, generator=generator, cond_scale=cond_scale)


_OFFICIAL_BRAIN_RENAMES = (("lin0.", "backbone.lin0."), ("mlp.", "backbone.blocks."), ("lin1.", "lin1."),
                           ("projector.", "projector."))


def official_brain_key(key: str) -> str | None:
    """Our :class:`BrainMLP` key for an official ``BrainNetwork`` key (already without ``voxel2clip.``),
    or ``None`` when it is not a BrainNetwork tensor.

    Mapping: ``lin0.*`` -> ``backbone.lin0.*``, ``mlp.k.*`` -> ``backbone.blocks.k.*``, ``lin1.*`` and
    ``projector.*`` unchanged (same layer indices: Linear 0, LayerNorm 1 inside each block; projector
    layers 0..8).
    """
    for theirs, ours in _OFFICIAL_BRAIN_RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def official_brain_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the ``BrainNetwork`` tensors of an official MindEye state dict to :class:`BrainMLP` keys.

    Accepts the released training checkpoints' ``model_state_dict`` (keys ``voxel2clip.lin0.0.weight``,
    ``voxel2clip.mlp.3.1.bias``, ``voxel2clip.projector.8.weight``; prior keys ``net.*`` are left out)
    or a bare ``BrainNetwork`` state dict; ``module.`` / ``_orig_mod.`` prefixes are stripped.
    See :func:`official_brain_key` for the mapping. (The strict whole-checkpoint conversion, which
    accounts for every tensor, is :mod:`mindeye_core.official`.)
    """
    from ..official.checkpoint import strip_wrapper_prefixes

    out: dict[str, torch.Tensor] = {}
    for key, value in strip_wrapper_prefixes(state).items():
        ours = official_brain_key(key[len("voxel2clip."):] if key.startswith("voxel2clip.") else key)
        if ours is not None:
            out[ours] = value
    return out


def official_brain_config(state: Mapping[str, torch.Tensor], *, dim: int = 768, where: str = "checkpoint") -> dict[str, Any]:
    """:class:`BrainMLP` config inferred from renamed tensors (:func:`official_brain_state_dict`).

    ``n_voxels``/``hidden`` from ``lin0``, ``n_blocks`` from the block indices, ``n_tokens = out / dim``
    from ``lin1`` (``dim`` splits ``lin1``'s output into tokens; the checkpoint cannot tell it), and
    ``use_projector`` / ``proj_hidden`` from the projector.

    Raises:
        CheckpointError: no BrainNetwork tensors. ConfigMismatchError: ``lin1`` not a multiple of ``dim``.
    """
    from ..errors import ConfigMismatchError

    needed = ("backbone.lin0.0.weight", "lin1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{where}: no MindEye BrainNetwork tensors found (missing {missing})")
    hidden, n_voxels = state["backbone.lin0.0.weight"].shape
    n_blocks = len({int(m.group(1)) for k in state if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))})
    out_features = state["lin1.weight"].shape[0]
    if out_features % dim:
        raise ConfigMismatchError(f"{where}: lin1 has {out_features} outputs, not a multiple of dim={dim}")
    config: dict[str, Any] = {
        "n_voxels": int(n_voxels),
        "hidden": int(hidden),
        "n_blocks": n_blocks,
        "n_tokens": out_features // dim,
        "dim": dim,
        "use_projector": "projector.2.weight" in state,
    }
    if config["use_projector"]:
        config["proj_hidden"] = int(state["projector.2.weight"].shape[0])
    return config


def load_official_brain_checkpoint(path: str | Path, **config: Any) -> BrainMLP:
    """Build a :class:`BrainMLP` from an official MindEye checkpoint file (``.pth``/``.pt``).

    The file is read by :func:`mindeye_core.official.checkpoint.load_official_state_dict`
    (``torch.load(..., weights_only=True)``: no pickled code runs; the released files' pickled
    LR-scheduler state is replaced by inert stand-ins). The config is inferred from the tensor shapes
    (:func:`official_brain_config`); ``config`` may pin values (e.g. ``dim=768``, needed to split
    ``lin1``'s output into tokens; default 768), and any disagreement raises
    :class:`~mindeye_core.errors.ConfigMismatchError`. Prior tensors are ignored; to convert the whole
    checkpoint (every tensor accounted for) use ``mindeye convert-official``.

    Raises:
        CheckpointError: unreadable file or no BrainNetwork tensors in it.
    """
    from ..errors import ConfigMismatchError
    from ..official.checkpoint import load_official_state_dict

    path = Path(path)
    state = official_brain_state_dict(load_official_state_dict(path))
    inferred = official_brain_config(state, dim=int(config.get("dim", 768)), where=str(path))
    clash = {k: (inferred[k], v) for k, v in config.items() if k in inferred and inferred[k] != v}
    if clash:
        detail = ", ".join(f"{k}: checkpoint has {a!r}, expected {b!r}" for k, (a, b) in clash.items())
        raise ConfigMismatchError(f"{path} does not match the expected config ({detail})")
    model = BrainMLP(**{**config, **inferred})
    own = model.state_dict()
    wrong = sorted(set(own) ^ set(state)) + sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if wrong:
        raise CheckpointError(f"{path}: tensors do not match BrainMLP({model.config}): {wrong[:5]}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model
