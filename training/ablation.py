"""Paper Table 4 (loss ablation) and Table 8 (single trial vs 3-trial average) on one demo subject.

    python -m training.ablation --subject subj01 --out docs/ablation            # trains the variants
    python -m training.ablation --subject subj01 --main RUN_DIR --single-trial-only

Variants of ``training/configs/demo.yaml`` (same data, seed and schedule): BiMixCo -> SoftCLIP (MindEye),
SoftCLIP only, no prior (the prior loss term removed), and MSE on the projector instead of a contrastive loss.
Each row reports retrieval top-1 among 300 in both named directions on the 3-trial averages. Table 8 shape:
the MindEye model's retrieval on the 3-trial averages and on single trials (each test image's r-th
presentation, r = 1..3, averaged over r). Reconstruction columns are not part of these tables here (each
variant would need its own reconstruction run); the bundle's metrics cover the main model.
Writes ``OUT/table4.md``, ``OUT/table8.md`` and ``OUT/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

VARIANTS: dict[str, dict[str, Any]] = {
    "BiMixCo -> SoftCLIP (MindEye)": {},
    "SoftCLIP only": {"loss": "softclip"},
    "No prior": {"use_prior": False},
    "MSE on the projector": {"loss": "mse"},
}


def single_trial_retrieval(model_dir: Path, dataset: Any, subject: str, encoder: Any, seed: int = 0) -> dict[str, Any]:
    """Retrieval of a trained model on single test trials: one 600-sample set per repetition, averaged."""
    from mindeye_core.metrics.retrieval import retrieval_metrics
    from mindeye_core.models import MindEyeHighLevel

    from training.targets import TargetCache
    from training.train_highlevel import as_tokens, embed_test

    model = MindEyeHighLevel.from_pretrained(model_dir)
    sub = dataset.subject(subject)
    trials = sub.trials("test")
    imgs = sub.image_index[trials]
    rep = sub.repetition[trials]
    cache = TargetCache.for_encoder(dataset, encoder)
    n_tokens, dim = model.brain.n_tokens, model.brain.dim
    per_rep = {}
    for r in sorted(set(int(v) for v in rep)):
        sel = np.flatnonzero(rep == r)
        if len(sel) < 2:
            continue
        vox = torch.from_numpy(sub.betas(trials[sel]).astype(np.float32))
        _, proj = embed_test(model, vox, torch.device("cpu"))
        tgt = as_tokens(torch.from_numpy(cache.get(imgs[sel], progress=False)), n_tokens, dim)
        res = retrieval_metrics(proj, tgt, seed=seed)
        per_rep[r] = {"brain_to_image": res.brain_to_image, "image_to_brain": res.image_to_brain, "n": int(len(sel))}
    avg_vox, avg_rows = sub.averaged("test")
    _, proj = embed_test(model, torch.from_numpy(avg_vox), torch.device("cpu"))
    tgt = as_tokens(torch.from_numpy(cache.get(avg_rows, progress=False)), n_tokens, dim)
    avg = retrieval_metrics(proj, tgt, seed=seed)
    return {"average": {"brain_to_image": avg.brain_to_image, "image_to_brain": avg.image_to_brain},
            "single": {k: float(np.mean([v[k] for v in per_rep.values()])) for k in ("brain_to_image", "image_to_brain")},
            "per_repetition": per_rep}


def _table(rows: list[tuple[str, float, float]], caption: str) -> str:
    lines = [caption, "", "| Method | Image retrieval (brain -> image) | Brain retrieval (image -> brain) |", "|---|---:|---:|"]
    lines += [f"| {name} | {100 * a:.1f} % | {100 * b:.1f} % |" for name, a, b in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from mindeye_core.data import open_dataset

    from training.build_demo_assets import CONFIGS
    from training.data import load_encoder, resolve_dataset
    from training.engine import Trainer, load_config_file
    from training.train_highlevel import HighLevelConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="subj01")
    ap.add_argument("--world", default="demo")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None, help="run folders (default OUT/runs)")
    ap.add_argument("--main", type=Path, default=None, help="an existing run folder of the main config (reused)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--single-trial-only", action="store_true")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="change a config value (YAML)")
    args = ap.parse_args(argv)
    import yaml

    base = load_config_file(HighLevelConfig, CONFIGS / "demo.yaml")
    for item in args.override:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--override {item!r}: expected KEY=VALUE")
        base[k.replace("-", "_")] = yaml.safe_load(v)
    world = resolve_dataset(args.world)
    work = args.work or args.out / "runs"
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"subject": args.subject, "variants": {}}
    main_dir = args.main
    if not args.single_trial_only:
        for name in args.variants:
            run = args.main if (name.startswith("BiMixCo") and args.main is not None) else work / name.split()[0].lower()
            if not (run / "model").is_dir():
                cfg = HighLevelConfig(**{**base, **VARIANTS[name], "dataset": str(world), "subject": args.subject,
                                         "out": str(run), "threads": args.threads})
                train(cfg, resume=bool(Trainer.checkpoints_in(run)))
            summary = json.loads((run / "summary.json").read_text())
            results["variants"][name] = summary["metrics"]
            if name.startswith("BiMixCo"):
                main_dir = run
        rows = [(n, m["test_brain_to_image"], m["test_image_to_brain"]) for n, m in results["variants"].items()]
        (args.out / "table4.md").write_text(_table(rows, f"Table 4 shape, demo world {args.subject}: loss ablation "
                                                          "(retrieval top-1 among 300, 3-trial averages)"))
    if main_dir is None:
        raise ValueError("Table 8 needs the main model: pass --main RUN_DIR or include the MindEye variant")
    ds = open_dataset(world)
    st = single_trial_retrieval(main_dir / "model", ds, args.subject, load_encoder("demo"))
    results["single_trial"] = st
    (args.out / "table8.md").write_text(_table(
        [("MindEye, 3-trial average", st["average"]["brain_to_image"], st["average"]["image_to_brain"]),
         ("MindEye, single trial", st["single"]["brain_to_image"], st["single"]["image_to_brain"])],
        f"Table 8 shape, demo world {args.subject}: single trial vs 3-trial average (retrieval top-1 among 300)"))
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    print((args.out / "table4.md").read_text() if (args.out / "table4.md").exists() else "")
    print((args.out / "table8.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
