"""Benchmark: demo-world generation throughput, and (with --ridge) how decodable the world is for ridge.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_world.py --quick          # small world only, seconds
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_world.py                  # small + default world
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_world.py --ridge          # + ridge identification table

Prints Markdown tables. Generation: wall time, images/s and trials/s (all subjects), disk size.
Ridge (``mindeye_core.models.ridge.RidgeBaseline``, alpha by 5-fold CV grouped by image): voxels of the
training trials -> (a) the stimulus labels (category / colour / position multi-hot + background one-hot)
or (b) 8x8x3 downsampled pixels; evaluated on the shared test images, betas averaged over the 3
repetitions or single trials (the first presentation), by brain -> image top-1 among 300 candidates (30
draws, the paper's protocol), among all test images, and two-way identification. Targets are z-scored with
training statistics before the cosine/correlation comparisons.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mindeye_core.data import open_dataset  # noqa: E402
from mindeye_core.data.demo import BACKGROUNDS, DemoWorldConfig, generate_demo_world, load_demo_labels  # noqa: E402


def _dir_size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def bench_generation(configs: list[tuple[str, DemoWorldConfig]], workdir: Path) -> tuple[list[str], dict[str, Path]]:
    rows = [
        "| world | images | subjects | voxels | trials | stimuli s | total s | images/s | trials/s | disk MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    roots: dict[str, Path] = {}
    for name, cfg in configs:
        root = workdir / name
        t0 = time.perf_counter()
        generate_demo_world(root, cfg, progress=False, overwrite=True)
        dt = time.perf_counter() - t0
        ds = open_dataset(root)
        stim = ds.manifest["metadata"]["timing_s"]["stimuli"]
        trials = sum(s["n_trials"] for s in ds.manifest["subjects"].values())
        rows.append(
            f"| {name} | {ds.n_images} | {len(ds.subjects)} | {'/'.join(str(v) for v in cfg.voxels)} | {trials} | "
            f"{stim:.1f} | {dt:.1f} | {ds.n_images / dt:.0f} | {trials / dt:.0f} | {_dir_size_mb(root):.0f} |"
        )
        roots[name] = root
        ds.close()
    return rows, roots


def _targets(root: Path, rows: np.ndarray, kind: str) -> np.ndarray:
    if kind == "labels":
        lab = load_demo_labels(root).subset(rows)
        bg = np.eye(len(BACKGROUNDS), dtype=np.float32)[lab.background]
        return np.concatenate([lab.presence("category"), lab.presence("colour"), lab.presence("position"), bg], 1)
    ds = open_dataset(root)
    img = ds.images(rows).astype(np.float32) / 255
    ds.close()
    n, h, w, _ = img.shape
    return img.reshape(n, 8, h // 8, 8, w // 8, 3).mean((2, 4)).reshape(n, -1)


def bench_ridge(root: Path, subjects: list[str] | None) -> list[str]:
    from mindeye_core.metrics.identification import two_way_identification
    from mindeye_core.metrics.retrieval import retrieval_metrics
    from mindeye_core.models.ridge import RidgeBaseline

    ds = open_dataset(root)
    rows_out = [
        "| subject | target | alpha | test betas | top-1 among 300 (brain->image) | top-1 among all | two-way | chance (300) |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for name in subjects or ds.subjects:
        s = ds.subject(name)
        train = s.trials("train")
        x_train, img_train = s.betas(train), s.image_index[train]
        x_avg, rows = s.averaged("test")
        test = s.trials("test")
        first = test[s.repetition[test] == 0]
        first = first[np.argsort(s.image_index[first])]
        x_single = s.betas(first)
        for kind in ("labels", "pixels"):
            y_train = _targets(root, img_train, kind)
            y_test = _targets(root, rows, kind)
            mu, sd = y_train.mean(0), y_train.std(0) + 1e-6
            t0 = time.perf_counter()
            ridge = RidgeBaseline(alphas=(1e1, 1e2, 1e3, 1e4, 1e5), cv=5).fit(x_train, y_train, groups=img_train)
            fit_s = time.perf_counter() - t0
            for label, x in (("3-trial average", x_avg), ("single trial", x_single)):
                pred = (np.asarray(ridge.predict(x)) - mu) / sd
                true = (y_test - mu) / sd
                r = retrieval_metrics(pred, true)
                two = two_way_identification(true, pred)
                rows_out.append(
                    f"| {name} | {kind} | {ridge.alpha_:g} | {label} | {100 * r.brain_to_image:.1f} % | "
                    f"{100 * r.full_brain_to_image:.1f} % (of {rows.size}) | {100 * two:.1f} % | {100 / min(300, rows.size):.2f} % |"
                )
            print(f"  ridge {name} {kind}: fit {fit_s:.1f} s", file=sys.stderr)
    ds.close()
    return rows_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small world only")
    p.add_argument("--ridge", action="store_true", help="also run ridge identification on the largest world generated")
    p.add_argument("--subjects", nargs="*", default=None, help="subjects for --ridge (default: all)")
    p.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temporary folder, deleted)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    configs = [("small", DemoWorldConfig.small(seed=args.seed))]
    if not args.quick:
        configs.append(("default", DemoWorldConfig(seed=args.seed)))
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="bench_demo_")
        workdir = Path(tmp)
    try:
        rows, roots = bench_generation(configs, workdir)
        print("## Demo-world generation\n")
        print("\n".join(rows))
        if args.ridge:
            name = configs[-1][0]
            print(f"\n## Ridge identification on the {name} world\n")
            print("\n".join(bench_ridge(roots[name], args.subjects)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
