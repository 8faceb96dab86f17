"""The similarity core against numpy brute force: normalisation, cosine, top-k (ties, chunks), strict ranks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mindeye_core import similarity as S
from mindeye_core.errors import DataFormatError


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_top_k(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full stable argsort of the cosine matrix (ties: lower index first)."""
    sims = _unit(q) @ _unit(c).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def brute_ranks(sims: np.ndarray) -> np.ndarray:
    n = len(sims)
    return np.array([sum(1 for j in range(n) if j != i and sims[i, j] >= sims[i, i]) for i in range(n)])


def _tie_patterns(n: int, seed: int) -> np.ndarray:
    """Rows drawn from the 16 +-1 patterns of length 4: many exact ties, exactly representable cosines."""
    pats = np.array(list(itertools.product([-1.0, 1.0], repeat=4)))
    return pats[np.random.default_rng(seed).integers(0, 16, n)]


def test_normalise_flattens_and_has_unit_rows() -> None:
    x = np.random.default_rng(0).standard_normal((5, 3, 4)) * 1e30  # would overflow a float32 squared norm
    out = S.normalise(x)
    assert out.shape == (5, 12) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, _unit(x), rtol=1e-5, atol=1e-7)
    assert S.normalise(x, dtype=np.float64).dtype == np.float64
    t = torch.from_numpy(x[:, 0] * 1e-30).to(torch.bfloat16)  # torch input by duck typing, any dtype
    np.testing.assert_allclose(S.normalise(t), _unit(t.float().numpy()), rtol=1e-6)


def test_normalise_bad_input_names_the_row() -> None:
    x = np.ones((6, 4), np.float32)
    x[3, 2] = np.nan
    with pytest.raises(DataFormatError, match=r"queries: 1 NaN/inf values \(first in row 3\)"):
        S.normalise(x, "queries")
    x[3, 2] = 1.0
    x[4] = 0
    with pytest.raises(DataFormatError, match="brain: row 4 is all zeros"):
        S.normalise(x, "brain")
    with pytest.raises(DataFormatError, match=r"expected \(N, D\) embeddings, got shape \(4,\)"):
        S.normalise(np.ones(4))
    with pytest.raises(DataFormatError, match="no embeddings"):
        S.normalise(np.ones((0, 3)))
    with pytest.raises(DataFormatError, match="must be numeric"):
        S.normalise(np.array([["a"], ["b"]]))


def test_cosine_matrix_matches_reference_across_chunks() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((23, 2, 5)), rng.standard_normal((11, 10))
    ref = _unit(a) @ _unit(b).T
    for chunk in (1, 4, 23, 100):
        got = S.cosine_matrix(a, b, chunk_size=chunk)
        assert got.shape == (23, 11) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataFormatError, match="queries have dimension 10 but candidates have dimension 9"):
        S.cosine_matrix(b, b[:, :9])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        S.cosine_matrix(a, b, chunk_size=0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 40])
def test_top_k_matches_argsort_random(chunk: int) -> None:
    rng = np.random.default_rng(2)
    q, c = rng.standard_normal((17, 6)), rng.standard_normal((40, 6))
    for k in (1, 5, 40, 99):
        idx, val = S.top_k(q, c, k, chunk_size=chunk)
        want_idx, want_val = brute_top_k(q, c, min(k, 40))
        assert idx.dtype == np.int64 and val.dtype == np.float32 and idx.shape == (17, min(k, 40))
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(val, want_val, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="k must be >= 1"):
        S.top_k(q, c, 0)


def test_top_k_ties_lower_index_first_including_at_the_cut() -> None:
    q, c = _tie_patterns(12, 3), _tie_patterns(60, 4)
    for k in (1, 2, 3, 8, 59):  # the k-th score is tied with candidates beyond the cut for most rows
        idx, val = S.top_k(q, c, k, chunk_size=5)
        want_idx, want_val = brute_top_k(q, c, k)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(val, want_val.astype(np.float32))
    # an explicit case: candidates 1 and 3 tie with the query exactly, 2 ties at the cut with 0
    sim = np.array([[0.5, 1.0, 0.5, 1.0, 0.2]])
    idx, val = S.top_k_of_similarity(sim, 3)
    np.testing.assert_array_equal(idx, [[1, 3, 0]])
    np.testing.assert_array_equal(S.top_k_of_similarity(sim[0], 2)[0], [1, 3])  # 1-D input


def test_top_k_torch_input() -> None:
    rng = np.random.default_rng(5)
    q, c = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0)), rng.standard_normal((9, 6))
    idx, val = S.top_k(q, c, 4)
    want_idx, want_val = brute_top_k(q.numpy(), c, 4)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(val, want_val, rtol=1e-5, atol=1e-6)


