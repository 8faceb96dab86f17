"""Retrieve images for brain (or image) embeddings: a small ``Retriever`` protocol and its back ends.

* :class:`ExactRetriever`: candidate embeddings in memory, exact cosine top-k in chunks
  (:func:`mindeye_core.similarity.top_k`, numpy).
* :class:`FaissRetriever`: the same through a faiss index in memory: exact ``IndexFlatIP`` by default, or an
  approximate kind (``"ivfpq"``, ``"hnsw"``, any factory string).
* :class:`IndexRetriever` (:func:`open_index`): an index folder built once by :func:`build_index` from an
  image folder, an embeddings file or an image generator (chunked, resumable), which records its items'
  ids and the embedding model (name, weights sha256) and refuses queries from another model.
* :class:`ClipRetrievalClient`: a service speaking clip-retrieval's ``knn-service`` JSON API (the paper's
  LAION-5B route); standard library only, no default URL, clear errors, never blank images.

On top: :func:`two_stage_retrieve`, the paper's procedure (final-embedding query for 16 candidates, pick by
the projector output against each candidate's hidden embedding, optional pHash near-duplicate exclusion),
and the demo world's million-image pool (:mod:`mindeye_core.retrieval.pool`). All back ends L2-normalise,
so scores are cosine similarities, and return ``(scores (Q, k) float32 descending, ids (Q, k))``. See
``docs/retrieval.md``.
"""

from __future__ import annotations

from .backends import ExactRetriever, FaissRetriever, Retriever
from .clip_client import ClipRetrievalClient, ClipRetrievalError, Hit
from .embedders import ImageEmbedder, ModelInfo, ModelMismatchError, weight_hash
from .index import (
    INDEX_KINDS,
    EmbeddingsFileSource,
    ImageFolderSource,
    IndexRetriever,
    KeyedImageSource,
    build_index,
    exact_top_k_parts,
    faiss_factory,
    index_memory_bytes,
    open_index,
    recall_at_k,
)
from .two_stage import TwoStageResult, perceptual_hashes, two_stage_retrieve

__all__ = [
    "INDEX_KINDS",
    "ClipRetrievalClient",
    "ClipRetrievalError",
    "EmbeddingsFileSource",
    "ExactRetriever",
    "FaissRetriever",
    "Hit",
    "ImageEmbedder",
    "ImageFolderSource",
    "IndexRetriever",
    "KeyedImageSource",
    "ModelInfo",
    "ModelMismatchError",
    "Retriever",
    "TwoStageResult",
    "build_index",
    "exact_top_k_parts",
    "faiss_factory",
    "index_memory_bytes",
    "open_index",
    "perceptual_hashes",
    "recall_at_k",
    "two_stage_retrieve",
    "weight_hash",
]
