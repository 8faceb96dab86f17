"""A real full disk (a size-limited tmpfs, root only) and read-only destinations: a clear StorageError, checked
before the heavy work where the size is known, the partial folder always removed, never a crash (signal 11)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import child_env, leftovers
from fake_nsd import make_fake_nsd

from mindeye_core.cli import main
from mindeye_core.data.demo import DemoWorldConfig, generate_demo_world
from mindeye_core.errors import StorageError

FILL_DATASET = """
import numpy as np, sys
from mindeye_core.data.format import DatasetWriter
from mindeye_core.errors import StorageError
try:
    with DatasetWriter(sys.argv[1], name="big", world="t") as w:
        w.append_images(np.zeros((1, 4, 4, 3), np.uint8))
        s = w.subject("s1", n_voxels=4096)
        rng = np.random.default_rng(0)
        for i in range(64):  # 64 x 64 x 4096 float32 = 64 MiB of incompressible betas
            s.append(rng.standard_normal((64, 4096)).astype(np.float32), np.zeros(64, int), np.zeros(64, int), np.zeros(64, int))
        w.finalize()
except StorageError as exc:
    print("STORAGE", exc)
    sys.exit(3)
"""

FILL_BUNDLE = """
import sys
import numpy as np
from test_results import STRENGTHS, _stimuli, _subject
from mindeye_core.results import ResultsWriter
from mindeye_core.errors import StorageError
try:
    with ResultsWriter(sys.argv[1], strengths=STRENGTHS, world="demo") as w:
        idx, _ = _stimuli(64)
        rng = np.random.default_rng(0)
        w.add_stimuli(idx, rng.integers(0, 256, (len(idx), 64, 64, 3), dtype=np.uint8))
        for k in range(40):
            w.add_subject(f"subj{k:02d}", **_subject(k, 64))
        w.finalize()
except StorageError as exc:
    print("STORAGE", exc)
    sys.exit(3)
"""


def _run(code: str, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, env=child_env())


@pytest.mark.parametrize("code", [FILL_DATASET, FILL_BUNDLE], ids=["dataset", "results_bundle"])
def test_full_disk_is_a_clear_error_and_frees_the_disk(tmpfs, code: str) -> None:
    """In a child process: the StorageError is reported, the partial folder removed, and the process ends
    normally (HDF5 never meets ENOSPC inside its chunk cache: streaming writers check the room first, and
    every staging folder keeps a space reserve for the closes of an aborted write)."""
    disk = tmpfs("2m")
    root = disk / "out"
    done = _run(code, root)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])  # not -11 / 139: no crash at exit
    assert "STORAGE out of disk space while writing" in done.stdout and "partial folder was removed" in done.stdout
    assert not root.exists() and leftovers(root) == []
    assert shutil.disk_usage(disk).used < 64 << 10  # the space is given back


@pytest.fixture(autouse=True)
def _stable_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the sub-commands these tests drive (others may be mid-edit in a shared tree)."""
    import mindeye_core.cli

    monkeypatch.setattr(mindeye_core.cli, "COMMAND_MODULES", ["mindeye_core.data.demo_cli", "mindeye_core.data.nsd"])


def test_nsd_conversion_on_a_full_disk_is_one_line(tmpfs, tmp_path: Path) -> None:
    from mindeye_core.data.nsd import NSD_VOXELS

    # 5 samples x 3 rows x 15,724 float16 voxels ~ 470 KB of betas for a 256 KB disk; no metadata: no pre-check.
    # In a child process: an HDF5 crash must not take the test session down with it.
    make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=2, n_vox=NSD_VOXELS, image_size=16, metadata=False)
    disk = tmpfs("256k")
    out = disk / "nsd"
    code = "import sys; from mindeye_core.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "nsd", "convert", "--source", str(tmp_path / "raw"), "--output",
                           str(out), "--no-progress"], capture_output=True, text=True, env=child_env())
    err = [line for line in done.stderr.splitlines() if "error:" in line or "Traceback" in line]
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert len(err) == 1 and "out of disk space" in err[0]
    assert not out.exists() and leftovers(out) == []


def test_demo_world_larger_than_the_free_space_is_refused_before_rendering(tmpfs) -> None:
    disk = tmpfs("1m")
    with pytest.raises(StorageError, match=r"not enough disk space for .*world: about .* MiB needed"):
        generate_demo_world(disk / "world", DemoWorldConfig.small(), progress=False)
    assert list(disk.iterdir()) == []


def test_read_only_destination_is_refused_at_the_start(tmpfs) -> None:
    disk = tmpfs("1m", read_only=True)
    from faultkit import write_dataset

    with pytest.raises(StorageError, match="read-only file system"):
        write_dataset(disk / "ds")


def test_cli_output_on_a_read_only_disk_fails_before_any_work(tmpfs, capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmpfs("1m", read_only=True)
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--small", "--out", str(disk / "world"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "read-only file system" in err


FILL_NEIGHBOURS = """
import sys
from pathlib import Path
import numpy as np
from test_results import STRENGTHS, _stimuli, _subject
from mindeye_core.results import ResultsWriter, open_results
from mindeye_core.errors import StorageError
root = Path(sys.argv[1])
with ResultsWriter(root, strengths=STRENGTHS, world="demo") as w:
    idx, _ = _stimuli(6)
    w.add_stimuli(idx, np.zeros((len(idx), 8, 8, 3), np.uint8))
    w.add_subject("subj01", **_subject(0, 6))
    w.finalize()
b = open_results(root)
n = b.subject("subj01").n_samples
rng = np.random.default_rng(0)
b.set_neighbours("subj01", np.zeros((n, 2), int), np.ones((n, 2), np.float32))
manifest = (root / "manifest.json").read_bytes()
(root.parent / "filler").write_bytes(b"x" * int(sys.argv[2]))
ids = rng.integers(0, 2**62, (n, 40000))  # ~ n x 320 KB of incompressible ids: more than the disk has left
scores = -np.sort(-rng.random((n, 40000)).astype(np.float32), axis=1)
try:
    b.set_neighbours("subj01", ids, scores)
except StorageError as exc:
    assert (root / "manifest.json").read_bytes() == manifest, "manifest changed"
    assert b.subject("subj01").neighbours().ids.shape == (n, 2), "previous neighbours lost"
    print("STORAGE", exc, sorted(p.name for p in root.iterdir()))
    sys.exit(3)
"""


def test_neighbours_on_a_full_disk_leave_the_bundle_as_it_was(tmpfs) -> None:
    """``ResultsBundle.set_neighbours`` writes into a published bundle: a disk too full for the new neighbours
    is refused before writing (a StorageError), the manifest and the previous neighbours stay, no temporary
    file is left, and the process exits normally."""
    disk = tmpfs("4m")
    root = disk / "bundle"
    done = subprocess.run([sys.executable, "-c", FILL_NEIGHBOURS, str(root), str(3 << 20)], capture_output=True,
                          text=True, env=child_env())
    assert done.returncode == 3, (done.returncode, done.stdout[-1000:], done.stderr[-2000:])
    assert "STORAGE not enough disk space for" in done.stdout and ".tmp" not in done.stdout
    assert len(list(root.glob("subj01_neighbours-*.h5"))) == 1 and not list(root.glob("*.tmp"))
