"""``mindeye evaluate`` and ``mindeye table``: evaluate a results bundle, write Table-1/Table-5 tables.

Examples::

    mindeye evaluate runs/demo/results --out runs/demo/tables            # all metrics that can run
    mindeye evaluate results/ --allow-download --device cuda --paper-parity
    mindeye table runs/demo/results --out tables/                        # re-render stored numbers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cli import (EXPECTED_ERRORS, device_arg, folder_arg, non_negative_int, output_folder_arg, positive_int,
                   report_failure, unit_float)
from ..errors import MindEyeError
from ..staging import check_output_dir


def register(subparsers: Any) -> None:
    """Add ``evaluate`` and ``table`` to the ``mindeye`` command."""
    p = subparsers.add_parser("evaluate", help="evaluate a results bundle (paper metrics + retrieval) and write tables")
    p.add_argument("bundle", type=folder_arg, help="results bundle folder (written by mindeye_core.results.ResultsWriter)")
    p.add_argument("--out", type=output_folder_arg, default=None, help="where to write the tables (default: BUNDLE/tables)")
    p.add_argument("--subjects", nargs="*", default=None, help="subjects to evaluate (default: all)")
    p.add_argument("--strengths", nargs="*", type=unit_float, default=None, help="img2img strengths to evaluate (default: all)")
    p.add_argument("--metrics", nargs="*", default=None, help="subset of: pixcorr ssim alexnet2 alexnet5 inception clip effnet swav")
    p.add_argument("--weights", choices=["pretrained", "tiny", "random"], default="pretrained",
                   help="feature-network weights; 'tiny'/'random' only exercise the code (numbers are meaningless)")
    p.add_argument("--extractor", action="append", default=[], metavar="NAME=MODULE:FACTORY",
                   help="use FACTORY() (returning a FeatureExtractor) for extractor NAME, e.g. the demo world's tiny CLIP: "
                        "clip=mindeye_core.encoders.demo:metrics_clip_extractor (repeatable)")
    p.add_argument("--allow-download", action="store_true", help="download missing feature-network weights")
    p.add_argument("--paper-parity", action="store_true", help="the released code's preprocessing (256 px first, no antialias, column SSIM)")
    p.add_argument("--official-code-directions", action="store_true", help="map retrieval directions onto Image/Brain as the official code did")
    p.add_argument("--table-strength", type=unit_float, default=0.15, help="strength shown in Table 1 (closest available)")
    p.add_argument("--n-draws", type=positive_int, default=30, help="random draws of 300 candidates for retrieval")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the retrieval draws")
    p.add_argument("--no-store", action="store_true", help="do not write the metrics into the bundle's manifest")
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device for features and retrieval")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.set_defaults(func=_evaluate)

    t = subparsers.add_parser("table", help="write Table-1/Table-5 Markdown + CSV from a bundle's stored metrics")
    t.add_argument("bundle", type=folder_arg)
    t.add_argument("--out", type=output_folder_arg, default=None, help="default: BUNDLE/tables")
    t.add_argument("--table-strength", type=unit_float, default=0.15)
    t.add_argument("--official-code-directions", action="store_true")
    t.add_argument("--no-reference", action="store_true", help="omit the paper's reference rows")
    t.set_defaults(func=_table)


def _evaluate(args: argparse.Namespace) -> int:
    """``mindeye evaluate``; an expected failure is one line on stderr and exit code 1 (:func:`report_failure`)."""
    try:
        return _run_evaluate(args)
    except EXPECTED_ERRORS as exc:
        return report_failure(args, exc)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..results import open_results
    from .evaluate import RECON_METRICS, evaluate_bundle
    from .features import METRIC_TO_EXTRACTOR, load_extractors
    from .tables import write_tables

    bundle = open_results(args.bundle)
    out = check_output_dir(args.out or (args.bundle / "tables"))  # before the evaluation, not after it
    metrics = tuple(args.metrics) if args.metrics else RECON_METRICS
    bad = sorted(set(metrics) - set(RECON_METRICS))
    if bad:
        print(f"error: unknown metrics {bad}; known: {' '.join(RECON_METRICS)}", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(METRIC_TO_EXTRACTOR[m] for m in metrics if m in METRIC_TO_EXTRACTOR))
    overrides = _load_overrides(args.extractor)
    if bundle.world == "demo" and "clip" in names and "clip" not in overrides:
        # the demo world's CLIP metric uses the demo's own tiny CLIP (ViT-L/14 means nothing there)
        from .features import demo_clip_extractor

        try:
            overrides["clip"] = demo_clip_extractor(device=args.device)
        except MindEyeError as exc:
            print(f"clip: demo CLIP unavailable ({exc})", file=sys.stderr)
    extractors, unavailable = load_extractors(names, args.weights, allow_download=args.allow_download, device=args.device,
                                              overrides=overrides)
    for metric, reason in unavailable.items():
        print(f"{metric}: unavailable ({reason})", file=sys.stderr)
    evaluations = evaluate_bundle(
        bundle, extractors=extractors, unavailable=unavailable, subjects=args.subjects, strengths=args.strengths,
        metrics=metrics, paper_parity=args.paper_parity, retrieval_kwargs={"n_draws": args.n_draws, "seed": args.seed},
        store=not args.no_store, batch_size=args.batch_size, device=args.device,
    )
    paths = write_tables(evaluations, out, strength=args.table_strength, official_code_directions=args.official_code_directions,
                         title=f"{bundle.world or 'results'} ({args.weights} feature weights)")
    (Path(out) / "metrics.json").write_text(json.dumps(evaluations, indent=2, default=float) + "\n")
    print(paths["table1_md"].read_text())
    print(f"tables written to {out}")
    return 0


def _load_overrides(specs: list[str]) -> dict[str, Any]:
    """Parse ``NAME=module:factory`` options and call each factory (no arguments)."""
    import importlib

    from .features import FeatureExtractor

    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        module_name, sep2, attr = target.partition(":")
        if not sep or not sep2 or not name or not module_name or not attr:
            raise MindEyeError(f"--extractor expects NAME=MODULE:FACTORY, got {spec!r}")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise MindEyeError(f"--extractor {spec!r}: cannot import {target}: {exc}") from exc
        ex = factory()
        if not isinstance(ex, FeatureExtractor):
            raise MindEyeError(f"--extractor {spec!r}: {target}() returned {type(ex).__name__}, expected a FeatureExtractor")
        out[name] = ex
    return out


def _table(args: argparse.Namespace) -> int:
    """``mindeye table``; an expected failure is one line on stderr and exit code 1 (:func:`report_failure`)."""
    try:
        return _run_table(args)
    except EXPECTED_ERRORS as exc:
        return report_failure(args, exc)


def _run_table(args: argparse.Namespace) -> int:
    from ..results import open_results
    from .tables import write_tables

    bundle = open_results(args.bundle, validate_arrays=False)
    evaluations = {s: bundle.subject(s).metrics for s in bundle.subjects}
    missing = [s for s, m in evaluations.items() if not m.get("strengths")]
    if missing:
        print(f"error: no stored metrics for {missing}; run `mindeye evaluate {args.bundle}` first", file=sys.stderr)
        return 1
    out = args.out or (args.bundle / "tables")
    paths = write_tables(evaluations, out, strength=args.table_strength, official_code_directions=args.official_code_directions,
                         with_reference=not args.no_reference, title=bundle.world)
    print(paths["table1_md"].read_text())
    return 0
