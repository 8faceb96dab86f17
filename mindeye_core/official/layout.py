"""Key layout of MindEye's released checkpoints and its strict mapping onto our models.

Learned from the official model code (MedARC-AI/fMRI-reconstruction-NSD ``src/models.py``,
``src/Train_MindEye.py``, ``src/train_autoencoder.py``) and dalle2-pytorch (~1.14/1.15, the version
of mid 2023: ``CausalTransformer``, ``Attention``, ``FeedForward``, ``LayerNorm``, ``RelPosBias``,
``SinusoidalPosEmb``, ``MLP``, ``NoiseScheduler``; ``rotary_embedding_torch.RotaryEmbedding``).

**257 x 768** (``prior_257_final_subj0X_bimixco_softclip_byol/last.pth``): a ``BrainDiffusionPrior``
holding ``voxel2clip`` (``BrainNetwork``) and ``net`` (``VersatileDiffusionPriorNetwork``)::

    voxel2clip.{lin0,mlp.k,lin1,projector}.*              -> MindEyeHighLevel.brain.* (BrainMLP, one to one)
    net.learned_query (257, d)                             -> prior.pos_emb  ("pos_emb" query mode)
    net.null_brain_embeds / net.null_image_embed (257, d)  -> prior.null_brain_embed / null_image_embed
    net.to_time_embeds.0.1.net.{0.0,1.0,2}.{weight,bias}   -> prior.time_embed.net.{0,2,4}.*
    net.causal_transformer.rel_pos_bias.relative_attention_bias.weight (32, h) -> prior.transformer.rel_pos_bias.weight
    net.causal_transformer.layers.i.0.{norm.g, to_q, to_kv, to_out.0, to_out.1.g, null_kv (2, dh)}
        -> prior.transformer.layers.i.0.{norm.weight, to_q, to_kv, to_out, out_norm.weight, null_kv (2, 1, dh)}
    net.causal_transformer.layers.i.1.{0.g, 1, 3.g, 5}     -> ...layers.i.1.{norm.weight, proj_in, post_norm.weight, proj_out}
    net.causal_transformer.{norm.g, project_out}           -> prior.transformer.{norm.weight, project_out}
    net.causal_transformer.layers.i.0.rotary_emb.freqs     checked: equal to our rotary frequencies
    noise_scheduler.* (betas, alphas_cumprod, ...)         checked: equal to our schedule's values

**1 x 768** (``prior_1x768_final_subj0X_bimixco_softclip_byol/last.pth``): ``net`` is dalle2's own
``DiffusionPriorNetwork`` (built from a LAION prior's config, not in the repository; read from the
shapes): ``net.learned_query (d,)`` -> ``prior.learned_query (1, d)``, ``net.null_text_encodings
(1, P, d)`` -> ``prior.prefix_tokens (P, d)``, ``net.null_text_embeds (1, 1, d)`` ->
``prior.null_brain_embed``, ``net.null_image_embed (1, d)``, ``net.to_time_embeds.0.weight (T, d)``
-> ``prior.time_embed.weight``, the transformer as above (causal).

**low-level** (``autoencoder_subj0X_4x_locont_no_reconst/epoch120.pth``): ``Voxel2StableDiffusionModel``
(``ups_mode="4x"``, ``use_cont=True``): ``lin0``/``mlp.k`` -> ``backbone.*``, ``lin1``, ``norm``,
``upsampler.*`` (diffusers ``Decoder``; diffusers 0.13's attention names ``query``/``key``/``value``/
``proj_attn`` -> ``to_q``/``to_k``/``to_v``/``to_out.0``), ``maps_projector.*`` -> ``projector.*``.
``norm_num_groups`` is not visible in the shapes: the official default 32 is used.

:func:`map_official_state` returns our config and renamed tensors (views of the input tensors, no
copies) and raises :class:`~mindeye_core.errors.CheckpointError` listing every missing, unexpected
or mis-shaped tensor and every derived buffer that disagrees.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..errors import CheckpointError, ConfigMismatchError
from ..io import ConfigModule
from ..models.brain import MindEyeHighLevel, official_brain_config, official_brain_key
from ..models.lowlevel import LowLevelModel
from ..models.prior import OFFICIAL_257X768_STRUCTURE, cosine_beta_schedule, linear_beta_schedule, rotary_frequencies
from .checkpoint import strip_wrapper_prefixes

__all__ = ["OFFICIAL_MODELS", "MappedCheckpoint", "map_official_state", "schedule_buffers"]

OFFICIAL_MODELS = ("257x768", "1x768", "lowlevel")
"""The released model kinds: CLIP hidden tokens, final CLIP embedding, low-level (VAE latents)."""

@dataclass
class MappedCheckpoint:
    """An official state dict mapped onto one of our classes.

    Attributes:
        cls: our class (:class:`MindEyeHighLevel` or :class:`LowLevelModel`).
        config: its constructor arguments.
        tensors: our key -> tensor (views of the checkpoint's tensors, in our shapes).
        verified: official keys not stored but checked against recomputed values (rotary
            frequencies, noise-schedule buffers).
    """

    cls: type[ConfigModule]
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    verified: list[str] = field(default_factory=list)


class _Mapper:
    """Collects renamed tensors, verified buffers and problems; raises once with all of them."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: str) -> None:
        self.state, self.where = dict(state), where
        self.used: set[str] = set()
        self.tensors: dict[str, torch.Tensor] = {}
        self.verified: list[str] = []
        self.problems: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.state

    def get(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise CheckpointError(f"{self.where}: missing tensor {key!r}")
        return self.state[key]

    def put(self, ours: str, theirs: str, shape: tuple[int, ...] | None = None) -> None:
        """Map ``theirs`` to ``ours``, reshaped (a view) to ``shape`` when given and compatible."""
        if theirs not in self.state:
            self.problems.append(f"missing {theirs!r} (for {ours})")
            return
        t = self.state[theirs]
        self.used.add(theirs)
        if shape is not None and tuple(t.shape) != shape:
            if t.numel() != math.prod(shape):
                self.problems.append(f"shape of {theirs!r}: {tuple(t.shape)}, expected {shape}")
                return
            t = t.reshape(shape)
        self.tensors[ours] = t

    def verify(self, theirs: str, expected: torch.Tensor, what: str) -> None:
        """``theirs`` is derived (not stored by us): it must equal ``expected``."""
        self.used.add(theirs)
        got = self.state[theirs]
        if tuple(got.shape) != tuple(expected.shape):
            self.problems.append(f"{theirs!r} ({what}) has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        elif not torch.allclose(got.double(), expected.double(), rtol=1e-5, atol=1e-6):
            self.problems.append(f"{theirs!r} ({what}) differs from our recomputation "
                                 f"(max |diff| {float((got.double() - expected.double()).abs().max()):.3g})")
        else:
            self.verified.append(theirs)

    def finish(self, cls: type[ConfigModule], config: dict[str, Any]) -> MappedCheckpoint:
        """Compare with the model's own keys and shapes (built on the meta device: no memory)."""
        problems = list(self.problems)
        leftover = sorted(set(self.state) - self.used)
        if leftover:
            problems.append(f"{len(leftover)} tensor(s) not mapped: {leftover[:10]}{' ...' if len(leftover) > 10 else ''}")
        try:
            with torch.device("meta"):
                own = {k: tuple(v.shape) for k, v in cls(**config).state_dict().items()}
        except (ValueError, TypeError) as exc:
            raise ConfigMismatchError(f"{self.where}: inferred {cls.__name__} config {config} is invalid: {exc}") from exc
        missing = sorted(set(own) - set(self.tensors))
        if missing:
            problems.append(f"{cls.__name__} tensors with no source: {missing[:10]}")
        extra = sorted(set(self.tensors) - set(own))
        if extra:
            problems.append(f"mapped tensors {cls.__name__} does not have: {extra[:10]}")
        wrong = [f"{k}: checkpoint {tuple(self.tensors[k].shape)} vs model {own[k]}"
                 for k in sorted(set(own) & set(self.tensors)) if tuple(self.tensors[k].shape) != own[k]]
        if wrong:
            problems.append("shape mismatch " + "; ".join(wrong[:10]))
        if problems:
            raise CheckpointError(f"{self.where} does not map onto {cls.__name__}: " + " | ".join(problems))
        return MappedCheckpoint(cls, config, self.tensors, self.verified)


# ------------------------------------------------------------------------------------------- brain
def _map_brain(m: _Mapper, prefix: str, dim: int) -> dict[str, Any]:
    """Map ``<prefix>*`` BrainNetwork tensors to ``brain.*``; returns the BrainMLP config."""
    renamed: dict[str, torch.Tensor] = {}
    for key in [k for k in m.state if k.startswith(prefix)]:
        ours = official_brain_key(key[len(prefix):])
        if ours is not None:
            renamed[ours] = m.state[key]
            m.put("brain." + ours, key)
    return official_brain_config(renamed, dim=dim, where=m.where)


# ------------------------------------------------------------------------------------------- prior
_SCHEDULE_BUFFERS: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]] = {
    "betas": lambda v: v["betas"],
    "alphas_cumprod": lambda v: v["abar"],
    "alphas_cumprod_prev": lambda v: v["abar_prev"],
    "sqrt_alphas_cumprod": lambda v: v["abar"].sqrt(),
    "sqrt_one_minus_alphas_cumprod": lambda v: (1 - v["abar"]).sqrt(),
    "log_one_minus_alphas_cumprod": lambda v: (1 - v["abar"]).log(),
    "sqrt_recip_alphas_cumprod": lambda v: (1 / v["abar"]).sqrt(),
    "sqrt_recipm1_alphas_cumprod": lambda v: (1 / v["abar"] - 1).sqrt(),
    "posterior_variance": lambda v: v["post_var"],
    "posterior_log_variance_clipped": lambda v: v["post_var"].clamp(min=1e-20).log(),
    "posterior_mean_coef1": lambda v: v["betas"] * v["abar_prev"].sqrt() / (1 - v["abar"]),
    "posterior_mean_coef2": lambda v: (1 - v["abar_prev"]) * (1 - v["betas"]).sqrt() / (1 - v["abar"]),
    "p2_loss_weight": lambda v: torch.ones_like(v["betas"]),  # dalle2 default: no p2 reweighting
}


def schedule_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffers dalle2's ``NoiseScheduler`` stores for ``betas`` (float64 maths, float32 values), by name."""
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    values = {"betas": betas, "abar": abar, "abar_prev": abar_prev, "post_var": betas * (1 - abar_prev) / (1 - abar)}
    return {name: fn(values).float() for name, fn in _SCHEDULE_BUFFERS.items()}


def _map_schedule(m: _Mapper, default_timesteps: int) -> tuple[int, str]:
    """Identify the noise schedule from ``noise_scheduler.betas`` and check every schedule buffer."""
    prefix = "noise_scheduler."
    if not m.has(prefix + "betas"):
        return default_timesteps, "cosine"
    theirs = m.get(prefix + "betas").double()
    timesteps = int(theirs.numel())
    for kind, fn in (("cosine", cosine_beta_schedule), ("linear", linear_beta_schedule)):
        betas = fn(timesteps)
        if torch.allclose(theirs, betas, rtol=1e-5, atol=1e-7):
            break
    else:
        m.problems.append(f"{prefix}betas match neither the cosine nor the linear schedule of {timesteps} steps")
        return timesteps, "cosine"
    values = schedule_buffers(betas)
    for key in [k for k in m.state if k.startswith(prefix)]:
        name = key[len(prefix):]
        if name in values:
            m.verify(key, values[name], f"{kind} schedule")
    return timesteps, kind


def _map_transformer(m: _Mapper, src: str, dst: str, dim: int) -> dict[str, Any]:
    """Map dalle2's ``CausalTransformer`` at ``src`` onto our :class:`PriorTransformer` at ``dst``."""
    layers = sorted({int(g.group(1)) for k in m.state if (g := re.match(re.escape(src) + r"layers\.(\d+)\.", k))})
    if not layers:
        raise CheckpointError(f"{m.where}: no transformer layers under {src!r}")
    if layers != list(range(len(layers))):
        m.problems.append(f"transformer layer indices are not 0..{len(layers) - 1}: {layers}")
    a0 = f"{src}layers.0.0."
    dim_head = int(m.get(a0 + "null_kv").shape[-1])
    heads = int(m.get(a0 + "to_q.weight").shape[0]) // dim_head
    kv_rows = int(m.get(a0 + "to_kv.weight").shape[0])
    if kv_rows != 2 * dim_head:
        m.problems.append(f"{a0}to_kv.weight has {kv_rows} rows: expected 2 x dim_head = {2 * dim_head} (one K/V head)")
    ff_inner2 = int(m.get(f"{src}layers.0.1.1.weight").shape[0])
    if ff_inner2 % (2 * dim):
        m.problems.append(f"{src}layers.0.1.1.weight has {ff_inner2} rows, not a multiple of 2 x dim")
    ff_mult = max(1, ff_inner2 // (2 * dim))
    post_norm = m.has(f"{src}layers.0.1.3.g")
    if m.has(f"{src}init_norm.g"):
        m.problems.append(f"{src}init_norm.g: a transformer with norm_in=True is not supported")
    rotary_dim = min(32, dim_head)
    inner = heads * dim_head
    for i in layers:
        a, f, ours = f"{src}layers.{i}.0.", f"{src}layers.{i}.1.", f"{dst}layers.{i}."
        m.put(ours + "0.norm.weight", a + "norm.g")
        m.put(ours + "0.to_q.weight", a + "to_q.weight")
        m.put(ours + "0.to_kv.weight", a + "to_kv.weight")
        m.put(ours + "0.null_kv", a + "null_kv", (2, 1, dim_head))
        m.put(ours + "0.to_out.weight", a + "to_out.0.weight", (dim, inner))
        m.put(ours + "0.out_norm.weight", a + "to_out.1.g")
        if m.has(a + "rotary_emb.freqs"):
            m.verify(a + "rotary_emb.freqs", rotary_frequencies(rotary_dim), f"rotary frequencies (dim {rotary_dim})")
        m.put(ours + "1.norm.weight", f + "0.g")
        m.put(ours + "1.proj_in.weight", f + "1.weight")
        if post_norm:
            m.put(ours + "1.post_norm.weight", f + "3.g")
        m.put(ours + "1.proj_out.weight", f + "5.weight")
    m.put(dst + "rel_pos_bias.weight", src + "rel_pos_bias.relative_attention_bias.weight")
    m.put(dst + "norm.weight", src + "norm.g")
    m.put(dst + "project_out.weight", src + "project_out.weight")
    return {"prior_depth": len(layers), "prior_heads": heads, "prior_dim_head": dim_head,
            "ff_mult": ff_mult, "ff_post_norm": post_norm, "rotary_dim": rotary_dim}


def _split_prior_config(cfg: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """MindEyeHighLevel prior arguments: ``prior_*`` keys + ``prior_options`` for the rest."""
    rest = {k: cfg[k] for k in ("ff_mult", "ff_post_norm", "rotary_dim")}
    if rest["ff_mult"] == 4:
        rest.pop("ff_mult")
    if not rest["ff_post_norm"]:
        rest.pop("ff_post_norm")
    return {"prior_depth": cfg["prior_depth"], "prior_heads": cfg["prior_heads"],
            "prior_dim_head": cfg["prior_dim_head"], "prior_options": {**options, **rest}}


def _map_prior_257(m: _Mapper, dim: int, n_tokens: int) -> dict[str, Any]:
    m.put("prior.pos_emb", "net.learned_query", (n_tokens, dim))
    m.put("prior.null_brain_embed", "net.null_brain_embeds", (n_tokens, dim))
    m.put("prior.null_image_embed", "net.null_image_embed", (n_tokens, dim))
    for theirs, ours in (("0.0", "0"), ("1.0", "2"), ("2", "4")):
        for p in ("weight", "bias"):
            m.put(f"prior.time_embed.net.{ours}.{p}", f"net.to_time_embeds.0.1.net.{theirs}.{p}")
    cfg = _map_transformer(m, "net.causal_transformer.", "prior.transformer.", dim)
    timesteps, schedule = _map_schedule(m, 100)
    options = {**OFFICIAL_257X768_STRUCTURE}
    if schedule != "cosine":
        options["noise_schedule"] = schedule
    return {"prior_timesteps": timesteps, **_split_prior_config(cfg, options)}


def _map_prior_1x768(m: _Mapper, dim: int) -> dict[str, Any]:
    prefix = m.get("net.null_text_encodings")
    n_prefix = int(prefix.shape[-2])
    m.put("prior.prefix_tokens", "net.null_text_encodings", (n_prefix, dim))
    m.put("prior.learned_query", "net.learned_query", (1, dim))
    m.put("prior.null_brain_embed", "net.null_text_embeds", (1, dim))
    m.put("prior.null_image_embed", "net.null_image_embed", (1, dim))
    table = m.get("net.to_time_embeds.0.weight")
    m.put("prior.time_embed.weight", "net.to_time_embeds.0.weight")
    cfg = _map_transformer(m, "net.causal_transformer.", "prior.transformer.", dim)
    timesteps, schedule = _map_schedule(m, int(table.shape[0]))
    if timesteps != table.shape[0]:
        m.problems.append(f"the time table has {table.shape[0]} rows but the schedule {timesteps} steps")
    options = {k: v for k, v in OFFICIAL_257X768_STRUCTURE.items() if k != "time_embedding"}
    options.update(learned_pos_emb=False, causal=True, num_prefix_tokens=n_prefix, learned_query=True)
    if schedule != "cosine":
        options["noise_schedule"] = schedule
    return {"prior_timesteps": timesteps, **_split_prior_config(cfg, options)}


def _map_highlevel(m: _Mapper, model: str) -> MappedCheckpoint:
    network = "net.null_brain_embeds" if model == "257x768" else "net.null_text_encodings"
    if not m.has(network):
        other = "1x768" if model == "257x768" else "257x768"
        raise CheckpointError(f"{m.where}: not a {model} prior checkpoint (no {network}; is it a {other} one?)")
    dim = int(m.get("net.null_image_embed").shape[-1])  # 768 in the released files
    brain = _map_brain(m, "voxel2clip.", dim)
    if model == "257x768":
        n_tokens = int(m.get("net.learned_query").shape[0])
        if brain["n_tokens"] != n_tokens:
            raise ConfigMismatchError(f"{m.where}: the brain model predicts {brain['n_tokens']} tokens, the prior "
                                      f"{n_tokens}")
        prior = _map_prior_257(m, dim, n_tokens)
    else:
        if brain["n_tokens"] != 1:
            raise ConfigMismatchError(f"{m.where}: the brain model predicts {brain['n_tokens']} tokens, a 1x768 "
                                      f"prior takes 1")
        prior = _map_prior_1x768(m, dim)
    return m.finish(MindEyeHighLevel, {**brain, **prior})


# ---------------------------------------------------------------------------------------- low-level
_LOWLEVEL_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def _map_lowlevel(m: _Mapper) -> MappedCheckpoint:
    w0 = m.get("lin0.0.weight")
    hidden, n_voxels = (int(s) for s in w0.shape)
    n_blocks = len({int(g.group(1)) for k in m.state if (g := re.match(r"mlp\.(\d+)\.", k))})
    channels = int(m.get("norm.weight").shape[0])
    map_size = int(m.get("lin1.weight").shape[0]) // channels
    side = math.isqrt(map_size)
    if side * side * channels != m.get("lin1.weight").shape[0]:
        raise CheckpointError(f"{m.where}: lin1 has {m.get('lin1.weight').shape[0]} outputs, not {channels} x S x S")
    ups = sorted({int(g.group(1)) for k in m.state if (g := re.match(r"upsampler\.up_blocks\.(\d+)\.", k))})
    if not ups:
        raise CheckpointError(f"{m.where}: no upsampler.up_blocks.* tensors (not a Voxel2StableDiffusionModel)")
    reversed_widths = [int(m.get(f"upsampler.up_blocks.{i}.resnets.0.conv2.weight").shape[0]) for i in ups]
    resnets = len({int(g.group(1)) for k in m.state if (g := re.match(r"upsampler\.up_blocks\.0\.resnets\.(\d+)\.", k))})
    use_projector = m.has("maps_projector.0.weight")
    config: dict[str, Any] = {
        "n_voxels": n_voxels, "hidden": hidden, "n_blocks": n_blocks, "latent_channels": channels,
        "latent_size": side, "out_channels": int(m.get("upsampler.conv_out.weight").shape[0]),
        "block_out_channels": reversed_widths[::-1], "layers_per_block": resnets - 1, "norm_num_groups": 32,
        "use_projector": use_projector,
    }
    if use_projector:
        config["proj_dim"] = int(m.get("maps_projector.0.weight").shape[0])
    for key in list(m.state):
        if key.startswith("lin0.") or key.startswith("mlp."):
            m.put("backbone." + key.replace("mlp.", "blocks.", 1), key)
        elif key.startswith(("lin1.", "norm.")):
            m.put(key, key)
        elif key.startswith("maps_projector."):
            m.put("projector." + key[len("maps_projector."):], key)
        elif key.startswith("upsampler."):
            ours = key
            for old, new in _LOWLEVEL_ATTENTION.items():
                ours = re.sub(r"(\.attentions\.\d+\.)" + re.escape(old), r"\g<1>" + new, ours)
            m.put(ours, key)
    return m.finish(LowLevelModel, config)


# -------------------------------------------------------------------------------------------- entry
def map_official_state(state: Mapping[str, torch.Tensor], model: str, *, where: str = "checkpoint") -> MappedCheckpoint:
    """Map an official ``model_state_dict`` onto our model, strictly.

    Args:
        state: the checkpoint's model tensors (``module.`` / ``_orig_mod.`` prefixes allowed).
        model: ``"257x768"``, ``"1x768"`` or ``"lowlevel"``.
        where: the source, for messages.

    Returns:
        A :class:`MappedCheckpoint` (our class, its config, renamed tensors, verified derived buffers).

    Raises:
        CheckpointError: listing every official tensor not mapped, every model tensor with no source,
            every shape mismatch and every derived buffer that differs from our recomputation.
    """
    if model not in OFFICIAL_MODELS:
        raise ValueError(f"model must be one of {OFFICIAL_MODELS}, got {model!r}")
    m = _Mapper(strip_wrapper_prefixes(state), where)
    if model == "lowlevel":
        return _map_lowlevel(m)
    return _map_highlevel(m, model)
