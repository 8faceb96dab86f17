"""Natural Scenes Dataset import: download MindEye's public release and convert it, streaming.

Source
------
MindEye (Scotti et al., 2023) trained on a webdataset release of NSD hosted on the Hugging Face Hub, dataset
repo ``pscotti/naturalscenesdataset``, folder ``webdataset_avg_split/``. Per subject X in {1, 2, 5, 7}::

    webdataset_avg_split/train/train_subj0X_{0..17}.tar   8,559 training images
    webdataset_avg_split/val/val_subj0X_0.tar             300 images (MindEye's validation; our train split)
    webdataset_avg_split/test/test_subj0X_{0..1}.tar      982 test images (the shared images seen by all 4)
    webdataset_avg_split/metadata_subj0X.json             sample totals per split

Each tar sample is one unique image, with members named ``<key>.<ext>`` (webdataset convention: the key is
the file name up to its first dot):

- ``jpg``: the stimulus (256 x 256 RGB, as MindEye's loaders expect).
- ``nsdgeneral.npy``: (3, V) betas of the "nsdgeneral" visual-cortex mask, one row per repetition;
  V = 15,724 / 14,278 / 13,039 / 12,682 for subjects 1 / 2 / 5 / 7 (session-wise z-scored GLMsingle betas).
- ``trial.npy``: the trial numbers of those repetitions.
- ``coco73k.npy``: the image's index in NSD's 73k stimulus set.
- ``num_uniques.npy``: the number of distinct repetitions actually measured (1..3).
- ``wholebrain_3d.npy``: a large whole-brain volume; never read here.

Facts checked against MindEye's training code: the shard names and counts above, the keys, the voxel counts,
``num_train = 8559 + 300`` and ``num_val = 982``, and that MindEye trains on one row per step
(``voxel[:, train_i % 3]``) and tests on ``voxel.mean(axis=1)``. The paper reports 24,980 training and 2,770
test *trials* (not 3 x 8,859 = 26,577 and 3 x 982 = 2,946): NSD withheld its last sessions, so some images
were seen only once or twice, yet every sample holds 3 rows. Not verified here (no network): the dtype of
``nsdgeneral.npy`` (float16 is handled as well as float32), the exact meaning of ``trial.npy``, and how the
release pads the missing rows; the rules below are written to be safe for every plausible answer.

Missing repetitions (not documented by the release; handled explicitly)
------------------------------------------------------------------------
A row is dropped, and counted in the manifest's metadata, when it is all NaN, all zero, or bit-identical
to an earlier row of the same sample (a padding copy: two real fMRI measurements of ~15k voxels are never
identical). A row with *some* non-finite values is an error. If ``num_uniques.npy`` disagrees with the
number of rows kept, the sample is converted with the rows kept and the disagreement is counted in the
metadata (``num_uniques_mismatches``) and logged; a row is never silently duplicated or invented.
``repetitions="num_uniques"`` (``--repetitions num_uniques``) keeps the first ``num_uniques`` rows instead.
Each kept row becomes one trial with repetition index 0, 1, 2 (per image and subject, in row order).

Conversion
----------
Shards are read one at a time, member by member (``tarfile``, the whole-brain volumes are skipped without
reading them), into the canonical format (:mod:`mindeye_core.data.format`):

- images de-duplicated by COCO-73k id across shards and subjects (the test images are shared), stored as
  uint8 at their native size (256 x 256) unless ``image_size`` asks for a square resize (PIL bicubic);
  ``images.h5/image_ids`` holds the COCO-73k ids;
- one subject per NSD subject (``subj01``...), one row per kept repetition; split ``train`` for the train
  and val shards (8,859 images), ``test`` for the test shards (982 images; averaged over repetitions at
  load time by :meth:`SubjectData.averaged`, single trials available as in the paper's Table 8);
- session = trial // 750 when ``trial.npy`` holds one trial number per row, all in [0, 30000): this
  assumes 0-based trial numbers in the subject's trial sequence (NSD runs 750 trials per session),
  which the release does not document. The raw numbers are kept in the subject file as ``nsd_trial``
  (-1 where unknown), and ``nsd_split`` (0 train, 1 val, 2 test) records the source shard folder;
- betas stored as float16 when the shards hold float16, else float32.

Everything is written to ``<output>.partial`` and renamed only when complete (see :class:`DatasetWriter`);
any error deletes the partial folder.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..cli import existing_folder_arg, output_folder_arg, positive_int
from ..errors import DataFormatError, MindEyeError
from ..paths import data_dir
from .format import SPLIT_TEST, SPLIT_TRAIN, DatasetWriter

log = logging.getLogger(__name__)

NSD_REPO_ID = "pscotti/naturalscenesdataset"
"""Hugging Face dataset repo of MindEye's NSD release."""
NSD_FOLDER = "webdataset_avg_split"
NSD_SUBJECTS = (1, 2, 5, 7)
"""The four subjects who completed all sessions (the only ones in the release)."""
NSD_VOXELS = {1: 15724, 2: 14278, 5: 13039, 7: 12682}
"""Voxels in the nsdgeneral mask per subject."""
N_TRAIN_SHARDS = 18
N_VAL_SHARDS = 1
N_TEST_SHARDS = 2
NSD_N_IMAGES = 73000
"""Size of NSD's stimulus set: COCO-73k ids are in [0, 73000)."""
TRIALS_PER_SESSION = 750
NSD_MAX_TRIALS = 30000
EXPECTED_TRAIN_IMAGES = 8859
EXPECTED_TEST_IMAGES = 982
_SHARD_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_FLUSH_BYTES = 64 << 20
_IMAGE_BATCH = 64


