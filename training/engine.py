"""Training plumbing of the brain models (``train_highlevel`` / ``train_lowlevel``) on ``accelerate``.

One :class:`accelerate.Accelerator` owns the device, mixed precision (``precision: bf16 | fp16 | fp32``),
gradient accumulation, multi-process launch (``accelerate launch --multi_gpu`` or DeepSpeed ZeRO-2 with
``training/configs/accelerate_*.yaml``) and ``save_state`` / ``load_state``. This module adds what every
run needs on top:

- **configs**: a frozen dataclass per script; ``--config run.yaml`` sets fields, ``--field value`` flags
  override them; the resolved config is written to ``OUT/config.yaml``, which ``--config`` accepts back.
- **step-count schedules only**: nothing here reads the wall clock except ``--max-minutes``, which may
  *stop* a run (after a checkpoint) but never changes what a step computes; one config gives the same
  weights on any machine.
- **data order**: the permutation of epoch ``e`` and the repetition drawn for each training image are
  functions of ``(seed, e)`` only (:func:`epoch_order`), so a resumed run sees exactly the batches the
  uninterrupted one would have seen.
- **checkpoints** every ``ckpt_every`` optimizer steps into ``OUT/checkpoints/step_XXXXXXXX`` (written to a
  ``.partial`` folder, a ``.sha256`` beside each weight file, then swapped into place by
  :func:`mindeye_core.staging.swap_into_place`, so a kill never leaves a torn checkpoint that looks complete;
  the two newest are kept; resuming verifies the checksums). The run folder is locked
  (:class:`mindeye_core.staging.WriterLock` on ``OUT.lock``) while a run writes it: a second run into the same
  ``--out`` is refused naming the first one's pid; the lock of a killed run is taken over. ``--resume`` restores model, optimizer, LR scheduler, the training RNG and every
  process's global RNG states and continues bit-identically on the same machine.
- **NaN guard**: a non-finite loss stops the run with :class:`TrainingDiverged`, naming the step and the
  last good checkpoint (which is left untouched).
- **CSV log** (``OUT/log.csv``, one row per epoch) and tqdm on the main process.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import time
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from mindeye_core.errors import CheckpointError, MindEyeError
from mindeye_core.io import record_checksums, verify_checksums
from mindeye_core.staging import WriterLock, lock_path, swap_into_place

__all__ = [
    "RunState",
    "main_for",
    "start_run",
    "TrainingDiverged",
    "check_run_options",
    "Trainer",
    "config_from_argv",
    "epoch_order",
    "load_config_file",
    "save_config",
]

C = TypeVar("C")
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


class TrainingDiverged(MindEyeError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------- configs
def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def _coerce(value: Any, tp: Any, name: str, where: str) -> Any:
    """Check / convert a YAML or CLI value to the dataclass field type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], name, where)
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {name} must be a number, got {value!r}") from None
        if isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be a number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be a string, got {value!r}")
        return str(value)
    if origin in (dict, typing.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {name} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: {name} must be a list, got {value!r}")
        item = args[0] if args else None
        return [(_coerce(v, item, name, where) if item not in (None, Ellipsis) else v) for v in value]
    return value


def load_config_file(cls: type[C], path: str | Path) -> dict[str, Any]:
    """Read a YAML config for dataclass ``cls``; unknown keys are refused (the message lists the known ones)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ValueError(f"{path}: unknown option {key!r} for {cls.__name__} (known: {', '.join(sorted(fields))})")
        out[name] = _coerce(value, _field_type(cls, fields[name]), name, str(path))
    return out


def config_from_argv(cls: type[C], argv: Sequence[str] | None, *, description: str = "",
                     extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> tuple[C, argparse.Namespace]:
    """Build ``cls`` from ``--config FILE`` plus one ``--field-name VALUE`` flag per dataclass field.

    ``extra`` adds run-control flags that are not part of the config (e.g. ``("--resume",
    {"action": "store_true"})``); they are returned in the namespace.

    Returns:
        ``(config, namespace)``; the config's ``__post_init__`` validates values.
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", type=Path, default=None, help="YAML file of options (flags override it)")
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    for f in fields:
        tp = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        helptext = f.metadata.get("help", "") + f" (default: {default!r})"
        if tp is bool:
            ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="BOOL", help=helptext)
        elif typing.get_origin(tp) in (dict,) or tp is dict:
            ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="JSON", help=helptext)
        elif typing.get_origin(tp) in (list, tuple) or tp in (list, tuple):
            ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, nargs="+", help=helptext)
        else:
            ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, help=helptext)
    ns = ap.parse_args(list(argv) if argv is not None else None)
    values: dict[str, Any] = load_config_file(cls, ns.config) if ns.config is not None else {}
    for f in fields:
        v = getattr(ns, f.name)
        if v is None:
            continue
        tp = _field_type(cls, f)
        if typing.get_origin(tp) in (dict,) or tp is dict:
            try:
                v = json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--{f.name.replace('_', '-')}: expected JSON, got {v!r}: {exc}") from exc
        values[f.name] = _coerce(v, tp, f.name, "command line")
    return cls(**values), ns


