"""The retrieval protocol of MindEye (Table 1 "Image" / "Brain", Figure 3), both directions named.

Embeddings are flattened and L2-normalised, similarity is cosine: ``S[i, j] = <b_i, v_j>`` with ``b_i`` the
brain embedding of test sample ``i`` and ``v_j`` the image embedding of test image ``j`` (sample ``i`` saw
image ``i``).

* **brain -> image** ("image retrieval" in the paper's caption): for each brain sample ``i``, rank the
  candidate images by ``S[i, :]``; correct if its own image ``i`` is first.
* **image -> brain** ("brain retrieval"): for each image ``j``, rank the candidate brain samples by
  ``S[:, j]``; correct if brain sample ``j`` is first.

Top-1 is strict: the correct candidate must be *more* similar than every other candidate; a tie counts as a
miss (``rank`` = number of other candidates with similarity ``>=`` the correct one).

**Among 300** (the published numbers): 30 random draws (seeded) of 300 distinct test samples; in each draw
the 300 paired samples form a 300 x 300 problem; the score is the mean top-1 over the 30 draws (a 95 %
normal confidence interval over draws is reported as in the official code). The official code drew its
batches from a resampled webdataset stream; we draw 300 distinct indices uniformly per draw with
``numpy.random.default_rng(seed)``.

**Full set** (paper Figure 3): the same ranking against all ``N`` test samples.

Note on the official code: its ``batchwise_cosine_similarity(Z, B)`` returns ``(Z @ B.T).T``, so the matrix
it called ``fwd_sim`` (brain, clip) is indexed [image, brain] and its "fwd" score -- published as *Image*
retrieval -- ranks brains for each image. We compute and name both directions explicitly; the tables
module maps them onto the paper's columns (see :mod:`mindeye_core.metrics.tables`).

Full-set ranks are computed in query chunks, so ``10^5 x 10^5`` never materialises: memory is
``chunk_size x N`` floats. All the arithmetic (normalisation, cosine, strict ranks) is
:mod:`mindeye_core.similarity`, shared with the results bundle and the retrievers; it runs in numpy on the
CPU, so the ``device`` arguments kept here for backwards compatibility are ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .. import similarity as sim_core
from ..errors import DataFormatError
from .lowlevel import check_ids

N_CANDIDATES = 300
N_DRAWS = 30
DIRECTIONS = sim_core.DIRECTIONS


def _np_dtype(dtype: Any) -> Any:
    """numpy dtype for a torch or numpy float dtype (``torch.float64 -> np.float64``)."""
    return np.float64 if dtype in (torch.float64, np.float64) else np.float32


def normalise_embeddings(x: Any, name: str = "embeddings", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, ...)`` -> ``(N, D)`` L2-normalised tensor; raises on NaN/inf or an all-zero row.

    A torch view of :func:`mindeye_core.similarity.normalise` (kept for callers that want a tensor).
    """
    return torch.from_numpy(sim_core.normalise(x, name, dtype=_np_dtype(dtype)))


def paired_ranks(queries: Any, candidates: Any, *, chunk_size: int = 1024, device: str | torch.device = "cpu") -> np.ndarray:
    """Rank of each query's own candidate: ``rank_i = #{j != i : <q_i, c_j> >= <q_i, c_i>}``.

    Args:
        queries: ``(N, D)`` normalised; query ``i`` is paired with candidate ``i``.
        candidates: ``(N, D)`` normalised.
        chunk_size: queries per step; peak memory ``chunk_size x N`` similarities.
        device: ignored (the similarity core, :func:`mindeye_core.similarity.ranks`, runs in numpy on the
            CPU); kept so existing callers keep working.

    Returns:
        ``(N,)`` int64; 0 means a strict top-1 hit.
    """
    q, c = sim_core.as_numpy(queries), sim_core.as_numpy(candidates)
    dtype = np.float64 if np.float64 in (q.dtype, c.dtype) else np.float32
    return sim_core.ranks(q, c, chunk_size=chunk_size, assume_normalised=True, dtype=dtype)


def full_set_ranks(brain: Any, image: Any, *, chunk_size: int = 1024, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, np.ndarray]:
    """Ranks of the correct candidate among all ``N`` test samples, both directions.

    :func:`mindeye_core.similarity.full_set_ranks` with torch-style arguments (``device`` is ignored).

    Returns:
        ``{"brain_to_image": (N,) int64, "image_to_brain": (N,) int64}``.
    """
    return sim_core.full_set_ranks(brain, image, chunk_size=chunk_size, dtype=_np_dtype(dtype))


def _top1_of_square(sim: np.ndarray) -> tuple[float, float]:
    """Strict top-1 fractions of a square ``[brain, image]`` similarity matrix, both directions."""
    return float((sim_core.ranks(sim) == 0).mean()), float((sim_core.ranks(sim.T) == 0).mean())


def draw_subsets(n: int, n_candidates: int = N_CANDIDATES, n_draws: int = N_DRAWS, seed: int = 0) -> np.ndarray:
    """``(n_draws, n_candidates)`` int64 subsets of ``range(n)``, distinct within a draw, seeded."""
    if n < n_candidates:
        raise DataFormatError(f"cannot draw {n_candidates} candidates from {n} test samples")
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n, size=n_candidates, replace=False) for _ in range(n_draws)]).astype(np.int64)


