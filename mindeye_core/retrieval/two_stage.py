"""The paper's two-stage retrieval from a large pool (Section 3.3, Figure 3 bottom; Appendix A.6).

1. **Candidates**: the brain's *final-layer* CLIP embedding (the 1 x 768 model on NSD) queries the pool's
   index of final image embeddings for ``n_candidates`` (16) images.
2. **Pick**: each candidate's *hidden* CLIP embedding (257 x 768 on NSD) is computed on the fly from its
   image, and the candidate with the highest cosine similarity (flattened tokens) to the brain's
   257 x 768 projector output wins.

Optionally, candidates that are near-duplicates of the seen (ground-truth) image are dropped first, by
perceptual hash (``imagehash.phash``, Hamming distance ``<= max_hash_distance``): the official code's
exclusion of the ground truth was dead code. If every candidate of a query is excluded the call raises
(it never returns a blank or arbitrary image).

The retriever is anything with ``search(queries, k) -> (scores, ids)`` (an :class:`~.index.IndexRetriever`
over the demo pool, a :class:`~.clip_client.ClipRetrievalClient`...); ``images_of(ids)`` turns ids into
``(m, H, W, 3)`` uint8 images (re-render pool seeds, download URLs) and ``hidden_of(images)`` embeds them
into the projector's space ``(m, T, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import DataFormatError, MindEyeError
from ..similarity import normalise

__all__ = ["TwoStageResult", "perceptual_hashes", "two_stage_retrieve"]


@dataclass
class TwoStageResult:
    """Per query ``i`` (``Q`` queries, ``K`` candidates).

    Attributes:
        candidates: ``(Q, K)`` ids from stage 1, best first.
        stage1_scores: ``(Q, K)`` float32 cosine of the final-embedding query with each candidate.
        stage2_scores: ``(Q, K)`` float32 cosine of the projector output with each candidate's hidden
            embedding (``-inf`` where excluded).
        excluded: ``(Q, K)`` bool, candidates dropped as near-duplicates of the ground truth.
        picked: ``(Q,)`` int64 position of the winner among the candidates.
        one_stage: ``(Q,)`` int64 position of the best non-excluded stage-1 candidate (final embedding only).
    """

    candidates: np.ndarray
    stage1_scores: np.ndarray
    stage2_scores: np.ndarray
    excluded: np.ndarray
    picked: np.ndarray
    one_stage: np.ndarray

    @property
    def ids(self) -> np.ndarray:
        """``(Q,)`` the two-stage winners' ids."""
        return self.candidates[np.arange(len(self.picked)), self.picked]

    @property
    def one_stage_ids(self) -> np.ndarray:
        """``(Q,)`` the final-embedding-only winners' ids."""
        return self.candidates[np.arange(len(self.one_stage)), self.one_stage]

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidates re-ordered by stage-2 score, excluded ones last: ``(ids (Q, K), scores (Q, K))``."""
        order = np.argsort(-self.stage2_scores, axis=1, kind="stable")
        return (np.take_along_axis(self.candidates, order, 1), np.take_along_axis(self.stage2_scores, order, 1))


def perceptual_hashes(images: np.ndarray, hash_size: int = 8) -> list[Any]:
    """``imagehash.phash`` of each ``(H, W, 3)`` uint8 image (subtracting two gives the Hamming distance)."""
    try:
        import imagehash
    except ImportError as exc:  # pragma: no cover - pinned in requirements.txt
        raise MindEyeError("near-duplicate exclusion needs imagehash: pip install imagehash") from exc
    from PIL import Image

    return [imagehash.phash(Image.fromarray(np.asarray(im, np.uint8)), hash_size=hash_size) for im in images]


def two_stage_retrieve(
    final_queries: Any,
    hidden_queries: Any,
    retriever: Any,
    images_of: Callable[[np.ndarray], np.ndarray],
    hidden_of: Callable[[np.ndarray], np.ndarray],
    *,
    n_candidates: int = 16,
    ground_truth: np.ndarray | None = None,
    max_hash_distance: int | None = None,
    search_kwargs: dict[str, Any] | None = None,
) -> TwoStageResult:
    """Run both stages for ``Q`` queries.

    Args:
        final_queries: ``(Q, D)`` brain embeddings in the index's (final) space.
        hidden_queries: ``(Q, T, D')`` (or flattened ``(Q, T * D')``) projector outputs.
        retriever: ``search(queries, k, **search_kwargs) -> (scores (Q, k), ids (Q, k))``.
        images_of: ids ``(m,)`` -> images ``(m, H, W, 3)`` uint8.
        hidden_of: images -> hidden embeddings ``(m, T, D')``.
        n_candidates: stage-1 candidates per query (16 in the paper).
        ground_truth: ``(Q, H, W, 3)`` uint8 seen images, for near-duplicate exclusion.
        max_hash_distance: exclude candidates whose pHash is within this Hamming distance of the ground
            truth's (``None``: no exclusion; needs ``ground_truth``).
        search_kwargs: passed to ``retriever.search`` (e.g. ``model=`` for an index).

    Returns:
        A :class:`TwoStageResult`.

    Raises:
        DataFormatError: query shapes disagree, or hidden embeddings of the wrong size.
        MindEyeError: every candidate of some query was excluded.
    """
    fin = normalise(final_queries, "final-embedding queries")
    hid = normalise(hidden_queries, "projector outputs")
    q = fin.shape[0]
    if hid.shape[0] != q:
        raise DataFormatError(f"{q} final-embedding queries but {hid.shape[0]} projector outputs")
    if max_hash_distance is not None and (ground_truth is None or len(ground_truth) != q):
        raise DataFormatError("near-duplicate exclusion needs the Q ground-truth images")
    scores1, ids = retriever.search(fin, int(n_candidates), **(search_kwargs or {}))
    scores1, ids = np.asarray(scores1, np.float32), np.asarray(ids)
    k = ids.shape[1]
    flat_ids = ids.reshape(-1)
    images = np.asarray(images_of(flat_ids))
    cand_hidden = normalise(hidden_of(images), "candidate hidden embeddings")
    if cand_hidden.shape != (q * k, hid.shape[1]):
        raise DataFormatError(f"candidate hidden embeddings have shape {cand_hidden.shape}, expected "
                              f"({q * k}, {hid.shape[1]}) like the projector outputs")
    scores2 = np.einsum("qkd,qd->qk", cand_hidden.reshape(q, k, -1), hid).astype(np.float32)
    excluded = np.zeros((q, k), bool)
    if max_hash_distance is not None:
        assert ground_truth is not None
        gt_hash = perceptual_hashes(ground_truth)
        cand_hash = perceptual_hashes(images)
        for i in range(q):
            excluded[i] = [gt_hash[i] - cand_hash[i * k + j] <= max_hash_distance for j in range(k)]
        if excluded.all(axis=1).any():
            bad = np.flatnonzero(excluded.all(axis=1)).tolist()
            raise MindEyeError(f"every candidate of queries {bad[:10]} is a near-duplicate of the ground truth "
                               f"(max_hash_distance={max_hash_distance}): ask for more candidates")
    scores2 = np.where(excluded, -np.inf, scores2).astype(np.float32)
    picked = np.argmax(scores2, axis=1).astype(np.int64)
    one_stage = np.argmax(np.where(excluded, -np.inf, scores1), axis=1).astype(np.int64)
    return TwoStageResult(candidates=ids, stage1_scores=scores1, stage2_scores=scores2, excluded=excluded,
                          picked=picked, one_stage=one_stage)
