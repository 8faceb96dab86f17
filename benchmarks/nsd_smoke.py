"""The NSD high-level configuration end to end on fake NSD-layout shards: step time and peak memory.

    python benchmarks/nsd_smoke.py                       # subj01's 15724 voxels, random CLIP ViT-L/14, 257 x 768
    python benchmarks/nsd_smoke.py --config training/configs/nsd_1x768.yaml
    python benchmarks/nsd_smoke.py --quick               # tiny voxel count and a 2-layer CLIP: plumbing only

What runs is exactly what a user runs on NSD, minus the download: fake shards in the release layout
(``tests/fake_nsd.py``: 256 x 256 JPEGs, three repetition rows per image, some padded) with the subject's full
voxel count -> ``convert_nsd`` -> the canonical dataset -> ``training.train_highlevel.train`` with
``training/configs/nsd_257x768.yaml`` (model, loss, optimizer, schedule, gradient checkpointing as shipped) and
a CLIP ViT-L/14 vision tower with random weights built from its published configuration (no download), whose
hidden tokens are the targets. Only the data size, the epoch count and the device are changed.

Prints a Markdown table: parameters, batch, seconds per optimizer step (from the second epoch's samples/s in the
run's ``log.csv``, i.e. without the first step's warm-up), target-embedding time, and the process's peak
resident memory (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_nsd import make_fake_nsd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# openai/clip-vit-large-patch14's vision tower (config.json of the release): 24 layers, width 1024, patch 14, 224 px
VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
TINY_VIT = dict(VIT_L14, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def random_clip(folder: Path, quick: bool) -> Path:
    """Save a random-weight ``CLIPVisionModelWithProjection`` (ViT-L/14 shapes unless ``quick``) to ``folder``."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**(TINY_VIT if quick else VIT_L14))).save_pretrained(folder)
    return folder


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "training/configs/nsd_257x768.yaml")
    ap.add_argument("--n-train", type=int, default=64, help="training images in the fake shards")
    ap.add_argument("--n-test", type=int, default=16, help="test images in the fake shards")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the config's (32)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--quick", action="store_true", help="600 voxels, backbone width 64, a 1-layer prior and a 2-layer CLIP (plumbing check)")
    ap.add_argument("--work", type=Path, default=None, help="keep the shards, dataset and run here")
    args = ap.parse_args(argv)
    if min(args.n_train, args.n_test, args.epochs) < 1 or args.batch_size < 0:
        raise SystemExit("--n-train, --n-test and --epochs must be >= 1, --batch-size >= 0")

    import torch

    from mindeye_core.data.nsd import NSD_VOXELS, convert_nsd
    from training.engine import load_config_file
    from training.train_highlevel import HighLevelConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="nsd_smoke_") if args.work is None else None
    work = Path(tmp.name) if tmp is not None else args.work
    work.mkdir(parents=True, exist_ok=True)
    n_vox = 600 if args.quick else NSD_VOXELS[1]
    t0 = time.perf_counter()
    make_fake_nsd(work / "raw", subjects=(1,), n_train=args.n_train, n_val=0, n_test=args.n_test, n_vox=n_vox,
                  image_size=256, seed=0)
    dataset = convert_nsd(work / "raw", work / "canonical", subjects=(1,), n_voxels={1: n_vox}, check_totals=False,
                          progress=False, overwrite=True)
    t_data = time.perf_counter() - t0
    clip = random_clip(work / "clip-vit-l14-random", args.quick)
    values = load_config_file(HighLevelConfig, args.config)
    values.update(dataset=str(dataset), subject="subj01", encoder_source=str(clip), epochs=args.epochs, device="cpu",
                  precision="fp32", threads=args.threads, ckpt_every=0, eval_every=1, progress=False,
                  out=str(work / "run"))
    if args.batch_size:
        values["batch_size"] = args.batch_size
    if args.quick:  # the same pipeline on a backbone of width 64 (the full one needs ~16 GB of RAM)
        values["model_overrides"] = {**values.get("model_overrides", {}), "hidden": 64, "prior_depth": 1}
    cfg = HighLevelConfig(**values)
    t0 = time.perf_counter()
    summary = train(cfg)
    t_train = time.perf_counter() - t0
    rows = list(csv.DictReader((work / "run" / "log.csv").open()))
    sps = float(rows[-1]["samples_per_s"])
    n_params = sum(p.numel() for p in __import__("mindeye_core.models", fromlist=["MindEyeHighLevel"])
                   .MindEyeHighLevel.from_pretrained(work / "run" / "model").parameters())
    print(f"config {args.config.name}: {n_vox} voxels, {args.n_train} training / {args.n_test} test images, "
          f"{args.epochs} epochs, torch threads {torch.get_num_threads()}, CLIP {'2-layer test' if args.quick else 'ViT-L/14'} "
          f"(random weights)\n")
    print("| model | params (M) | batch | s / step (last epoch) | samples / s | data (s) | train incl. targets (s) | peak RSS (GiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {cfg.model} | {n_params / 1e6:.1f} | {cfg.batch_size} | {cfg.batch_size / sps:.2f} | {sps:.2f} | "
          f"{t_data:.0f} | {t_train:.0f} | {peak_rss_gib():.1f} |")
    print(f"\nfinal step {summary['final_step']}, finished {summary.get('finished')}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
