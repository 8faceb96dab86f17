"""Train the tiny demo-world VAE (diffusers ``AutoencoderKL``): 64 x 64 x 3 images <-> 16 x 16 x 4 latents.

Architecture (:data:`DEFAULT_VAE_CFG`): 3 encoder / decoder levels with channels (16, 32, 64), one
ResNet block per level, 4 latent channels, group norm with 8 groups -> spatial factor 4. The
full-resolution levels are kept narrow because they dominate the CPU cost (64 x 64 convolutions and
group norms); see docs/demo_models.md for the measured cost and quality of both widths.

Loss per image (Stable Diffusion's autoencoder convention, without the perceptual / GAN terms):

    x_hat = D(z),  z ~ q(z | 2x - 1) = N(mu, sigma^2)
    L = mean_pixels(|x_hat - x| + (x_hat - x)^2) + kl_weight * sum_latent KL(q || N(0, I)) / n_pixels

with ``kl_weight = 1e-4`` (Stable Diffusion's 1e-6 is relative to a summed, perceptual-augmented
reconstruction loss; without those terms a slightly stronger KL keeps the latents well scaled).

After training the latent scaling factor is set to ``1 / std(mode latents)`` over (up to 2000)
training images and stored in the VAE config (``scaling_factor``), so scaled latents have unit
variance, as Stable Diffusion's 0.18215 does for its VAE. Test-image PSNR goes to ``OUT/metrics.json``.

    python -m training.train_tiny_vae.py --out assets/demo_models/tiny-vae --fp16
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import torch

from training.common import (
    Clock,
    add_common_args,
    load_demo_split,
    lr_lambda,
    parse_with_config,
    setup_run,
    to_float_images,
    train_loop,
    write_json,
)

NAME = "tiny-vae"
DEFAULT_VAE_CFG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 64], layers_per_block=1,
    latent_channels=4, norm_num_groups=8, sample_size=64,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, name=NAME, steps=1500, batch_size=32, lr=1e-3)
    ap.add_argument("--channels", type=int, nargs="+", default=None, help="block_out_channels (default 16 32 64)")
    ap.add_argument("--latent-channels", type=int, default=4)
    ap.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the KL (summed per image, / pixels)")
    return ap


def vae_config(args: argparse.Namespace, image_size: int) -> dict[str, Any]:
    cfg = copy.deepcopy(DEFAULT_VAE_CFG)
    if args.channels:
        n = len(args.channels)
        cfg["block_out_channels"] = [int(c) for c in args.channels]
        cfg["down_block_types"] = ["DownEncoderBlock2D"] * n
        cfg["up_block_types"] = ["UpDecoderBlock2D"] * n
        cfg["norm_num_groups"] = min(cfg["norm_num_groups"], min(cfg["block_out_channels"]))
    cfg["latent_channels"] = int(args.latent_channels)
    cfg["sample_size"] = int(image_size)
    return cfg


@torch.no_grad()
def latent_std(vae: Any, images: torch.Tensor, batch: int = 200) -> float:
    """Standard deviation of the posterior-mode latents of ``images`` ``(N, 3, H, W)`` in [0, 1]."""
    dev = next(vae.parameters()).device
    zs = [vae.encode(2 * images[i:i + batch].to(dev) - 1).latent_dist.mode().float().cpu()
          for i in range(0, images.shape[0], batch)]
    return float(torch.cat(zs).std())


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKL

    args = parse_with_config(build_parser(), argv)
    out = setup_run(args, NAME)
    dev = torch.device(args.device)
    clock = Clock(args.max_minutes)
    split = load_demo_split(args.world, max_train=args.max_train_images, progress=not args.no_progress)
    cfg = vae_config(args, int(split.train_images.shape[1]))
    vae = AutoencoderKL(**cfg).to(dev)
    images = torch.from_numpy(split.train_images)
    n = images.shape[0]
    bs = min(int(args.batch_size), n)
    print(f"tiny VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, {n} training images, "
          f"batch {bs}, {args.steps} steps, device {dev}")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, args.steps))
    data_rng = torch.Generator().manual_seed(args.seed + 2)
    noise_rng = torch.Generator().manual_seed(args.seed + 3)
    vae.train()

    def step_fn(step: int) -> dict[str, float]:
        idx = torch.randperm(n, generator=data_rng)[:bs]
        x = to_float_images(images[idx]).to(dev)
        post = vae.encode(2 * x - 1).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=noise_rng).to(dev)
        rec = (vae.decode(z).sample + 1) / 2
        l1 = (rec - x).abs().mean()
        l2 = ((rec - x) ** 2).mean()
        kl = post.kl().mean() / x[0].numel()  # summed KL per image / pixels per image
        loss = l1 + l2 + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        return {"l1": float(l1.detach()), "kl": float(kl.detach())}

    summary = train_loop(args, step_fn=step_fn, modules={"vae": vae}, optimizers={"opt": opt, "sched": sched},
                         clock=clock, data_rng=data_rng, desc="tiny-vae")
    vae.eval()
    std = latent_std(vae, to_float_images(split.train_images[:2000]))
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.cpu()
    (copy.deepcopy(vae).half() if args.fp16 else vae).save_pretrained(out)
    from training.evaluate_demo_models import evaluate_vae

    reloaded = AutoencoderKL.from_pretrained(str(out)).float().eval()
    metrics = evaluate_vae(reloaded, split)
    summary.update({"metrics": metrics, "vae_cfg": cfg, "scaling_factor": 1.0 / std,
                    "n_parameters": sum(p.numel() for p in vae.parameters()),
                    "args": {k: str(v) for k, v in vars(args).items()}})
    write_json(out / "training_summary.json", summary)
    print(f"saved {out}; metrics: {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
