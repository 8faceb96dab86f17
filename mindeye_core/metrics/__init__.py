"""The paper's evaluation suite: PixCorr, SSIM, two-way identification, distances, retrieval, tables.

Everything here needs only images and embeddings (no training code). See each module for the exact
protocol and where it follows the released MindEye code rather than the paper text.
"""

from .evaluate import RECON_METRICS, EvaluationResult, evaluate_bundle, evaluate_reconstructions
from .features import EXTRACTORS, FeatureExtractor, FeatureUnavailable, build_extractor, load_extractors
from .identification import (
    correlation_distance,
    correlation_distance_per_sample,
    two_way_identification,
    two_way_identification_per_sample,
)
from .lowlevel import ImageBatch, check_pairs, pixcorr, pixcorr_per_image, ssim, ssim_per_image
from .retrieval import RetrievalResult, draw_subsets, full_set_ranks, retrieval_metrics
from .tables import TABLE1_REFERENCE, TABLE5_REFERENCE, write_tables

__all__ = [
    "EXTRACTORS",
    "RECON_METRICS",
    "TABLE1_REFERENCE",
    "TABLE5_REFERENCE",
    "EvaluationResult",
    "FeatureExtractor",
    "FeatureUnavailable",
    "ImageBatch",
    "RetrievalResult",
    "check_pairs",
    "correlation_distance",
    "correlation_distance_per_sample",
    "build_extractor",
    "draw_subsets",
    "evaluate_bundle",
    "evaluate_reconstructions",
    "full_set_ranks",
    "load_extractors",
    "pixcorr",
    "pixcorr_per_image",
    "retrieval_metrics",
    "ssim",
    "ssim_per_image",
    "two_way_identification",
    "two_way_identification_per_sample",
    "write_tables",
]
