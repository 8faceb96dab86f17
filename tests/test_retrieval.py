"""Retrieval protocol against brute force (incl. ties), and the Retriever implementations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mindeye_core.errors import DataFormatError
from mindeye_core.metrics.retrieval import draw_subsets, full_set_ranks, retrieval_metrics


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_ranks(brain: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b, v = _unit(brain.reshape(len(brain), -1)), _unit(image.reshape(len(image), -1))
    n = len(b)
    b2i = np.zeros(n, int)
    i2b = np.zeros(n, int)
    for i in range(n):
        own = b[i] @ v[i]
        for j in range(n):
            if j != i and b[i] @ v[j] >= own:
                b2i[i] += 1
            if j != i and b[j] @ v[i] >= own:
                i2b[i] += 1
    return b2i, i2b


def test_full_ranks_match_brute_force_random() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((50, 3, 8))
    brain = img + 1.2 * rng.standard_normal(img.shape)
    ranks = full_set_ranks(brain, img, chunk_size=7, dtype=torch.float64)
    b2i, i2b = brute_ranks(brain, img)
    np.testing.assert_array_equal(ranks["brain_to_image"], b2i)
    np.testing.assert_array_equal(ranks["image_to_brain"], i2b)
    assert not np.array_equal(b2i, i2b)  # the two directions really differ


def test_ties_are_misses() -> None:
    pats = np.array([p for p in itertools.product([-1.0, 1.0], repeat=4)])
    rng = np.random.default_rng(1)
    img = pats[rng.integers(0, 16, 40)]
    brain = pats[rng.integers(0, 16, 40)]
    brain[:5] = img[:5]
    ranks = full_set_ranks(brain, img, chunk_size=6)
    b2i, i2b = brute_ranks(brain, img)
    np.testing.assert_array_equal(ranks["brain_to_image"], b2i)
    np.testing.assert_array_equal(ranks["image_to_brain"], i2b)
    # duplicate images exist, so even a perfect brain embedding ties with another candidate -> miss
    dup = brute_ranks(img, img)[0]
    assert (dup > 0).any()
    np.testing.assert_array_equal(full_set_ranks(img, img)["brain_to_image"], dup)


def test_among_300_matches_brute_force_per_draw() -> None:
    rng = np.random.default_rng(2)
    n = 420
    img = rng.standard_normal((n, 16))
    brain = img + 2.0 * rng.standard_normal((n, 16))
    res = retrieval_metrics(brain, img, n_draws=5, seed=7)
    subsets = draw_subsets(n, 300, 5, seed=7)
    for d, idx in enumerate(subsets):
        b2i, i2b = brute_ranks(brain[idx], img[idx])
        assert res.brain_to_image_draws[d] == pytest.approx((b2i == 0).mean())
        assert res.image_to_brain_draws[d] == pytest.approx((i2b == 0).mean())
    assert res.brain_to_image == pytest.approx(np.mean(res.brain_to_image_draws))
    lo, hi = res.brain_to_image_ci95
    assert lo <= res.brain_to_image <= hi
    full_b2i, full_i2b = brute_ranks(brain, img)
    assert res.full_brain_to_image == pytest.approx((full_b2i == 0).mean())
    assert res.full_image_to_brain == pytest.approx((full_i2b == 0).mean())
    assert (res.n_samples, res.n_candidates, res.n_draws) == (n, 300, 5)
    # seeded: same seed same draws, other seed other draws
    assert retrieval_metrics(brain, img, n_draws=5, seed=7).brain_to_image_draws == res.brain_to_image_draws
    assert not np.array_equal(draw_subsets(n, 300, 5, seed=8), subsets)
    assert all(len(set(s)) == 300 for s in subsets)


def test_perfect_and_chance() -> None:
    rng = np.random.default_rng(3)
    img = rng.standard_normal((600, 32))
    perfect = retrieval_metrics(img, img, n_draws=3)
    assert perfect.brain_to_image == perfect.image_to_brain == perfect.full_brain_to_image == 1.0
    chance = retrieval_metrics(rng.standard_normal((600, 32)), img, n_draws=10)
    assert chance.brain_to_image < 0.03 and chance.full_image_to_brain < 0.02


def test_small_sets_use_all_samples() -> None:
    rng = np.random.default_rng(4)
    img = rng.standard_normal((40, 8))
    res = retrieval_metrics(img + 0.1 * rng.standard_normal((40, 8)), img, n_draws=3)
    assert res.n_candidates == 40
    assert res.brain_to_image_draws[0] == res.brain_to_image_draws[1] == res.full_brain_to_image
    d = res.to_dict()
    assert d["brain_to_image_ci95"][0] <= d["brain_to_image"]


def test_bad_embeddings_raise() -> None:
    rng = np.random.default_rng(5)
    img = rng.standard_normal((10, 4))
    with pytest.raises(DataFormatError, match="got 9 brain embeddings but 10 image embeddings"):
        retrieval_metrics(img[:9], img)
    bad = img.copy()
    bad[4, 1] = np.inf
    with pytest.raises(DataFormatError, match=r"brain embeddings: 1 NaN/inf values \(first in row 4\)"):
        full_set_ranks(bad, img)
    zero = img.copy()
    zero[2] = 0
    with pytest.raises(DataFormatError, match="row 2 is all zeros"):
        full_set_ranks(img, zero)
    with pytest.raises(DataFormatError, match="embedding sizes differ"):
        full_set_ranks(img, img[:, :3])
    with pytest.raises(DataFormatError, match="brain embeddings and image embeddings are not in the same order"):
        retrieval_metrics(img, img, brain_ids=np.arange(10), image_ids=np.roll(np.arange(10), 1))
    assert retrieval_metrics(img, img, brain_ids=np.arange(10), image_ids=np.arange(10), n_draws=1).full_brain_to_image == 1.0


# ------------------------------------------------------------------------- Retriever implementations
def test_exact_and_faiss_retrievers_agree_with_brute_force() -> None:
    from mindeye_core.retrieval import ExactRetriever, FaissRetriever, Retriever

    rng = np.random.default_rng(6)
    cand = rng.standard_normal((200, 12)).astype(np.float32)
    q = rng.standard_normal((15, 12)).astype(np.float32)
    sims = _unit(q) @ _unit(cand).T
    want_idx = np.argsort(-sims, axis=1)[:, :5]
    ids = np.arange(1000, 1200)
    for r in (ExactRetriever(cand, ids, chunk_size=4), FaissRetriever(cand, ids)):
        assert isinstance(r, Retriever)
        scores, got = r.search(q, 5)
        np.testing.assert_array_equal(got, ids[want_idx])
        np.testing.assert_allclose(scores, np.take_along_axis(sims, want_idx, 1), rtol=1e-5, atol=1e-6)
    assert ExactRetriever(cand).search(q, 500)[1].shape == (15, 200)  # k capped at N


def test_retriever_errors() -> None:
    from mindeye_core.errors import MindEyeError
    from mindeye_core.retrieval import ExactRetriever

    cand = np.random.default_rng(7).standard_normal((10, 4))
    with pytest.raises(MindEyeError, match="query dimension 3 != candidate dimension 4"):
        ExactRetriever(cand).search(cand[:, :3], 2)
    with pytest.raises(MindEyeError, match=r"ids must have shape \(10,\)"):
        ExactRetriever(cand, ids=np.arange(9))
