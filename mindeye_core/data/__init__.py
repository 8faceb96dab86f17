"""Datasets: the canonical on-disk format, PyTorch loaders, noise ceilings, the demo world, NSD import."""

from .format import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    CanonicalDataset,
    DatasetWriter,
    SubjectData,
    open_dataset,
    read_manifest,
)
from .noise_ceiling import ncsnr, noise_ceiling
from .torch_data import FMRIDataset, make_dataloader

__all__ = [
    "SPLIT_TEST",
    "SPLIT_TRAIN",
    "CanonicalDataset",
    "DatasetWriter",
    "FMRIDataset",
    "SubjectData",
    "make_dataloader",
    "ncsnr",
    "noise_ceiling",
    "open_dataset",
    "read_manifest",
]
