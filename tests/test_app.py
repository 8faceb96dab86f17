"""The explorer app: store, pure callbacks, the Blocks, the CLI, and a gradio_client session on 127.0.0.1.

Every test reads a tiny results bundle (format 2) written here by ``ResultsWriter``: 12 test samples,
3 candidates, random 64 x 64 images, the default strength grid, ridge baseline and UMAP. Live generation
uses the shipped tiny CLIP / generator / VAE with a tiny random brain model (regenerate does not use the
brain model's weights), at 4 steps.
"""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from mindeye_core.results import RidgeArrays, ResultsWriter, open_results  # noqa: E402

from app import callbacks as cb  # noqa: E402
from app.layout import build_demo, free_port, launch_kwargs  # noqa: E402
from app.store import ExplorerStore, open_bundle  # noqa: E402

N, K, T, D, SIZE = 12, 3, 65, 128, 64
SUBJECTS = ("subj01", "subj02")
STEPS = 4


# ------------------------------------------------------------------------------------ fixtures
def _metrics(rng: np.random.Generator, strengths: list[float]) -> dict[str, Any]:
    keys = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")
    per = {f"{s:g}": {k: float(rng.uniform(0.1, 0.9)) for k in keys} for s in strengths}
    return {"strengths": per, "retrieval": {"brain_to_image": 0.75, "image_to_brain": 0.5}, "unavailable": {},
            "ridge": {"strengths": {"0.15": {k: 0.2 for k in keys}},
                      "retrieval": {"brain_to_image": 0.25, "image_to_brain": 0.125}}}


def write_test_bundle(root: Path, *, subjects: tuple[str, ...] = SUBJECTS, n: int = N, k: int = K,
                      steps: int = STEPS, seed: int = 0, light: bool = False,
                      metrics: dict[str, Any] | None = None, images: np.ndarray | None = None,
                      image_index: np.ndarray | None = None, voxels: dict[str, np.ndarray] | None = None) -> Path:
    """A format-2 bundle of ``subjects`` (``n`` samples, ``k`` candidates, tokens 65 x 128, random 64 x 64
    images, the default strength grid, ridge, UMAP; live generation at ``steps``). ``light``: finals at
    0.15 and 0.5 only, no candidate images, no prior samples, no embeddings, float16 voxels (20 per sample,
    the tiny brain models' input) instead. ``images`` / ``image_index`` / ``voxels`` (subject -> ``(n, V)``):
    a demo world's test images, their dataset rows and averaged betas instead of random ones (every subject
    then sees the images in the same order).
    ``benchmarks/bench_app.py --synthetic`` uses it too."""
    rng = np.random.default_rng(seed)
    with ResultsWriter(root, world="demo", dataset="test-bundle") as w:
        n = n if images is None else len(images)
        stim_index = np.arange(100, 100 + n) if image_index is None else np.asarray(image_index)
        w.add_stimuli(stim_index, rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8) if images is None else images)
        strengths = w.strengths
        default = strengths.index(w.default_strength)
        for s_i, name in enumerate(subjects):
            clip = rng.standard_normal((n, T, D)).astype(np.float32)
            cand = rng.integers(0, 256, (n, k, SIZE, SIZE, 3), dtype=np.uint8)
            scores = rng.uniform(0.0, 1.0, (n, k)).astype(np.float32)
            finals = rng.integers(0, 256, (len(strengths), n, SIZE, SIZE, 3), dtype=np.uint8)
            finals[default] = cand[np.arange(n), scores.argmax(1)]
            prior = (rng.standard_normal((n, k, T, D)) * 0.5).astype(np.float16)
            extra: dict[str, Any] = {}
            if light:
                finals, cand, prior = finals[[default, strengths.index(0.5)]], None, None
                extra = dict(stored_strengths=[0.15, 0.5], embedding_shape=(T, D), store_embeddings=False,
                             voxels=rng.standard_normal((n, 20)).astype(np.float16))
            if voxels is not None:
                extra["voxels"] = np.asarray(voxels[name], np.float16)
            w.add_subject(
                name, image_index=stim_index[rng.permutation(n)] if s_i and images is None else stim_index,
                seeds=np.arange(n) + 1000 * s_i, finals=finals, candidates=cand, candidate_scores=scores,
                prior_samples=prior, **extra,
                brain_embeddings=clip + 1.5 * rng.standard_normal((n, T, D)).astype(np.float32),
                image_embeddings=clip,
                blurry=rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                umap=rng.standard_normal((4, n, 2)).astype(np.float32),
                ridge=RidgeArrays(brain_embeddings=clip + 4 * rng.standard_normal((n, T, D)).astype(np.float32),
                                  finals=rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                                  blurry=rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)),
                metrics=_metrics(rng, strengths) if metrics is None else metrics,
            )
        w.finalize(provenance={"seed": seed, "generation": {"steps": steps, "guidance": 3.0, "n_candidates": k},
                               "generator": {"name": "tiny-generator"}})
    return root


