"""Build, store and open retrieval indexes: image folder, embeddings file or image generator -> faiss.

An index is a folder::

    <index>/
      index.json              written LAST (versioned JSON "mindeye-retrieval-index" v1): kind, faiss factory
                              string and search parameters, n_items, dim, embedding model (name, space,
                              weights sha256), measured recall@10 for approximate kinds, source, build time
      index.faiss             the faiss index over L2-normalised vectors, inner product (= cosine)
      ids.npy                 (N,) item ids, row order of the index: int64 (generator keys, e.g. pool seeds)
                              or str (file paths relative to the folder, URLs, keys)
      vectors/part-NNNNN.npy  (n_i, D) float32 exact unit vectors of chunk i, with part-NNNNN.ids.npy
      build.json              what is being built (a resumed build must match it)

Building is chunked: each chunk of ``chunk_size`` items is embedded and written as one part (``.tmp`` then
renamed), so a killed build resumes at the first missing part; memory holds one chunk of images plus, at
assembly, the faiss index itself (vectors are added part by part; an IVF index is trained on a sample of at
most ``train_size`` vectors). A folder without ``index.json`` is incomplete and :func:`open_index` says so.

Index kinds (:data:`INDEX_KINDS`; any faiss factory string can be given instead):

=========  ================================  ===============================================================
kind       faiss                             use
=========  ================================  ===============================================================
``flat``   ``Flat`` (IndexFlatIP)            exact, up to ~10^6 items (``N * D * 4`` bytes of memory)
``ivfpq``  ``IVF{nlist},PQ{m}x{nbits}``      approximate, compact (``m`` bytes + 8-byte id per item)
           + ``nprobe``
``ivfsq``  ``IVF{nlist},SQ{bits}``           approximate, ``bits`` (4, 6, 8) per dimension + 8-byte id per item
           + ``nprobe``
``hnsw``   ``HNSW{M},Flat`` + ``efSearch``   approximate, fastest queries, more memory than flat
=========  ================================  ===============================================================

The embedding model of the index is recorded (:class:`~.embedders.ModelInfo`) and every query that states
its model is checked against it (:class:`~.embedders.ModelMismatchError`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..configfile import read_versioned_config, write_versioned_config
from ..errors import DataFormatError, DestinationError, MindEyeError
from ..similarity import normalise, top_k
from .embedders import ImageEmbedder, ModelInfo

__all__ = [
    "EmbeddingsFileSource",
    "ImageFolderSource",
    "INDEX_KINDS",
    "IndexRetriever",
    "KeyedImageSource",
    "apply_search_params",
    "build_index",
    "exact_top_k_parts",
    "faiss_factory",
    "index_memory_bytes",
    "open_index",
    "recall_at_k",
]

INDEX_FORMAT = "mindeye-retrieval-index"
INDEX_VERSION = 1
INDEX_KINDS = ("flat", "ivfpq", "ivfsq", "hnsw")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is pinned in requirements.txt
        raise MindEyeError("retrieval indexes need faiss: pip install mindeye-explorer[faiss]") from exc
    return faiss


# ------------------------------------------------------------------------------------------ sources
class ImageFolderSource:
    """Every image file under ``folder`` (recursive, sorted); ids are paths relative to the folder.

    Images are converted to RGB and resized to ``size`` x ``size`` (bicubic) so that a chunk stacks into
    one ``(n, size, size, 3)`` uint8 batch; the encoder then applies its own preprocessing.
    """

    def __init__(self, folder: str | Path, *, size: int, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataFormatError(f"image folder {self.folder} does not exist")
        exts = tuple(e.lower() for e in extensions)
        self.paths = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not self.paths:
            raise DataFormatError(f"image folder {self.folder} holds no images ({', '.join(exts)})")
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def keys(self, start: int, stop: int) -> np.ndarray:
        return np.array([str(p.relative_to(self.folder)) for p in self.paths[start:stop]])

    def images(self, start: int, stop: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        out = np.empty((stop - start, self.size, self.size, 3), np.uint8)
        for i, p in enumerate(self.paths[start:stop]):
            try:
                with Image.open(p) as im:
                    out[i] = np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC))
            except (OSError, UnidentifiedImageError) as exc:
                raise DataFormatError(f"cannot read image {p}: {exc}") from exc
        return out

    def signature(self) -> dict[str, Any]:
        return {"type": "image_folder", "folder": str(self.folder.resolve()), "n": len(self), "size": self.size}


class KeyedImageSource:
    """Images made on demand from keys: ``render(keys) -> (n, H, W, 3) uint8``; ids are the keys.

    Args:
        keys: the item keys (ints, e.g. generator seeds, or strings), in index row order.
        render: a function of a slice of ``keys`` returning their images (picklable for ``workers > 1``).
        name: what the generator is (stored in the index metadata).
    """

    def __init__(self, keys: Sequence[Any] | np.ndarray, render: Callable[[np.ndarray], np.ndarray], *,
                 name: str = "generator", extra: Mapping[str, Any] | None = None) -> None:
        self._keys = np.asarray(keys)
        if self._keys.ndim != 1 or self._keys.size == 0:
            raise DataFormatError(f"keys must be a non-empty 1-D sequence, got shape {self._keys.shape}")
        self.render = render
        self.name = name
        self.extra = dict(extra or {})

    def __len__(self) -> int:
        return int(self._keys.size)

    def keys(self, start: int, stop: int) -> np.ndarray:
        return self._keys[start:stop]

    def images(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.render(self._keys[start:stop]))

    def signature(self) -> dict[str, Any]:
        k = self._keys
        return {"type": "generator", "name": self.name, "n": len(self), "first": str(k[0]), "last": str(k[-1]),
                **self.extra}


class EmbeddingsFileSource:
    """Precomputed vectors: a ``.npy`` file ``(N, D)`` (memory-mapped) and optional ids.

    The model that made them cannot be read from the file, so it must be stated (``model``).

    Args:
        path: the ``.npy`` file of ``(N, D)`` float vectors (normalised here).
        model: the embedding model that produced them.
        ids: ``(N,)`` ids, or a ``.npy`` / ``.txt`` (one id per line) file of them; default row numbers.
    """

    def __init__(self, path: str | Path, *, model: ModelInfo, ids: Any = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DataFormatError(f"embeddings file {self.path} does not exist")
        try:
            self.array = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"cannot read embeddings file {self.path} (expected a .npy array): {exc}") from exc
        if self.array.ndim != 2 or self.array.shape[0] == 0:
            raise DataFormatError(f"embeddings file {self.path}: expected (N, D), got shape {self.array.shape}")
        if isinstance(ids, (str, Path)):
            p = Path(ids)
            ids = np.load(p) if p.suffix == ".npy" else np.array(p.read_text().splitlines())
        self.ids = np.arange(self.array.shape[0], dtype=np.int64) if ids is None else np.asarray(ids)
        if self.ids.shape != (self.array.shape[0],):
            raise DataFormatError(f"embeddings file {self.path} has {self.array.shape[0]} rows but "
                                  f"{self.ids.shape[0] if self.ids.ndim else 0} ids")
        if model.dim and model.dim != self.array.shape[1]:
            raise DataFormatError(f"embeddings file {self.path} has dimension {self.array.shape[1]} but the "
                                  f"model {model.name} makes {model.dim}")
        self.model = ModelInfo(model.name, model.sha256, model.space, int(self.array.shape[1]))

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def keys(self, start: int, stop: int) -> np.ndarray:
        return self.ids[start:stop]

    def vectors(self, start: int, stop: int) -> np.ndarray:
        return normalise(np.asarray(self.array[start:stop]), f"{self.path} rows {start}:{stop}")

    def signature(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"type": "embeddings_file", "path": str(self.path.resolve()), "n": len(self),
                "bytes": int(st.st_size), "mtime": int(st.st_mtime)}


Source = ImageFolderSource | KeyedImageSource | EmbeddingsFileSource


# ------------------------------------------------------------------------------------------ faiss kinds
def _nlist(n: int, p: Mapping[str, Any]) -> int:
    """IVF lists: ``params["nlist"]`` or ``~4 sqrt(n)`` rounded to a power of 2 (at least 16)."""
    return int(p.get("nlist", 2 ** max(4, round(math.log2(max(16.0, 4 * math.sqrt(n)))))))


def faiss_factory(kind: str, n: int, params: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The faiss factory string and search parameters of an index kind for ``n`` items.

    Args:
        kind: one of :data:`INDEX_KINDS`, or a faiss factory string (then ``params`` are search parameters).
        n: number of items (sets the default number of IVF lists, ``~4 sqrt(n)`` rounded to a power of 2).
        params: overrides: ``nlist``, ``m``, ``nbits``, ``nprobe`` (ivfpq); ``nlist``, ``bits``, ``nprobe``
            (ivfsq); ``M``, ``efConstruction``,
            ``efSearch`` (hnsw).

    Returns:
        ``(factory, search_params)``; ``search_params`` are set with faiss' ``ParameterSpace`` at open.
    """
    p = dict(params or {})
    if kind == "flat":
        return "Flat", {}
    if kind == "ivfpq":
        nlist = _nlist(n, p)
        m, nbits = int(p.get("m", 32)), int(p.get("nbits", 8))
        return f"IVF{nlist},PQ{m}x{nbits}", {"nprobe": int(p.get("nprobe", 32))}
    if kind == "ivfsq":
        nlist = _nlist(n, p)
        return f"IVF{nlist},SQ{int(p.get('bits', 6))}", {"nprobe": int(p.get("nprobe", 32))}
    if kind == "hnsw":
        return f"HNSW{int(p.get('M', 32))},Flat", {"efSearch": int(p.get("efSearch", 64)),
                                                   "efConstruction": int(p.get("efConstruction", 80))}
    if kind[:1].isupper():  # a raw faiss factory string
        return kind, {k: v for k, v in p.items()}
    raise ValueError(f"unknown index kind {kind!r}: use one of {INDEX_KINDS} or a faiss factory string")


