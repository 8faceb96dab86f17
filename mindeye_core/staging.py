"""Publish a folder atomically: write into ``<root>.partial/``, write the manifest last, then rename.

Both the canonical dataset writer (:class:`mindeye_core.data.format.DatasetWriter`) and the results
bundle writer (:class:`mindeye_core.results.ResultsWriter`) use this protocol, so an interrupted write
never leaves a folder that looks complete: readers require the manifest, and it only appears in
``<root>`` together with everything else.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def partial_path(root: str | Path) -> Path:
    """The staging folder of ``root``: ``<root>.partial`` next to it."""
    root = Path(root)
    return root.with_name(root.name + ".partial")


def start_partial(root: str | Path) -> Path:
    """Create an empty staging folder for ``root`` (a stale one from an interrupted write is removed)."""
    partial = partial_path(root)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def publish_partial(root: str | Path, manifest_name: str, manifest_text: str) -> Path:
    """Write the manifest into the staging folder, replace ``root`` (if any) with it and return ``root``."""
    root = Path(root)
    partial = partial_path(root)
    (partial / manifest_name).write_text(manifest_text)
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    return root


def discard_partial(root: str | Path) -> None:
    """Delete the staging folder of ``root`` if it exists."""
    partial = partial_path(root)
    if partial.exists():
        shutil.rmtree(partial)