def save_test_brains(root: Path, subjects: tuple[str, ...] = SUBJECTS, n_voxels: dict[str, int] | None = None,
                     lowlevel: bool = False) -> Path:
    """Tiny random ``demo-highlevel``-shaped brain models (tokens 65 x 128) at ``root/<subject>/highlevel``
    (``n_voxels[subject]`` inputs, default 20), and with ``lowlevel`` tiny ``demo-lowlevel`` models (tiny-VAE
    latents) at ``root/<subject>/lowlevel``."""
    from mindeye_core.models import create_model

    for s in subjects:
        v = (n_voxels or {}).get(s, 20)
        create_model("demo-highlevel", n_voxels=v, hidden=16, n_blocks=1, proj_hidden=16, prior_depth=1,
                     prior_heads=2, prior_dim_head=8, prior_timesteps=10).save_pretrained(root / s / "highlevel")
        if lowlevel:
            create_model("demo-lowlevel", n_voxels=v, hidden=16, n_blocks=1, latent_channels=8,
                         block_out_channels=[8, 16, 16], norm_num_groups=4, proj_dim=16).save_pretrained(
                root / s / "lowlevel")
    return root


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_bundle(tmp_path_factory.mktemp("app_bundle") / "results")


@pytest.fixture(scope="module")
def brain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_test_brains(tmp_path_factory.mktemp("app_brains"))


@pytest.fixture(scope="module")
def store(bundle_dir: Path, brain_dir: Path) -> ExplorerStore:
    st = ExplorerStore.open(bundle_dir, brain_root=brain_dir)
    assert st.ready and st.live, (st.problem, st.live_problem)
    return st


@pytest.fixture(scope="module")
def still_store(bundle_dir: Path) -> ExplorerStore:
    """The same bundle without live generation (the slider snaps)."""
    return ExplorerStore.open(bundle_dir, live=False)


@pytest.fixture(scope="module")
def reader(bundle_dir: Path) -> Any:
    return open_results(bundle_dir)


def _error(fn: Any, *args: Any) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    return str(info.value.message)


# ------------------------------------------------------------------------------------ store
def test_store_reads_the_bundle(store: ExplorerStore, reader: Any) -> None:
    assert store.subjects == list(SUBJECTS)
    assert store.strengths == [0.0, 0.15, 0.3, 0.5, 0.7, 1.0] and store.default_strength == 0.15
    assert store.world == "demo" and store.live and store.live_problem is None
    s = reader.subject("subj02")
    np.testing.assert_array_equal(store.seen("subj02", 5), s.ground_truth(5))
    np.testing.assert_array_equal(store.seen("subj02", [7, 2, 7]), s.ground_truth([7, 2, 7]))
    np.testing.assert_array_equal(store.final("subj02", 3, 0.3), s.finals(0.3, 3))
    with pytest.raises(ValueError, match="no precomputed final at strength 0.31; the bundle stores 0, 0.15"):
        store.final("subj02", 3, 0.31)
    with pytest.raises(KeyError, match="subj09.*available: subj01, subj02"):
        store.subject("subj09")