# ------------------------------------------------------------------------------------------ layout
def subject_name(subject: int) -> str:
    """``1 -> "subj01"``."""
    return f"subj{int(subject):02d}"


def _check_subjects(subjects: Iterable[int]) -> tuple[int, ...]:
    out = tuple(int(s) for s in subjects)
    if not out:
        raise MindEyeError("no NSD subject given (choose among 1, 2, 5, 7)")
    bad = [s for s in out if s not in NSD_SUBJECTS]
    if bad:
        raise MindEyeError(f"NSD subject(s) {bad} not in MindEye's release (available: 1, 2, 5, 7)")
    if len(set(out)) != len(out):
        raise MindEyeError(f"duplicate NSD subjects in {list(out)}")
    return out


def shard_files(subject: int) -> list[tuple[str, str]]:
    """``(path relative to the raw folder, source split)`` of a subject's shards, in conversion order."""
    s = f"subj{int(subject):02d}"
    out = [(f"{NSD_FOLDER}/train/train_{s}_{i}.tar", "train") for i in range(N_TRAIN_SHARDS)]
    out += [(f"{NSD_FOLDER}/val/val_{s}_{i}.tar", "val") for i in range(N_VAL_SHARDS)]
    out += [(f"{NSD_FOLDER}/test/test_{s}_{i}.tar", "test") for i in range(N_TEST_SHARDS)]
    return out


def metadata_file(subject: int) -> str:
    """Path (relative to the raw folder) of a subject's ``metadata_subj0X.json``."""
    return f"{NSD_FOLDER}/metadata_subj{int(subject):02d}.json"


def allow_patterns(subjects: Sequence[int]) -> list[str]:
    """Exact file names to download for ``subjects`` (no wildcard: nothing else is fetched)."""
    out: list[str] = []
    for subject in _check_subjects(subjects):
        out += [path for path, _ in shard_files(subject)]
        out.append(metadata_file(subject))
    return out


def default_raw_dir() -> Path:
    """``data_dir()/nsd/raw``: where the release is downloaded."""
    return data_dir() / "nsd" / "raw"


def default_dataset_dir() -> Path:
    """``data_dir()/nsd/canonical``: the converted dataset."""
    return data_dir() / "nsd" / "canonical"


