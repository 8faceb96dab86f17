"""Canonical dataset format, streaming reader, torch Dataset and NSD-definition noise ceilings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mindeye_core.data import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    CanonicalDataset,
    DatasetWriter,
    FMRIDataset,
    make_dataloader,
    ncsnr,
    noise_ceiling,
    open_dataset,
    read_manifest,
)
from mindeye_core.data.format import FORMAT_VERSION
from mindeye_core.errors import DataFormatError


def _toy(rng, n_images=10, n_test=4, reps=3, n_vox=7, size=6):
    """Images + one subject: train images shown once or twice, test images ``reps`` times (shuffled)."""
    images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    idx, split, rep = [], [], []
    for i in range(n_images):
        is_test = i >= n_images - n_test
        k = reps if is_test else 1 + i % 2
        idx += [i] * k
        split += [SPLIT_TEST if is_test else SPLIT_TRAIN] * k
        rep += list(range(k))
    order = rng.permutation(len(idx))
    idx, split, rep = (np.asarray(a)[order] for a in (idx, split, rep))
    betas = rng.standard_normal((len(idx), n_vox)).astype(np.float32)
    return images, betas, idx, split, rep


def _write(root, images, subjects, *, captions=None, ids=None, batches=1, dtype=np.float32):
    with DatasetWriter(root, name="toy", world="test", betas_dtype=dtype) as w:
        for part in np.array_split(np.arange(len(images)), batches):
            w.append_images(
                images[part],
                image_ids=None if ids is None else ids[part],
                captions=None if captions is None else [captions[i] for i in part],
            )
        for name, (betas, idx, split, rep, *session) in subjects.items():
            s = w.subject(name, n_voxels=betas.shape[1])
            for part in np.array_split(np.arange(len(idx)), batches):
                s.append(betas[part], idx[part], split[part], rep[part], session[0][part] if session else None)
        return w.finalize(metadata={"seed": 1})


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_everything(tmp_path):
    rng = np.random.default_rng(0)
    images, betas, idx, split, rep = _toy(rng)
    betas2 = rng.standard_normal((5, 3)).astype(np.float32)
    caps = [f"image {i} ünïcode" for i in range(len(images))]
    ids = np.arange(100, 100 + len(images)) * 7
    session = (np.arange(len(idx)) // 5).astype(np.int16)
    root = _write(
        tmp_path / "ds",
        images,
        {"subj01": (betas, idx, split, rep, session), "s-2": (betas2, np.arange(5), np.zeros(5, int), np.zeros(5, int))},
        captions=caps,
        ids=ids,
    )
    assert root == tmp_path / "ds" and not (tmp_path / "ds.partial").exists()
    ds = open_dataset(root)
    assert ds.name == "toy" and ds.world == "test" and ds.subjects == ["s-2", "subj01"]
    assert ds.n_images == 10 and ds.image_size == (6, 6)
    np.testing.assert_array_equal(ds.images(slice(None)), images)
    np.testing.assert_array_equal(ds.image_ids, ids)
    assert ds.captions == caps
    s = ds.subject("subj01")
    np.testing.assert_array_equal(s.betas(slice(None)), betas)
    np.testing.assert_array_equal(s.image_index, idx)
    np.testing.assert_array_equal(s.split, split)
    np.testing.assert_array_equal(s.repetition, rep)
    np.testing.assert_array_equal(s.session, session)
    np.testing.assert_array_equal(ds.subject("s-2").session, -np.ones(5))
    m = ds.manifest
    assert m["name"] == "toy" and m["metadata"] == {"seed": 1}
    sm = m["subjects"]["subj01"]
    assert sm["n_trials"] == len(idx) and sm["n_test_trials"] == 12 and sm["n_test_images"] == 4
    assert sm["n_train_images"] == 6 and sm["max_repetitions"] == 3 and sm["n_voxels"] == 7
    assert ds.summary()["subjects"]["subj01"]["n_trials"] == len(idx)
    assert "subj01" in repr(ds)
    with pytest.raises(KeyError, match=r"'nope' not in dataset .*available: s-2, subj01"):
        ds.subject("nope")
    ds.close()


def test_streaming_appends_equal_single_write(tmp_path):
    rng = np.random.default_rng(1)
    images, betas, idx, split, rep = _toy(rng, n_images=12)
    a = open_dataset(_write(tmp_path / "a", images, {"x": (betas, idx, split, rep)}))
    b = open_dataset(_write(tmp_path / "b", images, {"x": (betas, idx, split, rep)}, batches=5))
    np.testing.assert_array_equal(a.images(slice(None)), b.images(slice(None)))
    np.testing.assert_array_equal(a.subject("x").betas(slice(None)), b.subject("x").betas(slice(None)))
    np.testing.assert_array_equal(a.image_ids, np.arange(12))  # default ids: running index across batches
    np.testing.assert_array_equal(b.image_ids, np.arange(12))
    assert a.captions is None
    starts = [start for start, _ in b.iter_images(batch_size=5)]
    assert starts == [0, 5, 10]
    np.testing.assert_array_equal(np.concatenate([im for _, im in b.iter_images(5)]), images)


def test_float16_storage(tmp_path):
    rng = np.random.default_rng(2)
    images, betas, idx, split, rep = _toy(rng)
    ds = open_dataset(_write(tmp_path / "h", images, {"x": (betas, idx, split, rep)}, dtype=np.float16))
    assert ds.manifest["betas_dtype"] == "float16"
    out = ds.subject("x").betas(slice(None))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, betas.astype(np.float16).astype(np.float32))


def test_float16_overflow_is_an_error(tmp_path):
    rng = np.random.default_rng(2)
    images, betas, idx, split, rep = _toy(rng)
    betas[3, 2] = 1e6  # finite in float32, inf in float16
    with pytest.raises(DataFormatError, match=r"overflow to NaN/inf when stored as float16 \(first in trial 3"):
        _write(tmp_path / "h", images, {"x": (betas, idx, split, rep)}, dtype=np.float16)
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.partial").exists()


def test_reader_indexing_any_order(tmp_path):
    rng = np.random.default_rng(3)
    images, betas, idx, split, rep = _toy(rng)
    ds = open_dataset(_write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)}))
    s = ds.subject("x")
    sel = np.array([5, 1, 5, 0, 9])
    np.testing.assert_array_equal(s.betas(sel), betas[sel])
    np.testing.assert_array_equal(s.betas(4), betas[4])
    assert s.betas(np.array([], int)).shape == (0, 7)
    np.testing.assert_array_equal(ds.images(np.array([3, 0, 3])), images[[3, 0, 3]])
    np.testing.assert_array_equal(ds.images(2), images[2])
    assert ds.images(np.array([], int)).shape == (0, 6, 6, 3)
    with pytest.raises(IndexError, match="out of range for 10 images"):
        ds.images(10)
    with pytest.raises(IndexError, match="out of range"):
        ds.images(np.array([0, -1]))
    np.testing.assert_array_equal(s.trials("test"), np.flatnonzero(split == SPLIT_TEST))
    np.testing.assert_array_equal(s.images("train"), np.arange(6))


def test_averaged_matches_brute_force(tmp_path):
    rng = np.random.default_rng(4)
    images, betas, idx, split, rep = _toy(rng, n_images=30, n_test=12)
    ds = open_dataset(_write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)}))
    for which, code in (("test", SPLIT_TEST), ("train", SPLIT_TRAIN)):
        avg, rows = ds.subject("x").averaged(which)
        expected_rows = sorted(set(idx[split == code].tolist()))
        assert rows.tolist() == expected_rows
        for r, image in enumerate(expected_rows):
            trials = [t for t in range(len(idx)) if idx[t] == image and split[t] == code]
            np.testing.assert_allclose(avg[r], np.mean(betas[trials].astype(np.float64), axis=0), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------ torch data
def test_torch_dataset_modes(tmp_path):
    rng = np.random.default_rng(5)
    images, betas, idx, split, rep = _toy(rng)
    root = _write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)})
    train = FMRIDataset(root, "x", "train")
    n_train = int((split == SPLIT_TRAIN).sum())
    assert len(train) == n_train and train.n_voxels == 7
    item = train[0]
    t0 = int(np.flatnonzero(split == SPLIT_TRAIN)[0])
    assert item["trial"] == t0 and item["image_index"] == idx[t0]
    torch.testing.assert_close(item["voxels"], torch.from_numpy(betas[t0]))
    torch.testing.assert_close(item["image"], torch.from_numpy(images[idx[t0]]).permute(2, 0, 1).float() / 255)
    single = FMRIDataset(root, "x", "test", test_mode="single", return_images=False)
    assert len(single) == 12 and "image" not in single[0]
    avg = FMRIDataset(root, "x", "test")
    assert len(avg) == 4 and avg[0]["trial"] == -1
    a, rows = open_dataset(root).subject("x").averaged("test")
    torch.testing.assert_close(avg[1]["voxels"], torch.from_numpy(a[1]))
    with pytest.raises(IndexError):
        avg[4]
    with pytest.raises(ValueError, match="split must be"):
        FMRIDataset(root, "x", "val")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_mode"):
        FMRIDataset(root, "x", "test", test_mode="median")  # type: ignore[arg-type]


def test_dataloader_batches_and_seeded_shuffle(tmp_path):
    rng = np.random.default_rng(6)
    images, betas, idx, split, rep = _toy(rng, n_images=20, n_test=4)
    root = _write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)})
    dl = make_dataloader(root, "x", "train", batch_size=4, seed=3)
    batch = next(iter(dl))
    assert batch["voxels"].shape == (4, 7) and batch["image"].shape == (4, 3, 6, 6)
    order1 = torch.cat([b["trial"] for b in make_dataloader(root, "x", batch_size=4, seed=3, return_images=False)])
    order2 = torch.cat([b["trial"] for b in make_dataloader(root, "x", batch_size=4, seed=3, return_images=False)])
    assert torch.equal(order1, order2)
    assert sorted(order1.tolist()) == np.flatnonzero(split == SPLIT_TRAIN).tolist()
    test = torch.cat([b["image_index"] for b in make_dataloader(root, "x", "test", batch_size=3)])
    assert test.tolist() == sorted(set(idx[split == SPLIT_TEST].tolist()))  # not shuffled


def test_dataloader_worker_reopens_files(tmp_path):
    rng = np.random.default_rng(7)
    images, betas, idx, split, rep = _toy(rng)
    root = _write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)})
    ds = FMRIDataset(root, "x", "train")
    ds[0]  # opens h5 handles in the parent
    dl = make_dataloader(root, "x", "train", batch_size=64, shuffle=False, num_workers=1)
    (batch,) = list(dl)
    torch.testing.assert_close(batch["voxels"], torch.from_numpy(betas[split == SPLIT_TRAIN]))


# ------------------------------------------------------------------------------------------ validation
def test_writer_validation_errors(tmp_path):
    rng = np.random.default_rng(8)
    img = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    with DatasetWriter(tmp_path / "a", name="a", world="t") as w:
        with pytest.raises(DataFormatError, match=r"uint8 \(n, H, W, 3\)"):
            w.append_images(img.astype(np.float32))
        w.append_images(img, captions=["a", "b", "c"])
        with pytest.raises(DataFormatError, match="differs from earlier images"):
            w.append_images(np.zeros((1, 5, 4, 3), np.uint8), captions=["d"])
        with pytest.raises(DataFormatError, match="captions for every batch"):
            w.append_images(img)
        with pytest.raises(DataFormatError, match="2 captions for 3 images"):
            w.append_images(img, captions=["x", "y"])
        with pytest.raises(DataFormatError, match=r"image_ids must have shape \(3,\)"):
            w.append_images(img, captions=["x", "y", "z"], image_ids=np.arange(2))
        with pytest.raises(DataFormatError, match="invalid subject name"):
            w.subject("a/b", n_voxels=3)
        s = w.subject("s", n_voxels=3)
        with pytest.raises(DataFormatError, match=r"betas must be \(trials, 3 voxels\), got shape \(2, 4\)"):
            s.append(np.zeros((2, 4)), [0, 1], [0, 0], [0, 0])
        bad = np.zeros((2, 3))
        bad[1, 2] = np.nan
        with pytest.raises(DataFormatError, match=r"1 NaN/inf values \(first in trial 1\)"):
            s.append(bad, [0, 1], [0, 0], [0, 0])
        with pytest.raises(DataFormatError, match=r"unknown split labels \['val'\]"):
            s.append(np.zeros((2, 3)), [0, 1], ["train", "val"], [0, 0])
        with pytest.raises(DataFormatError, match="split codes must be 0"):
            s.append(np.zeros((2, 3)), [0, 1], [0, 2], [0, 0])
        with pytest.raises(DataFormatError, match="negative image index"):
            s.append(np.zeros((2, 3)), [0, -1], [0, 0], [0, 0])
        with pytest.raises(DataFormatError, match=r"image_index must have shape \(2,\)"):
            s.append(np.zeros((2, 3)), [0], [0, 0], [0, 0])
        with pytest.raises(DataFormatError, match="started with 3 voxels, now 4"):
            w.subject("s", n_voxels=4)
        s.append(np.ones((2, 3)), [0, 1], ["train", "test"], [0, 0])  # string labels work
        assert w.subject("s", n_voxels=3).n_trials == 2
        w.finalize()
    ds = open_dataset(tmp_path / "a")
    np.testing.assert_array_equal(ds.subject("s").split, [SPLIT_TRAIN, SPLIT_TEST])


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_images", "at least one image"),
        ("no_subjects", "at least one subject"),
        ("empty_subject", "subject e has no trials"),
        ("index_out_of_range", r"subject s: image index 3 out of range for 3 images"),
        ("train_test_overlap", r"subject s: 1 images appear in both train and test \(e.g. 1\)"),
    ],
)
def test_finalize_validation_leaves_nothing(tmp_path, case, message):
    img = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(DataFormatError, match=message):
        with DatasetWriter(tmp_path / "d", name="d", world="t") as w:
            if case != "no_images":
                w.append_images(img)
            if case == "empty_subject":
                w.subject("e", n_voxels=2)
            elif case == "index_out_of_range":
                w.subject("s", n_voxels=2).append(np.zeros((2, 2)), [0, 3], [0, 1], [0, 0])
            elif case == "train_test_overlap":
                w.subject("s", n_voxels=2).append(np.zeros((2, 2)), [1, 1], [0, 1], [0, 1])
            elif case == "no_images":
                w.subject("s", n_voxels=2).append(np.zeros((1, 2)), [0], [0], [0])
            w.finalize()
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()


# ------------------------------------------------------------------------------------- atomic writes
def test_interrupted_write_leaves_no_dataset(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(root, name="d", world="t") as w:
            w.append_images(np.zeros((2, 4, 4, 3), np.uint8))
            assert (tmp_path / "ds.partial" / "images.h5").exists()
            assert not root.exists()
            raise RuntimeError("boom")
    assert not root.exists() and not (tmp_path / "ds.partial").exists()


def test_crashed_partial_is_not_a_dataset_and_is_replaced(tmp_path):
    root = tmp_path / "ds"
    partial = tmp_path / "ds.partial"
    partial.mkdir()
    (partial / "images.h5").write_bytes(b"half written")
    # a folder without manifest (e.g. a crashed run renamed by hand) is refused
    partial.rename(root)
    with pytest.raises(DataFormatError, match=r"not a complete dataset: missing manifest.json \(an interrupted write"):
        open_dataset(root)
    root.rename(partial)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        open_dataset(root)
    # a new writer discards the stale partial folder
    rng = np.random.default_rng(9)
    images, betas, idx, split, rep = _toy(rng)
    _write(root, images, {"x": (betas, idx, split, rep)})
    assert open_dataset(root).n_images == 10 and not partial.exists()


def test_existing_dataset_needs_overwrite_and_survives_failed_rewrite(tmp_path):
    rng = np.random.default_rng(10)
    images, betas, idx, split, rep = _toy(rng)
    root = _write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)})
    with pytest.raises(FileExistsError, match="already exists"):
        DatasetWriter(root, name="d", world="t")
    with pytest.raises(DataFormatError):
        with DatasetWriter(root, name="d2", world="t", overwrite=True) as w:
            w.append_images(images[:2])
            w.subject("x", n_voxels=7).append(betas[:1], [5], [0], [0])  # index out of range -> finalize fails
            w.finalize()
    assert open_dataset(root).name == "toy"  # old dataset intact
    with DatasetWriter(root, name="d3", world="t", overwrite=True) as w:
        w.append_images(images[:2])
        w.subject("x", n_voxels=7).append(betas[:1], [1], [0], [0])
        w.finalize()
    assert open_dataset(root).name == "d3" and open_dataset(root).n_images == 2


# ------------------------------------------------------------------------------------------- manifest
def _edit_manifest(root, **changes):
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


def test_manifest_version_and_corruption_errors(tmp_path):
    rng = np.random.default_rng(11)
    images, betas, idx, split, rep = _toy(rng)
    root = _write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)})
    assert read_manifest(root)["name"] == "toy"
    _edit_manifest(root, _format_version=FORMAT_VERSION + 1)
    with pytest.raises(DataFormatError, match=rf"mindeye-dataset format version {FORMAT_VERSION + 1} is not supported .*version {FORMAT_VERSION}"):
        open_dataset(root)
    _edit_manifest(root, _format_version=FORMAT_VERSION, _class="something-else")
    with pytest.raises(DataFormatError, match="holds a 'something-else' manifest, not a 'mindeye-dataset' one"):
        open_dataset(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="corrupt manifest"):
        open_dataset(root)


def test_files_disagreeing_with_manifest(tmp_path):
    rng = np.random.default_rng(12)
    images, betas, idx, split, rep = _toy(rng)
    root = _write(tmp_path / "ds", images, {"x": (betas, idx, split, rep)})
    m = json.loads((root / "manifest.json").read_text())
    m["subjects"]["x"]["n_voxels"] = 8
    m["n_images"] = 11
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataFormatError, match="has 10 images, manifest says 11"):
        CanonicalDataset(root)
    m["n_images"] = 10
    (root / "manifest.json").write_text(json.dumps(m))
    ds = CanonicalDataset(root)
    with pytest.raises(DataFormatError, match="has 7 voxels, manifest says 8"):
        ds.subject("x")
    (root / "x.h5").write_bytes(b"garbage")
    m["subjects"]["x"]["n_voxels"] = 7
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataFormatError, match="subject x: corrupt file"):
        CanonicalDataset(root).subject("x")
    (root / "x.h5").unlink()
    with pytest.raises(DataFormatError, match="subject x: file missing"):
        CanonicalDataset(root).subject("x")
    (root / "images.h5").unlink()
    with pytest.raises(DataFormatError, match="images file missing"):
        CanonicalDataset(root)


# ------------------------------------------------------------------------------------- noise ceiling
def _ncsnr_reference(betas, image_index):
    """NSD's definition, written as plain loops over voxels and images."""
    betas = np.asarray(betas, np.float64)
    images = [i for i in np.unique(image_index) if (image_index == i).sum() >= 2]
    out = np.empty(betas.shape[1])
    for v in range(betas.shape[1]):
        groups = [betas[image_index == i, v] for i in images]
        noise_var = np.mean([np.var(g, ddof=1) for g in groups])
        total_var = np.var(np.concatenate(groups), ddof=1)
        signal_var = max(0.0, total_var - noise_var)
        out[v] = np.sqrt(signal_var) / np.sqrt(noise_var)
    return out


