"""VICRegL ConvNeXt teacher: per-location features for the low-level contrastive loss.

MindEye's low-level pipeline adds ``0.1 x soft_cont_loss`` between its (16, 16, 512) projector output
and a VICRegL ConvNeXt teacher's per-location features of the 512 px image (stride 32 -> 16 x 16 =
256 locations). The paper names ConvNeXt-XXL; the official code loads VICRegL's
``convnext_xlarge_alpha0.75_fullckpt.pth`` (backbone + ``maps_projector`` MLP 2048-512-512-512) and
uses the *projected* maps ``(B, 256, 512)``; images are normalised with ImageNet statistics (the code
writes std ``0.228`` for the red channel, a typo of 0.229; we use 0.229).

Three ways to get a teacher, all returning a :class:`VicRegLEncoder` with
``encode((B, 3, H, W) in [0, 1]) -> (B, L, C)``, ``L = (image_size / 32)**2``:

- :func:`load_vicregl_hub` -- ``torch.hub.load('facebookresearch/VICRegL', 'convnext_small_alpha0p75')``
  when the hub repo *and* the weight file are already in the torch hub cache (no download is
  attempted; a missing file raises :class:`~mindeye_core.errors.CheckpointError` naming the exact
  path to populate). Backbone only: ``C`` = 768 (small), 1024 (base), 2048 (xlarge).
- :func:`load_vicregl_checkpoint` -- a VICRegL full checkpoint file (``torch.load(weights_only=True)``)
  mapped onto timm's ConvNeXt (+ the ``maps_projector`` when present, ``C`` = 512), as MindEye did.
- :func:`convnext_standin` -- a timm ConvNeXt (random or timm-pretrained weights) used as a
  documented *stand-in* when VICRegL weights are unavailable (e.g. the offline demo world). It is not
  VICRegL: results with it are not comparable to the paper's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, DataFormatError
from .base import ImageEncoder, freeze
from ..normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VICREGL_DIMS",
    "VicRegLEncoder",
    "MapsProjector",
    "load_vicregl_hub",
    "load_vicregl_checkpoint",
    "convnext_standin",
]

VICREGL_HUB_REPO = "facebookresearch/VICRegL"
VICREGL_URL = "https://dl.fbaipublicfiles.com/vicregl/{name}.pth"
VICREGL_DIMS = {"convnext_small": 768, "convnext_base": 1024, "convnext_xlarge": 2048}
_DEPTHS = {"convnext_small": (3, 3, 27, 3), "convnext_base": (3, 3, 27, 3), "convnext_xlarge": (3, 3, 27, 3)}
_WIDTHS = {"convnext_small": (96, 192, 384, 768), "convnext_base": (128, 256, 512, 1024),
           "convnext_xlarge": (256, 512, 1024, 2048)}


def _per_location(out: object) -> torch.Tensor:
    """Normalise a backbone output to ``(B, L, C)``.

    Accepts VICRegL's ``(maps (B, L, C), pooled (B, C))`` tuple, a ``(B, L, C)`` tensor or a
    ``(B, C, h, w)`` feature map (flattened row-major, ``L = h * w``).
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise DataFormatError(f"teacher backbone returned {type(out).__name__}, expected a tensor")
    if out.ndim == 4:
        return out.flatten(2).transpose(1, 2)
    if out.ndim == 3:
        return out
    raise DataFormatError(f"teacher backbone returned shape {tuple(out.shape)}, expected (B, L, C) or (B, C, h, w)")


class MapsProjector(torch.nn.Sequential):
    """VICRegL's ``maps_projector``: Linear-LN-ReLU-Linear-LN-ReLU-Linear(no bias), per location.

    Default sizes are the official ConvNeXt-XL ones: ``2048 -> 512 -> 512 -> 512``.
    """

    def __init__(self, in_dim: int = 2048, hidden: int = 512, out_dim: int = 512) -> None:
        super().__init__(
            torch.nn.Linear(in_dim, hidden), torch.nn.LayerNorm(hidden), torch.nn.ReLU(True),
            torch.nn.Linear(hidden, hidden), torch.nn.LayerNorm(hidden), torch.nn.ReLU(True),
            torch.nn.Linear(hidden, out_dim, bias=False),
        )


