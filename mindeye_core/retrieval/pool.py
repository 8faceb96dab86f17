"""The demo-world image pool: a stand-in for LAION-5B of procedurally generated scenes, named by seed.

Pool image ``s`` (``0 <= s < POOL_SIZE``) is the demo-world scene drawn by
:func:`~mindeye_core.data.demo.sample_scenes` from ``numpy.random.default_rng([POOL_ENTROPY, s])`` and
rendered at 64 x 64 (supersample 4), the demo world's settings. The seed is the image's id: images are
re-rendered on demand and never stored; only their tiny-CLIP embeddings are (in the pool indexes under
``$MINDEYE_CACHE/demo_pool``). The demo world draws its scenes from its own generator stream
(``default_rng(world seed)``), so pool scenes are other draws; :class:`PoolRenderer` also refuses, loudly,
any pool image that is pixel-identical to an image it is told to exclude (the demo test set), so no pool
image is a test image. Near-duplicates are a query-time matter (perceptual hash exclusion in
:mod:`~mindeye_core.retrieval.two_stage`).

Indexes: :func:`ensure_pool_index` opens the index of the first ``n`` pool images (default ``10^5``): the
IVF-PQ one shipped in ``assets/demo_pool``, or any other kind from the cache, built there on first use (the
exact ``flat`` one: about 6 CPU-minutes); ``mindeye retrieval build-pool --n 1000000 --kind ivfpq`` builds the
million-image one. All pool indexes share one folder of embedded parts (chunks of :data:`POOL_CHUNK`
seeds), so the 10^6 build reuses the 10^5 one's work.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..data.demo.stimuli import SceneSpec, StimulusLabels, render_scenes, sample_scenes
from ..errors import DataFormatError
from ..paths import ASSETS_DIR, cache_dir
from .embedders import ImageEmbedder
from .index import BuildResult, IndexRetriever, KeyedImageSource, build_index, open_index

__all__ = [
    "POOL_CHUNK",
    "POOL_ENTROPY",
    "POOL_NAME",
    "POOL_SIZE",
    "PoolRenderer",
    "SHIPPED_POOL_DIR",
    "demo_pool_embedder",
    "ensure_pool_index",
    "image_digest",
    "pool_dir",
    "pool_index_name",
    "pool_labels",
    "pool_scene",
    "pool_source",
    "render_pool",
]

POOL_NAME = "demo-pool-v1"
POOL_SIZE = 1_000_000
"""Seeds ``0 .. POOL_SIZE - 1`` make the pool (more can be rendered; indexes cover a prefix)."""
POOL_ENTROPY = 0x4D455045  # "MEPE": the pool's generator stream, distinct from every demo-world seed
POOL_CHUNK = 5000
"""Seeds per embedded part (10^5 and 10^6 are multiples, so their indexes share the parts)."""
POOL_IMAGE_SIZE = 64
POOL_SUPERSAMPLE = 4


def _check_seeds(seeds: Iterable[int]) -> np.ndarray:
    s = np.asarray(list(seeds) if not isinstance(seeds, np.ndarray) else seeds)
    if s.ndim != 1 or (s.size and (not np.issubdtype(s.dtype, np.integer) or s.min() < 0)):
        raise DataFormatError(f"pool seeds must be non-negative integers, got {s[:5]!r} (dtype {s.dtype})")
    return s.astype(np.int64)


def pool_scene(seed: int) -> SceneSpec:
    """The scene of pool image ``seed``."""
    return sample_scenes(np.random.default_rng([POOL_ENTROPY, int(seed)]), 1)[0]


def render_pool(seeds: Iterable[int]) -> np.ndarray:
    """Pool images ``(n, 64, 64, 3)`` uint8 of ``seeds`` (any order, repeats allowed)."""
    s = _check_seeds(seeds)
    images, _, _ = render_scenes([pool_scene(int(x)) for x in s], POOL_IMAGE_SIZE, POOL_SUPERSAMPLE)
    return images


def pool_labels(seeds: Iterable[int]) -> StimulusLabels:
    """Structured labels (categories, colours, sizes, visible areas...) of pool images ``seeds``."""
    s = _check_seeds(seeds)
    _, labels, _ = render_scenes([pool_scene(int(x)) for x in s], POOL_IMAGE_SIZE, POOL_SUPERSAMPLE)
    return labels


def image_digest(image: np.ndarray) -> str:
    """blake2b digest of an image's shape and bytes (exact-duplicate test)."""
    a = np.ascontiguousarray(image)
    return hashlib.blake2b(f"{a.shape}|{a.dtype}|".encode() + a.tobytes(), digest_size=16).hexdigest()


class PoolRenderer:
    """Picklable ``seeds -> images`` for index building that refuses excluded images.

    Args:
        exclude: images ``(M, 64, 64, 3)`` uint8 no pool image may equal (the demo test set), or their
            :func:`image_digest` strings.
    """

    def __init__(self, exclude: Any = ()) -> None:
        if isinstance(exclude, np.ndarray) and exclude.ndim == 4:
            self.exclude = frozenset(image_digest(im) for im in exclude)
        else:
            self.exclude = frozenset(str(d) for d in exclude)

    def __call__(self, seeds: np.ndarray) -> np.ndarray:
        images = render_pool(seeds)
        if self.exclude:
            for seed, im in zip(np.asarray(seeds).tolist(), images):
                if image_digest(im) in self.exclude:
                    raise DataFormatError(f"pool image {seed} is identical to an excluded (test) image")
        return images


