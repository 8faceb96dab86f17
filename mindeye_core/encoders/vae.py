"""Stable Diffusion VAE latents: MindEye's low-level target, and the decoder of blurry images.

Target: ``latents = scaling_factor * mode(q(z | 2x - 1))`` with ``scaling_factor = 0.18215`` for the
Stable Diffusion v1 VAE that Versatile Diffusion ships (``shi-labs/versatile-diffusion``, subfolder
``vae``). For 512 x 512 inputs that is ``(4, 64, 64)``. The official MindEye code encodes
``2 * image - 1`` and takes the posterior mode (``latent_dist.mode()``), as done here
(``sample_posterior=False``).

Decoding inverts it: ``image = clamp(D(latents / scaling_factor) / 2 + 0.5, 0, 1)``.

Works with any diffusers ``AutoencoderKL`` (e.g. the tiny demo-world VAE); ``scaling_factor``
comes from the VAE's config unless given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, DataFormatError
from ..io import verify_checksums
from .base import ImageEncoder, freeze, looks_like_hub_id, resolve_local_source

__all__ = ["SD_VAE_SCALING", "VaeLatentEncoder", "load_autoencoder_kl"]

SD_VAE_SCALING = 0.18215
VERSATILE_DIFFUSION_REPO = "shi-labs/versatile-diffusion"
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def load_autoencoder_kl(
    source: str | Path = VERSATILE_DIFFUSION_REPO,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Load a diffusers ``AutoencoderKL`` from a hub id or a local folder.

    ``subfolder=None`` picks ``"vae"`` when ``source`` is a pipeline (the Versatile Diffusion hub id,
    or a local folder with a ``vae/`` sub-directory) and the folder itself otherwise.

    Raises:
        CheckpointError: missing folder, ``config.json`` or weights (exact path named) or a failed
            hub load.
    """
    from diffusers import AutoencoderKL

    if subfolder is None:
        local = Path(source).expanduser()
        if local.is_dir():
            subfolder = "vae" if (local / "vae").is_dir() else None
        elif looks_like_hub_id(str(source)):
            subfolder = "vae" if str(source) == VERSATILE_DIFFUSION_REPO else None
    folder = resolve_local_source(source, subfolder=subfolder, required=(("config.json",), _WEIGHT_FILES),
                                  what="VAE weights folder")
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if folder is not None:
        verify_checksums(folder)  # sha256 sidecars, when present (CheckpointError naming a damaged file)
    try:
        if folder is not None:
            return AutoencoderKL.from_pretrained(str(folder), **kwargs)
        return AutoencoderKL.from_pretrained(str(source), subfolder=subfolder, revision=revision, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise CheckpointError(f"could not load AutoencoderKL from {source!r}"
                              f"{' subfolder ' + subfolder if subfolder else ''}: {exc}") from exc


class VaeLatentEncoder(ImageEncoder):
    """Images -> scaled VAE latents, and latents -> images.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        image_size: side length images are resized to before encoding (512 for MindEye on NSD);
            images of another size are resized bilinearly with antialiasing.
        scaling_factor: latent scale; defaults to ``vae.config.scaling_factor`` (0.18215 for SD).
        sample_posterior: sample ``z ~ q(z|x)`` instead of taking the mode (the official code
            uses the mode for targets).

    Shapes: ``encode((B, 3, H, W)) -> (B, C, image_size / f, image_size / f)`` with ``C`` the
    latent channels (4) and ``f = 2 ** (len(block_out_channels) - 1)`` (8);
    ``decode((B, C, h, w)) -> (B, 3, f h, f w)`` in ``[0, 1]``.
    """

    def __init__(self, vae: torch.nn.Module, *, image_size: int = 512, scaling_factor: float | None = None,
                 sample_posterior: bool = False) -> None:
        super().__init__()
        cfg = vae.config
        self.vae = freeze(vae)
        self.scale_factor = 2 ** (len(cfg.block_out_channels) - 1)
        if image_size % self.scale_factor:
            raise ValueError(f"image_size {image_size} is not a multiple of the VAE downsampling factor "
                             f"{self.scale_factor}")
        self.image_size = int(image_size)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None
                                    else getattr(cfg, "scaling_factor", SD_VAE_SCALING))
        self.sample_posterior = sample_posterior
        self.latent_channels = int(cfg.latent_channels)
        side = self.image_size // self.scale_factor
        self.target_shape = (self.latent_channels, side, side)
        self.name = f"vae-{self.latent_channels}x{side}x{side}"

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = VERSATILE_DIFFUSION_REPO,
        *,
        subfolder: str | None = None,
        image_size: int = 512,
        scaling_factor: float | None = None,
        expected_target_shape: tuple[int, ...] | None = None,
        revision: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> VaeLatentEncoder:
        """Load Versatile Diffusion's VAE (default) or any ``AutoencoderKL`` folder; see
        :func:`load_autoencoder_kl`."""
        vae = load_autoencoder_kl(source, subfolder=subfolder, revision=revision, torch_dtype=torch_dtype)
        if device is not None:
            vae = vae.to(device)
        enc = cls(vae, image_size=image_size, scaling_factor=scaling_factor)
        if expected_target_shape is not None:
            enc.check_target_shape(expected_target_shape)
        return enc

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``(B, 3, H, W)`` to ``image_size`` (bilinear, antialiased) if needed."""
        if tuple(images.shape[-2:]) == (self.image_size, self.image_size):
            return images
        return F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False, antialias=True)

    def _encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = 2 * self.resize(images) - 1
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if self.sample_posterior else dist.mode()
        return z * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents ``(B, C, h, w)`` into images ``(B, 3, f h, f w)`` in ``[0, 1]``.

        Raises:
            DataFormatError: wrong rank or channel count, or non-finite latents.
        """
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise DataFormatError(f"latents must have shape (B, {self.latent_channels}, h, w), got {shape}")
        if not torch.isfinite(latents).all():
            raise DataFormatError("latents contain NaN or infinite values")
        z = latents.to(device=self.device, dtype=self.dtype) / self.scaling_factor
        return (self.vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
