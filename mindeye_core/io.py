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
class, with unknown or missing config keys, a value of the wrong type (checked against the constructor's
annotations) or out of range (refused by the constructor), or with weights that do not match, raises
:class:`~mindeye_core.errors.CheckpointError` (or :class:`~mindeye_core.errors.ConfigMismatchError`)
naming the file, the key and the problem. Our own weights are never pickled.

Checksums: every weight file written here gets a ``<file>.sha256`` sidecar in ``sha256sum`` format
(``<hex>  <name>``; ``sha256sum -c model.safetensors.sha256`` checks it by hand), and loading verifies it:
a mismatch raises :class:`~mindeye_core.errors.CheckpointError` naming the file. A weight file without a
sidecar (written before sidecars existed, or by someone else) loads as before. Trusted fast paths can skip the
verification with ``verify=False`` or ``MINDEYE_VERIFY_WEIGHTS=0`` in the environment.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import types
import typing
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
SHA256_SUFFIX = ".sha256"
VERIFY_ENV = "MINDEYE_VERIFY_WEIGHTS"
"""Set to ``0`` to skip sha256 verification of weight files everywhere (trusted fast paths)."""

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


# ----------------------------------------------------------------------------------------------- checksums
def file_sha256(path: str | Path, chunk_bytes: int = 16 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` pieces (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | Path) -> Path:
    """The sidecar of a weight file: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SHA256_SUFFIX)


def write_sha256(path: str | Path, *, name: str | None = None, digest: str | None = None) -> Path:
    """Record the sha256 of ``path`` beside it (``sha256sum`` format, via a temporary file and a rename).

    Args:
        path: the weight file.
        name: the file name written in the sidecar (default ``path``'s own name; a staged ``x.tmp`` passes its
            final name).
        digest: the hash if already computed.

    Returns:
        The sidecar path.
    """
    path = Path(path)
    target = sha256_path(path.with_name(name) if name else path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{digest or file_sha256(path)}  {name or path.name}\n")
    tmp.replace(target)
    return target


def verification_enabled(verify: bool | None = None) -> bool:
    """``verify`` if given, else False only when ``$MINDEYE_VERIFY_WEIGHTS`` is ``0`` / ``false`` / ``no``."""
    if verify is not None:
        return bool(verify)
    return os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no")


def verify_sha256(path: str | Path, *, verify: bool | None = None) -> bool:
    """Check ``path`` against its ``.sha256`` sidecar. Returns True if checked, False if there is no sidecar
    (or verification is off).

    Raises:
        CheckpointError: the file's hash differs from the recorded one (damaged or replaced file), naming it.
    """
    path = Path(path)
    side = sha256_path(path)
    if not verification_enabled(verify) or not side.is_file():
        return False
    try:
        recorded = side.read_text().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"unreadable checksum file {side}: {exc}") from exc
    actual = file_sha256(path)
    if actual != recorded:
        raise CheckpointError(f"corrupt weights file {path}: its sha256 {actual[:16]}... differs from the one recorded "
                              f"in {side.name} ({recorded[:16]}...); the file is damaged or was replaced: re-create it "
                              f"(or delete {side.name} if the new file is trusted)")
    return True


def record_checksums(folder: str | Path) -> list[Path]:
    """Write a sidecar for every ``*.safetensors`` under ``folder`` (e.g. after diffusers' ``save_pretrained``)."""
    return [write_sha256(p) for p in sorted(Path(folder).rglob("*.safetensors"))]


def verify_checksums(folder: str | Path, *, verify: bool | None = None) -> int:
    """:func:`verify_sha256` for every ``*.safetensors`` under ``folder``; returns how many were checked."""
    if not verification_enabled(verify):
        return 0
    return sum(verify_sha256(p, verify=True) for p in sorted(Path(folder).rglob("*.safetensors")))


def load_weights_file(path: str | Path, *, map_location: str | torch.device = "cpu",
                      verify: bool | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing, unreadable or damaged file into :class:`CheckpointError`.

    Args:
        path: the ``.safetensors`` file.
        map_location: device of the returned tensors.
        verify: check the ``.sha256`` sidecar when there is one (default: on unless ``$MINDEYE_VERIFY_WEIGHTS=0``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file: expected {path}")
    verify_sha256(path, verify=verify)
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt weights file {path}: {exc}") from exc

def _init_hints(cls: type) -> dict[str, Any]:
    """Type hints of the constructor that recorded the config (the original ``__init__``, not the wrapper)."""
    init = getattr(cls.__init__, "__wrapped__", cls.__init__)
    try:
        return typing.get_type_hints(init)
    except (NameError, TypeError):  # an annotation that cannot be resolved: no type check
        return {}


def _type_problem(value: Any, tp: Any) -> str:
    """Why a JSON ``value`` cannot stand for annotation ``tp`` ("" when it can). Numbers must be finite."""
    if tp is Any:
        return ""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        return "" if any(not p for p in problems) else " or ".join(p for p in problems)
    if tp is type(None):
        return "" if value is None else "must be null"
    if tp is bool:
        return "" if isinstance(value, bool) else "must be true or false"
    if tp is int:
        return "" if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return "" if math.isfinite(value) else "must be a finite number"
    if tp is str:
        return "" if isinstance(value, str) else "must be a string"
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, list):
            return "must be a list"
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and inner and Ellipsis not in args and len(inner) != len(value):
            return f"must be a list of {len(inner)} values"
        for i, v in enumerate(value):
            sub = _type_problem(v, inner[i] if origin is tuple and Ellipsis not in args and inner else
                                (inner[0] if inner else Any))
            if sub:
                return f"item {i} {sub}"
        return ""
    if origin in (dict, typing.Mapping) or tp is dict:
        return "" if isinstance(value, dict) else "must be a mapping"
    return ""


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
        """Write ``config.json``, ``model.safetensors`` and ``model.safetensors.sha256`` into ``folder``
        (created if missing; each file through a temporary file and a rename).

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
        # the sidecar first: a crash between the two renames leaves a mismatch that loading reports, never
        # new weights silently trusted under an old hash
        write_sha256(tmp_weights, name=WEIGHTS_NAME)
        tmp_weights.replace(folder / WEIGHTS_NAME)
        write_versioned_config(folder / CONFIG_NAME, kind=type(self).__name__, version=FORMAT_VERSION, data=self.config)
        return folder

    @classmethod
    def complete_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with every constructor argument it lacks filled in with its default (what a saved config
        must hold; :meth:`load_config` refuses a config with a missing key).

        Raises:
            ConfigMismatchError: an argument without default is missing, or a key is not an argument.
        """
        params = list(inspect.signature(getattr(cls.__init__, "__wrapped__", cls.__init__)).parameters.items())[1:]
        unknown = sorted(set(config) - {name for name, _ in params})
        if unknown:
            raise ConfigMismatchError(f"{cls.__name__}: unknown config keys {unknown}")
        out: dict[str, Any] = {}
        for name, param in params:
            if name in config:
                out[name] = config[name]
            elif param.default is inspect.Parameter.empty:
                raise ConfigMismatchError(f"{cls.__name__}: config lacks the required argument {name!r}")
            else:
                out[name] = _json_ready(param.default, key=name, cls=cls.__name__)
        return out

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
        missing = [k for k in params if k not in payload]
        if missing:
            raise ConfigMismatchError(f"{path}: config key(s) {missing} of {cls.__name__} missing (a saved config holds "
                                      "every constructor argument; the file is truncated or was edited by hand)")
        hints = _init_hints(cls)
        for key, value in payload.items():
            problem = _type_problem(value, hints.get(key, Any))
            if problem:
                raise ConfigMismatchError(f"{path}: config key {key!r} of {cls.__name__} {problem}, got {value!r}")
        return payload

    @classmethod
    def from_pretrained(
        cls: type[T],
        folder: str | Path,
        *,
        expected_config: dict[str, Any] | None = None,
        map_location: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
        verify: bool | None = None,
    ) -> T:
        """Build the module from ``folder/config.json`` and load ``folder/model.safetensors``.

        Args:
            folder: directory written by :meth:`save_pretrained`.
            expected_config: optional subset of config values the caller requires (e.g.
                ``{"n_voxels": 15724}``); any difference raises :class:`ConfigMismatchError`.
            map_location: device to load tensors onto.
            dtype: cast floating-point weights to this dtype (``None`` keeps the stored dtype).
            verify: check ``model.safetensors.sha256`` when present (default on; ``False`` or
                ``$MINDEYE_VERIFY_WEIGHTS=0`` for trusted fast paths).

        Raises:
            ConfigMismatchError: a config key missing, unknown, of the wrong type or refused by the constructor.
            CheckpointError: a missing, damaged (sha256 mismatch) or non-matching weights file.
        """
        folder = Path(folder)
        config = cls.load_config(folder)
        check_expected_config(config, expected_config, folder / CONFIG_NAME)
        try:
            model = cls(**config)
        except (ValueError, TypeError, RuntimeError) as exc:  # a value out of range for the constructor
            raise ConfigMismatchError(f"{folder / CONFIG_NAME}: {cls.__name__} refuses this config: {exc}") from exc
        weights = folder / WEIGHTS_NAME
        state = load_weights_file(weights, map_location=map_location, verify=verify)
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
