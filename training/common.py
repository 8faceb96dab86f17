"""Shared plumbing of the demo image-model training scripts (``python -m training.train_tiny_*``).

- argparse with an optional YAML config (``--config cfg.yaml``: its keys are argument names with
  ``-`` or ``_``; command-line flags override it);
- seeding, thread count, device;
- the demo world's train / test images and captions (train = every subject's training images,
  test = the shared test images, never used for training);
- checkpoints every N steps into ``OUT/checkpoint/`` and ``--resume`` from the latest one
  (model and optimiser state, step, data-sampling RNG state; read back with ``weights_only=True``);
- progress bars (tqdm).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindeye_core.errors import CheckpointError, DataFormatError
from mindeye_core.paths import cache_dir, data_dir

__all__ = [
    "Clock",
    "DemoSplit",
    "Checkpointer",
    "add_common_args",
    "default_out",
    "load_demo_split",
    "parse_with_config",
    "setup_run",
    "to_float_images",
]

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"


def default_out(name: str) -> Path:
    """Default output folder of a demo model: ``$MINDEYE_CACHE/demo_models/<name>``."""
    return cache_dir() / "demo_models" / name


def add_common_args(ap: argparse.ArgumentParser, *, name: str, steps: int, batch_size: int, lr: float,
                    ckpt_every: int = 200) -> argparse.ArgumentParser:
    """Add the arguments every training script shares; defaults are the script's own."""
    ap.add_argument("--config", type=Path, default=None, help="YAML file with argument defaults")
    ap.add_argument("--world", type=Path, default=None,
                    help="demo world folder (default: $MINDEYE_DATA/demo, generated if missing)")
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default $MINDEYE_CACHE/demo_models/{name})")
    ap.add_argument("--steps", type=int, default=steps, help="optimisation steps")
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=lr, help="peak learning rate (AdamW, warm-up + cosine decay)")
    ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ckpt-every", type=int, default=ckpt_every, help="checkpoint every N steps (0 = never)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint folder if it holds one")
    ap.add_argument("--ckpt-dir", type=Path, default=None,
                    help="checkpoint folder (default OUT/checkpoint; put it elsewhere when OUT is shipped)")
    ap.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--max-minutes", type=float, default=27.0,
                    help="wall-clock budget of the run (from start-up, data loading and target encoding included): stop early "
                         "(and still write the weights) once it is spent. It never changes the learning-rate schedule, "
                         "which depends on the step count only. Default 27 (a safety net on slow machines); 0 = no budget")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--fp16", action="store_true", help="store the final weights in float16")
    return ap


def parse_with_config(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; keys of the ``--config`` YAML file become defaults (flags still win).

    Raises:
        ValueError: the YAML file is not a mapping or names an unknown argument.
    """
    pre, _ = ap.parse_known_args(argv)
    if pre.config is not None:
        import yaml

        cfg = yaml.safe_load(Path(pre.config).read_text()) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{pre.config}: expected a mapping of argument names to values")
        known = {a.dest for a in ap._actions}
        defaults = {}
        for k, v in cfg.items():
            dest = str(k).replace("-", "_")
            if dest not in known:
                raise ValueError(f"{pre.config}: unknown option {k!r} (known: {', '.join(sorted(known))})")
            defaults[dest] = v
        ap.set_defaults(**defaults)
    return ap.parse_args(argv)


def setup_run(args: argparse.Namespace, name: str) -> Path:
    """Seed Python/NumPy/torch, set the thread count, resolve and create the output folder."""
    torch.set_num_threads(int(args.threads))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out is not None else default_out(name)
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    return out


# ------------------------------------------------------------------------------------------ data
@dataclass
class DemoSplit:
    """Images and captions of a demo world, split for image-model training.

    Attributes:
        train_images: ``(N_train, H, W, 3)`` uint8, every subject's training images.
        train_captions: ``N_train`` captions.
        test_images: ``(N_test, H, W, 3)`` uint8, the shared test images (held out).
        test_captions: ``N_test`` captions.
        test_rows: ``(N_test,)`` rows of the test images in the dataset (for labels).
        root: the world folder.
        train_rows: ``(N_train,)`` rows of the training images in the dataset (for labels).
    """

    train_images: np.ndarray
    train_captions: list[str]
    test_images: np.ndarray
    test_captions: list[str]
    test_rows: np.ndarray
    root: Path
    train_rows: np.ndarray


def load_demo_split(world: Path | None, *, max_train: int | None = None, progress: bool = True) -> DemoSplit:
    """Open (or generate, when ``world`` is None and ``$MINDEYE_DATA/demo`` is missing) a demo world.

    Raises:
        DataFormatError: the folder is not a demo world with captions.
    """
    from mindeye_core.data import open_dataset
    from mindeye_core.data.demo import ensure_demo_world
    from mindeye_core.data.format import read_manifest

    if world is None:
        world, _ = ensure_demo_world(data_dir() / "demo", progress=progress)
    world = Path(world)
    meta = read_manifest(world).get("metadata", {})
    if "test_images" not in meta:
        raise DataFormatError(f"{world} has no test_images range in its manifest (not a demo world?)")
    lo, hi = (int(v) for v in meta["test_images"])
    ds = open_dataset(world)
    caps = ds.captions
    if caps is None:
        raise DataFormatError(f"{world} has no captions; the demo models need the demo world's captions")
    n = len(caps)
    train_rows = np.concatenate([np.arange(0, lo), np.arange(hi, n)])
    if max_train is not None:
        train_rows = train_rows[: int(max_train)]
    test_rows = np.arange(lo, hi)
    return DemoSplit(
        train_images=np.asarray(ds.images(train_rows)), train_captions=[caps[i] for i in train_rows],
        test_images=np.asarray(ds.images(test_rows)), test_captions=[caps[i] for i in test_rows],
        test_rows=test_rows, root=world, train_rows=train_rows,
    )


def to_float_images(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1] on ``device``."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise DataFormatError(f"expected uint8 images (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.to(device).permute(0, 3, 1, 2).float().div_(255.0)


class Clock:
    """Wall-clock budget of a run: ``fraction()`` = elapsed / budget (0 when there is no budget:
    ``max_minutes`` None or <= 0)."""

    def __init__(self, max_minutes: float | None) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = None if max_minutes is None or max_minutes <= 0 else 60.0 * float(max_minutes)

    def fraction(self) -> float:
        if self.budget_s is None:
            return 0.0
        return (time.perf_counter() - self.t0) / self.budget_s

    def spent(self) -> bool:
        return self.fraction() >= 1.0


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0.05 at step ``total``.

    A function of the step count only: the wall clock never feeds the schedule, so one config gives
    the same weights on any machine, however loaded (``--max-minutes`` may stop a run early, and then
    the learning rate simply has not finished decaying).
    """
    import math

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))

    return f