def apply_search_params(index: Any, params: Mapping[str, Any]) -> None:
    faiss = _faiss()
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name == "efConstruction":
            continue  # a build parameter, set before adding
        space.set_index_parameter(index, name, float(value))


def index_memory_bytes(index: Any) -> int:
    """Size of a faiss index once serialised (its vectors/codes, ids, quantizer and graph), in bytes."""
    return int(_faiss().serialize_index(index).nbytes)


# ------------------------------------------------------------------------------------------ exact search
def exact_top_k_parts(queries: np.ndarray, parts: Iterable[np.ndarray], k: int,
                      chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k over vectors given part by part (memory: one part and ``Q x 2k`` results).

    Args:
        queries: ``(Q, D)`` unit rows.
        parts: ``(n_i, D)`` unit-row arrays; the candidates' global rows run through them in order.
        k: neighbours per query.

    Returns:
        ``(rows (Q, k) int64, scores (Q, k) float32)``, best first, ties by the lower row
        (:mod:`mindeye_core.similarity` conventions).
    """
    rows = np.empty((queries.shape[0], 0), np.int64)
    scores = np.empty((queries.shape[0], 0), np.float32)
    offset = 0
    for part in parts:
        if part.shape[0] == 0:
            continue
        ix, sc = top_k(queries, part, k, chunk_size=chunk_size, assume_normalised=True)
        rows = np.concatenate([rows, ix + offset], axis=1)
        scores = np.concatenate([scores, sc], axis=1)
        order = np.lexsort((rows, -scores), axis=1)[:, :k]
        rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
        offset += part.shape[0]
    if offset == 0:
        raise DataFormatError("exact search over no candidates")
    return rows, scores


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean ``|approx[:, :k] & exact[:, :k]| / k`` over queries (rows or ids, ``(Q, >= k)`` each)."""
    a, e = np.asarray(approx)[:, :k], np.asarray(exact)[:, :k]
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, e)]))


