"""Helpers of the fault tests: tiny artifacts, byte flips, and child processes paused at a chosen point.

A child runs ``python -c CODE`` with ``pause(tag)`` defined: it prints ``tag`` and blocks on stdin. The parent
reads the child's stdout until the tag (a blocking read: no sleeps, no timing), then kills it with SIGKILL or
lets it continue. The child's stderr goes to a file (a full pipe would block it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mindeye_core.data.format import DatasetWriter

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

_PRELUDE = """
import sys
def pause(tag="READY"):
    print(tag, flush=True)
    sys.stdin.readline()
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), str(TESTS / "faults")])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


class Child:
    """A child Python process running ``code`` (see the module docstring)."""

    def __init__(self, code: str) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=child_env(),
                                     cwd=str(REPO))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def wait_for(self, tag: str = "READY") -> str:
        """Block until the child prints a line starting with ``tag``; returns that line."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(tag):
                return line.strip()
        self.proc.wait()
        raise AssertionError(f"child ended (rc {self.proc.returncode}) before {tag!r}:\n{self.errors()[-3000:]}")

    def kill9(self) -> None:
        """SIGKILL, then reap."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL

    def go(self) -> int:
        """Let a paused child continue; returns its exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.proc.stdin.close()
        rc = self.proc.wait()
        assert rc == 0, self.errors()[-3000:]
        return rc


def write_dataset(root: Path, *, seed: int = 0, n_images: int = 6, n_voxels: int = 5, overwrite: bool = False,
                  pause_mid_write: Any = None, **kwargs: Any) -> Path:
    """A complete toy dataset (subject ``s1``); ``metadata["seed"]`` tells two versions apart.

    ``pause_mid_write``: a callable run after the first half of the trials is written (children pause there).
    """
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, name="toy", world="test", overwrite=overwrite, **kwargs) as w:
        w.append_images(rng.integers(0, 256, (n_images, 4, 4, 3), dtype=np.uint8))
        s = w.subject("s1", n_voxels=n_voxels)
        half = n_images // 2
        split = [0] * (n_images - 2) + [1, 1]
        s.append(rng.standard_normal((half, n_voxels)), np.arange(half), split[:half], [0] * half)
        if pause_mid_write is not None:
            pause_mid_write()
        rest = n_images - half
        s.append(rng.standard_normal((rest, n_voxels)), np.arange(half, n_images), split[half:], [0] * rest)
        return w.finalize(metadata={"seed": seed})


def dataset_seed(root: Path) -> int:
    """The ``seed`` a toy dataset was written with (opening it fully validates the manifest)."""
    from mindeye_core.data.format import open_dataset

    ds = open_dataset(root)
    try:
        ds.subject("s1").betas(np.arange(ds.subject("s1").n_trials))
        return int(ds.manifest["metadata"]["seed"])
    finally:
        ds.close()


def flip_chunk_byte(path: Path, key: str, offset: int = 16) -> None:
    """Flip one byte inside the first stored chunk of dataset ``key`` of an HDF5 file (a damaged sector)."""
    with h5py.File(path, "r") as f:
        ds = f[key]
        info = ds.id.get_chunk_info(0) if ds.chunks else None
        start = info.byte_offset if info is not None else ds.id.get_offset()
        size = info.size if info is not None else ds.id.get_storage_size()
    assert size > offset, (key, size)
    flip_byte(path, start + offset)


def flip_byte(path: Path, position: int) -> None:
    """XOR one byte of a file with 0xFF."""
    with open(path, "r+b") as fh:
        fh.seek(position)
        b = fh.read(1)
        fh.seek(position)
        fh.write(bytes([b[0] ^ 0xFF]))


def leftovers(root: Path) -> list[str]:
    """Staging leftovers next to ``root`` (``.partial`` folders, ``.old``, lock files)."""
    return sorted(p.name for p in root.parent.glob(root.name + ".*"))
