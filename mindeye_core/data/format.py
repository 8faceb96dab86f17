"""The canonical on-disk dataset format shared by every world (NSD, demo).

A dataset is a folder::

    <root>/
      manifest.json      versioned description; written LAST, so its presence means "complete"
      images.h5          /images    uint8 (N, H, W, 3), one chunk per image
                         /image_ids int64 (N,)  source ids (NSD: COCO-73k index; demo: generation index)
                         /captions  utf-8 strings (N,)  optional
      <subject>.h5       /betas       float16|float32 (T, V)  one row per trial (T trials, V voxels)
                         /image_index int64 (T,)  row of images.h5 shown in each trial
                         /split       uint8 (T,)  0 = train, 1 = test
                         /repetition  int16 (T,)  0-based presentation count of that image for this subject
                         /session     int16 (T,)  optional, 0-based scan session

Everything is written into ``<root>.partial/`` and swapped into ``<root>`` only by
:meth:`DatasetWriter.finalize`, through :mod:`mindeye_core.staging` (lock, destination and free-space checks,
atomic swap); an interrupted write therefore never looks like a complete dataset, and the reader refuses a
folder without a manifest. Every HDF5 dataset is written with fletcher32 checksums: a damaged chunk raises
:class:`~mindeye_core.errors.DataFormatError` naming the file and the dataset. Readers stream from disk (h5py), so NSD's tens of GB never
need to fit in memory; test betas are averaged over repetitions on demand (a few MB).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import h5py
import numpy as np

from ..configfile import CLASS_KEY, VERSION_KEY, dump_versioned_config, read_versioned_config
from ..errors import DataFormatError
from ..staging import Staging, begin, discard_h5, raise_storage_error, require_room

FORMAT_NAME = "mindeye-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGES_NAME = "images.h5"
SPLIT_TRAIN = 0
SPLIT_TEST = 1
_SPLIT_CODES = {"train": SPLIT_TRAIN, "test": SPLIT_TEST}
_CHECKSUM = {"fletcher32": True}
"""HDF5 filter options of every dataset written here (a damaged chunk fails to read instead of reading back)."""


def h5_read(ds: h5py.Dataset, selection: Any, path: str | Path) -> np.ndarray:
    """``ds[selection]``, with an HDF5 read error (a fletcher32 mismatch: damaged bytes) raised as
    :class:`DataFormatError` naming the file and the dataset."""
    try:
        return ds[selection]
    except OSError as exc:
        raise DataFormatError(f"corrupt data in {path}, dataset {ds.name!r}: {exc} (the file is damaged; "
                              "re-create it)") from exc


def _int_column(values: Any, name: str, subject: str, t: int, lo: int, hi: int, dtype: Any, first: int,
                rule: str = "") -> np.ndarray:
    """``values`` as ``(t,)`` ``dtype`` ints after checking they are integers in ``[lo, hi]`` (never cast silently)."""
    arr = np.asarray(values)
    if arr.shape != (t,):
        raise DataFormatError(f"subject {subject}: {name} must have shape ({t},), got {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataFormatError(f"subject {subject}: {name} contains NaN/inf (first in trial {first + int(np.argmax(bad))})")
        frac = arr != np.round(arr)
        if frac.any():
            i = int(np.argmax(frac))
            raise DataFormatError(f"subject {subject}: {name} must hold integers, got {arr[i].item()!r} in trial {first + i}")
    elif arr.dtype.kind not in "iub":
        raise DataFormatError(f"subject {subject}: {name} must hold integers, got dtype {arr.dtype}")
    if t:
        out = (arr < lo) | (arr > hi)
        if out.any():
            i = int(np.argmax(out))
            raise DataFormatError(f"subject {subject}: {rule or f'{name} must be in [{lo}, {hi}]'}, got "
                                  f"{arr[i].item()!r} in trial {first + i}")
    return arr.astype(dtype)


def _subject_file(subject: str) -> str:
    if not subject or any(c in subject for c in "/\\ .") or subject == "images":
        raise DataFormatError(f"invalid subject name {subject!r}: use letters, digits, '-' or '_'")
    return f"{subject}.h5"


# ----------------------------------------------------------------------------------------------- writer
class _SubjectAppender:
    """Appends trials for one subject; created by :meth:`DatasetWriter.subject`."""

    def __init__(self, h5: h5py.File, subject: str, n_voxels: int, dtype: np.dtype, root: Path) -> None:
        self.h5 = h5
        self.root = root  # the destination (named in errors); the file is in its staging folder
        self.subject = subject
        self.n_voxels = int(n_voxels)
        self.n_trials = 0
        chunk_rows = max(1, min(64, (1 << 20) // max(1, self.n_voxels * np.dtype(dtype).itemsize)))
        h5.create_dataset("betas", shape=(0, n_voxels), maxshape=(None, n_voxels), dtype=dtype,
                          chunks=(chunk_rows, n_voxels), **_CHECKSUM)
        for name, dt in (("image_index", np.int64), ("split", np.uint8), ("repetition", np.int16), ("session", np.int16)):
            h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,), **_CHECKSUM)

    def append(
        self,
        betas: np.ndarray,
        image_index: np.ndarray,
        split: np.ndarray,
        repetition: np.ndarray,
        session: np.ndarray | None = None,
    ) -> None:
        """Append trials.

        Args:
            betas: (t, V) float responses, finite.
            image_index: (t,) int rows of images.h5 (validated against the image count at finalize).
            split: (t,) ints (0 train, 1 test) or strings "train"/"test".
            repetition: (t,) ints, 0-based repetition of the image for this subject (< 32768).
            session: optional (t,) ints (-1 = unknown).

        Raises:
            DataFormatError: wrong shapes, NaN/inf betas, or a column that is not integer-valued or out of its
                range (never cast silently: a NaN split or a repetition of 40000 is refused, naming the trial).
        """
        betas = np.asarray(betas)
        if betas.ndim != 2 or betas.shape[1] != self.n_voxels:
            raise DataFormatError(
                f"subject {self.subject}: betas must be (trials, {self.n_voxels} voxels), got shape {betas.shape}"
            )
        t = betas.shape[0]
        bad = ~np.isfinite(betas)
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise DataFormatError(
                f"subject {self.subject}: betas contain {int(bad.sum())} NaN/inf values "
                f"(first in trial {self.n_trials + row})"
            )
        split_arr = np.asarray(split)
        if split_arr.dtype.kind in "US":
            unknown = {str(u) for u in np.unique(split_arr)} - set(_SPLIT_CODES)
            if unknown:
                raise DataFormatError(f"subject {self.subject}: unknown split labels {sorted(unknown)}")
            split_arr = np.vectorize(_SPLIT_CODES.__getitem__, otypes=[np.uint8])(split_arr)
        first, who = self.n_trials, self.subject
        cols = {
            "image_index": _int_column(image_index, "image_index", who, t, 0, np.iinfo(np.int64).max, np.int64, first,
                                        rule="image_index must be >= 0 (negative image index)"),
            "split": _int_column(split_arr, "split", who, t, SPLIT_TRAIN, SPLIT_TEST, np.uint8, first,
                                  rule="split codes must be 0 (train) or 1 (test)"),
            "repetition": _int_column(repetition, "repetition", who, t, 0, np.iinfo(np.int16).max, np.int16, first),
            "session": (np.full(t, -1, np.int16) if session is None
                        else _int_column(session, "session", who, t, -1, np.iinfo(np.int16).max, np.int16, first)),
        }
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
            stored = betas.astype(self.h5["betas"].dtype, copy=False)
        if stored.dtype != betas.dtype and not np.isfinite(stored).all():
            row = int(np.argwhere(~np.isfinite(stored))[0, 0])
            raise DataFormatError(
                f"subject {self.subject}: betas overflow to NaN/inf when stored as {stored.dtype} "
                f"(first in trial {self.n_trials + row}, |value| up to {float(np.abs(betas).max()):.3g}); "
                "use betas_dtype=float32"
            )
        require_room(Path(self.h5.filename).parent, stored.nbytes + sum(a.nbytes for a in cols.values()),
                     self.root)
        start = self.n_trials
        self.h5["betas"].resize(start + t, axis=0)
        self.h5["betas"][start:] = stored
        for name, arr in cols.items():
            self.h5[name].resize(start + t, axis=0)
            self.h5[name][start:] = arr
        self.n_trials += t


class DatasetWriter:
    """Write a dataset in the canonical format, streaming.

    Usage::

        with DatasetWriter(root, name="demo", world="demo") as w:
            w.append_images(images_uint8, image_ids=ids, captions=caps)
            subj = w.subject("subj01", n_voxels=2000)
            subj.append(betas, image_index, split, repetition)
            w.finalize(metadata={...})

    Everything lands in ``<root>.partial`` until :meth:`finalize`, which validates every subject (image
    indices in range, finite betas), writes the manifest and swaps the folder into place
    (:mod:`mindeye_core.staging`). Leaving the ``with`` block without finalizing (an exception, say) deletes the
    partial folder; an out-of-disk error surfaces as :class:`~mindeye_core.errors.StorageError`.

    Args:
        root: the dataset folder.
        name, world: stored in the manifest.
        overwrite: replace an existing *dataset* (complete or partial) at ``root``, once the new one is
            complete; any other folder content is refused (:class:`~mindeye_core.errors.DestinationError`).
        betas_dtype: float32 or float16.
        sources: what this write reads (e.g. the NSD shards' folder): ``root`` may not be one of them or above.
        required_bytes: an estimate of the dataset's size, checked against the free space before writing.

    Raises:
        FileExistsError: ``root`` holds something and ``overwrite`` is False.
        DestinationError, DestinationLockedError, StorageError: see :func:`mindeye_core.staging.begin`.
    """

    def __init__(self, root: str | Path, *, name: str, world: str, overwrite: bool = False, betas_dtype: Any = np.float32,
                 sources: Sequence[str | Path] = (), required_bytes: int = 0) -> None:
        self.root = Path(root)
        self.betas_dtype = np.dtype(betas_dtype)
        if self.betas_dtype not in (np.float16, np.float32):
            raise DataFormatError(f"betas_dtype must be float16 or float32, got {self.betas_dtype}")
        self._staging: Staging = begin(self.root, kind=FORMAT_NAME, manifest=MANIFEST_NAME, overwrite=overwrite,
                                       sources=sources, required_bytes=required_bytes, exists_error=FileExistsError)
        self.partial = self._staging.partial
        self.name = name
        self.world = world
        self.overwrite = overwrite
        self._images: h5py.File | None = None
        self._subjects: dict[str, tuple[h5py.File, _SubjectAppender]] = {}
        self._has_captions: bool | None = None
        self._finalized = False

    # images -----------------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return 0 if self._images is None else int(self._images["images"].shape[0])

    def append_images(self, images: np.ndarray, *, image_ids: np.ndarray | None = None, captions: list[str] | None = None) -> None:
        """Append images (n, H, W, 3) uint8; all images must share H and W.

        Args:
            images: uint8 array (n, H, W, 3).
            image_ids: optional (n,) int source ids (default: running index).
            captions: optional list of n strings; give captions for all images or none.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataFormatError(f"images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")
        n = images.shape[0]
        if self._images is None:
            h, w = images.shape[1:3]
            f = h5py.File(self.partial / IMAGES_NAME, "w")
            f.create_dataset("images", shape=(0, h, w, 3), maxshape=(None, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3),
                             compression="lzf", **_CHECKSUM)
            f.create_dataset("image_ids", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,), **_CHECKSUM)
            self._images = f
        ds = self._images["images"]
        if images.shape[1:] != ds.shape[1:]:
            raise DataFormatError(f"image size {images.shape[1:3]} differs from earlier images {ds.shape[1:3]}")
        has = captions is not None
        if self._has_captions is None:
            self._has_captions = has
            if has:
                # variable-length strings take no HDF5 filter: captions are the one dataset without a checksum
                self._images.create_dataset("captions", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(),
                                            chunks=(4096,))
        elif self._has_captions != has:
            raise DataFormatError("give captions for every batch of images or for none")
        if has and len(captions) != n:  # type: ignore[arg-type]
            raise DataFormatError(f"{len(captions)} captions for {n} images")  # type: ignore[arg-type]
        start = ds.shape[0]
        ids = np.arange(start, start + n, dtype=np.int64) if image_ids is None else np.asarray(image_ids, dtype=np.int64)
        if ids.shape != (n,):
            raise DataFormatError(f"image_ids must have shape ({n},), got {ids.shape}")
        require_room(self.partial, images.nbytes + ids.nbytes, self.root)
        ds.resize(start + n, axis=0)
        ds[start:] = images
        self._images["image_ids"].resize(start + n, axis=0)
        self._images["image_ids"][start:] = ids
        if has:
            self._images["captions"].resize(start + n, axis=0)
            self._images["captions"][start:] = np.asarray(captions, dtype=object)

    # subjects ---------------------------------------------------------------------------------------
    def subject(self, subject: str, *, n_voxels: int) -> _SubjectAppender:
        """Start (or continue) writing trials for ``subject``, which has ``n_voxels`` voxels."""
        if subject in self._subjects:
            appender = self._subjects[subject][1]
            if appender.n_voxels != n_voxels:
                raise DataFormatError(f"subject {subject}: started with {appender.n_voxels} voxels, now {n_voxels}")
            return appender
        f = h5py.File(self.partial / _subject_file(subject), "w")
        appender = _SubjectAppender(f, subject, n_voxels, self.betas_dtype, self.root)
        self._subjects[subject] = (f, appender)
        return appender

    def finalize(self, metadata: dict[str, Any] | None = None) -> Path:
        """Validate, write ``manifest.json`` and move the folder into place. Returns the dataset root."""
        if self._images is None or self.n_images == 0:
            raise DataFormatError("a dataset needs at least one image")
        if not self._subjects:
            raise DataFormatError("a dataset needs at least one subject")
        n_images = self.n_images
        h, w = self._images["images"].shape[1:3]
        subjects_meta: dict[str, Any] = {}
        for subject, (f, appender) in self._subjects.items():
            idx = f["image_index"][:]
            split = f["split"][:]
            if appender.n_trials == 0:
                raise DataFormatError(f"subject {subject} has no trials")
            if idx.max() >= n_images:
                raise DataFormatError(
                    f"subject {subject}: image index {int(idx.max())} out of range for {n_images} images"
                )
            both = np.intersect1d(idx[split == SPLIT_TRAIN], idx[split == SPLIT_TEST])
            if both.size:
                raise DataFormatError(f"subject {subject}: {both.size} images appear in both train and test (e.g. {int(both[0])})")
            subjects_meta[subject] = {
                "file": _subject_file(subject),
                "n_voxels": appender.n_voxels,
                "n_trials": appender.n_trials,
                "n_train_trials": int((split == SPLIT_TRAIN).sum()),
                "n_test_trials": int((split == SPLIT_TEST).sum()),
                "n_train_images": int(np.unique(idx[split == SPLIT_TRAIN]).size),
                "n_test_images": int(np.unique(idx[split == SPLIT_TEST]).size),
                "max_repetitions": int(f["repetition"][:].max()) + 1,
            }
            f.close()
        self._images.close()
        manifest = {
            "name": self.name,
            "world": self.world,
            "n_images": n_images,
            "image_size": [int(h), int(w)],
            "has_captions": bool(self._has_captions),
            "betas_dtype": self.betas_dtype.name,
            "subjects": subjects_meta,
            "metadata": metadata or {},
        }
        self._staging.publish(dump_versioned_config(FORMAT_NAME, FORMAT_VERSION, manifest))
        self._finalized = True
        return self.root

    def abort(self) -> None:
        """Close files (without flushing them again, see :func:`~mindeye_core.staging.discard_h5`), delete the
        partial folder and release the destination's lock."""
        for f, _ in self._subjects.values():
            discard_h5(f, self._staging.partial)
        discard_h5(self._images, self._staging.partial)
        self._staging.abort()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self._finalized:
            self.abort()
        raise_storage_error(exc, self.root)


