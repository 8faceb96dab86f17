"""Evaluate a results bundle and write the paper-shaped tables (same as ``mindeye evaluate``).

    python training/evaluate.py RESULTS_DIR [--out DIR] [--allow-download] [--device cuda] [--paper-parity] ...

All logic lives in :mod:`mindeye_core.metrics`; this script only parses arguments.
"""

from __future__ import annotations

import argparse
import sys

from mindeye_core.metrics import cli as metrics_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    metrics_cli.register(sub)
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
