"""The panels beyond browsing (issue 13): subjects side by side, brain view, single trials, decoding lab,
download; and the library half of the lab (``mindeye_core.data.demo.lab``).

Everything runs on a tiny demo world generated here (12 test images, 2 subjects of 60 / 50 voxels), a
bundle written from it (its test images and averaged betas) and tiny random brain models with a low-level
model, so live decoding takes a fraction of a second.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

import torch  # noqa: E402

from mindeye_core.data.demo import DemoWorldConfig, generate_demo_world, load_voxel_table  # noqa: E402
from mindeye_core.data.demo.lab import SubjectForwardModel, compose_scene, random_scene, render_one  # noqa: E402
from mindeye_core.data.format import dataset_fingerprint, open_dataset  # noqa: E402
from mindeye_core.errors import DataFormatError  # noqa: E402

from app import panels as pn  # noqa: E402
from app.store import ExplorerStore  # noqa: E402

from test_app import save_test_brains, write_test_bundle  # noqa: E402

WORLD = DemoWorldConfig(n_test_images=12, n_train_images=16, voxels=(60, 50), trials_per_session=30)
SUBJECTS = ("subj01", "subj02")


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _error(fn: Any, *args: Any) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    return str(info.value.message)


def make_world(folder: Path) -> Path:
    """The tiny demo world (seconds)."""
    return generate_demo_world(folder / "demo", WORLD, progress=False)


def make_bundle(world: Path, folder: Path) -> Path:
    """A test bundle of the world's test images, dataset rows and averaged betas (random reconstructions)."""
    ds = open_dataset(world)
    voxels = {}
    for s in SUBJECTS:
        voxels[s], rows = ds.subject(s).averaged("test")
    return write_test_bundle(folder / "results", images=ds.images(rows), image_index=rows, voxels=voxels)


def make_store(world: Path, bundle: Path, folder: Path) -> ExplorerStore:
    """The store on ``bundle`` with tiny brain models (high- and low-level) and the world beside it."""
    brains = save_test_brains(folder / "brains", SUBJECTS, dict(zip(SUBJECTS, WORLD.voxels)), lowlevel=True)
    st = ExplorerStore.open(bundle, brain_root=brains, data=world)
    assert st.ready and st.live and st.world_data is not None, (st.problem, st.live_problem, st.world_problem)
    return st


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("panels_world"))


