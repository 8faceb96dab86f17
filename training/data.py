"""Data plumbing shared by the brain-model training scripts: datasets, encoders, a subject in memory, run folders."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["SubjectData", "check_resume", "default_out", "load_encoder", "load_subject", "resolve_dataset"]


@dataclasses.dataclass
class SubjectData:
    """A subject's training and test data in memory.

    Attributes:
        train_voxels: ``(n_trials, V)`` float32 betas of the training trials.
        image_trials: per training image, the rows of ``train_voxels`` of its repetitions.
        train_targets: ``{name: (n_train_images, *target)}`` float16 targets, row = training image.
        trial_image: ``(n_trials,)`` the training-image position (row of ``train_targets``) of each trial row.
        test_voxels: ``(n_test, V)`` float32 3-trial averages; test_targets ``{name: (n_test, *target)}`` float32;
        test_images: ``(n_test,)`` dataset image rows of the test samples; train_images ``(n_train_images,)``;
        trials: ``(n_trials,)`` the subject's trial numbers of the rows of ``train_voxels``.
    """

    train_voxels: torch.Tensor
    image_trials: list[np.ndarray]
    trial_image: np.ndarray
    train_targets: dict[str, torch.Tensor]
    test_voxels: torch.Tensor
    test_targets: dict[str, torch.Tensor]
    test_images: np.ndarray
    train_images: np.ndarray
    trials: np.ndarray


def resolve_dataset(spec: str, *, progress: bool = True) -> Path:
    """``"demo"`` -> ``$MINDEYE_DATA/demo`` (generated when missing), else the folder itself."""
    from mindeye_core.paths import data_dir

    if spec == "demo":
        from mindeye_core.data.demo import ensure_demo_world

        root, _ = ensure_demo_world(data_dir() / "demo", progress=progress)
        return Path(root)
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root} (convert NSD with `mindeye nsd import` or use 'demo')")
    return root


def load_encoder(kind: str, source: str = "", device: str | torch.device = "cpu") -> Any:
    """The target encoder named in a config (see :class:`HighLevelConfig.encoder`)."""
    from mindeye_core.demo_models import load_demo_clip
    from mindeye_core.encoders import load_image_encoder

    if kind in ("demo", "demo-hidden"):
        return load_demo_clip("hidden", root=source or None, device=device)
    if kind == "demo-final":
        return load_demo_clip("final", root=source or None, device=device)
    return load_image_encoder(kind, source or None).to(device)


def load_subject(dataset: Any, subject: str, encoders: Mapping[str, Any], *, max_train_images: int = 0,
                 progress: bool = True) -> SubjectData:
    """Read a subject's betas and, for each named encoder, its targets (cached, encoding what is missing).

    Args:
        dataset: a :class:`~mindeye_core.data.format.CanonicalDataset`.
        subject: subject name.
        encoders: ``{name: ImageEncoder}``; the targets come back under the same names.
        max_train_images: keep only the first N training images (0 = all).
    """
    from training.targets import TargetCache

    sub = dataset.subject(subject)
    trials = sub.trials("train")
    img = sub.image_index[trials]
    train_images, inverse = np.unique(img, return_inverse=True)
    if max_train_images:
        keep = inverse < int(max_train_images)
        trials, inverse = trials[keep], inverse[keep]
        train_images = train_images[: int(max_train_images)]
    image_trials = [np.flatnonzero(inverse == i) for i in range(train_images.size)]
    voxels = sub.betas(trials)
    test_voxels, test_images = sub.averaged("test")
    for name, arr in (("training betas", voxels), ("test betas", test_voxels)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{dataset.root} {subject}: {name} contain NaN/inf")
    train_t: dict[str, torch.Tensor] = {}
    test_t: dict[str, torch.Tensor] = {}
    for key, enc in encoders.items():
        cache = TargetCache.for_encoder(dataset, enc)
        train_t[key] = torch.from_numpy(cache.get(train_images, progress=progress).astype(np.float16))
        test_t[key] = torch.from_numpy(cache.get(test_images, progress=progress))
    return SubjectData(
        train_voxels=torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32)),
        image_trials=image_trials, trial_image=inverse.astype(np.int64), train_targets=train_t,
        test_voxels=torch.from_numpy(np.ascontiguousarray(test_voxels, dtype=np.float32)),
        test_targets=test_t, test_images=test_images, train_images=train_images, trials=trials,
    )


def default_out(kind: str, subject: str) -> Path:
    """Default run folder: ``$MINDEYE_CACHE/runs/<kind>-<subject>``."""
    from mindeye_core.paths import cache_dir

    return cache_dir() / "runs" / f"{kind}-{subject}"


def check_resume(out: Path, cfg: Any, resume: bool) -> None:
    """Refuse to start over a run folder that holds checkpoints (without --resume) or another config."""
    import yaml

    saved = out / "config.yaml"
    ckpts = out / "checkpoints"
    if not resume and ckpts.is_dir() and any(ckpts.iterdir()):
        raise FileExistsError(f"{out} already holds a run's checkpoints: pass --resume to continue it, or choose another --out")
    if resume and saved.is_file():
        old = yaml.safe_load(saved.read_text()) or {}
        new = dataclasses.asdict(cfg)
        ignore = {"max_minutes", "progress", "threads", "ckpt_every", "eval_every"}
        diff = {k: (old.get(k), v) for k, v in new.items() if k not in ignore and old.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"--resume with another config than {saved} ({detail})")


