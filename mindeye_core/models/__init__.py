"""MindEye models: brain MLP backbone + projector, diffusion prior, low-level model, ridge baseline.

- :class:`BrainMLP`: voxels -> (backbone tokens, projector tokens);
  :func:`load_official_brain_checkpoint` reads the released MindEye ``BrainNetwork`` weights.
- :class:`DiffusionPrior`: backbone tokens -> aligned target tokens (x0-predicting DDPM, explicit sampler).
- :class:`MindEyeHighLevel`: BrainMLP + DiffusionPrior in one checkpoint.
- :class:`LowLevelModel`: voxels -> VAE latents + contrastive features.
- :class:`RidgeBaseline`: voxels -> any target space, alpha by K-fold CV.
- :func:`create_model` / :func:`list_models`: named variants (``nsd-257x768``, ``nsd-1x768``,
  ``nsd-lowlevel``, ``demo-*``, ``test-*``).

Every torch model saves/loads as ``config.json`` + ``model.safetensors`` (``save_pretrained`` /
``from_pretrained``); the ridge baseline via ``save`` / ``RidgeBaseline.load``.
"""

from .brain import BrainMLP, MindEyeHighLevel, load_official_brain_checkpoint
from .lowlevel import LowLevelModel
from .prior import DiffusionPrior, NoiseSchedule, cosine_beta_schedule
from .registry import NSD_VOXELS, PRIOR_LOSS_WEIGHTS, create_model, list_models, model_class, model_config
from .ridge import NotFittedError, RidgeBaseline

__all__ = [
    "BrainMLP",
    "DiffusionPrior",
    "LowLevelModel",
    "MindEyeHighLevel",
    "NSD_VOXELS",
    "NoiseSchedule",
    "NotFittedError",
    "PRIOR_LOSS_WEIGHTS",
    "RidgeBaseline",
    "cosine_beta_schedule",
    "create_model",
    "list_models",
    "load_official_brain_checkpoint",
    "model_class",
    "model_config",
]
