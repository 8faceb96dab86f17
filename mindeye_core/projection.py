"""2-D UMAP coordinates of several embedding spaces fitted together (paper Figure 9).

The paper shows CLIP image embeddings, backbone outputs, projector outputs and prior outputs of the test set
in one UMAP: a single fit on all of them, so distances between spaces are comparable. :func:`joint_umap`
does that for any mapping of spaces; :func:`bundle_umap` returns the ``(4, N, 2)`` array a results bundle
stores (order of :data:`~mindeye_core.results.UMAP_SPACES`).

``umap-learn`` (and numba, which it imports: slow) is imported inside the functions only.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .errors import DataFormatError
from .results import UMAP_SPACES
from .similarity import normalise


def joint_umap(embeddings: Mapping[str, Any], *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """Fit one UMAP (cosine metric) on several L2-normalised embedding sets and return each set's coordinates.

    Args:
        embeddings: space name -> ``(N, ...)`` embeddings (flattened to ``(N, E)``); every set has the same
            ``N`` and ``E``.
        seed: ``random_state`` of the fit (deterministic for a seed: umap-learn then runs single-threaded).
        n_neighbors: UMAP neighbourhood size (capped at the number of points minus one).
        min_dist: UMAP ``min_dist``.

    Returns:
        ``(len(embeddings), N, 2)`` float32, in the order of the mapping.
    """
    if not embeddings:
        raise DataFormatError("joint_umap: no embedding sets given")
    sets = [normalise(x, f"{name} embeddings") for name, x in embeddings.items()]
    names = list(embeddings)
    n, e = sets[0].shape
    for name, x in zip(names, sets):
        if x.shape != (n, e):
            raise DataFormatError(f"joint_umap: {name} embeddings have shape {x.shape}, {names[0]} have {(n, e)}; "
                                  "every set needs the same (N, E)")
    total = n * len(sets)
    if total < 3:
        raise DataFormatError(f"joint_umap: need at least 3 points in all, got {total}")
    import umap  # imported lazily: pulls in numba (seconds)

    reducer = umap.UMAP(n_components=2, n_neighbors=min(int(n_neighbors), total - 1), min_dist=float(min_dist),
                        metric="cosine", random_state=int(seed), n_jobs=1)
    coords = reducer.fit_transform(np.concatenate(sets))
    return np.asarray(coords, dtype=np.float32).reshape(len(sets), n, 2)


def bundle_umap(embeddings: Mapping[str, Any], **kwargs: Any) -> np.ndarray:
    """``(4, N, 2)`` float32 joint UMAP of the four bundle spaces, in the order of ``UMAP_SPACES``.

    Args:
        embeddings: must hold exactly the keys of :data:`~mindeye_core.results.UMAP_SPACES`
            (``clip_image``, ``backbone``, ``projector``, ``prior``), each ``(N, ...)``.
        **kwargs: ``seed``, ``n_neighbors``, ``min_dist`` of :func:`joint_umap`.

    Returns:
        The ``umap`` argument of :meth:`mindeye_core.results.ResultsWriter.add_subject`.
    """
    if set(embeddings) != set(UMAP_SPACES):
        raise DataFormatError(f"bundle_umap needs exactly the spaces {list(UMAP_SPACES)}, got {sorted(embeddings)}")
    return joint_umap({s: embeddings[s] for s in UMAP_SPACES}, **kwargs)


__all__ = ["UMAP_SPACES", "bundle_umap", "joint_umap"]
