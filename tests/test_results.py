"""Results bundle v2: round trip, derived retrieval arrays vs brute force, validation errors, interrupted
writes, version-1 refusal, import cost, hub round trip (local folders only), joint UMAP, evaluation + CLI."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from test_similarity import brute_ranks, brute_top_k

from mindeye_core.errors import DataFormatError
from mindeye_core.results import (
    FORMAT_VERSION,
    UMAP_SPACES,
    ResultsWriter,
    RidgeArrays,
    open_results,
    push_results_to_hub,
    read_results_manifest,
    results_from_hub,
)

STRENGTHS = [0.0, 0.15, 1.0]  # S = 3, default 0.15 at position 1
N, K, T, D = 6, 3, 2, 4
STIM_INDEX = np.arange(10) * 7 + 3  # dataset rows of the 10 test images
F16_ATOL = 2.0**-12 + 1e-6  # float16 rounding of a cosine in [-1, 1] (half the spacing 2**-11 near 1)


def _stimuli(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100)
    return STIM_INDEX.copy(), (rng.random((len(STIM_INDEX), size, size, 3)) * 255).astype(np.uint8)


def _subject(seed: int, size: int = 8, n: int = N) -> dict[str, Any]:
    """Every add_subject argument (all optional parts included); images as [0, 1] floats or uint8."""
    rng = np.random.default_rng(seed)
    index = rng.choice(STIM_INDEX, n, replace=False)
    cand = rng.random((n, K, size, size, 3)).astype(np.float32)
    scores = rng.standard_normal((n, K)).astype(np.float32)
    finals = rng.random((len(STRENGTHS), n, size, size, 3)).astype(np.float32)
    finals[1] = cand[np.arange(n), scores.argmax(1)]
    clip = rng.standard_normal((n, T, D)).astype(np.float32)
    return {
        "image_index": index,
        "seeds": rng.integers(0, 2**31, n),
        "finals": finals,
        "candidates": cand,
        "candidate_scores": scores,
        "prior_samples": rng.standard_normal((n, K, T, D)).astype(np.float32),
        "brain_embeddings": clip + 0.7 * rng.standard_normal(clip.shape).astype(np.float32),  # (N, T, D)
        "image_embeddings": clip.reshape(n, T * D),  # (N, E) form
        "blurry": (rng.random((n, size, size, 3)) * 255).astype(np.uint8),
        "backbone_embeddings": rng.standard_normal((n, T * D)),
        "prior_embeddings": clip + 0.3 * rng.standard_normal(clip.shape),
        "umap": rng.standard_normal((len(UMAP_SPACES), n, 2)).astype(np.float32),
        "ridge": RidgeArrays(brain_embeddings=clip + 1.5 * rng.standard_normal(clip.shape),
                             finals=(rng.random((n, size, size, 3)) * 255).astype(np.uint8),
                             blurry=rng.random((n, size, size, 3))),
        "metrics": {"mindeye": {"strengths": {"0.15": {"pixcorr": np.float32(0.25)}}}, "ceiling": float("nan")},
        "provenance": {"models": {"highlevel": {"sha256": "abc"}}},
    }


def _minimal(arrays: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in arrays.items() if k not in ("blurry", "backbone_embeddings", "prior_embeddings",
                                                         "umap", "ridge", "metrics", "provenance")}


def _write(root: Path, size: int = 8, subjects: dict[str, dict[str, Any]] | None = None) -> Path:
    subjects = subjects if subjects is not None else {"subj01": _subject(1, size)}
    with ResultsWriter(root, strengths=STRENGTHS, world="demo", dataset="demo-test") as w:
        w.add_stimuli(*_stimuli(size))
        for name, arrays in subjects.items():
            w.add_subject(name, **arrays)
        w.finalize(metadata={"model": "tiny"}, provenance={"seed": 0})
    return root


def _u8(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else (x * 255.0 + 0.5).astype(np.uint8)


def test_round_trip_two_subjects(tmp_path: Path) -> None:
    a1, a2 = _subject(1), _subject(2)
    root = _write(tmp_path / "res", subjects={"subj01": a1, "subj02": dict(_minimal(a2), store_embeddings=False,
                                                                         test_mode="single")})
    assert not (tmp_path / "res.partial").exists()
    b = open_results(root)
    assert b.subjects == ["subj01", "subj02"] and b.strengths == STRENGTHS and b.default_strength == 0.15
    assert (b.world, b.dataset, b.metadata) == ("demo", "demo-test", {"model": "tiny"})
    assert b.provenance["seed"] == 0 and b.provenance["code_version"]
    assert b.manifest["version"] == FORMAT_VERSION == 2
    idx, images = b.stimuli()
    np.testing.assert_array_equal(idx, STIM_INDEX)
    np.testing.assert_array_equal(images, _stimuli()[1])

    s = b.subject("subj01")
    assert (s.n_samples, s.n_candidates, s.embedding_shape, s.final_size, s.test_mode) == (N, K, (T, D), (8, 8), "average")
    assert s.stored_strengths == STRENGTHS and s.has_candidates and s.has_prior_samples and not s.is_light
    rows = np.searchsorted(STIM_INDEX, a1["image_index"])
    np.testing.assert_array_equal(s.image_index(), a1["image_index"])
    np.testing.assert_array_equal(s.stimulus_rows(), rows)
    np.testing.assert_array_equal(s.ground_truth(), images[rows])
    np.testing.assert_array_equal(s.ground_truth([4, 0, 4]), images[rows[[4, 0, 4]]])
    np.testing.assert_array_equal(s.ground_truth(2), images[rows[2]])
    np.testing.assert_array_equal(s.seeds(), a1["seeds"])
    np.testing.assert_array_equal(s.blurry(3), a1["blurry"][3])
    for pos, strength in enumerate(STRENGTHS):
        np.testing.assert_array_equal(s.finals(strength), _u8(a1["finals"][pos]))
    np.testing.assert_array_equal(s.finals(0.0, [5, 1]), _u8(a1["finals"][0][[5, 1]]))
    np.testing.assert_array_equal(s.finals(), s.finals(0.15))
    np.testing.assert_array_equal(s.candidates(2), _u8(a1["candidates"][2]))
    np.testing.assert_array_equal(s.candidate_scores(), a1["candidate_scores"])
    np.testing.assert_array_equal(s.picked(), a1["candidate_scores"].argmax(1))
    p = s.prior_samples(1)
    assert p.shape == (K, T, D) and p.dtype == np.float16
    np.testing.assert_array_equal(p, a1["prior_samples"][1].astype(np.float16))
    assert s.embedding_spaces == list(UMAP_SPACES)
    e = s.embeddings("projector")
    assert e.shape == (N, T * D) and e.dtype == np.float16
    np.testing.assert_array_equal(e, a1["brain_embeddings"].reshape(N, -1).astype(np.float16))
    umap = s.umap()
    assert umap is not None and list(umap) == list(UMAP_SPACES)
    np.testing.assert_array_equal(umap["backbone"], a1["umap"][1])
    assert s.metrics["mindeye"]["strengths"]["0.15"]["pixcorr"] == pytest.approx(0.25) and s.metrics["ceiling"] is None
    assert s.provenance == {"models": {"highlevel": {"sha256": "abc"}}}

    # retrieval arrays vs brute force (float64 reference)
    sim = s.similarity("brain_to_image")
    ref = brute_top_k(a1["brain_embeddings"], a1["image_embeddings"], N)
    want_sim = np.zeros((N, N))
    np.put_along_axis(want_sim, ref[0], ref[1], axis=1)
    assert sim.dtype == np.float32
    np.testing.assert_allclose(sim, want_sim, rtol=0, atol=F16_ATOL)  # stored float16, read as float32
    assert not np.array_equal(sim, want_sim.astype(np.float32))  # really rounded (float32 would match to 1e-6)
    np.testing.assert_array_equal(s.similarity("image_to_brain"), sim.T)
    r = s.retrieval_ranks()
    np.testing.assert_array_equal(r["brain_to_image"], brute_ranks(want_sim))
    np.testing.assert_array_equal(r["image_to_brain"], brute_ranks(want_sim.T))
    for i in range(N):
        got_i, got_v = s.top_k(i, k=3)
        np.testing.assert_array_equal(got_i, np.argsort(-sim[i], kind="stable")[:3])
        np.testing.assert_array_equal(got_v, np.sort(sim[i])[::-1][:3])
        got_i, _ = s.top_k(i, k=4, direction="image_to_brain")
        np.testing.assert_array_equal(got_i, np.argsort(-sim[:, i], kind="stable")[:4])
    with pytest.raises(ValueError, match="direction must be one of"):
        s.top_k(0, direction="sideways")

    ridge = s.ridge
    assert ridge is not None and ridge.has_blurry and ridge.has_finals
    np.testing.assert_array_equal(ridge.finals(), a1["ridge"].finals)
    np.testing.assert_array_equal(ridge.blurry([1]), _u8(a1["ridge"].blurry)[[1]])
    ridge_sim = ridge.similarity()
    rref = brute_top_k(a1["ridge"].brain_embeddings, a1["image_embeddings"], N)
    want_r = np.zeros((N, N))
    np.put_along_axis(want_r, rref[0], rref[1], axis=1)
    assert ridge_sim.dtype == np.float32
    np.testing.assert_allclose(ridge_sim, want_r, rtol=0, atol=F16_ATOL)
    np.testing.assert_array_equal(ridge.retrieval_ranks()["image_to_brain"], brute_ranks(want_r.T))
    np.testing.assert_array_equal(ridge.top_k(0, 2)[0], np.argsort(-ridge_sim[0], kind="stable")[:2])

    s2 = b.subject("subj02")  # no optional parts
    assert s2.test_mode == "single" and s2.blurry() is None and s2.umap() is None and s2.ridge is None
    assert not s2.has_embeddings and s2.embedding_spaces == []
    with pytest.raises(DataFormatError, match=r"subject subj02 has no stored 'projector' embeddings; stored: \[\]"):
        s2.embeddings("projector")
    np.testing.assert_array_equal(s2.retrieval_ranks()["brain_to_image"],
                                  brute_ranks(_sim64(a2["brain_embeddings"], a2["image_embeddings"])))
    with pytest.raises(DataFormatError, match=r"strength 0.5 not in this bundle's grid"):
        s.finals(0.5)
    with pytest.raises(DataFormatError, match="no subject 'subj03'"):
        b.subject("subj03")
    with pytest.raises(IndexError, match="out of range"):
        s.candidates(N)


def _sim64(brain: np.ndarray, image: np.ndarray) -> np.ndarray:
    bn, vn = (x.reshape(len(x), -1) / np.linalg.norm(x.reshape(len(x), -1), axis=1, keepdims=True) for x in (brain, image))
    return bn @ vn.T


def test_files_use_checksums_and_png_images(tmp_path: Path) -> None:
    root = _write(tmp_path / "res")
    for fname in ("stimuli.h5", "subj01.h5"):
        with h5py.File(root / fname, "r") as h5:
            names: list[str] = []
            h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                ds = h5[name]
                if name.split("/")[-1] in ("images", "blurry", "finals", "candidates"):
                    # one lossless PNG per image (PNG carries CRCs); the dataset has the leading axes only
                    assert ds.attrs["codec"] == "png" and h5py.check_vlen_dtype(ds.dtype) == np.uint8, name
                    assert tuple(ds.attrs["image_shape"]) == (8, 8, 3), name
                    first = np.asarray(ds[(0,) * ds.ndim]).tobytes()
                    assert first[:8] == b"\x89PNG\r\n\x1a\n", name
                else:
                    assert ds.fletcher32, f"{fname}:{name} without fletcher32"
    with h5py.File(root / "subj01.h5", "r") as h5:
        assert h5["prior_samples"].chunks == (1, K, T, D)
        assert h5["finals"].shape == (3, N)


def test_damaged_png_is_named_and_raw_images_still_read(tmp_path: Path) -> None:
    root = _write(tmp_path / "res")
    b = open_results(root)
    finals = b.subject("subj01").finals(1.0)
    blurry = b.subject("subj01").blurry()
    # a bundle written before PNG coding (raw uint8 images, gzip per image) reads the same
    with h5py.File(root / "subj01.h5", "a") as h5:
        del h5["blurry"]
        h5.create_dataset("blurry", data=blurry, chunks=(1, 8, 8, 3), compression="gzip", fletcher32=True)
    np.testing.assert_array_equal(open_results(root).subject("subj01").blurry(), blurry)
    # one flipped byte inside a stored PNG: the read names the file and the dataset
    with h5py.File(root / "subj01.h5", "a") as h5:
        data = np.array(h5["finals"][2, 2])  # strength 1.0 (grid position 2), row 2
        data[len(data) // 2] ^= 0xFF
        h5["finals"][2, 2] = data
    s = open_results(root).subject("subj01")
    np.testing.assert_array_equal(s.finals(1.0, index=1), finals[1])
    with pytest.raises(DataFormatError, match=r"subj01\.h5: dataset 'finals': a stored PNG image is damaged"):
        s.finals(1.0, index=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(finals=a["finals"][:2]), r"subj01 finals: expected shape \(S=3, N=6, H, W, 3\), got \(2, 6, 8, 8, 3\)"),
        (lambda a: a.update(finals=a["finals"] * 2), r"subj01 finals: float images must lie in \[0, 1\]"),
        (lambda a: a.update(candidates=a["candidates"][:, :, :4]), r"subj01 candidates: expected shape \(N=6, K, H=8, W=8, 3\)"),
        (lambda a: a.update(blurry=a["blurry"].astype(np.int32)), "subj01 blurry: images must be uint8 or float"),
        (lambda a: a["candidate_scores"].__setitem__((0, 0), np.nan), "subj01 candidate_scores: 1 NaN/inf values"),
        (lambda a: a["image_index"].__setitem__(2, 999), r"subj01 image_index: 1 values are not in the stimuli \(first: 999\)"),
        (lambda a: a.update(image_index=a["image_index"][:1]), "need at least 2 test samples"),
        (lambda a: a.update(seeds=a["seeds"].astype(float)), "subj01 seeds: expected integers"),
        (lambda a: a.update(seeds=a["seeds"][:5]), r"subj01 seeds: expected shape \(N=6\), got \(5,\)"),
        (lambda a: a.update(picked=(a["candidate_scores"].argmax(1) + 1) % K), "subj01 picked: sample 0 does not pick a best-scoring"),
        (lambda a: a.update(picked=np.full(N, K)), r"subj01 picked: values must lie in \[0, 3\)"),
        (lambda a: a["finals"][1].__setitem__(3, 0.0), r"subj01 finals: at the default strength 0.15 .* 1 samples differ \(first: 3\)"),
        (lambda a: a.update(prior_samples=a["prior_samples"] * 1e6), "subj01 prior_samples: values up to .* overflow float16"),
        (lambda a: a.update(prior_samples=a["prior_samples"][:, :2]), r"subj01 prior_samples: expected shape \(N=6, K=3, T, D\)"),
        (lambda a: a.update(brain_embeddings=a["brain_embeddings"].reshape(N, -1)[:, :7]), r"subj01 projector embeddings: expected shape \(N=6, E=8\)"),
        (lambda a: a.update(backbone_embeddings=np.ones((N, 3, 4))), r"subj01 backbone embeddings: expected shape \(N=6, T=2, D=4\)"),
        (lambda a: a["image_embeddings"].__setitem__(2, 0.0), "subj01 clip_image embeddings: row 2 is all zeros"),
        (lambda a: a.update(umap=a["umap"][:2]), r"subj01 umap: expected shape \(4, N=6, 2\)"),
        (lambda a: a.update(ridge=RidgeArrays(np.full((N, T * D), np.inf))), "subj01 ridge brain_embeddings: 48 NaN/inf"),
        (lambda a: a.update(ridge=RidgeArrays(a["brain_embeddings"], finals=a["blurry"][:3])), r"subj01 ridge finals: expected shape \(N=6"),
        (lambda a: a.update(test_mode="triple"), "test_mode must be one of"),
    ],
)
def test_writer_rejects_bad_subject(tmp_path: Path, change: Any, message: str) -> None:
    _expect_writer_error(tmp_path, _subject(1), change, message)


def _expect_writer_error(tmp_path: Path, arrays: dict[str, Any], change: Any, message: str) -> None:
    """``add_subject(**arrays)`` after ``change(arrays)`` raises ``message``, and the write aborts cleanly."""
    change(arrays)
    with ResultsWriter(tmp_path / "r", strengths=STRENGTHS, world="demo") as w:
        w.add_stimuli(*_stimuli())
        with pytest.raises(DataFormatError, match=message):
            w.add_subject("subj01", **arrays)
    assert not (tmp_path / "r.partial").exists() and not (tmp_path / "r").exists()  # aborted cleanly


def test_writer_rejects_bad_setup(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"strengths must be .* in \[0, 1\]"):
        ResultsWriter(tmp_path / "a", strengths=[1.5], world="demo")
    with pytest.raises(DataFormatError, match="default strength 0.15 is not on the strength grid"):
        ResultsWriter(tmp_path / "b", strengths=[0.0, 1.0], world="demo")
    idx, images = _stimuli()
    with ResultsWriter(tmp_path / "c", strengths=STRENGTHS, world="demo") as w:
        with pytest.raises(DataFormatError, match="call add_stimuli"):
            w.add_subject("subj01", **_subject(1))
        with pytest.raises(DataFormatError, match=r"stimuli image_index: 1 duplicated values \(first: 3\)"):
            w.add_stimuli(np.r_[idx[:-1], idx[0]], images)
        with pytest.raises(DataFormatError, match=r"stimuli images: expected shape \(M=10, H, W, 3\)"):
            w.add_stimuli(idx, images[:9])
        w.add_stimuli(idx, images.transpose(0, 3, 1, 2))  # channels-first accepted
        with pytest.raises(DataFormatError, match="invalid subject name"):
            w.add_subject("../x", **_subject(1))
        w.add_subject("subj01", **_subject(1))
        with pytest.raises(DataFormatError, match="subject subj01 added twice"):
            w.add_subject("subj01", **_subject(1))
        with pytest.raises(DataFormatError, match="subject 'subj09' was not added"):
            w.set_metrics("subj09", {})
        w.set_metrics("subj01", {"x": 1})
        w.finalize()
    assert open_results(tmp_path / "c").subject("subj01").metrics == {"x": 1}
    with pytest.raises(DataFormatError, match="already exists"):
        ResultsWriter(tmp_path / "c", world="demo")


def test_interrupted_write_leaves_nothing_that_opens(tmp_path: Path) -> None:
    root = tmp_path / "res"
    with pytest.raises(RuntimeError, match="boom"):
        with ResultsWriter(root, strengths=STRENGTHS, world="demo") as w:
            w.add_stimuli(*_stimuli())
            w.add_subject("subj01", **_subject(1))
            raise RuntimeError("boom")
    assert not root.exists() and not (tmp_path / "res.partial").exists()
    with pytest.raises(DataFormatError, match="not a results bundle: missing"):
        open_results(root)
    # a process killed mid-write (no __exit__): the partial folder stays, the reader says what happened
    w = ResultsWriter(root, strengths=STRENGTHS, world="demo")
    w.add_stimuli(*_stimuli())
    with pytest.raises(DataFormatError, match=r"res.partial exists: the write was interrupted"):
        open_results(root)
    w.abort()
    # overwrite=True keeps the old bundle until the new one is complete
    old = _write(root)
    with pytest.raises(RuntimeError):
        with ResultsWriter(root, strengths=STRENGTHS, world="other", overwrite=True):
            raise RuntimeError("crash")
    assert open_results(old).world == "demo"


def _edit_manifest(root: Path, fn: Any) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_reader_validates_manifest(tmp_path: Path) -> None:
    root = _write(tmp_path / "res")
    good = (root / "manifest.json").read_text()

    def expect(fn: Any, message: str) -> None:
        (root / "manifest.json").write_text(good)
        _edit_manifest(root, fn)
        with pytest.raises(DataFormatError, match=message):
            open_results(root)

    assert json.loads(good)["_class"] == "mindeye-results" and json.loads(good)["_format_version"] == 2
    expect(lambda m: m.update(_format_version=1), re.escape(
        f"results bundle {root} is format version 1; this code reads version 2: rebuild it with "
        "`mindeye build-demo` or re-run the reconstruction"))
    v1 = {k: v for k, v in json.loads(good).items() if not k.startswith("_")}  # as the v1 writer wrote it
    expect(lambda m: (m.clear(), m.update(v1, format="mindeye-results", version=1)), "is format version 1; .*rebuild")
    expect(lambda m: m.update(_format_version=3), r"mindeye-results format version 3 is not supported \(this code "
                                                  r"reads version 2\); it was written by a newer mindeye_core: upgrade")
    expect(lambda m: m.update(_format_version="2"), r"format version '2' is not supported")
    expect(lambda m: m.update(_class="mindeye-dataset"), "holds a 'mindeye-dataset' results manifest, not a 'mindeye-results' one")
    expect(lambda m: m.pop("default_strength"), "missing key 'default_strength'")
    expect(lambda m: m.update(default_strength=0.5), "default_strength 0.5 is not on the grid")
    expect(lambda m: m["subjects"]["subj01"].pop("n_candidates"), "subject subj01 lacks 'n_candidates'")
    expect(lambda m: m["stimuli"].pop("image_size"), "stimuli lacks 'image_size'")
    expect(lambda m: m["subjects"]["subj01"].update(file="subj09.h5"), r"missing file .*subj09.h5")
    expect(lambda m: m["subjects"]["subj01"].update(n_candidates=4),
           r"subj01.h5: dataset 'candidates' has shape \(6, 3, 8, 8, 3\), expected \(6, 4, 8, 8, 3\)")
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="corrupt results manifest"):
        open_results(root)
    (root / "manifest.json").write_text(good)
    assert read_results_manifest(root)["dataset"] == "demo-test"


@pytest.mark.parametrize(
    ("key", "data", "message"),
    [
        ("candidate_scores", np.zeros((N - 1, K), np.float32), r"dataset 'candidate_scores' has shape \(5, 3\), expected \(6, 3\)"),
        ("seed", np.zeros(N, np.int32), "dataset 'seed' has dtype int32, expected int64"),
        ("retrieval/similarity", np.zeros((N, N - 1), np.float32), r"dataset 'retrieval/similarity' has shape \(6, 5\)"),
        ("embeddings/prior", np.zeros((N, T * D), np.float32), "dataset 'embeddings/prior' has dtype float32, expected float16"),
        ("umap", None, "missing dataset 'umap'"),
        ("ridge/finals", None, "missing dataset 'ridge/finals'"),
        ("stimulus_row", np.full(N, 10, np.int64), r"dataset 'stimulus_row' has values outside \[0, 10\)"),
        ("stimulus_row", np.zeros(N, np.int64), "dataset 'stimulus_row' does not point at the stimuli of 'image_index'"),
        ("picked", np.full(N, -1, np.int64), r"dataset 'picked' has values outside \[0, 3\)"),
    ],
)
def test_reader_validates_arrays(tmp_path: Path, key: str, data: np.ndarray | None, message: str) -> None:
    root = _write(tmp_path / "res")
    with h5py.File(root / "subj01.h5", "a") as h5:
        del h5[key]
        if data is not None:
            h5[key] = data
    with pytest.raises(DataFormatError, match=r"subj01\.h5: " + message):
        open_results(root)
    open_results(root, validate_arrays=False)  # the manifest alone is fine


# ------------------------------------------------------------------------------------ light bundles
LIGHT_STORED = [1.0, 0.15]  # any order: the order of the /finals axis


def _light(seed: int, size: int = 8, n: int = N) -> dict[str, Any]:
    """A light subject: finals at 1.0 and 0.15 only, no candidates, no prior samples, no stored embeddings
    (UMAP still given), flat embeddings with an explicit embedding_shape; metrics on the whole grid."""
    a = _subject(seed, size, n)
    finals = a["finals"][[2, 1]]
    finals[1] = 1.0 - finals[1]  # without stored candidates nothing ties the default final to them
    grid = {f"{s:g}": {"pixcorr": 0.1 + s} for s in STRENGTHS}
    return dict(
        a, finals=finals, stored_strengths=LIGHT_STORED, candidates=None, prior_samples=None,
        brain_embeddings=a["brain_embeddings"].reshape(n, T * D), embedding_shape=(T, D), store_embeddings=False,
        metrics={"strengths": grid, "retrieval": {"brain_to_image": 0.5}, "unavailable": {},
                 "ridge": {"strengths": {"0.15": {"pixcorr": 0.05}}}, "ceiling": {"strengths": {"0": {"pixcorr": 0.6}}}},
    )


def test_light_bundle_round_trip(tmp_path: Path) -> None:
    a = _light(1)
    derived = dict(_minimal(_subject(2)), prior_samples=None)  # (T, D) from the 3-D brain embeddings
    root = _write(tmp_path / "res", subjects={"subj01": a, "subj02": derived})
    info = json.loads((root / "manifest.json").read_text())["subjects"]["subj01"]
    assert (info["stored_strengths"], info["has_candidates"], info["has_prior_samples"]) == (LIGHT_STORED, False, False)
    assert (info["has_embeddings"], info["has_umap"], info["embedding_shape"]) == (False, True, [T, D])
    with h5py.File(root / "subj01.h5", "r") as h5:
        assert "candidates" not in h5 and "prior_samples" not in h5 and "embeddings" not in h5
        assert h5["finals"].shape == (2, N) and tuple(h5["finals"].attrs["image_shape"]) == (8, 8, 3)
        assert h5["retrieval/similarity"].dtype == np.float16 and h5["ridge/retrieval/similarity"].dtype == np.float16

    b = open_results(root)
    s = b.subject("subj01")
    assert s.stored_strengths == LIGHT_STORED and s.is_light and not s.has_candidates and not s.has_prior_samples
    assert (s.n_candidates, s.embedding_shape) == (K, (T, D))
    np.testing.assert_array_equal(s.finals(1.0), _u8(a["finals"][0]))
    np.testing.assert_array_equal(s.finals(), _u8(a["finals"][1]))
    np.testing.assert_array_equal(s.finals(0.15, [3, 0]), _u8(a["finals"][1][[3, 0]]))
    assert [s.has_final(x) for x in (0.0, 0.15, 1.0, 0.5)] == [False, True, True, False]
    with pytest.raises(DataFormatError, match=re.escape("stores no finals at strength 0 (a light bundle); "
                                                        "stored strengths: [1.0, 0.15]: regenerate it live")):
        s.finals(0.0, 1)
    with pytest.raises(DataFormatError, match=r"strength 0.5 not in this bundle's grid"):
        s.finals(0.5)
    with pytest.raises(DataFormatError, match=r"subj01\.h5: subject subj01: this bundle stores no candidate images "
                                              r"\(a light bundle\): regenerate them"):
        s.candidates(0)
    with pytest.raises(DataFormatError, match=r"subject subj01: this bundle stores no prior samples \(a light bundle\)"):
        s.prior_samples(0)
    with pytest.raises(DataFormatError, match="no stored 'projector' embeddings"):
        s.embeddings("projector")
    np.testing.assert_array_equal(s.candidate_scores(), a["candidate_scores"])
    np.testing.assert_array_equal(s.picked(), a["candidate_scores"].argmax(1))
    umap = s.umap()
    assert umap is not None
    np.testing.assert_array_equal(umap["prior"], a["umap"][3])
    assert s.metrics["strengths"]["0"]["pixcorr"] == pytest.approx(0.1)  # metrics on the whole grid
    assert s.metrics["ceiling"]["strengths"]["0"]["pixcorr"] == 0.6
    np.testing.assert_array_equal(s.retrieval_ranks()["brain_to_image"],
                                  brute_ranks(_sim64(a["brain_embeddings"], a["image_embeddings"])))
    assert s.ridge is not None and s.ridge.similarity().shape == (N, N)

    s2 = b.subject("subj02")
    assert s2.embedding_shape == (T, D) and s2.has_candidates and not s2.has_prior_samples
    assert s2.stored_strengths == STRENGTHS and s2.is_light and s2.has_embeddings
    full = _write(tmp_path / "full")
    s3 = open_results(full).subject("subj01")
    assert s3.stored_strengths == STRENGTHS and s3.has_candidates and s3.has_prior_samples and not s3.is_light
    assert all(s3.has_final(x) for x in STRENGTHS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(stored_strengths=[0.0], finals=a["finals"][:1]),
         r"subj01 stored_strengths: must contain the default strength 0.15, got \[0.0\]"),
        (lambda a: a.update(stored_strengths=[0.15, 0.5]), r"subj01 stored_strengths: strength 0.5 is not on the strength grid"),
        (lambda a: a.update(stored_strengths=[0.15, 0.15]), r"subj01 stored_strengths: duplicate strengths in \[0.15, 0.15\]"),
        (lambda a: a.update(stored_strengths=[]), "subj01 stored_strengths: no strengths"),
        (lambda a: a.update(stored_strengths="0.15"), "subj01 stored_strengths: expected a list of strengths"),
        (lambda a: a.update(stored_strengths=[0.15]), r"subj01 finals: expected shape \(S=1, N=6, H, W, 3\), got \(2, 6, 8, 8, 3\)"),
        (lambda a: a.update(embedding_shape=None),
         r"subj01 embedding_shape: prior_samples is None and brain_embeddings are flat \(6, 8\): pass embedding_shape=\(T, D\)"),
        (lambda a: a.update(embedding_shape=(T,)), r"subj01 embedding_shape: expected two positive ints \(T, D\), got \(2,\)"),
        (lambda a: a.update(embedding_shape=(D, T), brain_embeddings=a["brain_embeddings"].reshape(N, T, D)),
         r"subj01 projector embeddings: expected shape \(N=6, T=4, D=2\), got \(6, 2, 4\)"),
        (lambda a: a.update(embedding_shape=(D, T), prior_samples=np.zeros((N, K, T, D))),
         r"subj01 embedding_shape: \(4, 2\) disagrees with prior_samples tokens \(2, 4\)"),
        (lambda a: a.update(candidate_scores=None), r"candidate_scores \(N, K\) are required, also without stored candidates"),
        (lambda a: a.update(candidate_scores=a["candidate_scores"][:, :0]), "subj01 candidate_scores: need at least one candidate"),
        (lambda a: a.update(candidates=np.zeros((N, K, 8, 8, 3), np.uint8), candidate_scores=a["candidate_scores"][:, :2]),
         r"subj01 candidate_scores: expected shape \(N=6, K=3\), got \(6, 2\)"),
        (lambda a: a.update(candidates=np.zeros((N, K, 8, 8, 3), np.uint8)),  # stored: the default final must match
         r"subj01 finals: at the default strength 0.15 finals must be candidates\[i, picked\[i\]\]"),
    ],
)
def test_writer_rejects_bad_light_subject(tmp_path: Path, change: Any, message: str) -> None:
    _expect_writer_error(tmp_path, _light(1), change, message)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(has_candidates=True), r"subj01\.h5: missing dataset 'candidates'"),
        (lambda m: m.update(has_prior_samples=True), r"subj01\.h5: missing dataset 'prior_samples'"),
        (lambda m: m.update(stored_strengths=[1.0, 0.15, 0.0]),
         r"subj01\.h5: dataset 'finals' has shape \(2, 6, 8, 8, 3\), expected \(3, 6, 8, 8, 3\)"),
        (lambda m: m.update(stored_strengths=[1.0]), r"subject subj01 stored_strengths: must contain the default strength 0.15"),
        (lambda m: m.update(stored_strengths=[0.15, 0.5]), r"subject subj01 stored_strengths: strength 0.5 is not on the strength grid"),
        (lambda m: m.update(stored_strengths=0.15), r"subject subj01 stored_strengths: expected a list"),
        (lambda m: m.update(has_prior_samples="no"), r"subject subj01: 'has_prior_samples' must be true or false, got 'no'"),
        (lambda m: m.pop("stored_strengths"), r"subject subj01 lacks 'stored_strengths' \(written before light bundles existed"),
        (lambda m: m.pop("has_candidates"), r"subject subj01 lacks 'has_candidates'"),
    ],
)
def test_reader_validates_light_manifest(tmp_path: Path, edit: Any, message: str) -> None:
    root = _write(tmp_path / "res", subjects={"subj01": _light(1)})
    _edit_manifest(root, lambda m: edit(m["subjects"]["subj01"]))
    with pytest.raises(DataFormatError, match=message):
        open_results(root)


@pytest.mark.parametrize(
    ("key", "data", "message"),
    [
        ("finals", np.zeros((2, N - 1, 8, 8, 3), np.uint8), r"dataset 'finals' has shape \(2, 5, 8, 8, 3\), expected \(2, 6, 8, 8, 3\)"),
        ("finals", np.zeros((3, N, 8, 8, 3), np.uint8), r"dataset 'finals' has shape \(3, 6, 8, 8, 3\), expected \(2, 6, 8, 8, 3\)"),
        ("candidate_scores", np.zeros((N, K - 1), np.float32), r"dataset 'candidate_scores' has shape \(6, 2\), expected \(6, 3\)"),
        ("retrieval/similarity", np.zeros((N, N), np.float32), "dataset 'retrieval/similarity' has dtype float32, expected float16"),
        ("ridge/retrieval/similarity", np.zeros((N, N), np.float32),
         "dataset 'ridge/retrieval/similarity' has dtype float32, expected float16"),
        ("umap", np.zeros((4, N - 1, 2), np.float32), r"dataset 'umap' has shape \(4, 5, 2\), expected \(4, 6, 2\)"),
    ],
)
def test_reader_validates_light_arrays(tmp_path: Path, key: str, data: np.ndarray, message: str) -> None:
    root = _write(tmp_path / "res", subjects={"subj01": _light(1)})
    with h5py.File(root / "subj01.h5", "a") as h5:
        del h5[key]
        h5[key] = data
    with pytest.raises(DataFormatError, match=r"subj01\.h5: " + message):
        open_results(root)


def test_reader_validates_files(tmp_path: Path) -> None:
    root = _write(tmp_path / "res")
    with h5py.File(root / "stimuli.h5", "a") as h5:
        del h5["images"]
        h5["images"] = np.zeros((10, 8, 8, 3), np.float32)
    with pytest.raises(DataFormatError, match=r"stimuli\.h5: dataset 'images' has dtype float32, expected uint8"):
        open_results(root)
    (root / "subj01.h5").write_bytes(b"not an hdf5 file")
    (root / "stimuli.h5").unlink()
    with pytest.raises(DataFormatError, match=r"missing file .*stimuli\.h5"):
        open_results(root, validate_arrays=False)
    shutil.copy(root / "subj01.h5", root / "stimuli.h5")
    with pytest.raises(DataFormatError, match=r"corrupt results file .*stimuli\.h5"):
        open_results(root)


def test_reading_imports_no_torch_metrics_umap_or_plotly(tmp_path: Path) -> None:
    root = _write(tmp_path / "res")
    code = f"""