# ----------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Save / restore the training state in ``out/checkpoint/checkpoint.pt`` (or ``folder/checkpoint.pt``).

    The file holds only tensors, numbers and strings (model and optimiser state dicts, the step,
    RNG states), so it is read back with ``torch.load(..., weights_only=True)``. Writes go to a
    temporary file first, then replace the old checkpoint (a crash never leaves a torn file).
    """

    def __init__(self, out: Path, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else Path(out) / CHECKPOINT_DIR
        self.path = self.folder / CHECKPOINT_FILE

    def save(self, step: int, modules: dict[str, torch.nn.Module], optimizers: dict[str, Any],
             data_rng: torch.Generator, extra: dict[str, Any] | None = None) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "step": int(step),
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "data_rng": data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "extra": json.dumps(extra or {}),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)
        return self.path

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, modules: dict[str, torch.nn.Module], optimizers: dict[str, Any],
             data_rng: torch.Generator) -> tuple[int, dict[str, Any]]:
        """Restore everything in place; returns ``(step, extra)``.

        Raises:
            CheckpointError: no checkpoint, or one written for other modules.
        """
        if not self.path.is_file():
            raise CheckpointError(f"no checkpoint to resume from: expected {self.path.resolve()}")
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        missing = (set(modules) - set(state["modules"])) | (set(optimizers) - set(state["optimizers"]))
        if missing:
            raise CheckpointError(f"{self.path} lacks state for {sorted(missing)}")
        for k, m in modules.items():
            try:
                m.load_state_dict(state["modules"][k])
            except RuntimeError as exc:
                raise CheckpointError(f"{self.path}: module {k!r} does not match this config: {exc}") from exc
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        data_rng.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"]), json.loads(state["extra"])


def train_loop(args: argparse.Namespace, *, step_fn: Callable[[int], dict[str, float]],
               modules: dict[str, torch.nn.Module], optimizers: dict[str, Any], data_rng: torch.Generator,
               desc: str, log: Callable[[str], None] = print, clock: Clock | None = None) -> dict[str, Any]:
    """Run ``step_fn(step)`` for steps ``start .. args.steps - 1`` with progress, checkpoints and resume.

    ``step_fn`` does one optimisation step and returns scalars to show. With a ``clock`` whose budget
    is spent the loop stops early (the summary says so). Returns a summary dict (steps run, final
    step, seconds, last losses, seconds per step, stopped_by_time).
    """
    from tqdm.auto import tqdm

    ck = Checkpointer(args.out, folder=getattr(args, "ckpt_dir", None))
    start = 0
    if args.resume and ck.exists():
        start, _ = ck.load(modules, optimizers, data_rng)
        for sch in optimizers.values():  # follow *this* run's schedule (e.g. extended --steps)
            if isinstance(sch, torch.optim.lr_scheduler.LambdaLR):
                for group, base, lam in zip(sch.optimizer.param_groups, sch.base_lrs, sch.lr_lambdas):
                    group["lr"] = base * lam(sch.last_epoch)
        log(f"resumed from {ck.path} at step {start}")
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    ema: dict[str, float] = {}
    bar = tqdm(range(start, args.steps), desc=desc, initial=start, total=args.steps, disable=args.no_progress,
               mininterval=2.0)
    step = start
    stopped = False
    for step in bar:
        if clock is not None and clock.spent():
            stopped = True
            break
        last = step_fn(step)
        for k, v in last.items():
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
        bar.set_postfix({k: f"{v:.4f}" for k, v in ema.items()}, refresh=False)
        if args.ckpt_every and (step + 1) % args.ckpt_every == 0 and step + 1 < args.steps:
            ck.save(step + 1, modules, optimizers, data_rng)
    bar.close()
    secs = time.perf_counter() - t0
    end = step if stopped else args.steps
    n = end - start
    if n > 0:
        ck.save(end, modules, optimizers, data_rng)
    if stopped:
        log(f"time budget of {args.max_minutes} min spent: stopped after step {end} of {args.steps}")
    return {"steps_run": n, "final_step": end, "stopped_by_time": stopped, "seconds": round(secs, 1),
            "seconds_per_step": round(secs / max(1, n), 4),
            "final_losses_ema": {k: round(v, 5) for k, v in ema.items()}}


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def batches(n: int, size: int) -> Iterable[slice]:
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))
