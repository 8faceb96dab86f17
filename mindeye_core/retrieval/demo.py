"""The paper's pool retrieval on the demo world: a results bundle's subjects against the demo pool.

For each test sample of a subject, stage 1 queries the pool index with the brain's *final-layer*
embedding and stage 2 re-ranks the 16 candidates by the 65 x 128 projector output against each candidate's
tiny-CLIP hidden tokens, computed on the fly from the re-rendered pool image
(:func:`~.two_stage.two_stage_retrieve`).

The demo world has no separate 1 x 128 MindEye: the final-layer query is token 0 of the high-level
model's diffusion-prior output (one sample, seeded like the bundle's candidate 0). With this project's
CLIP hidden target (tokens divided by token 0's norm), token 0 of the hidden space *is* the normalised
final embedding, so the prior's token 0 is the brain's estimate of the final image embedding, which is
what the paper's 1 x 768 model provides. Samples come from the bundle's stored ``prior``/``projector``
embeddings when it has them, else from its stored voxels through the subject's high-level model
(checked against the model hash in the bundle's provenance).

:func:`match_shares` measures, per subject, the share of test samples whose retrieved pool image has the
same category and colour (of the main object: the largest visible one) as the seen image, for the
two-stage pick and for the one-stage (final embedding only) pick.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..data.demo.stimuli import COLOUR_NAMES, CATEGORIES, StimulusLabels
from ..errors import ConfigMismatchError, DataFormatError
from .embedders import ModelInfo
from .index import IndexRetriever
from .pool import demo_pool_embedder, pool_labels, render_pool
from .two_stage import TwoStageResult, two_stage_retrieve

__all__ = ["brain_queries", "demo_test_labels", "main_objects", "match_shares", "pool_neighbours"]


def _projector_and_final(subject: Any, brain_dir: str | Path | None, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from ..models import MindEyeHighLevel
    from ..recon import PRIOR_STREAM, row_seed

    if brain_dir is None:
        raise DataFormatError(f"subject {subject.name}: the bundle stores no prior/projector embeddings; give the "
                              "subject's high-level model folder (--brain-root) to compute them from the voxels")
    folder = Path(brain_dir).expanduser()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DataFormatError(f"missing high-level model weights {weights}")
    want = subject.provenance.get("models", {}).get("highlevel", {}).get("sha256")
    have = hashlib.sha256(weights.read_bytes()).hexdigest()
    if want and want != have:
        raise ConfigMismatchError(f"{folder} is not the high-level model of {subject.name} in this bundle "
                                  f"(sha256 {have[:12]}... != {want[:12]}...)")
    model = MindEyeHighLevel.from_pretrained(folder).eval()
    voxels, seeds = subject.voxels().astype(np.float32), subject.seeds()
    proj_out, final_out = [], []
    with torch.no_grad():
        for s in range(0, voxels.shape[0], batch_size):
            v = torch.from_numpy(voxels[s : s + batch_size])
            backbone, projector = model(v)
            gens = [torch.Generator().manual_seed(row_seed(int(x), 0, PRIOR_STREAM)) for x in seeds[s : s + batch_size]]
            prior = model.prior.sample(backbone, generator=gens)
            proj_out.append(projector.float().numpy())
            final_out.append(prior[:, 0].float().numpy())
    return np.concatenate(proj_out), np.concatenate(final_out)


def brain_queries(subject: Any, brain_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two queries of a bundle subject: ``(final (N, D), projector (N, T, D))`` float32.

    ``final`` is token 0 of the prior output, ``projector`` the contrastive projector output (see the module
    docstring); from the bundle's stored embeddings if present, else from its voxels and ``brain_dir``.
    """
    t, d = subject.embedding_shape
    if subject.has_embeddings and {"prior", "projector"} <= set(subject.embedding_spaces):
        proj = subject.embeddings("projector").astype(np.float32).reshape(-1, t, d)
        final = subject.embeddings("prior").astype(np.float32).reshape(-1, t, d)[:, 0]
        return final, proj
    if not subject.has_voxels:
        raise DataFormatError(f"subject {subject.name} stores neither prior/projector embeddings nor voxels")
    proj, final = _projector_and_final(subject, brain_dir)
    return final, proj.reshape(-1, t, d)


