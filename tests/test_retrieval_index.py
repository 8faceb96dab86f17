"""Retrieval indexes: exact back ends equal numpy brute force, approximate ones meet a recall bound, builds
from an embeddings file / image folder / generator resume to the same index, wrong-model queries refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mindeye_core.errors import DataFormatError, MindEyeError
from mindeye_core.retrieval import (
    EmbeddingsFileSource,
    ExactRetriever,
    FaissRetriever,
    ImageFolderSource,
    KeyedImageSource,
    ModelInfo,
    ModelMismatchError,
    build_index,
    exact_top_k_parts,
    open_index,
    recall_at_k,
)

MODEL = ModelInfo("test-model", "a" * 64, "final", 16)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_top_k(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy brute force: full similarity matrix, stable sort (ties by lower row)."""
    sims = _unit(q.astype(np.float64)) @ _unit(c.astype(np.float64)).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, 1)


def _clustered(n: int, d: int, seed: int, centres: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    return (c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d))).astype(np.float32)


def _embeddings_file(tmp_path: Path, x: np.ndarray, name: str = "emb.npy") -> Path:
    path = tmp_path / name
    np.save(path, x)
    return path


def test_exact_back_ends_equal_brute_force(tmp_path: Path) -> None:
    x = _clustered(3000, 16, 0)
    q = _clustered(40, 16, 1)
    want_idx, want_sc = brute_top_k(q, x, 10)
    ids = np.arange(3000) + 10_000
    res = build_index(tmp_path / "flat", EmbeddingsFileSource(_embeddings_file(tmp_path, x), model=MODEL, ids=ids),
                      chunk_size=700, progress=False)
    assert res.meta["n_items"] == 3000 and res.meta["factory"] == "Flat" and res.meta["recall"] is None
    ix = open_index(tmp_path / "flat")
    retrievers = [ExactRetriever(x, ids, chunk_size=7), FaissRetriever(x, ids), ix]
    for r in retrievers:
        scores, got = r.search(q, 10)
        np.testing.assert_array_equal(got, ids[want_idx])
        np.testing.assert_allclose(scores, want_sc, atol=2e-6)
    rows, sc = exact_top_k_parts(_unit(q), [_unit(x)[s : s + 450] for s in range(0, 3000, 450)], 10)
    np.testing.assert_array_equal(rows, want_idx)
    np.testing.assert_allclose(sc, want_sc, atol=2e-6)
    np.testing.assert_allclose(np.concatenate(list(ix.vectors())), _unit(x), atol=1e-6)


@pytest.mark.parametrize("kind, params, bound", [
    ("ivfpq", {"nlist": 64, "m": 16, "nbits": 4, "nprobe": 16}, 0.65),  # measured 0.75 (build) / 0.87
    ("hnsw", {"M": 16, "efSearch": 64}, 0.9),
])
def test_approximate_indexes_meet_recall_bound(tmp_path: Path, kind: str, params: dict, bound: float) -> None:
    x = _clustered(6000, 16, 2)
    q = _clustered(100, 16, 3)
    exact, _ = brute_top_k(q, x, 10)
    res = build_index(tmp_path / kind, EmbeddingsFileSource(_embeddings_file(tmp_path, x), model=MODEL),
                      kind=kind, params=params, chunk_size=2000, progress=False)
    assert res.meta["search_params"]["nprobe" if kind == "ivfpq" else "efSearch"] == params.get("nprobe",
                                                                                                params.get("efSearch"))
    assert res.meta["recall"]["recall@10"] >= bound  # measured at build time (200 indexed items as queries)
    _, got = open_index(tmp_path / kind).search(q, 10)
    measured = recall_at_k(got, exact, 10)
    assert measured >= bound
    assert measured < 1.0 or kind == "hnsw"  # PQ codes are lossy: the bound is not trivially met
    if kind == "ivfpq":
        assert res.meta["memory_bytes"] < res.meta["flat_bytes"] / 2
        assert FaissRetriever(x, kind=kind, params=params).index.nprobe == 16


def test_wrong_model_is_refused(tmp_path: Path) -> None:
    x = _clustered(200, 16, 4)
    build_index(tmp_path / "ix", EmbeddingsFileSource(_embeddings_file(tmp_path, x), model=MODEL), progress=False)
    other = ModelInfo("other-model", "b" * 64, "final", 16)
    with pytest.raises(ModelMismatchError, match="other-model.*test-model.*weights sha256"):
        open_index(tmp_path / "ix", model=other)
    ix = open_index(tmp_path / "ix", model=MODEL)
    with pytest.raises(ModelMismatchError, match="space 'hidden' != 'final'"):
        ix.search(x[:2], 3, model=ModelInfo("test-model", "a" * 64, "hidden", 16))
    assert ix.search(x[:2], 3, model=MODEL)[1][:, 0].tolist() == [0, 1]
    with pytest.raises(DataFormatError, match="query dimension 8 != index dimension 16"):
        ix.search(x[:2, :8], 3)


def _render(keys: np.ndarray) -> np.ndarray:
    """A tiny keyed 'generator': image k is a flat colour plus a k-dependent stripe (picklable)."""
    out = np.zeros((len(keys), 16, 16, 3), np.uint8)
    for i, k in enumerate(np.asarray(keys).tolist()):
        rng = np.random.default_rng(k)
        out[i] = rng.integers(0, 256, 3, dtype=np.uint8)
        out[i, k % 16] = 255
    return out


