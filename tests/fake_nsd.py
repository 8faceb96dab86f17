"""Small fake NSD shards in the exact layout of MindEye's public release (``webdataset_avg_split``).

Used by ``tests/test_nsd.py`` and ``benchmarks/bench_nsd_convert.py``. The layout written under ``root``::

    webdataset_avg_split/
      train/train_subj0X_{0..17}.tar     training images (samples spread over the 18 shards)
      val/val_subj0X_0.tar               MindEye's validation images (part of our train split)
      test/test_subj0X_{0..1}.tar        shared test images (same COCO ids for every subject)
      metadata_subj0X.json               {"totals": {"train": .., "val": .., "test": ..}}

Each tar sample is one unique image, with members ``<key>.<ext>`` in this order::

    <key>.jpg                  RGB JPEG (image_size x image_size)
    <key>.nsdgeneral.npy       (3, n_vox) float16, one row per repetition (padded rows, see below)
    <key>.trial.npy            (3,) int64 trial numbers in the subject's 0-based trial sequence
    <key>.coco73k.npy          (1,) int64 index in NSD's 73k image set
    <key>.num_uniques.npy      (1,) int64 number of distinct (real) repetitions
    <key>.wholebrain_3d.npy    small float16 volume (the real one is large; the converter skips it)

Images seen fewer than 3 times are padded to 3 rows: ``pad="duplicate"`` repeats the first row (and its
trial number), ``pad="nan"`` writes all-NaN rows (trial -1). Which one the real release uses is not
documented; the converter handles both (see :mod:`mindeye_core.data.nsd`).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

N_TRAIN_SHARDS = 18
N_VAL_SHARDS = 1
N_TEST_SHARDS = 2
TINY_VOXELS = {1: 40, 2: 36, 5: 33, 7: 31}


@dataclass
class FakeSample:
    """What went into one tar sample (for exact comparisons in tests)."""

    key: str
    shard: str
    split: str  # "train", "val" or "test" (the shard folder)
    coco: int
    betas: np.ndarray  # (3, V) as written (padded)
    n_real: int  # distinct repetitions (= num_uniques)
    trial: np.ndarray  # (3,) as written
    jpg: bytes
    image: np.ndarray  # (H, W, 3) uint8, the JPEG decoded by PIL

    @property
    def real_betas(self) -> np.ndarray:
        return self.betas[: self.n_real]

    @property
    def real_trials(self) -> np.ndarray:
        return self.trial[: self.n_real]


@dataclass
class FakeNSD:
    root: Path
    subjects: tuple[int, ...]
    n_voxels: dict[int, int]
    samples: dict[int, list[FakeSample]] = field(default_factory=dict)

    def shard_path(self, subject: int, split: str, index: int) -> Path:
        return self.root / "webdataset_avg_split" / split / f"{split}_subj{subject:02d}_{index}.tar"


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _jpeg(rng: np.random.Generator, size: int) -> tuple[bytes, np.ndarray]:
    # smooth random image (compresses like a photo, decodes deterministically)
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return data, decoded


def write_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> None:
    """Write ``(name, payload)`` members to an uncompressed tar, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(payload))


def sample_members(s: FakeSample, wholebrain: bool = True) -> list[tuple[str, bytes]]:
    members = [
        (f"{s.key}.jpg", s.jpg),
        (f"{s.key}.nsdgeneral.npy", _npy(s.betas)),
        (f"{s.key}.trial.npy", _npy(s.trial)),
        (f"{s.key}.coco73k.npy", _npy(np.array([s.coco], np.int64))),
        (f"{s.key}.num_uniques.npy", _npy(np.array([s.n_real], np.int64))),
    ]
    if wholebrain:
        members.append((f"{s.key}.wholebrain_3d.npy", _npy(np.zeros((3, 4, 5, 6), np.float16))))
    return members


