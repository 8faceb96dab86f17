"""What limits retrieval from the demo pool: the stage-1 query ablation of the two-stage procedure.

    python -m training.pool_query_ablation --out docs/pool_query_ablation.md          # all bundle subjects
    python -m training.pool_query_ablation --subjects subj01 --pool-kind flat

For each subject of a demo results bundle (default ``assets/demo_results``) and each candidate stage-1 query,
the pool index (default: the shipped 10^5 IVF-PQ one) is searched and the top-1 pool image's main object is
compared with the seen image's (:func:`mindeye_core.retrieval.demo.match_shares`' definition: category and colour
of the largest visible object). Rows:

- ``1x prior``: the 1 x 128 model's prior output (what ``mindeye retrieval neighbours`` uses, as the paper's
  1 x 768 model for LAION-5B);
- ``1x projector``: the same model's contrastive projector output;
- ``65x128 prior token 0``: token 0 of the reconstruction model's prior output (the query before the 1 x 128
  model existed);
- ``seen image``: the seen image's own tiny-CLIP final embedding (the upper bound of any brain query);
- ``seen image, two-stage``: the same, then the 16 candidates re-ranked by the seen image's own hidden tokens
  (stage 2 with a perfect projector output: what the re-rank itself does to the match).

Each row also gives the query's mean cosine to the seen image's final embedding. A last row per subject is a
**linear probe**: ridge classifiers from the training trials' voxels straight to the main object's category and
colour, scored on the 3-trial test averages: how much of both the simulated cortex carries, read out with
supervision on exactly these labels (no CLIP space, no pool).
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


def linear_probe(world: Path, subject: str) -> dict[str, float]:
    """Ridge classifiers voxels -> main category / colour (fit on the training trials, scored on the test
    averages): accuracy of each and of both at once."""
    from sklearn.linear_model import RidgeClassifierCV

    from mindeye_core.data import open_dataset
    from mindeye_core.data.demo import load_demo_labels
    from mindeye_core.retrieval.demo import main_objects

    sub = open_dataset(world).subject(subject)
    cat, col = main_objects(load_demo_labels(world))
    trials = sub.trials("train")
    seen = sub.image_index[trials]
    x = np.asarray(sub.betas(trials), np.float32)
    xt, test_images = sub.averaged("test")
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mean) / std, (np.asarray(xt, np.float32) - mean) / std
    ok = {}
    for name, y in (("category", cat), ("colour", col)):
        clf = RidgeClassifierCV(alphas=[1e2, 1e3, 1e4, 1e5]).fit(x, y[seen])
        ok[name] = clf.predict(xt) == y[test_images]
    return {"category_and_colour": float(np.mean(ok["category"] & ok["colour"])),
            "category": float(np.mean(ok["category"])), "colour": float(np.mean(ok["colour"]))}


def subject_rows(bundle: Any, name: str, index: Any, brain: Path, labels: Any, n_candidates: int = 16) -> list[dict[str, Any]]:
    """One dict per stage-1 query of subject ``name`` (see the module docstring)."""
    from mindeye_core.models import MindEyeHighLevel
    from mindeye_core.retrieval.demo import brain_queries, main_objects
    from mindeye_core.retrieval.embedders import ModelInfo
    from mindeye_core.retrieval.pool import demo_pool_embedder, pool_labels, render_pool
    from mindeye_core.retrieval.two_stage import two_stage_retrieve
    from mindeye_core.similarity import normalise

    s = bundle.subject(name)
    cat, col = main_objects(labels.subset(s.stimulus_rows()))
    embedder = demo_pool_embedder()
    seen_final, seen_hidden = embedder.encode(s.ground_truth(), return_hidden=True)
    seen_final = normalise(seen_final)
    one_x = brain_queries(s, brain / name / "highlevel", brain / name / "highlevel-1x")
    token0 = brain_queries(s, brain / name / "highlevel")
    with torch.no_grad():
        model = MindEyeHighLevel.from_pretrained(brain / name / "highlevel-1x").eval()
        _, projector = model(torch.from_numpy(s.voxels().astype(np.float32)))
    enc = bundle.provenance.get("encoder", {})
    info = ModelInfo(name=str(enc.get("name", "unknown")), sha256=str(enc.get("sha256", "")), space="final",
                     dim=seen_final.shape[1])
    queries = {"1x prior": one_x.final, "1x projector": projector.reshape(len(cat), -1).numpy(),
               "65x128 prior token 0": token0.final, "seen image": seen_final}
    def row(query: str, q: np.ndarray, top: np.ndarray) -> dict[str, Any]:
        rc, rl = main_objects(pool_labels(np.asarray(top, np.int64)))
        return {"subject": name, "query": query, "cosine_to_seen_final": float(np.mean(np.sum(q * seen_final, 1))),
                "category_and_colour": float(np.mean((rc == cat) & (rl == col))),
                "category": float(np.mean(rc == cat)), "colour": float(np.mean(rl == col))}

    rows = []
    for query, q in queries.items():
        q = normalise(q).astype(np.float32)
        _, ids = index.search(q, 1, model=info)
        rows.append(row(query, q, ids[:, 0]))
    two = two_stage_retrieve(seen_final, seen_hidden, index, render_pool,
                             lambda images: embedder.encode(images, return_hidden=True)[1],
                             n_candidates=n_candidates, search_kwargs={"model": info})
    rows.append(row("seen image, two-stage", seen_final, two.ids))
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| subject | stage-1 query | cosine to the seen image's final embedding | category + colour | category | colour |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        cos = f"{r['cosine_to_seen_final']:.3f}" if r.get("cosine_to_seen_final") is not None else "—"
        lines.append(f"| {r['subject']} | {r['query']} | {cos} | {100 * r['category_and_colour']:.1f} % | "
                     f"{100 * r['category']:.1f} % | {100 * r['colour']:.1f} % |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from mindeye_core.cli import folder_arg
    from mindeye_core.data.demo.stimuli import COLOUR_NAMES, CATEGORIES
    from mindeye_core.results import open_results
    from mindeye_core.retrieval.demo import demo_test_labels
    from mindeye_core.retrieval.index import open_index
    from mindeye_core.retrieval.pool import ensure_pool_index

    from training.data import resolve_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=folder_arg, default=ASSETS_DIR / "demo_results")
    ap.add_argument("--brain", type=folder_arg, default=ASSETS_DIR / "demo_brain",
                    help="folder of <subject>/{highlevel,highlevel-1x}")
    ap.add_argument("--world", type=folder_arg, default=None, help="the demo world (default $MINDEYE_DATA/demo)")
    ap.add_argument("--subjects", nargs="+", default=None)
    ap.add_argument("--index", type=folder_arg, default=None, help="an index folder (default: the shipped pool index)")
    ap.add_argument("--pool-kind", default=None, help="a demo-pool index kind instead (e.g. flat: exact, built on first use)")
    ap.add_argument("--candidates", type=int, default=16, help="stage-1 candidates of the two-stage row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here (and a .json beside it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    bundle = open_results(args.bundle)
    world = Path(args.world) if args.world else resolve_dataset("demo", progress=False)
    index = open_index(args.index) if args.index else (
        ensure_pool_index(kind=args.pool_kind) if args.pool_kind else ensure_pool_index())
    labels = demo_test_labels(bundle, world)
    rows: list[dict[str, Any]] = []
    for name in args.subjects or bundle.subjects:
        rows += subject_rows(bundle, name, index, Path(args.brain), labels, n_candidates=args.candidates)
        rows.append({"subject": name, "query": "linear probe: voxels -> category, colour (no pool)",
                     "cosine_to_seen_final": None, **linear_probe(world, name)})
        print(f"{name}: done", file=sys.stderr)
    chance = 1.0 / (len(CATEGORIES) * len(COLOUR_NAMES))
    text = (f"# Stage-1 query ablation of the demo pool retrieval\n\n`python -m training.pool_query_ablation` on "
            f"`{Path(args.bundle).name}`, index `{index.path.name}` ({len(index):,} pool images), top-1 pool image "
            f"vs the seen image's main object. Chance (category + colour) {100 * chance:.1f} %.\n\n{table(rows)}\n")
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"index": index.path.name, "chance": chance,
                                                              "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
