"""Seconds per generated image of the *shipped* demo generator (``assets/demo_models/tiny-generator``).

``benchmarks/bench_generators.py`` times random-weight configs; this script times the trained model
the app's live slider uses, conditioned on tiny-CLIP hidden tokens of demo images (65 x 128), with
UniPC and classifier-free guidance (so every step runs the UNet on a doubled batch). Prints a
Markdown table.

    python benchmarks/bench_demo_generator.py                 # 20 steps, 1 and 2 CPU threads
    python benchmarks/bench_demo_generator.py --quick         # smoke run (2 steps, 1 thread)
    python benchmarks/bench_demo_generator.py --models DIR --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_generators import time_one  # same timing loop (run as a script: benchmarks/ is on sys.path)
from mindeye_core.demo_models import load_demo_generator


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 thread, one setting")
    ap.add_argument("--models", default=None, help="demo models folder (default: shipped assets)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    gen = load_demo_generator(args.models, device=args.device)
    steps = 2 if args.quick else args.steps
    threads = [1] if args.quick else args.threads
    settings = [(1, 1, 0.0)] if args.quick else [(1, 1, 0.0), (1, 1, 0.15), (1, 8, 0.0), (8, 1, 0.0)]
    repeats = 1 if args.quick else args.repeats
    n_unet = sum(p.numel() for p in gen.unet.parameters()) / 1e6
    print(f"Shipped demo generator ({n_unet:.2f} M UNet parameters, {gen.image_size} px, UniPC, "
          f"guidance {gen.default_guidance}, {steps} steps, device {args.device})\n")
    print("| threads | inputs x samples | strength | UNet steps run | s / image |")
    print("|---:|---|---:|---:|---:|")
    for th in threads:
        torch.set_num_threads(th)
        for batch, n, s in settings:
            sec = time_one(gen, batch, n, steps, s, repeats, args.device)
            run = steps if s == 0 else round((1 - s) * steps)
            print(f"| {th} | {batch} x {n} | {s} | {run} | {sec:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
