"""NSD import: fake shards in the release layout -> canonical dataset; errors; CLI; download call."""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from mindeye_core.cli import main
from mindeye_core.data import FMRIDataset, open_dataset
from mindeye_core.data import nsd
from mindeye_core.data.nsd import convert_nsd, iter_shard
from mindeye_core.errors import DataFormatError, DestinationError, MindEyeError

sys.path.insert(0, str(Path(__file__).parent))
from fake_nsd import TINY_VOXELS, FakeSample, make_fake_nsd, sample_members, write_tar  # noqa: E402


def _convert(raw: Path, out: Path, subjects=(1,), **kw):
    kw.setdefault("n_voxels", TINY_VOXELS)
    kw.setdefault("progress", False)
    return convert_nsd(raw, out, subjects, **kw)


def _rewrite_shard(fake, subject, split, index, mutate):
    """Rewrite one shard after applying ``mutate(list[FakeSample])``."""
    rel = f"{split}/{split}_subj{subject:02d}_{index}.tar"
    samples = [s for s in fake.samples[subject] if s.shard == rel]
    samples = mutate(samples)
    write_tar(fake.root / "webdataset_avg_split" / rel, [m for s in samples for m in sample_members(s)])


def _assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()


# ------------------------------------------------------------------------------------------ contents
@pytest.mark.parametrize("pad", ["duplicate", "nan"])
def test_conversion_matches_what_went_in(tmp_path, pad):
    fake = make_fake_nsd(tmp_path / "raw", subjects=(1,), n_train=7, n_val=2, n_test=4, missing_fraction=0.4, pad=pad, seed=3)
    root = _convert(tmp_path / "raw", tmp_path / "ds")
    ds = open_dataset(root)
    samples = fake.samples[1]
    assert ds.world == "nsd" and ds.subjects == ["subj01"]
    assert ds.n_images == 7 + 2 + 4
    assert ds.image_size == (32, 32)
    row_of = {int(c): i for i, c in enumerate(ds.image_ids)}
    assert set(row_of) == {s.coco for s in samples}
    for s in samples:  # images = the JPEG decoded, bit for bit
        np.testing.assert_array_equal(ds.images(row_of[s.coco]), s.image)
    subj = ds.subject("subj01")
    assert subj.n_voxels == TINY_VOXELS[1]
    # trials in shard order, one per real repetition
    expected_betas = np.concatenate([s.real_betas for s in samples]).astype(np.float32)
    np.testing.assert_array_equal(subj.betas(slice(None)), expected_betas)
    exp_idx = np.concatenate([np.full(s.n_real, row_of[s.coco]) for s in samples])
    np.testing.assert_array_equal(subj.image_index, exp_idx)
    exp_split = np.concatenate([np.full(s.n_real, 1 if s.split == "test" else 0) for s in samples])
    np.testing.assert_array_equal(subj.split, exp_split)
    np.testing.assert_array_equal(subj.repetition, np.concatenate([np.arange(s.n_real) for s in samples]))
    trials = np.concatenate([s.real_trials for s in samples])
    np.testing.assert_array_equal(subj.session, trials // 750)
    with h5py.File(root / "subj01.h5", "r") as f:
        np.testing.assert_array_equal(f["nsd_trial"][:], trials)
        codes = {"train": 0, "val": 1, "test": 2}
        np.testing.assert_array_equal(f["nsd_split"][:], np.concatenate([np.full(s.n_real, codes[s.split]) for s in samples]))
        assert f["betas"].dtype == np.float16  # as in the shards
    meta = ds.manifest["subjects"]["subj01"]
    assert meta["n_train_images"] == 9 and meta["n_test_images"] == 4
    n_padded = sum(3 - s.n_real for s in samples)
    assert n_padded > 0
    info = ds.manifest["metadata"]["subjects"]["subj01"]
    dropped = info["duplicate_rows_dropped"] if pad == "duplicate" else info["missing_rows_dropped"]
    assert dropped == n_padded
    assert info["num_uniques_mismatches"] == 0
    assert info["samples"] == {"train": 7, "val": 2, "test": 4}


def test_test_averaging_matches_real_repetitions(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=3, n_val=1, n_test=5, missing_fraction=0.5, seed=1)
    root = _convert(tmp_path / "raw", tmp_path / "ds")
    ds = open_dataset(root)
    row_of = {int(c): i for i, c in enumerate(ds.image_ids)}
    avg, rows = ds.subject("subj01").averaged("test")
    tests = [s for s in fake.samples[1] if s.split == "test"]
    assert sorted(rows.tolist()) == sorted(row_of[s.coco] for s in tests)
    for s in tests:
        i = int(np.flatnonzero(rows == row_of[s.coco])[0])
        np.testing.assert_allclose(avg[i], s.real_betas.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    single = FMRIDataset(ds, "subj01", "test", test_mode="single", return_images=False)
    assert len(single) == sum(s.n_real for s in tests)
    averaged = FMRIDataset(ds, "subj01", "test", return_images=True)
    assert len(averaged) == 5
    item = averaged[0]
    assert item["voxels"].shape == (TINY_VOXELS[1],) and item["image"].shape == (3, 32, 32)


def test_shared_test_images_deduplicated_across_subjects(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", subjects=(1, 2), n_train=4, n_val=1, n_test=3)
    root = _convert(tmp_path / "raw", tmp_path / "ds", subjects=(1, 2))
    ds = open_dataset(root)
    assert ds.subjects == ["subj01", "subj02"]
    assert ds.n_images == 2 * (4 + 1) + 3  # test images stored once
    assert len(set(ds.image_ids.tolist())) == ds.n_images
    t1 = set(ds.subject("subj01").images("test").tolist())
    t2 = set(ds.subject("subj02").images("test").tolist())
    assert t1 == t2 and len(t1) == 3
    assert not set(ds.subject("subj01").images("train").tolist()) & set(ds.subject("subj02").images("train").tolist())
    assert ds.subject("subj02").n_voxels == TINY_VOXELS[2]
    # subject 2's betas are its own
    s2 = fake.samples[2]
    np.testing.assert_array_equal(
        ds.subject("subj02").betas(slice(None)), np.concatenate([s.real_betas for s in s2]).astype(np.float32)
    )


def test_image_resize_and_betas_dtype(tmp_path):
    make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=2, image_size=24)
    root = _convert(tmp_path / "raw", tmp_path / "ds", image_size=16, betas_dtype="float32")
    ds = open_dataset(root)
    assert ds.image_size == (16, 16)
    assert ds.manifest["betas_dtype"] == "float32"
    assert ds.manifest["metadata"]["source_image_size"] == [24, 24]
    assert ds.manifest["metadata"]["resized_to"] == 16


def test_real_voxel_counts_are_the_default(tmp_path):
    make_fake_nsd(tmp_path / "raw", subjects=(7,), n_train=1, n_val=1, n_test=1, n_vox=nsd.NSD_VOXELS, image_size=16)
    root = convert_nsd(tmp_path / "raw", tmp_path / "ds", (7,), progress=False)
    assert open_dataset(root).subject("subj07").n_voxels == 12682


def test_duplicate_coco_in_train_continues_repetitions(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1, missing_fraction=0.0, seed=2)
    s0 = fake.samples[1][0]

    def add_copy(samples):  # the val shard also holds the first training image (new repetitions)
        extra = FakeSample("extra", samples[0].shard, "val", s0.coco, s0.betas[::-1] + 1, 3, s0.trial, s0.jpg, s0.image)
        return samples + [extra]

    _rewrite_shard(fake, 1, "val", 0, add_copy)
    root = _convert(tmp_path / "raw", tmp_path / "ds", check_totals=False)
    subj = open_dataset(root).subject("subj01")
    row = int(np.flatnonzero(open_dataset(root).image_ids == s0.coco)[0])
    np.testing.assert_array_equal(subj.repetition[subj.image_index == row], np.arange(6))


# ---------------------------------------------------------------------------------------------- errors
def test_missing_shard_is_named(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1)
    fake.shard_path(1, "train", 5).unlink()
    with pytest.raises(DataFormatError, match=r"missing NSD shard .*train_subj01_5\.tar"):
        _convert(tmp_path / "raw", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


def test_corrupt_tar_is_named(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=2)
    fake.shard_path(1, "test", 1).write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(DataFormatError, match=r"corrupt NSD shard .*test_subj01_1\.tar"):
        _convert(tmp_path / "raw", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


@pytest.mark.parametrize("cut", [0.5, 1.0])
def test_truncated_tar_is_named(tmp_path, cut):
    fake = make_fake_nsd(tmp_path / "raw", n_train=18, n_val=3, n_test=2)
    path = fake.shard_path(1, "val", 0)
    data = path.read_bytes()
    # cut inside a member's data (0.5) or exactly at a member boundary, dropping the end marker (1.0)
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    last = members[-1]
    end = last.offset_data + ((last.size + 511) // 512) * 512
    path.write_bytes(data[: int(members[len(members) // 2].offset_data + 100)] if cut == 0.5 else data[:end])
    with pytest.raises(DataFormatError, match=r"(corrupt|truncated).*val_subj01_0\.tar|val_subj01_0\.tar.*(corrupt|truncated)"):
        _convert(tmp_path / "raw", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


def test_wrong_voxel_count(tmp_path):
    make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1, n_vox=50)
    with pytest.raises(DataFormatError, match=r"expected 40 voxels, got 50"):
        _convert(tmp_path / "raw", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_betas_name_the_sample(tmp_path, bad):
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=3, missing_fraction=0.0)
    target = [s for s in fake.samples[1] if s.shard == "test/test_subj01_1.tar"][0]

    def poison(samples):
        for s in samples:
            if s.key == target.key:
                s.betas = s.betas.copy()
                s.betas[1, 3] = bad
        return samples

    _rewrite_shard(fake, 1, "test", 1, poison)
    with pytest.raises(DataFormatError, match=rf"sample '{target.key}' of shard .*test_subj01_1\.tar: repetition 1 has 1 NaN/inf"):
        _convert(tmp_path / "raw", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


@pytest.mark.parametrize("coco", [73000, -1])
def test_image_index_out_of_range(tmp_path, coco):
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1)

    def bad(samples):
        samples[0].coco = coco
        return samples

    _rewrite_shard(fake, 1, "val", 0, bad)
    with pytest.raises(DataFormatError, match=rf"image index \(coco73k\) {coco} out of range"):
        _convert(tmp_path / "raw", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1)
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        _convert(tmp_path / "raw", out)
    assert (out / "keep.txt").exists()
    # issue 16: --overwrite only replaces a dataset (or an empty folder), never a folder holding the user's files
    with pytest.raises(DestinationError, match="refusing to overwrite"):
        _convert(tmp_path / "raw", out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    _convert(tmp_path / "raw", out, overwrite=True)
    assert open_dataset(out).n_images == 4
    _convert(tmp_path / "raw", out, overwrite=True)  # a dataset is replaced
    assert open_dataset(out).n_images == 4


def test_failed_overwrite_keeps_old_dataset(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1)
    out = _convert(tmp_path / "raw", tmp_path / "ds")
    fake.shard_path(1, "test", 0).write_bytes(b"garbage" * 200)
    with pytest.raises(DataFormatError, match="corrupt NSD shard"):
        _convert(tmp_path / "raw", out, overwrite=True)
    assert open_dataset(out).n_images == 4  # the previous complete dataset is untouched
    assert not out.with_name("ds.partial").exists()


def test_metadata_totals_mismatch(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=4, n_val=1, n_test=1)
    _rewrite_shard(fake, 1, "train", 2, lambda s: [])  # a shard lost its samples
    with pytest.raises(DataFormatError, match=r"subj01: 3 train samples in the shards but .*metadata_subj01\.json lists 4"):
        _convert(tmp_path / "raw", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


def test_missing_member_and_image_size_mismatch(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1)

    def drop_coco(samples):
        s = samples[0]
        members = [m for m in sample_members(s) if not m[0].endswith("coco73k.npy")]
        write_tar(fake.shard_path(1, "val", 0), members)
        return None

    drop_coco([s for s in fake.samples[1] if s.split == "val"])
    with pytest.raises(DataFormatError, match=r"val_subj01_0\.tar has no coco73k\.npy member"):
        _convert(tmp_path / "raw", tmp_path / "ds")

    fake = make_fake_nsd(tmp_path / "raw2", n_train=2, n_val=1, n_test=1, image_size=32)
    other = make_fake_nsd(tmp_path / "raw3", n_train=0, n_val=0, n_test=1, image_size=20)
    src = other.samples[1][0]

    def swap(samples):
        samples[0].jpg, samples[0].image = src.jpg, src.image
        return samples

    _rewrite_shard(fake, 1, "test", 0, swap)
    with pytest.raises(DataFormatError, match=r"image is 20x20, earlier images are 32x32; pass image_size"):
        _convert(tmp_path / "raw2", tmp_path / "ds")
    _assert_no_output(tmp_path / "ds")


def test_unknown_subject_and_num_uniques_mismatch(tmp_path):
    with pytest.raises(MindEyeError, match=r"subject\(s\) \[3\] not in MindEye's release"):
        nsd.allow_patterns([3])
    fake = make_fake_nsd(tmp_path / "raw", n_train=2, n_val=1, n_test=1, missing_fraction=0.0)

    def lie(samples):
        samples[0].n_real = 2  # num_uniques says 2, but 3 distinct rows are present
        return samples

    _rewrite_shard(fake, 1, "val", 0, lie)
    root = _convert(tmp_path / "raw", tmp_path / "ds")
    info = open_dataset(root).manifest["metadata"]["subjects"]["subj01"]
    assert info["num_uniques_mismatches"] == 1
    assert open_dataset(root).subject("subj01").n_trials == 4 * 3  # no row dropped or invented
    # trusting num_uniques keeps its first rows
    root = _convert(tmp_path / "raw", tmp_path / "ds2", repetitions="num_uniques")
    subj = open_dataset(root).subject("subj01")
    assert subj.n_trials == 4 * 3 - 1
    val = [s for s in fake.samples[1] if s.split == "val"][0]
    row = int(np.flatnonzero(open_dataset(root).image_ids == val.coco)[0])
    np.testing.assert_array_equal(subj.betas(np.flatnonzero(subj.image_index == row)), val.betas[:2].astype(np.float32))
    with pytest.raises(MindEyeError, match="repetitions must be 'distinct' or 'num_uniques'"):
        _convert(tmp_path / "raw", tmp_path / "ds3", repetitions="all")
    _assert_no_output(tmp_path / "ds3")


def test_num_uniques_mode_with_nan_padding_and_bad_values(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=4, n_val=1, n_test=3, missing_fraction=0.5, pad="nan", seed=5)
    root = _convert(tmp_path / "raw", tmp_path / "ds", repetitions="num_uniques")
    subj = open_dataset(root).subject("subj01")
    np.testing.assert_array_equal(
        subj.betas(slice(None)), np.concatenate([s.real_betas for s in fake.samples[1]]).astype(np.float32)
    )

    def bad_count(samples):
        samples[0].n_real = 0
        return samples

    _rewrite_shard(fake, 1, "val", 0, bad_count)
    with pytest.raises(DataFormatError, match=r"val_subj01_0\.tar: num_uniques.npy missing or out of range 1..3 \(0\)"):
        _convert(tmp_path / "raw", tmp_path / "ds2", repetitions="num_uniques")


def test_iter_shard_groups_members_and_skips_wholebrain(tmp_path):
    fake = make_fake_nsd(tmp_path / "raw", n_train=0, n_val=3, n_test=1)
    samples = list(iter_shard(fake.shard_path(1, "val", 0)))
    assert [s.key for s in samples] == [s.key for s in fake.samples[1] if s.split == "val"]
    assert set(samples[0].members) == {"jpg", "nsdgeneral.npy", "trial.npy", "coco73k.npy", "num_uniques.npy"}


# -------------------------------------------------------------------------------------- CLI + download
@pytest.fixture(autouse=True)
def _only_nsd_command(monkeypatch):
    """Build `mindeye` with only this sub-command: other commands' modules may not exist yet."""
    import mindeye_core.cli

    monkeypatch.setattr(mindeye_core.cli, "COMMAND_MODULES", ["mindeye_core.data.nsd"])


def test_cli_convert_and_import_from_local_source(tmp_path, capsys):
    make_fake_nsd(tmp_path / "raw", subjects=(1,), n_train=2, n_val=1, n_test=2, n_vox=nsd.NSD_VOXELS, image_size=16)
    out = tmp_path / "ds"
    rc = main(["nsd", "convert", "--source", str(tmp_path / "raw"), "--subjects", "1", "--output", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["subjects"]["subj01"]["n_voxels"] == 15724 and summary["n_images"] == 5
    # existing output -> clean error, exit code 1
    rc = main(["nsd", "import", "--source", str(tmp_path / "raw"), "--output", str(out), "--no-progress"])
    assert rc == 1 and "already exists" in capsys.readouterr().err
    rc = main(["nsd", "import", "--source", str(tmp_path / "raw"), "--output", str(out), "--overwrite", "--no-progress",
               "--image-size", "8", "--repetitions", "num_uniques", "--betas-dtype", "float32"])
    assert rc == 0 and open_dataset(out).image_size == (8, 8)
    assert open_dataset(out).manifest["metadata"]["repetitions_rule"] == "num_uniques"
    assert open_dataset(out).manifest["betas_dtype"] == "float32"


def test_cli_convert_default_paths_use_data_dir(tmp_path, monkeypatch):
    raw = nsd.default_raw_dir()
    assert raw == Path(os.environ["MINDEYE_DATA"]) / "nsd" / "raw"  # sandboxed per test by conftest
    make_fake_nsd(raw, subjects=(1,), n_train=1, n_val=1, n_test=1, n_vox=nsd.NSD_VOXELS, image_size=16)
    assert main(["nsd", "convert", "--no-progress"]) == 0
    assert open_dataset(nsd.default_dataset_dir()).subjects == ["subj01"]
    assert nsd.default_dataset_dir().parent == raw.parent


def test_download_calls_snapshot_download_with_exact_patterns(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        make_fake_nsd(kwargs["local_dir"], subjects=(2, 5), n_train=1, n_val=1, n_test=1, image_size=16)
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    raw = nsd.download_nsd([2, 5], tmp_path / "raw", max_workers=3)
    assert raw == tmp_path / "raw"
    (call,) = calls
    assert call["repo_id"] == "pscotti/naturalscenesdataset" and call["repo_type"] == "dataset"
    assert call["max_workers"] == 3 and Path(call["local_dir"]) == tmp_path / "raw"
    expected = set()
    for s in ("subj02", "subj05"):
        expected |= {f"webdataset_avg_split/train/train_{s}_{i}.tar" for i in range(18)}
        expected |= {f"webdataset_avg_split/val/val_{s}_0.tar", f"webdataset_avg_split/metadata_{s}.json"}
        expected |= {f"webdataset_avg_split/test/test_{s}_{i}.tar" for i in range(2)}
    assert set(call["allow_patterns"]) == expected and len(call["allow_patterns"]) == 2 * 22


def test_download_reports_missing_files_and_cli_download(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or str(kw["local_dir"]))
    with pytest.raises(DataFormatError, match=r"missing NSD shard .*train_subj01_0\.tar"):
        nsd.download_nsd([1], tmp_path / "raw")
    rc = main(["nsd", "download", "--subjects", "1", "--raw-dir", str(tmp_path / "raw"), "--max-workers", "2"])
    assert rc == 1 and "missing NSD shard" in capsys.readouterr().err
    assert calls[-1]["max_workers"] == 2
    # import without --source downloads first, into --raw-dir
    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda **kw: make_fake_nsd(kw["local_dir"], n_train=1, n_val=1, n_test=1, n_vox=nsd.NSD_VOXELS, image_size=16) and str(kw["local_dir"]),
    )
    rc = main(["nsd", "import", "--raw-dir", str(tmp_path / "raw"), "--output", str(tmp_path / "ds"), "--no-progress"])
    assert rc == 0 and open_dataset(tmp_path / "ds").n_images == 3


def test_conversion_streams_one_shard_at_a_time_in_release_order(tmp_path, monkeypatch):
    make_fake_nsd(tmp_path / "raw", subjects=(1, 2), n_train=3, n_val=1, n_test=2)
    events = []
    real_iter = nsd.iter_shard

    def spy(path):
        events.append(("open", Path(path).name))
        yield from real_iter(path)
        events.append(("done", Path(path).name))

    monkeypatch.setattr(nsd, "iter_shard", spy)
    _convert(tmp_path / "raw", tmp_path / "ds", subjects=(1, 2), betas_dtype="float16")
    opened = [name for kind, name in events if kind == "open"]
    expected = [Path(p).name for s in (1, 2) for p, _ in nsd.shard_files(s)]
    assert opened == expected
    for i in range(0, len(events), 2):  # each shard is exhausted before the next one is opened
        assert events[i][0] == "open" and events[i + 1] == ("done", events[i][1])