# ----------------------------------------------------------------------------------------------- reader
def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read and validate ``root/manifest.json`` (format name and version); returns its payload.

    The kind and version are checked by :func:`mindeye_core.configfile.read_versioned_config`
    (manifests written before it, with ``format`` / ``format_version`` keys, still load).
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if not path.is_file():
        hint = " (an interrupted write? re-run the generation/conversion)" if any(root.iterdir()) else ""
        raise DataFormatError(f"{root} is not a complete dataset: missing {MANIFEST_NAME}{hint}")
    manifest = read_versioned_config(
        path,
        kind=FORMAT_NAME,
        version=FORMAT_VERSION,
        error=DataFormatError,
        what="manifest",
        legacy_kind_key="format",
        legacy_version_key="format_version",
    ).data
    for key, kind in (("name", str), ("world", str), ("n_images", int), ("image_size", list), ("subjects", dict)):
        if key not in manifest:
            raise DataFormatError(f"{path}: missing key {key!r} (the manifest is truncated or was edited)")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise DataFormatError(f"{path}: key {key!r} must be a {kind.__name__}, got {manifest[key]!r}")
    for subject, meta in manifest["subjects"].items():
        for key in ("file", "n_voxels"):
            if not isinstance(meta, dict) or key not in meta:
                raise DataFormatError(f"{path}: subject {subject!r} lacks key {key!r}")
    return manifest


