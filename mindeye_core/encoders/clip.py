"""CLIP image encoders: the ViT-L/14 targets MindEye regresses onto, and open_clip models.

Targets (``D`` = CLIP embedding width, 768 for ViT-L/14; ``T`` = 1 + number of patches, 257 for
ViT-L/14 at 224 px):

- ``"hidden"``: last hidden state ``(T, width)`` -> ``post_layernorm`` -> ``visual_projection`` on
  *every* token -> ``(T, D)``, then every token divided by the L2 norm of token 0::

      h = proj(LN_post(last_hidden_state))          # (B, T, D)
      target = h / ||h[:, 0]||                        # per sample

  This is Versatile Diffusion's own image-context normalisation, and the 257 x 768 target of the
  official MindEye code (``Clipper(hidden_state=True, norm_embs=True)``).
- ``"final"``: the usual CLIP image embedding ``proj(LN_post(h_cls))`` ``(D,)``, L2-normalised when
  ``normalize=True`` (MindEye's retrieval-only / "final layer" variant). Its un-normalised value
  equals token 0 of the un-normalised hidden target.

Preprocessing (done in torch, so it is differentiable and runs on the GPU): resize the shorter side
to 224 with bicubic interpolation, centre crop 224 x 224, normalise with the CLIP mean/std. The
official MindEye code applied ``torchvision.transforms.Resize`` to tensors with the torchvision of
2023, i.e. *without* antialiasing; ``antialias=False`` (the default) reproduces that, ``True`` is
closer to the PIL pipeline of CLIP / Versatile Diffusion's ``CLIPImageProcessor``.

MindEye loaded the ViT-L/14 vision tower from Versatile Diffusion's ``image_encoder`` subfolder
(the OpenAI weights): ``ClipVisionEncoder.from_pretrained("shi-labs/versatile-diffusion",
subfolder="image_encoder")`` does the same; ``"openai/clip-vit-large-patch14"`` holds the same
vision weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from ..errors import CheckpointError, ConfigMismatchError, DataFormatError
from ..io import record_checksums, verify_checksums
from .base import ImageEncoder, freeze, resolve_local_source
from ..normalization import CLIP_MEAN, CLIP_STD

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "OPENAI_CLIP_VIT_L14",
    "VERSATILE_DIFFUSION_REPO",
    "ClipVisionEncoder",
    "OpenClipEncoder",
    "clip_preprocess",
    "normalize_by_first_token",
    "save_open_clip_folder",
]

OPENAI_CLIP_VIT_L14 = "openai/clip-vit-large-patch14"
VERSATILE_DIFFUSION_REPO = "shi-labs/versatile-diffusion"

Target = Literal["hidden", "final"]


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    *,
    antialias: bool = False,
) -> torch.Tensor:
    """CLIP preprocessing in torch: bicubic resize of the shorter side, centre crop, normalise.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        size: output side length.
        mean, std: per-channel normalisation, ``(x - mean) / std``.
        antialias: antialias the resize (see the module docstring).

    Returns:
        ``(B, 3, size, size)`` normalised pixels.
    """
    if min(images.shape[-2:]) != size:
        images = TF.resize(images, [size], interpolation=InterpolationMode.BICUBIC, antialias=antialias)
    if tuple(images.shape[-2:]) != (size, size):
        images = TF.center_crop(images, [size, size])
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def normalize_by_first_token(tokens: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Divide every token by the L2 norm of token 0 (Versatile Diffusion's normalisation).

    Args:
        tokens: ``(B, T, D)``.
        eps: added to the norm (the official reconstruction code uses ``1e-6`` when it re-normalises
            prior outputs; target computation uses 0).

    Returns:
        ``(B, T, D)`` with ``||out[b, 0]|| == 1`` for every ``b``.
    """
    if tokens.ndim != 3:
        raise DataFormatError(f"expected tokens of shape (B, T, D), got {tuple(tokens.shape)}")
    return tokens / (tokens[:, :1].norm(dim=-1, keepdim=True) + eps)