def test_ranks_both_forms_match_brute_force_with_ties() -> None:
    rng = np.random.default_rng(6)
    img = rng.standard_normal((31, 2, 4))
    brain = img + rng.standard_normal(img.shape)
    sims = _unit(brain) @ _unit(img).T
    for chunk in (1, 4, 31, 64):
        np.testing.assert_array_equal(S.ranks(brain, img, chunk_size=chunk, dtype=np.float64), brute_ranks(sims))
        np.testing.assert_array_equal(S.ranks(sims, chunk_size=chunk), brute_ranks(sims))
        np.testing.assert_array_equal(S.ranks(sims.T, chunk_size=chunk), brute_ranks(sims.T))
    ti, tb = _tie_patterns(40, 7), _tie_patterns(40, 8)
    tb[:5] = ti[:5]
    tie_sims = _unit(tb) @ _unit(ti).T
    np.testing.assert_array_equal(S.ranks(tb, ti, chunk_size=6), brute_ranks(tie_sims))
    # a perfect brain embedding still misses when its image has a duplicate: ties count against
    dup = S.ranks(ti, ti)
    assert (dup > 0).any() and (dup == brute_ranks(_unit(ti) @ _unit(ti).T)).all()
    np.testing.assert_array_equal(S.ranks(np.eye(3)), [0, 0, 0])
    np.testing.assert_array_equal(S.ranks(np.ones((3, 3))), [2, 2, 2])  # an all-equal row ranks last


def test_full_set_ranks_and_pair_errors() -> None:
    rng = np.random.default_rng(9)
    img = rng.standard_normal((20, 8)).astype(np.float32)
    brain = torch.from_numpy(img + rng.standard_normal(img.shape).astype(np.float32))
    out = S.full_set_ranks(brain, img, chunk_size=3)
    sims = _unit(brain.numpy()) @ _unit(img).T
    np.testing.assert_array_equal(out["brain_to_image"], brute_ranks(sims))
    np.testing.assert_array_equal(out["image_to_brain"], brute_ranks(sims.T))
    assert out["brain_to_image"].dtype == np.int64
    chunked = S.full_set_ranks(brain, img, chunk_size=3, max_matrix_bytes=0)  # never builds the N x N matrix
    for d in S.DIRECTIONS:
        np.testing.assert_array_equal(chunked[d], out[d])
    with pytest.raises(DataFormatError, match="got 19 brain embeddings but 20 image embeddings"):
        S.full_set_ranks(img[:19], img)
    with pytest.raises(DataFormatError, match="embedding sizes differ: brain embeddings 8, image embeddings 3"):
        S.full_set_ranks(img, img[:, :3])
    with pytest.raises(DataFormatError, match="at least 2 pairs"):
        S.full_set_ranks(img[:1], img[:1])
    with pytest.raises(DataFormatError, match="got 3 queries but 4 candidates"):
        S.ranks(img[:3], img[:4])
    with pytest.raises(DataFormatError, match=r"square \(N, N\) matrix"):
        S.ranks(np.ones((3, 4)))


def test_consumers_share_the_core() -> None:
    """metrics.retrieval and ExactRetriever give the core's numbers (no second implementation)."""
    from mindeye_core.metrics.retrieval import full_set_ranks, normalise_embeddings, retrieval_metrics_from_similarity
    from mindeye_core.retrieval import ExactRetriever

    rng = np.random.default_rng(10)
    img = rng.standard_normal((30, 5))
    brain = img + 0.8 * rng.standard_normal(img.shape)
    core = S.full_set_ranks(brain, img)
    wrapped = full_set_ranks(brain, img)
    for d in S.DIRECTIONS:
        np.testing.assert_array_equal(wrapped[d], core[d])
    assert isinstance(normalise_embeddings(img), torch.Tensor)
    np.testing.assert_array_equal(normalise_embeddings(img).numpy(), S.normalise(img))
    res = retrieval_metrics_from_similarity(S.cosine_matrix(brain, img), n_draws=2)
    assert res.full_brain_to_image == pytest.approx((core["brain_to_image"] == 0).mean())
    assert res.full_image_to_brain == pytest.approx((core["image_to_brain"] == 0).mean())
    scores, ids = ExactRetriever(img, np.arange(100, 130), chunk_size=4).search(brain, 3)
    idx, val = S.top_k(brain, img, 3)
    np.testing.assert_array_equal(ids, idx + 100)
    np.testing.assert_array_equal(scores, val)


def test_similarity_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mindeye_core.similarity; print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
