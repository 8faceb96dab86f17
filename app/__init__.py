"""MindEye Explorer, the Gradio app: browse a results bundle (subjects, trials, reconstructions at any
img2img strength, retrieval, UMAPs, metrics), locally or on Hugging Face Spaces.

- :mod:`app.store`: :class:`ExplorerStore`, the read-only bundle (+ live generator on the demo world).
- :mod:`app.callbacks`: pure functions of ``(store, inputs)``.
- :mod:`app.layout`: :func:`build_demo` (the Blocks) and :func:`launch_app`.

Start it with ``mindeye app`` or ``python -m app``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .layout import build_demo, launch_app, launch_kwargs  # noqa: E402
from .store import ExplorerStore  # noqa: E402

__all__ = ["ExplorerStore", "build_demo", "launch_app", "launch_kwargs"]