def _check_target(target: str) -> None:
    if target not in ("hidden", "final"):
        raise ValueError(f"target must be 'hidden' or 'final', got {target!r}")


class ClipVisionEncoder(ImageEncoder):
    """CLIP image encoder over a ``transformers`` ``CLIPVisionModelWithProjection``.

    Args:
        model: the vision tower with projection (OpenAI ViT-L/14 for NSD, or a tiny one in tests).
        target: ``"hidden"`` -> ``(T, D)`` tokens normalised by token 0's norm; ``"final"`` ->
            ``(D,)`` embedding.
        normalize: apply the normalisation (token-0 norm for hidden, L2 for final).
        antialias: antialias the resize in preprocessing.

    Shapes: ``encode((B, 3, H, W) in [0, 1]) -> (B, T, D)`` or ``(B, D)`` with
    ``T = (image_size / patch_size)**2 + 1`` and ``D = projection_dim`` (257 and 768 for ViT-L/14).
    """

    def __init__(self, model: torch.nn.Module, *, target: Target = "hidden", normalize: bool = True,
                 antialias: bool = False) -> None:
        super().__init__()
        _check_target(target)
        cfg = model.config
        self.model = freeze(model)
        self.target = target
        self.normalize = normalize
        self.antialias = antialias
        self.image_size = int(cfg.image_size)
        n_tokens = (self.image_size // int(cfg.patch_size)) ** 2 + 1
        dim = int(cfg.projection_dim)
        self.target_shape = (n_tokens, dim) if target == "hidden" else (dim,)
        self.name = f"clip-{target}-{n_tokens}x{dim}" if target == "hidden" else f"clip-final-{dim}"

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = OPENAI_CLIP_VIT_L14,
        *,
        target: Target = "hidden",
        subfolder: str | None = None,
        normalize: bool = True,
        antialias: bool = False,
        expected_target_shape: tuple[int, ...] | None = None,
        revision: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> ClipVisionEncoder:
        """Load the vision tower from a hub id or a local ``save_pretrained`` folder.

        Args:
            source: hub id (default ``openai/clip-vit-large-patch14``; MindEye used
                ``shi-labs/versatile-diffusion`` with ``subfolder="image_encoder"``) or local folder.
            subfolder: component sub-directory inside ``source``.
            expected_target_shape: if given, a different :attr:`target_shape` raises
                :class:`ConfigMismatchError`.
            revision, torch_dtype, device: forwarded to ``from_pretrained`` / ``.to``.

        Raises:
            CheckpointError: missing folder / config / weights (the message names the path), or a
                hub download that failed (e.g. offline with an empty cache).
        """
        from transformers import CLIPVisionModelWithProjection

        _check_target(target)
        folder = resolve_local_source(
            source, subfolder=subfolder,
            required=(("config.json",), ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")),
            what="CLIP vision weights folder",
        )
        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        try:
            if folder is not None:
                model = CLIPVisionModelWithProjection.from_pretrained(str(folder), **kwargs)
            else:
                if subfolder:
                    kwargs["subfolder"] = subfolder
                model = CLIPVisionModelWithProjection.from_pretrained(str(source), revision=revision, **kwargs)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"could not load CLIPVisionModelWithProjection from {source!r}"
                                  f"{' subfolder ' + subfolder if subfolder else ''}: {exc}") from exc
        if device is not None:
            model = model.to(device)
        enc = cls(model, target=target, normalize=normalize, antialias=antialias)
        if expected_target_shape is not None:
            enc.check_target_shape(expected_target_shape)
        return enc

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, S, S)`` CLIP-normalised, ``S`` = model image size."""
        return clip_preprocess(images, self.image_size, antialias=self.antialias)

    def hidden_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Un-normalised projected tokens ``proj(LN_post(last_hidden_state))``: ``(B, T, D)``."""
        out = self.model(pixel_values=pixel_values)
        h = self.model.vision_model.post_layernorm(out.last_hidden_state)
        return self.model.visual_projection(h)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        pix = self.preprocess(images)
        if self.target == "hidden":
            h = self.hidden_tokens(pix)
            return normalize_by_first_token(h) if self.normalize else h
        emb = self.model(pixel_values=pix).image_embeds
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb


# --------------------------------------------------------------------------------------- open_clip
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")


class ConvStem(torch.nn.Module):
    """Convolutional patch embedding for an open_clip ViT (Xiao et al. 2021, "Early convolutions help
    transformers see better").

    ``log2(patch_size)`` 3 x 3 stride-2 convolutions (each followed by GroupNorm(8) and GELU) and a final
    1 x 1 convolution to the transformer width replace the ViT's linear patch embedding ``conv1``, with
    the same output grid, so the token layout (CLS + grid x grid patches) is unchanged. It is cheap
    (~2 % of the tiny CLIP's FLOPs) and makes a small ViT trained from scratch learn silhouettes much
    faster than a linear patch embedding does.

    Args:
        channels: output channels of the stride-2 convolutions; ``len(channels) == log2(patch_size)``.
        width: transformer width (output channels).
        patch_size: the ViT's patch size (a power of 2).

    Shapes: ``(B, 3, S, S)`` -> ``(B, width, S / patch_size, S / patch_size)``.
    """

    def __init__(self, channels: list[int] | tuple[int, ...], width: int, patch_size: int) -> None:
        super().__init__()
        n = int(patch_size).bit_length() - 1
        if patch_size < 2 or 2 ** n != patch_size or len(channels) != n:
            raise ConfigMismatchError(f"conv stem needs log2(patch_size) = {n if 2 ** n == patch_size else '?'} "
                                      f"stride-2 stages for patch_size {patch_size}, got channels {list(channels)}")
        layers: list[torch.nn.Module] = []
        c_in = 3
        for c in channels:
            if int(c) % 8:
                raise ConfigMismatchError(f"conv stem channels must be multiples of 8 (GroupNorm(8)), got {c}")
            layers += [torch.nn.Conv2d(c_in, int(c), 3, stride=2, padding=1, bias=False),
                       torch.nn.GroupNorm(8, int(c)), torch.nn.GELU()]
            c_in = int(c)
        layers.append(torch.nn.Conv2d(c_in, int(width), 1))
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_open_clip_model(model_cfg: dict[str, Any], conv_stem: list[int] | None = None) -> torch.nn.Module:
    """An ``open_clip.CLIP`` from its config dict, optionally with a :class:`ConvStem` as the image
    tower's patch embedding (``visual.conv1``)."""
    import open_clip

    model = open_clip.CLIP(**model_cfg)
    if conv_stem:
        v = model_cfg["vision_cfg"]
        model.visual.conv1 = ConvStem(conv_stem, int(v["width"]), int(v["patch_size"]))
    return model


