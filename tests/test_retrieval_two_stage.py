"""The paper's two-stage procedure, pHash near-duplicate exclusion, the demo pool (seeds re-render the same
images, none a test image) and the neighbours a results bundle stores for the app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_results import _write

from mindeye_core.errors import DataFormatError, MindEyeError
from mindeye_core.results import ResultsWriter, open_results
from mindeye_core.retrieval import ExactRetriever, ModelMismatchError, two_stage_retrieve
from mindeye_core.retrieval.pool import (
    PoolRenderer,
    build_pool_index,
    demo_pool_embedder,
    pool_labels,
    render_pool,
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_two_stage_picks_by_hidden_similarity_and_excludes_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    n, t, d = 40, 5, 8
    hidden = rng.standard_normal((n, t, d)).astype(np.float32)
    final = hidden[:, 0]
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images[7], hidden[7] = images[3], hidden[3]  # item 7 is an exact copy of item 3 (final is a view of hidden)

    def images_of(ids: np.ndarray) -> np.ndarray:
        return images[np.asarray(ids)]

    def hidden_of(ims: np.ndarray) -> np.ndarray:
        return np.stack([hidden[int(np.flatnonzero((images == im).all(axis=(1, 2, 3)))[-1])] for im in ims])

    # query: a final embedding near item 5 (stage 1 ranks 5 first), a projector output equal to item 9's tokens
    q_final = final[[5]] + 0.01 * rng.standard_normal((1, d)).astype(np.float32)
    q_hidden = hidden[[9]]
    res = two_stage_retrieve(q_final, q_hidden, ExactRetriever(final), images_of, hidden_of, n_candidates=n)
    brute = _unit(hidden) @ _unit(q_hidden)[0]
    assert res.candidates.shape == (1, n) and res.one_stage_ids[0] == 5
    assert res.ids[0] == 9 == int(np.argmax(brute))
    np.testing.assert_allclose(np.sort(res.stage2_scores[0]), np.sort(brute), atol=1e-5)
    ranked_ids, ranked_scores = res.ranked()
    assert ranked_ids[0, 0] == 9 and (np.diff(ranked_scores[0]) <= 0).all()
    # with 4 candidates item 9 is not among them: the pick is the best of those 4 only
    small = two_stage_retrieve(q_final, q_hidden, ExactRetriever(final), images_of, hidden_of, n_candidates=4)
    cands = small.candidates[0]
    assert small.ids[0] == cands[np.argmax(brute[cands])]
    # near-duplicate exclusion: the ground truth is item 3's image; 3 and its copy 7 are dropped
    q3 = hidden[[3]]
    kept = two_stage_retrieve(final[[3]], q3, ExactRetriever(final), images_of, hidden_of, n_candidates=n,
                              ground_truth=images[[3]], max_hash_distance=0)
    assert kept.ids[0] not in (3, 7) and kept.one_stage_ids[0] not in (3, 7)
    assert set(kept.candidates[0][kept.excluded[0]].tolist()) == {3, 7}
    assert np.isneginf(kept.stage2_scores[kept.excluded]).all()
    plain = two_stage_retrieve(final[[3]], q3, ExactRetriever(final), images_of, hidden_of, n_candidates=n)
    assert plain.ids[0] in (3, 7) and not plain.excluded.any()
    with pytest.raises(MindEyeError, match="every candidate of queries \\[0\\] is a near-duplicate"):
        two_stage_retrieve(final[[3]], q3, ExactRetriever(final), images_of, hidden_of, n_candidates=1,
                           ground_truth=images[[3]], max_hash_distance=0)
    with pytest.raises(DataFormatError, match="needs the Q ground-truth images"):
        two_stage_retrieve(final[[3]], q3, ExactRetriever(final), images_of, hidden_of, max_hash_distance=2)
    with pytest.raises(DataFormatError, match="2 final-embedding queries but 1 projector outputs"):
        two_stage_retrieve(final[:2], q3, ExactRetriever(final), images_of, hidden_of)


def test_pool_images_are_seeded_and_never_a_test_image() -> None:
    a = render_pool([11, 3, 11])
    assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[0], a[2])  # a seed always renders the same image
    np.testing.assert_array_equal(render_pool([3])[0], a[1])
    assert not np.array_equal(a[0], a[1])
    labels = pool_labels([11, 3])
    assert len(labels) == 2 and (labels.n_objects >= 1).all()
    with pytest.raises(DataFormatError, match="pool image 3 is identical to an excluded \\(test\\) image"):
        PoolRenderer(exclude=a[1:2])(np.array([5, 3]))
    with pytest.raises(DataFormatError, match="non-negative integers"):
        render_pool([-1])


def test_pool_index_two_stage_end_to_end(tmp_path: Path) -> None:
    """A tiny pool index; 'brains' that are the tiny CLIP's own embeddings of pool images find those images."""
    res = build_pool_index(48, "flat", root=tmp_path / "pool", workers=1, progress=False)
    assert res.meta["n_items"] == 48 and res.meta["metadata"]["pool"] == "demo-pool-v1"
    from mindeye_core.retrieval import open_index

    index = open_index(res.path)
    np.testing.assert_array_equal(index.ids, np.arange(48))
    emb = demo_pool_embedder()
    seeds = np.array([5, 17, 30])
    final, hidden = emb.encode(render_pool(seeds), return_hidden=True)
    # token 0 of the hidden target is the L2-normalised final embedding
    np.testing.assert_allclose(final, _unit(hidden[:, 0]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(hidden[:, 0], axis=1), 1.0, atol=1e-5)
    noisy = hidden + 0.3 * np.random.default_rng(1).standard_normal(hidden.shape).astype(np.float32) * np.abs(hidden).mean()
    out = two_stage_retrieve(final, noisy, index, render_pool, lambda im: emb.encode(im, return_hidden=True)[1],
                             n_candidates=8, search_kwargs={"model": emb.info})
    np.testing.assert_array_equal(out.ids, seeds)
    from mindeye_core.retrieval import ModelInfo

    with pytest.raises(ModelMismatchError):
        index.search(final, 3, model=ModelInfo("tiny-clip", "0" * 64, "final", 128))


def test_bundle_neighbours_round_trip(tmp_path: Path) -> None:
    root = _write(tmp_path / "bundle")
    b = open_results(root)
    s = b.subject("subj01")
    assert not s.has_neighbours
    with pytest.raises(DataFormatError, match="has no neighbours: write them with `mindeye retrieval neighbours"):
        s.neighbours()
    n = s.n_samples
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 10**6, (n, 4))
    scores = -np.sort(-rng.random((n, 4)).astype(np.float32), axis=1)
    path = b.set_neighbours("subj01", seeds, scores, seeds=seeds, info={"index": {"n_items": 10**6}, "procedure": "x"})
    assert path.name.startswith("subj01_neighbours-") and path.suffix == ".h5" and not list(root.glob("*.tmp"))
    got = open_results(root).subject("subj01")
    assert got.has_neighbours
    nb = got.neighbours()
    np.testing.assert_array_equal(nb.ids, seeds)
    np.testing.assert_array_equal(nb.seeds, seeds)
    np.testing.assert_array_equal(nb.scores, scores)
    np.testing.assert_array_equal(nb.top, seeds[:, 0])
    assert nb.info["index"] == {"n_items": 10**6} and nb.info["k"] == 4 and nb.info["has_seeds"]
    # string ids (an image folder / URLs), no seeds; replaces the previous neighbours
    urls = np.array([[f"http://127.0.0.1/img/{i}-{j}" for j in range(2)] for i in range(n)])
    path2 = b.set_neighbours("subj01", urls, scores[:, :2])
    nb2 = open_results(root).subject("subj01").neighbours()
    assert nb2.ids.tolist() == urls.tolist() and nb2.seeds is None and not nb2.info["has_seeds"]
    assert path2 != path and not path.exists() and sorted(root.glob("subj01_neighbours*")) == [path2]
    # another writer of the bundle holds its lock: refused, the bundle unchanged
    from mindeye_core.errors import DestinationLockedError
    from mindeye_core.staging import WriterLock, lock_path

    manifest = (root / "manifest.json").read_bytes()
    with WriterLock(lock_path(root)):
        with pytest.raises(DestinationLockedError, match="being written by another process"):
            b.set_neighbours("subj01", seeds, scores)
        with pytest.raises(DestinationLockedError):
            b.set_metrics("subj01", {"x": 1})
    assert (root / "manifest.json").read_bytes() == manifest and sorted(root.glob("subj01_neighbours*")) == [path2]
    assert b.subject("subj01").neighbours().ids.tolist() == urls.tolist()
    for bad, message in [
        ((seeds[:-1], scores), r"ids must be \(N=6, K>=1\)"),
        ((seeds, scores[:, ::-1]), "best first"),
        ((seeds, scores[:, :3]), "scores"),
    ]:
        with pytest.raises(DataFormatError, match=message):
            b.set_neighbours("subj01", *bad)
    with pytest.raises(DataFormatError, match="no subject 'subj09'"):
        b.set_neighbours("subj09", seeds, scores)
    path2.unlink()
    with pytest.raises(DataFormatError, match="missing neighbours file"):
        open_results(root).subject("subj01").neighbours()