def test_ncsnr_matches_reference_loop():
    rng = np.random.default_rng(13)
    n_img, n_vox = 40, 9
    signal = rng.standard_normal((n_img, n_vox)) * np.linspace(0.0, 2.0, n_vox)
    reps = rng.integers(1, 4, n_img)  # 1..3 repetitions; single-shot images are ignored
    idx = np.repeat(np.arange(n_img), reps)
    betas = signal[idx] + rng.standard_normal((idx.size, n_vox))
    np.testing.assert_allclose(ncsnr(betas, idx), _ncsnr_reference(betas, idx), rtol=1e-10)


def test_ncsnr_recovers_known_snr_and_noise_ceiling_formula():
    rng = np.random.default_rng(14)
    n_img, n_vox, reps = 3000, 3, 3
    sd_signal = np.array([0.0, 0.5, 2.0])
    signal = rng.standard_normal((n_img, n_vox)) * sd_signal
    idx = np.repeat(np.arange(n_img), reps)
    betas = signal[idx] + rng.standard_normal((idx.size, n_vox))
    est = ncsnr(betas, idx)
    assert est[0] < 0.1
    np.testing.assert_allclose(est[1:], sd_signal[1:], rtol=0.06)
    s = np.array([0.0, 0.5, 1.0, np.inf])
    np.testing.assert_allclose(noise_ceiling(s[:3], 3), 100 * s[:3] ** 2 / (s[:3] ** 2 + 1 / 3))
    assert noise_ceiling(np.array([1.0]), 1)[0] == pytest.approx(50.0)
    assert noise_ceiling(np.array([1.0]), 3)[0] == pytest.approx(75.0)
    with pytest.raises(ValueError, match="n_trials must be >= 1"):
        noise_ceiling(s, 0)


