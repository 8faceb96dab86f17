"""Why the final reconstructions' tiny-CLIP 2-way stays below the generator's ceiling: a reconstruction ablation.

    python -m training.recon_ablation --subject subj01 --n 100 --out docs/recon_ablation.md

On the first ``--n`` test trials of a subject built by ``mindeye build-demo`` (its shipped models and the
build's ``recon.npz``), the same generator is driven from different embeddings and settings, and each row
reports tiny-CLIP 2-way identification (final embedding, among the ``n`` trials), PixCorr and SSIM of the
images, plus the mean cosine between the embedding that drove the generator and the image's ground-truth
hidden tokens (all ``T x D`` values flattened):

- ground-truth hidden tokens, strength 0 (the ceiling) and strength 0.15 from the brain's blurry image;
- the prior sample the build picked, strength 0 and 0.15 (one candidate, the build's seeds);
- the backbone's tokens fed to the generator directly (no prior);
- the shipped setting (best of 4 at 0.15, 10 steps) as stored, and with 20 steps or best of 16.

The rows separate the three places the gap can come from: the brain -> embedding mapping (prior sample vs
ground truth), the blurry initialisation, and the sampling budget (steps, candidates).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mindeye_core.paths import ASSETS_DIR


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(len(a), -1).float(), b.reshape(len(b), -1).float()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def main(argv: Sequence[str] | None = None) -> int:
    from mindeye_core.data import open_dataset
    from mindeye_core.demo_models import load_demo_clip
    from mindeye_core.recon import Reconstructor, demo_spec

    from training.build_demo_assets import _float, _to_uint8, image_metrics, regenerate_batched
    from training.data import resolve_dataset

    from mindeye_core.paths import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="subj01")
    ap.add_argument("--n", type=int, default=100, help="first N test trials (2-way is among these N)")
    ap.add_argument("--work", type=Path, default=None, help="build work folder (default $MINDEYE_CACHE/build_demo)")
    ap.add_argument("--brain", type=Path, default=ASSETS_DIR / "demo_brain")
    ap.add_argument("--steps", type=int, default=10, help="the build's generator steps")
    ap.add_argument("--skip-expensive", action="store_true", help="leave out the 20-step and best-of-16 rows")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here (and a .json beside it)")
    args = ap.parse_args(argv)
    if args.n < 2:
        raise SystemExit("--n must be >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = (args.work or cache_dir() / "build_demo") / args.subject
    npz = work / "recon.npz"
    if not npz.is_file():
        raise SystemExit(f"{npz} is missing: run `mindeye build-demo --subjects {args.subject}` first")
    rec_arrays = np.load(npz)
    n = min(args.n, len(rec_arrays["seeds"]))
    ds = open_dataset(resolve_dataset("demo", progress=False))
    voxels, rows = ds.subject(args.subject).averaged("test")
    if not np.array_equal(rows[:n], rec_arrays["image_index"][:n]):
        raise SystemExit(f"{npz} does not match the world's test rows (rebuilt world?)")
    voxels = torch.from_numpy(voxels[:n].astype(np.float16).astype(np.float32))
    seeds = [int(s) for s in rec_arrays["seeds"][:n]]
    gt = np.asarray(ds.images(rows[:n]))
    hidden, final = load_demo_clip("hidden"), load_demo_clip("final")
    with torch.no_grad():
        gt_hidden = hidden.encode_batches(_float(gt), batch_size=100)
        gt_final = final.encode_batches(_float(gt), batch_size=100)
    brain = args.brain / args.subject
    rec = Reconstructor.from_spec(demo_spec(brain / "highlevel", brain / "lowlevel", steps=args.steps, n_samples=4))
    blurry = torch.from_numpy(rec_arrays["blurry"][:n]).permute(0, 3, 1, 2)
    tokens = rec.tokens
    picked = torch.from_numpy(rec_arrays["prior"][:n]).reshape(n, 1, *tokens)
    picked_ids = torch.from_numpy(rec_arrays["picked"][:n]).long()[:, None]
    backbone = torch.from_numpy(rec_arrays["backbone"][:n]).reshape(n, 1, *tokens)
    rows_out: list[dict[str, Any]] = []

    def add(name: str, images: np.ndarray, emb: torch.Tensor | None) -> None:
        m = image_metrics(images, gt, gt_final, final)
        rows_out.append({"setting": name, **m, "cos_to_gt": None if emb is None else round(_cos(emb, gt_hidden), 4)})
        print(rows_out[-1], flush=True)

    def gen(emb: torch.Tensor, strength: float, ids: torch.Tensor | None = None) -> np.ndarray:
        return regenerate_batched(rec, emb, blurry if strength > 0 else None, seeds, strength, batch=16, sample_ids=ids)

    gt_tok = gt_hidden.reshape(n, 1, *tokens)
    add("ground-truth tokens, strength 0 (ceiling)", gen(gt_tok, 0.0), gt_tok)
    add("ground-truth tokens, strength 0.15 from the brain's blurry", gen(gt_tok, 0.15), gt_tok)
    add("picked prior sample, strength 0", gen(picked, 0.0, picked_ids), picked)
    add("picked prior sample, strength 0.15 (= shipped final)", gen(picked, 0.15, picked_ids), picked)
    add("backbone tokens, no prior, strength 0.15", gen(backbone, 0.15), backbone)
    add("shipped: best of 4, 0.15, 10 steps (stored)", rec_arrays["finals_0.15"][:n], None)
    if not args.skip_expensive:
        for name, spec in (("best of 4, 0.15, 20 steps", dict(steps=2 * args.steps, n_samples=4)),
                           ("best of 16, 0.15, 10 steps", dict(steps=args.steps, n_samples=16))):
            r = Reconstructor.from_spec(demo_spec(brain / "highlevel", brain / "lowlevel", **spec))
            out = r.reconstruct_dataset(voxels, seeds, batch_size=1, strengths=[0.15], progress=True,
                                        return_candidates=False)
            add(name, _to_uint8(out.finals[0.15]), None)
    lines = [f"Reconstruction ablation, demo world {args.subject}, first {n} test trials (2-way among these {n}; "
             "cosine = mean cosine of the generator's input tokens to the image's ground-truth hidden tokens)", "",
             "| generator input / setting | PixCorr | SSIM | tiny-CLIP 2-way | cosine to ground truth |",
             "|---|---:|---:|---:|---:|"]
    for r in rows_out:
        cos = "—" if r["cos_to_gt"] is None else f"{r['cos_to_gt']:.3f}"
        lines.append(f"| {r['setting']} | {r['pixcorr']:.3f} | {r['ssim']:.3f} | {100 * r['tinyclip_2way']:.1f} % | {cos} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"subject": args.subject, "n": n, "rows": rows_out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
