"""PyTorch ``Dataset`` / ``DataLoader`` over a canonical dataset.

Train split: one item per trial (each repetition is its own sample, as in MindEye's training, which draws
single repetitions). Test split: by default one item per test image with betas averaged over its
repetitions (the paper's main protocol); ``test_mode="single"`` gives one item per test trial (Table 8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .format import CanonicalDataset


class FMRIDataset(Dataset):
    """Items are dicts:

    - ``"voxels"``: float32 tensor (V,)
    - ``"image"``: float32 tensor (3, H, W) in [0, 1] (only if ``return_images``)
    - ``"image_index"``: int, row in the dataset's images
    - ``"trial"``: int trial index (-1 for averaged test items)

    Args:
        dataset: a :class:`CanonicalDataset` or its folder.
        subject: subject name.
        split: ``"train"`` or ``"test"``.
        test_mode: ``"average"`` (default) or ``"single"``; ignored for train.
        return_images: also load the stimulus image.
    """

    def __init__(
        self,
        dataset: CanonicalDataset | str | Path,
        subject: str,
        split: Literal["train", "test"] = "train",
        *,
        test_mode: Literal["average", "single"] = "average",
        return_images: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if test_mode not in ("average", "single"):
            raise ValueError(f"test_mode must be 'average' or 'single', got {test_mode!r}")
        self.dataset = dataset if isinstance(dataset, CanonicalDataset) else CanonicalDataset(dataset)
        self.subject = self.dataset.subject(subject)
        self.split = split
        self.return_images = return_images
        self.averaged = split == "test" and test_mode == "average"
        self._avg_betas: np.ndarray | None = None
        if self.averaged:
            self._avg_betas, self.image_index = self.subject.averaged("test")
            self.trial_index = np.full(self.image_index.shape, -1, np.int64)
        else:
            self.trial_index = self.subject.trials(split)
            self.image_index = self.subject.image_index[self.trial_index]

    @property
    def n_voxels(self) -> int:
        return self.subject.n_voxels

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        if self._avg_betas is not None:
            voxels = self._avg_betas[i]
        else:
            voxels = self.subject.betas(int(self.trial_index[i]))
        item: dict[str, torch.Tensor | int] = {
            "voxels": torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32)),
            "image_index": int(self.image_index[i]),
            "trial": int(self.trial_index[i]),
        }
        if self.return_images:
            img = self.dataset.images(int(self.image_index[i]))
            item["image"] = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        return item


def make_dataloader(
    dataset: CanonicalDataset | str | Path,
    subject: str,
    split: Literal["train", "test"] = "train",
    *,
    batch_size: int = 32,
    shuffle: bool | None = None,
    num_workers: int = 0,
    test_mode: Literal["average", "single"] = "average",
    return_images: bool = True,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over :class:`FMRIDataset` (shuffled by default for train, seeded)."""
    ds = FMRIDataset(dataset, subject, split, test_mode=test_mode, return_images=return_images)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=(split == "train") if shuffle is None else shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
