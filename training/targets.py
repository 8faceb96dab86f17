"""Target embeddings computed once per (dataset, encoder) and cached under ``$MINDEYE_CACHE/targets``.

A cache is one ``.npy`` array over *all* image rows of the dataset, ``(n_images, *target_shape)``
float16, plus ``<name>.json`` holding the keys it was computed for (dataset name and fingerprint,
:func:`mindeye_core.data.format.dataset_fingerprint`,
encoder name, target shape, encoder weight hash) and a ``done`` mask of the rows filled so far. Rows
are encoded on demand in chunks (resumable: an interrupted encoding keeps the rows finished), so a
subject's run only pays for its own images. A cache whose recorded keys disagree with the encoder or
dataset at hand is refused (:class:`~mindeye_core.errors.CheckpointError` naming both sides), never
silently reused.

    cache = TargetCache.for_encoder(dataset, encoder)
    targets = cache.get(rows)               # (len(rows), *target_shape) float32
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye_core.data.format import dataset_fingerprint  # noqa: F401  (re-exported: one definition)
from mindeye_core.errors import CheckpointError, DataFormatError
from mindeye_core.paths import cache_dir
from mindeye_core.retrieval.embedders import weight_hash  # noqa: F401  (re-exported: one definition)

__all__ = ["TargetCache", "dataset_fingerprint", "weight_hash"]


class TargetCache:
    """Lazily filled ``(n_images, *target_shape)`` cache of one encoder on one dataset."""

    def __init__(self, path: Path, *, key: dict[str, Any], n_images: int, target_shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_suffix(".json")
        self.done_path = self.path.with_suffix(".done.npy")
        self.key = dict(key)
        self.n_images = int(n_images)
        self.target_shape = tuple(int(s) for s in target_shape)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.meta_path.is_file():
            saved = json.loads(self.meta_path.read_text())
            clash = {k: (saved.get(k), v) for k, v in self.key.items() if saved.get(k) != v}
            if clash:
                detail = "; ".join(f"{k}: cache has {a!r}, this run has {b!r}" for k, (a, b) in clash.items())
                raise CheckpointError(f"target cache {self.path} was computed for another encoder or dataset ({detail}); "
                                      "delete it or point MINDEYE_CACHE elsewhere")
        if not self.path.is_file() or not self.done_path.is_file():
            np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=(self.n_images, *self.target_shape)).flush()
            np.save(self.done_path, np.zeros(self.n_images, dtype=bool))
            self.meta_path.write_text(json.dumps(self.key, indent=2) + "\n")
        self._array = np.load(self.path, mmap_mode="r+")
        if self._array.shape != (self.n_images, *self.target_shape):
            raise CheckpointError(f"target cache {self.path} has shape {self._array.shape}, expected "
                                  f"{(self.n_images, *self.target_shape)}")
        self.done = np.load(self.done_path)

    @classmethod
    def for_encoder(cls, dataset: Any, encoder: Any, *, root: str | Path | None = None) -> "TargetCache":
        """The cache of ``encoder`` (an :class:`~mindeye_core.encoders.ImageEncoder`) on ``dataset``
        (a :class:`~mindeye_core.data.format.CanonicalDataset`), under ``root`` or ``$MINDEYE_CACHE/targets``."""
        fp = dataset_fingerprint(dataset.root)
        wh = weight_hash(encoder)
        key = {"dataset": dataset.name, "dataset_manifest_sha256": fp, "encoder": encoder.name,
               "encoder_weights_sha256": wh, "target_shape": list(encoder.target_shape)}
        base = Path(root) if root is not None else cache_dir() / "targets"
        path = base / f"{dataset.name}-{fp[:12]}" / f"{encoder.name}-{wh[:12]}.npy"
        cache = cls(path, key=key, n_images=dataset.n_images,
                    target_shape=tuple(encoder.target_shape))
        cache._dataset = dataset
        cache._encoder = encoder
        return cache

    def missing(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return np.unique(rows[~self.done[rows]])

    def fill(self, rows: np.ndarray, *, batch_size: int = 128, progress: bool = True) -> None:
        """Encode the not yet cached ``rows`` (chunks of ``batch_size``; the mask is saved after each)."""
        from tqdm.auto import tqdm

        todo = self.missing(rows)
        if todo.size == 0:
            return
        enc = self._encoder
        for start in tqdm(range(0, todo.size, batch_size), desc=f"targets {enc.name}", disable=not progress,
                          mininterval=2.0):
            sel = todo[start:start + batch_size]
            imgs = torch.from_numpy(np.asarray(self._dataset.images(sel))).permute(0, 3, 1, 2).float().div_(255.0)
            with torch.no_grad():
                out = enc.encode(imgs).float().cpu().numpy()
            if not np.isfinite(out).all():
                raise DataFormatError(f"encoder {enc.name} produced NaN/inf targets for image rows {sel[:5].tolist()}...")
            self._array[sel] = out.astype(np.float16)
            self._array.flush()
            self.done[sel] = True
            np.save(self.done_path, self.done)

    def get(self, rows: np.ndarray, *, progress: bool = True) -> np.ndarray:
        """``(len(rows), *target_shape)`` float32 targets of dataset image ``rows`` (encoding what is missing)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.fill(rows, progress=progress)
        return np.asarray(self._array[rows], dtype=np.float32)
