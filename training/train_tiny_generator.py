"""Train the tiny demo-world image-variation generator: a latent diffusion UNet conditioned on tiny-CLIP tokens.

Inputs (computed once, before training, from the *trained* tiny CLIP and tiny VAE folders):
- condition ``c``: the tiny CLIP's hidden target of each training image, ``(65, 128)`` = CLS + 64
  patch tokens after ``ln_post`` and the projection, divided by the norm of token 0 (the space the
  brain model predicts, see :class:`mindeye_core.encoders.OpenClipEncoder`);
- ``z0``: the VAE's posterior-mode latents times its scaling factor, ``(4, 16, 16)``.

Model: diffusers ``UNet2DConditionModel`` (:data:`DEFAULT_UNET_CFG`, channels (64, 128) at 16 x 16 and 8 x 8,
self- and cross-attention on the 65 tokens only at the 8 x 8 level and in the middle block, ``--attn-levels``;
with ``--token-grid``, the default, the 64 patch tokens are also fed as extra input channels on their 8 x 8 grid).
Objective (DDPM, epsilon prediction, Stable Diffusion's "scaled_linear" betas from 0.00085 to 0.012 over 1000 steps):

    t ~ U{0..999},  eps ~ N(0, I),  z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    c' = 0 with probability p_uncond (classifier-free guidance; zeros = the generator's uncond context)
    L = mean_batch( w_t * mean_latent || eps_theta(z_t, t, c') - eps ||^2 ),  w_t = min(SNR_t, gamma) / SNR_t

with ``SNR_t = abar_t / (1 - abar_t)`` and ``gamma = --min-snr-gamma`` (5; Min-SNR weighting, Hang et al.
2023: it down-weights the many nearly-clean timesteps whose gradients conflict with the coarse ones, and
converges several times faster, which matters on a CPU budget; 0 = plain epsilon MSE).

An exponential moving average of the weights (decay ``--ema``, 0.995: an averaging window of ~200
steps, short enough for a run of ~1000-1500 CPU steps) is what gets saved. The output folder
is a :class:`mindeye_core.generators.UNetVariationGenerator` (``unet/``, ``vae/``, ``scheduler/`` with a
UniPC scheduler on the same betas, ``generator_config.json``), loadable with
``UNetVariationGenerator.from_pretrained`` or :func:`mindeye_core.demo_models.load_demo_generator`.

    python -m training.train_tiny_generator.py --clip assets/demo_models/tiny-clip \\
        --vae assets/demo_models/tiny-vae --out assets/demo_models/tiny-generator --fp16
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.common import (
    Clock,
    add_common_args,
    default_out,
    load_demo_split,
    lr_lambda,
    parse_with_config,
    setup_run,
    to_float_images,
    train_loop,
    write_json,
)

NAME = "tiny-generator"
# block types and in/out channels come from the arguments (unet_config)
DEFAULT_UNET_CFG: dict[str, Any] = dict(layers_per_block=1, block_out_channels=[64, 128], attention_head_dim=32,
                                        norm_num_groups=32)
DEFAULT_ATTN_LEVELS = (1,)
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, name=NAME, steps=2500, batch_size=32, lr=1e-3)
    ap.add_argument("--clip", type=Path, default=None, help="tiny CLIP folder (default $MINDEYE_CACHE/demo_models/tiny-clip)")
    ap.add_argument("--vae", type=Path, default=None, help="tiny VAE folder (default $MINDEYE_CACHE/demo_models/tiny-vae)")
    ap.add_argument("--channels", type=int, nargs="+", default=None, help="UNet block_out_channels")
    ap.add_argument("--attn-levels", type=int, nargs="*", default=list(DEFAULT_ATTN_LEVELS),
                    help="UNet levels (0 = full latent resolution) whose blocks have self- and cross-attention; "
                         "the middle block always has them. Default 1: only the 8 x 8 level, the tiny CLIP's patch "
                         "grid (attention at 16 x 16 made CPU steps 3.4x slower)")
    ap.add_argument("--token-grid", action=argparse.BooleanOptionalAction, default=True,
                    help="also feed the 64 patch tokens, laid out on their 8 x 8 grid, as extra UNet input "
                         "channels (UNetVariationGenerator token_grid; default on: it took the generated images' "
                         "category accuracy from 14.5 to 25.5 %%; --no-token-grid = cross-attention only)")
    ap.add_argument("--p-uncond", type=float, default=0.1, help="condition dropout probability (for CFG)")
    ap.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights (0 = no EMA)")
    ap.add_argument("--min-snr-gamma", type=float, default=5.0,
                    help="Min-SNR loss weight min(SNR, gamma) / SNR per timestep (0 = unweighted epsilon MSE)")
    ap.add_argument("--guidance", type=float, default=3.0, help="default CFG scale stored in the generator")
    ap.add_argument("--eval-n", type=int, default=100, help="test images generated for the evaluation (0 = skip)")
    ap.add_argument("--grid", type=Path, default=None, help="also write the ground truth / generated grid here")
    return ap


def unet_config(args: argparse.Namespace, latent_side: int, cross_dim: int, latent_channels: int = 4) -> dict[str, Any]:
    """UNet2DConditionModel kwargs for this run (block types from ``--attn-levels``, input channels
    ``latent_channels`` (+ ``cross_dim`` with ``--token-grid``))."""
    cfg = copy.deepcopy(DEFAULT_UNET_CFG)
    cfg["in_channels"] = latent_channels + (cross_dim if args.token_grid else 0)
    cfg["out_channels"] = latent_channels
    ch = [int(c) for c in args.channels] if args.channels else list(cfg["block_out_channels"])
    levels = sorted({int(i) for i in args.attn_levels})
    if any(i < 0 or i >= len(ch) for i in levels):
        raise ValueError(f"--attn-levels {levels}: levels must be in 0..{len(ch) - 1} for {len(ch)} UNet levels")
    cfg["block_out_channels"] = ch
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(len(ch))]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(len(ch)))]
    cfg["norm_num_groups"] = min(cfg["norm_num_groups"], min(ch))
    cfg["attention_head_dim"] = min(cfg["attention_head_dim"], min(ch))
    cfg["sample_size"] = int(latent_side)
    cfg["cross_attention_dim"] = int(cross_dim)
    return cfg


def loss_weight(abar_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR weights ``min(SNR, gamma) / SNR`` for epsilon prediction; ``abar_t``: ``(B,)`` -> ``(B,)``.

    ``SNR = abar / (1 - abar)``. ``gamma <= 0`` gives ones (plain epsilon MSE).
    """
    if gamma <= 0:
        return torch.ones_like(abar_t)
    snr = abar_t / (1 - abar_t)
    return snr.clamp(max=gamma) / snr


