"""Retrieve images for brain (or image) embeddings: a small ``Retriever`` protocol and three backends.

* :class:`ExactRetriever`: precomputed embeddings in memory, exact cosine top-k in chunks
  (:func:`mindeye_core.similarity.top_k`, numpy).
* :class:`FaissRetriever`: the same search through a faiss index (``faiss-cpu``; exact ``IndexFlatIP`` by
  default, or any index you pass), for large candidate sets.
* :class:`ClipRetrievalClient`: LAION-5B k-NN through the ``clip-retrieval`` client (paper Figure 3); an
  optional extra: ``pip install mindeye-explorer[laion]``. Needs the network, never used in tests.

All backends L2-normalise queries and candidates (:func:`mindeye_core.similarity.normalise`), so scores
are cosine similarities, and return ``(scores (Q, k) float32 descending, ids (Q, k))``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import MindEyeError
from ..similarity import normalise, top_k


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
    """

    def __init__(self, embeddings: Any, ids: Sequence[Any] | np.ndarray | None = None, *, index: Any = None) -> None:
        try:
            import faiss
        except ImportError as exc:  # pragma: no cover - faiss-cpu is pinned in requirements.txt
            raise MindEyeError("FaissRetriever needs faiss: pip install mindeye-explorer[faiss]") from exc
        x = normalise(embeddings, "candidate embeddings")
        self.dim = x.shape[1]
        self.index = index if index is not None else faiss.IndexFlatIP(self.dim)
        if self.index.d != self.dim:
            raise MindEyeError(f"faiss index has dimension {self.index.d}, embeddings have {self.dim}")
        if not self.index.is_trained:
            self.index.train(x)
        self.index.add(x)
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


class ClipRetrievalClient:
    """LAION-5B k-NN over CLIP ViT-L/14 image embeddings via the ``clip-retrieval`` service (paper Fig. 3).

    Returns ``(scores, urls)``; ``urls`` is an object array of image URLs. Requires the optional extra
    ``pip install mindeye-explorer[laion]`` and network access to the service.
    """

    def __init__(self, url: str = "https://knn.laion.ai/knn-service", indice_name: str = "laion5B-L-14", num_images: int = 16) -> None:
        try:
            from clip_retrieval.clip_client import ClipClient
        except ImportError as exc:
            raise MindEyeError(
                "LAION retrieval needs the clip-retrieval client: pip install mindeye-explorer[laion] "
                "(it pins numpy<2, so use a separate environment)"
            ) from exc
        self._client = ClipClient(url=url, indice_name=indice_name, num_images=num_images)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = normalise(queries, "queries")
        scores = np.zeros((q.shape[0], k), np.float32)
        urls = np.full((q.shape[0], k), "", dtype=object)
        for i, emb in enumerate(q):
            hits = self._client.query(embedding_input=emb.tolist())[:k]
            for j, h in enumerate(hits):
                scores[i, j] = float(h.get("similarity", np.nan))
                urls[i, j] = h.get("url", "")
        return scores, urls


__all__ = ["ClipRetrievalClient", "ExactRetriever", "FaissRetriever", "Retriever"]
