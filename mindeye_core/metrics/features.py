"""Feature extractors for the high-level metrics, each with its own resize and normalisation.

=========  ==========================================  =======  ================  ==================
metric     network / layer                             resize   normalisation     use
=========  ==========================================  =======  ================  ==================
alexnet2   AlexNet (ImageNet) ``features.4``           256      ImageNet          two-way ident.
alexnet5   AlexNet (ImageNet) ``features.11``          256      ImageNet          two-way ident.
inception  InceptionV3 (ImageNet) ``avgpool``          342      ImageNet          two-way ident.
clip       CLIP ViT-L/14 (OpenAI) final embedding      224      CLIP              two-way ident.
effnet     EfficientNet-B1 (ImageNet V2) ``avgpool``   255      ImageNet          corr. distance
swav       SwAV ResNet-50 (800 ep) ``avgpool``         224      ImageNet          corr. distance
=========  ==========================================  =======  ================  ==================

These are the settings of MindEye's released ``Reconstruction_Metrics.py`` (which copied Ozcelik &
VanRullen's). Images are resized (bilinear) so the shorter side is ``resize`` and, if not square,
centre-cropped to a square (the official code only ever saw square images, for which this is the same
thing), then normalised; no other crop. Differences from the official run, documented: it ran the CLIP
model in float16 on GPU (we use float32), and its resizes had no antialiasing (``antialias=False``, which is
what ``paper_parity`` selects in :func:`mindeye_core.metrics.evaluate.evaluate_reconstructions`).

Weights: ``weights="pretrained"`` loads torchvision's ImageNet weights / the SwAV checkpoint from torch's
hub cache (``$TORCH_HOME/hub/checkpoints``) and CLIP from the Hugging Face cache (open_clip's
``timm/vit_large_patch14_clip_224.openai``). Nothing is downloaded unless ``allow_download=True``; a
missing file or a failed download raises :class:`FeatureUnavailable` whose message says what is missing, and
:func:`load_extractors` turns that into an "unavailable" entry instead of failing the whole evaluation.
SwAV is built as a torchvision ResNet-50 with its checkpoint loaded (what ``torch.hub.load(
'facebookresearch/swav:main', 'resnet50')`` does) so no remote code is executed.

``weights="random"`` builds the full-size architectures with random weights (slow, for shape checks);
``weights="tiny"`` builds small random networks whose graph exposes the same node names (and, for CLIP, a
tiny open_clip ``CLIP``) so every code path runs offline in tests. The demo world plugs in its own tiny CLIP
with :meth:`FeatureExtractor.from_callable`.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn
from torchvision.transforms import functional as TF

from ..errors import MindEyeError
from .lowlevel import PAPER_PRE_RESIZE, ImageBatch, resize
from ..normalization import IMAGENET_MEAN, IMAGENET_STD, CLIP_MEAN, CLIP_STD


WeightsKind = Literal["pretrained", "random", "tiny"]


class FeatureUnavailable(MindEyeError):
    """A feature network cannot be built (weights not cached, download failed, package missing)."""


@dataclass(frozen=True)
class ExtractorSpec:
    """How one feature network is used by the metrics.

    Attributes:
        name: extractor (group) name, e.g. ``"alexnet"``.
        outputs: metric name -> graph node whose output is the feature (``None``: the model's output).
        resize: shorter-side size (px) the images are resized to.
        mean, std: per-channel normalisation after resizing.
        description: human-readable network and weights.
    """

    name: str
    outputs: Mapping[str, str | None]
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str


EXTRACTORS: Mapping[str, ExtractorSpec] = {
    "alexnet": ExtractorSpec("alexnet", {"alexnet2": "features.4", "alexnet5": "features.11"}, 256, IMAGENET_MEAN, IMAGENET_STD,
                             "torchvision AlexNet IMAGENET1K_V1"),
    "inception": ExtractorSpec("inception", {"inception": "avgpool"}, 342, IMAGENET_MEAN, IMAGENET_STD,
                               "torchvision InceptionV3 IMAGENET1K_V1 (transform_input=True)"),
    "clip": ExtractorSpec("clip", {"clip": None}, 224, CLIP_MEAN, CLIP_STD, "open_clip ViT-L-14 openai, encode_image"),
    "effnet": ExtractorSpec("effnet", {"effnet": "avgpool"}, 255, IMAGENET_MEAN, IMAGENET_STD,
                            "torchvision EfficientNet-B1 IMAGENET1K_V2"),
    "swav": ExtractorSpec("swav", {"swav": "avgpool"}, 224, IMAGENET_MEAN, IMAGENET_STD,
                          "SwAV ResNet-50 (swav_800ep_pretrain)"),
}
"""Registry of the paper's feature networks (read-only)."""

METRIC_TO_EXTRACTOR: Mapping[str, str] = {m: spec.name for spec in EXTRACTORS.values() for m in spec.outputs}
"""Feature metric name -> extractor name."""

SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"


def weights_url(name: str) -> str:
    """Download URL of the pretrained weights of extractor ``name`` (not CLIP, which comes from the HF hub)."""
    from torchvision import models

    urls = {
        "alexnet": models.AlexNet_Weights.IMAGENET1K_V1.url,
        "inception": models.Inception_V3_Weights.IMAGENET1K_V1.url,
        "effnet": models.EfficientNet_B1_Weights.IMAGENET1K_V2.url,
        "swav": SWAV_URL,
    }
    return urls[name]


CLIP_HF_REPO = "timm/vit_large_patch14_clip_224.openai"
CLIP_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


# ------------------------------------------------------------------------------------------- extractor
@dataclass
class FeatureExtractor:
    """A feature network plus its preprocessing; call it on images to get features per metric.

    Attributes:
        name: extractor name (``"alexnet"``, ``"clip"``, or your own).
        model: ``(n, 3, s, s) normalised -> Tensor`` or ``-> {node: Tensor}``.
        outputs: metric name -> key in the model's dict output (``None`` when it returns a tensor).
        resize, mean, std: preprocessing (see module docstring).
        source: where the weights came from (reported in tables).
    """

    name: str
    model: Callable[[torch.Tensor], Any]
    outputs: dict[str, str | None]
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    device: str | torch.device = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_callable(
        cls,
        metric: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        resize: int,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
        source: str = "user-supplied",
    ) -> FeatureExtractor:
        """Wrap any ``images -> (n, D)`` callable as the extractor of one metric (e.g. the demo's tiny CLIP
        as ``"clip"``: ``FeatureExtractor.from_callable("clip", tiny_clip.encode_image, resize=64)``)."""
        return cls(name=metric, model=fn, outputs={metric: None}, resize=resize, mean=tuple(mean), std=tuple(std), source=source)

    def preprocess(self, images: torch.Tensor, *, antialias: bool = True, pre_resize: int | None = None) -> torch.Tensor:
        """``(n, 3, H, W)`` in [0, 1] -> ``(n, 3, resize, resize)`` normalised.

        ``pre_resize``: first resize to ``pre_resize x pre_resize`` (the official 256 px step).
        """
        if pre_resize:
            images = resize(images, (pre_resize, pre_resize), antialias=antialias)
        images = resize(images, self.resize, antialias=antialias)
        if images.shape[-1] != images.shape[-2]:
            images = TF.center_crop(images, [self.resize, self.resize])
        return TF.normalize(images, list(self.mean), list(self.std))

    @torch.no_grad()
    def __call__(
        self,
        images: Any,
        *,
        batch_size: int = 32,
        antialias: bool = True,
        pre_resize: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Features of ``N`` images: ``{metric: (N, D) float32}``.

        Args:
            images: anything :class:`~mindeye_core.metrics.lowlevel.ImageBatch` accepts.
            batch_size: images per forward pass.
            antialias, pre_resize: see :meth:`preprocess` (``paper_parity``: ``False, 256``).
        """
        batch = ImageBatch(images, "images")
        chunks: dict[str, list[np.ndarray]] = {m: [] for m in self.outputs}
        for s in range(0, len(batch), batch_size):
            x = self.preprocess(batch.get(s, s + batch_size, torch.float32, self.device), antialias=antialias, pre_resize=pre_resize)
            out = self.model(x)
            for metric, node in self.outputs.items():
                t = out if node is None else out[node]
                if not isinstance(t, torch.Tensor):
                    raise MindEyeError(f"extractor {self.name!r}: output for {metric!r} is {type(t).__name__}, expected a tensor")
                chunks[metric].append(t.float().flatten(1).cpu().numpy())
        return {m: np.concatenate(c) for m, c in chunks.items()}


# ---------------------------------------------------------------------------------------- tiny networks
class TinyAlexNet(nn.Module):
    """AlexNet's ``features`` layout (conv/relu/pool indices identical, so ``features.4`` and ``features.11``
    are the same layers: ReLU after conv 2 and conv 5) with 8-16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyPooledCNN(nn.Module):
    """A small CNN ending in a global ``avgpool`` node (stands in for InceptionV3 / EfficientNet-B1 /
    ResNet-50, whose feature is their global average pool)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=4, padding=3), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_open_clip(image_size: int = 224, embed_dim: int = 32) -> nn.Module:
    """A tiny random-weight open_clip ``CLIP`` (ViT, patch 14) with the real ``encode_image`` path."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=14, image_size=image_size)
    text = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


# ------------------------------------------------------------------------------------ weight resolution
def _hub_checkpoint(url: str, *, allow_download: bool) -> dict[str, torch.Tensor]:
    """State dict of ``url`` from torch's hub cache; download only when allowed."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        if not allow_download:
            raise FeatureUnavailable(f"weights not cached: expected {path} (from {url}); pass allow_download=True / --allow-download")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a blocked socket raises RuntimeError
            raise FeatureUnavailable(f"could not download {url}: {type(exc).__name__}: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise FeatureUnavailable(f"cannot read cached weights {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _clip_checkpoint(*, allow_download: bool) -> str:
    """Local path of the OpenAI ViT-L/14 weights in open_clip format (Hugging Face cache)."""
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in CLIP_HF_FILES:
        try:
            return hf_hub_download(CLIP_HF_REPO, filename, local_files_only=not allow_download)
        except (OSError, ValueError, RuntimeError) as exc:  # LocalEntryNotFoundError, offline mode, HTTP errors
            errors.append(f"{filename}: {type(exc).__name__}")
    hint = "" if allow_download else "; pass allow_download=True / --allow-download"
    raise FeatureUnavailable(f"CLIP ViT-L/14 weights not available from {CLIP_HF_REPO} ({', '.join(errors)}){hint}")


def _feature_module(model: nn.Module, nodes: list[str]) -> nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor

    return create_feature_extractor(model, return_nodes=nodes)


def _build_network(name: str, weights: WeightsKind, allow_download: bool) -> tuple[nn.Module, str]:
    from torchvision import models

    if name == "clip":
        try:
            import open_clip  # noqa: F401
        except ImportError as exc:
            raise FeatureUnavailable("the CLIP extractor needs open_clip: pip install open_clip_torch") from exc
    if weights == "tiny":
        if name == "alexnet":
            return TinyAlexNet(), "tiny random AlexNet-layout"
        if name == "clip":
            return tiny_open_clip(), "tiny random open_clip ViT"
        return TinyPooledCNN(), f"tiny random CNN ({name} stand-in)"
    pretrained = weights == "pretrained"
    state = _hub_checkpoint(weights_url(name), allow_download=allow_download) if pretrained and name != "clip" else None
    if name == "alexnet":
        net: nn.Module = models.alexnet(weights=None)
    elif name == "inception":
        net = models.inception_v3(weights=None, aux_logits=True, transform_input=pretrained, init_weights=not pretrained)
    elif name == "effnet":
        net = models.efficientnet_b1(weights=None)
    elif name == "swav":
        net = models.resnet50(weights=None)
        if state is not None:
            state = {k.removeprefix("module."): v for k, v in state.items()}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if [k for k in missing if not k.startswith("fc.")]:
                raise FeatureUnavailable(f"SwAV checkpoint lacks backbone tensors: {missing[:5]}")
            state = None
        net.fc = nn.Identity()
    elif name == "clip":
        import open_clip

        if pretrained:
            path = _clip_checkpoint(allow_download=allow_download)
            net = open_clip.create_model("ViT-L-14", pretrained=path, force_quick_gelu=True)
        else:
            net = open_clip.create_model("ViT-L-14", pretrained=None, force_quick_gelu=True)
        return net, ("open_clip ViT-L-14 openai" if pretrained else "random ViT-L-14")
    else:
        raise FeatureUnavailable(f"unknown extractor {name!r}; known: {sorted(EXTRACTORS)}")
    if state is not None:
        net.load_state_dict(state)
    return net, (EXTRACTORS[name].description if pretrained else f"random {name}")


def build_extractor(
    name: str,
    weights: WeightsKind = "pretrained",
    *,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """Build one registered extractor (see :data:`EXTRACTORS`).

    Args:
        name: ``"alexnet"``, ``"inception"``, ``"clip"``, ``"effnet"`` or ``"swav"``.
        weights: ``"pretrained"``, ``"random"`` (full size) or ``"tiny"`` (tests).
        allow_download: fetch missing pretrained weights from the network.
        device: where the network runs.

    Raises:
        FeatureUnavailable: unknown name, weights missing or download failed (message says which).
    """
    if name not in EXTRACTORS:
        raise FeatureUnavailable(f"unknown extractor {name!r}; known: {sorted(EXTRACTORS)}")
    if weights not in ("pretrained", "random", "tiny"):
        raise ValueError(f"weights must be 'pretrained', 'random' or 'tiny', got {weights!r}")
    spec = EXTRACTORS[name]
    if weights == "tiny":  # deterministic tiny networks, without touching the caller's RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net, source = _build_network(name, weights, allow_download)
    else:
        net, source = _build_network(name, weights, allow_download)
    net = net.eval().requires_grad_(False).to(device)
    nodes = [n for n in spec.outputs.values() if n is not None]
    if name == "clip":
        model: Callable[[torch.Tensor], Any] = net.encode_image  # type: ignore[assignment]
    else:
        model = _feature_module(net, nodes)
    return FeatureExtractor(name=name, model=model, outputs=dict(spec.outputs), resize=spec.resize, mean=spec.mean,
                            std=spec.std, source=source, device=device)


def demo_clip_extractor(root: str | Path | None = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The demo world's tiny CLIP (``mindeye_core.demo_models``) as the ``"clip"`` metric's extractor:
    final image embedding, CLIP normalisation, resized to the model's own input size.

    Raises:
        CheckpointError: the demo CLIP has not been trained/shipped (message says how to create it).
    """
    from ..demo_models import load_demo_clip_model

    model, _ = load_demo_clip_model(root, device=device)
    size = getattr(getattr(model, "visual", None), "image_size", 64)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return FeatureExtractor(name="clip", model=model.encode_image, outputs={"clip": None}, resize=size, mean=CLIP_MEAN,
                            std=CLIP_STD, source="demo tiny CLIP (mindeye_core.demo_models)", device=device)


def load_extractors(
    names: list[str] | None = None,
    weights: WeightsKind = "pretrained",
    *,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, FeatureExtractor] | None = None,
) -> tuple[dict[str, FeatureExtractor], dict[str, str]]:
    """Build several extractors; the ones that cannot be built are reported, not raised.

    Args:
        names: extractor names (default: all of :data:`EXTRACTORS`).
        overrides: extractors to use instead of building (e.g. ``{"clip": demo_tiny_clip_extractor}``).

    Returns:
        ``(available, unavailable)``: name -> extractor, and metric name -> reason for every metric whose
        extractor could not be built.
    """
    names = list(EXTRACTORS) if names is None else names
    overrides = dict(overrides or {})
    available: dict[str, FeatureExtractor] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        if name in overrides:
            available[name] = overrides[name]
            continue
        try:
            available[name] = build_extractor(name, weights, allow_download=allow_download, device=device)
        except FeatureUnavailable as exc:
            for metric in EXTRACTORS[name].outputs if name in EXTRACTORS else [name]:
                unavailable[metric] = str(exc)
    return available, unavailable


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "EXTRACTORS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METRIC_TO_EXTRACTOR",
    "PAPER_PRE_RESIZE",
    "ExtractorSpec",
    "FeatureExtractor",
    "FeatureUnavailable",
    "TinyAlexNet",
    "TinyPooledCNN",
    "build_extractor",
    "demo_clip_extractor",
    "load_extractors",
    "tiny_open_clip",
    "weights_url",
]