VOLATILE_METADATA_KEYS = ("timing_s",)
"""Manifest ``metadata`` keys that say how a write went (seconds taken), not what was written: left out of
:func:`dataset_fingerprint`, so the same world generated on two machines has one fingerprint."""


def dataset_fingerprint(root: str | Path) -> str:
    """sha256 identifying a canonical dataset's content: of its ``manifest.json`` as canonical JSON (sorted
    keys, the legacy header spelling normalised), without :data:`VOLATILE_METADATA_KEYS`. Changes whenever the dataset is rewritten differently;
    the same demo world (config, seed, generator version) gives the same fingerprint wherever it is generated.
    Results bundles and trained models record it; the target cache is keyed by it.

    Raises:
        DataFormatError: ``root`` holds no manifest, or one that is not JSON.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise DataFormatError(f"not a canonical dataset: missing {path}")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path} is not JSON: {exc}") from exc
    if isinstance(manifest, dict):
        # manifests written before the versioned-config helper spell the header "format" / "format_version"
        # (read_manifest reads both): the same content gets one fingerprint whichever spelling it was written in
        for legacy, key in (("format", CLASS_KEY), ("format_version", VERSION_KEY)):
            if legacy in manifest and key not in manifest:
                manifest[key] = manifest.pop(legacy)
        if isinstance(manifest.get("metadata"), dict):
            manifest = {**manifest, "metadata": {k: v for k, v in manifest["metadata"].items()
                                                 if k not in VOLATILE_METADATA_KEYS}}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass
class SubjectData:
    """One subject's trials, read lazily from ``<subject>.h5``.

    Attributes:
        name: subject name (e.g. ``"subj01"``).
        path: the HDF5 file.
        n_voxels: V.
        image_index: (T,) int64 rows of the dataset's images.
        split: (T,) uint8, 0 train / 1 test.
        repetition: (T,) int16.
        session: (T,) int16 (-1 when unknown).
    """

    name: str
    path: Path
    n_voxels: int
    image_index: np.ndarray
    split: np.ndarray
    repetition: np.ndarray
    session: np.ndarray
    _file: h5py.File | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, name: str, n_voxels: int) -> SubjectData:
        if not path.is_file():
            raise DataFormatError(f"subject {name}: file missing: {path}")
        try:
            with h5py.File(path, "r") as f:
                betas_shape = f["betas"].shape
                cols = {k: h5_read(f[k], slice(None), path) for k in ("image_index", "split", "repetition", "session")}
        except (OSError, KeyError) as exc:
            raise DataFormatError(f"subject {name}: corrupt file {path}: {exc}") from exc
        if betas_shape[1] != n_voxels:
            raise DataFormatError(f"subject {name}: {path} has {betas_shape[1]} voxels, manifest says {n_voxels}")
        return cls(name=name, path=path, n_voxels=n_voxels, **cols)

    # lazy file handle: reopened in each process (DataLoader workers fork)
    def _betas(self) -> h5py.Dataset:
        if self._file is None or not self._file.id.valid:
            self._file = h5py.File(self.path, "r")
        return self._file["betas"]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def close(self) -> None:
        if self._file is not None and self._file.id.valid:
            self._file.close()
        self._file = None

    @property
    def n_trials(self) -> int:
        return int(self.image_index.shape[0])

    def trials(self, split: Literal["train", "test"]) -> np.ndarray:
        """Indices (into the trial axis) of this split's trials, in file order."""
        return np.flatnonzero(self.split == _SPLIT_CODES[split])

    def images(self, split: Literal["train", "test"]) -> np.ndarray:
        """Sorted unique image rows shown in this split."""
        return np.unique(self.image_index[self.trials(split)])

    def betas(self, trials: np.ndarray | slice | int) -> np.ndarray:
        """Read betas for the given trial indices as float32: (len(trials), V) or (V,) for an int."""
        ds = self._betas()
        if isinstance(trials, (int, np.integer)):
            return h5_read(ds, int(trials), self.path).astype(np.float32)
        if isinstance(trials, slice):
            return h5_read(ds, trials, self.path).astype(np.float32)
        trials = np.asarray(trials, dtype=np.int64)
        if trials.size == 0:
            return np.zeros((0, self.n_voxels), np.float32)
        order = np.argsort(trials, kind="stable")
        sorted_idx = trials[order]
        unique, inverse = np.unique(sorted_idx, return_inverse=True)
        block = h5_read(ds, unique, self.path).astype(np.float32)  # h5py needs increasing indices
        out = np.empty((trials.size, self.n_voxels), np.float32)
        out[order] = block[inverse]
        return out

    def averaged(self, split: Literal["train", "test"] = "test") -> tuple[np.ndarray, np.ndarray]:
        """Betas averaged over repetitions of each image.

        Returns:
            betas: (n_images, V) float32, one row per unique image of the split (sorted by image row).
            image_index: (n_images,) int64 image rows.
        """
        trials = self.trials(split)
        idx = self.image_index[trials]
        images, inverse = np.unique(idx, return_inverse=True)
        sums = np.zeros((images.size, self.n_voxels), np.float64)
        counts = np.bincount(inverse, minlength=images.size).astype(np.float64)
        chunk = 1024
        for start in range(0, trials.size, chunk):
            sel = trials[start : start + chunk]
            np.add.at(sums, inverse[start : start + chunk], self.betas(sel))
        return (sums / counts[:, None]).astype(np.float32), images