class VicRegLEncoder(ImageEncoder):
    """Per-location teacher features.

    Args:
        backbone: module mapping normalised images ``(B, 3, S, S)`` to per-location features
            (``(B, C, h, w)``, ``(B, L, C)`` or VICRegL's ``(maps, pooled)`` tuple).
        feature_dim: ``C`` of the backbone output.
        projector: optional per-location head ``(..., C) -> (..., C')`` (VICRegL's maps projector).
        out_dim: ``C'`` when a projector is given.
        image_size: images are resized to ``S = image_size`` (bilinear, antialiased) if needed.
        stride: total downsampling of the backbone (32 for ConvNeXt).
        mean, std: input normalisation (ImageNet by default).
        name: identifier used in cache keys.

    Shapes: ``encode((B, 3, H, W)) -> (B, (S / stride)**2, C or C')``.
    """

    def __init__(self, backbone: torch.nn.Module | Callable[[torch.Tensor], object], *, feature_dim: int,
                 projector: torch.nn.Module | None = None, out_dim: int | None = None, image_size: int = 512,
                 stride: int = 32, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 name: str = "vicregl") -> None:
        super().__init__()
        if image_size % stride:
            raise ValueError(f"image_size {image_size} must be a multiple of the stride {stride}")
        if projector is not None and out_dim is None:
            raise ValueError("out_dim is required with a projector")
        self.backbone = freeze(backbone) if isinstance(backbone, torch.nn.Module) else backbone
        self.projector = freeze(projector) if projector is not None else None
        self.image_size = int(image_size)
        self.stride = int(stride)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        side = self.image_size // self.stride
        dim = int(out_dim if projector is not None else feature_dim)
        self.target_shape = (side * side, dim)
        self.name = f"{name}-{side * side}x{dim}"

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        feats = _per_location(self.backbone(x))
        if self.projector is not None:
            feats = self.projector(feats)
        return feats


def _arch_of(name: str) -> str:
    m = re.match(r"(convnext_(?:small|base|xlarge))", name)
    if not m:
        raise ValueError(f"unknown VICRegL ConvNeXt variant {name!r}; expected one of "
                         f"{sorted(VICREGL_DIMS)} with an alpha suffix, e.g. 'convnext_small_alpha0p75'")
    return m.group(1)


def load_vicregl_hub(entrypoint: str = "convnext_small_alpha0p75", *, hub_dir: str | Path | None = None,
                     image_size: int = 512) -> VicRegLEncoder:
    """Build the VICRegL teacher from the torch hub cache, without any download.

    Expects ``<hub_dir>/facebookresearch_VICRegL_main/hubconf.py`` and the weight file
    ``<hub_dir>/checkpoints/<variant>.pth`` (e.g. ``convnext_small_alpha0.75.pth``), which
    ``torch.hub.load('facebookresearch/VICRegL', entrypoint)`` creates on a machine with internet.

    Args:
        entrypoint: hub entry point, e.g. ``"convnext_small_alpha0p75"`` (paper: alpha = 0.75).
        hub_dir: torch hub directory; ``torch.hub.get_dir()`` by default.
        image_size: input size (512 as in MindEye -> 16 x 16 locations).

    Raises:
        CheckpointError: the hub repo or the weight file is not cached (exact path named).
    """
    arch = _arch_of(entrypoint)
    hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir())
    repo = hub / "facebookresearch_VICRegL_main"
    if not (repo / "hubconf.py").is_file():
        raise CheckpointError(
            f"VICRegL hub code not cached: expected {repo / 'hubconf.py'}; run "
            f"torch.hub.load('{VICREGL_HUB_REPO}', '{entrypoint}') once with internet, or use "
            "load_vicregl_checkpoint(path) / convnext_standin() (a documented stand-in)")
    weight_name = entrypoint.replace("alpha0p", "alpha0.") + ".pth"
    weights = hub / "checkpoints" / weight_name
    if not weights.is_file():
        raise CheckpointError(f"VICRegL weights not cached: expected {weights} "
                              f"(downloaded from {VICREGL_URL.format(name=weight_name[:-4])})")
    try:
        out = torch.hub.load(str(repo), entrypoint, source="local")
    except (OSError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"could not build VICRegL '{entrypoint}' from {repo}: {exc}") from exc
    model = out[0] if isinstance(out, tuple) else out
    return VicRegLEncoder(model, feature_dim=VICREGL_DIMS[arch], image_size=image_size, name=f"vicregl-{entrypoint}")


