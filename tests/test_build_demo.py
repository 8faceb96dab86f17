"""End to end on a tiny demo world: both pipelines and the ridge trained a few steps -> reconstruct ->
light results bundle written -> read back and validated; the app's live path reproduces the bundle's pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import build_demo_assets as bda

TINY = [
    "highlevel.model_overrides={hidden: 32, n_blocks: 1, proj_hidden: 32, prior_depth: 1, prior_heads: 2, prior_dim_head: 8, prior_timesteps: 10}",
    "highlevel.epochs=2", "highlevel.batch_size=32", "highlevel.eval_every=1",
    "highlevel-1x.model_overrides={hidden: 32, n_blocks: 1, proj_hidden: 32, prior_depth: 1, prior_heads: 2, prior_dim_head: 8, prior_timesteps: 10}",
    "highlevel-1x.epochs=2", "highlevel-1x.batch_size=32", "highlevel-1x.eval_every=1",
    "lowlevel.model_overrides={hidden: 32, n_blocks: 1, latent_channels: 8, block_out_channels: [8, 8, 8], norm_num_groups: 4}",
    "lowlevel.epochs=1", "lowlevel.batch_size=32", "ridge.alphas=[100.0, 10000.0]", "ridge.cv=2",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    from mindeye_core.data.demo import DemoWorldConfig, generate_demo_world

    root = tmp_path_factory.mktemp("build")
    world = root / "world"
    generate_demo_world(world, DemoWorldConfig.small(voxels=(320, 300), n_test_images=40), progress=False)
    old = os.environ.get("MINDEYE_CACHE")
    os.environ["MINDEYE_CACHE"] = str(root / "cache")
    try:
        argv = ["--out", str(root / "assets"), "--work", str(root / "work"), "--world", str(world), "--subjects",
                "subj01", "subj02", "--threads", "1", "--steps", "2", "--n-samples", "2", "--recon-batch", "8",
                "--no-progress"]
        for o in TINY:
            argv += ["--override", o]
        assert bda.main(argv + ["--stages", "highlevel", "lowlevel", "ridge", "recon", "ceiling", "bundle"]) == 0
        # subj01 only: the 1 x model is optional (the bundle records it where it exists)
        assert bda.main(argv[:7] + ["subj01"] + argv[9:] + ["--stages", "highlevel-1x", "bundle"]) == 0
    finally:
        if old is None:
            os.environ.pop("MINDEYE_CACHE", None)
        else:
            os.environ["MINDEYE_CACHE"] = old
    return root


def test_bundle_is_complete_and_valid(built: Path) -> None:
    from mindeye_core.results import open_results

    b = open_results(built / "assets" / "demo_results")
    assert b.subjects == ["subj01", "subj02"] and b.world == "demo"
    assert b.strengths == list(bda.STRENGTHS) and b.default_strength == 0.15
    s = b.subject("subj01")
    assert s.n_samples == 40 and s.stored_strengths == [0.15]
    assert s.finals(0.15).shape == (40, 64, 64, 3) and s.blurry().shape == (40, 64, 64, 3)
    assert s.candidate_scores().shape == (40, 2) and np.array_equal(s.picked(), s.candidate_scores().argmax(1))
    assert s.umap().keys() >= {"clip_image", "backbone", "projector", "prior"}
    m = s.metrics
    assert set(m["strengths"]) == {f"{v:g}" for v in bda.STRENGTHS}
    for key in ("pixcorr", "ssim", "tinyclip_2way"):
        assert np.isfinite(m["strengths"]["0.15"][key]) and np.isfinite(m["blurry"][key])
    assert 0 <= m["retrieval"]["brain_to_image"] <= 1 and 0 <= m["ridge"]["retrieval"]["brain_to_image"] <= 1
    assert "tinyclip_2way" in m["ceiling"]["strengths"]["0"]
    assert s.ridge is not None and s.ridge.finals().shape == (40, 64, 64, 3)
    models = s.provenance["models"]
    assert set(models) == {"highlevel", "highlevel-1x", "lowlevel", "ridge-final"}
    assert all(len(v["sha256"]) == 64 for v in models.values())
    assert models["highlevel-1x"]["config"]["n_tokens"] == 1 and models["highlevel-1x"]["folder"] == "demo_brain/subj01/highlevel-1x"
    assert set(b.subject("subj02").provenance["models"]) == {"highlevel", "lowlevel", "ridge-final"}


def test_resume_skips_finished_stages_and_status_reports(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (built / "assets" / "demo_brain" / "subj01" / "highlevel" / "model.safetensors").stat().st_mtime_ns
    argv = ["--out", str(built / "assets"), "--work", str(built / "work"), "--world", str(built / "world"),
            "--subjects", "subj01", "--stages", "highlevel", "lowlevel", "--threads", "1", "--no-progress"]
    assert bda.main(argv) == 0
    out = capsys.readouterr().out
    assert "subj01 highlevel: done (skip)" in out and "subj01 lowlevel: done (skip)" in out
    assert (built / "assets" / "demo_brain" / "subj01" / "highlevel" / "model.safetensors").stat().st_mtime_ns == before
    report = json.loads((built / "assets" / "demo_brain" / "build_report.json").read_text())
    assert report["stages"]["subj01/highlevel"]["seconds"] > 0


def test_live_regeneration_reproduces_the_bundle(built: Path) -> None:
    """What the app does on a light bundle: voxels -> prior samples (seeded) -> the stored final, bit for bit."""
    from mindeye_core.recon import Reconstructor, demo_spec
    from mindeye_core.results import open_results

    torch.set_num_threads(1)  # the build ran with --threads 1: CPU kernels round differently per thread count
    bundle = open_results(built / "assets" / "demo_results")
    assert bundle.provenance["generation"]["torch_threads"] == {name: 1 for name in bundle.subjects}
    assert all(bundle.subject(name).provenance["torch_threads"] == 1 for name in bundle.subjects)
    s = bundle.subject("subj02")
    brain = built / "assets" / "demo_brain" / "subj02"
    rec = Reconstructor.from_spec(demo_spec(brain / "highlevel", brain / "lowlevel", steps=2, n_samples=2))
    for i in (3, 17):  # one trial at a time, as the app does
        out = rec.reconstruct(torch.from_numpy(s.voxels([i]).astype(np.float32)), [int(s.seeds()[i])], strengths=[0.15])
        got = (out.finals[0.15].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(got[0], s.finals(0.15, i))
        assert int(out.picked[0.15][0]) == int(s.picked()[i])
        blurry = (out.blurry.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(blurry[0], s.blurry(i))


def test_cli_registers_build_demo() -> None:
    from mindeye_core.cli import build_parser

    args = build_parser().parse_args(["build-demo", "--status", "--subjects", "subj01"])
    assert args.func is bda.run_from_args and args.status
    with pytest.raises(ValueError, match="STAGE.KEY=VALUE"):
        bda.main(["--override", "epochs=3", "--status"])


def test_a_checkpoint_of_another_subject_is_refused(built: Path) -> None:
    """subj02's models on subj01's voxels: an error naming both voxel counts, never silently wrong output."""
    from mindeye_core.errors import DataFormatError
    from mindeye_core.recon import Reconstructor, demo_spec
    from mindeye_core.results import open_results

    s1 = open_results(built / "assets" / "demo_results").subject("subj01")
    brain = built / "assets" / "demo_brain" / "subj02"
    rec = Reconstructor.from_spec(demo_spec(brain / "highlevel", brain / "lowlevel", steps=2, n_samples=2))
    with pytest.raises(DataFormatError, match=r"expected 300 voxels.*got 320"):
        rec.reconstruct(torch.from_numpy(s1.voxels([0]).astype(np.float32)), [0])


def test_demo_report_tables(built: Path) -> None:
    from training.demo_report import report

    text = report(built / "assets" / "demo_results")
    for needle in ("| MindEye (subj01) |", "| Ridge baseline (subj02) |", "MindEye, mean of subjects",
                   "Generator ceiling", "NSD, paper: MindEye", "0.15 (MindEye default)", "| subj01/highlevel |"):
        assert needle in text, needle


def test_pool_neighbours_query_with_the_1x_model(built: Path, tmp_path: Path) -> None:
    """The two-stage pool retrieval's stage-1 query is the 1 x 128 model's prior output on the bundle's voxels
    (seeded like candidate 0), recorded with the model's hash; other models' folders are refused."""
    from mindeye_core.cli import main as cli_main
    from mindeye_core.errors import ConfigMismatchError, DataFormatError
    from mindeye_core.models import MindEyeHighLevel
    from mindeye_core.recon import PRIOR_STREAM, row_seed
    from mindeye_core.results import open_results
    from mindeye_core.retrieval.demo import brain_queries, pool_neighbours
    from mindeye_core.retrieval.index import open_index
    from mindeye_core.retrieval.pool import build_pool_index

    bundle = open_results(built / "assets" / "demo_results")
    s = bundle.subject("subj01")
    brains = built / "assets" / "demo_brain"
    q = brain_queries(s, brains / "subj01" / "highlevel", brains / "subj01" / "highlevel-1x")
    assert q.source == "1x-prior" and q.final.shape == (40, 128) and q.projector.shape == (40, 65, 128)
    assert q.final_model_sha256 == s.provenance["models"]["highlevel-1x"]["sha256"]
    model = MindEyeHighLevel.from_pretrained(brains / "subj01" / "highlevel-1x").eval()
    for i in (0, 7):
        with torch.no_grad():
            backbone, _ = model(torch.from_numpy(s.voxels([i]).astype(np.float32)))
            gen = torch.Generator().manual_seed(row_seed(int(s.seeds()[i]), 0, PRIOR_STREAM))
            want = model.prior.sample(backbone, generator=[gen])
        np.testing.assert_allclose(q.final[i], want[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    token0 = brain_queries(s, brains / "subj01" / "highlevel")
    assert token0.source == "prior-token0" and token0.final_model_sha256 is None
    np.testing.assert_array_equal(token0.projector, q.projector)
    assert not np.allclose(token0.final, q.final)

    with pytest.raises(ConfigMismatchError, match="is not the 1 x 128 model"):  # hash recorded in the bundle
        brain_queries(s, brains / "subj01" / "highlevel", brains / "subj01" / "highlevel")
    s2 = bundle.subject("subj02")  # no 1 x model recorded: the folder's shape is checked instead
    with pytest.raises(DataFormatError, match="maps to 65 x 128 tokens, not the 1 x 128"):
        brain_queries(s2, brains / "subj02" / "highlevel", brains / "subj02" / "highlevel")
    with pytest.raises(DataFormatError, match="300 voxels per trial but the model takes 320"):
        brain_queries(s2, brains / "subj02" / "highlevel", brains / "subj01" / "highlevel-1x")

    build_pool_index(40, "flat", root=tmp_path / "pool", workers=1, progress=False)
    index_dir = tmp_path / "pool" / "demo-pool-v1-n40-flat"
    result, summary = pool_neighbours(bundle, "subj01", open_index(index_dir), brain_dir=brains / "subj01" / "highlevel",
                                      final_dir=brains / "subj01" / "highlevel-1x", n_candidates=4)
    assert result.candidates.shape == (40, 4) and set(result.ids.tolist()) <= set(range(40))
    assert summary["query"] == {"final": "1x-prior", "final_model_sha256": q.final_model_sha256}
    assert "the 1 x 128 model's prior output" in summary["procedure"]
    assert summary["index"]["name"] == "demo-pool-v1-n40-flat" and "path" not in summary["index"]

    with pytest.raises(SystemExit, match=r"no 1 x 128 model in .*subj02[/\\]highlevel-1x.*--stage1 prior-token0"):
        cli_main(["retrieval", "neighbours", "--bundle", str(built / "assets" / "demo_results"), "--subjects", "subj02",
                  "--brain-root", str(brains), "--index", str(index_dir)])


def test_pool_query_ablation_table(built: Path, tmp_path: Path) -> None:
    """training.pool_query_ablation: one row per stage-1 query plus the linear probe; the seen image's own
    embedding is the exact upper bound (cosine 1, and on a pool that holds the seen images, every match)."""
    from mindeye_core.results import open_results
    from mindeye_core.retrieval.pool import build_pool_index

    from training import pool_query_ablation as pqa

    build_pool_index(40, "flat", root=tmp_path / "pool", workers=1, progress=False)
    out = tmp_path / "ablation.md"
    argv = ["--bundle", str(built / "assets" / "demo_results"), "--brain", str(built / "assets" / "demo_brain"),
            "--world", str(built / "world"), "--subjects", "subj01", "--index",
            str(tmp_path / "pool" / "demo-pool-v1-n40-flat"), "--candidates", "4", "--out", str(out)]
    assert pqa.main(argv) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["query"] for r in data["rows"]] == ["1x prior", "1x projector", "65x128 prior token 0", "seen image",
                                                  "seen image, two-stage",
                                                  "linear probe: voxels -> category, colour (no pool)"]
    seen = data["rows"][3]
    assert seen["cosine_to_seen_final"] == pytest.approx(1.0, abs=1e-5)
    for r in data["rows"]:
        assert 0 <= r["category_and_colour"] <= min(r["category"], r["colour"]) <= 1
    assert data["index"] == "demo-pool-v1-n40-flat" and "| subj01 | 1x prior |" in out.read_text()
    # the 1x prior row's cosine is that of the query the neighbours command uses
    from mindeye_core.retrieval.demo import brain_queries
    from mindeye_core.retrieval.pool import demo_pool_embedder
    from mindeye_core.similarity import normalise

    s = open_results(built / "assets" / "demo_results").subject("subj01")
    brains = built / "assets" / "demo_brain" / "subj01"
    q = normalise(brain_queries(s, brains / "highlevel", brains / "highlevel-1x").final)
    want = float(np.mean(np.sum(q * normalise(demo_pool_embedder().encode(s.ground_truth())), 1)))
    assert data["rows"][0]["cosine_to_seen_final"] == pytest.approx(want, abs=1e-5)
