"""Real concurrent writers and real ``kill -9`` in the middle of every writer.

Two writers to one destination: the second is refused with the first one's pid and start time, and what is
published is entirely the first one's. A writer killed with SIGKILL at any point leaves the old artifact or
the new one (never neither, never a mix), and its stale lock and partial folder are taken over by the next
writer. Children pause at a chosen point by blocking on stdin (no sleeps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from faultkit import Child, dataset_seed, leftovers, write_dataset
from fake_nsd import make_fake_nsd

from mindeye_core.data.format import DatasetWriter, open_dataset
from mindeye_core.data.nsd import convert_nsd
from mindeye_core.errors import DataFormatError, DestinationLockedError
from mindeye_core.results import ResultsWriter, read_results_manifest
from mindeye_core.staging import lock_path, partial_path

HOLD_DATASET = """
from pathlib import Path
from faultkit import write_dataset
write_dataset(Path({root!r}), seed={seed}, overwrite={overwrite}, pause_mid_write=pause)
print("DONE", flush=True)
"""


def test_second_concurrent_dataset_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    child = Child(HOLD_DATASET.format(root=str(root), seed=7, overwrite=False))
    child.wait_for()
    with pytest.raises(DestinationLockedError, match=rf"being written by another process \(pid {child.pid} .*started 20"):
        write_dataset(root, seed=8, overwrite=True)
    child.go()
    assert dataset_seed(root) == 7 and leftovers(root) == []  # only the first writer's data, complete
    write_dataset(root, seed=8, overwrite=True)
    assert dataset_seed(root) == 8


def test_two_concurrent_nsd_conversions_never_publish_a_mix(tmp_path: Path) -> None:
    make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1, seed=1)
    make_fake_nsd(tmp_path / "raw2", n_train=2, n_val=1, n_test=1, seed=2)
    out = tmp_path / "nsd"
    child = Child(f"""
        import mindeye_core.data.nsd as nsd
        real = nsd.iter_shard
        def slow(path):
            for i, sample in enumerate(real(path)):
                if "test_subj01_0" in str(path) and i == 0:
                    pause()
                yield sample
        nsd.iter_shard = slow
        nsd.convert_nsd({str(tmp_path / "raw")!r}, {str(out)!r}, n_voxels={{1: 40}}, progress=False)
    """)
    child.wait_for()
    with pytest.raises(DestinationLockedError, match=f"pid {child.pid}"):
        convert_nsd(tmp_path / "raw2", out, n_voxels={1: 40}, overwrite=True, progress=False)
    child.go()
    ds = open_dataset(out)
    first = open_dataset(convert_nsd(tmp_path / "raw", tmp_path / "ref", n_voxels={1: 40}, progress=False))
    np.testing.assert_array_equal(ds.image_ids, first.image_ids)  # all from the first conversion
    np.testing.assert_array_equal(ds.subject("subj01").betas(slice(None)), first.subject("subj01").betas(slice(None)))


def test_stale_lock_of_a_killed_writer_is_taken_over(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    child = Child(HOLD_DATASET.format(root=str(root), seed=1, overwrite=False))
    child.wait_for()
    child.kill9()
    assert lock_path(root).is_file() and partial_path(root).is_dir()  # what the kill left
    assert json.loads(lock_path(root).read_text())["pid"] == child.pid
    with DatasetWriter(root, name="x", world="t") as w:
        assert w._staging.lock.took_over is not None and w._staging.lock.took_over["pid"] == child.pid
        w.abort()
    write_dataset(root, seed=3)
    assert dataset_seed(root) == 3 and leftovers(root) == []


def test_kill9_mid_overwrite_keeps_the_old_dataset(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", seed=0)
    child = Child(HOLD_DATASET.format(root=str(root), seed=1, overwrite=True))
    child.wait_for()
    child.kill9()
    assert dataset_seed(root) == 0
    write_dataset(root, seed=2, overwrite=True)
    assert dataset_seed(root) == 2 and leftovers(root) == []


@pytest.mark.parametrize("moment, expected", [("before", 0), ("after", 1)])
def test_kill9_at_the_swap_leaves_old_or_new_never_neither(tmp_path: Path, moment: str, expected: int) -> None:
    root = write_dataset(tmp_path / "ds", seed=0)
    child = Child(f"""
        from pathlib import Path
        import mindeye_core.staging as staging
        from faultkit import write_dataset
        real = staging.exchange
        def exchange(a, b):
            if {moment!r} == "before":
                pause()
            done = real(a, b)
            if {moment!r} == "after":
                pause()
            return done
        staging.exchange = exchange
        write_dataset(Path({str(root)!r}), seed=1, overwrite=True)
    """)
    child.wait_for()
    child.kill9()
    assert dataset_seed(root) == expected
    write_dataset(root, seed=2, overwrite=True)  # the leftovers (old copy / new partial, lock) are taken over
    assert dataset_seed(root) == 2 and leftovers(root) == []


def test_kill9_mid_results_bundle(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    child = Child(f"""
        from test_results import STRENGTHS, _stimuli, _subject
        from mindeye_core.results import ResultsWriter
        w = ResultsWriter({str(root)!r}, strengths=STRENGTHS, world="demo")
        w.add_stimuli(*_stimuli())
        w.add_subject("subj01", **_subject(1))
        pause()
        w.finalize()
    """)
    child.wait_for()
    child.kill9()
    with pytest.raises(DataFormatError, match="the write was interrupted"):
        read_results_manifest(root)
    with ResultsWriter(root, world="demo") as w:  # stale lock and partial taken over
        w.abort()
    assert leftovers(root) == []


def test_concurrent_results_writers(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    child = Child(f"""
        from mindeye_core.results import ResultsWriter
        w = ResultsWriter({str(root)!r}, world="demo")
        pause()
        w.abort()
    """)
    child.wait_for()
    with pytest.raises(DestinationLockedError, match=f"pid {child.pid}"):
        ResultsWriter(root, world="demo")
    child.go()
    assert leftovers(root) == []


def test_kill9_mid_nsd_conversion(tmp_path: Path) -> None:
    make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1)
    out = tmp_path / "nsd"
    child = Child(f"""
        import mindeye_core.data.nsd as nsd
        real = nsd.iter_shard
        def paused(path):
            for i, sample in enumerate(real(path)):
                if "val_subj01" in str(path):
                    pause()
                yield sample
        nsd.iter_shard = paused
        nsd.convert_nsd({str(tmp_path / "raw")!r}, {str(out)!r}, n_voxels={{1: 40}}, progress=False)
    """)
    child.wait_for()
    child.kill9()
    assert not out.exists() and partial_path(out).is_dir()
    convert_nsd(tmp_path / "raw", out, n_voxels={1: 40}, progress=False)
    assert open_dataset(out).n_images == 4 and leftovers(out) == []


def test_kill9_mid_demo_world(tmp_path: Path) -> None:
    root = tmp_path / "world"
    code = f"""
        import mindeye_core.data.demo.world as world
        real = world.simulate_subject
        def paused(config, s, *args):
            if s == 1:
                pause()
            return real(config, s, *args)
        world.simulate_subject = paused
        cfg = world.DemoWorldConfig.small(n_test_images=8, n_train_images=8, voxels=(40, 40), trials_per_session=12)
        world.generate_demo_world({str(root)!r}, cfg, progress=False)
    """
    child = Child(code)
    child.wait_for()
    child.kill9()
    assert not root.exists()
    from mindeye_core.data.demo import DemoWorldConfig, ensure_demo_world

    cfg = DemoWorldConfig.small(n_test_images=8, n_train_images=8, voxels=(40, 40), trials_per_session=12)
    _, generated = ensure_demo_world(root, cfg, progress=False)
    assert generated and open_dataset(root).subjects == ["subj01", "subj02"] and leftovers(root) == []


def test_kill9_mid_training_checkpoint_and_second_run_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    child = Child(f"""
        import torch
        import training.engine as engine
        engine._lock_run(engine.Path({str(out)!r}))
        t = engine.Trainer({str(out)!r}, device="cpu", progress=False)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt = t.accelerator.prepare(model, opt)
        t.save_checkpoint(1)
        real = engine.record_checksums
        def paused(folder):
            real(folder)
            pause()
        engine.record_checksums = paused
        t.save_checkpoint(2)
    """)
    child.wait_for()
    from training.engine import Trainer, _lock_run

    with pytest.raises(DestinationLockedError, match=r"training run folder .* is being written by another process") as err:
        _lock_run(out)
    assert f"pid {child.pid} " in str(err.value), (str(err.value), child.pid)
    child.kill9()
    ckpts = Trainer.checkpoints_in(out)
    assert [p.name for p in ckpts] == ["step_00000001"]  # the torn step 2 is not listed
    assert (ckpts[0] / "model.safetensors.sha256").is_file()
    _lock_run(out)  # the killed run's lock is stale: taken over


INDEX_CHILD = """
    import numpy as np
    from mindeye_core.retrieval.embedders import ModelInfo
    from mindeye_core.retrieval.index import KeyedImageSource, build_index

    def render(keys):
        return np.stack([np.full((8, 8, 3), int(k) % 251, np.uint8) for k in keys])

    class Embedder:
        info = ModelInfo("pixels", "d" * 64, "final", 4)
        calls = 0
        def encode(self, images):
            Embedder.calls += 1
            if Embedder.calls == 3:
                pause()  # two parts written, the third being embedded
            rng = np.random.default_rng(int(images[0, 0, 0, 0]))
            v = rng.standard_normal((len(images), 4)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    build_index({root!r}, KeyedImageSource(np.arange(40), render, name="grey"), embedder=Embedder(), chunk_size=8,
                progress=False)
"""


def test_kill9_mid_index_build_resumes_and_second_builder_refused(tmp_path: Path) -> None:
    """The retrieval index writer: a second builder is refused naming the first; after ``kill -9`` mid-build
    nothing opens as an index, the stale lock is taken over, and the next build resumes from the parts written."""
    from mindeye_core.retrieval.index import KeyedImageSource, build_index, open_index

    root = tmp_path / "index"
    child = Child(INDEX_CHILD.format(root=str(root)))
    child.wait_for()
    src = KeyedImageSource(np.arange(40), lambda k: np.stack([np.full((8, 8, 3), int(x) % 251, np.uint8) for x in k]),
                           name="grey")

    class Embedder:  # the same model as the child's
        from mindeye_core.retrieval.embedders import ModelInfo
        info = ModelInfo("pixels", "d" * 64, "final", 4)
        calls = 0

        def encode(self, images: np.ndarray) -> np.ndarray:
            Embedder.calls += 1
            rng = np.random.default_rng(int(images[0, 0, 0, 0]))
            v = rng.standard_normal((len(images), 4)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    with pytest.raises(DestinationLockedError, match=f"pid {child.pid}"):
        build_index(root, src, embedder=Embedder(), chunk_size=8, progress=False)
    child.kill9()
    with pytest.raises(DataFormatError, match="unfinished build"):
        open_index(root)
    parts = sorted(p.name for p in (root / "vectors").glob("part-*.ids.npy"))
    assert len(parts) == 2 and not list((root / "vectors").glob("*.tmp*"))
    res = build_index(root, src, embedder=Embedder(), chunk_size=8, progress=False)
    assert Embedder.calls == 3 and res.meta["n_items"] == 40  # only the 3 missing parts were embedded
    np.testing.assert_array_equal(open_index(root).ids, np.arange(40))
    assert not list(tmp_path.glob("*.lock")) and not list(root.glob("*.lock"))
