"""The results bundle: everything the app and the tables read about one evaluated model.

A bundle is a folder::

    <root>/
      manifest.json      written LAST (its presence means "complete"); versioned
      <subject>.h5       one per subject, N test samples each:
        /image_index       int64 (N,)            row of the dataset's images.h5 shown in sample i
        /ground_truth      uint8 (N, H, W, 3)    the seen images
        /blurry            uint8 (N, H, W, 3)    low-level reconstructions (optional)
        /finals            uint8 (S, N, H, W, 3) final reconstructions, one per img2img strength
        /brain_embeddings  float32 (N, D)        e.g. projector outputs (retrieval space), flattened
        /image_embeddings  float32 (N, D)        CLIP embeddings of the ground truths, same space
        /retrieval/brain_to_image_rank  int64 (N,)  rank of the correct image among all N (0 = top-1)
        /retrieval/image_to_brain_rank  int64 (N,)
        /neighbours        int64 (N, K)          for brain sample i, the K most similar test images (rows)
        /neighbour_scores  float32 (N, K)        their cosine similarities, descending
        /umap              float32 (2, N, 2)     optional: [0] brain, [1] image embeddings in 2-D

``manifest.json``::

    {"format": "mindeye-results", "version": 1, "world": "demo", "dataset": "...",
     "strengths": [0.0, 0.15, ...],               # paper convention: 0 = high-level only, 1 = blurry only
     "created": "2026-...Z", "metadata": {...},
     "subjects": {"subj01": {"file": "subj01.h5", "n_samples": N, "image_size": [H, W],
                             "embedding_dim": D, "n_neighbours": K, "has_blurry": true, "has_umap": false,
                             "metrics": {"strengths": {"0.15": {"pixcorr": ..., ...}},
                                         "retrieval": {...}, "unavailable": {...}, "protocol": {...}}}}}

Retrieval ranks and neighbours are computed by the writer from the embeddings (exact cosine, chunked).
:func:`open_results` validates the manifest and every array's shape and dtype and raises
:class:`~mindeye_core.errors.DataFormatError` naming the file and the problem.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch

from .errors import DataFormatError
from .staging import discard_partial, partial_path, publish_partial, start_partial
from .metrics.retrieval import full_set_ranks, normalise_embeddings

FORMAT_NAME = "mindeye-results"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def strength_key(strength: float) -> str:
    """Canonical string of an img2img strength, used as a JSON key (``0.15 -> "0.15"``)."""
    return f"{float(strength):g}"


def _subject_file(subject: str) -> str:
    if not subject or any(c in subject for c in "/\\ .") or subject.startswith("manifest"):
        raise DataFormatError(f"invalid subject name {subject!r}: use letters, digits, '-' or '_'")
    return f"{subject}.h5"


def _as_uint8_images(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 4 and a.shape[1] == 3 and a.shape[-1] != 3:
        a = a.transpose(0, 2, 3, 1)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise DataFormatError(f"{name}: expected images (N, H, W, 3), got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise DataFormatError(f"{name}: expected {n} images, got {a.shape[0]}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataFormatError(f"{name}: images must be uint8 or float in [0, 1], got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise DataFormatError(f"{name}: contains NaN/inf")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise DataFormatError(f"{name}: float images must lie in [0, 1], got [{a.min():.4g}, {a.max():.4g}]")
    return (a * 255.0 + 0.5).astype(np.uint8)


def _top_k(brain: torch.Tensor, image: torch.Tensor, k: int, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    idx, val = [], []
    for s in range(0, brain.shape[0], chunk_size):
        sims = brain[s : s + chunk_size] @ image.T
        v, i = torch.topk(sims, k, dim=1)
        idx.append(i.numpy())
        val.append(v.numpy())
    return np.concatenate(idx).astype(np.int64), np.concatenate(val).astype(np.float32)


# ---------------------------------------------------------------------------------------------- writer
class ResultsWriter:
    """Write a results bundle; everything lands in ``<root>.partial`` until :meth:`finalize`.

    Usage::

        with ResultsWriter(root, strengths=[0.0, 0.15, 1.0], world="demo", dataset="demo-v1") as w:
            w.add_subject("subj01", image_index=idx, ground_truth=gt, finals=finals,
                          brain_embeddings=b, image_embeddings=v, blurry=blurry)
            w.finalize()
    """

    def __init__(self, root: str | Path, *, strengths: Sequence[float], world: str, dataset: str = "", overwrite: bool = False) -> None:
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise DataFormatError(f"results bundle already exists: {self.root} (pass overwrite=True to replace it)")
        strengths = [float(s) for s in strengths]
        if not strengths or any(not (0.0 <= s <= 1.0) for s in strengths):
            raise DataFormatError(f"strengths must be a non-empty list of values in [0, 1], got {strengths}")
        if len({strength_key(s) for s in strengths}) != len(strengths):
            raise DataFormatError(f"duplicate strengths: {strengths}")
        self.strengths = strengths
        self.world = world
        self.dataset = dataset
        self.overwrite = overwrite
        self.subjects: dict[str, dict[str, Any]] = {}
        self.partial = start_partial(self.root)
        self._done = False

    def add_subject(
        self,
        subject: str,
        *,
        image_index: Any,
        ground_truth: Any,
        finals: Any,
        brain_embeddings: Any,
        image_embeddings: Any,
        blurry: Any = None,
        umap: Any = None,
        n_neighbours: int = 10,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one subject (shapes in the module docstring).

        ``finals`` is ``(S, N, H, W, 3)`` in the order of ``strengths``; images may be uint8 or float in
        [0, 1]. ``umap`` is ``(2, N, 2)`` or ``None``. Retrieval ranks and the ``n_neighbours`` nearest test
        images of each brain sample are computed here.
        """
        fname = _subject_file(subject)
        if subject in self.subjects:
            raise DataFormatError(f"subject {subject} added twice")
        index = np.asarray(image_index).reshape(-1)
        if not np.issubdtype(index.dtype, np.integer) or (index < 0).any():
            raise DataFormatError(f"{subject}: image_index must be non-negative integers")
        n = index.shape[0]
        if n < 2:
            raise DataFormatError(f"{subject}: need at least 2 test samples, got {n}")
        gt = _as_uint8_images(ground_truth, f"{subject} ground_truth", n)
        fin = finals.detach().cpu().numpy() if isinstance(finals, torch.Tensor) else np.asarray(finals)
        if fin.ndim != 5 or fin.shape[0] != len(self.strengths):
            raise DataFormatError(
                f"{subject} finals: expected (S={len(self.strengths)} strengths, N, H, W, 3), got shape {fin.shape}"
            )
        fin = np.stack([_as_uint8_images(f, f"{subject} finals[strength {s:g}]", n) for f, s in zip(fin, self.strengths)])
        blur = None if blurry is None else _as_uint8_images(blurry, f"{subject} blurry", n)
        b = normalise_embeddings(brain_embeddings, f"{subject} brain embeddings")
        v = normalise_embeddings(image_embeddings, f"{subject} image embeddings")
        if b.shape != v.shape or b.shape[0] != n:
            raise DataFormatError(
                f"{subject}: brain embeddings {tuple(b.shape)} and image embeddings {tuple(v.shape)} must both be ({n}, D)"
            )
        ranks = full_set_ranks(b, v)
        k = min(int(n_neighbours), n)
        nb_idx, nb_val = _top_k(b, v, k)
        if umap is not None:
            umap = np.asarray(umap, dtype=np.float32)
            if umap.shape != (2, n, 2) or not np.isfinite(umap).all():
                raise DataFormatError(f"{subject} umap: expected finite (2, {n}, 2), got shape {umap.shape}")
        raw_b = (brain_embeddings.detach().cpu().numpy() if isinstance(brain_embeddings, torch.Tensor) else np.asarray(brain_embeddings))
        raw_v = (image_embeddings.detach().cpu().numpy() if isinstance(image_embeddings, torch.Tensor) else np.asarray(image_embeddings))
        with h5py.File(self.partial / fname, "w") as h5:
            h5.create_dataset("image_index", data=index.astype(np.int64))
            img_chunks = (1, *gt.shape[1:])
            h5.create_dataset("ground_truth", data=gt, chunks=img_chunks, compression="gzip", compression_opts=4)
            h5.create_dataset("finals", data=fin, chunks=(1, *img_chunks), compression="gzip", compression_opts=4)
            if blur is not None:
                h5.create_dataset("blurry", data=blur, chunks=(1, *blur.shape[1:]), compression="gzip", compression_opts=4)
            h5.create_dataset("brain_embeddings", data=raw_b.reshape(n, -1).astype(np.float32))
            h5.create_dataset("image_embeddings", data=raw_v.reshape(n, -1).astype(np.float32))
            h5.create_dataset("retrieval/brain_to_image_rank", data=ranks["brain_to_image"])
            h5.create_dataset("retrieval/image_to_brain_rank", data=ranks["image_to_brain"])
            h5.create_dataset("neighbours", data=nb_idx)
            h5.create_dataset("neighbour_scores", data=nb_val)
            if umap is not None:
                h5.create_dataset("umap", data=umap)
        self.subjects[subject] = {
            "file": fname,
            "n_samples": int(n),
            "image_size": [int(gt.shape[1]), int(gt.shape[2])],
            "final_size": [int(fin.shape[2]), int(fin.shape[3])],
            "embedding_dim": int(b.shape[1]),
            "n_neighbours": int(k),
            "has_blurry": blur is not None,
            "has_umap": umap is not None,
            "metrics": dict(metrics or {}),
        }

    def finalize(self, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the manifest and move the bundle into place; returns its path."""
        if not self.subjects:
            raise DataFormatError("results bundle has no subjects")
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "world": self.world,
            "dataset": self.dataset,
            "strengths": self.strengths,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metadata": dict(metadata or {}),
            "subjects": self.subjects,
        }
        publish_partial(self.root, MANIFEST_NAME, json.dumps(_json_safe(manifest), indent=2) + "\n")
        self._done = True
        return self.root

    def abort(self) -> None:
        """Delete the partial folder."""
        discard_partial(self.root)
        self._done = True

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()


def _json_safe(x: Any) -> Any:
    """Convert numpy scalars/arrays; NaN/inf become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


# ---------------------------------------------------------------------------------------------- reader
@dataclass
class SubjectResults:
    """One subject of a bundle; arrays are read lazily from ``path``."""

    name: str
    path: Path
    info: dict[str, Any]
    strengths: list[float]

    def _read(self, key: str, index: Any = None) -> np.ndarray:
        with h5py.File(self.path, "r") as h5:
            if key not in h5:
                raise DataFormatError(f"{self.path}: has no {key!r}")
            ds = h5[key]
            return ds[()] if index is None else ds[index]

    @property
    def n_samples(self) -> int:
        return int(self.info["n_samples"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.info.get("metrics", {}))

    def image_index(self) -> np.ndarray:
        """``(N,)`` int64 dataset image rows."""
        return self._read("image_index")

    def ground_truth(self, index: Any = None) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 (or the rows selected by ``index``)."""
        return self._read("ground_truth", index)

    def blurry(self, index: Any = None) -> np.ndarray | None:
        """``(N, H, W, 3)`` uint8 or ``None`` when the bundle has no blurry images."""
        return self._read("blurry", index) if self.info.get("has_blurry") else None

    def strength_position(self, strength: float) -> int:
        keys = [strength_key(s) for s in self.strengths]
        key = strength_key(strength)
        if key not in keys:
            raise DataFormatError(f"strength {strength:g} not in this bundle's grid {self.strengths}")
        return keys.index(key)

    def finals(self, strength: float, index: Any = None) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 final reconstructions at ``strength``."""
        pos = self.strength_position(strength)
        with h5py.File(self.path, "r") as h5:
            ds = h5["finals"]
            return ds[pos] if index is None else ds[pos][index]

    def brain_embeddings(self) -> np.ndarray:
        return self._read("brain_embeddings")

    def image_embeddings(self) -> np.ndarray:
        return self._read("image_embeddings")

    def retrieval_ranks(self) -> dict[str, np.ndarray]:
        """``{"brain_to_image": (N,), "image_to_brain": (N,)}`` int64 full-set ranks (0 = correct top-1)."""
        return {d: self._read(f"retrieval/{d}_rank") for d in ("brain_to_image", "image_to_brain")}

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (N, K) int64, scores (N, K) float32)``: nearest test images of each brain sample."""
        return self._read("neighbours"), self._read("neighbour_scores")

    def umap(self) -> np.ndarray | None:
        """``(2, N, 2)`` float32 (brain, image) or ``None``."""
        return self._read("umap") if self.info.get("has_umap") else None


class ResultsBundle:
    """A validated results bundle (see module docstring). Build with :func:`open_results`."""

    def __init__(self, root: str | Path, *, validate_arrays: bool = True) -> None:
        self.root = Path(root)
        self.manifest = read_results_manifest(self.root)
        self.strengths: list[float] = [float(s) for s in self.manifest["strengths"]]
        if validate_arrays:
            for name in self.subjects:
                _validate_subject_file(self.root, name, self.manifest["subjects"][name], len(self.strengths))

    @property
    def world(self) -> str:
        return str(self.manifest.get("world", ""))

    @property
    def subjects(self) -> list[str]:
        return sorted(self.manifest["subjects"])

    def subject(self, name: str) -> SubjectResults:
        if name not in self.manifest["subjects"]:
            raise DataFormatError(f"{self.root}: no subject {name!r}; available: {self.subjects}")
        info = self.manifest["subjects"][name]
        return SubjectResults(name, self.root / info["file"], info, self.strengths)

    def set_metrics(self, subject: str, metrics: Mapping[str, Any]) -> None:
        """Replace the stored metrics of ``subject`` and rewrite the manifest atomically."""
        if subject not in self.manifest["subjects"]:
            raise DataFormatError(f"{self.root}: no subject {subject!r}")
        self.manifest["subjects"][subject]["metrics"] = _json_safe(dict(metrics))
        tmp = self.root / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(_json_safe(self.manifest), indent=2) + "\n")
        tmp.replace(self.root / MANIFEST_NAME)

    def __repr__(self) -> str:
        return f"ResultsBundle({str(self.root)!r}, world={self.world!r}, subjects={self.subjects}, strengths={self.strengths})"


def read_results_manifest(root: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a bundle (format, version, required keys)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        partial = partial_path(root)
        hint = f" ({partial} exists: the write was interrupted)" if partial.exists() else ""
        raise DataFormatError(f"not a results bundle: missing {path}{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"corrupt results manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataFormatError(f"{path}: not a {FORMAT_NAME!r} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DataFormatError(f"{path}: results format version {manifest.get('version')!r}, this code reads {FORMAT_VERSION}")
    for key in ("strengths", "subjects"):
        if key not in manifest:
            raise DataFormatError(f"{path}: missing key {key!r}")
    if not isinstance(manifest["subjects"], dict) or not manifest["subjects"]:
        raise DataFormatError(f"{path}: no subjects")
    for name, info in manifest["subjects"].items():
        for key in ("file", "n_samples", "embedding_dim"):
            if key not in info:
                raise DataFormatError(f"{path}: subject {name} lacks {key!r}")
    return manifest


def _validate_subject_file(root: Path, name: str, info: Mapping[str, Any], n_strengths: int) -> None:
    path = root / info["file"]
    if not path.is_file():
        raise DataFormatError(f"results bundle {root}: missing file {path} for subject {name}")
    n, d = int(info["n_samples"]), int(info["embedding_dim"])
    expected: dict[str, tuple[tuple[int | None, ...], type]] = {
        "image_index": ((n,), np.int64),
        "ground_truth": ((n, None, None, 3), np.uint8),
        "finals": ((n_strengths, n, None, None, 3), np.uint8),
        "brain_embeddings": ((n, d), np.float32),
        "image_embeddings": ((n, d), np.float32),
        "retrieval/brain_to_image_rank": ((n,), np.int64),
        "retrieval/image_to_brain_rank": ((n,), np.int64),
        "neighbours": ((n, None), np.int64),
        "neighbour_scores": ((n, None), np.float32),
    }
    if info.get("has_blurry"):
        expected["blurry"] = ((n, None, None, 3), np.uint8)
    if info.get("has_umap"):
        expected["umap"] = ((2, n, 2), np.float32)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataFormatError(f"corrupt results file {path}: {exc}") from exc
    with h5:
        for key, (shape, dtype) in expected.items():
            if key not in h5:
                raise DataFormatError(f"{path}: missing dataset {key!r}")
            ds = h5[key]
            ok = len(ds.shape) == len(shape) and all(s is None or s == t for s, t in zip(shape, ds.shape))
            if not ok:
                want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
                raise DataFormatError(f"{path}: {key} has shape {ds.shape}, expected {want}")
            if ds.dtype != dtype:
                raise DataFormatError(f"{path}: {key} has dtype {ds.dtype}, expected {np.dtype(dtype)}")


def open_results(root: str | Path, *, validate_arrays: bool = True) -> ResultsBundle:
    """Open and validate a results bundle (manifest plus every array's shape and dtype)."""
    return ResultsBundle(root, validate_arrays=validate_arrays)


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ResultsBundle",
    "ResultsWriter",
    "SubjectResults",
    "open_results",
    "read_results_manifest",
    "strength_key",
]