@pytest.fixture(scope="module")
def bundle(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(world, tmp_path_factory.mktemp("panels_bundle"))


@pytest.fixture(scope="module")
def store(bundle: Path, world: Path, tmp_path_factory: pytest.TempPathFactory) -> ExplorerStore:
    return make_store(world, bundle, tmp_path_factory.mktemp("panels_brains"))


# ------------------------------------------------------------------------------------ the library half
def test_forward_model_replays_the_world(world: Path) -> None:
    fm = SubjectForwardModel.from_dataset(world, "subj02")
    fm.check_against(world)  # cortex, pRFs and noise targets equal the saved voxel table
    table = load_voxel_table(world, "subj02")
    np.testing.assert_array_equal(fm.cortex.prf_x, table["prf_x"])
    np.testing.assert_array_equal(fm.target_ncsnr, table["target_ncsnr"])
    ds = open_dataset(world)
    sub = ds.subject("subj02")
    avg, rows = sub.averaged("test")
    from mindeye_core.data.demo import load_demo_labels

    labels = load_demo_labels(world).subset(rows)
    m = fm.model_response(ds.images(rows), labels)
    assert m.shape == (12, 50) and np.isfinite(m).all()
    rng = np.random.default_rng(3)
    b1 = fm.respond(ds.images(rows), labels, rng)
    single = sub.betas(sub.trials("test"))
    assert abs(float(b1.std()) - float(single.std())) < 0.25  # new trials on the dataset's scale
    again = fm.respond(ds.images(rows), labels, np.random.default_rng(3))
    np.testing.assert_array_equal(b1, again)
    quiet = fm.respond(ds.images(rows), labels, np.random.default_rng(4), noise_level=0.0)
    np.testing.assert_allclose(quiet, fm.signal(ds.images(rows), labels, np.random.default_rng(4)) / fm.beta_sd,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="repetitions"):
        fm.respond(ds.images(rows), labels, rng, repetitions=0)
    with pytest.raises(KeyError, match="subj09"):
        SubjectForwardModel.from_dataset(world, "subj09")
    fm.cortex.prf_x[0] += 1.0
    with pytest.raises(DataFormatError, match="prf_x differs"):
        fm.check_against(world)


def test_compose_scene_from_words() -> None:
    scene = compose_scene([{"category": "star", "colour": "red", "size": "small", "position": "top left"},
                           {"category": "ring", "colour": "blue", "size": "large", "position": "center"}],
                          "striped wall", seed=5)
    from mindeye_core.data.demo import caption

    assert caption(scene) == "a large blue ring at the center and a small red star at the top left on a striped wall"
    assert compose_scene([{"category": 3, "colour": 0, "size": 2, "position": 0}], 0, 5).objects[0].category == 3
    for objs, bg, match in (([], "plain wall", "1 to 3 objects"),
                            ([{"category": "blob", "colour": "red", "size": "small", "position": "center"}],
                             "plain wall", "unknown shape 'blob'"),
                            ([{"category": "star", "colour": "red", "size": "small", "position": "center"}] * 2,
                             "plain wall", "share the grid cell 'center'"),
                            ([{"category": "star", "colour": "red", "size": "small", "position": "center"}],
                             "moon", "unknown background")):
        with pytest.raises(ValueError, match=match):
            compose_scene(objs, bg, 0)
    assert random_scene(7) == random_scene(7) and random_scene(7) != random_scene(8)
    image, labels, cap = render_one(random_scene(7), WORLD)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and len(labels) == 1 and cap


# ------------------------------------------------------------------------------------ subjects side by side
def test_subjects_side_by_side(store: ExplorerStore, bundle: Path) -> None:
    from mindeye_core.results import open_results

    reader = open_results(bundle)
    v = pn.subjects_view(store, "subj02", 4, 0.3)
    assert v.subjects == list(SUBJECTS) and len(v.items) == 4 * len(SUBJECTS)
    for k, name in enumerate(SUBJECTS):
        s = reader.subject(name)
        j = int(np.flatnonzero(s.stimulus_rows() == reader.subject("subj02").stimulus_rows()[4])[0])
        blurry, final, r_blurry, r_final = (img for img, _ in v.items[4 * k:4 * k + 4])
        np.testing.assert_array_equal(blurry, s.blurry(j))
        np.testing.assert_array_equal(final, s.finals(0.3, j))
        np.testing.assert_array_equal(r_final, s.ridge.finals(j))
        assert v.items[4 * k + 1][1] == f"{name} · MindEye final 0.3"
        row = v.table.iloc[k]
        assert row["Subject"] == name and row["Sample"] == j
        assert row["Image retrieval (MindEye)"].startswith(f"{int(s.retrieval_ranks()['brain_to_image'][j]) + 1}/12")
        assert row["CLIP score (picked)"] == f"{s.candidate_scores()[j, s.picked()[j]]:.3f}"
    assert "finals at strength 0.3" in v.note
    assert "out of range" in _error(pn.subjects_view, store, "subj01", 12)


# ------------------------------------------------------------------------------------ brain view
def test_brain_view_places_voxels_at_their_saved_prf_centres(store: ExplorerStore, world: Path, bundle: Path) -> None:
    from mindeye_core.results import open_results

    table = load_voxel_table(world, "subj01")
    betas = open_results(bundle).subject("subj01").voxels(5).astype(np.float32)
    v = pn.brain_view(store, "subj01", 5)
    early = [t for t in v.figure["data"] if t["type"] in ("scatter", "scattergl")]
    assert [t["name"] for t in early] == ["V1", "V2", "V3", "hV4"]
    seen = []
    for a, trace in enumerate(early):
        idx = np.flatnonzero(table["area"] == a)
        ids = [c[0] for c in trace["customdata"]]
        assert ids == idx.tolist()
        np.testing.assert_allclose(trace["x"], table["prf_x"][idx], atol=1e-3)
        np.testing.assert_allclose(trace["y"], table["prf_y"][idx], atol=1e-3)
        np.testing.assert_allclose([c[1] for c in trace["customdata"]], table["prf_sigma"][idx], atol=1e-3)
        np.testing.assert_allclose(trace["marker"]["color"], betas[idx], atol=1e-3)
        assert "pRF centre" in trace["hovertemplate"] and trace["name"] in trace["hovertemplate"]
        seen += ids
    assert sorted(seen) == np.flatnonzero(table["area"] < 4).tolist()
    bars = v.figure["data"][-1]
    assert bars["type"] == "bar" and bars["x"] == ["LO", "VO", "PPA"]
    for name, mean in zip(bars["x"], bars["y"]):
        idx = np.flatnonzero(table["area"] == ["V1", "V2", "V3", "hV4", "LO", "VO", "PPA"].index(name))
        assert mean == pytest.approx(float(betas[idx].mean()), abs=1e-3)
    assert list(v.summary["Area"]) == ["V1", "V2", "V3", "hV4", "LO", "VO", "PPA"]
    json.dumps(v.figure)

    nc = pn.brain_view(store, "subj01", 5, pn.AVERAGE, "noise ceiling")
    np.testing.assert_allclose(nc.figure["data"][0]["marker"]["color"],
                               table["noise_ceiling"][table["area"] == 0], atol=1e-3)
    assert nc.figure["layout"]["coloraxis"]["cmax"] == 100 and "noise ceiling" in nc.note
    single = pn.brain_view(store, "subj01", 5, "trial 2")
    trials = store.world_data.single_trials("subj01", int(open_results(bundle).subject("subj01").image_index()[5]))
    np.testing.assert_allclose(single.figure["data"][0]["marker"]["color"], trials[1][table["area"] == 0], atol=1e-3)
    np.testing.assert_allclose(trials.mean(0), betas, atol=2e-3)  # the bundle stores the 3-trial average
    assert "single trial 2 of 3" in single.note
    assert "unknown trial mode" in _error(pn.brain_view, store, "subj01", 5, "trial x")
    assert "'beta' or 'noise ceiling'" in _error(pn.brain_view, store, "subj01", 5, pn.AVERAGE, "colour")


def test_brain_view_without_voxel_table_is_a_strip(store: ExplorerStore, bundle: Path) -> None:
    import dataclasses

    from mindeye_core.data.noise_ceiling import ncsnr

    nsd_like = dataclasses.replace(store, world_data=dataclasses.replace(store.world_data, voxel_tables={}, world="nsd"))
    v = pn.brain_view(nsd_like, "subj02", 3)
    strip = v.figure["data"][0]
    sub = open_dataset(store.world_data.root).subject("subj02")
    test = sub.trials("test")
    order = np.argsort(-ncsnr(sub.betas(test), sub.image_index[test]), kind="stable")
    assert strip["type"] == "heatmap" and strip["customdata"] == [order.tolist()]
    assert "most reliable first" in v.figure["layout"]["xaxis"]["title"]["text"]
    assert pn.NSD_RELEASE_LACKS in v.note and "ROI labels" in v.note
    bare = ExplorerStore.open(bundle, live=False, data=False)
    v = pn.brain_view(bare, "subj02", 3)
    assert v.figure["data"][0]["customdata"] == [list(range(50))] and "file order" in str(v.figure["layout"])
    assert "need the dataset" in _error(pn.single_trial_view, bare, "subj02", 3, "trial 1", 0.15)


# ------------------------------------------------------------------------------------ single trials
def test_single_trial_is_decoded_live_like_the_reconstructor(store: ExplorerStore, bundle: Path) -> None:
    from mindeye_core.results import open_results

    s = open_results(bundle).subject("subj01")
    i = 7
    avg = pn.single_trial_view(store, "subj01", i, pn.AVERAGE, 0.15)
    np.testing.assert_array_equal(avg.final, s.finals(0.15, i))
    assert avg.rank == int(s.retrieval_ranks()["brain_to_image"][i]) and "3-trial average" in avg.note
    v = pn.single_trial_view(store, "subj01", i, "trial 3", 0.3)
    betas = store.world_data.single_trials("subj01", int(s.image_index()[i]))[2]
    out = store.reconstructors["subj01"].reconstruct(torch.from_numpy(betas)[None], [int(s.seeds()[i])],
                                                     strengths=[0.3])
    np.testing.assert_array_equal(v.final, _u8(out.finals[0.3][0]))
    np.testing.assert_array_equal(v.blurry, _u8(out.blurry[0]))
    emb = store.clip_embeddings("subj01")
    q = out.projector[0].numpy().ravel()
    sims = emb @ (q / np.linalg.norm(q))
    assert v.rank == int((sims >= sims[i]).sum() - 1) and "single trial 3 of 3" in v.note
    assert "unknown trial mode" in _error(pn.single_trial_view, store, "subj01", i, "trial 0", 0.15)
    assert "no trial 4" in _error(pn.single_trial_view, store, "subj01", i, "trial 4", 0.15)


# ------------------------------------------------------------------------------------ the decoding lab
def test_lab_decodes_exactly_like_the_reconstructor(store: ExplorerStore, world: Path) -> None:
    rows = [[True, "heart", "green", "large", "center"], [True, "cross", "white", "small", "top right"],
            [False, "ring", "red", "small", "center"]]
    scene, cap = pn.lab_scene(store, rows, "brick wall", 11)
    assert cap == "a large green heart at the center and a small white cross at the top right on a brick wall"
    r = pn.lab_decode(store, "subj02", scene, 0.5, 2, 11, 0.3)
    # the same betas from the library's forward model with the same seed ...
    fm = SubjectForwardModel.from_dataset(world, "subj02")
    image, labels, _ = render_one(scene, fm.config)
    betas = fm.respond(image[None], labels, np.random.default_rng(11), noise_level=0.5, repetitions=2)
    np.testing.assert_array_equal(r.voxels, betas[0])
    np.testing.assert_array_equal(r.seen, image)
    # ... and the same pixels from Reconstructor.reconstruct with the same seed
    rec = store.reconstructors["subj02"]
    out = rec.reconstruct(torch.from_numpy(betas), [11], strengths=[0.3])
    np.testing.assert_array_equal(r.final, _u8(out.finals[0.3][0]))
    np.testing.assert_array_equal(r.blurry, _u8(out.blurry[0]))
    for k, (img, caption) in enumerate(r.candidates):
        np.testing.assert_array_equal(img, _u8(out.candidates[0.3][0, k]))
        assert f"CLIP {float(out.scores[0.3][0, k]):.3f}" in caption
    # retrieval: the new image among itself + the 12 test images, brute force
    q = out.projector[0].numpy().ravel()
    q = q / np.linalg.norm(q)
    own = rec.encoder.encode(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255).numpy().ravel()
    emb = store.clip_embeddings("subj02")
    assert r.rank == int((emb @ q >= (own / np.linalg.norm(own)) @ q).sum())
    assert f"ranks **{r.rank + 1}** of 13" in r.note and len(r.nearest) == 5
    best = int(np.argmax(emb @ q))
    np.testing.assert_array_equal(r.nearest[0][0], store.seen("subj02", best))
    # the strength slider: best of N again from the same prior samples, blurry image and seed
    final, items, note = pn.lab_strength(store, r, 0.7)
    want = rec.regenerate(out.prior_samples, out.blurry, [11], 0.7, projector=out.projector)
    np.testing.assert_array_equal(final, _u8(want.finals[0])) and len(items) == 3
    assert "Strength 0.7" in note
    # a random unseen scene, as the world draws them; its rows describe it
    scene, rows, bg = pn.lab_random_scene(4)
    assert scene == random_scene(4) and len(rows) == 3 and sum(bool(x[0]) for x in rows) == len(scene.objects)
    # bad input names the problem
    assert "outside [0, 3]" in _error(pn.lab_decode, store, "subj02", scene, 5, 1, 0, 0.15)
    assert "1, 2 or 3" in _error(pn.lab_decode, store, "subj02", scene, 1, 4, 0, 0.15)
    assert "seed must be" in _error(pn.lab_decode, store, "subj02", scene, 1, 1, -1, 0.15)
    assert "share the grid cell" in _error(pn.lab_scene, store, [[True, "star", "red", "small", "center"]] * 2,
                                           "plain wall", 0)
    assert "decode a scene first" in _error(pn.lab_strength, store, None, 0.3)


def test_lab_without_the_world_says_what_is_missing(bundle: Path, tmp_path: Path) -> None:
    st = ExplorerStore.open(bundle, live=False, data=tmp_path / "nowhere")
    assert st.world_data is None and "no dataset at" in st.world_problem and "mindeye demo" in st.world_problem
    assert "needs the demo world" in _error(pn.lab_scene, st, [[True, "star", "red", "small", "center"]],
                                            "plain wall", 0)
    other = ExplorerStore.open(bundle, live=False, data=tmp_path)
    assert other.world_data is None and "no dataset at" in other.world_problem


def test_world_of_another_bundle_is_refused(bundle: Path, world: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["provenance"]["dataset_manifest_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    st = ExplorerStore.open(copy, live=False, data=world)
    assert st.world_data is None and "not the one the bundle was built from" in st.world_problem
    # the fingerprint, and (bundles written before it left the timings out) the manifest file's sha256, match
    import hashlib

    for fp in (dataset_fingerprint(world), hashlib.sha256((world / "manifest.json").read_bytes()).hexdigest()):
        manifest["provenance"]["dataset_manifest_sha256"] = fp
        (copy / "manifest.json").write_text(json.dumps(manifest))
        assert ExplorerStore.open(copy, live=False, data=world).world_data is not None


# ------------------------------------------------------------------------------------ download
def test_trial_zip_holds_the_trial(store: ExplorerStore, bundle: Path) -> None:
    from PIL import Image

    from mindeye_core.results import open_results

    s = open_results(bundle).subject("subj02")
    data, name = pn.trial_zip(store, "subj02", 6, 0.42)
    assert name == "mindeye_subj02_trial6_s0.42.zip"
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["blurry.png", "candidates.png", "final_0.42.png", "seen.png", "trial.json"]
    png = {n: np.asarray(Image.open(io.BytesIO(z.read(n)))) for n in z.namelist() if n.endswith(".png")}
    np.testing.assert_array_equal(png["seen.png"], s.ground_truth(6))
    np.testing.assert_array_equal(png["blurry.png"], s.blurry(6))
    np.testing.assert_array_equal(png["final_0.42.png"], store.regenerate("subj02", 6, 0.42).final)
    assert png["candidates.png"].shape == (64, 64 * 3, 3)
    info = json.loads(z.read("trial.json"))
    assert info["subject"] == "subj02" and info["trial"] == 6 and info["seed"] == int(s.seeds()[6])
    assert info["strength"] == 0.42 and info["final_generated_live"] is True
    assert info["ranks"]["mindeye"]["brain_to_image"] == int(s.retrieval_ranks()["brain_to_image"][6]) + 1
    assert "ridge" in info["ranks"] and info["picked"] == int(s.picked()[6])
    assert info["candidate_scores"] == [round(float(x), 6) for x in s.candidate_scores()[6]]
    assert info["bundle"]["provenance"]["generation"]["steps"] == 4 and info["bundle"]["world"] == "demo"


# ------------------------------------------------------------------------------------ the page
def test_build_demo_has_the_new_panels(store: ExplorerStore) -> None:
    from app.layout import build_demo

    demo = build_demo(store)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for needed in ("subjects-gallery", "subjects-table", "brain-plot", "brain-mode", "brain-value", "trial-mode",
                   "single-final", "download-btn", "download", "lab-decode", "lab-random", "lab-strength",
                   "lab-final", "lab-nearest", "lab-shape-0", "lab-background"):
        assert needed in ids, needed
    fns = {d.api_name: d for d in demo.fns.values() if d.api_name}
    assert {"panels", "brain", "single_trial", "download", "lab_decode", "lab_random", "lab_strength"} <= set(fns)
    for name in ("lab_decode", "lab_strength", "single_trial", "download"):
        assert fns[name].concurrency_id == "generate", name


# ------------------------------------------------------------------------------------ the shipped bundle
@pytest.mark.slow
def test_panels_on_the_shipped_bundle() -> None:
    """The real subj01 bundle with the demo world it was built from (skipped when either is absent): the
    lab's and single trials' retrieval space is the bundle's (cosine(projector, CLIP image)), and the brain
    view reads the world's voxel table."""
    from app.store import default_results_source
    from app.world import default_world_root

    if not (Path(default_results_source()) / "manifest.json").is_file() or not (default_world_root() / "manifest.json").is_file():
        pytest.skip("needs assets/demo_results and the demo world (set $MINDEYE_DEMO_WORLD: tests sandbox $MINDEYE_DATA)")
    st = ExplorerStore.open()
    if not st.live or st.world_data is None:
        pytest.skip(f"live models or world unavailable: {st.live_problem or st.world_problem}")
    subject, i = st.subjects[0], 3
    cache = st.subject(subject)
    rec = st.reconstructors[subject]
    proj = rec.brain_model(torch.from_numpy(cache.reader.voxels(i).astype(np.float32))[None])[1][0].detach().numpy().ravel()
    sims = st.clip_embeddings(subject) @ (proj / np.linalg.norm(proj))
    np.testing.assert_allclose(sims, cache.similarity["brain_to_image"][i], atol=2e-3)
    v = pn.brain_view(st, subject, i)
    table = load_voxel_table(st.world_data.root, subject)
    np.testing.assert_allclose(v.figure["data"][0]["x"], table["prf_x"][table["area"] == 0], atol=1e-3)
    single = pn.single_trial_view(st, subject, i, "trial 1", st.default_strength)
    assert single.rank is not None and single.final.shape == st.seen(subject, i).shape
    scene, _ = pn.lab_scene(st, [[True, "star", "red", "large", "center"]], "green ground", 1)
    r = pn.lab_decode(st, subject, scene, 1.0, 3, 1, st.default_strength)
    assert 0 <= r.rank <= cache.n and r.final.shape == r.seen.shape


def test_missing_world_is_generated_in_the_background(bundle: Path, world: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_world`` (what ``mindeye app`` passes): the panels say the world is coming, then use it."""
    from app import callbacks as cb
    from app.world import ENV_DEMO_WORLD

    target = tmp_path / "data" / "demo"
    monkeypatch.setenv(ENV_DEMO_WORLD, str(target))
    st = ExplorerStore.open(bundle, live=False, build_world=WORLD)
    if st.world_building:  # the thread may already be done on a fast machine
        assert st.world_data is None and "being generated" in st.world_problem
        assert "being generated" in _error(pn.lab_scene, st, [[True, "star", "red", "small", "center"]],
                                           "plain wall", 0)
        assert "being generated" in cb.status_markdown(st) or not st.world_building
    assert st.wait_world(120) and not st.world_building and st.world_problem is None
    assert dataset_fingerprint(target) == dataset_fingerprint(world)  # the same world (only its timings differ)
    np.testing.assert_array_equal(st.world_data.voxel_tables["subj01"]["prf_x"],
                                  load_voxel_table(world, "subj01")["prf_x"])
    # a world that is already there is opened, never generated again; without build_world nothing is generated
    again = ExplorerStore.open(bundle, live=False, build_world=WORLD)
    assert not again.world_building and again.world_data is not None
    monkeypatch.setenv(ENV_DEMO_WORLD, str(tmp_path / "other"))
    assert ExplorerStore.open(bundle, live=False).world_data is None and not (tmp_path / "other").exists()


def test_background_world_failure_is_reported(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.world import ENV_DEMO_WORLD

    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("a user's file")  # not a demo world: never replaced
    monkeypatch.setenv(ENV_DEMO_WORLD, str(target))
    st = ExplorerStore.open(bundle, live=False, build_world=WORLD)
    assert not st.wait_world(120) and st.world_data is None
    assert "generating the demo world" in st.world_problem and "failed" in st.world_problem
    assert (target / "notes.txt").read_text() == "a user's file"
