"""The paper's evaluation suite: PixCorr, SSIM, two-way identification, distances, retrieval, tables.

Everything here needs only images and embeddings (no training code). See each module for the exact
protocol and where it follows the released MindEye code rather than the paper text.
"""

from .identification import (
    correlation_distance,
    correlation_distance_per_sample,
    two_way_identification,
    two_way_identification_per_sample,
)
from .lowlevel import ImageBatch, check_pairs, pixcorr, pixcorr_per_image, ssim, ssim_per_image
from .retrieval import RetrievalResult, draw_subsets, full_set_ranks, retrieval_metrics

__all__ = [
    "ImageBatch",
    "RetrievalResult",
    "check_pairs",
    "correlation_distance",
    "correlation_distance_per_sample",
    "draw_subsets",
    "full_set_ranks",
    "pixcorr",
    "pixcorr_per_image",
    "retrieval_metrics",
    "ssim",
    "ssim_per_image",
    "two_way_identification",
    "two_way_identification_per_sample",
]
