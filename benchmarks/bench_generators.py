"""Seconds per generated image for the embedding-conditioned UNet generator (random weights).

Times :class:`mindeye_core.generators.UNetVariationGenerator` -- the loop shared by the demo
generator and the Versatile Diffusion adapter -- at 20 UniPC steps with classifier-free guidance
(guidance 3.5, so every step runs the UNet on a doubled batch), for:

- ``demo-s`` / ``demo-m``: demo-world sized models, 64 x 64 px images, 16 x 16 x 4 latents
  (VAE factor 4), conditioned on 17 tiny-CLIP tokens (what the app's live slider depends on);
- ``vd``: Versatile Diffusion's image-UNet / SD VAE architecture (~860 M UNet parameters, 512 px,
  257 x 768 context), only with ``--vd`` (meant for a GPU; hours on a CPU).

Weights are random: sampling cost does not depend on their values. Prints a Markdown table.

    python benchmarks/bench_generators.py            # CPU, demo configs
    python benchmarks/bench_generators.py --quick    # smoke run (2 steps, one config)
    python benchmarks/bench_generators.py --vd --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from mindeye_core.generators import UNetVariationGenerator


@dataclass(frozen=True)
class Config:
    name: str
    unet: dict
    vae: dict
    n_tokens: int


DEMO_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                latent_channels=4, norm_num_groups=16, sample_size=64)

CONFIGS = {
    "demo-s": Config("demo-s", dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(64, 128),
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=128, attention_head_dim=32, norm_num_groups=32),
                     DEMO_VAE, 17),
    "demo-m": Config("demo-m", dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                                    block_out_channels=(64, 128, 256),
                                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=256, attention_head_dim=32, norm_num_groups=32),
                     DEMO_VAE, 17),
    # Versatile Diffusion image_unet (= SD v1 UNet with 768-wide image context) + SD v1 VAE
    "vd": Config("vd", dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
                 dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                      layers_per_block=2, latent_channels=4, sample_size=512), 257),
}


def build(cfg: Config, device: str, dtype: torch.dtype) -> UNetVariationGenerator:
    from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg.unet)
    vae = AutoencoderKL(**cfg.vae)
    sched = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return UNetVariationGenerator(unet, vae, sched, n_tokens=cfg.n_tokens).to(device=device, dtype=dtype)


def n_params(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def time_one(gen: UNetVariationGenerator, batch: int, n_samples: int, steps: int, strength: float,
             repeats: int, device: str) -> float:
    emb = torch.randn(batch, gen.n_tokens, gen.embed_dim)
    init = torch.rand(batch, 3, gen.image_size, gen.image_size) if strength > 0 else None
    gen.generate(emb, init_images=init, strength=strength, n_samples=n_samples, steps=min(steps, 2))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen.generate(emb, init_images=init, strength=strength, n_samples=n_samples, steps=steps, seed=1)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best / (batch * n_samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: demo-s, 2 steps, one setting")
    ap.add_argument("--vd", action="store_true", help="also time the Versatile Diffusion-sized model")
    ap.add_argument("--configs", nargs="*", default=None, choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    names = args.configs or (["demo-s"] if args.quick else ["demo-s", "demo-m"] + (["vd"] if args.vd else []))
    steps = 2 if args.quick else args.steps
    settings = [(1, 1, 0.0)] if args.quick else [(1, 1, 0.0), (1, 1, 0.15), (1, 8, 0.0), (8, 1, 0.0)]
    settings_vd = [(1, 1, 0.0), (1, 16, 0.15)]  # MindEye: 16 samples per brain input, strength 0.15
    repeats = 1 if args.quick else args.repeats

    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    print(f"Generator sampling cost ({dev_name}, {args.dtype}, UniPC, guidance 3.5, {steps} steps)\n")
    print("| model | UNet params (M) | VAE params (M) | image px | latents | inputs x samples | strength "
          "| UNet steps run | s / image |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|")
    for name in names:
        cfg = CONFIGS[name]
        gen = build(cfg, args.device, dtype)
        c, h, w = gen.latent_shape
        for batch, n, s in (settings_vd if name == "vd" and not args.quick else settings):
            sec = time_one(gen, batch, n, steps, s, repeats, args.device)
            run = round((1 - s) * steps)
            print(f"| {name} | {n_params(gen.unet):.1f} | {n_params(gen.vae):.1f} | {gen.image_size} | {h}x{w}x{c} "
                  f"| {batch} x {n} | {s} | {run} | {sec:.3f} |", flush=True)
        del gen
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
