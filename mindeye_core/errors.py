"""Exception types. Every error names the offending file, subject or quantity.

The command line (:mod:`mindeye_core.cli`) prints any of them (and any ``OSError`` or ``ValueError``) as one
line on stderr with a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class MindEyeError(Exception):
    """Base class of all errors raised deliberately by mindeye_core."""


class DataFormatError(MindEyeError, ValueError):
    """A dataset file or array is malformed (wrong shape, NaN betas, bad index, version mismatch...)."""


class CheckpointError(MindEyeError, ValueError):
    """A saved model folder is missing, corrupt, or does not match the model it is loaded into."""


class ConfigMismatchError(CheckpointError):
    """A saved config does not match the class or the expected configuration."""


class DestinationError(MindEyeError, FileExistsError):
    """A writer refuses its destination: it holds something that is not an artifact of the same kind, it is
    the source of the run (or above it), or it is a file. Nothing was written."""


class DestinationLockedError(DestinationError):
    """Another live process is writing the same destination (the message names its pid and start time)."""


class StorageError(MindEyeError, OSError):
    """The destination cannot hold the write: out of disk space, read-only, or not writable. The partial
    folder was removed and nothing was published."""
