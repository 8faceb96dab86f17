"""Benchmark the evaluation suite on CPU (or --device cuda): prints a Markdown table.

* 1000 image pairs (256 px, uint8): PixCorr, SSIM (true 2-D and paper-parity), two-way identification with
  the tiny random feature networks (the metric path that runs offline), correlation distances.
* Retrieval protocol (300 x 30 draws + full-set ranks, both directions) over 10^4 and 10^5 embeddings of
  dimension 768.

    python benchmarks/bench_metrics.py            # full size (run once: the 10^5 retrieval takes minutes on CPU)
    python benchmarks/bench_metrics.py --quick    # smoke run: 100 pairs, 10^3 / 4x10^3 embeddings
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any, Callable

import numpy as np
import torch

from mindeye_core.metrics import pixcorr_per_image, ssim_per_image
from mindeye_core.metrics.evaluate import evaluate_reconstructions
from mindeye_core.metrics.features import load_extractors
from mindeye_core.metrics.retrieval import retrieval_metrics


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((n, size // 16, size // 16, 3), dtype=np.float32)
    up = np.repeat(np.repeat(base, 16, axis=1), 16, axis=2)
    return (np.clip(up + 0.1 * rng.standard_normal(up.shape, dtype=np.float32), 0, 1) * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pairs", type=int, default=None)
    p.add_argument("--sizes", type=int, nargs="*", default=None, help="retrieval set sizes")
    args = p.parse_args(argv)
    n_pairs = args.pairs or (100 if args.quick else 1000)
    sizes = args.sizes or ([1000, 4000] if args.quick else [10_000, 100_000])
    dev = args.device

    gts = _images(n_pairs, 256, 0)
    recons = np.clip(gts.astype(np.int16) + np.random.default_rng(1).integers(-100, 100, gts.shape), 0, 255).astype(np.uint8)
    rows: list[tuple[str, str, float, str]] = []

    t, v = _timed(lambda: pixcorr_per_image(recons, gts, device=dev))
    rows.append(("PixCorr (425 px)", f"{n_pairs} pairs", t, f"{v.mean():.3f}"))
    t, v = _timed(lambda: ssim_per_image(recons, gts, device=dev))
    rows.append(("SSIM, true 2-D (425 px)", f"{n_pairs} pairs", t, f"{v.mean():.3f}"))
    t, v = _timed(lambda: ssim_per_image(recons, gts, paper_parity=True, device=dev))
    rows.append(("SSIM, paper parity (columns)", f"{n_pairs} pairs", t, f"{v.mean():.3f}"))

    def skimage_loop() -> float:
        from skimage.color import rgb2gray
        from skimage.metrics import structural_similarity

        from mindeye_core.metrics.lowlevel import ImageBatch, lowlevel_preprocess

        rb, gb = ImageBatch(recons), ImageBatch(gts)
        vals = []
        for i in range(len(rb)):
            a = lowlevel_preprocess(rb.get(i, i + 1, torch.float64))[0].permute(1, 2, 0).numpy()
            b = lowlevel_preprocess(gb.get(i, i + 1, torch.float64))[0].permute(1, 2, 0).numpy()
            vals.append(structural_similarity(rgb2gray(a), rgb2gray(b), gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=1.0))
        return float(np.mean(vals))

    t, v = _timed(skimage_loop)
    rows.append(("SSIM, skimage loop (reference)", f"{n_pairs} pairs", t, f"{v:.3f}"))

    t_build, (extractors, _) = _timed(lambda: load_extractors(None, "tiny", device=dev))
    rows.append(("build tiny feature nets (5)", "-", t_build, ""))
    for metrics in (("alexnet2", "alexnet5"), ("inception",), ("clip",), ("effnet",), ("swav",)):
        t, res = _timed(lambda m=metrics: evaluate_reconstructions(recons, gts, extractors=extractors, metrics=m, device=dev))
        rows.append((f"features + {'/'.join(metrics)} (tiny nets)", f"{n_pairs} pairs", t,
                     ", ".join(f"{k}={v:.3f}" for k, v in res.metrics.items())))

    rng = np.random.default_rng(2)
    for n in sizes:
        img = rng.standard_normal((n, 768), dtype=np.float32)
        brain = img + 10.0 * rng.standard_normal((n, 768), dtype=np.float32)
        t, res = _timed(lambda: retrieval_metrics(brain, img, device=dev))
        rows.append(("retrieval: 300x30 + full-set ranks, both directions", f"N={n:,}, D=768", t,
                     f"b2i={res.brain_to_image:.3f} i2b={res.image_to_brain:.3f} full b2i={res.full_brain_to_image:.4f}"))
        del img, brain

    threads = torch.get_num_threads()
    print(f"Device: {dev}; torch {torch.__version__}; {threads} CPU thread(s); {platform.processor() or platform.machine()}\n")
    print("| what | size | seconds | value |")
    print("|---|---|---:|---|")
    for what, size, secs, val in rows:
        print(f"| {what} | {size} | {secs:.2f} | {val} |")


if __name__ == "__main__":
    main()