# ------------------------------------------------------------------------------------------ building
def _part_path(vdir: Path, i: int) -> Path:
    return vdir / f"part-{i:05d}.npy"


def _ids_path(vdir: Path, i: int) -> Path:
    return vdir / f"part-{i:05d}.ids.npy"


def _part_rows(vdir: Path, i: int) -> int:
    return int(np.load(_part_path(vdir, i), mmap_mode="r").shape[0])


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)


def _embed_chunk(source: Source, embedder: ImageEmbedder | None, start: int, stop: int) -> np.ndarray:
    if isinstance(source, EmbeddingsFileSource):
        return source.vectors(start, stop)
    assert embedder is not None
    return embedder.encode(source.images(start, stop))


_WORKER: dict[str, Any] = {}


def _worker_init(source: Source, embedder_factory: Callable[[], ImageEmbedder] | None, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["source"] = source
    _WORKER["embedder"] = embedder_factory() if embedder_factory is not None else None


def _write_part(vdir: Path, i: int, keys: np.ndarray, vectors: np.ndarray) -> None:
    _save_npy(_ids_path(vdir, i), keys)
    _save_npy(_part_path(vdir, i), vectors.astype(np.float32))


def _worker_chunk(args: tuple[str, int, int, int]) -> int:
    vdir, i, start, stop = args
    vec = _embed_chunk(_WORKER["source"], _WORKER["embedder"], start, stop)
    _write_part(Path(vdir), i, _WORKER["source"].keys(start, stop), vec)
    return i


@dataclass
class BuildResult:
    """What :func:`build_index` did: the folder, its metadata and the seconds spent per phase."""

    path: Path
    meta: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def _parts(vdir: Path, n_parts: int) -> Iterator[np.ndarray]:
    for i in range(n_parts):
        yield np.load(_part_path(vdir, i))


def build_index(
    out: str | Path,
    source: Source,
    *,
    embedder: ImageEmbedder | None = None,
    embedder_factory: Callable[[], ImageEmbedder] | None = None,
    kind: str = "flat",
    params: Mapping[str, Any] | None = None,
    chunk_size: int = 4096,
    workers: int = 1,
    train_size: int = 100_000,
    recall_queries: int = 200,
    seed: int = 0,
    progress: bool = True,
    max_chunks: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    vectors_dir: str | Path | None = None,
) -> BuildResult:
    """Embed every item of ``source`` (resumable, chunked) and write a faiss index folder at ``out``.

    Args:
        out: the index folder (created; an unfinished build there is resumed when it is the same build).
        source: :class:`ImageFolderSource`, :class:`KeyedImageSource` or :class:`EmbeddingsFileSource`.
        embedder: the image embedder (image sources); its :class:`ModelInfo` is recorded.
        embedder_factory: makes the embedder in each worker process (``workers > 1``; picklable).
        kind: :data:`INDEX_KINDS` or a faiss factory string; ``params`` as in :func:`faiss_factory`.
        chunk_size: items per part (one part is embedded and written at a time).
        workers: processes embedding parts in parallel (each with 1 torch thread).
        train_size: at most this many vectors (an even sample) train an IVF index.
        recall_queries: for approximate kinds, that many items' vectors query both the index and exact
            search (each query's own item left out of both lists); recall@10 is stored in the metadata.
        seed: for the training and recall samples.
        progress: show a tqdm bar over the parts.
        max_chunks: embed at most this many new parts, then return without assembling (``meta["complete"]``
            is ``False``): for building a large index in pieces.
        metadata: extra entries stored under ``metadata`` in ``index.json``.
        vectors_dir: where the embedded parts go (default ``out/vectors``); indexes of one source with
            the same model and chunk size (e.g. a 10^5 and a 10^6 prefix of the demo pool, or a flat and
            an IVF-PQ index) can share it, so nothing is embedded twice. A ``vectors.json`` there records
            the model and chunk size and refuses another.

    Returns:
        A :class:`BuildResult`.

    Raises:
        MindEyeError: the folder holds another build (other source, model, chunk size or kind).
        DestinationError: ``out`` is a file, or a folder holding files that are not a retrieval index
            (never written into); ``vectors_dir`` likewise.
        DestinationLockedError: another process is building into ``out`` (or its ``vectors_dir``); the lock
            (:class:`mindeye_core.staging.WriterLock`) names it.
        StorageError: out of disk or a read-only destination (the parts finished so far are kept: run again
            to resume).
    """
    from ..staging import WriterLock, check_output_dir, lock_path, raise_storage_error

    out = Path(out).expanduser()
    vdir = Path(vectors_dir).expanduser() if vectors_dir is not None else out / "vectors"
    for folder, marks, what in ((out, ("index.json", "build.json"), "retrieval index"),
                                (vdir, ("vectors.json",), "vectors folder")):
        check_output_dir(folder, what=f"the {what}")
        if folder.is_dir() and any(folder.iterdir()) and not any((folder / m).is_file() for m in marks):
            raise DestinationError(f"refusing to build into {folder}: it holds files that are not a {what} "
                                   f"(no {' or '.join(marks)}); choose an empty or new folder")
    left = "the parts embedded so far are kept: run the same build again to resume"
    with WriterLock(lock_path(out), what=f"the retrieval index {out}"), \
            WriterLock(lock_path(vdir), what=f"the vectors folder {vdir}"):
        try:
            return _build_index(out, vdir, source, embedder=embedder, embedder_factory=embedder_factory, kind=kind,
                                params=params, chunk_size=chunk_size, workers=workers, train_size=train_size,
                                recall_queries=recall_queries, seed=seed, progress=progress,
                                max_chunks=max_chunks, metadata=metadata)
        except OSError as exc:
            raise_storage_error(exc, out, left=left)
            raise


def _build_index(out: Path, vdir: Path, source: Source, *, embedder: ImageEmbedder | None,
                 embedder_factory: Callable[[], ImageEmbedder] | None, kind: str, params: Mapping[str, Any] | None,
                 chunk_size: int, workers: int, train_size: int, recall_queries: int, seed: int, progress: bool,
                 max_chunks: int | None, metadata: Mapping[str, Any] | None) -> BuildResult:
    """:func:`build_index` once its destination is checked and locked."""
    from tqdm.auto import tqdm

    faiss = _faiss()
    if isinstance(source, EmbeddingsFileSource):
        model = source.model
    else:
        if embedder is None and embedder_factory is not None:
            embedder = embedder_factory()
        if embedder is None:
            raise ValueError("an image source needs an embedder (or embedder_factory)")
        model = embedder.info
    n = len(source)
    factory, search_params = faiss_factory(kind, n, params)
    plan = {"source": source.signature(), "model": model.to_dict(), "chunk_size": int(chunk_size), "n": n}
    state_path = out / "build.json"
    if out.exists() and (out / "index.json").is_file():
        old = read_versioned_config(out / "index.json", kind=INDEX_FORMAT, version=INDEX_VERSION,
                                    error=DataFormatError, what="retrieval index")
        if old.data.get("build") == plan and old.data.get("factory") == factory:
            return BuildResult(out, old.data, {})
        raise MindEyeError(f"{out} already holds a different complete index; choose another folder or delete it")
    vdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    vkey = {"model": model.to_dict(), "chunk_size": int(chunk_size), "source": source.signature().get("name",
                                                                                                   source.signature()["type"])}
    vjson = vdir / "vectors.json"
    if vjson.is_file():
        if json.loads(vjson.read_text()) != vkey:
            raise MindEyeError(f"{vdir} holds vectors of another model, source or chunk size ({vjson})")
    else:
        vjson.write_text(json.dumps(vkey, indent=2))
    if state_path.is_file():
        saved = json.loads(state_path.read_text())
        if saved != plan:
            raise MindEyeError(f"{out} holds an unfinished build of something else ({state_path}: {saved}); "
                               f"delete the folder or choose another one")
    else:
        state_path.write_text(json.dumps(plan, indent=2))
    bounds = [(i, s, min(n, s + chunk_size)) for i, s in enumerate(range(0, n, chunk_size))]
    todo = [b for b in bounds if not _part_path(vdir, b[0]).is_file() or not _ids_path(vdir, b[0]).is_file()]
    for i, s, e in bounds:
        if (i, s, e) not in todo and _part_rows(vdir, i) != e - s:
            raise MindEyeError(f"{_part_path(vdir, i)} holds {_part_rows(vdir, i)} vectors, this build expects "
                               f"{e - s}: indexes sharing a vectors folder need sizes that are multiples of "
                               f"chunk_size ({chunk_size})")
    if max_chunks is not None:
        todo = todo[: max(0, int(max_chunks))]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(bounds), initial=len(bounds) - len(todo), desc=f"embed {out.name}", unit="part",
               disable=not progress)
    if workers > 1 and todo and not isinstance(source, EmbeddingsFileSource):
        from concurrent.futures import ProcessPoolExecutor

        if embedder_factory is None:
            raise ValueError("workers > 1 needs embedder_factory (each process makes its own embedder)")
        with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(source, embedder_factory, 1)) as ex:
            for _ in ex.map(_worker_chunk, [(str(vdir), i, s, e) for i, s, e in todo]):
                bar.update(1)
    else:
        for i, s, e in todo:
            _write_part(vdir, i, source.keys(s, e), _embed_chunk(source, embedder, s, e))
            bar.update(1)
    bar.close()
    seconds["embed"] = time.perf_counter() - t0
    missing = [i for i, _, _ in bounds if not _part_path(vdir, i).is_file()]
    if missing:
        return BuildResult(out, {"complete": False, "parts_done": len(bounds) - len(missing),
                                 "parts": len(bounds)}, seconds)

    t1 = time.perf_counter()
    dim = int(np.load(_part_path(vdir, 0), mmap_mode="r").shape[1])
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if "efConstruction" in search_params:
        faiss.downcast_index(index).hnsw.efConstruction = int(search_params["efConstruction"])
    rng = np.random.default_rng(seed)
    if not index.is_trained:
        take = min(n, int(train_size))
        rows = np.sort(rng.choice(n, take, replace=False))
        sample = []
        for i, s, e in bounds:
            sel = rows[(rows >= s) & (rows < e)] - s
            if sel.size:
                sample.append(np.load(_part_path(vdir, i), mmap_mode="r")[sel])
        index.train(np.ascontiguousarray(np.concatenate(sample), dtype=np.float32))
    ids = []
    for i, _, _ in bounds:
        index.add(np.ascontiguousarray(np.load(_part_path(vdir, i)), dtype=np.float32))
        ids.append(np.load(_ids_path(vdir, i)))
    all_ids = np.concatenate(ids)
    seconds["index"] = time.perf_counter() - t1
    apply_search_params(index, search_params)
    recall = None
    if factory != "Flat" and recall_queries > 0:
        q_rows = np.sort(rng.choice(n, min(n, int(recall_queries)), replace=False))
        q = np.concatenate([np.load(_part_path(vdir, i), mmap_mode="r")[q_rows[(q_rows >= s) & (q_rows < e)] - s]
                            for i, s, e in bounds])
        recall = _self_excluded_recall(index, q, q_rows, _parts(vdir, len(bounds)), k=10)
    tmp = out / "index.faiss.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, out / "index.faiss")
    _save_npy(out / "ids.npy", all_ids)
    meta = {
        "kind": kind if kind in INDEX_KINDS else "custom", "factory": factory, "metric": "cosine",
        "search_params": search_params, "n_items": n, "dim": dim, "model": model.to_dict(),
        "memory_bytes": index_memory_bytes(index), "flat_bytes": n * dim * 4,
        "recall": recall, "build": plan, "vectors_dir": str(vdir.resolve()), "n_parts": len(bounds), "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metadata": dict(metadata or {}),
    }
    write_versioned_config(out / "index.json", kind=INDEX_FORMAT, version=INDEX_VERSION, data=meta)
    return BuildResult(out, meta, seconds)


