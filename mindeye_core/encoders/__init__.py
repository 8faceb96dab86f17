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
    ConvStem,
    OpenClipEncoder,
    build_open_clip_model,
    load_open_clip_folder,
    clip_preprocess,
    normalize_by_first_token,
    save_open_clip_folder,
)
from .vae import SD_VAE_SCALING, VaeLatentEncoder, load_autoencoder_kl
from .vicregl import VicRegLEncoder, convnext_standin, load_vicregl_checkpoint, load_vicregl_hub

ENCODER_KINDS = ("clip-hidden", "clip-final", "openclip-hidden", "openclip-final", "vae", "vicregl-hub",
                 "vicregl-checkpoint", "vicregl-standin")


def load_image_encoder(kind: str, source: str | None = None, **kwargs: object) -> ImageEncoder:
    """One entry point for every encoder, by kind name (e.g. from a YAML config).

    Args:
        kind: one of :data:`ENCODER_KINDS`:
            ``clip-hidden`` / ``clip-final`` -> :class:`ClipVisionEncoder` (default source
            ``openai/clip-vit-large-patch14``); ``openclip-hidden`` / ``openclip-final`` ->
            :class:`OpenClipEncoder` (source: open_clip folder, ``hf-hub:`` id or model name);
            ``vae`` -> :class:`VaeLatentEncoder` (default Versatile Diffusion's VAE);
            ``vicregl-hub`` (source: hub entry point), ``vicregl-checkpoint`` (source: file),
            ``vicregl-standin`` (source: timm model name) -> :class:`VicRegLEncoder`.
        source: hub id, folder, file or name as above (``None`` = the kind's default).
        **kwargs: forwarded to the loader (``expected_target_shape``, ``image_size``...).
    """
    kw: dict = dict(kwargs)
    if kind in ("clip-hidden", "clip-final"):
        return ClipVisionEncoder.from_pretrained(source or OPENAI_CLIP_VIT_L14, target=kind.split("-")[1], **kw)
    if kind in ("openclip-hidden", "openclip-final"):
        if source is None:
            raise ValueError(f"{kind} needs a source (open_clip folder, 'hf-hub:' id or model name)")
        return OpenClipEncoder.from_pretrained(source, target=kind.split("-")[1], **kw)
    if kind == "vae":
        return VaeLatentEncoder.from_pretrained(source or VERSATILE_DIFFUSION_REPO, **kw)
    if kind == "vicregl-hub":
        return load_vicregl_hub(source or "convnext_small_alpha0p75", **kw)
    if kind == "vicregl-checkpoint":
        if source is None:
            raise ValueError("vicregl-checkpoint needs the checkpoint file as source")
        return load_vicregl_checkpoint(source, **kw)
    if kind == "vicregl-standin":
        return convnext_standin(source or "convnext_atto", **kw)
    raise ValueError(f"unknown encoder kind {kind!r}; expected one of {ENCODER_KINDS}")

__all__ = [
    "ENCODER_KINDS",
    "CLIP_MEAN",
    "CLIP_STD",
    "OPENAI_CLIP_VIT_L14",
    "SD_VAE_SCALING",
    "VERSATILE_DIFFUSION_REPO",
    "ClipVisionEncoder",
    "ImageEncoder",
    "ConvStem",
    "OpenClipEncoder",
    "build_open_clip_model",
    "load_open_clip_folder",
    "VaeLatentEncoder",
    "VicRegLEncoder",
    "check_images",
    "clip_preprocess",
    "convnext_standin",
    "load_autoencoder_kl",
    "load_image_encoder",
    "load_vicregl_checkpoint",
    "load_vicregl_hub",
    "normalize_by_first_token",
    "resolve_local_source",
    "save_open_clip_folder",
]
