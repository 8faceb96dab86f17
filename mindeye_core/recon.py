"""MindEye reconstruction: voxels -> blurry image -> N prior samples -> N img2img candidates -> best of N.

One :class:`Reconstructor` holds the five parts (brain model with its diffusion prior, target image
encoder, generator, optional low-level model + VAE) and runs one explicit, batched loop for ``B`` trials
with ``N = n_samples`` candidates each::

    voxels (B, V) -> lowlevel -> latents (B, C, h, w) -> vae.decode -> blurry (B, 3, H, W)
                                                        (rounded to uint8 levels, see below)
    voxels (B, V) -> brain -> backbone (B, T, D), projector (B, T, D)
    backbone, repeated N times -> prior.sample (B*N rows, one generator per row)
                              -> prior_samples (B, N, T, D) (rounded to float16, see below)
    for each strength s:
        for each trial b (``trials_per_call`` trials per generator call):
            prior_samples[b] (N, T, D) -> generator img2img from blurry[b] at strength s
                                       -> candidates (N, 3, H, W)
            encoder(candidates) (N, T, D) -> cosine with projector[b], both flattened to T*D -> scores (N,)
            picked = argmax(scores); final = candidates[picked]

Best-of-N selection follows the official code (and the paper, Section 3.2): each candidate's CLIP
image embedding (the same target space as the brain model, e.g. the 257 x 768 hidden tokens) is
compared with the brain's *projector* output (the "disjointed CLIP fMRI embedding", not the prior
sample), by cosine similarity over the flattened tokens; the highest one wins (first on ties).
img2img strength is in the paper's convention (0 = pure high-level, 1 = only the blurry image;
MindEye's default 0.15), see :mod:`mindeye_core.generators.base`. Without a low-level model there is
no blurry image and img2img is off (strength must be 0).

**Seeds.** Each trial ``b`` has one non-negative integer seed ``seed_b``. Every random number of the
trial comes from CPU ``torch.Generator`` objects seeded from it, one per candidate ``k = 0..N-1`` and
stream, with :func:`row_seed`::

    row_seed(seed_b, k, stream) = SeedSequence([seed_b, stream, k]).generate_state(1, uint64)[0] >> 1

(numpy's ``SeedSequence`` hash, 63 bits). Stream :data:`PRIOR_STREAM` (0) seeds the prior's sampling
noise of candidate ``k`` (:meth:`~mindeye_core.models.prior.DiffusionPrior.sample` with one generator
per row); stream :data:`GENERATOR_STREAM` (1) seeds the generator's noise of candidate ``k`` (init
posterior if sampled, then the latent noise; :meth:`~mindeye_core.generators.Generator.generate` with
one seed per row); the same generator seeds are used at every strength. A trial's output therefore
depends only on its voxels and its seed, not on which batch it was in (up to the float rounding of the
batched brain-model and prior passes, which the float16 rounding of the prior samples almost always
absorbs; generation itself is per trial, see below).

**What a results bundle stores is what generation uses.** Bundles keep prior samples as float16 and
blurry images as uint8. :meth:`Reconstructor.reconstruct` rounds the prior samples to float16 and the
blurry images to the 256 uint8 levels (``floor(255 x + 0.5) / 255``, the bundle writer's conversion)
*before* generating, so :meth:`Reconstructor.regenerate` fed with the stored arrays and the trial's seed
recomputes the same candidates. Each generator call covers ``trials_per_call`` whole trials (default
1: one call of ``N`` rows per trial), so regenerating one trial runs exactly the same operations as the
batched reconstruction and gives identical pixels bit for bit on the same device and thread count.
(With ``trials_per_call > 1`` several trials share a call; the per-row seeds keep them independent
up to the backend's batch-size-dependent rounding.)

Components are named by a :class:`ReconstructionSpec` (JSON/YAML round-trippable); :func:`demo_spec`
and :func:`nsd_spec` are the two presets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .encoders import ImageEncoder, VaeLatentEncoder, load_image_encoder
from .errors import ConfigMismatchError, DataFormatError
from .generators import Generator, UNetVariationGenerator, VersatileDiffusionGenerator, check_strength
from .generators.base import check_count, check_finite, check_sampling
from .models import LowLevelModel, MindEyeHighLevel

__all__ = [
    "Candidates",
    "GENERATOR_STREAM",
    "PRIOR_STREAM",
    "ReconstructionOutput",
    "ReconstructionSpec",
    "Reconstructor",
    "demo_spec",
    "nsd_spec",
    "quantize_images",
    "row_seed",
    "row_seeds",
]

PRIOR_STREAM = 0
"""Seed stream of the diffusion prior's sampling noise (see the module docstring)."""
GENERATOR_STREAM = 1
"""Seed stream of the generator's noise (see the module docstring)."""

DEMO = "demo"


