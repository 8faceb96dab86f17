"""Tiny random-weight image components shared by the tests (built in milliseconds, no network).

``tiny_unet`` / ``tiny_vae`` / ``unipc`` make a 16 px latent-diffusion generator (8 x 8 x 4 latents);
``tiny_open_clip_cfg`` is an open_clip config for a tiny ViT whose hidden target is
``((image_size / patch_size)**2 + 1, embed_dim)``.
"""

from __future__ import annotations

from typing import Any

import torch


def tiny_unet(seed: int = 0, in_channels: int = 4, cross_attention_dim: int = 24) -> torch.nn.Module:
    """``UNet2DConditionModel`` on 8 x 8 latents, cross-attention width ``cross_attention_dim``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 1) -> torch.nn.Module:
    """``AutoencoderKL`` with 2 blocks (factor 2): ``(B, 3, 2h, 2w)`` <-> ``(B, 4, h, w)``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=16).eval()


def unipc() -> Any:
    """UniPC with a Stable-Diffusion-like beta schedule (VD's scheduler config)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000)


def tiny_open_clip_cfg(image_size: int = 32, patch_size: int = 8, embed_dim: int = 16) -> dict:
    """Config dict of a tiny ``open_clip.CLIP`` (2-layer ViT width 32, 1-layer text tower)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 32, "head_width": 16, "patch_size": patch_size},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
