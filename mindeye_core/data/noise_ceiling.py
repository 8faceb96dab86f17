"""Noise ceilings with NSD's definition (Allen et al., 2022).

For each voxel, with betas z-scored within sessions and images repeated n times::

    noise_var  = mean over images of the variance across that image's repetitions (ddof=1)
    signal_var = max(0, total_var - noise_var)        total_var = variance of all those betas (ddof=1)
    ncsnr      = sqrt(signal_var) / sqrt(noise_var)
    NC (%)     = 100 * ncsnr**2 / (ncsnr**2 + 1/n)    n = number of trials averaged

NSD assumes z-scored betas and uses ``signal_var = 1 - noise_var``; we compute ``total_var`` from the data,
which equals 1 for z-scored betas and stays correct otherwise.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataFormatError


def ncsnr(betas: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """Noise-ceiling SNR per voxel.

    Args:
        betas: (T, V) single-trial responses.
        image_index: (T,) image shown in each trial; only images with >= 2 trials are used.

    Returns:
        (V,) float64 ncsnr.
    """
    betas = np.asarray(betas, dtype=np.float64)
    image_index = np.asarray(image_index)
    if betas.ndim != 2 or image_index.shape != (betas.shape[0],):
        raise DataFormatError(f"betas (T, V) and image_index (T,) required, got {betas.shape} and {image_index.shape}")
    images, inverse, counts = np.unique(image_index, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= 2
    if not keep.any():
        raise DataFormatError("noise ceiling needs images with at least 2 repetitions")
    b = betas[keep]
    inv = np.unique(inverse[keep], return_inverse=True)[1]
    n_img = int(inv.max()) + 1
    cnt = np.bincount(inv, minlength=n_img).astype(np.float64)
    sums = np.zeros((n_img, b.shape[1]))
    np.add.at(sums, inv, b)
    means = sums / cnt[:, None]
    sq = np.zeros_like(sums)
    np.add.at(sq, inv, (b - means[inv]) ** 2)
    noise_var = (sq / (cnt[:, None] - 1)).mean(axis=0)
    total_var = b.var(axis=0, ddof=1)
    signal_var = np.clip(total_var - noise_var, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sqrt(signal_var) / np.sqrt(noise_var)
    return np.where(noise_var > 0, out, np.inf)


def noise_ceiling(ncsnr_values: np.ndarray, n_trials: int) -> np.ndarray:
    """Percent of variance explainable when averaging ``n_trials`` trials: 100 ncsnr^2 / (ncsnr^2 + 1/n)."""
    s2 = np.asarray(ncsnr_values, dtype=np.float64) ** 2
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    return 100.0 * s2 / (s2 + 1.0 / n_trials)
