"""The paper's pool retrieval on the demo world: a results bundle's subjects against the demo pool.

For each test sample of a subject, stage 1 queries the pool index with the brain's *final-layer*
embedding and stage 2 re-ranks the 16 candidates by the 65 x 128 projector output against each candidate's
tiny-CLIP hidden tokens, computed on the fly from the re-rendered pool image
(:func:`~.two_stage.two_stage_retrieve`).

The final-layer query comes, as in the paper (Appendix A.6), from a separate **1 x 128 model**: MindEye
trained on the tiny CLIP's final image embedding (``training/configs/demo_1x128.yaml``, shipped as
``assets/demo_brain/<subject>/highlevel-1x``); the query is its diffusion prior's output (one sample,
seeded like the bundle's candidate 0) for the bundle's stored voxels. Without that model
(``final_dir=None``) the query falls back to token 0 of the 65 x 128 model's prior output, which under this
project's hidden target (tokens divided by token 0's norm) is that model's estimate of the normalised final
embedding; on the demo world it is a poor one (cosine 0.29 to the true final embedding, against 0.71 for
the patch tokens: ``docs/retrieval.md``), which is why the paper trains the 1 x 768 model. The projector
output comes from the bundle's stored ``projector`` embeddings when it has them, else from its voxels
through the subject's high-level model (checked against the model hash in the bundle's provenance).

:func:`match_shares` measures, per subject, the share of test samples whose retrieved pool image has the
same category and colour (of the main object: the largest visible one) as the seen image, for the
two-stage pick and for the one-stage (final embedding only) pick.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from ..data.demo.stimuli import COLOUR_NAMES, CATEGORIES, StimulusLabels
from ..errors import ConfigMismatchError, DataFormatError
from .embedders import ModelInfo
from .index import IndexRetriever
from .pool import demo_pool_embedder, pool_labels, render_pool
from .two_stage import TwoStageResult, two_stage_retrieve

__all__ = ["QUERY_SOURCES", "BrainQueries", "brain_queries", "demo_test_labels", "main_objects", "match_shares",
           "pool_neighbours"]


def _load_highlevel(folder: str | Path, what: str, want_sha256: str | None = None) -> tuple[Any, str]:
    """``(MindEyeHighLevel in eval mode, weights sha256)`` from a model folder, refusing another model's weights."""
    from ..models import MindEyeHighLevel

    folder = Path(folder).expanduser()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DataFormatError(f"missing {what} weights {weights}")
    have = hashlib.sha256(weights.read_bytes()).hexdigest()
    if want_sha256 and want_sha256 != have:
        raise ConfigMismatchError(f"{folder} is not the {what} in this bundle "
                                  f"(sha256 {have[:12]}... != {want_sha256[:12]}...)")
    return MindEyeHighLevel.from_pretrained(folder).eval(), have


def _brain_outputs(model: Any, voxels: np.ndarray, seeds: np.ndarray, *, with_prior: bool = True,
                   batch_size: int = 100) -> tuple[np.ndarray, np.ndarray | None]:
    """``(projector (N, T, D), prior sample (N, T, D) or None)`` float32 of ``model`` for ``voxels (N, V)``; the
    prior's noise for row ``i`` is seeded like the bundle's candidate 0 of seed ``seeds[i]`` (the
    reconstruction's rule, :func:`~mindeye_core.recon.row_seeds`). ``with_prior=False`` skips the prior's sampling
    (its many denoising steps) when only the projector is needed."""
    import torch

    from ..recon import PRIOR_STREAM, row_seeds

    if voxels.shape[1] != model.brain.n_voxels:
        raise DataFormatError(f"the bundle stores {voxels.shape[1]} voxels per trial but the model takes "
                              f"{model.brain.n_voxels}: not this subject's model")
    proj_out, prior_out = [], []
    with torch.no_grad():
        for s in range(0, voxels.shape[0], batch_size):
            v = torch.from_numpy(voxels[s : s + batch_size])
            backbone, projector = model(v)
            proj_out.append(projector.float().reshape(v.shape[0], -1, projector.shape[-1]).numpy())
            if with_prior:
                gens = [torch.Generator().manual_seed(x) for x in row_seeds(seeds[s : s + batch_size], 1, PRIOR_STREAM)]
                prior = model.prior.sample(backbone, generator=gens)
                prior_out.append(prior.float().reshape(v.shape[0], -1, prior.shape[-1]).numpy())
    return np.concatenate(proj_out), np.concatenate(prior_out) if with_prior else None


@dataclass(frozen=True)
class BrainQueries:
    """The two queries of one subject's test samples.

    Attributes:
        final: ``(N, D)`` float32 stage-1 query in the final-embedding space.
        projector: ``(N, T, D)`` float32 stage-2 query (the high-level model's projector output).
        source: how ``final`` was made (``"1x-prior"``: the 1 x D model's prior output; ``"prior-token0"``:
            token 0 of the T x D model's prior output).
        final_model_sha256: the 1 x D model's weights hash (``None`` for ``"prior-token0"``).
    """

    final: np.ndarray
    projector: np.ndarray
    source: str
    final_model_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        """What the neighbours summary records under ``query``."""
        return {"final": self.source, "final_model_sha256": self.final_model_sha256}