def _timm_convnext(arch: str) -> torch.nn.Module:
    import timm

    # VICRegL's ConvNeXt: no layer scale, final LayerNorm on every location (timm: head_norm_first).
    return timm.create_model(arch, pretrained=False, num_classes=0, head_norm_first=True, ls_init_value=None)


class _TimmFeatures(torch.nn.Module):
    """Wrap a timm model so that ``forward`` returns ``forward_features`` ``(B, C, h, w)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def load_vicregl_checkpoint(path: str | Path, *, arch: str = "convnext_xlarge", image_size: int = 512,
                            use_projector: bool = True) -> VicRegLEncoder:
    """Load a VICRegL ConvNeXt checkpoint file into timm's ConvNeXt (+ ``maps_projector``).

    Accepts the full training checkpoint (``{"model": {"module.backbone.*", "module.maps_projector.*",
    ...}}``, what MindEye used), a backbone-only state dict in the original ConvNeXt layout
    (``downsample_layers.*``, ``stages.*``, ``norm.*``) or one already in timm's layout.

    Raises:
        CheckpointError: missing file (exact path), unreadable file, or tensors that do not match.
    """
    from timm.models.convnext import checkpoint_filter_fn

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing VICRegL checkpoint: expected {path.resolve()}")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"could not read VICRegL checkpoint {path}: {exc}") from exc
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    backbone_sd = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("maps_projector.")
                   and not k.startswith(("projector.", "classifier"))}
    proj_sd = {k.removeprefix("maps_projector."): v for k, v in state.items() if k.startswith("maps_projector.")}
    model = _timm_convnext(arch)
    mapped = checkpoint_filter_fn(backbone_sd, model)
    mapped = {("norm_pre." + k[len("head.norm."):] if k.startswith("head.norm.") else k): v
              for k, v in mapped.items() if not k.startswith("head.fc.")}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match timm {arch} (VICRegL layout): missing {missing[:5]}, "
                              f"unexpected {list(unexpected)[:5]}")
    projector = None
    out_dim = None
    if use_projector and proj_sd:
        w0, w_last = proj_sd.get("0.weight"), proj_sd.get("6.weight")
        if w0 is None or w_last is None:
            raise CheckpointError(f"{path}: maps_projector tensors are not the 3-layer MLP layout")
        projector = MapsProjector(int(w0.shape[1]), int(w0.shape[0]), int(w_last.shape[0]))
        try:
            projector.load_state_dict(proj_sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: maps_projector does not match: {exc}") from exc
        out_dim = int(w_last.shape[0])
    return VicRegLEncoder(_TimmFeatures(model), feature_dim=int(model.num_features), projector=projector,
                          out_dim=out_dim, image_size=image_size, name=f"vicregl-{arch}")


def convnext_standin(model_name: str = "convnext_atto", *, pretrained: bool = False, image_size: int = 512,
                     mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> VicRegLEncoder:
    """A timm ConvNeXt used as a *stand-in* teacher when VICRegL weights are unavailable.

    ``pretrained=True`` asks timm for its ImageNet weights (a download unless cached); the default
    random-weight network only gives fixed random local features (useful for the demo world and for
    tests). The encoder's ``name`` starts with ``standin-`` so cached targets are never mistaken for
    VICRegL ones.
    """
    import timm

    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"could not create timm model {model_name!r} (pretrained={pretrained}): {exc}") from exc
    return VicRegLEncoder(_TimmFeatures(model), feature_dim=int(model.num_features), image_size=image_size,
                          mean=mean, std=std, name=f"standin-{model_name}")