def _self_excluded_recall(index: Any, q: np.ndarray, q_rows: np.ndarray, parts: Iterable[np.ndarray],
                          k: int) -> dict[str, Any]:
    exact, _ = exact_top_k_parts(q, parts, k + 1)
    _, approx = index.search(np.ascontiguousarray(q, dtype=np.float32), k + 1)

    def drop_self(lists: np.ndarray) -> np.ndarray:
        return np.stack([[r for r in row if r != own][:k] for row, own in zip(lists.tolist(), q_rows.tolist())])

    return {"recall@10": recall_at_k(drop_self(approx), drop_self(exact), k), "n_queries": int(len(q_rows)),
            "queries": "indexed items (own item excluded)"}


# ------------------------------------------------------------------------------------------ opening
class IndexRetriever:
    """A built index folder: top-k cosine search returning item ids (see :func:`open_index`).

    Attributes:
        path: the folder; meta: ``index.json``'s payload; model: the :class:`ModelInfo` it was built with;
        ids: ``(N,)`` item ids in index row order; index: the faiss index (search parameters applied).
    """

    def __init__(self, path: str | Path, *, model: ModelInfo | None = None) -> None:
        self.path = Path(path).expanduser()
        if not (self.path / "index.json").is_file():
            hint = (" (an unfinished build: run the same build command again to resume it)"
                    if (self.path / "build.json").is_file() else "")
            raise DataFormatError(f"not a retrieval index: missing {self.path / 'index.json'}{hint}")
        cfg = read_versioned_config(self.path / "index.json", kind=INDEX_FORMAT, version=INDEX_VERSION,
                                    error=DataFormatError, what="retrieval index")
        self.meta = cfg.data
        self.model = ModelInfo.from_dict(self.meta["model"])
        if model is not None:
            self.model.check_same(model)
        for name in ("index.faiss", "ids.npy"):
            if not (self.path / name).is_file():
                raise DataFormatError(f"retrieval index {self.path}: missing {name}")
        self.index = _faiss().read_index(str(self.path / "index.faiss"))
        self.ids = np.load(self.path / "ids.npy")
        if self.index.ntotal != self.ids.shape[0] or self.index.ntotal != int(self.meta["n_items"]):
            raise DataFormatError(f"retrieval index {self.path}: faiss holds {self.index.ntotal} items, ids.npy "
                                  f"{self.ids.shape[0]}, index.json {self.meta['n_items']}")
        self.dim = int(self.meta["dim"])
        apply_search_params(self.index, self.meta.get("search_params", {}))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def exact(self) -> bool:
        return self.meta.get("factory") == "Flat"

    def set_search_params(self, **params: Any) -> None:
        """Change search parameters (``nprobe``, ``efSearch``) of the open index (not the stored ones)."""
        apply_search_params(self.index, params)

    def search(self, queries: Any, k: int, *, model: ModelInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for each query.

        Args:
            queries: ``(Q, D)`` embeddings in the index's space (normalised here).
            k: neighbours per query (capped at the number of items).
            model: the model that embedded the queries; refused (:class:`ModelMismatchError`) when it is
                not the index's.

        Returns:
            ``(scores (Q, k) float32 descending, ids (Q, k))`` with ids from ``ids.npy``.
        """
        if model is not None:
            self.model.check_same(model)
        q = normalise(queries, "queries")
        if q.shape[1] != self.dim:
            raise DataFormatError(f"query dimension {q.shape[1]} != index dimension {self.dim} ({self.path})")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, rows = self.index.search(q, min(int(k), len(self)))
        if (rows < 0).any():  # an IVF probe that found fewer than k items
            raise MindEyeError(f"the approximate index {self.path} found fewer than {k} items for some queries: "
                               f"raise nprobe (now {self.meta.get('search_params')})")
        return scores.astype(np.float32), self.ids[rows]

    def vectors(self) -> Iterator[np.ndarray]:
        """The exact unit vectors ``(n_i, D)`` part by part, in index row order (the last part of a
        shared vectors folder is cut at ``n_items``)."""
        vdir = Path(self.meta.get("vectors_dir") or self.path / "vectors")
        if not (vdir / "vectors.json").is_file():
            raise DataFormatError(f"retrieval index {self.path}: its exact vectors are not here ({vdir}); a shipped "
                                  "index carries none: build the index with `mindeye retrieval build` to have them")
        left = len(self)
        for part in _parts(vdir, int(self.meta["n_parts"])):
            yield part[:left]
            left -= part.shape[0]


def open_index(path: str | Path, *, model: ModelInfo | None = None) -> IndexRetriever:
    """Open a built index folder; with ``model`` given, refuse it unless it was built with that model."""
    return IndexRetriever(path, model=model)
