"""Two-way identification and correlation distances on feature vectors.

**Two-way identification** (MindEye Table 1 "Alex(2)", "Alex(5)", "Incep", "CLIP"), exactly as the
released evaluation code computes it. With ``G`` the ground-truth features and ``R`` the reconstruction
features (``N`` rows each, flattened), let ``r[i, j] = pearson(G_i, R_j)`` (rows ground truth, columns
reconstruction). Reconstruction ``j`` scores the fraction of the *other* ground truths that correlate
less with it than its own ground truth does::

    score_j = #{ i != j : r[i, j] < r[j, j] } / (N - 1)
    2-way   = mean_j score_j          (chance 0.5, perfect 1.0)

The comparison is strict: a tie counts as a failure (``np.corrcoef(...) < congruents`` in the official
code). Every one of the ``N - 1`` comparisons is used (no sampling), as the paper's Appendix A.5 says.

**Correlation distance** ("Eff", "SwAV"): ``mean_i (1 - pearson(G_i, R_i))`` (``scipy.spatial.distance.
correlation`` per pair, then the mean; lower is better).

Features go in as ``(N, ...)`` arrays/tensors (flattened to ``(N, D)``); they must be finite and no row may
be constant (its correlation is undefined). Correlations are computed in float64, in column chunks so the
``N x N`` matrix is never needed at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DataFormatError
from .lowlevel import check_ids


def as_features(x: Any, name: str = "features") -> torch.Tensor:
    """``(N, ...)`` array/tensor -> float64 ``(N, D)`` tensor; raises on NaN/inf or fewer than 2 dims."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim < 2:
        raise DataFormatError(f"{name}: expected (N, D) features, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise DataFormatError(f"{name}: expected numeric features, got dtype {t.dtype}")
    t = t.reshape(t.shape[0], -1).to(device="cpu", dtype=torch.float64)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        row = int(torch.nonzero(bad.any(dim=1))[0, 0])
        raise DataFormatError(f"{name}: {int(bad.sum())} NaN/inf values (first in row {row})")
    return t


def _standardise(t: torch.Tensor, name: str) -> torch.Tensor:
    """Centre each row and scale it to unit norm, so that ``a @ b.T`` is the Pearson correlation."""
    c = t - t.mean(dim=1, keepdim=True)
    n = c.norm(dim=1, keepdim=True)
    zero = torch.nonzero(n[:, 0] == 0)
    if zero.numel():
        raise DataFormatError(f"{name}: row {int(zero[0, 0])} is constant, its correlation is undefined")
    return c / n


def _paired(gt: Any, recon: Any, gt_ids: Any, recon_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
    g = as_features(gt, "ground-truth features")
    r = as_features(recon, "reconstruction features")
    if g.shape[0] != r.shape[0]:
        raise DataFormatError(f"got {r.shape[0]} reconstruction features but {g.shape[0]} ground-truth features")
    if g.shape[1] != r.shape[1]:
        raise DataFormatError(f"feature sizes differ: ground truth {g.shape[1]}, reconstruction {r.shape[1]}")
    check_ids(recon_ids, gt_ids, g.shape[0])
    return g, r


def two_way_identification_per_sample(
    gt_features: Any,
    recon_features: Any,
    *,
    gt_ids: Any = None,
    recon_ids: Any = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Per-reconstruction two-way identification score ``score_j`` (see module docstring).

    Args:
        gt_features: ``(N, ...)`` features of the ground-truth images.
        recon_features: ``(N, ...)`` features of the reconstructions, row ``j`` paired with ground truth ``j``.
        gt_ids, recon_ids: optional ``(N,)`` ids checked for equal order.
        chunk_size: reconstructions handled per step (memory ``N x chunk_size`` float64).

    Returns:
        ``(N,)`` float64 in [0, 1].
    """
    g, r = _paired(gt_features, recon_features, gt_ids, recon_ids)
    n = g.shape[0]
    if n < 2:
        raise DataFormatError(f"two-way identification needs at least 2 pairs, got {n}")
    g = _standardise(g, "ground-truth features")
    r = _standardise(r, "reconstruction features")
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk_size):
        e = min(n, s + chunk_size)
        corr = g @ r[s:e].T  # (N, c): corr[i, j - s] = r[i, j]
        cols = torch.arange(s, e)
        congruent = corr[cols, cols - s]  # r[j, j]
        wins = (corr < congruent.unsqueeze(0)).sum(dim=0)  # the diagonal never wins against itself
        out[s:e] = (wins.to(torch.float64) / (n - 1)).numpy()
    return out


def two_way_identification(gt_features: Any, recon_features: Any, **kwargs: Any) -> float:
    """Mean two-way identification accuracy in [0, 1]; arguments as :func:`two_way_identification_per_sample`."""
    return float(two_way_identification_per_sample(gt_features, recon_features, **kwargs).mean())


def correlation_distance_per_sample(gt_features: Any, recon_features: Any, *, gt_ids: Any = None, recon_ids: Any = None) -> np.ndarray:
    """``(N,)`` float64 ``1 - pearson(G_i, R_i)`` (scipy's ``correlation`` distance) for each pair."""
    g, r = _paired(gt_features, recon_features, gt_ids, recon_ids)
    g = _standardise(g, "ground-truth features")
    r = _standardise(r, "reconstruction features")
    return (1.0 - (g * r).sum(dim=1)).numpy()


def correlation_distance(gt_features: Any, recon_features: Any, **kwargs: Any) -> float:
    """Mean correlation distance (paper "Eff" / "SwAV", lower is better)."""
    return float(correlation_distance_per_sample(gt_features, recon_features, **kwargs).mean())
