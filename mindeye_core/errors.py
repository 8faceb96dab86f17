"""Exception types. Every error names the offending file, subject or quantity."""

from __future__ import annotations


class MindEyeError(Exception):
    """Base class of all errors raised deliberately by mindeye_core."""


class DataFormatError(MindEyeError, ValueError):
    """A dataset file or array is malformed (wrong shape, NaN betas, bad index, version mismatch...)."""


class CheckpointError(MindEyeError, ValueError):
    """A saved model folder is missing, corrupt, or does not match the model it is loaded into."""


class ConfigMismatchError(CheckpointError):
    """A saved config does not match the class or the expected configuration."""
