"""The ``mindeye`` command line.

Each sub-command lives next to the code it drives and exposes ``register(subparsers)``; this module
only lists them. They are imported when the parser is built (not at ``import mindeye_core.cli``); that
pulls in torch, so even ``mindeye --help`` takes a few seconds.

Errors: every expected failure (a :class:`~mindeye_core.errors.MindEyeError`, an ``OSError`` such as a missing
file or a full disk, a ``ValueError`` from validation) is printed as one line on stderr,
``mindeye <command>: error: <what went wrong, naming the file / option>``, with exit code 1; a bad option value
is one line too, with exit code 2. ``--debug`` (anywhere on the command line) or ``MINDEYE_DEBUG=1`` shows the
traceback instead. Anything else (a bug) keeps its traceback.

The argument types below (:func:`positive_int`, :func:`finite_float`, :func:`device_arg`, :func:`folder_arg`,
:func:`output_folder_arg`...) are shared by every sub-command, so a value is refused with a message naming it
before any work starts; :func:`output_folder_arg` also checks that the folder can be written (a long command
must not fail at its end for a reason known at its start).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from .errors import MindEyeError

# (sub-command module, one-line help). Each module defines ``register(subparsers) -> None`` which adds
# its parser(s) and sets ``func`` (a callable taking the parsed args and returning an exit code).
COMMAND_MODULES: list[str] = [
    "mindeye_core.data.demo_cli",
    "mindeye_core.data.nsd",
    "mindeye_core.metrics.cli",
    "mindeye_core.official.convert",
    "mindeye_core.app_cli",
    "mindeye_core.retrieval.cli",
    "training.build_demo_assets",  # the entry point may reach the training package; the library never does
]

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (MindEyeError, OSError, ValueError, KeyError)
"""Failures reported as one line (anything else is a bug and keeps its traceback)."""
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MINDEYE_DEBUG"


# ----------------------------------------------------------------------------------------------- argument types
def _type(name: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return check(text)
        except (ValueError, TypeError, MindEyeError, OSError) as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"invalid value {text!r}") from exc

    convert.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return convert


def _int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"must be >= {minimum}, got {value}")
    return value


def _float(text: str, minimum: float | None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"must be >= {minimum:g}, got {value:g}")
    return value


positive_int = _type("positive_int", lambda t: _int(t, 1))
"""An integer >= 1 (counts: ``--n-draws``, ``--batch-size``, ``--steps``...)."""
non_negative_int = _type("non_negative_int", lambda t: _int(t, 0))
"""An integer >= 0 (``--seed``, ``--threads`` where 0 means "default")."""
finite_float = _type("finite_float", lambda t: _float(t, None))
"""A finite number (NaN / inf refused)."""
non_negative_float = _type("non_negative_float", lambda t: _float(t, 0.0))
"""A finite number >= 0 (``--noise-level``)."""


def _unit(text: str) -> float:
    value = _float(text, 0.0)
    if value > 1.0:
        raise ValueError(f"must be in [0, 1], got {value:g}")
    return value


unit_float = _type("unit_float", _unit)
"""A number in [0, 1] (img2img strengths)."""


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown torch device {text!r} (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {text!r}: MPS is not available on this machine")
    return text


device_arg = _type("device", _device)
"""A torch device string that exists on this machine."""


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder")
    return path


def _existing_folder(text: str) -> Path:
    path = _folder(text)
    if not path.is_dir():
        raise ValueError(f"folder not found: {path}")
    return path


def _output_folder(text: str) -> Path:
    from .staging import check_output_dir

    return check_output_dir(text, what="folder")


folder_arg = _type("folder", _folder)
"""A folder path (it may not exist yet, but must not be a file)."""
existing_folder_arg = _type("existing_folder", _existing_folder)
"""A folder that must exist."""
output_folder_arg = _type("output_folder", _output_folder)
"""A folder the command will write into: not a file, and writable (checked before any work)."""


# ----------------------------------------------------------------------------------------------- parser
class MindEyeArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors are one line (``<prog>: error: <message>``, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = MindEyeArgumentParser(
        prog="mindeye",
        description="MindEye Explorer: fMRI-to-image retrieval and reconstruction (Scotti et al., 2023).",
    )
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the traceback of an error (also ${DEBUG_ENV}=1); may appear anywhere")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (h5py's messages span lines; a KeyError's is quoted)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(text.split())
    return text or type(exc).__name__


def report_failure(args: argparse.Namespace, exc: BaseException) -> int:
    """Print ``exc`` as the one-line error of ``args.command`` and return 1; re-raise it under ``--debug``.

    For sub-commands whose function is also called directly (tests, scripts) and must return an exit code.
    """
    if getattr(args, "debug", False):
        raise exc
    prog = f"mindeye {args.command}" if getattr(args, "command", None) else "mindeye"
    print(f"{prog}: error: {one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mindeye``; returns the exit code (see the module docstring for how errors are reported)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args_list or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")
    args_list = [a for a in args_list if a != DEBUG_FLAG]
    parser = build_parser()
    args = parser.parse_args(args_list)
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mindeye {args.command}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        return report_failure(args, exc)


if __name__ == "__main__":
    sys.exit(main())
