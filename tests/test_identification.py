"""Two-way identification and correlation distance against brute-force loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import torch

from mindeye_core.errors import DataFormatError
from mindeye_core.metrics.identification import (
    correlation_distance,
    correlation_distance_per_sample,
    two_way_identification,
    two_way_identification_per_sample,
)


def brute_two_way(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Independent loop: for recon j, count other ground truths i with corr(g_i, r_j) < corr(g_j, r_j)."""
    n = len(gt)
    out = np.zeros(n)
    for j in range(n):
        own = np.corrcoef(gt[j], rec[j])[0, 1]
        wins = sum(np.corrcoef(gt[i], rec[j])[0, 1] < own for i in range(n) if i != j)
        out[j] = wins / (n - 1)
    return out


def official_two_way(gt: np.ndarray, rec: np.ndarray) -> float:
    """The formula of the released code, written out: corrcoef block, strict <, column sums."""
    n = len(gt)
    r = np.corrcoef(gt, rec)[:n, n:]
    return float(np.mean(np.sum(r < np.diag(r), axis=0)) / (n - 1))


def test_matches_brute_force_random() -> None:
    rng = np.random.default_rng(0)
    gt = rng.standard_normal((30, 17))
    rec = gt + 1.5 * rng.standard_normal((30, 17))
    got = two_way_identification_per_sample(gt, rec, chunk_size=7)
    np.testing.assert_allclose(got, brute_two_way(gt, rec))
    assert two_way_identification(gt, rec) == pytest.approx(official_two_way(gt, rec))


def test_ties_count_as_failures() -> None:
    # zero-mean +-1 vectors of length 4: correlations are exact multiples of 0.5, so ties are exact
    patterns = [p for p in itertools.product([-1.0, 1.0], repeat=4) if sum(p) == 0]
    rng = np.random.default_rng(1)
    gt = np.array([patterns[k] for k in rng.integers(0, len(patterns), 25)])
    rec = np.array([patterns[k] for k in rng.integers(0, len(patterns), 25)])
    got = two_way_identification_per_sample(gt, rec, chunk_size=4)
    want = brute_two_way(gt, rec)
    np.testing.assert_array_equal(got, want)
    # ties really occur here, and a "<=" rule would give a different number
    n = len(gt)
    r = np.corrcoef(gt, rec)[:n, n:]
    assert (r == np.diag(r)).sum() > n
    le = (np.sum(r <= np.diag(r), axis=0) - 1) / (n - 1)
    assert not np.allclose(got, le)


def test_perfect_and_shuffled() -> None:
    rng = np.random.default_rng(2)
    gt = rng.standard_normal((200, 64))
    assert two_way_identification(gt, gt) == 1.0
    shuffled = gt[rng.permutation(200)]
    assert two_way_identification(gt, shuffled) == pytest.approx(0.5, abs=0.05)
    assert two_way_identification(gt, rng.standard_normal((200, 64))) == pytest.approx(0.5, abs=0.05)


def test_accepts_tensors_and_flattens() -> None:
    rng = np.random.default_rng(3)
    gt = rng.standard_normal((12, 2, 3, 4)).astype(np.float32)
    rec = gt + rng.standard_normal(gt.shape).astype(np.float32)
    a = two_way_identification(torch.from_numpy(gt), torch.from_numpy(rec))
    b = official_two_way(gt.reshape(12, -1).astype(np.float64), rec.reshape(12, -1).astype(np.float64))
    assert a == pytest.approx(b)


def test_correlation_distance_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    gt = rng.standard_normal((9, 33))
    rec = gt + rng.standard_normal((9, 33))
    want = np.array([ssd.correlation(gt[i], rec[i]) for i in range(9)])
    np.testing.assert_allclose(correlation_distance_per_sample(gt, rec), want, rtol=1e-10)
    assert correlation_distance(gt, rec) == pytest.approx(want.mean())
    assert correlation_distance(gt, gt) == pytest.approx(0.0, abs=1e-12)


def test_bad_features_raise() -> None:
    rng = np.random.default_rng(5)
    gt = rng.standard_normal((6, 5))
    with pytest.raises(DataFormatError, match="got 5 reconstruction features but 6 ground-truth"):
        two_way_identification(gt, gt[:5])
    bad = gt.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataFormatError, match=r"reconstruction features: 1 NaN/inf values \(first in row 3\)"):
        two_way_identification(gt, bad)
    with pytest.raises(DataFormatError, match="ground-truth features: 1 NaN/inf"):
        correlation_distance(bad, gt)
    const = gt.copy()
    const[2] = 1.0
    with pytest.raises(DataFormatError, match="row 2 is constant"):
        two_way_identification(gt, const)
    with pytest.raises(DataFormatError, match="feature sizes differ"):
        two_way_identification(gt, gt[:, :4])
    with pytest.raises(DataFormatError, match="not in the same order"):
        two_way_identification(gt, gt, gt_ids=np.arange(6), recon_ids=np.arange(6)[::-1])
    with pytest.raises(DataFormatError, match="at least 2 pairs"):
        two_way_identification(gt[:1], gt[:1])