class CanonicalDataset:
    """A dataset folder in the canonical format, opened for reading.

    Attributes:
        root: the folder.
        manifest: the parsed manifest.
        n_images: N.
        image_size: (H, W).
        image_ids: (N,) int64 source ids.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        images_path = self.root / IMAGES_NAME
        if not images_path.is_file():
            raise DataFormatError(f"images file missing: {images_path}")
        try:
            with h5py.File(images_path, "r") as f:
                shape = f["images"].shape
                self.image_ids: np.ndarray = h5_read(f["image_ids"], slice(None), images_path)
                self._captions: list[str] | None = (
                    [c.decode() if isinstance(c, bytes) else str(c) for c in h5_read(f["captions"], slice(None), images_path)]
                    if "captions" in f else None
                )
        except (OSError, KeyError) as exc:
            raise DataFormatError(f"corrupt images file {images_path}: {exc}") from exc
        if shape[0] != self.manifest["n_images"]:
            raise DataFormatError(f"{images_path} has {shape[0]} images, manifest says {self.manifest['n_images']}")
        self.n_images = int(shape[0])
        self.image_size = (int(shape[1]), int(shape[2]))
        self._images_file: h5py.File | None = None
        self._subjects: dict[str, SubjectData] = {}

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def world(self) -> str:
        return str(self.manifest["world"])

    @property
    def subjects(self) -> list[str]:
        return sorted(self.manifest["subjects"])

    @property
    def captions(self) -> list[str] | None:
        return self._captions

    def subject(self, name: str) -> SubjectData:
        """Open a subject (cached). Unknown names raise a KeyError listing the available subjects."""
        if name not in self.manifest["subjects"]:
            raise KeyError(f"subject {name!r} not in dataset {self.root} (available: {', '.join(self.subjects)})")
        if name not in self._subjects:
            meta = self.manifest["subjects"][name]
            self._subjects[name] = SubjectData.open(self.root / meta["file"], name, int(meta["n_voxels"]))
        return self._subjects[name]

    def _images_ds(self) -> h5py.Dataset:
        if self._images_file is None or not self._images_file.id.valid:
            self._images_file = h5py.File(self.root / IMAGES_NAME, "r")
        return self._images_file["images"]

    def images(self, index: np.ndarray | int | slice) -> np.ndarray:
        """Read images as uint8: (n, H, W, 3), or (H, W, 3) for an int index."""
        ds = self._images_ds()
        if isinstance(index, (int, np.integer)):
            if not 0 <= int(index) < self.n_images:
                raise IndexError(f"image index {index} out of range for {self.n_images} images")
            return h5_read(ds, int(index), self.root / IMAGES_NAME)
        if isinstance(index, slice):
            return h5_read(ds, index, self.root / IMAGES_NAME)
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n_images):
            raise IndexError(f"image indices out of range for {self.n_images} images")
        unique, inverse = np.unique(index, return_inverse=True)
        return h5_read(ds, unique, self.root / IMAGES_NAME)[inverse] if unique.size else np.zeros((0, *self.image_size, 3), np.uint8)

    def iter_images(self, batch_size: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, images (b, H, W, 3))`` over all images, in order."""
        for start in range(0, self.n_images, batch_size):
            yield start, self.images(slice(start, min(start + batch_size, self.n_images)))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images_file"] = None
        return state

    def close(self) -> None:
        if self._images_file is not None and self._images_file.id.valid:
            self._images_file.close()
        self._images_file = None
        for s in self._subjects.values():
            s.close()

    def summary(self) -> dict[str, Any]:
        """Compact description (subjects, voxels, trials, images) for CLIs and docs."""
        return {
            "name": self.name,
            "world": self.world,
            "n_images": self.n_images,
            "image_size": list(self.image_size),
            "subjects": {k: dict(v) for k, v in self.manifest["subjects"].items()},
        }

    def __repr__(self) -> str:
        return f"CanonicalDataset({str(self.root)!r}, world={self.world!r}, images={self.n_images}, subjects={self.subjects})"


def open_dataset(root: str | Path) -> CanonicalDataset:
    """Open a canonical dataset folder (see module docstring)."""
    return CanonicalDataset(root)
