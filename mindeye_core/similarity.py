"""The one similarity core: L2 normalisation, chunked cosine matrices, top-k and strict ranks (numpy only).

Everything that compares embeddings -- the retrieval protocol (:mod:`mindeye_core.metrics.retrieval`), the
results bundle (:mod:`mindeye_core.results`) and the retrievers (:mod:`mindeye_core.retrieval`) -- goes
through these functions, so the arithmetic and its conventions live once:

* embeddings ``(N, ...)`` are flattened to ``(N, D)`` and L2-normalised in float32 (``dtype`` to change);
  NaN/inf values and all-zero rows raise :class:`~mindeye_core.errors.DataFormatError` naming the row;
* similarity is cosine: ``S[i, j] = <q_i, c_j>`` (rows = queries, columns = candidates);
* **top-k** is best first; equal scores are ordered by the lower candidate index (a stable sort);
* **ranks** are strict: ``rank_i = #{j != i : S[i, j] >= S[i, i]}`` (query ``i`` is paired with candidate
  ``i``), so 0 is a top-1 hit and a tie counts as a miss.

Queries are processed in chunks of ``chunk_size`` rows, so peak memory is ``chunk_size x N`` similarities
whatever the number of queries. The module imports no torch; torch tensors are accepted by duck typing
(anything with ``.detach()``) and converted on the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DataFormatError

DIRECTIONS = ("brain_to_image", "image_to_brain")
"""The two retrieval directions: rank the images for each brain sample, or the brain samples for each image."""


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, array-like or torch tensor on any device)."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def normalise(x: Any, name: str = "embeddings", *, dtype: Any = np.float32) -> np.ndarray:
    """Flatten ``(N, ...)`` to ``(N, D)`` and L2-normalise every row.

    Args:
        x: ``(N, ...)`` numpy array, array-like or torch tensor (any float or integer dtype).
        name: what ``x`` is, for error messages (e.g. ``"subj01 brain_embeddings"``).
        dtype: float dtype of the result (float32 by default).

    Returns:
        ``(N, D)`` array of ``dtype`` with unit rows (a new array; ``x`` is not modified).

    Raises:
        DataFormatError: fewer than 2 dimensions, no rows, NaN/inf values or an all-zero row (each message
            names ``name`` and the first offending row).
    """
    a = as_numpy(x)
    if a.ndim < 2:
        raise DataFormatError(f"{name}: expected (N, D) embeddings, got shape {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise DataFormatError(f"{name}: no embeddings (shape {tuple(a.shape)})")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise DataFormatError(f"{name}: embeddings must be numeric, got dtype {a.dtype}")
    a = a.reshape(a.shape[0], -1).astype(dtype)  # always a copy, so the in-place steps below are safe
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataFormatError(f"{name}: {int(bad.sum())} NaN/inf values (first in row {row})")
    # scale each row by its largest magnitude first: the squared norm cannot overflow or underflow
    peak = np.abs(a).max(axis=1, keepdims=True) if a.shape[1] else np.zeros((a.shape[0], 1), a.dtype)
    zero = np.flatnonzero(peak[:, 0] == 0)
    if zero.size:
        raise DataFormatError(f"{name}: row {int(zero[0])} is all zeros, cosine similarity is undefined")
    a /= peak
    a /= np.sqrt(np.einsum("nd,nd->n", a, a))[:, None]
    return a


def _prepare(queries: Any, candidates: Any, names: tuple[str, str], assume_normalised: bool,
             dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    if assume_normalised:
        q, c = (as_numpy(t).astype(dtype, copy=False) for t in (queries, candidates))
        q, c = q.reshape(q.shape[0], -1), c.reshape(c.shape[0], -1)
    else:
        q, c = normalise(queries, names[0], dtype=dtype), normalise(candidates, names[1], dtype=dtype)
    if q.shape[1] != c.shape[1]:
        raise DataFormatError(f"{names[0]} have dimension {q.shape[1]} but {names[1]} have dimension {c.shape[1]}")
    return q, c


def cosine_matrix(a: Any, b: Any, *, chunk_size: int = 1024, names: tuple[str, str] = ("queries", "candidates"),
                  assume_normalised: bool = False, dtype: Any = np.float32) -> np.ndarray:
    """Cosine similarities of every row of ``a`` with every row of ``b``.

    Args:
        a: ``(A, ...)`` embeddings (rows of the result).
        b: ``(B, ...)`` embeddings (columns), same flattened dimension.
        chunk_size: rows of ``a`` per matrix product.
        names: what ``a`` and ``b`` are, for error messages.
        assume_normalised: skip normalisation/validation (rows already unit length, e.g. from :func:`normalise`).
        dtype: float dtype of the computation and the result.

    Returns:
        ``(A, B)`` array of ``dtype``: ``S[i, j] = cos(a_i, b_j)``.
    """
    q, c = _prepare(a, b, names, assume_normalised, dtype)
    step = _check_chunk(chunk_size)
    out = np.empty((q.shape[0], c.shape[0]), dtype=dtype)
    for s in range(0, q.shape[0], step):
        np.matmul(q[s : s + step], c.T, out=out[s : s + step])
    return out


def _check_k(k: int, n: int) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(k), n)


def top_k_of_similarity(similarity: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of a similarity matrix, best first (ties: lower index first).

    Args:
        similarity: ``(Q, N)`` scores (rows = queries), or ``(N,)`` for a single query.
        k: how many; capped at ``N``.

    Returns:
        ``(indices (Q, k) int64, scores (Q, k) float32)`` (``(k,)`` each for a 1-D input).
    """
    sim = as_numpy(similarity)
    if sim.ndim == 1:
        idx, val = top_k_of_similarity(sim[None], k)
        return idx[0], val[0]
    if sim.ndim != 2 or sim.shape[1] == 0:
        raise DataFormatError(f"similarity must be a non-empty (Q, N) matrix, got shape {tuple(sim.shape)}")
    n = sim.shape[1]
    k = _check_k(k, n)
    if k < n:
        cols = np.argpartition(sim, n - k, axis=1)[:, n - k :]  # the k best, ties at the cut chosen arbitrarily
        kth = np.take_along_axis(sim, cols, axis=1).min(axis=1, keepdims=True)
        tied = np.flatnonzero((sim >= kth).sum(axis=1) > k)  # rows where candidates beyond the cut tie the k-th
        if tied.size:  # keep everything above the k-th score plus the lowest-index ties at it
            sub, sub_kth = sim[tied], kth[tied]
            at = sub == sub_kth
            keep = (sub > sub_kth) | (at & (np.cumsum(at, axis=1) <= k - (sub > sub_kth).sum(axis=1, keepdims=True)))
            cols[tied] = np.nonzero(keep)[1].reshape(tied.size, k)
    else:
        cols = np.broadcast_to(np.arange(n), sim.shape)
    vals = np.take_along_axis(sim, cols, axis=1)
    order = np.lexsort((cols, -vals), axis=1)  # best first; equal scores by lower index
    idx = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    return idx, np.take_along_axis(vals, order, axis=1).astype(np.float32)


def top_k(queries: Any, candidates: Any, k: int, *, chunk_size: int = 1024,
          names: tuple[str, str] = ("queries", "candidates"), assume_normalised: bool = False,
          dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` candidates most cosine-similar to each query, best first (ties: lower index first).

    Args:
        queries: ``(Q, ...)`` embeddings.
        candidates: ``(N, ...)`` embeddings, same flattened dimension.
        k: how many per query; capped at ``N``.
        chunk_size: queries per step; peak memory ``chunk_size x N`` similarities.
        names, assume_normalised, dtype: as in :func:`cosine_matrix`.

    Returns:
        ``(indices (Q, k) int64 candidate rows, scores (Q, k) float32 cosine similarities)``.
    """
    q, c = _prepare(queries, candidates, names, assume_normalised, dtype)
    step = _check_chunk(chunk_size)
    k = _check_k(k, c.shape[0])
    idx = np.empty((q.shape[0], k), np.int64)
    val = np.empty((q.shape[0], k), np.float32)
    for s in range(0, q.shape[0], step):
        idx[s : s + step], val[s : s + step] = top_k_of_similarity(q[s : s + step] @ c.T, k)
    return idx, val


def _ranks_of_block(sims: np.ndarray, own_cols: np.ndarray) -> np.ndarray:
    own = sims[np.arange(sims.shape[0]), own_cols][:, None]
    return (sims >= own).sum(axis=1).astype(np.int64) - 1  # the own entry is >= itself, hence the - 1


def ranks(sim_or_queries: Any, candidates: Any = None, *, chunk_size: int = 1024,
          names: tuple[str, str] = ("queries", "candidates"), assume_normalised: bool = False,
          dtype: Any = np.float32) -> np.ndarray:
    """Strict rank of each query's own candidate: ``rank_i = #{j != i : S[i, j] >= S[i, i]}``.

    Two forms:

    * ``ranks(similarity)``: ``similarity`` is a square ``(N, N)`` matrix, rows = queries, the correct
      candidate of row ``i`` is column ``i`` (pass ``similarity.T`` for the other direction);
    * ``ranks(queries, candidates)``: ``(N, ...)`` embeddings paired row by row; cosine similarities are
      computed in chunks of ``chunk_size`` queries (memory ``chunk_size x N``).

    Returns:
        ``(N,)`` int64; 0 means a strict top-1 hit, ties count as misses.
    """
    step = _check_chunk(chunk_size)
    if candidates is None:
        sim = as_numpy(sim_or_queries)
        if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
            raise DataFormatError(f"ranks(similarity) needs a square (N, N) matrix, got shape {tuple(sim.shape)}")
        n = sim.shape[0]
        out = np.empty(n, np.int64)
        for s in range(0, n, step):
            out[s : s + step] = _ranks_of_block(sim[s : s + step], np.arange(s, min(n, s + step)))
        return out
    q, c = _prepare(sim_or_queries, candidates, names, assume_normalised, dtype)
    if q.shape[0] != c.shape[0]:
        raise DataFormatError(f"got {q.shape[0]} {names[0]} but {c.shape[0]} {names[1]}; they must be paired 1:1")
    n = q.shape[0]
    out = np.empty(n, np.int64)
    for s in range(0, n, step):
        out[s : s + step] = _ranks_of_block(q[s : s + step] @ c.T, np.arange(s, min(n, s + step)))
    return out


def check_pair(brain: Any, image: Any, *, names: tuple[str, str] = ("brain embeddings", "image embeddings"),
               dtype: Any = np.float32, min_pairs: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Normalise two sets of embeddings that are paired row by row (sample ``i`` saw image ``i``).

    Returns:
        ``(b (N, D), v (N, D))`` unit rows of ``dtype``.

    Raises:
        DataFormatError: invalid rows (see :func:`normalise`), different counts or dimensions, or fewer
            than ``min_pairs`` pairs.
    """
    b = normalise(brain, names[0], dtype=dtype)
    v = normalise(image, names[1], dtype=dtype)
    if b.shape[0] != v.shape[0]:
        raise DataFormatError(f"got {b.shape[0]} {names[0]} but {v.shape[0]} {names[1]}; they must be paired 1:1")
    if b.shape[1] != v.shape[1]:
        raise DataFormatError(f"embedding sizes differ: {names[0]} {b.shape[1]}, {names[1]} {v.shape[1]}")
    if b.shape[0] < min_pairs:
        raise DataFormatError(f"retrieval needs at least {min_pairs} pairs, got {b.shape[0]}")
    return b, v


def full_set_ranks(brain: Any, image: Any, *, chunk_size: int = 1024, dtype: Any = np.float32,
                   names: tuple[str, str] = ("brain embeddings", "image embeddings"),
                   max_matrix_bytes: int = 1 << 28) -> dict[str, np.ndarray]:
    """Ranks of the correct candidate among all ``N`` pairs, both directions (paper Figure 3).

    Args:
        brain: ``(N, ...)`` brain embeddings; sample ``i`` saw image ``i``.
        image: ``(N, ...)`` image embeddings in the same space.
        chunk_size: queries per step (memory ``chunk_size x N``).
        max_matrix_bytes: when the ``N x N`` matrix fits in this many bytes (256 MiB: ``N <= 8192`` in
            float32) it is computed once and both directions are ranked from it (half the matrix products);
            otherwise each direction is computed in query chunks and the matrix never materialises.

    Returns:
        ``{"brain_to_image": (N,) int64, "image_to_brain": (N,) int64}`` strict ranks (0 = top-1).
    """
    b, v = check_pair(brain, image, names=names, dtype=dtype)
    n = b.shape[0]
    if n * n * np.dtype(dtype).itemsize <= max_matrix_bytes:  # one matrix serves both directions
        sim = cosine_matrix(b, v, chunk_size=chunk_size, assume_normalised=True, dtype=dtype)
        return {"brain_to_image": ranks(sim, chunk_size=chunk_size), "image_to_brain": ranks(sim.T, chunk_size=chunk_size)}
    return {
        "brain_to_image": ranks(b, v, chunk_size=chunk_size, assume_normalised=True, dtype=dtype),
        "image_to_brain": ranks(v, b, chunk_size=chunk_size, assume_normalised=True, dtype=dtype),
    }


__all__ = [
    "DIRECTIONS",
    "as_numpy",
    "check_pair",
    "cosine_matrix",
    "full_set_ranks",
    "normalise",
    "ranks",
    "top_k",
    "top_k_of_similarity",
]