import sys
from mindeye_core.results import open_results
b = open_results({str(root)!r})
s = b.subject("subj01")
s.ground_truth([0, 1]); s.finals(0.15, 2); s.candidates(0); s.prior_samples(0); s.umap(); s.embeddings("prior")
s.top_k(0, k=3, direction="image_to_brain"); s.retrieval_ranks(); s.ridge.similarity(); b.stimuli()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "umap", "plotly", "numba")
             or m.startswith("mindeye_core.metrics"))
print(bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


class _FakeHub:
    """Stand-ins for the huggingface_hub calls: a local folder per (repo, revision); calls bind to real signatures."""

    def __init__(self, hub_dir: Path) -> None:
        import huggingface_hub

        self.dir = hub_dir
        self.calls: list[tuple[str, dict[str, Any]]] = []
        real_api, self.real_download = huggingface_hub.HfApi, huggingface_hub.snapshot_download  # before patching
        fake = self

        class Api:
            def __init__(self, **kwargs: Any) -> None:
                inspect.signature(real_api).bind(**kwargs)

            def create_repo(self, *args: Any, **kwargs: Any) -> None:
                fake._record("create_repo", real_api.create_repo, args, kwargs)

            def create_branch(self, *args: Any, **kwargs: Any) -> None:
                fake._record("create_branch", real_api.create_branch, args, kwargs)

            def upload_folder(self, *args: Any, **kwargs: Any) -> str:
                b = fake._record("upload_folder", real_api.upload_folder, args, kwargs)
                dst = fake.dir / b["repo_id"] / (b.get("revision") or "main")
                shutil.copytree(b["folder_path"], dst, dirs_exist_ok=True)
                return f"https://hub.invalid/datasets/{b['repo_id']}/commit/1"

        self.Api = Api

    def _record(self, name: str, real: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = inspect.signature(real).bind(None, *args, **kwargs).arguments
        bound.pop("self")
        self.calls.append((name, bound))
        return bound

    def snapshot_download(self, *args: Any, **kwargs: Any) -> str:
        b = inspect.signature(self.real_download).bind(*args, **kwargs).arguments
        self.calls.append(("snapshot_download", b))
        src = self.dir / b["repo_id"] / (b.get("revision") or "main")
        if not src.is_dir():
            raise FileNotFoundError(f"no such repo/revision {src}")
        dst = Path(b.get("local_dir") or Path(b["cache_dir"]) / b["repo_id"].replace("/", "--"))
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return str(dst)


def test_hub_round_trip_via_local_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    hub = _FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    root = _write(tmp_path / "res")
    url = push_results_to_hub(root, "me/demo-results", revision="v2", private=True, token="t")
    assert "me/demo-results" in url
    names = [c[0] for c in hub.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1]["repo_type"] == "dataset" and hub.calls[0][1]["exist_ok"] and hub.calls[0][1]["private"]
    assert hub.calls[2][1]["repo_type"] == "dataset" and hub.calls[2][1]["revision"] == "v2"

    b = results_from_hub("me/demo-results", revision="v2", cache_dir=tmp_path / "cache")
    assert hub.calls[-1][1]["repo_type"] == "dataset" and hub.calls[-1][1]["revision"] == "v2"
    np.testing.assert_array_equal(b.subject("subj01").retrieval_ranks()["brain_to_image"],
                                  open_results(root).subject("subj01").retrieval_ranks()["brain_to_image"])
    b2 = results_from_hub("me/demo-results", revision="v2", local_dir=tmp_path / "here")
    assert b2.root == tmp_path / "here"
    assert results_from_hub(str(root)).root == root  # a local folder is used as-is, no hub call
    assert hub.calls[-1][0] == "snapshot_download" and len(hub.calls) == 5
    from mindeye_core.errors import MindEyeError

    with pytest.raises(MindEyeError, match="could not fetch results bundle 'me/missing'"):
        results_from_hub("me/missing", cache_dir=tmp_path / "cache")
    with pytest.raises(DataFormatError, match="not a results bundle"):
        push_results_to_hub(tmp_path / "nothing", "me/x")


def test_bundle_umap_contract_without_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    """bundle_umap's contract (the four spaces, in UMAP_SPACES order, kwargs passed on) with a fake joint_umap;
    the real fit is the slow test below. joint_umap's input checks run before umap-learn is imported."""
    from mindeye_core import projection

    calls: list[tuple[list[str], dict[str, Any]]] = []

    def fake_joint_umap(embeddings: dict[str, Any], **kwargs: Any) -> np.ndarray:
        calls.append((list(embeddings), kwargs))
        n = len(next(iter(embeddings.values())))
        return np.stack([np.full((n, 2), i, np.float32) for i in range(len(embeddings))])

    monkeypatch.setattr(projection, "joint_umap", fake_joint_umap)
    emb = {s: np.ones((N, T * D)) for s in reversed(UMAP_SPACES)}
    out = projection.bundle_umap(emb, seed=3, n_neighbors=5)
    assert calls == [(list(UMAP_SPACES), {"seed": 3, "n_neighbors": 5})]
    assert out.shape == (len(UMAP_SPACES), N, 2) and out[2, 0, 0] == 2  # row 2 = "projector"
    for bad in ({s: emb[s] for s in UMAP_SPACES[:3]}, dict(emb, extra=emb["prior"])):
        with pytest.raises(DataFormatError, match="needs exactly the spaces"):
            projection.bundle_umap(bad)
    monkeypatch.undo()
    base = np.ones((N, T * D))
    with pytest.raises(DataFormatError, match=r"backbone embeddings have shape \(6, 3\)"):
        projection.joint_umap({"clip_image": base, "backbone": base[:, :3]})
    with pytest.raises(DataFormatError, match="no embedding sets given"):
        projection.joint_umap({})


@pytest.mark.slow  # numba compiles umap-learn for ~25 s
def test_joint_umap_deterministic_and_shaped() -> None:
    from mindeye_core.projection import bundle_umap, joint_umap

    rng = np.random.default_rng(0)
    base = rng.standard_normal((N, T * D))
    emb = {s: base + 0.5 * rng.standard_normal(base.shape) for s in UMAP_SPACES}
    emb["projector"] = emb["projector"].reshape(N, T, D)  # any (N, ...) shape is flattened
    a = bundle_umap(emb, seed=3)
    assert a.shape == (len(UMAP_SPACES), N, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, bundle_umap(emb, seed=3))  # same seed, same coordinates
    two = joint_umap({"prior": emb["prior"], "clip_image": emb["clip_image"]}, seed=3)
    assert two.shape == (2, N, 2) and not np.array_equal(two, a[[3, 0]])  # a different fit


# ------------------------------------------------------------------------------ evaluation + CLI (v2)
def _eval_bundle(root: Path) -> Path:
    """A 32 x 32 bundle (N = 8, blurry images, no other optional part) for the metrics tests."""
    arrays = _subject(1, size=32, n=8)
    return _write(root, size=32, subjects={"subj01": dict(_minimal(arrays), blurry=arrays["blurry"])})


def test_evaluate_bundle_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mindeye_core.metrics import cli as metrics_cli
    from mindeye_core.metrics.evaluate import evaluate_bundle
    from mindeye_core.metrics.features import load_extractors

    root = _eval_bundle(tmp_path / "res")
    extractors, _ = load_extractors(["alexnet", "clip"], "tiny")
    out = evaluate_bundle(root, extractors=extractors, unavailable={"swav": "offline", "effnet": "offline", "inception": "offline"},
                          retrieval_kwargs={"n_draws": 3})
    entry = out["subj01"]
    assert set(entry["strengths"]) == {"0", "0.15", "1"}
    assert set(entry["strengths"]["0.15"]) == {"pixcorr", "ssim", "alexnet2", "alexnet5", "clip"}
    assert entry["unavailable"]["swav"] == "offline" and "blurry" in entry
    ranks = open_results(root).subject("subj01").retrieval_ranks()
    assert entry["retrieval"]["n_candidates"] == 8
    assert entry["retrieval"]["full_brain_to_image"] == pytest.approx((ranks["brain_to_image"] == 0).mean())
    stored = open_results(root).subject("subj01").metrics
    assert stored["strengths"]["0.15"]["pixcorr"] == pytest.approx(entry["strengths"]["0.15"]["pixcorr"])

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


def test_evaluate_light_bundle_keeps_ridge_ceiling_and_unstored_strengths(tmp_path: Path) -> None:
    from mindeye_core.metrics.evaluate import evaluate_bundle

    root = _write(tmp_path / "res", size=32, subjects={"subj01": _light(1, size=32, n=8)})
    before = open_results(root).subject("subj01").metrics
    out = evaluate_bundle(root, metrics=("pixcorr", "ssim"), retrieval_kwargs={"n_draws": 2})["subj01"]
    assert out["ridge"] == before["ridge"] and out["ceiling"] == before["ceiling"]
    assert set(out["strengths"]) == {"1", "0.15", "0"}
    assert out["strengths"]["0"] == before["strengths"]["0"]  # not stored: the previous number is kept
    assert out["strengths"]["0.15"]["pixcorr"] != before["strengths"]["0.15"]["pixcorr"]  # stored: recomputed
    assert out["protocol"]["strengths_from_previous_metrics"] == ["0"]
    s = open_results(root).subject("subj01")
    assert s.metrics["ceiling"] == before["ceiling"] and set(s.metrics["strengths"]["1"]) == {"pixcorr", "ssim"}
    ranks = s.retrieval_ranks()
    assert out["retrieval"]["full_image_to_brain"] == pytest.approx((ranks["image_to_brain"] == 0).mean())
    with pytest.raises(DataFormatError, match="stores no finals at strength 0 "):
        evaluate_bundle(root, metrics=("pixcorr",), strengths=[0.0], store=False)


def tiny_clip_factory():  # used by the --extractor test below (module:factory import path)
    import torch

    from mindeye_core.metrics.features import FeatureExtractor

    return FeatureExtractor.from_callable("clip", lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1), resize=32)


def test_cli_extractor_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mindeye_core.metrics import cli as metrics_cli

    root = _eval_bundle(tmp_path / "res")
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


def test_training_evaluate_script(tmp_path: Path) -> None:
    import importlib.util

    root = _eval_bundle(tmp_path / "res")
    script = Path(__file__).resolve().parent.parent / "training" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("training_evaluate", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(root), "--metrics", "pixcorr", "ssim", "--n-draws", "2", "--out", str(tmp_path / "t")]) == 0
    assert "Ours (subj01, strength 0.15)" in (tmp_path / "t" / "table1.md").read_text()
    assert "alexnet2" not in open_results(root).subject("subj01").metrics["strengths"]["0.15"]


