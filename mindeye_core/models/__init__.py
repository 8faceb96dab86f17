"""MindEye models: brain MLP backbone + projector, diffusion prior, low-level model, ridge baseline.

- :class:`~mindeye_core.models.ridge.RidgeBaseline`: voxels -> any target space, alpha by K-fold CV.
"""

from .ridge import NotFittedError, RidgeBaseline

__all__ = ["NotFittedError", "RidgeBaseline"]
