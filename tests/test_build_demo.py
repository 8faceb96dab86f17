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
    assert set(models) == {"highlevel", "lowlevel", "ridge-final"} and all(len(v["sha256"]) == 64 for v in models.values())


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