def check_run_options(cfg: Any) -> None:
    """Validate the options every training config shares (epochs, batch, accumulation, lr, budgets)."""
    for name in ("epochs", "batch_size", "grad_accum", "eval_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.max_lr > 0 or not math.isfinite(cfg.max_lr):
        raise ValueError(f"max_lr must be a positive number, got {cfg.max_lr}")
    for name in ("max_minutes", "ckpt_every", "threads", "max_train_images"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write a config dataclass as YAML (accepted back by ``--config``)."""
    import yaml

    path = Path(path)
    data = dataclasses.asdict(cfg)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ data order
def epoch_order(image_trials: Sequence[np.ndarray], seed: int, epoch: int) -> np.ndarray:
    """Trials of one epoch: every training image once, one of its repetitions drawn at random, shuffled.

    This is the official loader's sampling (one repetition per image per epoch), written as a pure
    function of ``(seed, epoch)`` so that resuming reproduces the data order exactly.

    Args:
        image_trials: for each training image, the ``(r,)`` trial indices of its repetitions.
        seed, epoch: the run's seed and the 0-based epoch.

    Returns:
        ``(n_images,)`` int64 trial indices in training order.
    """
    rng = np.random.default_rng([int(seed), int(epoch), 0x4D45])
    picks = np.array([t[rng.integers(len(t))] for t in image_trials], dtype=np.int64)
    return picks[rng.permutation(len(picks))]


# ------------------------------------------------------------------------------------------ the trainer
class _GeneratorState:
    """Makes a ``torch.Generator`` checkpointable through ``accelerator.register_for_checkpointing``."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


class _Progress:
    """Step counter saved with every checkpoint (epoch, step within the run)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


@dataclasses.dataclass
class RunState:
    """What a script's step function can see."""

    step: int
    epoch: int
    step_in_epoch: int


class Trainer:
    """Accelerate-backed loop: ``prepare`` the model/optimizer/scheduler, then :meth:`run`.

    Args:
        out: run folder (created); holds ``config.yaml``, ``log.csv``, ``checkpoints/``, the exported model.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``"auto"``: bf16 on a capable GPU, fp32 on CPU).
        grad_accum: gradient accumulation steps (one optimizer step = ``grad_accum`` batches).
        device: ``"cpu"`` forces the CPU; anything else lets accelerate pick (``cuda`` when present).
        seed: seeds every process (accelerate's ``set_seed``) and the training generator.
        ckpt_every: optimizer steps between checkpoints (0 = only at the end).
        max_minutes: wall-clock budget: when spent, checkpoint and stop (never affects the schedule).
        progress: tqdm bar on the main process.
    """

    def __init__(self, out: str | Path, *, precision: str = "fp32", grad_accum: int = 1, device: str = "auto",
                 seed: int = 0, ckpt_every: int = 0, max_minutes: float = 0.0, progress: bool = True) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        if precision not in ("fp32", "bf16", "fp16", "auto"):
            raise ValueError(f"precision must be fp32, bf16, fp16 or auto, got {precision!r}")
        if int(grad_accum) < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        if int(ckpt_every) < 0:
            raise ValueError(f"ckpt_every must be >= 0, got {ckpt_every}")
        if precision == "auto":
            precision = "bf16" if device != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.accelerator = Accelerator(
            mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision],
            gradient_accumulation_steps=int(grad_accum),
            cpu=device == "cpu",
            project_config=ProjectConfiguration(project_dir=str(self.out)),
        )
        set_seed(int(seed))
        self.seed = int(seed)
        self.precision = precision
        self.ckpt_every = int(ckpt_every)
        self.max_minutes = float(max_minutes)
        self.progress = bool(progress)
        self.generator = torch.Generator().manual_seed(int(seed) + 1)
        self._progress = _Progress()
        self.accelerator.register_for_checkpointing(_GeneratorState(self.generator), self._progress)
        self.ckpt_root = self.out / CHECKPOINTS

    # -------------------------------------------------------------------------------- accessors
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def print(self, *args: Any) -> None:
        self.accelerator.print(*args)

    # ------------------------------------------------------------------------------- checkpoints
    @staticmethod
    def checkpoints_in(out: str | Path) -> list[Path]:
        """Complete checkpoints of the run folder ``out``, oldest first (``.partial`` ones are ignored)."""
        root = Path(out) / CHECKPOINTS
        if not root.is_dir():
            return []
        done = [p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial")
                and (p / "progress.json").is_file()]
        return sorted(done, key=lambda p: int(p.name.split("_")[1]))

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints of this run, oldest first."""
        return self.checkpoints_in(self.out)

    def save_checkpoint(self, step: int, extra: dict[str, Any] | None = None) -> Path:
        """``save_state`` into ``checkpoints/step_N.partial``, then rename; keeps the newest two."""
        self._progress.step = int(step)
        final = self.ckpt_root / f"step_{int(step):08d}"
        partial = final.with_name(final.name + ".partial")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial), safe_serialization=True)
        if self.is_main:
            record_checksums(partial)
            (partial / "progress.json").write_text(json.dumps({"step": int(step), **(extra or {})}) + "\n")
            swap_into_place(partial, final)
            for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self) -> int:
        """Load the newest complete checkpoint; returns its step (0 when there is none)."""
        ckpts = self.checkpoints()
        if not ckpts:
            return 0
        verify_checksums(ckpts[-1])  # CheckpointError naming a damaged weight file
        try:
            self.accelerator.load_state(str(ckpts[-1]))
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            raise CheckpointError(f"cannot resume from {ckpts[-1]}: {exc} (does the config match the run's config.yaml?)") from exc
        self.print(f"resumed from {ckpts[-1]} at step {self._progress.step}")
        return int(self._progress.step)

    # ------------------------------------------------------------------------------ shared steps
    def steps_per_epoch(self, n_images: int, batch_size: int, grad_accum: int) -> int:
        """Optimizer steps per epoch: ``n_images // (batch_size x grad_accum x processes)`` (at least 1)."""
        world = self.accelerator.num_processes
        per_step = batch_size * grad_accum * world
        steps = n_images // per_step
        if steps < 1:
            raise ValueError(f"{n_images} training images are fewer than one optimizer step's {per_step} samples "
                             f"(batch_size {batch_size} x grad_accum {grad_accum} x {world} processes)")
        return steps

    def epoch_rows(self, image_trials: Sequence[np.ndarray], epoch: int, skip: int, *, batch_size: int,
                   grad_accum: int, steps_per_epoch: int) -> Iterator[np.ndarray]:
        """This process's trial rows of every micro-batch of ``epoch`` (:func:`epoch_order`), the first ``skip``
        optimizer steps left out (resume mid-epoch). Each micro-batch of ``batch_size x processes`` rows is split
        by process rank."""
        order = epoch_order(image_trials, self.seed, epoch)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        micro = batch_size * world
        for m in range(skip * grad_accum, steps_per_epoch * grad_accum):
            yield order[m * micro:(m + 1) * micro][rank * batch_size:(rank + 1) * batch_size]

    def optimize(self, objective: torch.nn.Module, optimizer: Any, scheduler: Any,
                 compute: typing.Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One micro-batch: ``compute()`` under autocast inside ``accumulate``, then backward, optimizer step and
        (when the gradients were synced) one LR-scheduler step. A non-finite loss is returned untouched (no
        backward) for :meth:`run`'s NaN guard."""
        acc = self.accelerator
        with acc.accumulate(objective):
            with acc.autocast():
                losses = compute()
            if not bool(torch.isfinite(losses["loss"].detach())):
                return losses
            acc.backward(losses["loss"])
            optimizer.step()
            if acc.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return losses

    # ------------------------------------------------------------------------------------ loop
    def run(
        self,
        *,
        steps_per_epoch: int,
        num_epochs: int,
        batches: typing.Callable[[int, int], Iterator[Any]],
        step_fn: typing.Callable[[Any, RunState], dict[str, torch.Tensor]],
        end_of_epoch: typing.Callable[[int, dict[str, float]], dict[str, Any]] | None = None,
        start_step: int = 0,
        desc: str = "train",
    ) -> dict[str, Any]:
        """Run epochs ``start_step // steps_per_epoch ..`` of ``steps_per_epoch`` optimizer steps.

        Args:
            batches: ``batches(epoch, skip)`` yields the epoch's batches (``grad_accum`` per step), the first
                ``skip`` steps' worth already left out (resume mid-epoch).
            step_fn: does forward + ``accelerator.backward`` + optimizer/scheduler step for one batch inside
                ``accelerator.accumulate``; returns the batch's scalar losses (``"loss"`` required).
            end_of_epoch: ``(epoch, mean_losses) -> extra log columns`` (e.g. test retrieval), main process.

        Returns:
            summary dict (steps run, final step, seconds, stopped_by_time, last epoch's log row).
        """
        from tqdm.auto import tqdm

        total = steps_per_epoch * num_epochs
        accum = self.accelerator.gradient_accumulation_steps
        t0 = time.perf_counter()
        budget = 60.0 * self.max_minutes if self.max_minutes > 0 else None
        step = int(start_step)
        bar = tqdm(total=total, initial=step, desc=desc, disable=not (self.progress and self.is_main), mininterval=2.0)
        last_row: dict[str, Any] = {}
        stopped = False
        log_path = self.out / "log.csv"
        for epoch in range(step // steps_per_epoch, num_epochs):
            skip = step - epoch * steps_per_epoch
            sums: dict[str, float] = {}
            count = 0
            te = time.perf_counter()
            n_samples = 0
            micro = 0
            for batch in batches(epoch, skip):
                state = RunState(step=step, epoch=epoch, step_in_epoch=step - epoch * steps_per_epoch)
                losses = step_fn(batch, state)
                loss = losses["loss"]
                if not bool(torch.isfinite(loss.detach()).all()):
                    good = self.checkpoints()
                    where = f"the last good checkpoint {good[-1]} is kept" if good else "no checkpoint was written yet"
                    raise TrainingDiverged(
                        f"non-finite loss ({float(loss.detach())}) at epoch {epoch}, step {step}; {where}. "
                        "Lower max_lr, use fp32/bf16 instead of fp16, or check the targets for NaN.")
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                count += 1
                n_samples += int(getattr(batch, "batch_size", 0) or _batch_len(batch))
                micro += 1
                if micro % accum:
                    continue
                step += 1
                bar.update(1)
                if self.ckpt_every and step % self.ckpt_every == 0 and step < total:
                    self.save_checkpoint(step)
                if budget is not None and time.perf_counter() - t0 >= budget:
                    stopped = True
                    break
            means = {k: v / max(1, count) for k, v in sums.items()}
            seconds = time.perf_counter() - te
            row: dict[str, Any] = {"epoch": epoch, "step": step, **{k: round(v, 6) for k, v in means.items()},
                                   "samples_per_s": round(n_samples * self.accelerator.num_processes / max(seconds, 1e-9), 1)}
            if end_of_epoch is not None and not stopped:
                row.update(end_of_epoch(epoch, means))
            if self.is_main and count:
                _append_csv(log_path, row)
                bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()
                                 if k not in ("epoch", "step")}, refresh=False)
            last_row = row
            if stopped:
                break
        bar.close()
        if step > start_step:
            self.save_checkpoint(step)
        if stopped and self.is_main:
            self.print(f"time budget of {self.max_minutes} min spent: checkpointed and stopped at step {step} of {total} "
                       "(continue with --resume)")
        return {"steps_run": step - int(start_step), "final_step": step, "total_steps": total,
                "finished": step >= total, "stopped_by_time": stopped,
                "seconds": round(time.perf_counter() - t0, 1), "last_epoch": last_row}


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 0


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append one row; a new column set rewrites the header (never reorders existing columns)."""
    rows: list[dict[str, Any]] = []
    fields: list[str] = []
    if path.is_file():
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    # a resumed run re-logs the epoch it was in: drop rows of that epoch and later
    rows = [r for r in rows if int(r.get("epoch", -1)) < int(row["epoch"])]
    for k in row:
        if k not in fields:
            fields.append(k)
    rows.append({k: ("" if v is None else v) for k, v in row.items()})
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    tmp.replace(path)


def read_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a run's ``log.csv`` as floats (empty cells -> NaN)."""
    with Path(path).open(newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()} for r in csv.DictReader(fh)]


