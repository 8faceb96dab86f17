"""Safe, memory-mapped reading of MindEye's released ``.pth`` training checkpoints.

The released files are whole training states written by ``torch.save``::

    {"epoch": int, "model_state_dict": {...}, "optimizer_state_dict": {...},
     "lr_scheduler": {...}, "train_losses": [...], "val_losses": [...], "lrs": [...]}

They are read with ``torch.load(path, map_location="cpu", weights_only=True, mmap=True)``: the
weights-only unpickler builds tensors and plain containers only, and ``mmap`` leaves every tensor in
the file (pages are read when a tensor is used), so neither the optimizer state nor a second copy of
the weights is ever loaded into memory.

One catch: the prior checkpoints were saved with torch 2.0, whose ``OneCycleLR.state_dict()`` holds
``anneal_func``, a *bound method* of the scheduler; pickling it pulls in the scheduler object, its
AdamW optimizer (via ``builtins.getattr``) and a ``collections.defaultdict``. The weights-only
unpickler refuses those globals. For exactly that short, fixed list (:data:`TRAINING_STATE_GLOBALS`)
this module substitutes inert stand-ins: a class that only stores the pickled attributes and a
``getattr`` that returns ``None``; no code of the checkpoint's choosing runs and the stand-ins are
discarded. Any other global is refused, naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..io import file_sha256  # re-exported: the official checkpoint's provenance hash

__all__ = [
    "TRAINING_STATE_GLOBALS",
    "InertTrainingState",
    "file_sha256",
    "load_official_checkpoint",
    "load_official_state_dict",
    "official_model_state",
    "strip_wrapper_prefixes",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class InertTrainingState:
    """Stand-in for a pickled training object (optimizer, LR scheduler): holds attributes, runs nothing."""

    def __repr__(self) -> str:
        return f"InertTrainingState({sorted(self.__dict__)})"


def _inert_getattr(obj: Any, name: Any) -> None:
    """Stand-in for ``builtins.getattr`` (a pickled bound method becomes ``None``)."""
    return None


def _inert_defaultdict(*args: Any) -> dict[Any, Any]:
    """Stand-in for ``collections.defaultdict`` (its items still arrive; the factory is dropped)."""
    return {}


TRAINING_STATE_GLOBALS: Mapping[str, Any] = {
    "builtins.getattr": _inert_getattr,
    "collections.defaultdict": _inert_defaultdict,
    "builtins.dict": dict,
    "torch.optim.lr_scheduler.OneCycleLR": InertTrainingState,
    "torch.optim.lr_scheduler.LinearLR": InertTrainingState,
    "torch.optim.adamw.AdamW": InertTrainingState,
    "torch.optim.adam.Adam": InertTrainingState,
}
"""Globals of pickled *training state* replaced by inert stand-ins (everything else is refused)."""


def _torch_load(path: Path) -> Any:
    stand_ins = [(obj, name) for name, obj in TRAINING_STATE_GLOBALS.items()]
    with torch.serialization.safe_globals(stand_ins):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # legacy (pre-zip) serialization cannot be memory-mapped: read it normally
            return torch.load(path, map_location="cpu", weights_only=True)


def _unpickling_reason(exc: Exception) -> str:
    """The line of torch's weights-only error that names the refused global (not its advice to load
    with ``weights_only=False``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line or "reduce" in line or "Can only" in line]
    return (named or lines or ["unknown reason"])[0]


def load_official_checkpoint(path: str | Path) -> dict[str, Any]:
    """The top-level object of an official checkpoint (a dict), read safely and memory-mapped.

    Raises:
        CheckpointError: missing file, not a torch checkpoint, a pickled object outside the
            weights-only allowlist and :data:`TRAINING_STATE_GLOBALS` (named in the message), or a
            top level that is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}")
    try:
        raw = _torch_load(path)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds a pickled object that a weights-only load does not allow "
            f"and that is not known training state ({_unpickling_reason(exc)})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read {path} as a weights-only torch checkpoint: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(raw).__name__}")
    return dict(raw)


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes from every key."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        k = str(key)
        while k.startswith(_WRAPPER_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = value
    return out


def official_model_state(top: Mapping[str, Any], where: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The model tensors of a loaded checkpoint: its ``model_state_dict`` (or the dict itself when it is a
    bare state dict), wrapper prefixes stripped (:func:`strip_wrapper_prefixes`); every value must be a tensor."""
    state = top.get("model_state_dict", top)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: 'model_state_dict' is a {type(state).__name__}, not a state dict")
    state = strip_wrapper_prefixes(state)
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{where}: the state dict holds non-tensor entries {bad[:5]}")
    return state


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """:func:`official_model_state` of :func:`load_official_checkpoint` (tensors memory-mapped)."""
    return official_model_state(load_official_checkpoint(path), path)
