"""Markdown tables of the shipped demo bundle (Table 1 and Table 5 shapes) for the README and docs.

    python -m training.demo_report                       # assets/demo_results -> stdout
    python -m training.demo_report --out docs/demo_results.md

Columns available offline: PixCorr and SSIM (paper protocol, 425 px), two-way identification with the shipped
tiny CLIP's final embedding (``tiny-CLIP 2-way``: the demo world's stand-in for the paper's CLIP ViT-L/14
column; AlexNet, Inception, EfficientNet and SwAV weights are not shipped), retrieval top-1 among 300 over
30 draws in both named directions (Image = brain -> image, Brain = image -> brain, the paper's caption).
Rows per subject: MindEye (final, strength 0.15), its low-level (blurry) reconstructions, the ridge baseline
trained here on the same data, and the generator's ceiling (reconstructions from the ground-truth embeddings),
then the mean over subjects and the paper's NSD rows for scale (other world, other feature network for
the CLIP column: compare shapes, not numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from mindeye_core.paths import ASSETS_DIR

COLS = (("pixcorr", "PixCorr"), ("ssim", "SSIM"), ("tinyclip_2way", "tiny-CLIP 2-way"),
        ("brain_to_image", "Image retrieval"), ("image_to_brain", "Brain retrieval"))
PCT = {"tinyclip_2way", "brain_to_image", "image_to_brain"}


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f} %" if key in PCT else f"{v:.3f}"


def _row(name: str, images: Mapping[str, Any] | None, retrieval: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    vals: dict[str, Any] = {k: (images or {}).get(k) for k in ("pixcorr", "ssim", "tinyclip_2way")}
    vals.update({k: (retrieval or {}).get(k) for k in ("brain_to_image", "image_to_brain")})
    return name, vals


def table1(metrics: Mapping[str, Mapping[str, Any]], strength: str = "0.15") -> str:
    """Table 1 shape from the bundle's per-subject metrics."""
    from mindeye_core.metrics.tables import TABLE1_REFERENCE

    rows: list[tuple[str, dict[str, Any]]] = []
    finals, ridges = [], []
    for subject, m in metrics.items():
        finals.append(_row(f"MindEye ({subject})", m["strengths"][strength], m["retrieval"]))
        rows.append(finals[-1])
        rows.append(_row(f"MindEye low-level / blurry ({subject})", m.get("blurry"), None))
        if "ridge" in m:
            ridges.append(_row(f"Ridge baseline ({subject})", m["ridge"]["strengths"].get(strength), m["ridge"]["retrieval"]))
            rows.append(ridges[-1])
    for label, group in (("MindEye, mean of subjects", finals), ("Ridge baseline, mean of subjects", ridges)):
        if len(group) > 1:
            mean = {k: sum(r[1][k] for r in group) / len(group) if all(r[1][k] is not None for r in group) else None
                    for k, _ in COLS}
            rows.append((f"**{label}**", mean))
    first = next(iter(metrics.values()))
    if "ceiling" in first:
        rows.append(_row("Generator ceiling (ground-truth embeddings, strength 0)", first["ceiling"]["strengths"]["0"], None))
    out = ["| Method | " + " | ".join(h for _, h in COLS) + " |", "|---|" + "---:|" * len(COLS)]
    out += [f"| {name} | " + " | ".join(_fmt(k, v.get(k)) for k, _ in COLS) + " |" for name, v in rows]
    for ref in TABLE1_REFERENCE[:3]:
        v = dict(ref.values)
        vals = {"pixcorr": v.get("pixcorr"), "ssim": v.get("ssim"), "tinyclip_2way": None,
                "brain_to_image": v.get("image_retrieval"), "image_to_brain": v.get("brain_retrieval")}
        out.append(f"| *NSD, paper: {ref.method}* | " + " | ".join(_fmt(k, vals[k]) for k, _ in COLS) + " |")
    return "\n".join(out) + "\n"


def table5(metrics: Mapping[str, Mapping[str, Any]], subject: str) -> str:
    """Table 5 shape (img2img strength) for one subject."""
    m = metrics[subject]["strengths"]
    out = ["| img2img strength | PixCorr | SSIM | tiny-CLIP 2-way |", "|---|---:|---:|---:|"]
    for s in sorted(m, key=float, reverse=True):
        label = {"1": "1.0 (only low-level)", "0.15": "0.15 (MindEye default)", "0": "0.0 (only high-level)"}.get(s, s)
        out.append(f"| {label} | " + " | ".join(_fmt(k, m[s].get(k)) for k in ("pixcorr", "ssim", "tinyclip_2way")) + " |")
    return "\n".join(out) + "\n"


def report(bundle: Path) -> str:
    from mindeye_core.results import open_results

    b = open_results(bundle)
    metrics = {s: b.subject(s).metrics for s in b.subjects}
    first = b.subjects[0]
    parts = [f"Demo world, {len(b.subjects)} subject(s): {', '.join(b.subjects)} (600 shared test images, 3-trial "
             "averages; retrieval top-1 among 300, 30 draws).\n", table1(metrics),
             f"\nImg2img strength ({first}; finals off 0.15 regenerated from the picked candidate):\n", table5(metrics, first)]
    build = bundle.parent / "demo_brain" / "build_report.json"
    if build.is_file():
        stages = json.loads(build.read_text())["stages"]
        parts.append("\nBuild time by stage (seconds, 2 CPU cores shared with other work):\n")
        parts.append("| stage | seconds | torch threads |\n|---|---:|---:|\n" + "".join(
            f"| {k} | {v['seconds']:.0f} | {v.get('threads', '—')} |\n" for k, v in sorted(stages.items())))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ASSETS_DIR / "demo_results")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    text = report(args.bundle)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
