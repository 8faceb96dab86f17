"""MindEye's released checkpoints: safe reading, strict key mapping, conversion to our folders.

- :mod:`.checkpoint`: weights-only, memory-mapped reading of the released ``.pth`` files (no model
  imports: the models' own loaders use it).
- :mod:`.layout`: the official key layout and its strict mapping onto ``MindEyeHighLevel`` /
  ``LowLevelModel``.
- :mod:`.convert`: download, conversion (streamed ``model.safetensors`` + ``config.json`` with
  provenance), ``mindeye convert-official``, the converted-checkpoint reconstruction spec.

Names are imported lazily (``from mindeye_core.official import convert_official_checkpoint``), so
importing :mod:`.checkpoint` from the model modules does not import the models back.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_official_checkpoint": "checkpoint",
    "load_official_state_dict": "checkpoint",
    "file_sha256": "checkpoint",
    "map_official_state": "layout",
    "OFFICIAL_MODELS": "layout",
    "convert_official_checkpoint": "convert",
    "converted_nsd_spec": "convert",
    "download_official_checkpoint": "convert",
    "official_filename": "convert",
    "write_safetensors": "convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