@torch.no_grad()
def encode_targets(clip_enc: Any, vae_enc: Any, images_u8: torch.Tensor, device: torch.device,
                   batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden tiny-CLIP tokens ``(N, T, D)`` (float16, CPU) and scaled VAE latents ``(N, C, h, w)`` (float32)."""
    conds, lats = [], []
    for i in range(0, images_u8.shape[0], batch):
        x = to_float_images(images_u8[i:i + batch]).to(device)
        conds.append(clip_enc.encode(x).half().cpu())
        lats.append(vae_enc.encode(x).float().cpu())
    return torch.cat(conds), torch.cat(lats)


def main(argv: list[str] | None = None) -> int:
    from diffusers import DDPMScheduler, UNet2DConditionModel, UniPCMultistepScheduler

    from mindeye_core.encoders import OpenClipEncoder, VaeLatentEncoder, load_open_clip_folder
    from mindeye_core.generators import UNetVariationGenerator, token_grid

    args = parse_with_config(build_parser(), argv)
    out = setup_run(args, NAME)
    dev = torch.device(args.device)
    clock = Clock(args.max_minutes)
    clip_dir = Path(args.clip) if args.clip else default_out("tiny-clip")
    vae_dir = Path(args.vae) if args.vae else default_out("tiny-vae")
    split = load_demo_split(args.world, max_train=args.max_train_images, progress=not args.no_progress)
    size = int(split.train_images.shape[1])
    clip_model, _ = load_open_clip_folder(clip_dir, device=dev)  # full model: the evaluation uses its text tower
    clip_enc = OpenClipEncoder(clip_model, target="hidden")
    vae_enc = VaeLatentEncoder.from_pretrained(vae_dir, image_size=size, torch_dtype=torch.float32).to(dev)
    images = torch.from_numpy(split.train_images)
    print(f"encoding {images.shape[0]} training images (tiny CLIP {clip_enc.target_shape}, VAE {vae_enc.target_shape})")
    conds, latents = encode_targets(clip_enc, vae_enc, images, dev)
    n_tokens, cross_dim = clip_enc.target_shape
    cfg = unet_config(args, latents.shape[-1], cross_dim, latents.shape[1])
    unet = UNet2DConditionModel(**cfg).to(dev)
    ema = copy.deepcopy(unet).eval().requires_grad_(False) if args.ema > 0 else None
    noise_sched = DDPMScheduler(**SCHEDULE)
    abar = noise_sched.alphas_cumprod.to(dev)
    n = latents.shape[0]
    bs = min(int(args.batch_size), n)
    print(f"tiny generator UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, {n} images, "
          f"batch {bs}, {args.steps} steps, latent std {latents.std():.3f}, device {dev}")
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, args.steps))
    data_rng = torch.Generator().manual_seed(args.seed + 4)
    unet.train()

    def step_fn(step: int) -> dict[str, float]:
        idx = torch.randperm(n, generator=data_rng)[:bs]
        z0 = latents[idx].to(dev)
        c = conds[idx].to(dev, torch.float32)
        keep = (torch.rand(bs, generator=data_rng) >= args.p_uncond).to(dev, torch.float32)
        c = c * keep.view(-1, 1, 1)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (bs,), generator=data_rng).to(dev)
        eps = torch.randn(z0.shape, generator=data_rng).to(dev)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        x_in = torch.cat([zt, token_grid(c, zt.shape[-1])], dim=1) if args.token_grid else zt
        pred = unet(x_in, t, encoder_hidden_states=c).sample
        per_sample = F.mse_loss(pred, eps, reduction="none").flatten(1).mean(1)  # (B,)
        loss = (per_sample * loss_weight(abar[t], args.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            d = min(args.ema, (1 + step) / (10 + step))  # EMA warm-up
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - d)
        return {"loss": float(loss.detach())}

    modules: dict[str, torch.nn.Module] = {"unet": unet}
    if ema is not None:
        modules["ema"] = ema
    summary = train_loop(args, step_fn=step_fn, modules=modules, optimizers={"opt": opt, "sched": sched},
                         clock=clock, data_rng=data_rng, desc="tiny-generator")
    final = (ema if ema is not None else unet).eval().cpu()
    vae = vae_enc.vae.cpu()
    unipc = UniPCMultistepScheduler(**{k: v for k, v in SCHEDULE.items()})
    gen = UNetVariationGenerator(copy.deepcopy(final).half() if args.fp16 else final,
                                 copy.deepcopy(vae).half() if args.fp16 else vae, unipc,
                                 n_tokens=n_tokens, image_size=size, default_steps=20,
                                 default_guidance=args.guidance, token_grid=args.token_grid)
    gen.save_pretrained(out)
    summary.update({"unet_cfg": cfg, "n_parameters": sum(p.numel() for p in final.parameters()),
                    "clip": str(clip_dir), "vae": str(vae_dir), "args": {k: str(v) for k, v in vars(args).items()}})
    if args.eval_n > 0:
        from training.evaluate_demo_models import evaluate_generator

        reloaded = UNetVariationGenerator.from_pretrained(out, torch_dtype=torch.float32).to(dev)
        summary["metrics"] = evaluate_generator(reloaded, clip_model, split, n=min(args.eval_n, len(split.test_captions)),
                                                grid_path=args.grid)
        print(f"metrics: {summary['metrics']}")
    write_json(out / "training_summary.json", summary)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
