"""Tests of the demo world: stimuli, simulated cortex, NSD-like structure, determinism, decodability, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from mindeye_core.data import open_dataset
from mindeye_core.data.demo import (
    AREAS,
    BACKGROUNDS,
    CATEGORIES,
    CHANNEL_NAMES,
    COLOUR_NAMES,
    POSITIONS,
    DemoWorldConfig,
    FeatureExtractor,
    SimulatedCortex,
    StimulusLabels,
    caption,
    ensure_demo_world,
    generate_demo_world,
    load_demo_labels,
    load_voxel_table,
    render_scene,
    render_scenes,
    sample_scenes,
    simulate_subject,
    trial_schedule,
)
from mindeye_core.data.demo.stimuli import ObjectSpec, SceneSpec, caption_from_labels, object_mask
from mindeye_core.data.noise_ceiling import ncsnr, noise_ceiling
from mindeye_core.errors import DataFormatError

SMALL = DemoWorldConfig.small()


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "world"
    return generate_demo_world(root, SMALL, progress=False)


def _scene(objects: list[ObjectSpec], background: int = len(BACKGROUNDS) - 5) -> SceneSpec:
    return SceneSpec(
        objects=tuple(objects), background=background, sky=-1, horizon=0.5, wall_rgb=(128, 128, 128),
        texture_scale=0.1, texture_angle=0.0, texture_seed=0,
    )


def _obj(category: int = 0, cell: int = 4, size: int = 1, colour: int = 0, radius: float = 0.13) -> ObjectSpec:
    return ObjectSpec(
        category=category, colour=colour, size=size, position=cell, cx=(cell % 3 * 2 + 1) / 6, cy=(cell // 3 * 2 + 1) / 6,
        radius=radius, angle=0.0, rgb=(220, 40, 40),
    )


# ------------------------------------------------------------------------------------------ stimuli
def test_vocabularies_and_caption_format() -> None:
    assert len(CATEGORIES) >= 8 and len(set(CATEGORIES)) == len(CATEGORIES)
    assert len(COLOUR_NAMES) >= 5
    assert POSITIONS[0] == "top left" and POSITIONS[-1] == "bottom right" and len(POSITIONS) == 9
    star, red, large, green_ground = CATEGORIES.index("star"), COLOUR_NAMES.index("red"), 2, BACKGROUNDS.index("green ground")
    assert caption_from_labels([(star, red, large, 0)], green_ground) == "a large red star at the top left above green ground"
    circle, cross, blue, yellow = CATEGORIES.index("circle"), CATEGORIES.index("cross"), COLOUR_NAMES.index("blue"), COLOUR_NAMES.index("yellow")
    assert (
        caption_from_labels([(circle, blue, 0, 4), (cross, yellow, 2, 8)], BACKGROUNDS.index("striped wall"))
        == "a small blue circle at the center and a large yellow cross at the bottom right on a striped wall"
    )
    with pytest.raises(ValueError, match="at least one object"):
        caption_from_labels([], 0)


def test_sampled_scenes_are_varied_and_consistent() -> None:
    scenes = sample_scenes(np.random.default_rng(1), 400)
    counts = np.bincount([len(s.objects) for s in scenes], minlength=4)
    assert counts[0] == 0 and (counts[1:] > 20).all()
    assert {o.category for s in scenes for o in s.objects} == set(range(len(CATEGORIES)))
    assert {s.background for s in scenes} == set(range(len(BACKGROUNDS)))
    for s in scenes:
        cells = [o.position for o in s.objects]
        assert len(set(cells)) == len(cells)  # one object per grid cell
        assert [o.size for o in s.objects] == sorted((o.size for o in s.objects), reverse=True)  # largest first
        for o in s.objects:  # the centre lies in the named grid cell
            assert int(o.cx * 3) == o.position % 3 and int(o.cy * 3) == o.position // 3
    images, labels, captions = render_scenes(scenes[:30], 48, 2)
    assert images.shape == (30, 48, 48, 3) and images.dtype == np.uint8
    assert all(labels.caption(i) == captions[i] == caption(scenes[i]) for i in range(30))
    labels.validate()


def test_silhouettes_are_distinct_and_antialiased() -> None:
    masks = np.stack([object_mask(_obj(c, radius=0.3), 64, 4) for c in range(len(CATEGORIES))])
    assert ((masks > 0) & (masks < 1)).any(axis=(1, 2)).all()  # soft edges
    for i in range(len(CATEGORIES)):
        for j in range(i + 1, len(CATEGORIES)):
            inter = np.minimum(masks[i], masks[j]).sum()
            union = np.maximum(masks[i], masks[j]).sum()
            assert inter / union < 0.9, (CATEGORIES[i], CATEGORIES[j])
    ring = masks[CATEGORIES.index("ring")]
    assert ring[32, 32] == 0 and ring.max() == 1  # a hole in the middle


def test_render_is_deterministic_and_tracks_occlusion() -> None:
    big = _obj(category=1, cell=4, size=2, radius=0.2)
    small = dataclasses.replace(_obj(category=0, cell=4, size=0, radius=0.08), rgb=(30, 60, 220))
    scene = _scene([big, small])
    a, vis = render_scene(scene, 64)
    b, vis2 = render_scene(scene, 64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(vis, vis2)
    alone = object_mask(big, 64).sum() / 64**2
    assert vis[0] < alone - 0.01  # partly covered by the small object drawn on top
    assert vis[1] == pytest.approx(object_mask(small, 64).sum() / 64**2, rel=1e-5)
    assert tuple(a[32, 32]) == pytest.approx((30, 60, 220), abs=25)  # the small blue object is on top


# ------------------------------------------------------------------------------------------ cortex
def test_gabor_energy_is_orientation_and_frequency_selective_and_phase_invariant() -> None:
    ext = FeatureExtractor(64)
    x = np.arange(64)
    imgs = []
    for phase in (0.0, 1.3):
        grating = 0.5 + 0.4 * np.sin(2 * np.pi * (6 / 32) * x + phase)  # band sf1 (6/32 cycles/px), varies along x
        imgs.append(np.repeat(np.tile(grating, (64, 1))[..., None], 3, axis=2))
    images = (np.stack(imgs) * 255).round().astype(np.uint8)
    f = ext.raw(images)  # (2, C, 32, 32)
    means = f[:, :12].mean(axis=(2, 3))
    assert CHANNEL_NAMES[int(means[0].argmax())] == "energy_sf1_ori0"
    centre = f[0, CHANNEL_NAMES.index("energy_sf1_ori0"), 8:24, 8:24]
    assert centre.std() / centre.mean() < 0.05  # quadrature pair: energy does not follow the phase
    np.testing.assert_allclose(means[0], means[1], rtol=0.02, atol=1e-3 * means.max())  # nor its mean


def test_colour_opponent_channels() -> None:
    ext = FeatureExtractor(32)
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 230
    blue = np.zeros_like(red)
    blue[..., 2] = 230
    fr, fb = ext.raw(red)[0].mean(axis=(1, 2)), ext.raw(blue)[0].mean(axis=(1, 2))
    i = CHANNEL_NAMES.index
    assert fr[i("L-M_on")] > 0 and fr[i("L-M_off")] == 0
    assert fb[i("S-(L+M)_on")] > 0 and fb[i("S-(L+M)_off")] == 0 and fr[i("S-(L+M)_off")] > 0
    assert np.abs(ext.raw(red)[0, :12]).max() < 1e-3  # a uniform field has no contrast energy
    with pytest.raises(DataFormatError, match="expects images"):
        ext.raw(red[..., :2])


def test_cortex_retinotopy_prf_sizes_and_compression() -> None:
    cortex = SimulatedCortex.sample(700, np.random.default_rng(0), 64)
    early = cortex.area < 4
    ecc = np.hypot(cortex.prf_x, cortex.prf_y)
    for a in range(4):
        sel = cortex.area == a
        assert np.corrcoef(ecc[sel], cortex.prf_sigma[sel])[0, 1] > 0.5  # pRFs grow with eccentricity
    slopes = [np.polyfit(ecc[cortex.area == a], cortex.prf_sigma[cortex.area == a], 1)[0] for a in range(4)]
    assert slopes == sorted(slopes)  # and faster in later areas
    np.testing.assert_allclose(cortex.channel_weights.sum(1), 1, rtol=1e-5)
    # a bright square in the top-left vs bottom-right: voxels with top-left pRFs (x < 0, y > 0) prefer the first
    tl, br = _obj(1, cell=0, radius=0.15), _obj(1, cell=8, radius=0.15)
    scenes = [_scene([dataclasses.replace(o, rgb=(250, 250, 250))]) for o in (tl, br)]
    images = np.stack([render_scene(s, 64)[0] for s in scenes])
    ext = FeatureExtractor(64).calibrate(images)
    drive = cortex.early_drive(ext(images))  # (2, V_early)
    ex, ey = cortex.prf_x[early], cortex.prf_y[early]
    top_left = (ex < -1.5) & (ey > 1.5) & (cortex.prf_sigma[early] < 1.5)
    bottom_right = (ex > 1.5) & (ey < -1.5) & (cortex.prf_sigma[early] < 1.5)
    assert top_left.sum() > 5 and bottom_right.sum() > 5
    assert (drive[0, top_left] > drive[1, top_left]).mean() > 0.9
    assert (drive[1, bottom_right] > drive[0, bottom_right]).mean() > 0.9
    # compressive spatial summation: doubling the input less than doubles the response
    _, labels, _ = render_scenes(scenes, 64)
    f = ext(images)
    r1, r2 = cortex.responses(f, labels), cortex.responses(2 * f, labels)
    ratio = r2[:, : early.sum()] / np.maximum(r1[:, : early.sum()], 1e-12)
    ok = r1[:, : early.sum()] > 1e-6
    assert np.all(ratio[ok] < 1.99) and np.all(ratio[ok] > 1.0)
    with pytest.raises(DataFormatError, match="labelled images"):
        cortex.responses(f, labels.subset(np.array([0])))


def test_high_level_voxels_are_category_colour_and_scene_tuned() -> None:
    cortex = SimulatedCortex.sample(1400, np.random.default_rng(3), 64)
    n_cat = len(CATEGORIES)
    # one centred medium object of every category, same colour and background
    scenes = [_scene([_obj(c)]) for c in range(n_cat)]
    _, labels, _ = render_scenes(scenes, 64)
    high = cortex.high_drive(labels)  # (n_cat, V_high)
    high_areas = cortex.area[cortex.area >= 4]
    lo = high[:, high_areas == AREAS.index("LO")]
    pref = cortex.category_tuning.argmax(1)
    assert (lo.argmax(0) == pref).mean() > 0.6  # LO voxels respond most to their preferred category
    # VO voxels: hue tuning; a red object drives red-preferring voxels more than a blue one
    red, blue = COLOUR_NAMES.index("red"), COLOUR_NAMES.index("blue")
    s_red = _scene([_obj(0, colour=red)])
    s_blue = _scene([dataclasses.replace(_obj(0, colour=blue), rgb=(35, 80, 225))])
    _, lab2, _ = render_scenes([s_red, s_blue], 64)
    vo = cortex.high_drive(lab2)[:, high_areas == AREAS.index("VO")]
    prefers_red = cortex.colour_tuning[:, red] > 2 * cortex.colour_tuning[:, blue]
    assert prefers_red.sum() > 5 and (vo[0, prefers_red] > vo[1, prefers_red]).mean() > 0.9
    # PPA: the background class changes the response
    s_ground = _scene([_obj(0)], background=0)
    _, lab3, _ = render_scenes([s_ground, s_red], 64)
    ppa = cortex.high_drive(lab3)[:, high_areas == AREAS.index("PPA")]
    assert np.abs(ppa[0] - ppa[1]).mean() > 0.1 * np.abs(ppa).mean()


# ------------------------------------------------------------------------------------------ trial structure
def test_trial_schedule_nsd_like() -> None:
    rng = np.random.default_rng(0)
    idx, split, rep, sess = trial_schedule(20, np.arange(20, 50), 3, 25, rng)
    assert idx.size == 150
    assert (np.bincount(idx) == 3).all()
    assert set(split[idx < 20]) == {1} and set(split[idx >= 20]) == {0}
    for i in range(50):  # repetition counts presentations in time order
        np.testing.assert_array_equal(rep[idx == i], [0, 1, 2])
    assert sess.max() + 1 == 6 and np.all(np.diff(sess) >= 0) and np.all(np.bincount(sess) == 25)


def test_config_validation_and_round_trip() -> None:
    cfg = DemoWorldConfig.small(seed=5)
    assert DemoWorldConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="voxels"):
        DemoWorldConfig(voxels=(5, 100))
    with pytest.raises(ValueError, match="noise_level"):
        DemoWorldConfig(noise_level=-1)
    with pytest.raises(ValueError, match="betas_dtype"):
        DemoWorldConfig(betas_dtype="int8")


def test_noise_level_knob_moves_noise_ceilings() -> None:
    base = DemoWorldConfig(n_test_images=60, n_train_images=60, voxels=(150,), trials_per_session=60)
    n = base.n_images
    scenes = sample_scenes(np.random.default_rng(0), n)
    images, labels, _ = render_scenes(scenes, 64, 2)
    ext = FeatureExtractor(64).calibrate(images)
    medians = []
    for level in (0.5, 1.0, 2.0):
        sim = simulate_subject(dataclasses.replace(base, noise_level=level), 0, images, labels, ext)
        medians.append(np.median(noise_ceiling(ncsnr(sim.betas, sim.image_index), 3)))
    assert medians[0] > medians[1] > medians[2]
    assert medians[0] > 50 and medians[2] < 20


# ------------------------------------------------------------------------------------------ the world
def test_small_world_structure(small_world: Path) -> None:
    ds = open_dataset(small_world)
    assert ds.world == "demo" and ds.subjects == SMALL.subjects
    assert ds.n_images == SMALL.n_images and ds.image_size == (64, 64)
    voxel_counts = [ds.manifest["subjects"][s]["n_voxels"] for s in ds.subjects]
    assert voxel_counts == list(SMALL.voxels) and len(set(voxel_counts)) == len(voxel_counts)
    labels = load_demo_labels(small_world)
    assert isinstance(labels, StimulusLabels) and len(labels) == ds.n_images
    assert all(labels.caption(i) == ds.captions[i] for i in range(0, ds.n_images, 7))
    train_sets = []
    for name in ds.subjects:
        s = ds.subject(name)
        np.testing.assert_array_equal(s.images("test"), np.arange(SMALL.n_test_images))  # shared test set
        train = s.images("train")
        assert train.size == SMALL.n_train_images
        train_sets.append(set(train.tolist()))
        assert (np.bincount(s.image_index, minlength=ds.n_images)[np.r_[s.images("test"), train]] == 3).all()
        assert set(np.unique(s.repetition)) == {0, 1, 2}
        betas = s.betas(slice(None))
        assert betas.dtype == np.float32
        for k in np.unique(s.session):  # z-scored within each session
            b = betas[s.session == k]
            np.testing.assert_allclose(b.mean(0), 0, atol=1e-4)
            np.testing.assert_allclose(b.std(0), 1, atol=1e-3)
        table = load_voxel_table(small_world, name)
        assert table["area"].shape == (s.n_voxels,)
        np.testing.assert_allclose(table["ncsnr"], ncsnr(betas, s.image_index), rtol=1e-4)
    for i in range(len(train_sets)):
        for j in range(i + 1, len(train_sets)):
            assert not train_sets[i] & train_sets[j]  # subject-specific training images
    ds.close()


def test_small_world_noise_ceilings(small_world: Path) -> None:
    meta = json.loads((small_world / "manifest.json").read_text())["metadata"]
    assert meta["seed"] == 0 and meta["config"] == SMALL.to_dict()
    for name in SMALL.subjects:
        nc = meta["subjects"][name]["noise_ceiling_3trial"]
        assert 15 < nc["median"] < 50  # NSD-like: most voxels unreliable ...
        assert 0.05 < nc["frac_above_50"] < 0.5  # ... with a tail of reliable ones
        table = load_voxel_table(small_world, name)
        early = np.median(table["noise_ceiling"][table["area"] == AREAS.index("V1")])
        high = np.median(table["noise_ceiling"][table["area"] >= AREAS.index("LO")])
        assert early > high + 10  # the reliable tail is early visual
        assert meta["subjects"][name]["noise_ceiling_1trial"]["median"] < nc["median"]


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_regenerating_gives_identical_bytes(small_world: Path, tmp_path: Path) -> None:
    again = generate_demo_world(tmp_path / "again", SMALL, progress=False)
    files = sorted(p.name for p in small_world.glob("*.h5"))
    assert files == sorted(p.name for p in again.glob("*.h5")) and len(files) == 2 + len(SMALL.voxels)
    for name in files:
        a, b = _h5_arrays(small_world / name), _h5_arrays(again / name)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype
            if a[key].dtype == object:  # variable-length strings (captions)
                assert a[key].tolist() == b[key].tolist(), f"{name}/{key} differs"
            else:
                assert a[key].tobytes() == b[key].tobytes(), f"{name}/{key} differs"
    ma = json.loads((small_world / "manifest.json").read_text())
    mb = json.loads((again / "manifest.json").read_text())
    ma["metadata"].pop("timing_s")
    mb["metadata"].pop("timing_s")
    assert ma == mb
    # another seed gives another world
    other = generate_demo_world(tmp_path / "other", dataclasses.replace(SMALL, seed=1, voxels=(40, 40)), progress=False)
    assert _h5_arrays(other / "images.h5")["images"].tobytes() != _h5_arrays(again / "images.h5")["images"][: 450].tobytes()


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, groups: np.ndarray, x_tests: list[np.ndarray]) -> list[np.ndarray]:
    """The project's ridge baseline, alpha by CV with folds grouped by image (no repeat straddles folds)."""
    from mindeye_core.models.ridge import RidgeBaseline

    ridge = RidgeBaseline(alphas=(1e1, 1e2, 1e3, 1e4, 1e5), cv=3).fit(x_train, y_train, groups=groups)
    return [np.asarray(ridge.predict(x)) for x in x_tests]


