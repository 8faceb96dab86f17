"""The tiny demo-world image models: names, locations and loaders.

Three models, trained on the demo world by ``python -m training.train_tiny_{clip,vae,generator}`` and shipped
as float16 safetensors in ``assets/demo_models/`` (see ``docs/demo_models.md`` for measured quality):

=================  ==================================  =================================================
name               folder layout                       loader -> object
=================  ==================================  =================================================
``tiny-clip``      ``open_clip_config.json`` +         :func:`load_demo_clip` -> :class:`OpenClipEncoder`
                   ``open_clip_model.safetensors``     (hidden target ``(65, 128)`` or final ``(128,)``);
                                                       :func:`load_demo_clip_model` -> ``(open_clip CLIP,
                                                       tokenizer)``
``tiny-vae``       diffusers ``AutoencoderKL`` folder  :func:`load_demo_vae` -> :class:`VaeLatentEncoder`
                                                       (64 x 64 x 3 <-> ``(4, 16, 16)``)
``tiny-generator`` ``unet/ vae/ scheduler/`` +         :func:`load_demo_generator` ->
                   ``generator_config.json``           :class:`UNetVariationGenerator` (``(65, 128)``
                                                       tokens -> 64 x 64 images)
=================  ==================================  =================================================

Where the weights are looked up, first match wins: the ``root`` argument, ``$MINDEYE_DEMO_MODELS``,
then ``assets/demo_models`` of the source checkout. A missing folder or file raises
:class:`~mindeye_core.errors.CheckpointError` naming the exact path expected and the command that
creates it. Weights stored as float16 are loaded into float32 modules (CPU-friendly).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = [
    "DEMO_CLIP",
    "DEMO_GENERATOR",
    "DEMO_MODEL_FILES",
    "DEMO_VAE",
    "DEMO_CLIP_HIDDEN_SHAPE",
    "DEMO_CLIP_FINAL_SHAPE",
    "DEMO_VAE_LATENT_SHAPE",
    "DEMO_IMAGE_SIZE",
    "demo_model_path",
    "demo_models_dir",
    "load_demo_clip",
    "load_demo_clip_model",
    "load_demo_generator",
    "load_demo_vae",
]

DEMO_CLIP = "tiny-clip"
DEMO_VAE = "tiny-vae"
DEMO_GENERATOR = "tiny-generator"
DEMO_IMAGE_SIZE = 64
DEMO_CLIP_HIDDEN_SHAPE = (65, 128)
"""Hidden target of the shipped tiny CLIP: CLS + 8 x 8 patch tokens, projection width 128."""
DEMO_CLIP_FINAL_SHAPE = (128,)
DEMO_VAE_LATENT_SHAPE = (4, 16, 16)

DEMO_MODEL_FILES: dict[str, tuple[str, ...]] = {
    DEMO_CLIP: ("open_clip_config.json", "open_clip_model.safetensors"),
    DEMO_VAE: ("config.json", "diffusion_pytorch_model.safetensors"),
    DEMO_GENERATOR: ("generator_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"),
}
"""Files each shipped model folder must hold (relative to the folder)."""

_TRAIN_COMMAND = {
    DEMO_CLIP: "python -m training.train_tiny_clip --out {path} --fp16",
    DEMO_VAE: "python -m training.train_tiny_vae --out {path} --fp16",
    DEMO_GENERATOR: "python -m training.train_tiny_generator --clip {root}/tiny-clip --vae {root}/tiny-vae "
                    "--out {path} --fp16",
}


def demo_models_dir(root: str | Path | None = None) -> Path:
    """Folder holding ``tiny-clip/``, ``tiny-vae/``, ``tiny-generator/``.

    ``root`` if given, else ``$MINDEYE_DEMO_MODELS``, else ``<source checkout>/assets/demo_models``.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MINDEYE_DEMO_MODELS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1] / "assets" / "demo_models"


def demo_model_path(name: str, root: str | Path | None = None) -> Path:
    """Checked folder of demo model ``name``.

    Raises:
        ValueError: unknown name.
        CheckpointError: the folder or one of :data:`DEMO_MODEL_FILES` is missing; the message
            names the exact path and the training command that writes it.
    """
    if name not in DEMO_MODEL_FILES:
        raise ValueError(f"unknown demo model {name!r}; expected one of {sorted(DEMO_MODEL_FILES)}")
    base = demo_models_dir(root)
    folder = base / name
    how = _TRAIN_COMMAND[name].format(path=folder, root=base)
    if not folder.is_dir():
        raise CheckpointError(f"missing demo model {name!r}: expected a folder at {folder.resolve()} "
                              f"(create it with: {how})")
    for rel in DEMO_MODEL_FILES[name]:
        if not (folder / rel).is_file():
            raise CheckpointError(f"missing file of demo model {name!r}: expected {(folder / rel).resolve()} "
                                  f"(re-create the folder with: {how})")
    return folder


def load_demo_clip_model(root: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The full tiny CLIP (image and text towers) and its tokenizer.

    Returns:
        ``(model, tokenizer)``: an ``open_clip.CLIP`` in eval mode, float32, and a callable mapping a
        list of ``B`` strings to token ids ``(B, context_length)`` (open_clip's bundled BPE, offline).
        ``model.encode_image`` takes CLIP-normalised ``(B, 3, 64, 64)`` pixels (use
        :func:`mindeye_core.encoders.clip_preprocess`); ``model.encode_text`` takes the token ids.
    """
    from .encoders import load_open_clip_folder

    return load_open_clip_folder(demo_model_path(DEMO_CLIP, root), device=device)


def load_demo_clip(target: str = "hidden", root: str | Path | None = None,
                   device: str | torch.device = "cpu") -> Any:
    """The tiny CLIP image encoder: images ``(B, 3, 64, 64)`` in [0, 1] -> ``(B, 65, 128)`` hidden tokens
    (each divided by token 0's norm) for ``target="hidden"``, or ``(B, 128)`` L2-normalised for
    ``"final"``. Returns an :class:`~mindeye_core.encoders.OpenClipEncoder`."""
    from .encoders import OpenClipEncoder

    folder = demo_model_path(DEMO_CLIP, root)
    enc = OpenClipEncoder.from_pretrained(folder, target=target, device=device)  # type: ignore[arg-type]
    return enc.float()


def load_demo_vae(root: str | Path | None = None, device: str | torch.device = "cpu") -> Any:
    """The tiny VAE as a :class:`~mindeye_core.encoders.VaeLatentEncoder`: ``(B, 3, 64, 64)`` in [0, 1]
    -> scaled latents ``(B, 4, 16, 16)`` (unit variance on demo images) and back with ``.decode``."""
    from .encoders import VaeLatentEncoder

    folder = demo_model_path(DEMO_VAE, root)
    return VaeLatentEncoder.from_pretrained(folder, image_size=DEMO_IMAGE_SIZE, torch_dtype=torch.float32,
                                           device=device)


def load_demo_generator(root: str | Path | None = None, device: str | torch.device | None = None,
                        torch_dtype: torch.dtype = torch.float32) -> Any:
    """The tiny image-variation generator (:class:`~mindeye_core.generators.UNetVariationGenerator`):
    tiny-CLIP hidden tokens ``(B, 65, 128)`` -> images ``(B, n_samples, 3, 64, 64)``, UniPC, CFG
    (zero tokens as the unconditional context), img2img."""
    from .generators import UNetVariationGenerator

    folder = demo_model_path(DEMO_GENERATOR, root)
    return UNetVariationGenerator.from_pretrained(folder, torch_dtype=torch_dtype, device=device)
