"""``mindeye demo``: generate (or reuse) the demo world, then write its summary and a contact sheet.

Outputs, in the world's folder (or ``--report-dir``)::

    summary.json       subjects, voxel counts, sessions, train/test trials and images, noise ceilings
    summary.md         the same as Markdown tables (also printed)
    contact_sheet.png  48 stimuli with their captions

The world lives in ``data_dir()/demo`` by default (``demo-small`` with ``--small``, ``-seedN`` appended for
a non-zero seed); an existing world generated with the same config is reused.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..cli import non_negative_float, non_negative_int, output_folder_arg, positive_int
from ..paths import data_dir
from ..staging import check_output_dir
from .format import open_dataset

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CONTACT_SHEET = "contact_sheet.png"


def default_world_dir(seed: int = 0, small: bool = False) -> Path:
    """``data_dir()/demo``, ``demo-small`` for the small config, ``-seedN`` for a non-zero seed."""
    name = "demo" + ("-small" if small else "") + (f"-seed{seed}" if seed else "")
    return data_dir() / name


# ------------------------------------------------------------------------------------------ summary
def summarize_demo_world(root: str | Path) -> dict[str, Any]:
    """Summary of a demo world: per subject voxels, sessions, trials and images per split, noise ceilings.

    Returns a JSON-ready dict.
    """
    ds = open_dataset(root)
    try:
        meta = ds.manifest.get("metadata", {})
        config = meta.get("config", {})
        reps = int(config.get("repetitions", 3))
        subjects: dict[str, Any] = {}
        for name in ds.subjects:
            m = ds.manifest["subjects"][name]
            sm = meta.get("subjects", {}).get(name, {})
            subjects[name] = {
                "n_voxels": m["n_voxels"],
                "n_sessions": sm.get("n_sessions"),
                "n_train_trials": m["n_train_trials"],
                "n_test_trials": m["n_test_trials"],
                "n_train_images": m["n_train_images"],
                "n_test_images": m["n_test_images"],
                "voxels_per_area": sm.get("voxels_per_area", {}),
                "noise_ceiling": sm.get(f"noise_ceiling_{reps}trial", {}),
                "noise_ceiling_single_trial": sm.get("noise_ceiling_1trial", {}),
            }
        return {
            "world": ds.world,
            "root": str(ds.root),
            "seed": meta.get("seed"),
            "n_images": ds.n_images,
            "image_size": list(ds.image_size),
            "repetitions": reps,
            "n_shared_test_images": config.get("n_test_images"),
            "n_train_images_per_subject": config.get("n_train_images"),
            "generation_seconds": meta.get("timing_s", {}).get("total"),
            "areas": meta.get("areas", []),
            "config": config,
            "subjects": subjects,
        }
    finally:
        ds.close()


def summary_markdown(summary: dict[str, Any]) -> str:
    """Render :func:`summarize_demo_world`'s dict as Markdown."""
    reps = summary["repetitions"]
    lines = [
        f"# Demo world (seed {summary['seed']})",
        "",
        f"- folder: `{summary['root']}`",
        f"- {summary['n_images']} images of {summary['image_size'][0]}x{summary['image_size'][1]} px: "
        f"{summary['n_shared_test_images']} shared test images + {summary['n_train_images_per_subject']} training images per subject, "
        f"each shown {reps} times",
    ]
    if summary.get("generation_seconds") is not None:
        lines.append(f"- generated in {summary['generation_seconds']:.1f} s")
    lines += [
        "",
        "## Subjects",
        "",
        "| subject | voxels | sessions | train trials | train images | test trials | test images |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary["subjects"].items():
        lines.append(
            f"| {name} | {s['n_voxels']} | {s['n_sessions']} | {s['n_train_trials']} | {s['n_train_images']} | "
            f"{s['n_test_trials']} | {s['n_test_images']} |"
        )
    lines += [
        "",
        f"## Noise ceilings (NSD definition, % explainable variance of the {reps}-trial average)",
        "",
        "| subject | median | q25 | q75 | q90 | voxels > 50 % | single-trial median |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary["subjects"].items():
        nc, nc1 = s["noise_ceiling"], s["noise_ceiling_single_trial"]
        if not nc:
            continue
        lines.append(
            f"| {name} | {nc['median']:.1f} | {nc['q25']:.1f} | {nc['q75']:.1f} | {nc['q90']:.1f} | "
            f"{100 * nc['frac_above_50']:.1f} % | {nc1.get('median', float('nan')):.1f} |"
        )
    present = next(iter(summary["subjects"].values()), {}).get("noise_ceiling", {}).get("median_by_area", {})
    order = list(summary.get("areas") or [])
    areas = [a for a in order if a in present] + sorted(a for a in present if a not in order)
    if areas:
        lines += ["", "Median noise ceiling by simulated area:", "", "| subject | " + " | ".join(areas) + " |",
                  "|---|" + "---:|" * len(areas)]
        for name, s in summary["subjects"].items():
            by = s["noise_ceiling"].get("median_by_area", {})
            lines.append(f"| {name} | " + " | ".join(f"{by.get(a, float('nan')):.1f}" for a in areas) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ contact sheet
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(
    root: str | Path,
    path: str | Path,
    *,
    n: int = 48,
    columns: int = 6,
    tile: int = 192,
    title: str | None = None,
) -> Path:
    """Draw ``n`` stimuli (the first ``n`` shared test images) with their wrapped captions into a PNG.

    Args:
        root: dataset folder (any canonical dataset with captions; without captions tiles show the row).
        path: output PNG path.
        n: number of stimuli (at most the number of images).
        columns: tiles per row.
        tile: tile side in pixels (images are upscaled with bicubic interpolation).
        title: heading (default: world name and image count).
    """
    ds = open_dataset(root)
    try:
        n = max(1, min(n, ds.n_images))
        images = ds.images(slice(0, n))
        captions = ds.captions or [f"image {i}" for i in range(n)]
        heading = title or f"MindEye Explorer - {ds.world} world: {ds.n_images} stimuli, subjects {', '.join(ds.subjects)}"
    finally:
        ds.close()
    font = _font(13)
    head_font = _font(20)
    chars = max(12, int(tile / 6.6))
    wrapped = [textwrap.wrap(captions[i], width=chars)[:6] for i in range(n)]
    line_h = 16
    text_h = line_h * max(len(w) for w in wrapped) + 10
    pad = 12
    rows = (n + columns - 1) // columns
    head_h = 44
    width = pad + columns * (tile + pad)
    height = head_h + pad + rows * (tile + text_h + pad)
    sheet = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 12), heading, fill=(20, 20, 30), font=head_font)
    for i in range(n):
        r, c = divmod(i, columns)
        x = pad + c * (tile + pad)
        y = head_h + pad + r * (tile + text_h + pad)
        img = Image.fromarray(np.ascontiguousarray(images[i])).resize((tile, tile), Image.Resampling.BICUBIC)
        sheet.paste(img, (x, y))
        draw.rectangle([x - 1, y - 1, x + tile, y + tile], outline=(200, 200, 200))
        for k, line in enumerate(wrapped[i]):
            draw.text((x, y + tile + 5 + k * line_h), line, fill=(40, 40, 50), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ------------------------------------------------------------------------------------------ command
def run_demo(args: argparse.Namespace) -> int:
    """The ``mindeye demo`` command. Returns the exit code."""
    from .demo.world import DemoWorldConfig, ensure_demo_world

    overrides: dict[str, Any] = {"seed": args.seed}
    if args.noise_level is not None:
        overrides["noise_level"] = args.noise_level
    if args.train_images is not None:
        overrides["n_train_images"] = args.train_images
    config = DemoWorldConfig.small(**overrides) if args.small else DemoWorldConfig(**overrides)
    custom = args.noise_level is not None or args.train_images is not None
    root = Path(args.out) if args.out else default_world_dir(args.seed, args.small)
    if custom and not args.out:
        root = root.with_name(root.name + f"-noise{config.noise_level:g}-train{config.n_train_images}")
    report = Path(args.report_dir) if args.report_dir else root
    check_output_dir(report, what="--report-dir")  # before generating, not after
    # a refusal (another world there, a locked or full destination) is one line on stderr (mindeye_core.cli)
    root, generated = ensure_demo_world(root, config, progress=not args.quiet, overwrite=args.overwrite)
    print(("generated" if generated else "reusing") + f" demo world at {root}")
    report.mkdir(parents=True, exist_ok=True)
    summary = summarize_demo_world(root)
    (report / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    md = summary_markdown(summary)
    (report / SUMMARY_MD).write_text(md)
    sheet = contact_sheet(root, report / CONTACT_SHEET, n=args.n_stimuli)
    print()
    print(md)
    print(f"wrote {report / SUMMARY_JSON}, {report / SUMMARY_MD} and {sheet}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``mindeye`` command."""
    p = subparsers.add_parser(
        "demo",
        help="generate the demo world (or reuse it) and write its summary and a contact sheet of stimuli",
        description="Generate the demo world (procedural stimuli + 4 simulated subjects, deterministic from --seed), "
        "then write summary.json, summary.md and contact_sheet.png.",
    )
    p.add_argument("--out", type=output_folder_arg, default=None, help="world folder (default: $MINDEYE_DATA/demo)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="master seed (default 0)")
    p.add_argument("--small", action="store_true", help="small world (150 test / 300 train images, ~300 voxels): seconds")
    p.add_argument("--overwrite", action="store_true", help="regenerate even if the folder already holds a world")
    p.add_argument("--noise-level", type=non_negative_float, default=None, help="scale every voxel's noise SD (default 1)")
    p.add_argument("--train-images", type=positive_int, default=None, help="training images per subject (default 3000)")
    p.add_argument("--report-dir", type=output_folder_arg, default=None,
                   help="where to write the summary and contact sheet (default: the world folder)")
    p.add_argument("--n-stimuli", type=positive_int, default=48, help="stimuli on the contact sheet (default 48)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)