def _label_targets(labels: StimulusLabels, rows: np.ndarray) -> np.ndarray:
    sub = labels.subset(rows)
    onehot_bg = np.eye(len(BACKGROUNDS), dtype=np.float32)[sub.background]
    return np.concatenate([sub.presence("category"), sub.presence("colour"), sub.presence("position"), onehot_bg], 1)


def _top1(pred: np.ndarray, true: np.ndarray) -> float:
    """Brain -> image top-1 identification among all test images (correlation of standardised vectors)."""
    def norm(a: np.ndarray) -> np.ndarray:
        a = (a - a.mean(0)) / (a.std(0) + 1e-8)
        a = a - a.mean(1, keepdims=True)
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)

    sim = norm(pred) @ norm(true).T
    return float((sim.argmax(1) == np.arange(len(sim))).mean())


def test_ridge_identifies_held_out_images_far_above_chance(small_world: Path) -> None:
    ds = open_dataset(small_world)
    labels = load_demo_labels(small_world)
    s = ds.subject("subj01")
    train = s.trials("train")
    x_train, y_train = s.betas(train), _label_targets(labels, s.image_index[train])
    x_avg, rows = s.averaged("test")
    test = s.trials("test")
    first = test[s.repetition[test] == 0]
    first = first[np.argsort(s.image_index[first])]
    np.testing.assert_array_equal(s.image_index[first], rows)
    y_test = _label_targets(labels, rows)
    pred_avg, pred_single = _fit_predict(x_train, y_train, s.image_index[train], [x_avg, s.betas(first)])
    top1_avg, top1_single = _top1(pred_avg, y_test), _top1(pred_single, y_test)
    chance = 1 / rows.size
    assert top1_avg > 15 * chance  # measured 0.3-0.4 on the small world (chance 0.0067)
    assert top1_avg < 0.9  # ... but far from perfect
    assert top1_single < top1_avg  # single trials are harder
    ds.close()