class _Embedder:
    """Stand-in image embedder: fixed random projection of the pixels (deterministic)."""

    def __init__(self) -> None:
        self.info = ModelInfo("pixels", "c" * 64, "final", 16)
        self.proj = np.random.default_rng(0).standard_normal((16 * 16 * 3, 16)).astype(np.float32)

    def encode(self, images: np.ndarray) -> np.ndarray:
        v = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0 @ self.proj
        return _unit(v).astype(np.float32)


def test_generator_build_resumes_to_the_same_index(tmp_path: Path) -> None:
    src = KeyedImageSource(np.arange(100, 150), _render, name="stripes")
    emb = _Embedder()
    first = build_index(tmp_path / "a", src, embedder=emb, chunk_size=8, progress=False, max_chunks=3)
    assert first.meta == {"complete": False, "parts_done": 3, "parts": 7}
    with pytest.raises(DataFormatError, match="unfinished build: run the same build command again"):
        open_index(tmp_path / "a")
    with pytest.raises(MindEyeError, match="unfinished build of something else"):
        build_index(tmp_path / "a", KeyedImageSource(np.arange(100, 151), _render, name="stripes"), embedder=emb,
                    chunk_size=8, progress=False)
    done = build_index(tmp_path / "a", src, embedder=emb, chunk_size=8, progress=False)
    build_index(tmp_path / "b", src, embedder=emb, chunk_size=8, progress=False)
    assert done.meta["n_items"] == 50 and done.meta["model"]["name"] == "pixels"
    a, b = open_index(tmp_path / "a"), open_index(tmp_path / "b")
    np.testing.assert_array_equal(a.ids, np.arange(100, 150))
    q = emb.encode(_render(np.array([104, 133])))
    assert a.search(q, 1)[1][:, 0].tolist() == [104, 133]
    np.testing.assert_array_equal(a.search(q, 5)[1], b.search(q, 5)[1])
    assert json.loads((tmp_path / "a" / "build.json").read_text())["source"]["name"] == "stripes"
    # a complete index is returned as it is (nothing re-embedded)
    assert build_index(tmp_path / "a", src, embedder=emb, chunk_size=8, progress=False).meta == a.meta


def test_image_folder_source(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    images = _render(np.arange(5))
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / ("sub" if i % 2 else ".") / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image")
    src = ImageFolderSource(folder, size=16)
    assert len(src) == 5
    res = build_index(tmp_path / "ix", src, embedder=_Embedder(), chunk_size=2, progress=False)
    ix = open_index(res.path)
    assert sorted(ix.ids.tolist()) == ["im0.png", "im2.png", "im4.png", "sub/im1.png", "sub/im3.png"]
    _, got = ix.search(_Embedder().encode(images[[3]]), 1)
    assert got[0, 0] == "sub/im3.png"
    (folder / "sub" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="cannot read image .*bad.png"):
        build_index(tmp_path / "ix2", ImageFolderSource(folder, size=16), embedder=_Embedder(), progress=False)
    with pytest.raises(DataFormatError, match="holds no images"):
        ImageFolderSource(tmp_path / "ix", size=16)


def test_embeddings_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="does not exist"):
        EmbeddingsFileSource(tmp_path / "none.npy", model=MODEL)
    bad = tmp_path / "bad.npy"
    bad.write_text("nope")
    with pytest.raises(DataFormatError, match="cannot read embeddings file"):
        EmbeddingsFileSource(bad, model=MODEL)
    path = _embeddings_file(tmp_path, np.ones((4, 16), np.float32))
    with pytest.raises(DataFormatError, match="4 rows but 3 ids"):
        EmbeddingsFileSource(path, model=MODEL, ids=np.arange(3))
    with pytest.raises(DataFormatError, match="dimension 16 but the model test-model makes 8"):
        EmbeddingsFileSource(path, model=ModelInfo("test-model", "a" * 64, "final", 8))
    zero = _embeddings_file(tmp_path, np.zeros((3, 16), np.float32), "zero.npy")
    with pytest.raises(DataFormatError, match="row 0 is all zeros"):
        build_index(tmp_path / "z", EmbeddingsFileSource(zero, model=MODEL), progress=False)


def test_build_refuses_foreign_folders_and_a_second_writer(tmp_path: Path) -> None:
    """The index writer never writes into a folder of other files, and a second build of the same index (or
    into the same shared vectors folder) is refused while the first holds its lock."""
    from mindeye_core.errors import DestinationError, DestinationLockedError
    from mindeye_core.staging import WriterLock, lock_path

    x = _unit(np.random.default_rng(3).standard_normal((40, MODEL.dim))).astype(np.float32)
    src = EmbeddingsFileSource(_embeddings_file(tmp_path, x), model=MODEL)
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    with pytest.raises(DestinationError, match="holds files that are not a retrieval index"):
        build_index(project, src, progress=False)
    with pytest.raises(DestinationError, match="not a vectors folder"):
        build_index(tmp_path / "ix0", src, progress=False, vectors_dir=project)
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"] and not (tmp_path / "ix0").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DestinationError, match="is a file"):
        build_index(tmp_path / "afile", src, progress=False)
    with WriterLock(lock_path(tmp_path / "ix")):
        with pytest.raises(DestinationLockedError, match="retrieval index .* is being written by another process"):
            build_index(tmp_path / "ix", src, progress=False)
    shared = tmp_path / "shared_vectors"
    with WriterLock(lock_path(shared)):
        with pytest.raises(DestinationLockedError, match="vectors folder"):
            build_index(tmp_path / "ix2", src, progress=False, vectors_dir=shared)
    res = build_index(tmp_path / "ix", src, progress=False)  # lock released: builds; and no lock file left
    assert res.meta["n_items"] == 40 and not list(tmp_path.glob("*.lock")) and not list((tmp_path / "ix").glob("*.lock"))
