"""Image -> target-space encoders (CLIP hidden / final, VAE latents, VICRegL teacher), real and tiny.

Every encoder is an :class:`ImageEncoder`: ``encode(images (B, 3, H, W) in [0, 1]) -> (B, *target_shape)``.
Heavy third-party imports (transformers, diffusers, open_clip, timm) happen inside the loaders.
"""

from .base import ImageEncoder, check_images, resolve_local_source
from .clip import (
    CLIP_MEAN,
    CLIP_STD,
    OPENAI_CLIP_VIT_L14,
    VERSATILE_DIFFUSION_REPO,
    ClipVisionEncoder,
    OpenClipEncoder,
    clip_preprocess,
    normalize_by_first_token,
    save_open_clip_folder,
)
from .vae import SD_VAE_SCALING, VaeLatentEncoder, load_autoencoder_kl
from .vicregl import VicRegLEncoder, convnext_standin, load_vicregl_checkpoint, load_vicregl_hub

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "OPENAI_CLIP_VIT_L14",
    "SD_VAE_SCALING",
    "VERSATILE_DIFFUSION_REPO",
    "ClipVisionEncoder",
    "ImageEncoder",
    "OpenClipEncoder",
    "VaeLatentEncoder",
    "VicRegLEncoder",
    "check_images",
    "clip_preprocess",
    "convnext_standin",
    "load_autoencoder_kl",
    "load_vicregl_checkpoint",
    "load_vicregl_hub",
    "normalize_by_first_token",
    "resolve_local_source",
    "save_open_clip_folder",
]