def make_fake_nsd(
    root: str | Path,
    subjects: Sequence[int] = (1,),
    *,
    n_train: int = 6,
    n_val: int = 2,
    n_test: int = 4,
    n_vox: int | dict[int, int] | None = None,
    train_shards: int = N_TRAIN_SHARDS,
    test_shards: int = N_TEST_SHARDS,
    image_size: int = 32,
    missing_fraction: float = 0.25,
    pad: Literal["duplicate", "nan"] = "duplicate",
    betas_dtype: type = np.float16,
    seed: int = 0,
    wholebrain: bool = True,
    metadata: bool = True,
) -> FakeNSD:
    """Write fake shards under ``root`` (the folder that holds ``webdataset_avg_split/``).

    Args:
        subjects: NSD subject numbers.
        n_train, n_val, n_test: samples (unique images) per subject in the train, val and test shards.
        n_vox: voxels per subject: an int for all, a dict, or None for tiny per-subject defaults
            (:data:`TINY_VOXELS`). Pass ``mindeye_core.data.nsd.NSD_VOXELS`` for real sizes.
        train_shards, test_shards: shard counts (18 and 2 in the release).
        image_size: side of the square JPEGs (256 in the release).
        missing_fraction: fraction of samples with only 1 or 2 real repetitions.
        pad: how the missing repetitions are padded ("duplicate" or "nan").
        seed: everything is deterministic given the seed.

    Returns:
        A :class:`FakeNSD` listing every sample written, per subject, in shard order.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    if n_vox is None:
        vox = {s: TINY_VOXELS.get(s, 30) for s in subjects}
    elif isinstance(n_vox, int):
        vox = {s: n_vox for s in subjects}
    else:
        vox = {s: int(n_vox[s]) for s in subjects}
    fake = FakeNSD(root=root, subjects=tuple(subjects), n_voxels=vox)
    # test images shared by all subjects (COCO ids 0..n_test-1, identical JPEGs); train/val images unique
    test_images = [_jpeg(rng, image_size) for _ in range(n_test)]
    next_coco = n_test
    for subject in subjects:
        samples: list[FakeSample] = []
        trial_pool = rng.permutation(27750)
        n_used_trials = 0
        counter = 0
        layout = [("train", n_train, train_shards), ("val", n_val, N_VAL_SHARDS), ("test", n_test, test_shards)]
        for split, n, n_shards in layout:
            per_shard = np.array_split(np.arange(n), n_shards)
            for shard_index, members_idx in enumerate(per_shard):
                shard = f"{split}/{split}_subj{subject:02d}_{shard_index}.tar"
                shard_samples = []
                for i in members_idx:
                    if split == "test":
                        coco = int(i)
                        jpg, image = test_images[int(i)]
                    else:
                        coco = next_coco
                        next_coco += 1
                        jpg, image = _jpeg(rng, image_size)
                    n_real = int(rng.integers(1, 3)) if rng.random() < missing_fraction else 3
                    betas = rng.standard_normal((3, vox[subject])).astype(betas_dtype)
                    trial = np.sort(trial_pool[n_used_trials : n_used_trials + 3]).astype(np.int64)
                    n_used_trials += 3
                    if n_real < 3:
                        if pad == "duplicate":
                            betas[n_real:] = betas[0]
                            trial[n_real:] = trial[0]
                        else:
                            betas[n_real:] = np.nan
                            trial[n_real:] = -1
                    key = f"sample{counter:09d}"
                    counter += 1
                    s = FakeSample(key, shard, split, coco, betas, n_real, trial, jpg, image)
                    shard_samples.append(s)
                members = [m for s in shard_samples for m in sample_members(s, wholebrain)]
                write_tar(root / "webdataset_avg_split" / shard, members)
                samples.extend(shard_samples)
        fake.samples[subject] = samples
        if metadata:
            meta = {"totals": {"train": n_train, "val": n_val, "test": n_test}}
            (root / "webdataset_avg_split" / f"metadata_subj{subject:02d}.json").write_text(json.dumps(meta))
    return fake