def test_large_stimuli_stay_on_disk(bundle_dir: Path, reader: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.store

    monkeypatch.setattr(app.store, "STIMULI_CACHE_BYTES", 0)
    st = ExplorerStore.open(bundle_dir, live=False)
    assert st._stimuli is None  # noqa: SLF001 (which path is taken is what this test is about)
    np.testing.assert_array_equal(st.seen("subj02", [7, 2, 7]), reader.subject("subj02").ground_truth([7, 2, 7]))
    np.testing.assert_array_equal(st.seen("subj02", 4), reader.subject("subj02").ground_truth(4))


def test_missing_bundle_says_what_and_how(tmp_path: Path) -> None:
    st = ExplorerStore.open(tmp_path / "nowhere")
    assert not st.ready and not st.live
    assert str(tmp_path / "nowhere") in st.problem and "does not exist" in st.problem
    assert "mindeye build-demo" in st.problem
    text = cb.status_markdown(st)
    assert "Nothing to show yet" in text and "mindeye build-demo" in text
    assert "mindeye build-demo" in _error(cb.check_subject, st, "subj01")
    demo = build_demo(st)  # builds: the page is the banner
    assert any(getattr(b, "value", None) == text for b in demo.blocks.values())


def test_interrupted_and_old_bundles_are_refused_by_name(tmp_path: Path, bundle_dir: Path) -> None:
    (tmp_path / "results.partial").mkdir()
    st = ExplorerStore.open(tmp_path / "results")
    assert "interrupted write" in st.problem and "results.partial" in st.problem
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    st = ExplorerStore.open(old)
    assert not st.ready and "version" in st.problem and "mindeye build-demo" in st.problem


def test_hub_bundle_is_fetched_at_a_pinned_revision(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(**kwargs: Any) -> str:  # a local folder stands in for the Hub
        calls.append(kwargs)
        return str(bundle_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    st = ExplorerStore.open("someone/mindeye-results", live=False)
    assert not st.ready and "pinned revision" in st.problem and not calls
    st = ExplorerStore.open("someone/mindeye-results", revision="0123abcd", live=False)
    assert st.ready and st.subjects == list(SUBJECTS)
    assert calls == [{"repo_id": "someone/mindeye-results", "repo_type": "dataset", "revision": "0123abcd",
                      "cache_dir": None, "local_dir": None, "token": None}]
    monkeypatch.setenv("MINDEYE_RESULTS_REVISION", "feedbeef")
    assert open_bundle("someone/mindeye-results").subjects == list(SUBJECTS)
    assert calls[-1]["revision"] == "feedbeef"


def test_live_off_without_brain_models(bundle_dir: Path, tmp_path: Path) -> None:
    st = ExplorerStore.open(bundle_dir, brain_root=tmp_path / "no-brains")
    assert st.ready and not st.live
    assert str(tmp_path / "no-brains" / "subj01" / "highlevel") in st.live_problem
    assert "mindeye build-demo" in st.live_problem
    assert f"snaps to the bundle's strength grid ({st.live_problem})" in cb.status_markdown(st)


def test_live_models_load_in_the_background(bundle_dir: Path, store: ExplorerStore) -> None:
    import threading

    release = threading.Event()

    def slow_loader(st: ExplorerStore) -> dict[str, Any]:
        release.wait(60)
        return dict(store.reconstructors)

    st = ExplorerStore.open(bundle_dir, live_loader=slow_loader, background=True)
    try:
        assert st.ready and st.live_loading and not st.live
        assert "its models are loading" in cb.status_markdown(st)
        v = cb.strength_view(st, "subj01", 1, 0.42)
        assert v.strength == 0.5 and not v.live and "still loading" in v.note
    finally:
        release.set()
    assert st.wait_live(60) and not st.live_loading
    assert cb.strength_view(st, "subj01", 1, 0.42).live


# ------------------------------------------------------------------------------------ validation
def test_bad_input_raises_errors_naming_the_problem(store: ExplorerStore) -> None:
    assert "'subj09' is not in the results bundle; available: subj01, subj02" in _error(cb.check_subject, store, "subj09")
    assert "trial 12 is out of range: subj01 has 12 test trials (0 to 11)" in _error(cb.check_trial, store, "subj01", 12)
    assert "out of range" in _error(cb.check_trial, store, "subj01", -1)
    assert "out of range" in _error(cb.check_trial, store, "subj01", 2.5)
    assert "must be a number" in _error(cb.check_trial, store, "subj01", "abc")
    assert "outside [0, 1]" in _error(cb.check_strength, 1.5)
    assert "must be a number" in _error(cb.check_strength, None)
    assert cb.check_trial(store, "subj01", 11.0) == 11 and cb.check_strength("0.3") == 0.3
    assert "out of range" in _error(cb.trial_view, store, "subj01", 99, 0.15)


# ------------------------------------------------------------------------------------ trial
def test_trial_view_shows_the_bundle(store: ExplorerStore, reader: Any) -> None:
    s = reader.subject("subj02")
    i = 4
    v = cb.trial_view(store, "subj02", i, 0.15)
    assert v.subject == "subj02" and v.trial == i
    np.testing.assert_array_equal(v.seen, s.ground_truth(i))
    np.testing.assert_array_equal(v.blurry, s.blurry(i))
    np.testing.assert_array_equal(v.view.final, s.finals(0.15, i))
    np.testing.assert_array_equal(v.view.compare[0], v.seen)
    np.testing.assert_array_equal(v.view.compare[1], v.view.final)
    assert not v.view.live and "precomputed" in v.view.note
    c = cb.candidates_view(store, "subj02", i)
    picked, scores = int(s.picked()[i]), s.candidate_scores()[i]
    assert len(c.items) == K
    for k, (img, caption) in enumerate(c.items):
        np.testing.assert_array_equal(img, s.candidates(i)[k])
        assert f"CLIP {scores[k]:.3f}" in caption and (("picked" in caption) == (k == picked))
    assert f"candidate {picked} was picked" in c.note and "stored in the bundle" in c.note
    np.testing.assert_array_equal(v.ridge_blurry, s.ridge.blurry(i))
    np.testing.assert_array_equal(v.ridge_final, s.ridge.finals(i))
    assert f"seed {int(s.seeds()[i])}" in v.header
    assert f"image retrieval rank {int(s.retrieval_ranks()['brain_to_image'][i]) + 1}/{N}" in v.header


def test_retrieval_both_directions(store: ExplorerStore, reader: Any) -> None:
    s = reader.subject("subj01")
    sim = s.similarity("brain_to_image")  # [brain i, image j]
    for i in (0, 5, 11):
        r = cb.retrieval_view(store, "subj01", i, k=4)
        order = np.argsort(-sim[i], kind="stable")[:4]
        assert r.image_retrieval_trials == order.tolist()
        for p, (img, caption) in enumerate(r.image_retrieval):
            np.testing.assert_array_equal(img, s.ground_truth(int(order[p])))
            assert f"cos {sim[i, order[p]]:.3f}" in caption and (("true image" in caption) == (order[p] == i))
        back = np.argsort(-sim[:, i], kind="stable")[:4]  # brain samples ranked for image i
        assert r.brain_retrieval_trials == back.tolist()
        assert "true brain sample" in r.brain_retrieval[back.tolist().index(i)][1] if i in back else True
        ranks = s.retrieval_ranks()
        assert f"true image at rank **{int(ranks['brain_to_image'][i]) + 1}** of {N}" in r.summary
        assert f"true brain sample at rank **{int(ranks['image_to_brain'][i]) + 1}** of {N}" in r.summary
        assert "brain → image" in r.summary and "image → brain" in r.summary and "Ridge baseline" in r.summary


def test_strength_on_grid_is_precomputed_off_grid_is_live(store: ExplorerStore, reader: Any) -> None:
    s = reader.subject("subj01")
    v = cb.strength_view(store, "subj01", 2, 0.7)
    assert v.strength == 0.7 and not v.live
    np.testing.assert_array_equal(v.final, s.finals(0.7, 2))
    live = cb.strength_view(store, "subj01", 2, 0.42)
    assert live.live and live.strength == 0.42 and "generated live" in live.note and "seed 2" in live.note
    assert live.final.shape == (SIZE, SIZE, 3) and live.final.dtype == np.uint8
    picked = int(s.picked()[2])
    assert f"candidate {picked} (picked at 0.15)" in live.note
    # the same pixels as the library's Reconstructor.regenerate of the picked candidate, stored arrays and seed
    import torch

    rec = store.reconstructors["subj01"]
    prior, blurry = torch.from_numpy(s.prior_samples(2))[None], torch.from_numpy(s.blurry(2)).permute(2, 0, 1)[None]
    out = rec.regenerate(prior[:, picked:picked + 1], blurry, [int(s.seeds()[2])], 0.42, sample_ids=[[picked]])
    np.testing.assert_array_equal(live.final, (out.candidates[0, 0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    again = store.regenerate("subj01", 2, 0.42)
    np.testing.assert_array_equal(again.final, live.final)
    assert again.candidates.shape == (1, SIZE, SIZE, 3) and again.picked == picked and again.scores is None
    full = store.regenerate("subj01", 2, 0.42, all_candidates=True)  # best of K at this strength
    assert full.candidates.shape == (K, SIZE, SIZE, 3) and full.picked == int(np.argmax(full.scores))
    np.testing.assert_array_equal(full.candidates[picked], live.final)  # each candidate keeps its own noise


def test_strength_snaps_to_the_grid_without_live_generation(still_store: ExplorerStore, reader: Any) -> None:
    v = cb.strength_view(still_store, "subj01", 1, 0.42)
    assert v.strength == 0.5 and not v.live
    assert "snapped to 0.5, the nearest strength stored" in v.note and "turned off" in v.note
    np.testing.assert_array_equal(v.final, reader.subject("subj01").finals(0.5, 1))
    assert cb.strength_view(still_store, "subj01", 1, 0.2).strength == 0.15


def test_umap_figure_highlights_the_trial(store: ExplorerStore, reader: Any) -> None:
    coords = reader.subject("subj02").umap()
    fig = cb.umap_figure(store, "subj02", 7)
    assert fig["layout"]["meta"] == {"subject": "subj02", "trial": 7}
    assert [t["name"] for t in fig["data"][::2]] == ["CLIP image", "backbone", "projector", "prior"]
    for p, space in enumerate(("clip_image", "backbone", "projector", "prior")):
        base, star = fig["data"][2 * p], fig["data"][2 * p + 1]
        assert base["customdata"] == list(range(N)) and star["customdata"] == [7]
        np.testing.assert_allclose(base["x"], coords[space][:, 0], atol=1e-3)
        np.testing.assert_allclose([star["x"][0], star["y"][0]], coords[space][7], atol=1e-3)
        assert base["xaxis"] == star["xaxis"] == ("x" if p == 0 else f"x{p + 1}")
    json.dumps(fig)  # JSON-ready for the browser


def test_thumbnail_is_the_seen_image(store: ExplorerStore) -> None:
    from PIL import Image

    url = cb.thumbnail(store, "subj02", 3)
    assert url.startswith("data:image/png;base64,")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    np.testing.assert_array_equal(img, store.seen("subj02", 3))


def test_light_bundle_generates_what_it_does_not_store(tmp_path: Path, store: ExplorerStore) -> None:
    root = write_test_bundle(tmp_path / "light", subjects=("subj01",), light=True)
    reader = open_results(root).subject("subj01")
    st = ExplorerStore.open(root, live_loader=lambda _: {"subj01": store.reconstructors["subj01"]})
    assert st.live and st.can_regenerate("subj01")
    v = cb.strength_view(st, "subj01", 3, 0.5)
    assert not v.live and "precomputed" in v.note
    np.testing.assert_array_equal(v.final, reader.finals(0.5, 3))
    v = cb.strength_view(st, "subj01", 3, 0.3)  # on the grid, not stored
    assert v.live and v.strength == 0.3 and "not stored in this light bundle" in v.note
    # prior samples drawn again from the stored voxels, as the reconstruction did
    import torch

    rec = store.reconstructors["subj01"]
    seed, picked = int(reader.seeds()[3]), int(reader.picked()[3])
    backbone, projector = rec.brain_model(torch.from_numpy(reader.voxels(3).astype(np.float32))[None])
    prior = rec.sample_prior(backbone, [seed])
    blurry = torch.from_numpy(reader.blurry(3)).permute(2, 0, 1)[None]
    want = rec.regenerate(prior[:, picked:picked + 1], blurry, [seed], 0.3, sample_ids=[[picked]]).candidates[0, 0]
    np.testing.assert_array_equal(v.final, (want.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    c = cb.candidates_view(st, "subj01", 3)
    assert len(c.items) == K and "stores no candidate images" in c.note and "generated live" in c.note
    best = rec.regenerate(prior, blurry, [seed], 0.15, projector=projector)
    assert f"candidate {int(best.picked[0])} was picked" in c.note
    for k, (img, caption) in enumerate(c.items):
        np.testing.assert_array_equal(img, (best.candidates[0, k].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
        assert f"CLIP {float(best.scores[0, k]):.3f}" in caption

    still = ExplorerStore.open(root, live=False)
    v = cb.strength_view(still, "subj01", 3, 0.3)
    assert v.strength == 0.15 and "nearest strength stored in the bundle (0.15, 0.5)" in v.note
    c = cb.candidates_view(still, "subj01", 3)
    assert c.items == [] and f"{reader.candidate_scores()[3][0]:.3f}" in c.note and "turned off" in c.note


# ------------------------------------------------------------------------------------ metrics
def test_metrics_tables_have_the_paper_shape(store: ExplorerStore, reader: Any) -> None:
    t1, t5 = cb.metrics_tables(store, "subj01")
    methods = t1["Method"].tolist()
    assert methods[0] == "MindEye (subj01, strength 0.15)" and methods[1] == "Ridge (this bundle, subj01)"
    assert "MindEye" in methods and "MindEye (Subj 1)" in methods  # the paper's NSD rows for scale
    assert list(t1.columns[1:11]) == ["PixCorr ↑", "SSIM ↑", "Alex(2) ↑", "Alex(5) ↑", "Incep ↑", "CLIP ↑",
                                      "Eff ↓", "SwAV ↓", "Image ↑", "Brain ↑"]
    pix = reader.subject("subj01").metrics["strengths"]["0.15"]["pixcorr"]
    assert t1.iloc[0]["PixCorr ↑"] == f"{pix:.3f}".replace("0.", ".", 1)
    assert t1.iloc[0]["Image ↑"] == "75.0%" and t1.iloc[1]["Brain ↑"] == "12.5%"
    assert t1.iloc[methods.index("MindEye")]["Image ↑"] == "93.6%"
    ours = [m for m in t5["Img2Img strength"] if m.startswith("MindEye subj01")]
    assert ours == [f"MindEye subj01 {s:g}" for s in (1.0, 0.7, 0.5, 0.3, 0.15, 0.0)]
    assert "0.15 (MindEye default)" in t5["Img2Img strength"].tolist()


def test_metrics_in_the_demo_builds_layout(tmp_path: Path) -> None:
    """MindEye's metrics at the top level, extra columns (tiny-CLIP 2-way), ridge and ceiling blocks."""
    per = {f"{s:g}": {"pixcorr": 0.2 + s / 10, "ssim": 0.3, "tinyclip_2way": 0.9 - s / 10}
           for s in (0.0, 0.15, 0.3, 0.5, 0.7, 1.0)}
    metrics = {"strengths": per, "blurry": {"pixcorr": 0.4, "ssim": 0.5, "tinyclip_2way": 0.6},
               "retrieval": {"brain_to_image": 0.5, "image_to_brain": 0.25},
               "unavailable": {m: "not shipped" for m in ("alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")},
               "ridge": {"strengths": {"0.15": {"pixcorr": 0.1, "ssim": 0.2, "tinyclip_2way": 0.7}},
                         "retrieval": {"brain_to_image": 0.125, "image_to_brain": 0.0625}},
               "ceiling": {"strengths": {"0": {"pixcorr": 0.6, "ssim": 0.6, "tinyclip_2way": 0.99}}}}
    st = ExplorerStore.open(write_test_bundle(tmp_path / "b", subjects=("subj01",), metrics=metrics), live=False)
    t1, t5 = cb.metrics_tables(st, "subj01")
    methods = t1["Method"].tolist()
    assert methods[:4] == ["MindEye (subj01, strength 0.15)", "MindEye (Low-Level, subj01)",
                           "Ridge (this bundle, subj01)", "Generator ceiling (subj01)"]
    assert t1.columns[-2] == "tiny-CLIP 2-way" and t1.iloc[0]["tiny-CLIP 2-way"] == "88.5%"
    assert t1.iloc[1]["tiny-CLIP 2-way"] == "60.0%" and t1.iloc[2]["Image ↑"] == "12.5%"
    assert t1.iloc[2]["tiny-CLIP 2-way"] == "70.0%" and t1.iloc[3]["tiny-CLIP 2-way"] == "99.0%"
    assert t1.iloc[0]["Alex(2) ↑"] == "n/a" and t1.iloc[0]["PixCorr ↑"] == ".215"
    assert t1.iloc[methods.index("MindEye")]["tiny-CLIP 2-way"] == "—"
    assert t5.iloc[0]["Img2Img strength"] == "MindEye subj01 1" and t5.iloc[0]["tiny-CLIP 2-way"] == "80.0%"
    fig = cb.metrics_chart(st, "subj01", 0.3)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles == ["<b>PixCorr</b>", "<b>SSIM</b>", "<b>tiny-CLIP 2-way</b>"]  # only what the bundle has
    assert len(fig["layout"]["shapes"]) == 3


def test_metrics_chart_marks_the_strength(store: ExplorerStore, reader: Any) -> None:
    fig = cb.metrics_chart(store, "subj01", 0.3)
    assert len(fig["layout"]["shapes"]) == 8 and all(s["x0"] == s["x1"] == 0.3 for s in fig["layout"]["shapes"])
    ours = fig["data"][0]
    per = reader.subject("subj01").metrics["strengths"]
    assert ours["x"] == [0.0, 0.15, 0.3, 0.5, 0.7, 1.0]
    assert ours["y"] == [per[f"{s:g}"]["pixcorr"] for s in ours["x"]]
    assert cb.strength_view(store, "subj01", 0, 0.5).chart["layout"]["meta"]["strength"] == 0.5


# ------------------------------------------------------------------------------------ browse, links
def test_gallery_pages_and_clicks(store: ExplorerStore) -> None:
    page = cb.gallery_page(store, "subj02", 2, page_size=5)
    assert page.page == 2 and page.n_pages == 3 and [c for _, c in page.items] == ["trial 10", "trial 11"]
    np.testing.assert_array_equal(page.items[1][0], store.seen("subj02", 11))
    assert cb.gallery_page(store, "subj02", 99, page_size=5).page == 2  # clamped
    assert cb.gallery_page(store, "subj02", -3, page_size=5).page == 0
    assert len(cb.gallery_page(store, "subj02", 0).items) == N
    assert cb.trial_from_gallery(store, "subj02", 1, 3, page_size=5) == 8
    assert "out of range" in _error(cb.trial_from_gallery, store, "subj02", 2, 4, 5)


def test_random_trial_is_in_range_and_seedable(store: ExplorerStore) -> None:
    draws = [cb.random_trial(store, "subj01", random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1 and 0 <= draws[0] < N
    assert len({cb.random_trial(store, "subj01", random.Random(s)) for s in range(40)}) > 5


def test_links_restore_the_view(store: ExplorerStore) -> None:
    q = cb.link_query("subj02", 7.0, 0.3, "umap")
    assert q == "?subject=subj02&trial=7&strength=0.3&tab=umap"
    from urllib.parse import parse_qsl

    state = cb.restore_from_query(store, dict(parse_qsl(q[1:])))
    assert (state.subject, state.trial, state.strength, state.tab, state.warnings) == ("subj02", 7, 0.3, "umap", [])
    default = cb.restore_from_query(store, {})
    assert (default.subject, default.trial, default.strength, default.tab) == ("subj01", 0, 0.15, "trial")
    bad = cb.restore_from_query(store, {"subject": "subj09", "trial": "500", "strength": "2", "tab": "nope"})
    assert (bad.subject, bad.trial, bad.strength, bad.tab) == ("subj01", 0, 0.15, "trial")
    assert len(bad.warnings) == 4 and "subj09" in bad.warnings[0] and "trial='500'" in bad.warnings[1]
    assert "strength='2'" in bad.warnings[2] and "'nope'" in bad.warnings[3]


# ------------------------------------------------------------------------------------ blocks and CLI
def test_build_demo_wires_the_page(store: ExplorerStore) -> None:
    demo = build_demo(store)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for needed in ("subject", "trial", "strength", "seen", "blurry", "final", "compare", "candidates",
                   "ridge-final", "gallery", "image-retrieval", "brain-retrieval", "umap", "table1", "table5",
                   "chart", "copy-link", "link"):
        assert needed in ids, needed
    fns = {d.api_name: d for d in demo.fns.values() if d.api_name}
    assert {"load", "subject", "trial", "random", "strength", "link", "candidates"} <= set(fns)
    assert fns["strength"].concurrency_limit == 1 and fns["strength"].concurrency_id == "generate"
    assert demo._queue.max_size == 64  # noqa: SLF001 (the queue cap is Gradio-internal state)
    kw = launch_kwargs()
    assert kw["allowed_paths"][0].endswith("plotly/package_data/plotly.min.js")
    umap = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "umap")
    assert "gradio_api/file=" in umap.head and "plotly.min.js" in umap.head and "cdn" not in umap.head.lower()


def test_cli_registers_app_without_importing_it() -> None:
    code = ("import sys, mindeye_core, mindeye_core.cli as c, mindeye_core.app_cli; "
            "assert 'mindeye_core.app_cli' in c.COMMAND_MODULES, c.COMMAND_MODULES; "
            "p = c.build_parser(); a = p.parse_args(['app', '--results', 'x', '--port', '1234', '--no-live']); "
            "assert (a.results, a.port, a.no_live, a.host) == ('x', 1234, True, '127.0.0.1'); "
            "assert 'app' not in sys.modules and 'gradio' not in sys.modules, 'imported the app'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1] / "tests",
                   timeout=120)
    out = subprocess.run([sys.executable, "-m", "app", "--help"], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120).stdout
    assert "python -m app" in out and "--results" in out and "--revision" in out and "mindeye build-demo" in out


# ------------------------------------------------------------------------------------ gradio_client
@pytest.fixture(scope="module")
def served(store: ExplorerStore) -> Any:
    demo = build_demo(store)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_kwargs())
    try:
        yield url
    finally:
        demo.close()


def test_gradio_client_session(served: str, reader: Any) -> None:
    from gradio_client import Client

    client = Client(served, verbose=False, download_files=False)
    out = client.predict("subj02", 5, 0.15, api_name="/trial")
    trial, header = out[0], out[1]
    assert trial == 5 and "subj02 · trial 5" in header
    moved = client.predict("subj02", 5, 0.3, api_name="/strength")
    assert moved[0] == 0.3 and "precomputed" in moved[2]
    live = client.predict("subj02", 5, 0.55, api_name="/strength")
    assert live[0] == 0.55 and "generated live" in live[2]
    # the tab is per-session state (gr.State): a fresh API session is on the first tab
    assert client.predict("subj01", 3, 0.5, api_name="/link") == "?subject=subj01&trial=3&strength=0.5&tab=trial"
    with pytest.raises(Exception, match="out of range"):
        client.predict("subj02", 40, 0.15, api_name="/trial")


def test_pool_neighbours_panel(tmp_path: Path) -> None:
    """The retrieval tab's pool panel: none stored -> how to get them; seeds -> the pool images re-rendered,
    best first, with scores and the match shares; other ids -> listed; an unreadable file -> said, the rest
    of the bundle still shown."""
    import shutil

    from mindeye_core.results import open_results
    from mindeye_core.retrieval.pool import render_pool

    root = write_test_bundle(tmp_path / "b")
    bare = ExplorerStore.open(root, live=False, data=False)
    items, note = cb.pool_view(bare, "subj01", 0)
    assert items == [] and "stores no pool neighbours" in note and "mindeye retrieval neighbours" in note
    b = open_results(root)
    rng = np.random.default_rng(1)
    seeds = rng.integers(0, 10**5, (N, 16))
    scores = -np.sort(-rng.random((N, 16)).astype(np.float32), axis=1)
    match = {"two_stage": {"category_and_colour": 0.25}, "one_stage": {"category_and_colour": 0.125},
             "chance_category_and_colour": 1 / 90}
    b.set_neighbours("subj01", seeds, scores, seeds=seeds,
                     info={"procedure": "two-stage: ...", "n_candidates": 16, "match": match,
                           "query": {"final": "1x-prior", "final_model_sha256": "0" * 64},
                           "index": {"n_items": 100000, "pool": "demo-pool-v1"}})
    b.set_neighbours("subj02", np.array([[f"img/{i}-{j}.png" for j in range(3)] for i in range(N)]), scores[:, :3])
    st = ExplorerStore.open(root, live=False, data=False)
    items, note = cb.pool_view(st, "subj01", 5)
    assert len(items) == cb.POOL_K
    expected = render_pool(seeds[5, :cb.POOL_K])
    for r, (img, caption) in enumerate(items):
        np.testing.assert_array_equal(img, expected[r])
        assert f"#{r + 1} · cos {scores[5, r]:.3f} · pool seed {seeds[5, r]}" in caption
    assert "retrieved" in items[0][1] and "retrieved" not in items[1][1]
    assert "100,000 procedurally generated scenes" in note and "16 candidates" in note
    assert "final-layer embedding (the 1 x 128 model's prior output) queries" in note
    assert "25.0 %" in note and "12.5 %" in note and "1.1 %" in note
    view = cb.retrieval_view(st, "subj01", 5)
    assert view.pool_note == note and len(view.pool) == cb.POOL_K
    items, note = cb.pool_view(st, "subj02", 2)
    assert items == [] and "`img/2-0.png`, `img/2-1.png`, `img/2-2.png`" in note
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    for f in broken.glob("subj01_neighbours-*.h5"):
        f.write_bytes(b"not hdf5")
    st = ExplorerStore.open(broken, live=False, data=False)
    assert st.ready, st.problem
    items, note = cb.pool_view(st, "subj01", 0)
    assert items == [] and "cannot be read" in note
    assert cb.retrieval_view(st, "subj01", 0).image_retrieval  # the rest of the tab still works
