"""Run the whole evaluation suite on paired images (and embeddings), or on a results bundle.

:func:`evaluate_reconstructions` returns the eight Table-1 reconstruction metrics; metrics whose feature
network is unavailable are reported in ``unavailable`` with the reason instead of failing.
:func:`evaluate_bundle` evaluates every subject and stored strength of a results bundle, adds the retrieval
protocol on its stored similarity matrix, and (optionally) stores the numbers back into the bundle's manifest
(layout: ``docs/results_bundle.md``, "Metrics").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .features import METRIC_TO_EXTRACTOR, PAPER_PRE_RESIZE, FeatureExtractor
from .identification import correlation_distance_per_sample, two_way_identification_per_sample
from .lowlevel import check_pairs, pixcorr_per_image, ssim_per_image
from .retrieval import retrieval_metrics_from_similarity

LOWLEVEL_METRICS = ("pixcorr", "ssim")
TWO_WAY_METRICS = ("alexnet2", "alexnet5", "inception", "clip")
DISTANCE_METRICS = ("effnet", "swav")
RECON_METRICS = LOWLEVEL_METRICS + TWO_WAY_METRICS + DISTANCE_METRICS
"""Table-1 reconstruction metrics in column order."""


@dataclass
class EvaluationResult:
    """Reconstruction metrics of one set of N pairs.

    Attributes:
        metrics: metric -> value (fractions in [0, 1] for two-way identification, distances for
            effnet/swav, correlations for pixcorr/ssim).
        unavailable: metric -> reason it was not computed.
        per_sample: metric -> ``(N,)`` per-pair values.
        protocol: settings used (``paper_parity``, ``n``, extractor sources).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-sample arrays)."""
        return {"metrics": dict(self.metrics), "unavailable": dict(self.unavailable), "protocol": dict(self.protocol)}


def evaluate_reconstructions(
    recons: Any,
    gts: Any,
    *,
    extractors: Mapping[str, FeatureExtractor] | None = None,
    unavailable: Mapping[str, str] | None = None,
    metrics: Sequence[str] = RECON_METRICS,
    paper_parity: bool = False,
    recon_ids: Any = None,
    gt_ids: Any = None,
    gt_feature_cache: dict[str, np.ndarray] | None = None,
    batch_size: int = 32,
    lowlevel_batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> EvaluationResult:
    """Compute the reconstruction metrics of Table 1 for N paired images.

    Args:
        recons, gts: ``(N, H, W, 3)`` / ``(N, 3, H, W)``, uint8 or float in [0, 1], paired by row.
        extractors: extractor name -> :class:`FeatureExtractor` (see :func:`~.features.load_extractors`).
            Feature metrics without an extractor are reported as unavailable.
        unavailable: reasons for metrics already known to be unavailable (from ``load_extractors``).
        metrics: which metrics to compute (default all eight).
        paper_parity: the released code's preprocessing (256 px first, no antialias, column SSIM).
        recon_ids, gt_ids: optional ids checked for equal order.
        gt_feature_cache: dict reused across calls with the same ground truths (e.g. several strengths),
            filled with ground-truth features on first use.
        batch_size: images per feature-network forward pass.
        lowlevel_batch_size: images per PixCorr/SSIM step (small batches stay in cache: fastest on CPU).
        device: where images are resized and features computed.
    """
    r, g = check_pairs(recons, gts, recon_ids, gt_ids)
    unknown = sorted(set(metrics) - set(RECON_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(RECON_METRICS)}")
    extractors = dict(extractors or {})
    result = EvaluationResult(protocol={"paper_parity": paper_parity, "n": len(r), "sources": {}})
    known_unavailable = dict(unavailable or {})
    for m in LOWLEVEL_METRICS:
        if m in metrics:
            fn = pixcorr_per_image if m == "pixcorr" else ssim_per_image
            vals = fn(r, g, paper_parity=paper_parity, batch_size=lowlevel_batch_size, device=device)
            result.per_sample[m] = vals
            result.metrics[m] = float(vals.mean())
    feats_needed = [m for m in metrics if m in METRIC_TO_EXTRACTOR]
    cache = gt_feature_cache if gt_feature_cache is not None else {}
    kwargs = {"antialias": not paper_parity, "pre_resize": PAPER_PRE_RESIZE if paper_parity else None, "batch_size": batch_size}
    for ex_name in dict.fromkeys(METRIC_TO_EXTRACTOR[m] for m in feats_needed):
        wanted = [m for m in feats_needed if METRIC_TO_EXTRACTOR[m] == ex_name]
        ex = extractors.get(ex_name)
        if ex is None:
            for m in wanted:
                result.unavailable[m] = known_unavailable.get(m, f"no {ex_name!r} feature extractor given")
            continue
        result.protocol["sources"][ex_name] = ex.source
        rec_f = ex(r, **kwargs)
        key = f"{ex_name}|{paper_parity}"
        if key not in cache:
            cache[key] = ex(g, **kwargs)  # type: ignore[assignment]
        gt_f: Mapping[str, np.ndarray] = cache[key]  # type: ignore[assignment]
        for m in wanted:
            if m not in rec_f:
                result.unavailable[m] = f"extractor {ex_name!r} has no output {m!r}"
                continue
            if m in TWO_WAY_METRICS:
                vals = two_way_identification_per_sample(gt_f[m], rec_f[m])
            else:
                vals = correlation_distance_per_sample(gt_f[m], rec_f[m])
            result.per_sample[m] = vals
            result.metrics[m] = float(vals.mean())
    return result


KEPT_ENTRIES = ("ridge", "ceiling")
"""Entries of a subject's metrics that :func:`evaluate_bundle` keeps when it rewrites them."""


