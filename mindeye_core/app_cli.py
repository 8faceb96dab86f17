"""``mindeye app``: start the explorer (the Gradio app in ``app/``) on a results bundle.

The app package is imported inside the command (never when ``mindeye_core`` is imported: the library does
not depend on the app). Default bundle: ``$MINDEYE_RESULTS`` or the shipped ``assets/demo_results``; when
it is missing the app still starts and says how to build it (``mindeye build-demo``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Sequence

from .paths import REPO_ROOT

__all__ = ["add_arguments", "import_app", "main", "register", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None,
                        help="results bundle: a folder or a Hub dataset repo id (default $MINDEYE_RESULTS, "
                             "else assets/demo_results)")
    parser.add_argument("--revision", default=None,
                        help="pinned revision (commit sha or tag) of a Hub bundle (default $MINDEYE_RESULTS_REVISION)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--no-live", action="store_true",
                        help="never generate live: the strength slider snaps to the bundle's grid")
    parser.add_argument("--no-world", action="store_true",
                        help="do not generate a missing demo world in the background (the brain view, single "
                             "trials and the decoding lab then say how to get it: `mindeye demo`)")


def import_app() -> Any:
    """Import the ``app`` package: installed, or from the source checkout this library lives in."""
    try:
        return importlib.import_module("app")
    except ModuleNotFoundError as exc:
        if exc.name != "app" or not (REPO_ROOT / "app" / "__init__.py").is_file():
            raise SystemExit("mindeye app: the explorer package `app` is not importable; run from a source "
                             "checkout (pip install -e . in the repository) ") from exc
        sys.path.insert(0, str(REPO_ROOT))
        return importlib.import_module("app")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = import_app()
    store = app.ExplorerStore.open(args.results, revision=args.revision, live=False if args.no_live else None,
                                   background=True, build_world=not args.no_world)
    if not store.ready:
        print(f"mindeye app: {store.problem}", file=sys.stderr)
    elif store.live_problem:
        print(f"mindeye app: {store.live_problem}", file=sys.stderr)
    if store.world_building:
        print(f"mindeye app: {store.world_problem}", file=sys.stderr)
    app.launch_app(store, host=args.host, port=args.port)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("app", help="start the explorer app (Gradio) on a results bundle",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app`` (the same options as ``mindeye app``)."""
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
