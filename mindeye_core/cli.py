"""The ``mindeye`` command line.

Each sub-command lives next to the code it drives and exposes ``register(subparsers)``; this module
only lists them. They are imported when the parser is built (not at ``import mindeye_core.cli``); that
pulls in torch, so even ``mindeye --help`` takes a few seconds.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# (sub-command module, one-line help). Each module defines ``register(subparsers) -> None`` which adds
# its parser(s) and sets ``func`` (a callable taking the parsed args and returning an exit code).
COMMAND_MODULES: list[str] = [
    "mindeye_core.data.demo_cli",
    "mindeye_core.data.nsd",
    "mindeye_core.metrics.cli",
    "mindeye_core.official.convert",
    "mindeye_core.app_cli",
    "training.build_demo_assets",  # the entry point may reach the training package; the library never does
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindeye",
        description="MindEye Explorer: fMRI-to-image retrieval and reconstruction (Scotti et al., 2023).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