def check_raw(raw_dir: str | Path, subjects: Sequence[int]) -> None:
    """Raise :class:`DataFormatError` naming every missing shard of ``subjects`` under ``raw_dir``."""
    raw_dir = Path(raw_dir)
    missing = [p for p in allow_patterns(subjects) if p.endswith(".tar") and not (raw_dir / p).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataFormatError(
            f"missing NSD shard {raw_dir / missing[0]}"
            + (f" (also {', '.join(missing[1:3])}{more})" if len(missing) > 1 else "")
            + "; run `mindeye nsd download` (it resumes) or pass the folder holding webdataset_avg_split/"
        )


# ---------------------------------------------------------------------------------------- download
def download_nsd(
    subjects: Sequence[int],
    raw_dir: str | Path | None = None,
    *,
    max_workers: int = 8,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """Download the shards and metadata of ``subjects`` with ``huggingface_hub.snapshot_download``.

    Only the files of the requested subjects are fetched (exact ``allow_patterns``); hf shows progress
    bars and skips files already complete in ``raw_dir`` (re-running resumes). The tars also hold the
    large whole-brain volumes (which the conversion skips), so expect many GB per subject.

    Args:
        subjects: NSD subject numbers among 1, 2, 5, 7.
        raw_dir: local folder (default :func:`default_raw_dir`); files land in ``raw_dir/webdataset_avg_split``.
        max_workers: parallel downloads.
        revision: optional commit/branch of the dataset repo.
        token: optional Hugging Face token.

    Returns:
        ``raw_dir``, after checking that every shard is present.
    """
    import huggingface_hub  # imported lazily: heavy, and tests monkeypatch it

    raw_dir = Path(raw_dir) if raw_dir is not None else default_raw_dir()
    patterns = allow_patterns(subjects)
    raw_dir.mkdir(parents=True, exist_ok=True)
    huggingface_hub.snapshot_download(
        repo_id=NSD_REPO_ID,
        repo_type="dataset",
        revision=revision,
        allow_patterns=patterns,
        local_dir=raw_dir,
        max_workers=max_workers,
        token=token,
    )
    check_raw(raw_dir, subjects)
    return raw_dir


# ------------------------------------------------------------------------------------------ reading
@dataclass
class NSDSample:
    """One tar sample, members decoded lazily except the small arrays.

    Attributes:
        key: webdataset key.
        shard: the tar file.
        members: ``ext -> raw bytes`` (``wholebrain_3d.npy`` is never read).
    """

    key: str
    shard: Path
    members: dict[str, bytes] = field(default_factory=dict)

    def where(self) -> str:
        return f"sample {self.key!r} of shard {self.shard}"

    def require(self, ext: str) -> bytes:
        if ext not in self.members:
            raise DataFormatError(f"{self.where()} has no {ext} member (has: {', '.join(sorted(self.members))})")
        return self.members[ext]

    def array(self, ext: str) -> np.ndarray:
        try:
            return np.load(io.BytesIO(self.require(ext)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataFormatError(f"{self.where()}: corrupt {ext}: {exc}") from exc

    def optional_array(self, ext: str) -> np.ndarray | None:
        return self.array(ext) if ext in self.members else None

    def image(self) -> np.ndarray:
        """Decode the JPEG to uint8 (H, W, 3)."""
        try:
            with Image.open(io.BytesIO(self.require("jpg"))) as img:
                return np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataFormatError(f"{self.where()}: corrupt jpg: {exc}") from exc


_SKIP_EXTS = ("wholebrain_3d.npy",)


def _split_name(name: str) -> tuple[str, str]:
    """webdataset naming: key = path up to the first dot of the base name, ext = the rest."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return name, ""
    return (f"{head}/{stem}" if head else stem), ext


def iter_shard(path: str | Path) -> Iterator[NSDSample]:
    """Stream the samples of one tar shard (consecutive members sharing a key form a sample).

    Raises:
        DataFormatError: unreadable or truncated tar (named).
    """
    path = Path(path)
    current: NSDSample | None = None
    try:
        with tarfile.open(path, "r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = NSDSample(key=key, shard=path)
                if ext in _SKIP_EXTS or not ext:
                    continue
                f = tf.extractfile(member)
                if f is None:
                    raise DataFormatError(f"corrupt NSD shard {path}: member {member.name} unreadable")
                current.members[ext] = f.read()
            end = tf.offset
        _check_tar_end(path, end)
    except (tarfile.TarError, EOFError) as exc:
        raise DataFormatError(f"corrupt NSD shard {path}: {exc}") from exc
    if current is not None:
        yield current


def _check_tar_end(path: Path, offset: int) -> None:
    """A complete tar ends with two zero blocks; tarfile silently stops at a truncated header."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(1024)
    if len(tail) < 1024 or any(tail):
        raise DataFormatError(f"corrupt NSD shard {path}: truncated (no end-of-archive marker after byte {offset})")


@dataclass
class _RowStats:
    missing_rows: int = 0
    duplicate_rows: int = 0
    num_uniques_mismatches: int = 0


def sample_repetitions(
    sample: NSDSample,
    n_voxels: int,
    stats: _RowStats | None = None,
    *,
    repetitions: str = "distinct",
) -> tuple[np.ndarray, np.ndarray]:
    """The real repetitions of one sample.

    Args:
        sample: the tar sample.
        n_voxels: expected V for this subject.
        stats: counters updated in place.
        repetitions: ``"distinct"`` (default): drop rows that are all NaN, all zero, or bit-identical to
            an earlier row, and only *count* disagreements with ``num_uniques.npy``;
            ``"num_uniques"``: keep the first ``num_uniques`` rows (they must be finite).

    Returns:
        betas: (k, V) kept rows, source dtype, k in 1..3.
        trials: (k,) int64 NSD trial numbers (-1 where ``trial.npy`` does not give one per row).
    """
    if repetitions not in ("distinct", "num_uniques"):
        raise MindEyeError(f"repetitions must be 'distinct' or 'num_uniques', got {repetitions!r}")
    betas = sample.array("nsdgeneral.npy")
    if betas.ndim == 1:
        betas = betas[None]
    if betas.ndim != 2 or betas.dtype.kind != "f":
        raise DataFormatError(f"{sample.where()}: nsdgeneral.npy must be float (repetitions, voxels), got {betas.dtype} {betas.shape}")
    if betas.shape[1] != n_voxels:
        raise DataFormatError(
            f"{sample.where()}: expected {n_voxels} voxels, got {betas.shape[1]} "
            "(wrong subject's shard, or a different voxel mask?)"
        )
    trial = sample.optional_array("trial.npy")
    trials = np.full(betas.shape[0], -1, np.int64)
    if trial is not None and trial.size == betas.shape[0] and trial.dtype.kind in "iu":
        trials = trial.reshape(-1).astype(np.int64)
    nu_arr = sample.optional_array("num_uniques.npy")
    num_uniques = int(nu_arr.reshape(-1)[0]) if nu_arr is not None and nu_arr.size == 1 else None

    def check_finite(r: int) -> None:
        finite = np.isfinite(betas[r])
        if not finite.all():
            raise DataFormatError(
                f"{sample.where()}: repetition {r} has {int((~finite).sum())} NaN/inf values out of {finite.size}"
            )

    if repetitions == "num_uniques":
        if num_uniques is None or not 1 <= num_uniques <= betas.shape[0]:
            raise DataFormatError(
                f"{sample.where()}: num_uniques.npy missing or out of range 1..{betas.shape[0]} ({num_uniques})"
            )
        for r in range(num_uniques):
            check_finite(r)
        if stats is not None:
            stats.missing_rows += betas.shape[0] - num_uniques
        return betas[:num_uniques], trials[:num_uniques]

    keep: list[int] = []
    for r in range(betas.shape[0]):
        row = betas[r]
        if not np.isfinite(row).any() or not row.any():  # all NaN/inf, or all zero: not measured
            if stats is not None:
                stats.missing_rows += 1
            continue
        check_finite(r)
        if any(np.array_equal(row, betas[k]) for k in keep):
            if stats is not None:
                stats.duplicate_rows += 1
            continue
        keep.append(r)
    if not keep:
        raise DataFormatError(f"{sample.where()}: no valid repetition (every row is NaN or zero)")
    if num_uniques is not None and num_uniques != len(keep):
        log.debug("%s: num_uniques=%d but %d distinct repetitions found; keeping them", sample.where(), num_uniques, len(keep))
        if stats is not None:
            stats.num_uniques_mismatches += 1
    return betas[keep], trials[keep]


def sample_coco(sample: NSDSample) -> int:
    """The sample's COCO-73k id, validated to lie in [0, 73000)."""
    arr = sample.array("coco73k.npy").reshape(-1)
    if arr.size < 1 or arr.dtype.kind not in "iuf":
        raise DataFormatError(f"{sample.where()}: coco73k.npy must hold one integer, got {arr.dtype} {arr.shape}")
    if arr.size > 1 and not (arr == arr[0]).all():
        raise DataFormatError(f"{sample.where()}: coco73k.npy holds several different ids {arr.tolist()}")
    value = arr[0]
    if arr.dtype.kind == "f" and (not np.isfinite(value) or value != np.round(value)):
        raise DataFormatError(f"{sample.where()}: coco73k id {value} is not an integer")
    coco = int(value)
    if not 0 <= coco < NSD_N_IMAGES:
        raise DataFormatError(f"{sample.where()}: image index (coco73k) {coco} out of range [0, {NSD_N_IMAGES})")
    return coco


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def _read_totals(raw_dir: Path, subject: int) -> dict[str, int]:
    path = raw_dir / metadata_file(subject)
    if not path.is_file():
        log.warning("%s missing: sample counts not cross-checked", path)
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"corrupt NSD metadata {path}: {exc}") from exc
    totals = meta.get("totals") if isinstance(meta, dict) else None
    if not isinstance(totals, dict):
        return {}
    return {k: int(v) for k, v in totals.items() if k in _SHARD_SPLIT_CODE and isinstance(v, (int, float))}


def _estimate_bytes(raw_dir: Path, subjects: Sequence[int], voxels: dict[int, int], dtype: np.dtype,
                    image_size: int | None) -> int:
    """A lower bound of the converted dataset's size from the metadata totals (0 when they are missing): three
    rows of betas per sample and the images at half their raw size (lzf-compressed)."""
    side = image_size or 256
    total = 0
    n_images = 0
    for subject in subjects:
        totals = _read_totals(raw_dir, subject)
        samples = sum(totals.values())
        total += 3 * samples * voxels[subject] * dtype.itemsize
        n_images = max(n_images, samples)
    return int(total + n_images * side * side * 3 // 2)


def _peek_betas_dtype(paths: Sequence[Path]) -> np.dtype:
    for path in paths:
        for sample in iter_shard(path):
            if "nsdgeneral.npy" in sample.members:
                return sample.array("nsdgeneral.npy").dtype
    raise DataFormatError(f"no sample with nsdgeneral.npy in {len(paths)} NSD shards (first: {paths[0] if paths else None})")


# --------------------------------------------------------------------------------------- conversion
class _TrialBuffer:
    """Buffers one subject's trials and flushes them to the writer in ~64 MB blocks."""

    def __init__(self, appender: Any) -> None:
        self.appender = appender
        self.rows: list[np.ndarray] = []
        self.cols: dict[str, list[np.ndarray]] = {"image_index": [], "split": [], "repetition": [], "session": []}
        self.nbytes = 0

    def add(self, betas: np.ndarray, image_index: int, split: int, repetition: np.ndarray, session: np.ndarray) -> None:
        k = betas.shape[0]
        self.rows.append(betas)
        self.cols["image_index"].append(np.full(k, image_index, np.int64))
        self.cols["split"].append(np.full(k, split, np.uint8))
        self.cols["repetition"].append(repetition)
        self.cols["session"].append(session)
        self.nbytes += betas.nbytes
        if self.nbytes >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.appender.append(np.concatenate(self.rows), **{k: np.concatenate(v) for k, v in self.cols.items()})
        self.rows = []
        self.cols = {k: [] for k in self.cols}
        self.nbytes = 0


def convert_nsd(
    raw_dir: str | Path | None = None,
    output: str | Path | None = None,
    subjects: Sequence[int] = (1,),
    *,
    overwrite: bool = False,
    image_size: int | None = None,
    betas_dtype: str | None = None,
    n_voxels: dict[int, int] | None = None,
    check_totals: bool = True,
    repetitions: str = "distinct",
    progress: bool = True,
    name: str = "nsd",
) -> Path:
    """Convert downloaded shards into one canonical dataset (streaming, shard by shard).

    Args:
        raw_dir: folder holding ``webdataset_avg_split/`` (default :func:`default_raw_dir`).
        output: dataset folder to create (default :func:`default_dataset_dir`).
        subjects: NSD subjects to include (they share the images).
        overwrite: replace an existing dataset (only once the new one is complete).
        image_size: resize images to ``image_size`` x ``image_size`` (default: keep the native 256 x 256).
        betas_dtype: ``"float16"`` or ``"float32"``; default: float16 if the shards hold float16.
        n_voxels: override the expected voxel count per subject (tests use tiny fakes).
        check_totals: compare sample counts with ``metadata_subj0X.json`` totals when present.
        repetitions: which rows are real repetitions: ``"distinct"`` (default) or ``"num_uniques"``
            (see :func:`sample_repetitions`).
        progress: show a tqdm bar over shards.
        name: dataset name stored in the manifest.

    Returns:
        The dataset folder.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        DestinationError: ``output`` holds something other than a dataset, or is the source folder or above it.
        DestinationLockedError: another conversion is writing ``output``.
        StorageError: not enough free space (checked before the first shard), a full disk or a read-only output.
        DataFormatError: missing/corrupt shard, wrong voxel count, NaN/inf betas, image index out of
            range, inconsistent image sizes, sample counts that disagree with the metadata (all named).
    """
    from tqdm.auto import tqdm

    subjects = _check_subjects(subjects)
    raw_dir = Path(raw_dir) if raw_dir is not None else default_raw_dir()
    output = Path(output) if output is not None else default_dataset_dir()
    if repetitions not in ("distinct", "num_uniques"):
        raise MindEyeError(f"repetitions must be 'distinct' or 'num_uniques', got {repetitions!r}")
    if image_size is not None and image_size < 8:
        raise MindEyeError(f"image_size must be >= 8, got {image_size}")
    check_raw(raw_dir, subjects)
    expected_vox = dict(NSD_VOXELS)
    if n_voxels:
        expected_vox.update({int(k): int(v) for k, v in n_voxels.items()})
    jobs = [(s, raw_dir / rel, split) for s in subjects for rel, split in shard_files(s)]
    if betas_dtype is None:
        src = _peek_betas_dtype([p for _, p, _ in jobs])
        dtype = np.dtype(np.float16) if src == np.float16 else np.dtype(np.float32)
    else:
        dtype = np.dtype(betas_dtype)
        if dtype not in (np.float16, np.float32):
            raise MindEyeError(f"betas_dtype must be float16 or float32, got {betas_dtype}")

    coco_to_row: dict[int, int] = {}
    pending_images: list[np.ndarray] = []
    pending_ids: list[int] = []
    image_shape: tuple[int, ...] | None = None
    source_image_size: list[int] | None = None
    subject_meta: dict[str, Any] = {}

    estimate = _estimate_bytes(raw_dir, subjects, expected_vox, dtype, image_size) if check_totals else 0
    # the writer checks the destination (never the source nor above it; --overwrite only replaces a dataset),
    # takes its lock and checks the free space before the first shard is read
    with DatasetWriter(output, name=name, world="nsd", overwrite=overwrite, betas_dtype=dtype, sources=[raw_dir],
                       required_bytes=estimate) as writer:

        def flush_images() -> None:
            if pending_images:
                writer.append_images(np.stack(pending_images), image_ids=np.asarray(pending_ids, np.int64))
                pending_images.clear()
                pending_ids.clear()

        bar = tqdm(total=len(jobs), desc="NSD shards", unit="shard", disable=not progress)
        for subject in subjects:
            sname = subject_name(subject)
            v = expected_vox[subject]
            appender = writer.subject(sname, n_voxels=v)
            buf = _TrialBuffer(appender)
            stats = _RowStats()
            counts = {"train": 0, "val": 0, "test": 0}
            rep_count: dict[int, int] = {}
            image_split: dict[int, str] = {}
            nsd_trial: list[np.ndarray] = []
            nsd_split: list[np.ndarray] = []
            for job_subject, path, src_split in jobs:
                if job_subject != subject:
                    continue
                bar.set_postfix_str(path.name)
                for sample in iter_shard(path):
                    coco = sample_coco(sample)
                    betas, trials = sample_repetitions(sample, v, stats, repetitions=repetitions)
                    split = "test" if src_split == "test" else "train"
                    prev = image_split.setdefault(coco, split)
                    if prev != split:
                        raise DataFormatError(
                            f"{sample.where()}: COCO image {coco} is in both the train and the test shards of {sname}"
                        )
                    row = coco_to_row.get(coco)
                    if row is None:
                        image = sample.image()
                        if source_image_size is None:
                            source_image_size = list(image.shape[:2])
                        if image_size is not None:
                            image = _resize(image, image_size)
                        if image_shape is None:
                            image_shape = image.shape
                        elif image.shape != image_shape:
                            raise DataFormatError(
                                f"{sample.where()}: image is {image.shape[1]}x{image.shape[0]}, earlier images are "
                                f"{image_shape[1]}x{image_shape[0]}; pass image_size (--image-size) to resize all"
                            )
                        row = writer.n_images + len(pending_images)
                        coco_to_row[coco] = row
                        pending_images.append(image)
                        pending_ids.append(coco)
                        if len(pending_images) >= _IMAGE_BATCH:
                            flush_images()
                    k = betas.shape[0]
                    start = rep_count.get(coco, 0)
                    rep_count[coco] = start + k
                    valid = (trials >= 0) & (trials < NSD_MAX_TRIALS)
                    session = np.where(valid, trials // TRIALS_PER_SESSION, -1).astype(np.int16)
                    buf.add(
                        betas,
                        row,
                        SPLIT_TEST if split == "test" else SPLIT_TRAIN,
                        np.arange(start, start + k, dtype=np.int16),
                        session,
                    )
                    nsd_trial.append(np.where(valid, trials, -1).astype(np.int32))
                    nsd_split.append(np.full(k, _SHARD_SPLIT_CODE[src_split], np.int8))
                    counts[src_split] += 1
                bar.update(1)
            buf.flush()
            if appender.n_trials == 0:
                raise DataFormatError(f"no samples in the shards of {sname} under {raw_dir}")
            appender.h5.create_dataset("nsd_trial", data=np.concatenate(nsd_trial))
            appender.h5.create_dataset("nsd_split", data=np.concatenate(nsd_split))
            if check_totals:
                totals = _read_totals(raw_dir, subject)
                for split_name, total in totals.items():
                    if counts[split_name] != total:
                        raise DataFormatError(
                            f"{sname}: {counts[split_name]} {split_name} samples in the shards but "
                            f"{raw_dir / metadata_file(subject)} lists {total} (incomplete or truncated shard?)"
                        )
            if stats.num_uniques_mismatches:
                log.warning(
                    "%s: %d samples have a num_uniques.npy that differs from their number of distinct rows; "
                    "kept the distinct rows (use repetitions='num_uniques' / --repetitions num_uniques to trust it)",
                    sname, stats.num_uniques_mismatches,
                )
            n_train_images = sum(1 for s in image_split.values() if s == "train")
            n_test_images = len(image_split) - n_train_images
            if (n_train_images, n_test_images) != (EXPECTED_TRAIN_IMAGES, EXPECTED_TEST_IMAGES):
                log.info(
                    "%s: %d train / %d test images (MindEye's release has %d / %d)",
                    sname, n_train_images, n_test_images, EXPECTED_TRAIN_IMAGES, EXPECTED_TEST_IMAGES,
                )
            subject_meta[sname] = {
                "nsd_subject": subject,
                "samples": counts,
                "n_train_images": n_train_images,
                "n_test_images": n_test_images,
                "missing_rows_dropped": stats.missing_rows,
                "duplicate_rows_dropped": stats.duplicate_rows,
                "num_uniques_mismatches": stats.num_uniques_mismatches,
                "sessions_from_trial": bool(np.concatenate(nsd_trial).min() >= 0),
            }
        bar.close()
        flush_images()
        metadata = {
            "source": f"huggingface.co/datasets/{NSD_REPO_ID}/{NSD_FOLDER}",
            "image_ids": "coco73k",
            "source_image_size": source_image_size,
            "resized_to": image_size,
            "betas": "nsdgeneral single-trial betas (session-wise z-scored GLMsingle), one row per repetition",
            "session_rule": f"session = nsd_trial // {TRIALS_PER_SESSION} (assumes 0-based trial numbers)",
            "repetitions_rule": repetitions,
            "subjects": subject_meta,
        }
        return writer.finalize(metadata=metadata)


def import_nsd(
    subjects: Sequence[int],
    raw_dir: str | Path | None = None,
    output: str | Path | None = None,
    *,
    download: bool = True,
    max_workers: int = 8,
    revision: str | None = None,
    **convert_kwargs: Any,
) -> Path:
    """Download (unless ``download=False``) then convert; returns the dataset folder."""
    subjects = _check_subjects(subjects)
    raw = Path(raw_dir) if raw_dir is not None else default_raw_dir()
    if download:
        download_nsd(subjects, raw, max_workers=max_workers, revision=revision)
    return convert_nsd(raw, output, subjects, **convert_kwargs)


# ---------------------------------------------------------------------------------------------- CLI
def _add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=output_folder_arg, default=None, help="dataset folder (default: $MINDEYE_DATA/nsd/canonical)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset (only a dataset, never the source) once the new one is complete")
    p.add_argument("--image-size", type=positive_int, default=None, help="resize images to N x N (default: keep 256 x 256)")
    p.add_argument("--betas-dtype", choices=("float16", "float32"), default=None, help="default: as in the shards")
    p.add_argument(
        "--repetitions",
        choices=("distinct", "num_uniques"),
        default="distinct",
        help="real repetitions = distinct finite rows (default) or the first num_uniques.npy rows",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", type=int, nargs="+", default=[1], help="NSD subjects among 1 2 5 7 (default: 1)")


def _run(args: argparse.Namespace) -> int:
    """Run ``mindeye nsd ACTION``; failures are reported as one line by :mod:`mindeye_core.cli`."""
    action = args.nsd_action
    if action == "download":
        raw = download_nsd(args.subjects, args.raw_dir, max_workers=args.max_workers, revision=args.revision)
        print(f"NSD shards for subjects {args.subjects} in {raw}")
        return 0
    kwargs = dict(
        overwrite=args.overwrite,
        image_size=args.image_size,
        betas_dtype=args.betas_dtype,
        repetitions=args.repetitions,
        progress=not args.no_progress,
    )
    if action == "convert":
        root = convert_nsd(args.source, args.output, args.subjects, **kwargs)
    else:  # import
        root = import_nsd(
            args.subjects,
            args.source if args.source is not None else args.raw_dir,
            args.output,
            download=args.source is None,
            max_workers=args.max_workers,
            revision=args.revision,
            **kwargs,
        )
    from .format import open_dataset

    ds = open_dataset(root)
    print(json.dumps(ds.summary(), indent=2))
    ds.close()
    return 0


def register(subparsers: Any) -> None:
    """Add ``mindeye nsd {download,convert,import}``."""
    parser = subparsers.add_parser("nsd", help="download MindEye's NSD release and convert it to the canonical format")
    sub = parser.add_subparsers(dest="nsd_action", metavar="ACTION", required=True)

    d = sub.add_parser("download", help="download the shards of some subjects (resumes; progress bars)")
    _add_common(d)
    d.add_argument("--raw-dir", type=output_folder_arg, default=None, help="default: $MINDEYE_DATA/nsd/raw")
    d.add_argument("--max-workers", type=positive_int, default=8, help="parallel downloads")
    d.add_argument("--revision", default=None, help="dataset repo commit or branch")
    d.set_defaults(func=_run)

    c = sub.add_parser("convert", help="convert downloaded shards into a canonical dataset (streaming)")
    _add_common(c)
    c.add_argument("--source", type=existing_folder_arg, default=None,
                   help="folder holding webdataset_avg_split/ (default: $MINDEYE_DATA/nsd/raw)")
    _add_convert_args(c)
    c.set_defaults(func=_run)

    i = sub.add_parser("import", help="download then convert (or only convert a local --source folder)")
    _add_common(i)
    i.add_argument("--source", type=existing_folder_arg, default=None,
                   help="local folder holding webdataset_avg_split/: skip the download")
    i.add_argument("--raw-dir", type=output_folder_arg, default=None, help="download folder (default: $MINDEYE_DATA/nsd/raw)")
    i.add_argument("--max-workers", type=positive_int, default=8, help="parallel downloads")
    i.add_argument("--revision", default=None, help="dataset repo commit or branch")
    _add_convert_args(i)
    i.set_defaults(func=_run)