def demo_test_labels(bundle: Any, world_root: str | Path | None = None) -> StimulusLabels:
    """Labels of the bundle's stimuli (rows of ``stimuli.h5``), from a demo world folder or regenerated.

    Without ``world_root`` the default demo world's scenes are drawn again (the test images are its first
    rows) and their renderings must equal the bundle's stimuli pixel for pixel, else this raises.
    """
    from ..data.demo import DemoWorldConfig, load_demo_labels, render_scenes, sample_scenes

    index, images = bundle.stimuli()
    if world_root is not None:
        return load_demo_labels(world_root).subset(index)
    from ..data.demo.world import _STREAM_STIMULI, _rng  # the world's own stimulus stream

    cfg = DemoWorldConfig()
    if index.max() >= cfg.n_test_images:
        raise DataFormatError(f"bundle stimuli rows go up to {index.max()}, beyond the demo test set: pass the world")
    scenes = sample_scenes(_rng(cfg.seed, _STREAM_STIMULI), cfg.n_test_images, max_objects=cfg.max_objects)
    rendered, labels, _ = render_scenes([scenes[i] for i in index], cfg.image_size, cfg.supersample, cfg.max_objects)
    if rendered.shape != images.shape or not np.array_equal(rendered, images):
        raise DataFormatError("the regenerated demo test images differ from the bundle's stimuli: pass the demo "
                              "world folder the bundle was made from (--world)")
    return labels


def main_objects(labels: StimulusLabels) -> tuple[np.ndarray, np.ndarray]:
    """``(category (N,), colour (N,))`` of each image's largest visible object."""
    slot = np.argmax(np.where(labels.category >= 0, labels.visible, -1.0), axis=1)
    rows = np.arange(len(labels))
    return labels.category[rows, slot].astype(np.int64), labels.colour[rows, slot].astype(np.int64)


def match_shares(seen: StimulusLabels, result: TwoStageResult) -> dict[str, Any]:
    """Share of samples whose retrieved pool image's main object has the seen image's category and colour."""
    cat, col = main_objects(seen)
    out: dict[str, Any] = {}
    for name, ids in (("two_stage", result.ids), ("one_stage", result.one_stage_ids)):
        rc, rl = main_objects(pool_labels(np.asarray(ids, np.int64)))
        out[name] = {"category_and_colour": float(np.mean((rc == cat) & (rl == col))),
                     "category": float(np.mean(rc == cat)), "colour": float(np.mean(rl == col))}
    out["chance_category_and_colour"] = 1.0 / (len(CATEGORIES) * len(COLOUR_NAMES))
    return out


def pool_neighbours(bundle: Any, subject_name: str, index: IndexRetriever, *, brain_dir: str | Path | None = None,
                    n_candidates: int = 16, max_hash_distance: int | None = None,
                    labels: StimulusLabels | None = None) -> tuple[TwoStageResult, dict[str, Any]]:
    """The two-stage procedure for every test sample of ``subject_name`` against the demo-pool ``index``.

    The query model is the bundle's encoder (provenance ``encoder.sha256``); an index built with another
    model is refused. Returns the :class:`TwoStageResult` and a JSON-able summary (index, procedure and,
    with ``labels`` of the bundle's stimuli, :func:`match_shares`).
    """
    subject = bundle.subject(subject_name)
    enc = bundle.provenance.get("encoder", {})
    final, proj = brain_queries(subject, brain_dir)
    model = ModelInfo(name=str(enc.get("name", "unknown")), sha256=str(enc.get("sha256", "")), space="final",
                      dim=final.shape[1])
    embedder = demo_pool_embedder()

    def hidden_of(images: np.ndarray) -> np.ndarray:
        return embedder.encode(images, return_hidden=True)[1]

    ground_truth = subject.ground_truth() if max_hash_distance is not None else None
    result = two_stage_retrieve(final, proj, index, render_pool, hidden_of, n_candidates=n_candidates,
                                ground_truth=ground_truth, max_hash_distance=max_hash_distance,
                                search_kwargs={"model": model})
    summary: dict[str, Any] = {
        "procedure": "two-stage: final-embedding query (prior token 0) for n_candidates, re-ranked by the "
                     "projector output vs each candidate's hidden tiny-CLIP tokens",
        "n_candidates": int(result.candidates.shape[1]),
        "max_hash_distance": max_hash_distance,
        "excluded": int(result.excluded.sum()),
        "index": {"path": str(index.path), "n_items": len(index), "factory": index.meta.get("factory"),
                  "search_params": index.meta.get("search_params"), "model": index.model.to_dict(),
                  "pool": index.meta.get("metadata", {}).get("pool")},
    }
    if labels is not None:
        rows = subject.stimulus_rows()
        summary["match"] = match_shares(labels.subset(rows), result)
    return result, summary