def test_existing_folder_policies(small_world: Path, tmp_path: Path) -> None:
    root, generated = ensure_demo_world(small_world, SMALL, progress=False)
    assert root == small_world and not generated
    with pytest.raises(FileExistsError, match="config differs"):
        ensure_demo_world(small_world, dataclasses.replace(SMALL, noise_level=2.0), progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        generate_demo_world(small_world, SMALL, progress=False)
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileExistsError, match="not a usable demo world"):
        ensure_demo_world(tmp_path / "junk", SMALL, progress=False)
    with pytest.raises(DataFormatError, match="demo labels missing"):
        load_demo_labels(tmp_path / "junk")


def test_cli_demo_writes_summary_and_contact_sheet(small_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mindeye_core.cli import main

    world = tmp_path / "world"
    shutil.copytree(small_world, world)
    assert main(["demo", "--small", "--out", str(world), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reusing demo world" in out and "| subj01 | 320 |" in out
    summary = json.loads((world / "summary.json").read_text())
    assert summary["subjects"]["subj02"]["n_voxels"] == 300
    assert summary["subjects"]["subj01"]["n_train_trials"] == 900 and summary["subjects"]["subj01"]["n_test_trials"] == 450
    assert 15 < summary["subjects"]["subj01"]["noise_ceiling"]["median"] < 50
    assert "Noise ceilings" in (world / "summary.md").read_text()
    sheet = Image.open(world / "contact_sheet.png")
    assert sheet.width > 6 * 150 and sheet.height > 8 * 150
    # a different config in the same folder is refused with a clear message, not silently reused
    assert main(["demo", "--out", str(world), "--quiet", "--noise-level", "2"]) == 1
    assert "config differs" in capsys.readouterr().err


@pytest.mark.slow
def test_default_world_generates_in_time_with_nsd_like_noise_ceilings(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    root = generate_demo_world(tmp_path / "demo", DemoWorldConfig(), progress=False)
    assert time.perf_counter() - t0 < 120
    meta = json.loads((root / "manifest.json").read_text())
    assert meta["n_images"] == 600 + 4 * 3000
    for name, sm in meta["metadata"]["subjects"].items():
        assert 20 <= sm["noise_ceiling_3trial"]["median"] <= 40, name
        assert meta["subjects"][name]["n_train_trials"] == 9000 and meta["subjects"][name]["n_test_trials"] == 1800
