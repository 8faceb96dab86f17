"""Datasets: the canonical on-disk format, PyTorch loaders, noise ceilings, NSD import.

The demo world (procedural stimuli + simulated subjects) lives in :mod:`mindeye_core.data.demo`.
"""

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
from .nsd import convert_nsd, default_dataset_dir, download_nsd, import_nsd
from .torch_data import FMRIDataset, make_dataloader

__all__ = [
    "SPLIT_TEST",
    "SPLIT_TRAIN",
    "CanonicalDataset",
    "DatasetWriter",
    "FMRIDataset",
    "convert_nsd",
    "default_dataset_dir",
    "download_nsd",
    "import_nsd",
    "SubjectData",
    "make_dataloader",
    "ncsnr",
    "noise_ceiling",
    "open_dataset",
    "read_manifest",
]
