"""Image-variation decoding with an explicit, readable sampling loop.

Components (all diffusers classes, so the tiny demo model and Versatile Diffusion's image UNet go
through the same code): a ``UNet2DConditionModel`` with cross-attention on image-embedding tokens
``(B, T, D)``, an ``AutoencoderKL`` and a scheduler (``UniPCMultistepScheduler`` by default).

Sampling, for ``N = B x n_samples`` latents of shape ``(C, h, w)``::

    context = [uncond ; cond]                      # classifier-free guidance (uncond = zeros by default)
    if no init image or strength == 0:
        x = eps * init_noise_sigma; ts = all `steps` timesteps
    else:                                          # img2img, paper convention
        k = round((1 - strength) * steps)          # steps actually run
        z0 = scale * mode(q(z | 2 * init - 1)); ts = last k timesteps
        x = add_noise(z0, eps, ts[0])              # (x = z0 when k == 0)
    for t in ts:
        e_u, e_c = unet([x; x], t, context).chunk(2)
        e = e_u + g * (e_c - e_u)
        x = scheduler.step(e, t, x)
    images = clamp(vae.decode(x / scale) / 2 + 0.5, 0, 1)

With ``token_grid=True`` (the tiny demo generator) the UNet also sees the patch tokens as an image:
``unet([x; grid(context)], t, context)``, where ``grid`` lays tokens ``1..T-1`` out on their
``g x g`` patch grid and repeats each to the latent resolution (:func:`token_grid`), so local
appearance does not have to be routed through cross-attention alone.

Differences from the official MindEye reconstruction code, all selectable:

- unconditional context: MindEye uses zero tokens (default here); Versatile Diffusion's own pipeline
  uses the embedding of a grey image -- pass it as ``uncond_embedding``.
- init latents: the official code *samples* the VAE posterior (``sample_init_posterior=True``); the
  default takes the mode so that strength 1 reproduces the VAE round trip exactly.
- init normalisation: the official code feeds ``clip_extractor.normalize(blurry)`` (CLIP mean/std)
  to the VAE encoder instead of ``2 x - 1``; ``init_normalization="clip"`` reproduces that quirk,
  the default ``"vae"`` is the VAE's own convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..configfile import read_versioned_config, write_versioned_config
from ..encoders.base import check_images, freeze, resolve_local_source
from ..encoders.clip import CLIP_MEAN, CLIP_STD
from ..errors import CheckpointError, DataFormatError
from ..io import record_checksums, verify_checksums
from .base import Generator, check_embeddings, check_sampling, check_strength, img2img_steps, seed_generators

__all__ = ["UNetVariationGenerator", "GENERATOR_CONFIG", "token_grid"]

GENERATOR_CONFIG = "generator_config.json"
GENERATOR_FORMAT_VERSION = 1
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                      "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def token_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """Patch tokens laid out as a feature map: ``(B, 1 + g*g, D)`` -> ``(B, D, side, side)``.

    Token 0 (CLS) is dropped; tokens ``1..g*g`` are the ViT's patches in row-major order; each is
    repeated (nearest) over the ``side / g`` latent pixels it covers.

    Raises:
        DataFormatError: ``T - 1`` is not a square, or ``side`` is not a multiple of ``g``.
    """
    b, t, d = tokens.shape
    g = int(round((t - 1) ** 0.5))
    if g * g != t - 1 or g == 0:
        raise DataFormatError(f"token_grid needs CLS + a square grid of patch tokens, got {t} tokens")
    if side % g:
        raise DataFormatError(f"token_grid: latent side {side} is not a multiple of the patch grid {g}")
    grid = tokens[:, 1:].transpose(1, 2).reshape(b, d, g, g)
    return grid.repeat_interleave(side // g, dim=2).repeat_interleave(side // g, dim=3)


def _fresh_scheduler(scheduler: Any) -> Any:
    """A new scheduler instance with the same config (schedulers keep per-run state)."""
    return type(scheduler).from_config(scheduler.config)


class UNetVariationGenerator(torch.nn.Module, Generator):
    """Embedding-conditioned latent diffusion generator with CFG and img2img.

    Args:
        unet: ``UNet2DConditionModel`` whose ``cross_attention_dim`` equals the embedding width ``D``.
        vae: ``AutoencoderKL``.
        scheduler: a diffusers scheduler (used as a config template; a fresh copy runs each call).
        n_tokens: required ``T`` of the embeddings (``None`` accepts any).
        image_size: output side; default ``unet.config.sample_size * 2**(len(vae blocks) - 1)``.
        default_steps, default_guidance: sampling defaults.
        uncond_embedding: ``(T, D)`` unconditional context for CFG; zeros when ``None``.
        scaling_factor: latent scale (default ``vae.config.scaling_factor``).
        sample_init_posterior: sample instead of taking the mode of ``q(z | init)``.
        init_normalization: ``"vae"`` (``2x - 1``) or ``"clip"`` (official-code quirk, see module doc).
        max_batch: at most this many latents per UNet pass (doubled by CFG) to bound memory; the
            output does not depend on it (all noise is drawn up front).
        token_grid: also feed the patch tokens as ``D`` extra input channels (:func:`token_grid`);
            the UNet's ``in_channels`` must then be ``C + D``.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        scheduler: Any,
        *,
        n_tokens: int | None = None,
        image_size: int | None = None,
        default_steps: int = 20,
        default_guidance: float = 3.5,
        uncond_embedding: torch.Tensor | None = None,
        scaling_factor: float | None = None,
        sample_init_posterior: bool = False,
        init_normalization: Literal["vae", "clip"] = "vae",
        max_batch: int | None = None,
        token_grid: bool = False,
    ) -> None:
        super().__init__()
        self.unet = freeze(unet)
        self.vae = freeze(vae)
        self.scheduler = scheduler
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        cross = unet.config.cross_attention_dim
        self.embed_dim = int(cross if isinstance(cross, int) else cross[0])
        self.token_grid = bool(token_grid)
        self.latent_channels = int(vae.config.latent_channels)
        extra = self.embed_dim if self.token_grid else 0
        if int(unet.config.in_channels) != self.latent_channels + extra:
            raise DataFormatError(f"UNet in_channels ({unet.config.in_channels}) != VAE latent channels "
                                  f"({self.latent_channels})" + (f" + token-grid channels ({extra})" if extra else ""))
        self.n_tokens = n_tokens
        self.embedding_shape = (n_tokens, self.embed_dim) if n_tokens is not None else None
        sample = unet.config.sample_size
        sample = sample if isinstance(sample, int) else sample[0]
        self.image_size = int(image_size if image_size is not None else sample * self.vae_scale)
        if self.image_size % self.vae_scale:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the VAE factor {self.vae_scale}")
        self.default_steps = int(default_steps)
        self.default_guidance = float(default_guidance)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None
                                    else getattr(vae.config, "scaling_factor", 0.18215))
        self.sample_init_posterior = sample_init_posterior
        if init_normalization not in ("vae", "clip"):
            raise ValueError(f"init_normalization must be 'vae' or 'clip', got {init_normalization!r}")
        self.init_normalization = init_normalization
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
        self.max_batch = None if max_batch is None else int(max_batch)
        if uncond_embedding is not None:
            uncond_embedding = check_embeddings(uncond_embedding[None] if uncond_embedding.ndim == 2
                                                else uncond_embedding, self.embedding_shape,
                                                who="uncond_embedding")[0]
            if uncond_embedding.shape[-1] != self.embed_dim:
                raise DataFormatError(f"uncond_embedding width {uncond_embedding.shape[-1]} != UNet "
                                      f"cross_attention_dim {self.embed_dim}")
        self.register_buffer("uncond_embedding", uncond_embedding, persistent=False)

    # ------------------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent."""
        side = self.image_size // self.vae_scale
        return (self.latent_channels, side, side)

    # ------------------------------------------------------------------------------ pieces
    def prepare_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Hook applied to the conditioning before sampling (identity here)."""
        return embeddings

    def encode_init(self, init_images: torch.Tensor,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Init images ``(B, 3, H, W)`` in [0, 1] -> scaled latents ``(B, C, h, w)``.

        Images of another size are resized to :attr:`image_size` (bilinear, antialiased).
        """
        check_images(init_images, name="init_images")
        x = init_images.to(device=self.device, dtype=self.vae.dtype)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        if self.init_normalization == "vae":
            x = 2 * x - 1
        else:
            m = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            s = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x - m) / s
        dist = self.vae.encode(x).latent_dist
        if self.sample_init_posterior:
            z = dist.mean + dist.std * self._randn(dist.mean.shape, generator)
        else:
            z = dist.mode()
        return z * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(N, C, h, w)`` -> images ``(N, 3, H, W)`` in [0, 1]."""
        img = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample
        return (img.float() / 2 + 0.5).clamp(0, 1)

    def _randn(self, shape: tuple[int, ...] | torch.Size,
               generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
        """Standard normal ``shape`` drawn on the CPU (so a seed gives the same images on every device).

        With a sequence of ``k`` generators, ``shape[0]`` must be a multiple ``k m``; rows
        ``[i m, (i + 1) m)`` are drawn from generator ``i`` (the ``repeat_interleave`` layout of
        :meth:`generate`: input ``i``'s samples).
        """
        shape = tuple(shape)
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)
        gens = list(generator)
        if not gens or shape[0] % len(gens):
            raise ValueError(f"_randn: {shape[0]} rows cannot be split over {len(gens)} generators")
        rows = (shape[0] // len(gens), *shape[1:])
        parts = [torch.randn(rows, generator=g, dtype=torch.float32) for g in gens]
        return torch.cat(parts).to(self.device, self.dtype)

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        embeddings: torch.Tensor,
        init_images: torch.Tensor | None = None,
        strength: float = 0.0,
        n_samples: int = 1,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | Sequence[int] = 0,
    ) -> torch.Tensor:
        """See :meth:`Generator.generate`. Returns ``(B, n_samples, 3, image_size, image_size)``.

        Random numbers, in this order: the init posterior noise ``(B, C, h, w)`` (img2img with
        ``sample_init_posterior`` only), then the latent noise ``(B n, C, h, w)`` (initial latents, or
        the img2img noise). With one seed per input row, row ``i`` draws its ``(1, C, h, w)``
        posterior noise and then its ``(n, C, h, w)`` latent noise from
        ``torch.Generator().manual_seed(seed[i])``, so its images do not depend on the other rows.
        """
        who = type(self).__name__
        n, steps, guidance = check_sampling(n_samples, steps, guidance)
        steps = self.default_steps if steps is None else steps
        guidance = self.default_guidance if guidance is None else guidance
        s = check_strength(strength)
        if init_images is None and s > 0:
            raise ValueError(f"img2img strength {s} > 0 needs init_images")
        check_embeddings(embeddings, self.embedding_shape, who=who)
        if embeddings.shape[-1] != self.embed_dim:
            raise DataFormatError(f"{who}: embeddings have width {embeddings.shape[-1]}, the UNet's "
                                  f"cross_attention_dim is {self.embed_dim}")
        b = embeddings.shape[0]
        if init_images is not None and init_images.shape[0] != b:
            raise DataFormatError(f"{who}: {init_images.shape[0]} init images for {b} embeddings")
        n_run = steps if init_images is None else img2img_steps(s, steps)

        gen = seed_generators(seed, b, who=who)
        cond = self.prepare_embeddings(embeddings.to(self.device, torch.float32)).to(self.dtype)
        cond = cond.repeat_interleave(n, dim=0)  # (B*n, T, D): sample k of input i at row i*n + k
        use_cfg = guidance != 1.0
        uncond = cond
        if use_cfg:
            if self.uncond_embedding is None:
                uncond = torch.zeros_like(cond)
            else:
                uncond = self.uncond_embedding.to(self.device, self.dtype).expand_as(cond)

        sched = _fresh_scheduler(self.scheduler)
        sched.set_timesteps(steps, device=self.device)
        shape = (b * n, *self.latent_shape)
        begin = 0
        if init_images is None or n_run == steps:
            # strength 0: the init image is ignored entirely (official code: no img2img)
            latents = self._randn(shape, gen) * sched.init_noise_sigma
        else:
            init = self.encode_init(init_images, gen).to(self.dtype).repeat_interleave(n, dim=0)
            begin = (steps - n_run) * getattr(sched, "order", 1)
            if n_run == 0:
                latents = init
            else:
                if hasattr(sched, "set_begin_index"):
                    sched.set_begin_index(begin)
                noise = self._randn(shape, gen)
                latents = sched.add_noise(init, noise, sched.timesteps[begin:begin + 1].repeat(shape[0]))

        # All random numbers are drawn above, so chunking (max_batch) does not change the result.
        chunk = self.max_batch or shape[0]
        images = []
        for lo in range(0, shape[0], chunk):
            sl = slice(lo, lo + chunk)
            context = torch.cat([uncond[sl], cond[sl]]) if use_cfg else cond[sl]
            images.append(self._denoise(latents[sl], context, steps, begin, n_run, guidance, use_cfg))
        return torch.cat(images).view(b, n, 3, self.image_size, self.image_size)

    def _denoise(self, latents: torch.Tensor, context: torch.Tensor, steps: int, begin: int, n_run: int,
                 guidance: float, use_cfg: bool) -> torch.Tensor:
        """Run the last ``n_run`` of ``steps`` scheduler steps from ``latents`` and decode the result."""
        sched = _fresh_scheduler(self.scheduler)  # multistep schedulers keep per-trajectory state
        sched.set_timesteps(steps, device=self.device)
        if begin and hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        timesteps = sched.timesteps[begin:] if n_run else sched.timesteps[:0]
        grid = token_grid(context, latents.shape[-1]) if self.token_grid else None  # fixed over the loop
        for t in timesteps:
            x_in = torch.cat([latents, latents]) if use_cfg else latents
            x_in = sched.scale_model_input(x_in, t)
            if grid is not None:
                x_in = torch.cat([x_in, grid], dim=1)
            eps = self.unet(x_in, t, encoder_hidden_states=context).sample
            if use_cfg:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            latents = sched.step(eps, t, latents).prev_sample
        return self.decode(latents)

    # ------------------------------------------------------------------------------ save / load
    def generator_config(self) -> dict[str, Any]:
        """JSON-serialisable settings (everything but the three components and uncond tensor); saved as
        ``generator_config.json`` with the class name and format version by :mod:`mindeye_core.configfile`."""
        return {
            "n_tokens": self.n_tokens,
            "image_size": self.image_size,
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            "scaling_factor": self.scaling_factor,
            "sample_init_posterior": self.sample_init_posterior,
            "init_normalization": self.init_normalization,
            "max_batch": self.max_batch,
            "token_grid": self.token_grid,
        }

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``unet/``, ``vae/``, ``scheduler/`` (diffusers layout) and ``generator_config.json``
        (+ ``uncond_embedding.safetensors`` when set)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.uncond_embedding is not None:
            save_file({"uncond_embedding": self.uncond_embedding.detach().cpu().contiguous()},
                      str(folder / "uncond_embedding.safetensors"))
        record_checksums(folder)  # a .sha256 beside every weight file, verified by from_pretrained
        write_versioned_config(folder / GENERATOR_CONFIG, kind=type(self).__name__, version=GENERATOR_FORMAT_VERSION,
                               data=self.generator_config(), sort_keys=False)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None,
                        expected_embedding_shape: tuple[int, int] | None = None,
                        verify: bool | None = None) -> UNetVariationGenerator:
        """Load a folder written by :meth:`save_pretrained` (e.g. the shipped demo generator).

        The scheduler is loaded as ``UniPCMultistepScheduler`` from the saved config.

        ``verify``: check the ``.sha256`` sidecars of the weight files when present (default on; ``False`` or
        ``$MINDEYE_VERIFY_WEIGHTS=0`` skips it).

        Raises:
            CheckpointError: a missing file (exact path), a damaged weight file (sha256 mismatch), a config
                for another class, or embeddings of a shape other than ``expected_embedding_shape``.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler
        from safetensors.torch import load_file

        folder = Path(folder)
        resolve_local_source(folder, required=((GENERATOR_CONFIG,),), what="generator folder")
        for sub, files in (("unet", _DIFFUSERS_WEIGHTS), ("vae", _DIFFUSERS_WEIGHTS)):
            resolve_local_source(folder, subfolder=sub, required=(("config.json",), files), what=f"generator {sub}")
        resolve_local_source(folder, subfolder="scheduler", required=(("scheduler_config.json",),),
                             what="generator scheduler")
        # files written before format versions were recorded (the shipped demo generator) are version 1
        cfg = read_versioned_config(folder / GENERATOR_CONFIG, kind=cls.__name__, version=GENERATOR_FORMAT_VERSION,
                                    error=CheckpointError, missing_version=1).data
        verify_checksums(folder, verify=verify)
        kw: dict[str, Any] = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), **kw)
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), **kw)
        sched = UniPCMultistepScheduler.from_pretrained(str(folder / "scheduler"))
        uncond = None
        if (folder / "uncond_embedding.safetensors").is_file():
            uncond = load_file(str(folder / "uncond_embedding.safetensors"))["uncond_embedding"]
        gen = cls(unet, vae, sched, uncond_embedding=uncond, **cfg)
        if device is not None:
            gen = gen.to(device)
        gen.check_embedding_shape(expected_embedding_shape, where=f"generator in {folder}")
        return gen