def test_voxels_and_a_ridge_in_its_own_space(tmp_path: Path) -> None:
    """Light bundles carry the samples' betas (float16) and the ridge may retrieve in another space."""
    from mindeye_core.results import RidgeArrays
    from mindeye_core.similarity import full_set_ranks

    rng = np.random.default_rng(5)
    a = _subject(1)
    vox = rng.normal(size=(N, 11)).astype(np.float32)
    pred, img = rng.normal(size=(N, 7)), rng.normal(size=(N, 7))
    a.update(voxels=vox, ridge=RidgeArrays(brain_embeddings=pred, image_embeddings=img, space="clip_final"))
    s = open_results(_write(tmp_path / "res", subjects={"subj01": a})).subject("subj01")
    assert s.has_voxels and s.voxels().dtype == np.float16
    np.testing.assert_array_equal(s.voxels([2, 0]), vox[[2, 0]].astype(np.float16))
    assert s.ridge is not None and s.ridge.space == "clip_final"
    want = full_set_ranks(pred, img)
    np.testing.assert_array_equal(s.ridge.retrieval_ranks()["brain_to_image"], want["brain_to_image"])
    with pytest.raises(DataFormatError, match=r"ridge brain_embeddings: .*shape"):
        _write(tmp_path / "bad", subjects={"subj01": dict(a, ridge=RidgeArrays(brain_embeddings=pred[:, :5], image_embeddings=img))})
    b = _subject(2)
    assert not open_results(_write(tmp_path / "plain", subjects={"subj01": b})).subject("subj01").has_voxels
    with pytest.raises(DataFormatError, match="stores no voxels"):
        open_results(tmp_path / "plain").subject("subj01").voxels()
