"""``mindeye retrieval``: build retrieval indexes and write a results bundle's pool neighbours.

Sub-commands::

    mindeye retrieval build --out DIR (--images FOLDER | --embeddings FILE.npy --model-name N --model-sha S)
                            [--encoder tiny-clip | --encoder openclip-final:SOURCE | clip-final:SOURCE]
                            [--kind flat|ivfpq|hnsw] [--param nprobe=32 ...] [--chunk-size 4096] [--workers 1]
    mindeye retrieval build-pool [--n 100000] [--kind flat] [--param ...] [--workers 2]
    mindeye retrieval neighbours --bundle DIR [--subjects subj01 ...] [--pool-n 100000 --pool-kind flat |
                            --index DIR] [--candidates 16] [--exclude-near-duplicates 4] [--brain-root DIR]
                            [--stage1 1x | prior-token0]
    mindeye retrieval info DIR

Builds resume where they stopped (run the same command again). The demo pool's indexes live under
``$MINDEYE_CACHE/demo_pool`` (``--root`` to change); ``build-pool`` refuses pool images identical to the
shipped demo bundle's test images (``--exclude-bundle``). ``neighbours`` runs the paper's two-stage
procedure for every test sample (stage 1 queried with the subject's 1 x 128 model,
``<brain-root>/<subject>/highlevel-1x``) and stores ids, scores and pool seeds in the bundle
(``SubjectResults.neighbours()``), and prints the two-stage vs one-stage category + colour match shares.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _params(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects NAME=VALUE, got {item!r}")
        out[key] = float(value) if "." in value else int(value)
    return out


def _embedder(spec: str) -> Any:
    from ..encoders import load_image_encoder
    from .embedders import ImageEmbedder
    from .pool import demo_pool_embedder

    if spec == "tiny-clip":
        return demo_pool_embedder()
    kind, sep, source = spec.partition(":")
    if not sep or kind not in ("clip-final", "openclip-final", "clip-hidden", "openclip-hidden"):
        raise SystemExit(f"--encoder: use tiny-clip, clip-final:SOURCE or openclip-final:SOURCE, got {spec!r}")
    return ImageEmbedder(load_image_encoder(kind, source), name=source)


def _exclude_images(bundle: str | None) -> Any:
    from ..paths import ASSETS_DIR
    from ..results import open_results

    path = Path(bundle) if bundle else ASSETS_DIR / "demo_results"
    if not (path / "manifest.json").is_file():
        if bundle:
            raise SystemExit(f"--exclude-bundle {bundle}: not a results bundle")
        return ()
    return open_results(path, validate_arrays=False).stimuli()[1]


def _build(args: argparse.Namespace) -> int:
    from .embedders import ModelInfo
    from .index import EmbeddingsFileSource, ImageFolderSource, build_index

    if bool(args.images) == bool(args.embeddings):
        raise SystemExit("give exactly one of --images FOLDER or --embeddings FILE.npy")
    if args.embeddings:
        if not (args.model_name and args.model_sha):
            raise SystemExit("--embeddings needs --model-name and --model-sha (the model that made them)")
        source = EmbeddingsFileSource(args.embeddings, ids=args.ids, model=ModelInfo(
            args.model_name, args.model_sha, args.model_space))
        embedder = None
    else:
        embedder = _embedder(args.encoder)
        source = ImageFolderSource(args.images, size=int(embedder.encoder.image_size))
    res = build_index(args.out, source, embedder=embedder, kind=args.kind, params=_params(args.param),
                      chunk_size=args.chunk_size, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in res.meta.items() if k != "build"}, indent=2))
    return 0


def _build_pool(args: argparse.Namespace) -> int:
    from .pool import build_pool_index

    res = build_pool_index(args.n, args.kind, root=args.root, params=_params(args.param),
                           exclude=_exclude_images(args.exclude_bundle), workers=args.workers,
                           progress=not args.no_progress, max_chunks=args.max_chunks)
    print(json.dumps({k: v for k, v in res.meta.items() if k != "build"}, indent=2))
    return 0 if res.meta.get("complete", True) else 3


def _neighbours(args: argparse.Namespace) -> int:
    from ..paths import ASSETS_DIR
    from ..results import open_results
    from .demo import demo_test_labels, pool_neighbours
    from .index import open_index
    from .pool import ensure_pool_index

    bundle = open_results(args.bundle)
    subjects = args.subjects or bundle.subjects
    brain_root = Path(args.brain_root) if args.brain_root else ASSETS_DIR / "demo_brain"
    final_dirs = {name: brain_root / name / "highlevel-1x" for name in subjects} if args.stage1 == "1x" else {}
    missing = [str(d) for d in final_dirs.values() if not (d / "model.safetensors").is_file()]
    if missing:
        raise SystemExit(f"no 1 x 128 model in {', '.join(missing)} (`mindeye build-demo --stages highlevel-1x` "
                         "trains it; --stage1 prior-token0 queries with the high-level model's prior token 0 instead)")
    index = open_index(args.index) if args.index else ensure_pool_index(
        args.pool_n, args.pool_kind, root=args.root, exclude=_exclude_images(None), progress=not args.no_progress)
    labels = demo_test_labels(bundle, args.world) if bundle.world == "demo" else None
    rows = []
    for name in subjects:
        result, summary = pool_neighbours(bundle, name, index, brain_dir=brain_root / name / "highlevel",
                                          final_dir=final_dirs.get(name), n_candidates=args.candidates,
                                          max_hash_distance=args.exclude_near_duplicates, labels=labels)
        ids, scores = result.ranked()
        bundle.set_neighbours(name, ids, scores, seeds=ids if index.meta.get("metadata", {}).get("pool") else None,
                              info=summary)
        rows.append((name, summary.get("match")))
        print(f"{name}: neighbours written ({ids.shape[0]} samples x {ids.shape[1]})", file=sys.stderr)
    if labels is not None:
        print("| subject | two-stage: category + colour | one-stage (final only) | chance |")
        print("|---|---:|---:|---:|")
        for name, m in rows:
            print(f"| {name} | {100 * m['two_stage']['category_and_colour']:.1f} % | "
                  f"{100 * m['one_stage']['category_and_colour']:.1f} % | {100 * m['chance_category_and_colour']:.1f} % |")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .index import open_index

    ix = open_index(args.index)
    print(json.dumps({k: v for k, v in ix.meta.items() if k != "build"}, indent=2))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("retrieval", help="build retrieval indexes; write pool neighbours into a bundle",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="retrieval_command", metavar="SUBCOMMAND", required=True)

    b = sub.add_parser("build", help="index an image folder or an embeddings file")
    b.add_argument("--out", required=True, help="index folder (an unfinished build there is resumed)")
    b.add_argument("--images", help="folder of images (recursive); ids = relative paths")
    b.add_argument("--embeddings", help=".npy file of (N, D) vectors")
    b.add_argument("--ids", help="ids of the embeddings: .npy or .txt (one per line); default row numbers")
    b.add_argument("--model-name", help="model that made --embeddings")
    b.add_argument("--model-sha", help="sha256 of that model's weights")
    b.add_argument("--model-space", default="final", help="its embedding space (default final)")
    b.add_argument("--encoder", default="tiny-clip",
                   help="image encoder: tiny-clip (default), clip-final:HUB_ID_OR_FOLDER, openclip-final:SOURCE")
    b.add_argument("--chunk-size", type=int, default=4096)

    p = sub.add_parser("build-pool", help="index the first N demo-pool images (embedding them; resumable)")
    p.add_argument("--n", type=int, default=100_000, help="pool images (multiple of 5000; default 100000)")
    p.add_argument("--workers", type=int, default=2, help="embedding processes (default 2)")
    p.add_argument("--max-chunks", type=int, default=None, help="embed at most this many parts of 5000, then stop")
    p.add_argument("--exclude-bundle", default=None,
                   help="results bundle whose test images no pool image may equal (default: the shipped demo one)")
    for q in (b, p):
        q.add_argument("--kind", default="flat", help="flat (exact), ivfpq, hnsw or a faiss factory string")
        q.add_argument("--param", action="append", help="index parameter NAME=VALUE (nlist, m, nbits, nprobe, "
                                                        "M, efSearch...)")
    n = sub.add_parser("neighbours", help="two-stage pool retrieval for a bundle's test samples, stored in it")
    n.add_argument("--bundle", required=True, help="results bundle folder")
    n.add_argument("--subjects", nargs="*", help="subjects (default all)")
    n.add_argument("--index", help="an index folder (default: the demo pool's, built on first use)")
    n.add_argument("--pool-n", type=int, default=100_000)
    n.add_argument("--pool-kind", default="ivfpq",
                   help="index kind of the demo pool (default ivfpq: the 10^5 index shipped in assets/demo_pool; "
                        "flat builds the exact one on first use, about 6 CPU-minutes)")
    n.add_argument("--candidates", type=int, default=16, help="stage-1 candidates (default 16, as the paper)")
    n.add_argument("--exclude-near-duplicates", type=int, default=None, metavar="BITS",
                   help="drop candidates within this pHash Hamming distance of the seen image")
    n.add_argument("--brain-root", help="folder of <subject>/{highlevel,highlevel-1x} models (default assets/demo_brain)")
    n.add_argument("--stage1", choices=("1x", "prior-token0"), default="1x",
                   help="stage-1 query: the 1 x 128 model's prior output (default, as the paper's 1 x 768 model) or "
                        "token 0 of the 65 x 128 model's prior output")
    n.add_argument("--world", help="demo world folder of the bundle (default: regenerate its test labels)")
    for q in (p, n):
        q.add_argument("--root", default=None, help="pool index folder (default $MINDEYE_CACHE/demo_pool)")
    for q in (b, p, n):
        q.add_argument("--no-progress", action="store_true")
    i = sub.add_parser("info", help="print an index's metadata")
    i.add_argument("index")
    b.set_defaults(func=_build)
    p.set_defaults(func=_build_pool)
    n.set_defaults(func=_neighbours)
    i.set_defaults(func=_info)
