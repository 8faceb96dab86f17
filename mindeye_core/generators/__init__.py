"""Target embedding -> image generators (Versatile Diffusion image variation; demo UNet).

Every generator implements :class:`Generator`: ``generate(embeddings (B, T, D), init_images=None,
strength=0.0, n_samples=1, steps, guidance, seed) -> (B, n, 3, H, W)`` in ``[0, 1]``, with img2img
strength in the paper's convention (0 = pure high-level, 1 = only the init image).
"""

from .base import Generator, check_embeddings, check_strength, img2img_steps
from .unet_variation import UNetVariationGenerator, token_grid
from .versatile import VD_REPO_ID, VersatileDiffusionGenerator, load_versatile_pipeline

__all__ = [
    "VD_REPO_ID",
    "Generator",
    "UNetVariationGenerator",
    "VersatileDiffusionGenerator",
    "check_embeddings",
    "check_strength",
    "img2img_steps",
    "token_grid",
    "load_versatile_pipeline",
]