def test_pool_neighbours_of_a_bundle(tmp_path: Path) -> None:
    """pool_neighbours on a bundle whose stored prior/projector embeddings are the tiny CLIP's own embeddings
    of pool images: the two-stage pick is the seen image, and the match share is 1."""
    from mindeye_core.retrieval.demo import match_shares, pool_neighbours
    from mindeye_core.retrieval.index import open_index
    from mindeye_core.retrieval.embedders import weight_hash

    build_pool_index(40, "flat", root=tmp_path / "pool", workers=1, progress=False)
    index = open_index(next((tmp_path / "pool").glob("demo-pool-v1-n40-flat")))
    emb = demo_pool_embedder()
    seeds = np.array([2, 9, 21, 33])
    images = render_pool(seeds)
    _, hidden = emb.encode(images, return_hidden=True)
    n, k = len(seeds), 2
    root = tmp_path / "bundle"
    with ResultsWriter(root, world="demo", dataset="demo-test", strengths=[0.0, 0.15]) as w:
        w.add_stimuli(np.arange(n), images)
        w.add_subject("subj01", image_index=np.arange(n), seeds=np.arange(n), finals=np.stack([images, images]),
                      candidates=None, candidate_scores=np.zeros((n, k), np.float32), prior_samples=None,
                      brain_embeddings=hidden, image_embeddings=hidden, prior_embeddings=hidden,
                      backbone_embeddings=hidden, embedding_shape=(65, 128))
        w.finalize(provenance={"encoder": {"name": "openclip-hidden-65x128", "sha256": weight_hash(emb.encoder)}})
    bundle = open_results(root)
    result, summary = pool_neighbours(bundle, "subj01", index, n_candidates=5, labels=pool_labels(seeds))
    np.testing.assert_array_equal(result.ids, seeds)
    assert summary["match"]["two_stage"]["category_and_colour"] == 1.0
    assert summary["index"]["n_items"] == 40 and summary["n_candidates"] == 5
    assert match_shares(pool_labels(seeds), result)["one_stage"]["category_and_colour"] == 1.0
    # a bundle made with another encoder is refused by the index
    with ResultsWriter(tmp_path / "other", world="demo", dataset="demo-test", strengths=[0.0, 0.15]) as w:
        w.add_stimuli(np.arange(n), images)
        w.add_subject("subj01", image_index=np.arange(n), seeds=np.arange(n), finals=np.stack([images, images]),
                      candidates=None, candidate_scores=np.zeros((n, k), np.float32), prior_samples=None,
                      brain_embeddings=hidden, image_embeddings=hidden, prior_embeddings=hidden,
                      embedding_shape=(65, 128))
        w.finalize(provenance={"encoder": {"name": "another-clip", "sha256": "f" * 64}})
    with pytest.raises(ModelMismatchError, match="another-clip"):
        pool_neighbours(open_results(tmp_path / "other"), "subj01", index, n_candidates=5)