@dataclass
class RetrievalResult:
    """Retrieval scores, fractions in [0, 1].

    Attributes:
        brain_to_image: mean top-1 among ``n_candidates`` over the draws (for each brain sample, rank images).
        image_to_brain: same, for each image rank the brain samples.
        brain_to_image_ci95, image_to_brain_ci95: normal 95 % interval of the mean over draws.
        brain_to_image_draws, image_to_brain_draws: per-draw top-1 (length ``n_draws``).
        full_brain_to_image, full_image_to_brain: top-1 among all ``n_samples``.
        n_samples, n_candidates, n_draws, seed: the protocol actually used.
    """

    brain_to_image: float
    image_to_brain: float
    brain_to_image_ci95: tuple[float, float]
    image_to_brain_ci95: tuple[float, float]
    full_brain_to_image: float
    full_image_to_brain: float
    n_samples: int
    n_candidates: int
    n_draws: int
    seed: int
    brain_to_image_draws: list[float] = field(default_factory=list)
    image_to_brain_draws: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["brain_to_image_ci95"] = list(self.brain_to_image_ci95)
        d["image_to_brain_ci95"] = list(self.image_to_brain_ci95)
        return d


def _ci95(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean())
    half = 1.959963984540054 * float(values.std()) / np.sqrt(len(values))
    return (mean - half, mean + half)


def _protocol(
    n: int,
    square: Callable[[np.ndarray], np.ndarray],
    full_ranks: Callable[[], dict[str, np.ndarray]],
    *,
    n_candidates: int,
    n_draws: int,
    seed: int,
) -> RetrievalResult:
    """Among-``n_candidates`` draws and full-set top-1; ``square(idx)`` gives the ``[brain, image]`` sub-matrix."""
    k = min(n_candidates, n)
    b2i_d, i2b_d = [], []
    for idx in draw_subsets(n, k, n_draws, seed):
        x, y = _top1_of_square(square(idx))
        b2i_d.append(x)
        i2b_d.append(y)
    ranks = full_ranks()
    b2i_arr, i2b_arr = np.asarray(b2i_d), np.asarray(i2b_d)
    return RetrievalResult(
        brain_to_image=float(b2i_arr.mean()),
        image_to_brain=float(i2b_arr.mean()),
        brain_to_image_ci95=_ci95(b2i_arr),
        image_to_brain_ci95=_ci95(i2b_arr),
        full_brain_to_image=float((ranks["brain_to_image"] == 0).mean()),
        full_image_to_brain=float((ranks["image_to_brain"] == 0).mean()),
        n_samples=n,
        n_candidates=k,
        n_draws=n_draws,
        seed=seed,
        brain_to_image_draws=b2i_d,
        image_to_brain_draws=i2b_d,
    )


def retrieval_metrics(
    brain: Any,
    image: Any,
    *,
    n_candidates: int = N_CANDIDATES,
    n_draws: int = N_DRAWS,
    seed: int = 0,
    chunk_size: int = 1024,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    brain_ids: Any = None,
    image_ids: Any = None,
) -> RetrievalResult:
    """The paper's retrieval evaluation, both directions (see module docstring).

    Args:
        brain: ``(N, ...)`` brain embeddings (e.g. projector outputs, ``(N, 257, 768)`` is flattened).
        image: ``(N, ...)`` image embeddings in the same space, row ``i`` = image seen in brain sample ``i``.
        n_candidates: candidates per draw (300). When ``N < n_candidates`` (tiny worlds) every draw uses
            all ``N`` samples and ``n_candidates`` is reported as ``N``.
        n_draws, seed: number of random draws and the RNG seed.
        chunk_size, dtype: for the full-set ranks (:func:`mindeye_core.similarity.ranks`).
        device: ignored (the similarity core runs in numpy on the CPU); kept for existing callers.
        brain_ids, image_ids: optional ``(N,)`` ids (e.g. dataset image index of each brain sample and of
            each image); when given they must match row by row.
    """
    np_dtype = _np_dtype(dtype)
    b, v = sim_core.check_pair(brain, image, dtype=np_dtype)
    check_ids(brain_ids, image_ids, b.shape[0], what="brain embeddings", other="image embeddings")
    return _protocol(
        b.shape[0],
        lambda idx: sim_core.cosine_matrix(b[idx], v[idx], assume_normalised=True, dtype=np_dtype),
        lambda: sim_core.full_set_ranks(b, v, chunk_size=chunk_size, dtype=np_dtype),
        n_candidates=n_candidates, n_draws=n_draws, seed=seed,
    )


def retrieval_metrics_from_similarity(
    similarity: Any,
    *,
    n_candidates: int = N_CANDIDATES,
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> RetrievalResult:
    """The same protocol as :func:`retrieval_metrics` on a precomputed similarity matrix.

    Args:
        similarity: ``(N, N)`` cosine similarities ``[brain i, image j]`` (e.g. a results bundle's
            ``retrieval/similarity``); sample ``i`` saw image ``i``.
        n_candidates, n_draws, seed: as in :func:`retrieval_metrics` (same draws for the same seed).
    """
    sim = sim_core.as_numpy(similarity)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 2:
        raise DataFormatError(f"similarity must be a square (N, N) matrix with N >= 2, got shape {tuple(sim.shape)}")
    if not np.isfinite(sim).all():
        raise DataFormatError("similarity matrix contains NaN/inf")
    return _protocol(
        sim.shape[0],
        lambda idx: sim[np.ix_(idx, idx)],
        lambda: {"brain_to_image": sim_core.ranks(sim), "image_to_brain": sim_core.ranks(sim.T)},
        n_candidates=n_candidates, n_draws=n_draws, seed=seed,
    )
