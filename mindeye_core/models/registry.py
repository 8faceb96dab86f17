"""Named model variants (timm-style): ``create_model(name, **overrides)``, ``list_models()``.

=================  =====================  ==========================================================
name               class                  what
=================  =====================  ==========================================================
``nsd-257x768``    MindEyeHighLevel       MindEye for Versatile Diffusion: CLIP ViT-L/14 hidden tokens
``nsd-1x768``      MindEyeHighLevel       final-layer CLIP (SD image variations / LAION retrieval)
``nsd-lowlevel``   LowLevelModel          voxels -> 4 x 64 x 64 SD VAE latents + VICRegL features
``demo-highlevel`` MindEyeHighLevel       demo world, tiny-CLIP hidden tokens (65 x 128), width 512
``demo-1x``        MindEyeHighLevel       demo world, final tiny-CLIP embedding (1 x 128)
``demo-lowlevel``  LowLevelModel          demo world: 4 x 4 map -> 4 x 16 x 16 tiny-VAE latents
``test-*``         (tiny)                 for unit tests; build in milliseconds
=================  =====================  ==========================================================

NSD variants default to subject 1 (15,724 voxels); pass ``n_voxels=NSD_VOXELS["subj02"]`` etc. for the
other subjects. Demo variants match the shipped tiny models (:mod:`mindeye_core.demo_models`) and default
to the demo world's subj01 (2,300 voxels); pass ``n_voxels=`` for the other subjects (overrides are
validated against the class signature).

For ``nsd-1x768`` the official code fine-tuned a DALL-E 2 prior pre-trained on LAION-Aesthetics
(1000 steps, prior loss weight 0.03); here the prior is trained from scratch with the same 1000
steps; see :data:`PRIOR_LOSS_WEIGHTS`.
"""

from __future__ import annotations

import fnmatch
import inspect
from types import MappingProxyType
from typing import Any, Mapping

from ..io import ConfigModule
from .brain import BrainMLP, MindEyeHighLevel
from .lowlevel import LowLevelModel
from .prior import DiffusionPrior

__all__ = ["NSD_VOXELS", "PRIOR_LOSS_WEIGHTS", "create_model", "list_models", "model_config", "model_class"]

NSD_VOXELS: Mapping[str, int] = MappingProxyType(
    {
        "subj01": 15724,
        "subj02": 14278,
        "subj03": 15226,
        "subj04": 13153,
        "subj05": 13039,
        "subj06": 17907,
        "subj07": 12682,
        "subj08": 14386,
    }
)
"""nsdgeneral voxel counts per NSD subject (from the official training script)."""

PRIOR_LOSS_WEIGHTS: Mapping[str, float] = MappingProxyType({"nsd-257x768": 30.0, "nsd-1x768": 0.03})
"""Weight of the prior MSE in the total loss per NSD variant (official code; default 30)."""

_VARIANTS: Mapping[str, tuple[type[ConfigModule], Mapping[str, Any]]] = MappingProxyType(
    {
        "nsd-257x768": (MindEyeHighLevel, {}),
        "nsd-1x768": (MindEyeHighLevel, {"n_tokens": 1, "prior_timesteps": 1000}),
        "nsd-lowlevel": (LowLevelModel, {}),
        "demo-1x": (
            MindEyeHighLevel,
            {"n_voxels": 2300, "hidden": 512, "n_tokens": 1, "dim": 128, "proj_hidden": 256,
             "prior_depth": 2, "prior_heads": 4, "prior_dim_head": 16},
        ),
        "demo-highlevel": (
            MindEyeHighLevel,
            {"n_voxels": 2300, "hidden": 512, "n_tokens": 65, "dim": 128, "proj_hidden": 256,
             "prior_depth": 2, "prior_heads": 4, "prior_dim_head": 16},
        ),
        "demo-lowlevel": (
            LowLevelModel,
            {"n_voxels": 2300, "hidden": 512, "latent_channels": 32, "latent_size": 4,
             "block_out_channels": [32, 64, 128], "norm_num_groups": 16, "proj_dim": 128},
        ),
        "test-highlevel": (
            MindEyeHighLevel,
            {"n_voxels": 50, "hidden": 32, "n_blocks": 2, "n_tokens": 5, "dim": 16, "proj_hidden": 24,
             "prior_depth": 1, "prior_heads": 2, "prior_dim_head": 8, "prior_timesteps": 10},
        ),
        "test-1x": (
            MindEyeHighLevel,
            {"n_voxels": 50, "hidden": 32, "n_blocks": 2, "n_tokens": 1, "dim": 16, "proj_hidden": 24,
             "prior_depth": 1, "prior_heads": 2, "prior_dim_head": 8, "prior_timesteps": 10},
        ),
        "test-brain": (
            BrainMLP,
            {"n_voxels": 50, "hidden": 32, "n_blocks": 2, "n_tokens": 5, "dim": 16, "proj_hidden": 24},
        ),
        "test-prior": (
            DiffusionPrior,
            {"dim": 16, "num_tokens": 5, "depth": 1, "heads": 2, "dim_head": 8, "timesteps": 10},
        ),
        "test-lowlevel": (
            LowLevelModel,
            {"n_voxels": 50, "hidden": 32, "n_blocks": 2, "latent_channels": 8, "latent_size": 4,
             "block_out_channels": [8, 16], "norm_num_groups": 4, "proj_dim": 16},
        ),
    }
)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted variant names, optionally filtered with a glob ``pattern`` (e.g. ``"nsd-*"``)."""
    names = sorted(_VARIANTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _lookup(name: str) -> tuple[type[ConfigModule], Mapping[str, Any]]:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown model variant {name!r}; available: {', '.join(list_models())}") from None


def model_class(name: str) -> type[ConfigModule]:
    """The class a variant builds."""
    return _lookup(name)[0]


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Full constructor config of a variant (defaults filled in) with ``overrides`` applied.

    Raises:
        KeyError: unknown variant.
        TypeError: an override that the variant's class does not accept (the message lists valid keys).
    """
    cls, preset = _lookup(name)
    params = {
        k: p.default for k, p in list(inspect.signature(cls.__init__).parameters.items())[1:]
    }
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise TypeError(f"{name} ({cls.__name__}) has no config keys {unknown}; valid keys: {sorted(params)}")
    cfg = {**params, **preset, **overrides}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def create_model(name: str, **overrides: Any) -> ConfigModule:
    """Build variant ``name`` with random weights (``overrides`` change config values).

    Tip: ``with torch.device("meta"): create_model("nsd-257x768")`` builds the 1B-parameter model
    without allocating memory (parameter counts, shape checks).
    """
    cls, _ = _lookup(name)
    return cls(**model_config(name, **overrides))
