"""Image-encoder interface shared by the real (NSD) and tiny (demo) image models.

An :class:`ImageEncoder` maps a batch of RGB images ``(B, 3, H, W)``, float, values in ``[0, 1]``,
to targets of a declared shape ``(B, *target_shape)``; e.g. CLIP ViT-L/14 hidden tokens
``(257, 768)``, the final CLIP embedding ``(768,)``, Stable Diffusion VAE latents ``(4, 64, 64)`` or
VICRegL per-location features ``(256, C)``. Brain models declare the target shape they were built
for; :meth:`ImageEncoder.check_target_shape` turns a mismatch into a clear
:class:`~mindeye_core.errors.ConfigMismatchError`.

This module also holds the small helpers every adapter uses: image validation
(:func:`check_images`) and resolution of a "hub id or local folder" source
(:func:`resolve_local_source`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigMismatchError, DataFormatError

__all__ = [
    "ImageEncoder",
    "check_images",
    "check_output",
    "resolve_local_source",
    "looks_like_hub_id",
    "freeze",
]

_RANGE_TOL = 1e-4
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def check_images(images: torch.Tensor, *, name: str = "images", size: int | None = None) -> torch.Tensor:
    """Validate a batch of images and return it unchanged.

    Args:
        images: tensor ``(B, 3, H, W)``, floating point, every value in ``[0, 1]`` (a tolerance of
            ``1e-4`` absorbs float rounding).
        name: what to call the tensor in error messages.
        size: if given, ``H`` and ``W`` must both equal it.

    Raises:
        DataFormatError: wrong type, rank, channel count, dtype, size, non-finite values or values
            outside ``[0, 1]`` (e.g. images still in ``[0, 255]`` or ``[-1, 1]``).
    """
    if not isinstance(images, torch.Tensor):
        raise DataFormatError(f"{name} must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataFormatError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DataFormatError(f"{name} is an empty batch (shape {tuple(images.shape)})")
    if not images.is_floating_point():
        raise DataFormatError(
            f"{name} must be floating point in [0, 1], got dtype {images.dtype} (divide uint8 images by 255)"
        )
    if size is not None and (images.shape[2] != size or images.shape[3] != size):
        raise DataFormatError(f"{name} must be {size}x{size} pixels, got {images.shape[2]}x{images.shape[3]}")
    with torch.no_grad():
        if not torch.isfinite(images).all():
            raise DataFormatError(f"{name} contains NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise DataFormatError(
            f"{name} must have values in [0, 1], got range [{lo:.4g}, {hi:.4g}]"
            + (" (looks like [0, 255]: divide by 255)" if hi > 2 else "")
            + (" (looks like [-1, 1]: use (x + 1) / 2)" if lo < -0.5 and hi <= 1 + _RANGE_TOL else "")
        )
    return images


def check_output(out: torch.Tensor, batch: int, target_shape: Sequence[int], *, who: str) -> torch.Tensor:
    """Check that an encoder produced ``(batch, *target_shape)``; raise :class:`DataFormatError` if not."""
    expected = (batch, *target_shape)
    if tuple(out.shape) != expected:
        raise DataFormatError(f"{who} produced targets of shape {tuple(out.shape)}, expected {expected}")
    return out


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put ``module`` in eval mode with ``requires_grad=False`` everywhere (pretrained teachers)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def looks_like_hub_id(source: str) -> bool:
    """True for strings shaped like a Hugging Face repo id (``"org/name"``) that are not local paths."""
    if source.startswith((".", "/", "~")) or "\\" in source:
        return False
    return bool(_HUB_ID.match(source))


def resolve_local_source(
    source: str | Path,
    *,
    subfolder: str | None = None,
    required: Sequence[Sequence[str]] = (("config.json",),),
    what: str = "weights folder",
) -> Path | None:
    """Decide whether ``source`` is a local folder and, if so, check the files it must hold.

    Args:
        source: a local folder or a hub id (``"org/name"``).
        subfolder: sub-directory holding the component (e.g. ``"vae"`` in a Versatile Diffusion
            snapshot).
        required: groups of alternatives; from each group at least one file must exist in the
            folder (e.g. ``(("config.json",), ("model.safetensors", "pytorch_model.bin"))``).
        what: noun used in error messages.

    Returns:
        The component folder (``source/subfolder``) when ``source`` is local, ``None`` when it is a
        hub id that does not exist locally (the caller then loads from the hub or its cache).

    Raises:
        CheckpointError: the folder or a required file is missing; the message names the exact path
            expected.
    """
    path = Path(source).expanduser()
    if isinstance(source, str) and not path.exists() and looks_like_hub_id(source):
        return None
    if not path.is_dir():
        raise CheckpointError(f"missing {what}: expected a folder at {path.resolve()}")
    folder = path / subfolder if subfolder else path
    if not folder.is_dir():
        raise CheckpointError(f"missing {what}: expected a folder at {folder.resolve()}")
    for group in required:
        if not any((folder / name).is_file() for name in group):
            names = " or ".join(str((folder / n).resolve()) for n in group)
            raise CheckpointError(f"missing file in {what}: expected {names}")
    return folder


class ImageEncoder(torch.nn.Module, ABC):
    """Abstract image -> target encoder.

    Subclasses implement :meth:`_encode` on validated images and set :attr:`target_shape`.
    :meth:`encode` (also ``__call__``) validates the input, runs the model and checks the output
    shape. Gradients flow through :meth:`encode` (useful for guidance or metrics); wrap the call in
    ``torch.no_grad()`` when computing fixed targets.

    Attributes:
        target_shape: shape of one target, without the batch dimension.
        name: short identifier of the encoder and target (used in cache keys).
    """

    target_shape: tuple[int, ...]
    name: str = "encoder"

    @abstractmethod
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map validated images ``(B, 3, H, W)`` in ``[0, 1]`` to ``(B, *target_shape)``."""

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images ``(B, 3, H, W)`` in ``[0, 1]`` into targets ``(B, *target_shape)``.

        Raises:
            DataFormatError: bad image tensor (see :func:`check_images`) or an output of the wrong
                shape.
        """
        check_images(images)
        out = self._encode(images.to(device=self.device, dtype=self.dtype))
        return check_output(out, images.shape[0], self.target_shape, who=f"{type(self).__name__}({self.name})")

    @torch.no_grad()
    def encode_batches(self, images: torch.Tensor, batch_size: int = 64,
                       out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Encode a large image set in batches without gradients (target caching).

        Args:
            images: ``(N, 3, H, W)`` in ``[0, 1]``, any device (uint8 is not accepted: divide by 255).
            batch_size: images per forward pass.
            out_dtype: dtype of the returned CPU tensor.

        Returns:
            ``(N, *target_shape)`` on the CPU.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parts = [self.encode(images[i:i + batch_size]).to("cpu", out_dtype)
                 for i in range(0, images.shape[0], int(batch_size))]
        if not parts:
            raise DataFormatError("images is an empty batch")
        return torch.cat(parts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102 - same as encode
        return self.encode(images)

    def check_target_shape(self, expected: Sequence[int], *, consumer: str = "the brain model") -> None:
        """Raise :class:`ConfigMismatchError` unless ``expected`` equals :attr:`target_shape`.

        Args:
            expected: the target shape a consumer (e.g. a brain model's config) was built for.
            consumer: who expects it, for the message.
        """
        if tuple(int(s) for s in expected) != tuple(self.target_shape):
            raise ConfigMismatchError(
                f"{type(self).__name__}({self.name}) produces targets of shape {tuple(self.target_shape)}, "
                f"but {consumer} expects {tuple(expected)}"
            )
