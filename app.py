"""Hugging Face Spaces entry point (``app_file: app.py`` in README.md's front matter).

The bundle comes from ``$MINDEYE_RESULTS`` (a folder, or a Hub dataset repo id with its pinned revision
in ``$MINDEYE_RESULTS_REVISION``), else the shipped ``assets/demo_results``. Locally, prefer
``mindeye app``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app import ExplorerStore, build_demo, launch_kwargs  # noqa: E402

# the live models load, and a missing demo world (brain view, single trials, lab) is generated, while the page is served
demo = build_demo(ExplorerStore.open(background=True, build_world=True))

if __name__ == "__main__":
    demo.launch(**launch_kwargs())  # host from $GRADIO_SERVER_NAME (Spaces sets 0.0.0.0), else 127.0.0.1