_RUN_LOCKS: dict[Path, WriterLock] = {}
"""Run folders this process writes (one run at a time per folder: a new run of the same folder replaces the entry)."""


def _lock_run(out: Path) -> None:
    """Lock ``out`` for this process (main process only; the kernel drops the lock when the process ends)."""
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) != 0:
        return
    key = Path(os.path.abspath(out))
    previous = _RUN_LOCKS.pop(key, None)
    if previous is not None:  # an earlier run of this process in the same folder has returned
        previous.release()
    _RUN_LOCKS[key] = WriterLock(lock_path(key), what=f"training run folder {out}").acquire()


def start_run(cfg: Any, kind: str, resume: bool) -> Trainer:
    """Threads, run folder (refusing to overwrite a run without ``resume``), the :class:`Trainer`, ``config.yaml``."""
    from training.data import check_resume, default_out

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out) if cfg.out else default_out(kind, cfg.subject)
    _lock_run(out)
    check_resume(out, cfg, resume)
    trainer = Trainer(out, precision=cfg.precision, grad_accum=cfg.grad_accum, device=cfg.device, seed=cfg.seed,
                      ckpt_every=cfg.ckpt_every, max_minutes=cfg.max_minutes, progress=cfg.progress)
    if trainer.is_main:
        save_config(cfg, out / "config.yaml")
    return trainer


def main_for(cls: type, train_fn: typing.Callable[..., dict[str, Any]], argv: Sequence[str] | None, doc: str) -> int:
    """The command line of a training script: ``--config`` / flags -> ``train_fn(cfg, resume=...)`` -> exit code."""
    cfg, ns = config_from_argv(cls, argv, description=doc.splitlines()[0],
                               extra=[("--resume", {"action": "store_true", "help": "continue from the newest checkpoint in --out"})])
    summary = train_fn(cfg, resume=ns.resume)
    return 0 if summary.get("finished") or summary.get("stopped_by_time") else 1