# ------------------------------------------------------------------------------------------- seeds
def _check_seeds(seeds: Any, batch: int | None = None) -> list[int]:
    """Seeds as a list of non-negative Python ints (``batch`` of them when given)."""
    if isinstance(seeds, torch.Tensor):
        if seeds.is_floating_point() or seeds.ndim != 1:
            raise DataFormatError(f"seeds must be a 1-D sequence of integers, got a tensor {seeds.dtype} "
                                  f"of shape {tuple(seeds.shape)}")
        seeds = seeds.tolist()
    elif isinstance(seeds, np.ndarray):
        if not np.issubdtype(seeds.dtype, np.integer) or seeds.ndim != 1:
            raise DataFormatError(f"seeds must be a 1-D sequence of integers, got an array {seeds.dtype} "
                                  f"of shape {seeds.shape}")
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise DataFormatError(f"seeds must be a sequence of integers (one per trial), got {seeds!r}")
    values = list(seeds)
    bad = [s for s in values if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0]
    if bad:
        raise DataFormatError(f"seeds must be non-negative integers, got {bad[:5]}")
    if batch is not None and len(values) != batch:
        raise DataFormatError(f"seeds: got {len(values)} seeds for {batch} trials (need one per trial)")
    return [int(s) for s in values]


def row_seed(seed: int, k: int, stream: int) -> int:
    """Seed of candidate ``k`` of a trial with seed ``seed`` in random stream ``stream``.

    ``SeedSequence([seed, stream, k]).generate_state(1, uint64)[0] >> 1``: a 63-bit integer, stable
    across numpy versions, different streams and candidates giving unrelated generators.
    """
    state = np.random.SeedSequence([int(seed), int(stream), int(k)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def row_seeds(seeds: Sequence[int], n_samples: int, stream: int) -> list[int]:
    """:func:`row_seed` for ``B`` trials x ``n_samples`` candidates, trial-major (row ``b * N + k``)."""
    return [row_seed(s, k, stream) for s in seeds for k in range(int(n_samples))]


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# ------------------------------------------------------------------------------------- quantisation
def quantize_images(images: torch.Tensor) -> torch.Tensor:
    """Round images to the 256 levels a uint8 bundle stores: ``floor(255 x + 0.5) / 255`` (float32).

    Accepts float images in ``[0, 1]`` or uint8 images (``(B, 3, H, W)`` either way); idempotent, and
    ``quantize_images(u8 / 255) == quantize_images(u8) == u8 / 255`` exactly.
    """
    if images.dtype == torch.uint8:
        levels = images
    else:
        levels = torch.floor(images.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return levels.to(torch.float32) / 255.0


# ---------------------------------------------------------------------------------------------- spec
def _component(value: Any, name: str, *, allow_none: bool = False) -> str | dict[str, Any] | None:
    """Normalise a component entry: ``"demo"``, a folder (``str``/``Path``) or ``{"kind", "source", ...}``."""
    if value is None:
        if allow_none:
            return None
        raise ConfigMismatchError(f"ReconstructionSpec: {name} is required")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        if not value:
            raise ConfigMismatchError(f"ReconstructionSpec: {name} is an empty string")
        return value
    if isinstance(value, Mapping):
        if "kind" not in value:
            raise ConfigMismatchError(f"ReconstructionSpec: {name} needs a 'kind' key, got {dict(value)}")
        return {str(k): (str(v) if isinstance(v, Path) else v) for k, v in value.items()}
    raise ConfigMismatchError(f"ReconstructionSpec: {name} must be 'demo', a folder or a "
                              f"{{'kind', 'source'}} mapping, got {type(value).__name__}")


@dataclass(frozen=True)
class ReconstructionSpec:
    """Names every component of a :class:`Reconstructor` and its sampling settings.

    Component entries (plain JSON values, so ``to_dict`` / ``from_dict`` round-trip through JSON and YAML):

    Attributes:
        brain: folder of a saved :class:`~mindeye_core.models.MindEyeHighLevel` (with its prior).
        encoder: ``"demo"`` (the shipped tiny CLIP, hidden target ``(65, 128)``) or
            ``{"kind": ..., "source": ..., **kwargs}`` as accepted by
            :func:`~mindeye_core.encoders.load_image_encoder` (e.g. ``"clip-hidden"``).
        generator: ``"demo"`` (the shipped tiny generator), a folder of a saved
            :class:`~mindeye_core.generators.UNetVariationGenerator` (or of a saved
            ``VersatileDiffusionGenerator``), or ``{"kind": "versatile-diffusion" | "unet-variation",
            "source": ..., **kwargs}``.
        lowlevel: folder of a saved :class:`~mindeye_core.models.LowLevelModel`, or ``None`` (no blurry
            image, no img2img).
        vae: ``"demo"`` (the shipped tiny VAE), a folder of a diffusers ``AutoencoderKL`` (512 px), or
            ``{"kind": "vae", "source": ..., "image_size": ...}``; needed with ``lowlevel``.
        n_samples: candidates per trial (16 in the paper; 4 for the demo).
        strength: default img2img strength, paper convention (0.15).
        steps, guidance: generator sampling settings (``None`` = the generator's defaults).
        prior_cond_scale: classifier-free guidance of the prior (1.0 = none, MindEye's setting).
        trials_per_call: trials per generator call (1 keeps single-trial regeneration bit-exact).
        device: where the models are loaded (``"cpu"``, ``"cuda"``...).
    """

    brain: str
    encoder: str | dict[str, Any]
    generator: str | dict[str, Any]
    lowlevel: str | None = None
    vae: str | dict[str, Any] | None = None
    n_samples: int = 16
    strength: float = 0.15
    steps: int | None = None
    guidance: float | None = None
    prior_cond_scale: float = 1.0
    trials_per_call: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        brain = _component(self.brain, "brain")
        if not isinstance(brain, str) or brain == DEMO:
            raise ConfigMismatchError(f"ReconstructionSpec: brain must be the folder of a saved MindEyeHighLevel, "
                                      f"got {self.brain!r}")
        set_(self, "brain", brain)
        set_(self, "encoder", _component(self.encoder, "encoder"))
        set_(self, "generator", _component(self.generator, "generator"))
        lowlevel = _component(self.lowlevel, "lowlevel", allow_none=True)
        if isinstance(lowlevel, dict) or lowlevel == DEMO:
            raise ConfigMismatchError(f"ReconstructionSpec: lowlevel must be the folder of a saved LowLevelModel "
                                      f"or None, got {self.lowlevel!r}")
        set_(self, "lowlevel", lowlevel)
        set_(self, "vae", _component(self.vae, "vae", allow_none=True))
        if self.lowlevel is not None and self.vae is None:
            raise ConfigMismatchError("ReconstructionSpec: a lowlevel model needs a vae to decode its latents")
        _check_settings(self.n_samples, self.strength, self.steps, self.trials_per_call, self.guidance,
                        self.prior_cond_scale)
        set_(self, "n_samples", int(self.n_samples))
        set_(self, "strength", float(self.strength))
        set_(self, "steps", None if self.steps is None else int(self.steps))
        set_(self, "guidance", None if self.guidance is None else float(self.guidance))
        set_(self, "prior_cond_scale", float(self.prior_cond_scale))
        set_(self, "trials_per_call", int(self.trials_per_call))
        set_(self, "device", str(self.device))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (copies of the component mappings)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReconstructionSpec:
        """Inverse of :meth:`to_dict` (e.g. from ``yaml.safe_load``); unknown keys raise
        :class:`ConfigMismatchError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigMismatchError(f"ReconstructionSpec: unknown keys {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> ReconstructionSpec:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_settings(n_samples: Any, strength: Any, steps: Any, trials_per_call: Any = 1, guidance: Any = None,
                    prior_cond_scale: Any = 1.0) -> None:
    """Validate the sampling settings shared by the spec and the reconstructor."""
    check_sampling(n_samples, steps, guidance)
    check_strength(strength)
    check_finite(prior_cond_scale, "prior_cond_scale")
    check_count(trials_per_call, "trials_per_call")


def demo_spec(brain: str | Path, lowlevel: str | Path | None = None, **overrides: Any) -> ReconstructionSpec:
    """The demo world: shipped tiny CLIP (hidden ``(65, 128)``), tiny generator and tiny VAE.

    4 candidates per trial at strength 0.15 (0 without a low-level model), the generator's own steps and
    guidance (20, 3.0), CPU. ``overrides`` replace any field.
    """
    base: dict[str, Any] = dict(brain=brain, encoder=DEMO, generator=DEMO, lowlevel=lowlevel,
                                vae=DEMO if lowlevel is not None else None, n_samples=4,
                                strength=0.15 if lowlevel is not None else 0.0)
    return ReconstructionSpec(**{**base, **overrides})


NSD_CLIP = "openai/clip-vit-large-patch14"
NSD_VERSATILE_DIFFUSION = "shi-labs/versatile-diffusion"


def nsd_spec(brain: str | Path, lowlevel: str | Path | None = None, **overrides: Any) -> ReconstructionSpec:
    """MindEye on NSD (paper settings): CLIP ViT-L/14 hidden tokens (257 x 768,
    ``openai/clip-vit-large-patch14``), Versatile Diffusion image variation (``shi-labs/versatile-diffusion``)
    and its VAE at 512 px, 16 candidates, 20 UniPC steps, guidance 3.5, strength 0.15 (0 without a
    low-level model), on ``"cuda"``. Loading it downloads several GB from the hub."""
    base: dict[str, Any] = dict(
        brain=brain,
        encoder={"kind": "clip-hidden", "source": NSD_CLIP},
        generator={"kind": "versatile-diffusion", "source": NSD_VERSATILE_DIFFUSION},
        lowlevel=lowlevel,
        vae={"kind": "vae", "source": NSD_VERSATILE_DIFFUSION, "image_size": 512} if lowlevel is not None else None,
        n_samples=16, strength=0.15 if lowlevel is not None else 0.0, steps=20, guidance=3.5, device="cuda",
    )
    return ReconstructionSpec(**{**base, **overrides})


def _split_kind(entry: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    rest = dict(entry)
    return str(rest.pop("kind")), rest.pop("source", None), rest


def _load_encoder(entry: str | dict[str, Any], device: str) -> ImageEncoder:
    if entry == DEMO:
        from .demo_models import load_demo_clip

        return load_demo_clip("hidden", device=device)
    if not isinstance(entry, dict):
        raise ConfigMismatchError(f"ReconstructionSpec: encoder must be 'demo' or a {{'kind', 'source'}} mapping, "
                                  f"got {entry!r}")
    kind, source, kwargs = _split_kind(entry)
    return load_image_encoder(kind, source, **kwargs).to(device)


_GENERATOR_CLASSES: dict[str, type[UNetVariationGenerator]] = {
    "unet-variation": UNetVariationGenerator,
    "versatile-diffusion": VersatileDiffusionGenerator,
}


def _load_generator(entry: str | dict[str, Any], device: str) -> Generator:
    if entry == DEMO:
        from .demo_models import load_demo_generator

        return load_demo_generator(device=device)
    if isinstance(entry, str):  # a save_pretrained folder: its generator_config.json names the class
        from .configfile import read_versioned_config
        from .errors import CheckpointError
        from .generators.unet_variation import GENERATOR_CONFIG

        try:
            saved = read_versioned_config(Path(entry).expanduser() / GENERATOR_CONFIG, kind=None, version=1,
                                          missing_version=1, what="generator config").kind
        except CheckpointError:
            saved = None  # from_pretrained below names the missing or corrupt file
        cls = VersatileDiffusionGenerator if saved == VersatileDiffusionGenerator.__name__ else UNetVariationGenerator
        return cls.from_pretrained(entry, device=device)
    kind, source, kwargs = _split_kind(entry)
    if kind not in _GENERATOR_CLASSES:
        raise ConfigMismatchError(f"unknown generator kind {kind!r}; expected 'demo', a folder or one of "
                                  f"{sorted(_GENERATOR_CLASSES)}")
    if source is None and kind == "unet-variation":
        raise ConfigMismatchError("generator kind 'unet-variation' needs a source folder")
    args = () if source is None else (source,)
    return _GENERATOR_CLASSES[kind].from_pretrained(*args, device=device, **kwargs)


def _load_vae(entry: str | dict[str, Any], device: str) -> VaeLatentEncoder:
    if entry == DEMO:
        from .demo_models import load_demo_vae

        return load_demo_vae(device=device)
    if isinstance(entry, str):
        return VaeLatentEncoder.from_pretrained(entry, device=device)
    kind, source, kwargs = _split_kind(entry)
    if kind != "vae":
        raise ConfigMismatchError(f"ReconstructionSpec: vae kind must be 'vae', got {kind!r}")
    enc = load_image_encoder("vae", source, **kwargs).to(device)
    assert isinstance(enc, VaeLatentEncoder)
    return enc


# -------------------------------------------------------------------------------------------- output
@dataclass
class ReconstructionOutput:
    """Everything :meth:`Reconstructor.reconstruct` computed for ``B`` trials (CPU tensors).

    Attributes:
        blurry: ``(B, 3, H, W)`` float32 on the uint8 levels (:func:`quantize_images`), or ``None``
            without a low-level model.
        backbone: ``(B, T, D)`` brain backbone tokens (the prior's condition).
        projector: ``(B, T, D)`` projector tokens (retrieval space; the best-of-N reference).
        prior_samples: ``(B, N, T, D)`` float16 prior samples, exactly what the generator was fed.
        seeds: ``(B,)`` int64 trial seeds.
        candidates: ``{strength: (B, N, 3, H, W)}`` in [0, 1] (empty with ``return_candidates=False``).
        scores: ``{strength: (B, N)}`` cosine(candidate embedding, projector), flattened tokens.
        picked: ``{strength: (B,)}`` int64 ``argmax`` of the scores.
        finals: ``{strength: (B, 3, H, W)}`` the picked candidates.
    """

    blurry: torch.Tensor | None
    backbone: torch.Tensor
    projector: torch.Tensor
    prior_samples: torch.Tensor
    seeds: torch.Tensor
    candidates: dict[float, torch.Tensor] = field(default_factory=dict)
    scores: dict[float, torch.Tensor] = field(default_factory=dict)
    picked: dict[float, torch.Tensor] = field(default_factory=dict)
    finals: dict[float, torch.Tensor] = field(default_factory=dict)

    @property
    def strengths(self) -> list[float]:
        """The strengths computed, in order."""
        return list(self.finals)

    def __len__(self) -> int:
        return int(self.backbone.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[ReconstructionOutput]) -> ReconstructionOutput:
        """Concatenate outputs of consecutive batches along the trial axis (same strengths)."""
        if not parts:
            raise ValueError("concat needs at least one ReconstructionOutput")
        first = parts[0]

        def cat(get: Any) -> Any:
            values = [get(p) for p in parts]
            return None if values[0] is None else torch.cat(values)

        def cat_dict(name: str) -> dict[float, torch.Tensor]:
            keys = list(getattr(first, name))
            if any(list(getattr(p, name)) != keys for p in parts):
                raise ValueError(f"cannot concatenate outputs with different strengths in {name!r}")
            return {k: torch.cat([getattr(p, name)[k] for p in parts]) for k in keys}

        return cls(blurry=cat(lambda p: p.blurry), backbone=cat(lambda p: p.backbone),
                   projector=cat(lambda p: p.projector), prior_samples=cat(lambda p: p.prior_samples),
                   seeds=cat(lambda p: p.seeds), candidates=cat_dict("candidates"), scores=cat_dict("scores"),
                   picked=cat_dict("picked"), finals=cat_dict("finals"))


@dataclass
class Candidates:
    """Result of :meth:`Reconstructor.regenerate` for ``B`` trials at one strength.

    Attributes:
        candidates: ``(B, N, 3, H, W)`` in [0, 1].
        scores: ``(B, N)`` or ``None`` (no projector given).
        picked: ``(B,)`` int64 or ``None``.
        finals: ``(B, 3, H, W)`` or ``None``.
    """

    candidates: torch.Tensor
    scores: torch.Tensor | None = None
    picked: torch.Tensor | None = None
    finals: torch.Tensor | None = None


# --------------------------------------------------------------------------------------- reconstructor
class Reconstructor:
    """Voxels -> blurry image -> best-of-N reconstructions (see the module docstring for the loop).

    Args:
        brain_model: a :class:`~mindeye_core.models.MindEyeHighLevel` with its diffusion prior.
        encoder: image encoder into the brain model's target space (for best-of-N scoring).
        generator: embedding -> image :class:`~mindeye_core.generators.Generator`.
        lowlevel: optional :class:`~mindeye_core.models.LowLevelModel` (voxels -> VAE latents).
        vae: :class:`~mindeye_core.encoders.VaeLatentEncoder` decoding the low-level latents (needed with
            ``lowlevel``).
        n_samples: candidates ``N`` per trial (16 in the paper).
        strength: default img2img strength, paper convention (0.15; must be 0 without ``lowlevel``).
        steps, guidance: generator settings (``None`` = the generator's defaults).
        prior_cond_scale: prior classifier-free guidance (1.0).
        trials_per_call: trials per generator call (1 = bit-exact single-trial regeneration; more batches
            several trials per call, faster on a GPU).

    The models are put in eval mode. Every mismatch between the parts raises
    :class:`~mindeye_core.errors.ConfigMismatchError` naming both sides.
    """

    def __init__(
        self,
        brain_model: MindEyeHighLevel,
        encoder: ImageEncoder,
        generator: Generator,
        lowlevel: LowLevelModel | None = None,
        vae: VaeLatentEncoder | None = None,
        *,
        n_samples: int = 16,
        strength: float = 0.15,
        steps: int | None = None,
        guidance: float | None = None,
        prior_cond_scale: float = 1.0,
        trials_per_call: int = 1,
    ) -> None:
        _check_settings(n_samples, strength, steps, trials_per_call, guidance, prior_cond_scale)
        if getattr(brain_model, "prior", None) is None:
            raise ConfigMismatchError("the brain model has no diffusion prior (built with use_prior=False): "
                                      "reconstruction needs MindEyeHighLevel(use_prior=True)")
        tokens = (int(brain_model.brain.n_tokens), int(brain_model.brain.dim))
        self._check_encoder(encoder, tokens)
        self._check_generator(generator, tokens)
        if lowlevel is not None:
            if vae is None:
                raise ConfigMismatchError("a low-level model needs a VAE to decode its latents into blurry images")
            if lowlevel.n_voxels != brain_model.n_voxels:
                raise ConfigMismatchError(f"the brain model takes n_voxels={brain_model.n_voxels} but the low-level "
                                          f"model takes n_voxels={lowlevel.n_voxels}")
            latents = (int(lowlevel.config["out_channels"]), lowlevel.output_size, lowlevel.output_size)
            if latents != tuple(vae.target_shape):
                raise ConfigMismatchError(f"the low-level model outputs latents {latents} (out_channels, output_size, "
                                          f"output_size) but the VAE ({vae.name}) has latents {tuple(vae.target_shape)}")
            if int(generator.image_size) != int(vae.image_size):
                raise ConfigMismatchError(f"the generator makes {generator.image_size} px images but the VAE decodes "
                                          f"blurry images of {vae.image_size} px")
        elif float(strength) > 0:
            raise ValueError(f"strength {strength} > 0 needs a low-level model (img2img from its blurry image); "
                             f"use strength 0 without one")
        self.brain_model = brain_model.eval()
        self.encoder = encoder.eval()
        self.generator = generator
        if isinstance(generator, torch.nn.Module):
            generator.eval()
        self.lowlevel = lowlevel.eval() if lowlevel is not None else None
        self.vae = vae.eval() if vae is not None else None
        self.tokens = tokens
        self.n_samples = int(n_samples)
        self.strength = float(strength)
        self.steps = None if steps is None else int(steps)
        self.guidance = None if guidance is None else float(guidance)
        self.prior_cond_scale = float(prior_cond_scale)
        self.trials_per_call = int(trials_per_call)

    @staticmethod
    def _check_encoder(encoder: ImageEncoder, tokens: tuple[int, int]) -> None:
        shape = tuple(int(s) for s in encoder.target_shape)
        if shape == tokens or (tokens[0] == 1 and shape == tokens[1:]):
            return  # a single-token brain model (e.g. nsd-1x768) pairs with a final-embedding encoder
        raise ConfigMismatchError(f"the brain model predicts (n_tokens, dim) = {tokens} but the encoder "
                                  f"{type(encoder).__name__}({encoder.name}) produces targets {shape}")

    @staticmethod
    def _check_generator(generator: Generator, tokens: tuple[int, int]) -> None:
        shape = generator.embedding_shape
        if shape is not None and tuple(shape) != tokens:
            raise ConfigMismatchError(f"the brain model predicts (n_tokens, dim) = {tokens} but the generator "
                                      f"{type(generator).__name__} takes embeddings {tuple(shape)}")
        width = getattr(generator, "embed_dim", None)
        if shape is None and width is not None and int(width) != tokens[1]:
            raise ConfigMismatchError(f"the brain model predicts (n_tokens, dim) = {tokens} but the generator "
                                      f"{type(generator).__name__} takes embeddings of width {width}")

    @classmethod
    def from_spec(cls, spec: ReconstructionSpec | Mapping[str, Any]) -> Reconstructor:
        """Load every component named by ``spec`` onto ``spec.device`` and assemble them."""
        if not isinstance(spec, ReconstructionSpec):
            spec = ReconstructionSpec.from_dict(spec)
        device = spec.device
        brain = MindEyeHighLevel.from_pretrained(spec.brain, map_location=device)
        lowlevel = LowLevelModel.from_pretrained(spec.lowlevel, map_location=device) if spec.lowlevel else None
        encoder = _load_encoder(spec.encoder, device)  # type: ignore[arg-type]
        generator = _load_generator(spec.generator, device)  # type: ignore[arg-type]
        vae = _load_vae(spec.vae, device) if spec.vae is not None else None  # type: ignore[arg-type]
        return cls(brain, encoder, generator, lowlevel, vae, n_samples=spec.n_samples, strength=spec.strength,
                   steps=spec.steps, guidance=spec.guidance, prior_cond_scale=spec.prior_cond_scale,
                   trials_per_call=spec.trials_per_call)

    # -------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Device of the brain model (voxels are moved there)."""
        return next(self.brain_model.parameters()).device

    @property
    def n_voxels(self) -> int:
        return int(self.brain_model.n_voxels)

    @property
    def image_size(self) -> int:
        return int(self.generator.image_size)

    # ------------------------------------------------------------------------------------ checks
    def _check_voxels(self, voxels: Any) -> torch.Tensor:
        v = voxels if isinstance(voxels, torch.Tensor) else torch.as_tensor(np.asarray(voxels))
        if v.ndim != 2 or v.shape[0] == 0:
            raise DataFormatError(f"voxels must have shape (B, {self.n_voxels}) with B >= 1, got {tuple(v.shape)}")
        if v.shape[1] != self.n_voxels:
            raise DataFormatError(f"voxels: expected {self.n_voxels} voxels per trial (the brain model's n_voxels), "
                                  f"got {v.shape[1]}")
        if v.dtype == torch.bool or v.is_complex():
            raise DataFormatError(f"voxels must be real numbers, got dtype {v.dtype}")
        v = v.to(torch.float32)
        finite = torch.isfinite(v)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite.all(dim=1))[:, 0].tolist()
            raise DataFormatError(f"voxels contain NaN or infinite values (trials {rows[:10]})")
        return v

    def _check_strengths(self, strengths: Sequence[float] | float | None) -> list[float]:
        if strengths is None:
            values = [self.strength]
        elif isinstance(strengths, (int, float)):
            values = [float(strengths)]
        else:
            values = [float(s) for s in strengths]
        if not values:
            raise ValueError("strengths must hold at least one img2img strength")
        out: list[float] = []
        for s in values:
            check_strength(s)
            if s > 0 and self.lowlevel is None:
                raise ValueError(f"strength {s} > 0 needs a low-level model (img2img from its blurry image)")
            if s not in out:
                out.append(s)
        return out

    # ------------------------------------------------------------------------------------ pieces
    @torch.no_grad()
    def blurry_images(self, voxels: torch.Tensor) -> torch.Tensor | None:
        """``(B, V)`` -> low-level latents -> VAE decode -> ``(B, 3, H, W)`` on the uint8 levels (CPU), or
        ``None`` without a low-level model."""
        if self.lowlevel is None or self.vae is None:
            return None
        latents, _ = self.lowlevel(voxels.to(next(self.lowlevel.parameters()).device))
        return quantize_images(self.vae.decode(latents).float().cpu())

    @torch.no_grad()
    def sample_prior(self, backbone: torch.Tensor, seeds: Sequence[int],
                     sample_ids: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """``N`` prior samples per trial: backbone ``(B, T, D)`` -> ``(B, N, T, D)`` float16 (CPU).

        Row ``b * N + k`` of the prior batch uses ``Generator().manual_seed(row_seed(seeds[b], k, PRIOR_STREAM))``.
        ``sample_ids`` (``B`` lists of ``M`` candidate indices) draws only those candidates, ``(B, M, T, D)``:
        each keeps its own generator, so it is candidate ``k`` of the full draw (e.g. the app's slider, which
        needs only the picked one, at a fraction of the cost).
        """
        b, n = backbone.shape[0], self.n_samples
        assert self.brain_model.prior is not None
        if sample_ids is not None:
            ids = [[int(k) for k in row] for row in sample_ids]
            if len(ids) != b or len({len(row) for row in ids}) != 1 or any(not 0 <= k < n for row in ids for k in row):
                raise ValueError(f"sample_ids must be {b} equal-length lists of candidate indices in [0, {n}), got {sample_ids!r}")
            n = len(ids[0])
            gens = _generators([row_seed(int(seed), k, PRIOR_STREAM) for seed, row in zip(seeds, ids) for k in row])
        else:
            gens = _generators(row_seeds(seeds, n, PRIOR_STREAM))
        cond = backbone.repeat_interleave(n, dim=0)  # (B*N, T, D): candidate k of trial b at row b*N + k
        samples = self.brain_model.prior.sample(cond, generator=gens, cond_scale=self.prior_cond_scale)
        samples = samples.float().cpu().to(torch.float16)
        if not bool(torch.isfinite(samples).all()):
            raise DataFormatError("prior samples overflow float16 (non-finite after rounding)")
        return samples.view(b, n, *backbone.shape[1:])

    @torch.no_grad()
    def _generate_and_pick(self, prior_samples: torch.Tensor, blurry: torch.Tensor | None, seeds: Sequence[int],
                           strength: float, projector: torch.Tensor | None,
                           sample_ids: torch.Tensor | None = None) -> Candidates:
        """Candidates (and best-of-N when ``projector`` is given) for ``B`` trials at one strength.

        ``prior_samples`` ``(B, N, T, D)`` float16, ``blurry`` ``(B, 3, H, W)`` on uint8 levels or ``None``,
        ``projector`` ``(B, ...)`` with ``T * D`` values per trial or ``None``, ``sample_ids`` ``(B, N)``
        candidate numbers ``k`` for the generator seeds (default ``0..N-1``). Trials are processed
        ``trials_per_call`` at a time, the same way in :meth:`reconstruct` and :meth:`regenerate`.
        """
        b, n = prior_samples.shape[:2]
        size = self.image_size
        cands, scores = [], []
        for lo in range(0, b, self.trials_per_call):
            hi = min(b, lo + self.trials_per_call)
            emb = prior_samples[lo:hi].flatten(0, 1).to(torch.float32)  # (rows, T, D), rows = (hi - lo) * N
            init = None
            if strength > 0:
                assert blurry is not None
                init = blurry[lo:hi].repeat_interleave(n, dim=0)
            if sample_ids is None:
                gen_seeds = row_seeds(seeds[lo:hi], n, GENERATOR_STREAM)
            else:
                gen_seeds = [row_seed(seeds[i], int(k), GENERATOR_STREAM) for i in range(lo, hi) for k in sample_ids[i]]
            images = self.generator.generate(emb, init_images=init, strength=strength, n_samples=1,
                                             steps=self.steps, guidance=self.guidance, seed=gen_seeds)
            images = images[:, 0].float().cpu()  # (rows, 3, H, W)
            cands.append(images.view(hi - lo, n, 3, size, size))
            if projector is not None:
                emb_img = self.encoder.encode(images).float().cpu().reshape(hi - lo, n, -1)
                ref = projector[lo:hi].float().cpu().reshape(hi - lo, 1, -1)
                scores.append((F.normalize(emb_img, dim=-1) * F.normalize(ref, dim=-1)).sum(-1))
        candidates = torch.cat(cands)
        if projector is None:
            return Candidates(candidates)
        score = torch.cat(scores)
        picked = score.argmax(dim=1)
        finals = candidates[torch.arange(b), picked]
        return Candidates(candidates, score, picked, finals)

    # ---------------------------------------------------------------------------------------- API
    @torch.no_grad()
    def reconstruct(self, voxels: torch.Tensor, seeds: Sequence[int], *,
                    strengths: Sequence[float] | float | None = None,
                    return_candidates: bool = True) -> ReconstructionOutput:
        """Reconstruct ``B`` trials.

        Args:
            voxels: ``(B, n_voxels)`` betas (tensor or array; finite).
            seeds: ``B`` non-negative integer seeds, one per trial (see the module docstring).
            strengths: img2img strengths (paper convention) to compute; default ``[self.strength]``. Every
                strength reuses the same ``N`` prior samples and generator seeds, then picks best-of-N again.
            return_candidates: keep all ``(B, N, 3, H, W)`` candidates in the output (else only finals).

        Returns:
            A :class:`ReconstructionOutput` (CPU tensors).

        Raises:
            DataFormatError: bad voxels (shape, voxel count, NaN/inf) or seeds (count, sign, type).
            ValueError: a strength outside [0, 1], or > 0 without a low-level model.
        """
        v = self._check_voxels(voxels)
        b = v.shape[0]
        seed_list = _check_seeds(seeds, b)
        strength_list = self._check_strengths(strengths)

        # 1. low-level pipeline: voxels -> latents -> blurry image (uint8 levels)
        blurry = self.blurry_images(v)
        # 2. high-level pipeline: voxels -> backbone tokens (prior condition) + projector tokens (scoring)
        backbone, projector = self.brain_model(v.to(self.device))
        # 3. N prior samples per trial (float16, exactly what a bundle stores)
        prior_samples = self.sample_prior(backbone, seed_list)
        out = ReconstructionOutput(blurry=blurry, backbone=backbone.float().cpu(), projector=projector.float().cpu(),
                                   prior_samples=prior_samples, seeds=torch.tensor(seed_list, dtype=torch.int64))
        # 4. per strength: img2img candidates from the blurry image -> CLIP scores vs projector -> best of N
        for s in strength_list:
            res = self._generate_and_pick(prior_samples, blurry, seed_list, s, out.projector)
            if return_candidates:
                out.candidates[s] = res.candidates
            assert res.scores is not None and res.picked is not None and res.finals is not None
            out.scores[s], out.picked[s], out.finals[s] = res.scores, res.picked, res.finals
        return out

    @torch.no_grad()
    def regenerate(self, prior_samples: torch.Tensor, blurry: torch.Tensor | None, seeds: Sequence[int],
                   strength: float, projector: torch.Tensor | None = None, *,
                   sample_ids: Any = None) -> Candidates:
        """Recompute candidates from stored prior samples, exactly as :meth:`reconstruct` does.

        Args:
            prior_samples: ``(B, N, T, D)`` (float16 as stored; any float dtype is rounded to float16).
            blurry: ``(B, 3, H, W)`` uint8 or float in [0, 1] (rounded to uint8 levels); ``None`` only at
                strength 0.
            seeds: the ``B`` trial seeds used by :meth:`reconstruct`.
            strength: img2img strength, paper convention.
            projector: optional ``(B, T, D)`` (or flattened ``(B, T*D)``) projector outputs: also score and
                pick best-of-N.
            sample_ids: optional ``(B, N)`` non-negative ints: the candidate number ``k`` of each given
                prior sample, for its generator seed ``row_seed(seed, k, GENERATOR_STREAM)``; default
                ``0..N-1`` (all of a trial's samples, in order). E.g. ``prior_samples[:, picked]`` with
                ``sample_ids=picked[:, None]`` regenerates just the picked candidate, with its own noise.

        Returns:
            :class:`Candidates` with ``candidates (B, N, 3, H, W)`` (+ scores, picked, finals with a
            projector), bit-identical to :meth:`reconstruct`'s for the same seeds (``trials_per_call=1``).
        """
        if not isinstance(prior_samples, torch.Tensor) or prior_samples.ndim != 4 \
                or tuple(prior_samples.shape[2:]) != self.tokens or 0 in prior_samples.shape[:2]:
            shape = tuple(prior_samples.shape) if isinstance(prior_samples, torch.Tensor) else type(prior_samples).__name__
            raise DataFormatError(f"prior_samples must have shape (B, N, {self.tokens[0]}, {self.tokens[1]}), got {shape}")
        if not prior_samples.is_floating_point() or not bool(torch.isfinite(prior_samples).all()):
            raise DataFormatError("prior_samples must be finite floating-point values")
        b = prior_samples.shape[0]
        seed_list = _check_seeds(seeds, b)
        s = check_strength(strength)
        samples = prior_samples.detach().cpu().to(torch.float16)
        levels = None
        if blurry is not None:
            if not isinstance(blurry, torch.Tensor) or blurry.ndim != 4 or blurry.shape[0] != b \
                    or blurry.shape[1] != 3:
                shape = tuple(blurry.shape) if isinstance(blurry, torch.Tensor) else type(blurry).__name__
                raise DataFormatError(f"blurry must have shape ({b}, 3, H, W), got {shape}")
            if blurry.is_floating_point() and not bool(((blurry >= 0) & (blurry <= 1)).all()):
                raise DataFormatError("blurry must be uint8 or float in [0, 1]")
            levels = quantize_images(blurry.detach().cpu())
        elif s > 0:
            raise ValueError(f"strength {s} > 0 needs the blurry images (img2img)")
        proj = None
        if projector is not None:
            width = math.prod(self.tokens)
            if not isinstance(projector, torch.Tensor) or projector.ndim < 2 or projector.shape[0] != b \
                    or math.prod(projector.shape[1:]) != width:
                shape = tuple(projector.shape) if isinstance(projector, torch.Tensor) else type(projector).__name__
                raise DataFormatError(f"projector must hold {width} values per trial ({b}, {self.tokens[0]}, "
                                      f"{self.tokens[1]}), got {shape}")
            proj = projector.detach().float().cpu().reshape(b, width)
        ids = None
        if sample_ids is not None:
            ids = torch.as_tensor(np.asarray(sample_ids))
            if ids.shape != prior_samples.shape[:2] or ids.is_floating_point() or bool((ids < 0).any()):
                raise DataFormatError(f"sample_ids must be non-negative ints of shape {tuple(prior_samples.shape[:2])}, "
                                      f"got {ids.dtype} {tuple(ids.shape)}")
        return self._generate_and_pick(samples, levels, seed_list, s, proj, ids)

    def reconstruct_dataset(self, voxels: torch.Tensor, seeds: Sequence[int], *, batch_size: int = 8,
                            strengths: Sequence[float] | float | None = None, progress: bool = True,
                            return_candidates: bool = False) -> ReconstructionOutput:
        """:meth:`reconstruct` over ``(N, V)`` voxels in batches of ``batch_size`` trials (tqdm bar),
        outputs concatenated. Trials do not depend on the batching (per-trial seeds). Candidates are
        dropped by default (memory: ``N x n_samples`` images)."""
        from tqdm.auto import tqdm

        v = self._check_voxels(voxels)
        seed_list = _check_seeds(seeds, v.shape[0])
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        bs = int(batch_size)
        parts = []
        with tqdm(total=v.shape[0], desc="reconstruct", unit="trial", disable=not progress) as bar:
            for lo in range(0, v.shape[0], bs):
                parts.append(self.reconstruct(v[lo:lo + bs], seed_list[lo:lo + bs], strengths=strengths,
                                              return_candidates=return_candidates))
                bar.update(min(bs, v.shape[0] - lo))
        return ReconstructionOutput.concat(parts)
