"""NSD conversion throughput on fake shards in the release layout; prints a Markdown table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_nsd_convert.py            # 2000 samples, 1000 and 15724 voxels
    OMP_NUM_THREADS=1 python benchmarks/bench_nsd_convert.py --quick    # 200 samples, smoke run

A sample is one image with 3 repetition rows (as in MindEye's webdataset), about 25% of them padded
(fewer real repetitions). Shard generation is not timed; conversion (tar streaming, JPEG decode,
validation, HDF5 writes, manifest) is. Real-size images are 256 x 256 JPEGs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_nsd import make_fake_nsd  # noqa: E402

from mindeye_core.data import open_dataset  # noqa: E402
from mindeye_core.data.nsd import convert_nsd  # noqa: E402


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def run(n_samples: int, n_vox: int, image_size: int, workdir: Path) -> dict[str, float]:
    n_test = max(1, n_samples // 10)
    n_val = max(1, n_samples // 30)
    n_train = n_samples - n_test - n_val
    raw = workdir / f"raw_{n_vox}"
    out = workdir / f"ds_{n_vox}"
    make_fake_nsd(raw, subjects=(1,), n_train=n_train, n_val=n_val, n_test=n_test, n_vox=n_vox, image_size=image_size, seed=0)
    t0 = time.perf_counter()
    convert_nsd(raw, out, (1,), n_voxels={1: n_vox}, progress=False)
    dt = time.perf_counter() - t0
    ds = open_dataset(out)
    n_trials = ds.subject("subj01").n_trials
    result = {
        "samples": n_samples,
        "voxels": n_vox,
        "trials": n_trials,
        "seconds": dt,
        "samples_per_s": n_samples / dt,
        "trials_per_s": n_trials / dt,
        "raw_mb": _dir_mb(raw),
        "out_mb": _dir_mb(out),
    }
    ds.close()
    shutil.rmtree(raw)
    shutil.rmtree(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 samples: a smoke run")
    parser.add_argument("--samples", type=int, default=None, help="samples (unique images) per run (default 2000)")
    parser.add_argument("--voxels", type=int, nargs="+", default=[1000, 15724])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    n = args.samples or (200 if args.quick else 2000)
    work = Path(tempfile.mkdtemp(prefix="bench_nsd_", dir=args.workdir))
    try:
        rows = [run(n, v, args.image_size, work) for v in args.voxels]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"NSD conversion throughput (fake shards, {args.image_size}x{args.image_size} JPEGs, float16 betas, 1 subject)\n")
    print("| samples | voxels | trials | time (s) | samples/s | trials/s | shards (MB) | dataset (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['samples']} | {r['voxels']} | {r['trials']} | {r['seconds']:.2f} | {r['samples_per_s']:.0f} "
            f"| {r['trials_per_s']:.0f} | {r['raw_mb']:.1f} | {r['out_mb']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
