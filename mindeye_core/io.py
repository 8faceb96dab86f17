"""Save and load modules as ``config.json`` + ``model.safetensors`` (the diffusers convention).

A module's constructor arguments *are* its saved config. Subclass :class:`ConfigModule` and write
``__init__`` with JSON-serialisable keyword arguments; the arguments actually passed (with defaults
filled in) are recorded in ``self.config`` when the instance is built::

    class Head(ConfigModule):
        def __init__(self, dim: int = 8, out: int = 2) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(dim, out)

    head = Head(dim=16)
    head.config            # {'dim': 16, 'out': 2}
    head.save_pretrained("ckpt/")
    Head.from_pretrained("ckpt/")

``config.json`` also stores ``_class`` (the class name) and ``_format_version`` (written and checked by
:mod:`mindeye_core.configfile`, like every versioned JSON file of the project); loading into another
class, with unknown or missing config keys, or with weights that do not match, raises
:class:`~mindeye_core.errors.CheckpointError` (or :class:`~mindeye_core.errors.ConfigMismatchError`)
naming the file and the problem. Our own weights are never pickled.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .configfile import read_versioned_config, write_versioned_config
from .errors import CheckpointError, ConfigMismatchError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

T = TypeVar("T", bound="ConfigModule")


def _json_ready(value: Any, *, key: str, cls: str) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, key=key, cls=cls) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_ready(v, key=key, cls=cls) for k, v in value.items()}
    raise TypeError(
        f"{cls}: constructor argument {key!r} has type {type(value).__name__}, which cannot be "
        "stored in config.json; use ints, floats, strings, bools, lists or dicts"
    )



def check_expected_config(saved: dict[str, Any], expected: dict[str, Any] | None, where: str | Path) -> None:
    """Raise :class:`ConfigMismatchError` naming every key where ``saved`` differs from ``expected``.

    Args:
        saved: the configuration read from disk.
        expected: the subset of values the caller requires (``None`` or empty: nothing to check).
        where: the file the configuration came from, for the message.
    """
    if not expected:
        return
    diffs = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: saved {a!r}, expected {b!r}" for k, (a, b) in diffs.items())
        raise ConfigMismatchError(f"{where} does not match the expected config ({detail})")


def load_weights_file(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing or unreadable file into :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file: expected {path}")
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt weights file {path}: {exc}") from exc

class ConfigModule(torch.nn.Module):
    """``nn.Module`` whose constructor arguments are recorded as its config.

    Attributes:
        config: dict of the constructor's keyword arguments (defaults filled in), JSON-serialisable.
    """

    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original: Callable[..., None] = cls.__dict__["__init__"]
        signature = inspect.signature(original)
        for name, param in list(signature.parameters.items())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ may not take *args/**kwargs (config must be explicit)")

        @functools.wraps(original)
        def __init__(self: ConfigModule, *args: Any, **kw: Any) -> None:
            recording = not getattr(self, "_config_recording", False)
            if recording:
                object.__setattr__(self, "_config_recording", True)
            try:
                original(self, *args, **kw)
            finally:
                if recording:
                    object.__setattr__(self, "_config_recording", False)
            if recording:  # only the outermost __init__ of the instance records the config
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                config = dict(list(bound.arguments.items())[1:])
                self.config = {k: _json_ready(v, key=k, cls=cls.__name__) for k, v in config.items()}

        cls.__init__ = __init__  # type: ignore[method-assign]

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if missing).

        Args:
            folder: destination directory.
            dtype: optionally cast floating-point tensors (e.g. ``torch.float16`` for shipped assets).

        Returns:
            The folder path.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for name, tensor in self.state_dict().items():
            t = tensor.detach().cpu()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            state[name] = t.contiguous()
        # Tied / shared tensors are cloned so safetensors can store them.
        seen: dict[int, str] = {}
        for name, t in list(state.items()):
            ptr = t.data_ptr()
            if ptr in seen and t.numel() > 0:
                state[name] = t.clone()
            seen[ptr] = name
        tmp_weights = folder / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp_weights), metadata={"format": "pt", "class": type(self).__name__})
        tmp_weights.replace(folder / WEIGHTS_NAME)
        write_versioned_config(folder / CONFIG_NAME, kind=type(self).__name__, version=FORMAT_VERSION, data=self.config)
        return folder

    # ----------------------------------------------------------------- loading
    @classmethod
    def load_config(cls, folder: str | Path) -> dict[str, Any]:
        """Read and validate ``folder/config.json`` for this class; returns constructor kwargs."""
        path = Path(folder) / CONFIG_NAME
        payload = read_versioned_config(
            path, kind=cls.__name__, version=FORMAT_VERSION, error=CheckpointError, mismatch_error=ConfigMismatchError
        ).data
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        unknown = sorted(set(payload) - set(params))
        if unknown:
            raise ConfigMismatchError(f"{path}: unknown config keys for {cls.__name__}: {unknown}")
        return payload

    @classmethod
    def from_pretrained(
        cls: type[T],
        folder: str | Path,
        *,
        expected_config: dict[str, Any] | None = None,
        map_location: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
    ) -> T:
        """Build the module from ``folder/config.json`` and load ``folder/model.safetensors``.

        Args:
            folder: directory written by :meth:`save_pretrained`.
            expected_config: optional subset of config values the caller requires (e.g.
                ``{"n_voxels": 15724}``); any difference raises :class:`ConfigMismatchError`.
            map_location: device to load tensors onto.
            dtype: cast floating-point weights to this dtype (``None`` keeps the stored dtype).
        """
        folder = Path(folder)
        config = cls.load_config(folder)
        check_expected_config(config, expected_config, folder / CONFIG_NAME)
        model = cls(**config)
        weights = folder / WEIGHTS_NAME
        state = load_weights_file(weights, map_location=map_location)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")
            if unexpected:
                parts.append(f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
            if wrong:
                parts.append(
                    "shape mismatch "
                    + ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
                )
            raise CheckpointError(f"{weights} does not match {cls.__name__}({config}): " + "; ".join(parts))
        if dtype is not None:
            state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        model.load_state_dict(state, strict=True)
        return model.to(map_location)
