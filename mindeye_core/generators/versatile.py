"""Versatile Diffusion image-variation decoding, image-only mode, as used by MindEye.

Facts (``shi-labs/versatile-diffusion``, diffusers layout; checked against diffusers 0.42's
deprecated ``versatile_diffusion`` pipelines and the official MindEye reconstruction code):

- ``image_unet`` is a plain ``UNet2DConditionModel`` (cross-attention width 768) conditioned on the
  257 x 768 CLIP ViT-L/14 image tokens, each divided by token 0's norm; ``vae`` is the SD v1
  ``AutoencoderKL`` (scaling 0.18215); 512 px output (64 x 64 x 4 latents).
- MindEye loads ``VersatileDiffusionDualGuidedPipeline``, whose ``image_unet`` blocks are swapped for
  ``DualTransformer2DModel`` (image + text transformers), sets ``mix_ratio = 0`` and feeds
  ``[77 zero text tokens ; 257 image tokens]``. With ``mix_ratio = 0`` the text branch is multiplied
  by zero, so the result equals running the original image transformers on the 257 image tokens --
  which is what this adapter does, without loading the text UNet ("image-only mode").
- Sampling: UniPC multistep, 20 steps, guidance 3.5, zero tokens as the unconditional context,
  img2img from the blurry reconstruction at strength 0.15 (paper convention; the code's 0.85),
  16 samples per brain input. The embeddings coming out of the prior are re-normalised by token 0's
  norm (``+ 1e-6``) before sampling (``renormalize=True``).

This is the only module of the project that imports diffusers' deprecated Versatile Diffusion code
(:meth:`VersatileDiffusionGenerator.from_pipeline`, :func:`load_versatile_pipeline`); loading by hub
id or folder reads the three components directly with the non-deprecated diffusers classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..encoders.base import resolve_local_source
from ..encoders.clip import normalize_by_first_token
from ..errors import CheckpointError
from .unet_variation import GENERATOR_CONFIG, UNetVariationGenerator

__all__ = [
    "VD_REPO_ID",
    "VD_N_TOKENS",
    "VD_EMBED_DIM",
    "VersatileDiffusionGenerator",
    "load_versatile_pipeline",
]

VD_REPO_ID = "shi-labs/versatile-diffusion"
VD_N_TOKENS = 257
VD_EMBED_DIM = 768
VD_IMAGE_SIZE = 512
_VD_PATTERNS = ["model_index.json", "image_unet/*", "vae/*", "scheduler/*"]
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def _vd_folder(source: str | Path, *, revision: str | None, local_files_only: bool | None) -> Path:
    """Local folder holding a Versatile Diffusion snapshot (downloaded for a hub id)."""
    folder = resolve_local_source(source, required=(("model_index.json",),), what="Versatile Diffusion folder")
    if folder is None:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(str(source), revision=revision, allow_patterns=_VD_PATTERNS,
                                            local_files_only=bool(local_files_only)))
        except Exception as exc:  # huggingface_hub raises many types (offline, 404, auth, network)
            raise CheckpointError(f"could not fetch Versatile Diffusion {source!r} (image_unet, vae, scheduler) "
                                  f"from the hub or its cache: {type(exc).__name__}: {exc}") from exc
    for sub in ("image_unet", "vae"):
        resolve_local_source(folder, subfolder=sub, required=(("config.json",), _WEIGHTS),
                             what=f"Versatile Diffusion {sub}")
    resolve_local_source(folder, subfolder="scheduler", required=(("scheduler_config.json",),),
                         what="Versatile Diffusion scheduler")
    return folder


class VersatileDiffusionGenerator(UNetVariationGenerator):
    """Versatile Diffusion image variation (image-only), MindEye's final decoder.

    Args:
        unet: VD's ``image_unet`` (``UNet2DConditionModel``).
        vae: VD's ``vae``.
        scheduler: any diffusers scheduler; converted to ``UniPCMultistepScheduler`` by the loaders.
        n_tokens: image-context tokens (257 for ViT-L/14; smaller for tiny test components).
        renormalize: divide the conditioning by token 0's norm (+1e-6) before sampling.
        **kwargs: forwarded to :class:`UNetVariationGenerator` (``uncond_embedding``,
            ``sample_init_posterior``, ``init_normalization``...).

    Defaults: 20 UniPC steps, guidance 3.5, 512 px.
    """

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, scheduler: Any, *,
                 n_tokens: int | None = VD_N_TOKENS, renormalize: bool = True, default_steps: int = 20,
                 default_guidance: float = 3.5, **kwargs: Any) -> None:
        super().__init__(unet, vae, scheduler, n_tokens=n_tokens, default_steps=default_steps,
                         default_guidance=default_guidance, **kwargs)
        self.renormalize = renormalize

    def prepare_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Token-0 re-normalisation of the official reconstruction code (when ``renormalize``)."""
        return normalize_by_first_token(embeddings, eps=1e-6) if self.renormalize else embeddings

    def generator_config(self) -> dict[str, Any]:
        return {**super().generator_config(), "renormalize": self.renormalize}

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        source: str | Path = VD_REPO_ID,
        *,
        revision: str | None = None,
        local_files_only: bool | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        n_tokens: int | None = VD_N_TOKENS,
        expected_embedding_shape: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> VersatileDiffusionGenerator:
        """Load ``image_unet``, ``vae`` and ``scheduler`` from a VD hub id or a local snapshot folder.

        A folder written by :meth:`save_pretrained` is loaded as such. For a hub id only ``model_index.json``, ``image_unet/``, ``vae/`` and ``scheduler/`` are
        fetched (``snapshot_download``; ``local_files_only=True`` uses the cache only). A local
        folder must have VD's layout (``model_index.json`` + those three sub-folders).

        Raises:
            CheckpointError: missing folder/file (exact path) or a failed download.
            ConfigMismatchError: the UNet's cross-attention width or the token count differs from
                ``expected_embedding_shape``.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler

        if Path(source).expanduser().is_dir() and (Path(source).expanduser() / GENERATOR_CONFIG).is_file():
            # a folder written by save_pretrained (unet/, vae/, scheduler/ + generator_config.json)
            return super().from_pretrained(source, torch_dtype=torch_dtype, device=device,  # type: ignore[return-value]
                                           expected_embedding_shape=expected_embedding_shape)
        folder = _vd_folder(source, revision=revision, local_files_only=local_files_only)
        kw: dict[str, Any] = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        try:
            unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="image_unet", **kw)
            vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kw)
            sched = UniPCMultistepScheduler.from_pretrained(str(folder), subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"could not load Versatile Diffusion components from {folder}: {exc}") from exc
        gen = cls(unet, vae, sched, n_tokens=n_tokens, **kwargs)
        if device is not None:
            gen = gen.to(device)
        gen.check_embedding_shape(expected_embedding_shape, where=f"Versatile Diffusion in {folder}")
        return gen

    @classmethod
    def from_pipeline(cls, pipe: Any, *, n_tokens: int | None = VD_N_TOKENS, **kwargs: Any) -> VersatileDiffusionGenerator:
        """Wrap an already-loaded diffusers Versatile Diffusion pipeline (any of the four classes).

        A dual-guided pipeline's ``DualTransformer2DModel`` blocks are reverted to the image
        transformers (``transformers[0]``), which is exactly image-only mode (``mix_ratio = 0``).
        Note that this modifies ``pipe.image_unet`` in place. The scheduler is converted to UniPC.
        """
        from diffusers import UniPCMultistepScheduler
        from diffusers.models import DualTransformer2DModel
        from diffusers.pipelines.deprecated.versatile_diffusion import (
            VersatileDiffusionDualGuidedPipeline,
            VersatileDiffusionImageVariationPipeline,
            VersatileDiffusionPipeline,
            VersatileDiffusionTextToImagePipeline,
        )

        classes = (VersatileDiffusionPipeline, VersatileDiffusionDualGuidedPipeline,
                   VersatileDiffusionImageVariationPipeline, VersatileDiffusionTextToImagePipeline)
        if not isinstance(pipe, classes):
            raise TypeError(f"expected a Versatile Diffusion pipeline, got {type(pipe).__name__}")
        unet = pipe.image_unet
        for name, module in list(unet.named_modules()):
            if isinstance(module, DualTransformer2DModel):
                parent, index = name.rsplit(".", 1)
                unet.get_submodule(parent)[int(index)] = module.transformers[0]
        sched = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        return cls(unet, pipe.vae, sched, n_tokens=n_tokens, **kwargs)


def load_versatile_pipeline(source: str | Path = VD_REPO_ID, **kwargs: Any) -> Any:
    """Load diffusers' (deprecated) ``VersatileDiffusionImageVariationPipeline`` from a hub id or folder.

    Useful as a reference implementation (VD's own preprocessing, grey-image unconditional context);
    MindEye's path is :class:`VersatileDiffusionGenerator`. ``kwargs`` go to ``from_pretrained``.

    Raises:
        CheckpointError: a missing local folder / ``model_index.json`` or a failed load.
    """
    from diffusers.pipelines.deprecated.versatile_diffusion import VersatileDiffusionImageVariationPipeline

    folder = resolve_local_source(source, required=(("model_index.json",),), what="Versatile Diffusion folder")
    try:
        return VersatileDiffusionImageVariationPipeline.from_pretrained(str(folder or source), **kwargs)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load VersatileDiffusionImageVariationPipeline from {source!r}: {exc}") from exc