def _keep_previous(entry: dict[str, Any], previous: Mapping[str, Any], grid: Sequence[str], stored: Sequence[str]) -> None:
    """Copy :data:`KEPT_ENTRIES` and the numbers of grid strengths that are not stored (strength keys
    ``grid`` / ``stored``) from a subject's ``previous`` metrics into the new ``entry``."""
    for key in KEPT_ENTRIES:
        if key in previous:
            entry[key] = previous[key]
    old = previous.get("strengths")
    if isinstance(old, Mapping):
        kept = [k for k in old if k in grid and k not in stored and k not in entry["strengths"]]
        for k in kept:
            entry["strengths"][k] = old[k]
        if kept:
            entry["protocol"] = dict(entry["protocol"], strengths_from_previous_metrics=kept)


def evaluate_bundle(
    bundle: Any,
    *,
    extractors: Mapping[str, FeatureExtractor] | None = None,
    unavailable: Mapping[str, str] | None = None,
    subjects: Sequence[str] | None = None,
    strengths: Sequence[float] | None = None,
    metrics: Sequence[str] = RECON_METRICS,
    paper_parity: bool = False,
    include_blurry: bool = True,
    retrieval_kwargs: Mapping[str, Any] | None = None,
    store: bool = True,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, Any]]:
    """Evaluate a results bundle: every subject, every stored strength (plus the blurry images), and retrieval.

    Args:
        bundle: a :class:`~mindeye_core.results.ResultsBundle` or a path to one.
        subjects, strengths: restrict the evaluation (default: all subjects, each at its stored strengths;
            a strength that is not stored raises :class:`~mindeye_core.errors.DataFormatError`).
        include_blurry: also evaluate the blurry (low-level only) images under the key ``"blurry"``.
        retrieval_kwargs: passed to :func:`~.retrieval.retrieval_metrics_from_similarity` (``n_draws``,
            ``seed``...), run on the bundle's stored ``[brain, image]`` similarity matrix (float16, upcast);
            the full-set ``full_*`` top-1 come from the stored ranks (computed in float32 by the writer).
        store: write the numbers into the bundle's manifest.

    The subject's previous metrics keep their ``"ridge"`` and ``"ceiling"`` entries (this function does not
    compute them) and, in a light bundle, their numbers for grid strengths whose finals are not stored (they
    cannot be recomputed from the bundle; listed in ``protocol["strengths_from_previous_metrics"]``).

    Returns:
        subject -> ``{"strengths": {"0.15": {metric: value}}, "blurry": {...}, "retrieval": {...},
        "unavailable": {metric: reason}, "protocol": {...}}`` plus the kept ``"ridge"`` / ``"ceiling"``.
    """
    from ..results import ResultsBundle, open_results, strength_key

    b = bundle if isinstance(bundle, ResultsBundle) else open_results(bundle)
    out: dict[str, dict[str, Any]] = {}
    for name in subjects or b.subjects:
        subj = b.subject(name)
        gt = subj.ground_truth()
        ids = subj.image_index()
        cache: dict[str, np.ndarray] = {}
        entry: dict[str, Any] = {"strengths": {}, "unavailable": {}, "protocol": {}}
        for s in strengths if strengths is not None else subj.stored_strengths:
            res = evaluate_reconstructions(
                subj.finals(s), gt, extractors=extractors, unavailable=unavailable, metrics=metrics,
                paper_parity=paper_parity, recon_ids=ids, gt_ids=ids, gt_feature_cache=cache,
                batch_size=batch_size, device=device,
            )
            entry["strengths"][strength_key(s)] = res.metrics
            entry["unavailable"].update(res.unavailable)
            entry["protocol"] = res.protocol
        blurry = subj.blurry() if include_blurry else None
        if blurry is not None:
            res = evaluate_reconstructions(
                blurry, gt, extractors=extractors, unavailable=unavailable, metrics=metrics,
                paper_parity=paper_parity, gt_feature_cache=cache, batch_size=batch_size, device=device,
            )
            entry["blurry"] = res.metrics
        sim = subj.similarity("brain_to_image")
        retrieval = retrieval_metrics_from_similarity(sim, **dict(retrieval_kwargs or {})).to_dict()
        for direction, stored_ranks in subj.retrieval_ranks().items():
            retrieval[f"full_{direction}"] = float((stored_ranks == 0).mean())
        entry["retrieval"] = retrieval
        _keep_previous(entry, subj.metrics, [strength_key(s) for s in b.strengths],
                       [strength_key(s) for s in subj.stored_strengths])
        if store:
            b.set_metrics(name, entry)
        out[name] = entry
    return out
