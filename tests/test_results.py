"""Results bundle: round trip, derived retrieval arrays, validation errors, evaluation + CLI end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mindeye_core.errors import DataFormatError
from mindeye_core.metrics import cli as metrics_cli
from mindeye_core.metrics.evaluate import evaluate_bundle
from mindeye_core.metrics.features import load_extractors
from mindeye_core.metrics.retrieval import full_set_ranks
from mindeye_core.results import ResultsWriter, open_results, read_results_manifest

STRENGTHS = [0.0, 0.15, 1.0]


def _subject_arrays(n: int = 8, size: int = 32, dim: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    gt = (rng.random((n, size, size, 3)) * 255).astype(np.uint8)
    finals = np.stack([np.clip(gt / 255.0 + s * rng.standard_normal(gt.shape) * 0.2, 0, 1) for s in (0.3, 0.2, 0.1)])
    img = rng.standard_normal((n, dim)).astype(np.float32)
    return {
        "image_index": np.arange(100, 100 + n),
        "ground_truth": gt,
        "finals": finals.astype(np.float32),
        "blurry": (rng.random((n, size, size, 3)) * 255).astype(np.uint8),
        "brain_embeddings": img + 0.5 * rng.standard_normal((n, dim)).astype(np.float32),
        "image_embeddings": img,
    }


def _write(root: Path, **extra: object) -> Path:
    arrays = _subject_arrays()
    with ResultsWriter(root, strengths=STRENGTHS, world="demo", dataset="demo-test") as w:
        w.add_subject("subj01", n_neighbours=3, **arrays, **extra)  # type: ignore[arg-type]
        w.finalize(metadata={"model": "tiny"})
    return root


def test_round_trip(tmp_path: Path) -> None:
    arrays = _subject_arrays()
    umap = np.random.default_rng(1).standard_normal((2, 8, 2)).astype(np.float32)
    root = _write(tmp_path / "res", umap=umap)
    assert not (tmp_path / "res.partial").exists()
    b = open_results(root)
    assert b.subjects == ["subj01"] and b.strengths == STRENGTHS and b.world == "demo"
    s = b.subject("subj01")
    np.testing.assert_array_equal(s.image_index(), arrays["image_index"])
    np.testing.assert_array_equal(s.ground_truth(), arrays["ground_truth"])
    np.testing.assert_array_equal(s.blurry(), arrays["blurry"])
    want = (arrays["finals"][1] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(s.finals(0.15), want)
    np.testing.assert_array_equal(s.finals(0.15, [2, 3]), want[[2, 3]])
    np.testing.assert_allclose(s.brain_embeddings(), arrays["brain_embeddings"])
    np.testing.assert_allclose(s.umap(), umap)
    ranks = s.retrieval_ranks()
    ref = full_set_ranks(arrays["brain_embeddings"], arrays["image_embeddings"])
    np.testing.assert_array_equal(ranks["brain_to_image"], ref["brain_to_image"])
    np.testing.assert_array_equal(ranks["image_to_brain"], ref["image_to_brain"])
    idx, scores = s.neighbours()
    bn = arrays["brain_embeddings"] / np.linalg.norm(arrays["brain_embeddings"], axis=1, keepdims=True)
    vn = arrays["image_embeddings"] / np.linalg.norm(arrays["image_embeddings"], axis=1, keepdims=True)
    sims = bn @ vn.T
    np.testing.assert_array_equal(idx, np.argsort(-sims, axis=1)[:, :3])
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    with pytest.raises(DataFormatError, match=r"strength 0.5 not in this bundle's grid"):
        s.finals(0.5)
    with pytest.raises(DataFormatError, match="no subject 'subj02'"):
        b.subject("subj02")


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    arrays = _subject_arrays()
    with ResultsWriter(tmp_path / "r", strengths=STRENGTHS, world="demo") as w:
        bad = dict(arrays, finals=arrays["finals"][:2])
        with pytest.raises(DataFormatError, match=r"expected \(S=3 strengths, N, H, W, 3\)"):
            w.add_subject("subj01", **bad)
        bad = dict(arrays, finals=arrays["finals"] * 2)
        with pytest.raises(DataFormatError, match=r"must lie in \[0, 1\]"):
            w.add_subject("subj01", **bad)
        bad = dict(arrays, ground_truth=arrays["ground_truth"][:7])
        with pytest.raises(DataFormatError, match="expected 8 images, got 7"):
            w.add_subject("subj01", **bad)
        nan = arrays["brain_embeddings"].copy()
        nan[0, 0] = np.nan
        with pytest.raises(DataFormatError, match="brain embeddings: 1 NaN/inf"):
            w.add_subject("subj01", **dict(arrays, brain_embeddings=nan))
        with pytest.raises(DataFormatError, match="invalid subject name"):
            w.add_subject("../x", **arrays)
    assert not (tmp_path / "r.partial").exists() and not (tmp_path / "r").exists()  # aborted cleanly
    with pytest.raises(DataFormatError, match=r"strengths must be .* in \[0, 1\]"):
        ResultsWriter(tmp_path / "r2", strengths=[1.5], world="demo")


def test_reader_validates(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not a results bundle: missing"):
        open_results(tmp_path / "nothing")
    root = _write(tmp_path / "res")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["version"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="results format version 99, this code reads 1"):
        open_results(root)
    manifest["version"] = 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    with h5py.File(root / "subj01.h5", "a") as h5:
        del h5["image_embeddings"]
        h5["image_embeddings"] = np.zeros((8, 5), np.float32)
    with pytest.raises(DataFormatError, match=r"image_embeddings has shape \(8, 5\), expected \(8, 6\)"):
        open_results(root)
    (root / "subj01.h5").unlink()
    with pytest.raises(DataFormatError, match="missing file .*subj01.h5"):
        open_results(root)
    assert read_results_manifest(root)["dataset"] == "demo-test"


def test_evaluate_bundle_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _write(tmp_path / "res")
    extractors, unavailable = load_extractors(["alexnet", "clip"], "tiny")
    out = evaluate_bundle(root, extractors=extractors, unavailable={"swav": "offline", "effnet": "offline", "inception": "offline"},
                          retrieval_kwargs={"n_draws": 3})
    entry = out["subj01"]
    assert set(entry["strengths"]) == {"0", "0.15", "1"}
    assert set(entry["strengths"]["0.15"]) == {"pixcorr", "ssim", "alexnet2", "alexnet5", "clip"}
    assert entry["unavailable"]["swav"] == "offline"
    # the strength with the least noise correlates best with the ground truth
    assert entry["strengths"]["1"]["pixcorr"] > entry["strengths"]["0"]["pixcorr"]
    assert "blurry" in entry and entry["retrieval"]["n_candidates"] == 8
    stored = open_results(root).subject("subj01").metrics
    assert stored["strengths"]["0.15"]["pixcorr"] == pytest.approx(entry["strengths"]["0.15"]["pixcorr"])

    # CLI: evaluate with tiny weights, then re-render with `table`
    parser = argparse.ArgumentParser()
    metrics_cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", str(root), "--weights", "tiny", "--metrics", "pixcorr", "ssim", "alexnet2",
                              "--n-draws", "2", "--out", str(tmp_path / "tables")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "| Ours (subj01, strength 0.15)" in text and "| MindEye | .309 | .323 | 94.7% |" in text
    assert (tmp_path / "tables" / "table1.csv").is_file() and (tmp_path / "tables" / "table5_subj01.md").is_file()
    args = parser.parse_args(["table", str(root), "--out", str(tmp_path / "t2"), "--no-reference"])
    assert args.func(args) == 0
    assert "MindEye |" not in (tmp_path / "t2" / "table1.md").read_text()
    args = parser.parse_args(["evaluate", str(tmp_path / "missing")])
    assert args.func(args) == 1
    assert "not a results bundle" in capsys.readouterr().err


def tiny_clip_factory():  # used by the --extractor test below (module:factory import path)
    import torch

    from mindeye_core.metrics.features import FeatureExtractor

    return FeatureExtractor.from_callable("clip", lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1), resize=32)


def test_cli_extractor_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    root = _write(tmp_path / "res")
    sys.modules.setdefault("tests_results_helpers", sys.modules[__name__])
    parser = argparse.ArgumentParser()
    metrics_cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", str(root), "--metrics", "clip", "--n-draws", "1", "--no-store",
                              "--extractor", "clip=tests_results_helpers:tiny_clip_factory", "--out", str(tmp_path / "t")])
    assert args.func(args) == 0
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["subj01"]["protocol"]["sources"]["clip"] == "user-supplied"
    assert 0.0 <= metrics["subj01"]["strengths"]["0.15"]["clip"] <= 1.0
    assert open_results(root).subject("subj01").metrics == {}  # --no-store
    args = parser.parse_args(["evaluate", str(root), "--extractor", "clip"])
    assert args.func(args) == 1
    assert "expects NAME=MODULE:FACTORY" in capsys.readouterr().err


def test_training_evaluate_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    root = _write(tmp_path / "res")
    script = Path(__file__).resolve().parent.parent / "training" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("training_evaluate", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(root), "--metrics", "pixcorr", "ssim", "--n-draws", "2", "--out", str(tmp_path / "t")]) == 0
    assert "Ours (subj01, strength 0.15)" in (tmp_path / "t" / "table1.md").read_text()
    assert "alexnet2" not in open_results(root).subject("subj01").metrics["strengths"]["0.15"]