def pool_source(n: int, exclude: Any = ()) -> KeyedImageSource:
    """The first ``n`` pool images as an index source (keys = seeds ``0 .. n-1``)."""
    if not 1 <= int(n):
        raise ValueError(f"the pool needs n >= 1 images, got {n}")
    renderer = PoolRenderer(exclude)
    return KeyedImageSource(np.arange(int(n), dtype=np.int64), renderer, name=POOL_NAME,
                            extra={"entropy": POOL_ENTROPY, "image_size": POOL_IMAGE_SIZE,
                                   "excluded_images": len(renderer.exclude)})


def demo_pool_embedder(batch_size: int = 250) -> ImageEmbedder:
    """The tiny CLIP (hidden target; token 0 = the final embedding) as the pool's embedder."""
    from ..demo_models import load_demo_clip

    return ImageEmbedder(load_demo_clip("hidden"), name="tiny-clip", batch_size=batch_size)


def pool_dir(root: str | Path | None = None) -> Path:
    """Where pool indexes live: ``root`` or ``$MINDEYE_CACHE/demo_pool``."""
    return Path(root).expanduser() if root is not None else cache_dir() / "demo_pool"


def pool_index_name(n: int, kind: str, params: Mapping[str, Any] | None = None) -> str:
    """The folder name of a pool index: ``demo-pool-v1-n<n>-<kind>`` plus ``-<name><value>`` per parameter given
    (sorted), so that builds with other parameters never meet in one folder; characters other than letters,
    digits, ``.`` and ``_`` (in a faiss factory string used as kind) become ``_``.

    >>> pool_index_name(1_000_000, "ivfpq", {"nbits": 7, "m": 128})
    'demo-pool-v1-n1000000-ivfpq-m128-nbits7'
    """
    parts = [str(kind)] + [f"{k}{v}" for k, v in sorted((params or {}).items())]
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{POOL_NAME}-n{int(n)}-" + "-".join(parts))


def build_pool_index(n: int = 100_000, kind: str = "flat", *, root: str | Path | None = None,
                     params: dict[str, Any] | None = None, exclude: Any = (), workers: int = 2,
                     progress: bool = True, max_chunks: int | None = None) -> BuildResult:
    """Build (or resume) the index of the first ``n`` pool images under :func:`pool_dir`.

    ``n`` must be a multiple of :data:`POOL_CHUNK` when it is larger than one chunk (shared parts).
    ``exclude``: test images (or digests) no pool image may equal. Other arguments: :func:`build_index`.
    """
    n = int(n)
    if n > POOL_CHUNK and n % POOL_CHUNK:
        raise ValueError(f"pool sizes above {POOL_CHUNK} must be multiples of {POOL_CHUNK}, got {n}")
    base = pool_dir(root)
    embedder = demo_pool_embedder()
    return build_index(base / pool_index_name(n, kind, params), pool_source(n, exclude), embedder=embedder,
                       embedder_factory=demo_pool_embedder if workers > 1 else None, kind=kind, params=params,
                       chunk_size=POOL_CHUNK, workers=workers, progress=progress, max_chunks=max_chunks,
                       vectors_dir=base / f"vectors-{embedder.info.sha256[:16]}",
                       metadata={"pool": POOL_NAME, "ids_are": "pool seeds"})


SHIPPED_POOL_DIR = ASSETS_DIR / "demo_pool"
"""Pool indexes shipped with the checkout: ``demo-pool-v1-n100000-ivfpq`` (IVF1024,PQ32x8, 5 MB, its recall@10
against exact search in its ``index.json``); their exact vectors are not shipped."""
SHIPPED_POOL_KIND = "ivfpq"


def ensure_pool_index(n: int = 100_000, kind: str = SHIPPED_POOL_KIND, *, root: str | Path | None = None,
                      exclude: Any = (), workers: int = 2, progress: bool = True) -> IndexRetriever:
    """Open the pool index of ``n`` images: from ``root`` (default :func:`pool_dir`), else, with the default
    ``root``, the one shipped in :data:`SHIPPED_POOL_DIR` (the 10^5 IVF-PQ index: nothing to build), else
    build it first (the exact ``flat`` 10^5 index: about 6 CPU-minutes of rendering and embedding)."""
    path = pool_dir(root) / pool_index_name(int(n), kind)
    shipped = SHIPPED_POOL_DIR / pool_index_name(int(n), kind)
    if root is None and not (path / "index.json").is_file() and (shipped / "index.json").is_file():
        return open_index(shipped)
    if not (path / "index.json").is_file():
        build_pool_index(n, kind, root=root, exclude=exclude, workers=workers, progress=progress)
    return open_index(path)