def test_pool_index_names_carry_the_parameters(tmp_path: Path) -> None:
    """Builds with other parameters get their own folders (never the 'another build' refusal of one folder)."""
    from mindeye_core.retrieval.pool import pool_index_name

    assert pool_index_name(100_000, "ivfpq") == "demo-pool-v1-n100000-ivfpq"
    assert pool_index_name(10**6, "ivfpq", {"nbits": 7, "m": 128}) == "demo-pool-v1-n1000000-ivfpq-m128-nbits7"
    assert pool_index_name(40, "IVF4,Flat") == "demo-pool-v1-n40-IVF4_Flat"
    flat = build_pool_index(40, "flat", root=tmp_path, workers=1, progress=False)
    sq = build_pool_index(40, "ivfsq", root=tmp_path, params={"nlist": 4, "bits": 8}, workers=1, progress=False)
    assert flat.path.name == "demo-pool-v1-n40-flat" and sq.path.name == "demo-pool-v1-n40-ivfsq-bits8-nlist4"
    assert sq.meta["factory"] == "IVF4,SQ8" and (tmp_path / sq.path.name / "index.json").is_file()


def test_the_shipped_pool_index_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ensure_pool_index()`` opens the 10^5 IVF-PQ index shipped in assets/demo_pool (nothing to build): it
    holds pool seeds 0..99999 embedded by the shipped tiny CLIP, finds pool images from their own embeddings,
    and has no exact vectors; a cache copy of the same kind comes first, and a kind not shipped is built."""
    from mindeye_core.retrieval import pool as pool_mod

    monkeypatch.setenv("MINDEYE_CACHE", str(tmp_path / "cache"))
    index = pool_mod.ensure_pool_index()
    assert index.path == pool_mod.SHIPPED_POOL_DIR / "demo-pool-v1-n100000-ivfpq"
    emb = demo_pool_embedder()
    index.model.check_same(emb.info)
    assert len(index) == 100_000 and index.meta["factory"].startswith("IVF") and 0.7 <= index.meta["recall"]["recall@10"] <= 1
    np.testing.assert_array_equal(index.ids[[0, 99_999]], [0, 99_999])
    seeds = np.array([3, 4242, 99_001])
    _, ids = index.search(emb.encode(render_pool(seeds)), 5, model=emb.info)
    assert (ids == seeds[:, None]).any(axis=1).all()  # each image among its own top 5 (PQ distances are approximate)
    with pytest.raises(DataFormatError, match="exact vectors are not here"):
        next(index.vectors())
    # another kind is built in the cache (a tiny pool stands in for 10^5 images)
    monkeypatch.setattr(pool_mod, "build_pool_index", lambda n, kind, **kw: build_pool_index(
        48, kind, root=tmp_path / "cache" / "demo_pool", workers=1, progress=False))
    monkeypatch.setattr(pool_mod, "pool_index_name", lambda n, kind, params=None: f"demo-pool-v1-n48-{kind}")
    built = pool_mod.ensure_pool_index(48, "flat")
    assert built.path == tmp_path / "cache" / "demo_pool" / "demo-pool-v1-n48-flat" and len(built) == 48
