"""Writers never damage what they are pointed at: --overwrite only replaces an artifact of the same kind (or
nothing), never the run's source nor a folder above it; the old artifact stays until the new one is complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from faultkit import dataset_seed, leftovers, write_dataset
from fake_nsd import make_fake_nsd
from test_results import _write as write_bundle

from mindeye_core.data.demo import DemoWorldConfig, ensure_demo_world
from mindeye_core.data.format import DatasetWriter, open_dataset
from mindeye_core.data.nsd import convert_nsd
from mindeye_core.errors import DataFormatError, DestinationError
from mindeye_core.results import ResultsWriter, open_results
from mindeye_core.staging import MARKER_NAME, begin, partial_path, recover

TINY = DemoWorldConfig.small(n_test_images=8, n_train_images=8, voxels=(40, 40), trials_per_session=12)


def _user_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "thesis.tex").write_text("years of work")
    (root / "data").mkdir()
    (root / "data" / "raw.csv").write_text("1,2,3")
    return root


def test_overwrite_refuses_a_folder_of_user_files(tmp_path: Path) -> None:
    root = _user_folder(tmp_path / "project")
    with pytest.raises(DestinationError, match=r"refusing to overwrite .*project: it holds files that are not a "
                                               r"'mindeye-dataset' artifact"):
        write_dataset(root, overwrite=True)
    assert (root / "thesis.tex").read_text() == "years of work" and (root / "data" / "raw.csv").is_file()
    assert leftovers(root) == []


def test_overwrite_refuses_the_nsd_source_itself(tmp_path: Path) -> None:
    fake = make_fake_nsd(tmp_path / "raw", n_train=1, n_val=1, n_test=1)
    shard = fake.shard_path(1, "test", 0)
    with pytest.raises(DestinationError, match="it is the source"):
        convert_nsd(tmp_path / "raw", tmp_path / "raw", n_voxels={1: 10}, overwrite=True, progress=False)
    assert shard.is_file() and leftovers(tmp_path / "raw") == []


def test_overwrite_refuses_a_folder_above_the_source(tmp_path: Path) -> None:
    make_fake_nsd(tmp_path / "work" / "raw", n_train=1, n_val=1, n_test=1)
    with pytest.raises(DestinationError, match="it is a folder above the source"):
        convert_nsd(tmp_path / "work" / "raw", tmp_path / "work", n_voxels={1: 10}, overwrite=True, progress=False)
    assert (tmp_path / "work" / "raw" / "webdataset_avg_split").is_dir()


def test_dataset_overwrite_refuses_a_results_bundle(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    with pytest.raises(DestinationError, match="it holds a 'mindeye-results' artifact"):
        write_dataset(bundle, overwrite=True)
    assert open_results(bundle).subjects == ["subj01"]


def test_results_overwrite_refuses_a_dataset(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds")
    with pytest.raises(DestinationError, match="it holds a 'mindeye-dataset' artifact"):
        ResultsWriter(root, world="demo", overwrite=True)
    assert dataset_seed(root) == 0


def test_existing_dataset_without_overwrite_is_refused(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds")
    with pytest.raises(FileExistsError, match="mindeye-dataset folder already exists"):
        write_dataset(root, seed=1)
    assert dataset_seed(root) == 0 and leftovers(root) == []


def test_old_dataset_stays_until_the_new_one_is_complete(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", seed=0)
    seen: list[int] = []
    write_dataset(root, seed=1, overwrite=True, pause_mid_write=lambda: seen.append(dataset_seed(root)))
    assert seen == [0]  # mid-write, readers still get the complete old dataset
    assert dataset_seed(root) == 1 and leftovers(root) == []


def test_overwrite_replaces_a_partial_artifact_of_the_same_kind(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / MARKER_NAME).write_text(json.dumps({"_class": "mindeye-dataset", "pid": 1}))
    (root / "images.h5").write_bytes(b"half")
    write_dataset(root, overwrite=True)
    assert dataset_seed(root) == 0 and not (root / MARKER_NAME).exists()


def test_destination_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(DestinationError, match="is not a folder"):
        write_dataset(path, overwrite=True)
    assert path.read_text() == "keep me"


def test_failed_rewrite_keeps_the_old_dataset_and_releases_the_lock(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", seed=0)
    with pytest.raises(DataFormatError, match="NaN"):
        with DatasetWriter(root, name="x", world="t", overwrite=True) as w:
            w.append_images(np.zeros((2, 4, 4, 3), np.uint8))
            w.subject("s1", n_voxels=2).append(np.full((1, 2), np.nan), [0], [0], [0])
    assert dataset_seed(root) == 0 and leftovers(root) == []
    write_dataset(root, seed=2, overwrite=True)  # the lock was released
    assert dataset_seed(root) == 2


def test_foreign_staging_folder_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    other = partial_path(root)
    other.mkdir()
    (other / MARKER_NAME).write_text(json.dumps({"_class": "mindeye-results"}))
    with pytest.raises(DestinationError, match="is not a partial 'mindeye-dataset' write"):
        write_dataset(root)
    assert (other / MARKER_NAME).is_file() and not root.exists()


def test_interrupted_fallback_swap_is_recovered(tmp_path: Path) -> None:
    """Where renameat2 is unavailable the swap is two renames; a crash between them leaves <root>.old, which
    the next writer (or :func:`recover`) puts back: never neither."""
    root = write_dataset(tmp_path / "ds", seed=0)
    root.rename(root.with_name("ds.old"))
    assert recover(root) and dataset_seed(root) == 0 and leftovers(root) == []


def test_converted_checkpoint_overwrite_refuses_another_class(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"_class": "LowLevelModel", "_format_version": 1}))
    with pytest.raises(DestinationError, match="it holds a 'LowLevelModel' artifact"):
        begin(out, kind="MindEyeHighLevel", manifest="config.json", overwrite=True)
    assert (out / "config.json").is_file() and leftovers(out) == []


def test_demo_world_overwrite_refuses_a_user_folder_before_rendering(tmp_path: Path) -> None:
    root = _user_folder(tmp_path / "mydata")
    with pytest.raises(DestinationError, match="refusing to overwrite"):
        ensure_demo_world(root, TINY, progress=False, overwrite=True)
    assert (root / "thesis.tex").is_file() and leftovers(root) == []
    world, generated = ensure_demo_world(tmp_path / "world", TINY, progress=False)
    assert generated and open_dataset(world).subjects == ["subj01", "subj02"]
