"""Where data and caches live. No hard-coded paths anywhere else in the project.

- ``MINDEYE_DATA``: datasets (converted NSD, generated demo world). Default ``~/.cache/mindeye/data``
  (or ``$XDG_CACHE_HOME/mindeye/data``).
- ``MINDEYE_CACHE``: derived artefacts (encoder targets, downloaded raw shards, model weights).
  Default ``~/.cache/mindeye/cache`` (or ``$XDG_CACHE_HOME/mindeye/cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The source checkout (only meaningful for an editable install)."""

ASSETS_DIR = REPO_ROOT / "assets"
"""Shipped demo weights and results (editable install)."""


def _base() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mindeye"


def data_dir() -> Path:
    """Root folder for datasets: ``$MINDEYE_DATA`` or ``~/.cache/mindeye/data``."""
    env = os.environ.get("MINDEYE_DATA")
    return Path(env).expanduser() if env else _base() / "data"


def cache_dir() -> Path:
    """Root folder for caches: ``$MINDEYE_CACHE`` or ``~/.cache/mindeye/cache``."""
    env = os.environ.get("MINDEYE_CACHE")
    return Path(env).expanduser() if env else _base() / "cache"