def test_ncsnr_errors_and_noiseless_voxel():
    with pytest.raises(DataFormatError, match="at least 2 repetitions"):
        ncsnr(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(DataFormatError, match=r"image_index \(T,\) required"):
        ncsnr(np.zeros((3, 2)), np.array([0, 1]))
    betas = np.array([[1.0, 1.0], [1.0, 2.0], [3.0, 0.0], [3.0, 5.0]])  # voxel 0 identical across repetitions
    out = ncsnr(betas, np.array([0, 0, 1, 1]))
    assert np.isinf(out[0]) and np.isfinite(out[1])


def test_dataset_fingerprint_ignores_timings_only(tmp_path):
    """The same demo world generated twice has one fingerprint (its manifests differ in the seconds taken);
    another config, or an edited manifest, changes it; a missing or broken manifest names the file."""
    from mindeye_core.data.demo import DemoWorldConfig, generate_demo_world
    from mindeye_core.data.format import dataset_fingerprint

    cfg = DemoWorldConfig(n_test_images=6, n_train_images=8, voxels=(30, 20), trials_per_session=20)
    a = generate_demo_world(tmp_path / "a", cfg, progress=False)
    b = generate_demo_world(tmp_path / "b", cfg, progress=False)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["metadata"]["timing_s"] = {"stimuli": 123.0, "total": 456.0}  # as if generated on a slow machine
    (b / "manifest.json").write_text(json.dumps(manifest, indent=4))  # other formatting, too
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    legacy = {("format" if k == "_class" else "format_version" if k == "_format_version" else k): v
              for k, v in manifest.items()}  # the header as manifests written before the config helper spell it
    assert "format" in legacy and "_class" not in legacy
    (b / "manifest.json").write_text(json.dumps(legacy))
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    manifest["metadata"]["seed"] = manifest["metadata"]["seed"] + 1
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    other = generate_demo_world(tmp_path / "c", DemoWorldConfig(n_test_images=6, n_train_images=8, voxels=(30, 21),
                                                                trials_per_session=20), progress=False)
    assert dataset_fingerprint(other) != dataset_fingerprint(a)
    with pytest.raises(DataFormatError, match="missing"):
        dataset_fingerprint(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not JSON"):
        dataset_fingerprint(tmp_path)