def brain_queries(subject: Any, brain_dir: str | Path | None = None, final_dir: str | Path | None = None) -> BrainQueries:
    """The two queries of a bundle subject (see the module docstring).

    Args:
        subject: a bundle's :class:`~mindeye_core.results.SubjectResults`.
        brain_dir: the subject's T x D high-level model folder; needed only when the bundle stores no
            ``projector`` (and, without ``final_dir``, no ``prior``) embeddings.
        final_dir: the subject's 1 x D model folder (``highlevel-1x``): its prior output on the bundle's voxels
            is the stage-1 query. ``None``: token 0 of the T x D prior output instead.
    """
    t, d = subject.embedding_shape
    spaces = set(subject.embedding_spaces) if subject.has_embeddings else set()
    models = subject.provenance.get("models", {})
    need_prior = final_dir is None and "prior" not in spaces  # token 0 of the T x D prior is the query
    proj = prior = None
    if "projector" not in spaces or need_prior:
        if brain_dir is None:
            raise DataFormatError(f"subject {subject.name}: the bundle stores no prior/projector embeddings; give the "
                                  "subject's high-level model folder (--brain-root) to compute them from the voxels")
        if not subject.has_voxels:
            raise DataFormatError(f"subject {subject.name} stores neither prior/projector embeddings nor voxels")
        model, _ = _load_highlevel(brain_dir, "high-level model", models.get("highlevel", {}).get("sha256"))
        proj, prior = _brain_outputs(model, subject.voxels().astype(np.float32), subject.seeds(), with_prior=need_prior)
    if "projector" in spaces:
        proj = subject.embeddings("projector").astype(np.float32).reshape(-1, t, d)
    assert proj is not None
    if final_dir is None:
        if prior is None:
            prior = subject.embeddings("prior").astype(np.float32).reshape(-1, t, d)
        return BrainQueries(prior[:, 0], proj, "prior-token0", None)
    if not subject.has_voxels:
        raise DataFormatError(f"subject {subject.name} stores no voxels: the 1 x {d} model needs them")
    model1, sha = _load_highlevel(final_dir, f"1 x {d} model", models.get("highlevel-1x", {}).get("sha256"))
    if (model1.brain.n_tokens, model1.brain.dim) != (1, d):
        raise DataFormatError(f"{final_dir} maps to {model1.brain.n_tokens} x {model1.brain.dim} tokens, not the "
                              f"1 x {d} final embedding")
    _, prior1 = _brain_outputs(model1, subject.voxels().astype(np.float32), subject.seeds())
    assert prior1 is not None
    return BrainQueries(prior1[:, 0], proj, "1x-prior", sha)


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


QUERY_SOURCES: Mapping[str, str] = MappingProxyType(
    {"1x-prior": "the 1 x 128 model's prior output", "prior-token0": "token 0 of the prior output"})
""":attr:`BrainQueries.source` -> how the stage-1 query was made, in words (the neighbours summary, the app)."""


def pool_neighbours(bundle: Any, subject_name: str, index: IndexRetriever, *, brain_dir: str | Path | None = None,
                    final_dir: str | Path | None = None, n_candidates: int = 16, max_hash_distance: int | None = None,
                    labels: StimulusLabels | None = None) -> tuple[TwoStageResult, dict[str, Any]]:
    """The two-stage procedure for every test sample of ``subject_name`` against the demo-pool ``index``.

    ``final_dir`` is the subject's 1 x 128 model (its prior output is the stage-1 query; ``None``: token 0 of
    the 65 x 128 prior output, see :func:`brain_queries`); ``brain_dir`` its 65 x 128 high-level model (needed
    only when the bundle stores no projector embeddings). The query model is the bundle's encoder (provenance
    ``encoder.sha256``); an index built with another model is refused. Returns the :class:`TwoStageResult`
    and a JSON-able summary (index, procedure, query and, with ``labels`` of the bundle's stimuli,
    :func:`match_shares`).
    """
    subject = bundle.subject(subject_name)
    enc = bundle.provenance.get("encoder", {})
    queries = brain_queries(subject, brain_dir, final_dir)
    final, proj = queries.final, queries.projector
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
        "procedure": f"two-stage: final-embedding query ({QUERY_SOURCES[queries.source]}) for n_candidates, "
                     "re-ranked by the projector output vs each candidate's hidden tiny-CLIP tokens",
        "query": queries.to_dict(),
        "n_candidates": int(result.candidates.shape[1]),
        "max_hash_distance": max_hash_distance,
        "excluded": int(result.excluded.sum()),
        # the folder's name, not its path: the summary is shipped in bundles built on another machine
        "index": {"name": index.path.name, "n_items": len(index), "factory": index.meta.get("factory"),
                  "search_params": index.meta.get("search_params"), "model": index.model.to_dict(),
                  "pool": index.meta.get("metadata", {}).get("pool")},
    }
    if labels is not None:
        rows = subject.stimulus_rows()
        summary["match"] = match_shares(labels.subset(rows), result)
    return result, summary
