"""One reader/writer for every "JSON config + class + format version" file of the project.

Every JSON file that describes a saved artefact (a model's ``config.json``, the ridge baseline's
``config.json``, a generator's ``generator_config.json``, a dataset or results-bundle
``manifest.json``, a conversion's provenance) is a JSON object with two reserved keys::

    {"_class": "BrainMLP", "_format_version": 1, ...payload...}

- ``_class`` names what the file describes: a Python class for model configs, a format name such as
  ``"mindeye-dataset"`` for folder manifests;
- ``_format_version`` is the integer version of that file's layout (bumped when the layout changes).

Other keys starting with ``_`` are *meta* keys (e.g. ``_provenance``): not part of the payload, read
back separately. Everything else is the payload (e.g. constructor arguments).

Older files wrote the kind and version under other names (dataset manifests ``format`` /
``format_version``, results manifests ``format`` / ``version``; shipped generator configs had no
version). Readers name those *legacy keys* so old files still load; writers always use the two
canonical keys.

Reading refuses, with one message, a version this code does not read::

    <path>: <kind> format version 2 is not supported (this code reads version 1); it was written by a
    newer mindeye_core: upgrade to read it

Usage::

    write_versioned_config(folder / "config.json", kind="BrainMLP", version=1, data=model.config)
    cfg = read_versioned_config(folder / "config.json", kind="BrainMLP", version=1)
    cfg.data, cfg.meta, cfg.version
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import CheckpointError

__all__ = [
    "CLASS_KEY",
    "VERSION_KEY",
    "VersionedConfig",
    "dump_versioned_config",
    "read_versioned_config",
    "write_versioned_config",
]

CLASS_KEY = "_class"
VERSION_KEY = "_format_version"


@dataclass(frozen=True)
class VersionedConfig:
    """A parsed versioned JSON file.

    Attributes:
        path: the file read.
        kind: the ``_class`` value (what the file describes).
        version: the format version (an ``int``).
        data: the payload, without reserved or meta keys.
        meta: meta entries (``_provenance`` -> ``meta["provenance"]``), underscore removed.
    """

    path: Path
    kind: str
    version: int
    data: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _payload(kind: str, version: int, data: Mapping[str, Any], meta: Mapping[str, Any] | None) -> dict[str, Any]:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"format version must be a positive int, got {version!r}")
    reserved = sorted(k for k in data if str(k).startswith("_"))
    if reserved:
        raise ValueError(f"payload keys may not start with '_' (reserved for class/version/meta): {reserved}")
    out: dict[str, Any] = {CLASS_KEY: kind, VERSION_KEY: version}
    for k, v in (meta or {}).items():
        name = "_" + str(k).lstrip("_")
        if name in (CLASS_KEY, VERSION_KEY):
            raise ValueError(f"meta key {k!r} collides with a reserved key")
        out[name] = v
    out.update(data)
    return out


def dump_versioned_config(
    kind: str,
    version: int,
    data: Mapping[str, Any],
    *,
    meta: Mapping[str, Any] | None = None,
    sort_keys: bool = True,
) -> str:
    """The JSON text of a versioned file (for writers that stage the text themselves)."""
    return json.dumps(_payload(kind, version, data, meta), indent=2, sort_keys=sort_keys) + "\n"


def write_versioned_config(
    path: str | Path,
    *,
    kind: str,
    version: int,
    data: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    sort_keys: bool = True,
) -> Path:
    """Write ``data`` as a versioned JSON file (via ``<path>.tmp`` + rename). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_versioned_config(kind, version, data, meta=meta, sort_keys=sort_keys))
    tmp.replace(path)
    return path


def read_versioned_config(
    path: str | Path,
    *,
    kind: str | Iterable[str] | None,
    version: int | Iterable[int],
    error: type[Exception] = CheckpointError,
    mismatch_error: type[Exception] | None = None,
    what: str = "config file",
    legacy_kind_key: str | None = None,
    legacy_version_key: str | None = None,
    missing_version: int | None = None,
    missing_hint: str = "",
) -> VersionedConfig:
    """Read and check a versioned JSON file.

    Args:
        path: the file.
        kind: the ``_class`` value(s) accepted (``None``: any).
        version: the version(s) this code reads (an int or several).
        error: exception raised for a missing, unreadable or non-object file.
        mismatch_error: exception for another kind or an unsupported version (default ``error``).
        what: how messages name the file ("config file", "manifest"...).
        legacy_kind_key / legacy_version_key: older key names read when the canonical ones are absent.
        missing_version: the version assumed when the file has no version key at all (files written
            before versions were recorded); ``None`` refuses such files.
        missing_hint: appended to the "missing" message (e.g. "(an interrupted write?)").

    Raises:
        ``error``: missing or corrupt file; ``mismatch_error``: other kind or unsupported version.
    """
    path = Path(path)
    mismatch = mismatch_error or error
    if not path.is_file():
        raise error(f"missing {what}: expected {path}{missing_hint}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"corrupt {what} {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"corrupt {what} {path}: expected a JSON object, got {type(raw).__name__}")
    raw = dict(raw)
    saved_kind = raw.pop(CLASS_KEY, None)
    if saved_kind is None and legacy_kind_key is not None:
        saved_kind = raw.pop(legacy_kind_key, None)
    if VERSION_KEY in raw:
        saved_version = raw.pop(VERSION_KEY)
    elif legacy_version_key is not None and legacy_version_key in raw:
        saved_version = raw.pop(legacy_version_key)
    else:
        saved_version = missing_version
    accepted = None if kind is None else ([kind] if isinstance(kind, str) else list(kind))
    if accepted is not None and saved_kind not in accepted:
        wanted = accepted[0] if len(accepted) == 1 else accepted
        raise mismatch(f"{path} holds a {saved_kind!r} {what}, not a {wanted!r} one")
    readable = sorted({version} if isinstance(version, int) else set(version))
    if saved_version not in readable or isinstance(saved_version, bool):
        raise mismatch(_version_message(path, saved_kind, saved_version, readable))
    meta = {k[1:]: raw.pop(k) for k in [k for k in raw if k.startswith("_")]}
    return VersionedConfig(path=path, kind=str(saved_kind), version=int(saved_version), data=raw, meta=meta)


def _version_message(path: Path, kind: Any, saved: Any, readable: list[int]) -> str:
    reads = f"version {readable[0]}" if len(readable) == 1 else f"versions {readable}"
    head = f"{path}: {kind} format version {saved!r} is not supported (this code reads {reads})"
    if isinstance(saved, int) and not isinstance(saved, bool) and saved > readable[-1]:
        return head + "; it was written by a newer mindeye_core: upgrade to read it"
    return head + "; the file is corrupt or was not written by mindeye_core"
