"""``python -m app``: the same as ``mindeye app`` (see ``mindeye app --help``)."""

from __future__ import annotations

import sys

from mindeye_core.app_cli import main

if __name__ == "__main__":
    sys.exit(main())