def save_open_clip_folder(model: torch.nn.Module, folder: str | Path, model_cfg: dict[str, Any],
                          preprocess_cfg: dict[str, Any] | None = None, conv_stem: list[int] | None = None) -> Path:
    """Save an open_clip model as a folder (``open_clip_config.json`` + safetensors).

    Without a conv stem the folder is also an open_clip ``local-dir:`` folder. With one, the config
    gets a ``"conv_stem"`` entry and the folder must be read back with :func:`load_open_clip_folder`.

    Args:
        model: an ``open_clip.CLIP`` (or ``CustomTextCLIP``) instance.
        folder: destination.
        model_cfg: the model config dict it was built from (``embed_dim``, ``vision_cfg``,
            ``text_cfg``...).
        preprocess_cfg: ``{"mean": ..., "std": ..., "size": ...}``; defaults to the model's (mean and
            std default to CLIP's).
        conv_stem: the :class:`ConvStem` channels the image tower was built with, if any.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if preprocess_cfg is None:
        from open_clip.model import get_model_preprocess_cfg

        preprocess_cfg = {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in get_model_preprocess_cfg(model).items()}
    preprocess_cfg = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), **preprocess_cfg}
    config: dict[str, Any] = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    if conv_stem:
        config["conv_stem"] = [int(c) for c in conv_stem]
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / OPEN_CLIP_WEIGHTS[0]))
    record_checksums(folder)  # <weights>.sha256, verified by load_open_clip_folder
    return folder


def load_open_clip_folder(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load a folder written by :func:`save_open_clip_folder` (or any open_clip ``local-dir:`` folder).

    Returns:
        ``(model, tokenizer)``: the ``open_clip.CLIP`` in eval mode (float32 parameters), and open_clip's
        tokenizer for its text config (strings -> ``(B, context_length)`` ids).

    Raises:
        CheckpointError: missing config / weights (exact paths named), unreadable config, or weights that
            do not match the config.
    """
    import open_clip

    folder = resolve_local_source(str(folder), required=((OPEN_CLIP_CONFIG,), OPEN_CLIP_WEIGHTS),
                                  what="open_clip model folder")
    assert folder is not None
    folder = Path(folder)
    try:
        config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
        model_cfg = config["model_cfg"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"unreadable open_clip config {folder / OPEN_CLIP_CONFIG}: {exc}") from exc
    verify_checksums(folder)  # sha256 sidecars, when present (CheckpointError naming a damaged file)
    conv_stem = config.get("conv_stem")
    if not conv_stem:  # a plain open_clip folder: let open_clip read it (all its weight formats)
        try:
            model = open_clip.create_model(f"local-dir:{folder}", device=device)
        except (OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"could not load open_clip model from {folder}: {exc}") from exc
    else:
        weights = folder / OPEN_CLIP_WEIGHTS[0]
        if not weights.is_file():
            raise CheckpointError(f"missing weights of a conv-stem open_clip model: expected {weights.resolve()}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
            model = build_open_clip_model(model_cfg, conv_stem)
            model.load_state_dict(state, strict=True)  # float32 parameters, as open_clip's own loader gives
        except (OSError, RuntimeError, SafetensorError) as exc:
            raise CheckpointError(f"could not load open_clip model from {folder}: {exc}") from exc
        from open_clip.model import set_model_preprocess_cfg

        set_model_preprocess_cfg(model, {"mean": CLIP_MEAN, "std": CLIP_STD, **(config.get("preprocess_cfg") or {})})
        model = model.to(device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.eval(), tokenizer


class OpenClipEncoder(ImageEncoder):
    """CLIP image encoder over an open_clip model (e.g. the tiny demo-world CLIP).

    The hidden target is computed like the transformers one: all tokens after the transformer ->
    ``ln_post`` -> ``@ proj`` -> divided by token 0's norm. This needs a ViT tower with class-token
    pooling (``pool_type='tok'``), no attentional pooler and ``final_ln_after_pool=False``; other
    towers raise :class:`ConfigMismatchError` for ``target="hidden"``.

    Args:
        model: an open_clip model with a ``.visual`` tower, or the visual tower itself.
        target, normalize, antialias: as in :class:`ClipVisionEncoder`.
        mean, std: normalisation; default to the model's ``preprocess_cfg`` (CLIP's otherwise).
    """

    def __init__(self, model: torch.nn.Module, *, target: Target = "hidden", normalize: bool = True,
                 antialias: bool = False, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        _check_target(target)
        visual = getattr(model, "visual", model)
        self.visual = freeze(visual)
        self.target = target
        self.normalize = normalize
        self.antialias = antialias
        pp = dict(getattr(visual, "preprocess_cfg", {}) or {})
        self.mean = tuple(mean or pp.get("mean") or getattr(visual, "image_mean", None) or CLIP_MEAN)
        self.std = tuple(std or pp.get("std") or getattr(visual, "image_std", None) or CLIP_STD)
        size = getattr(visual, "image_size", None)
        if size is None:
            raise ConfigMismatchError(f"{type(visual).__name__} has no image_size; not an open_clip image tower")
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] != size[1]:
            raise ConfigMismatchError(f"only square image towers are supported, got image_size {size}")
        self.image_size = int(size[0])
        proj = getattr(visual, "proj", None)
        if proj is None:
            raise ConfigMismatchError(f"{type(visual).__name__} has no projection 'proj'")
        dim = int(proj.shape[1])
        if target == "hidden":
            self._check_hidden_supported(visual)
            grid = getattr(visual, "grid_size", None)
            n_tokens = int(grid[0]) * int(grid[1]) + 1
            self.target_shape = (n_tokens, dim)
            self.name = f"openclip-hidden-{n_tokens}x{dim}"
        else:
            self.target_shape = (dim,)
            self.name = f"openclip-final-{dim}"

    @staticmethod
    def _check_hidden_supported(visual: torch.nn.Module) -> None:
        problems = []
        if not hasattr(visual, "_embeds") or not hasattr(visual, "transformer"):
            problems.append("not an open_clip VisionTransformer")
        if getattr(visual, "attn_pool", None) is not None:
            problems.append("uses an attentional pooler")
        if getattr(visual, "pool_type", "tok") != "tok":
            problems.append(f"pool_type={getattr(visual, 'pool_type', None)!r} (need 'tok')")
        if getattr(visual, "final_ln_after_pool", False):
            problems.append("final_ln_after_pool=True")
        if problems:
            raise ConfigMismatchError("open_clip tower cannot give the hidden (CLS + patch) target: "
                                      + "; ".join(problems))

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        pretrained: str | None = None,
        target: Target = "hidden",
        normalize: bool = True,
        antialias: bool = False,
        expected_target_shape: tuple[int, ...] | None = None,
        device: str | torch.device = "cpu",
    ) -> OpenClipEncoder:
        """Build from a local ``open_clip`` folder, an ``hf-hub:`` id or a named config + tag.

        Args:
            source: a folder written by :func:`save_open_clip_folder` (``open_clip_config.json`` +
                weights), ``"hf-hub:org/repo"``, or a built-in model name such as ``"ViT-L-14"``.
            pretrained: with a built-in name: a pretrained tag (``"openai"``) or a checkpoint file.

        Raises:
            CheckpointError: missing folder/config/weights (exact path named) or a failed load.
        """
        import open_clip

        src = str(source)
        if not src.startswith("hf-hub:") and (Path(src).expanduser().is_dir() or src.startswith((".", "/", "~"))):
            model, _ = load_open_clip_folder(src, device=device)
        else:
            if pretrained is not None and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin",
                                                                                         ".safetensors"))):
                if not Path(pretrained).expanduser().is_file():
                    raise CheckpointError(f"missing open_clip checkpoint: expected {Path(pretrained).resolve()}")
            try:
                model = open_clip.create_model(src, pretrained=None if src.startswith("hf-hub:") else pretrained,
                                               device=device)
            except (OSError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"could not load open_clip model {src!r} (pretrained={pretrained!r}): "
                                      f"{exc}") from exc
        enc = cls(model, target=target, normalize=normalize, antialias=antialias)
        if expected_target_shape is not None:
            enc.check_target_shape(expected_target_shape)
        return enc

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, S, S)`` normalised for the tower."""
        return clip_preprocess(images, self.image_size, self.mean, self.std, antialias=self.antialias)

    def hidden_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Un-normalised ``ln_post(tokens) @ proj`` for CLS + patch tokens: ``(B, T, D)``."""
        v = self.visual
        x = v._embeds(pixels)
        x = v.transformer(x)
        x = v.ln_post(x)
        return x @ v.proj

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        pix = self.preprocess(images)
        if self.target == "hidden":
            h = self.hidden_tokens(pix)
            return normalize_by_first_token(h) if self.normalize else h
        emb = self.visual(pix)
        if isinstance(emb, tuple):
            emb = emb[0]
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb
