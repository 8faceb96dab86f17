"""In-memory retrieval back ends: exact chunked numpy search and faiss (exact or approximate).

Both L2-normalise queries and candidates (:func:`mindeye_core.similarity.normalise`), so scores are cosine
similarities, and return ``(scores (Q, k) float32 descending, ids (Q, k))``. For indexes stored on disk
(built once, with the embedding model recorded) see :mod:`mindeye_core.retrieval.index`.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import MindEyeError
from ..similarity import normalise, top_k

__all__ = ["ExactRetriever", "FaissRetriever", "Retriever"]


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers top-k cosine queries."""

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``queries (Q, D)`` -> ``(scores (Q, k) float32, ids (Q, k))``, best first."""
        ...


def _check_k(k: int, n: int) -> int:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(k), n)


def _dimension(q: np.ndarray, dim: int, what: str) -> np.ndarray:
    if q.shape[1] != dim:
        raise MindEyeError(f"query dimension {q.shape[1]} != {what} dimension {dim}")
    return q


class ExactRetriever:
    """Exact top-k over precomputed candidate embeddings.

    Ties are ordered by the lower candidate row (see :mod:`mindeye_core.similarity`).

    Args:
        embeddings: ``(N, ...)`` candidate embeddings (flattened and L2-normalised here, float32).
        ids: optional ``(N,)`` ids returned instead of row numbers (e.g. dataset image indices).
        chunk_size: queries per matrix product (memory ``chunk_size x N``).
    """

    def __init__(self, embeddings: Any, ids: Sequence[Any] | np.ndarray | None = None, *, chunk_size: int = 1024) -> None:
        self.embeddings = normalise(embeddings, "candidate embeddings")
        self.ids = None if ids is None else np.asarray(ids)
        if self.ids is not None and self.ids.shape != (self.embeddings.shape[0],):
            raise MindEyeError(f"ids must have shape ({self.embeddings.shape[0]},), got {self.ids.shape}")
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _dimension(normalise(queries, "queries"), self.embeddings.shape[1], "candidate")
        ix, sc = top_k(q, self.embeddings, _check_k(k, len(self)), chunk_size=self.chunk_size, assume_normalised=True)
        return sc, (ix if self.ids is None else self.ids[ix])


class FaissRetriever:
    """Top-k through a faiss index over L2-normalised embeddings (inner product = cosine).

    Args:
        embeddings: ``(N, ...)`` candidates.
        ids: optional ``(N,)`` ids returned instead of row numbers.
        index: optional pre-built, untrained-or-trained faiss index of matching dimension; default exact
            ``faiss.IndexFlatIP``.
        kind, params: instead of ``index``, an index kind of :func:`~mindeye_core.retrieval.index.faiss_factory`
            (``"flat"``, ``"ivfpq"``, ``"hnsw"`` or a faiss factory string) and its parameters (the search
            parameters, e.g. ``nprobe``, are applied after training).
    """

    def __init__(self, embeddings: Any, ids: Sequence[Any] | np.ndarray | None = None, *, index: Any = None,
                 kind: str | None = None, params: dict[str, Any] | None = None) -> None:
        try:
            import faiss
        except ImportError as exc:  # pragma: no cover - faiss-cpu is pinned in requirements.txt
            raise MindEyeError("FaissRetriever needs faiss: pip install mindeye-explorer[faiss]") from exc
        from .index import apply_search_params, faiss_factory

        x = normalise(embeddings, "candidate embeddings")
        self.dim = x.shape[1]
        search_params: dict[str, Any] = {}
        if index is None and kind is not None:
            factory, search_params = faiss_factory(kind, x.shape[0], params)
            index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.index = index if index is not None else faiss.IndexFlatIP(self.dim)
        if self.index.d != self.dim:
            raise MindEyeError(f"faiss index has dimension {self.index.d}, embeddings have {self.dim}")
        if not self.index.is_trained:
            self.index.train(x)
        self.index.add(x)
        apply_search_params(self.index, search_params)
        self.ids = None if ids is None else np.asarray(ids)
        if self.ids is not None and self.ids.shape != (x.shape[0],):
            raise MindEyeError(f"ids must have shape ({x.shape[0]},), got {self.ids.shape}")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _dimension(normalise(queries, "queries"), self.dim, "index")
        scores, rows = self.index.search(q, _check_k(k, len(self)))
        rows = rows.astype(np.int64)
        return scores.astype(np.float32), (rows if self.ids is None else self.ids[rows])
