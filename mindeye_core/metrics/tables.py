"""Tables shaped like the paper's Table 1 and Table 5, as Markdown and CSV, with published reference rows.

Values are stored as fractions (two-way identification and retrieval in [0, 1]) and printed the paper's way
(``.309``, ``94.7%``). Missing values print as ``—``; metrics that could not be computed (feature network
unavailable) print as ``n/a``.

Retrieval columns: the paper's caption defines *Image* retrieval as "the correct image retrieved out of 300
candidates, given the brain sample" (our ``brain_to_image``) and *Brain* retrieval vice versa
(``image_to_brain``); that is the default mapping here. By our reading, the released
``Retrieval_Evaluation.py`` computed the published *Image* numbers from a similarity matrix transposed by
``batchwise_cosine_similarity``, i.e. ranking brain samples for each image. ``official_code_directions=True``
swaps the mapping to reproduce that. Both directions are always stored, named, in the bundle.

Tables never mislead: retrieval is top-1 among the ``n_candidates`` the protocol actually used (300 in the
paper; all N test samples when a world has fewer). When a row of this run used fewer than 300, the retrieval
headers say "among N" (or every retrieval cell says its own N when rows differ, the paper's rows "among 300")
and :func:`write_tables`' caption states the chance level actually used (1/N). The paper's reference rows are
labelled with their world: their Source reads "NSD, paper Table 1".
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

COLUMNS: tuple[tuple[str, str, bool], ...] = (
    # key, header, higher_is_better
    ("pixcorr", "PixCorr", True),
    ("ssim", "SSIM", True),
    ("alexnet2", "Alex(2)", True),
    ("alexnet5", "Alex(5)", True),
    ("inception", "Incep", True),
    ("clip", "CLIP", True),
    ("effnet", "Eff", False),
    ("swav", "SwAV", False),
    ("image_retrieval", "Image", True),
    ("brain_retrieval", "Brain", True),
)
PERCENT_KEYS = {"alexnet2", "alexnet5", "inception", "clip", "image_retrieval", "brain_retrieval"}
RETRIEVAL_KEYS = ("image_retrieval", "brain_retrieval")
PAPER_CANDIDATES = 300
"""The paper's retrieval protocol: top-1 among 300 candidates."""
TABLE5_KEYS = tuple(c[0] for c in COLUMNS[:8])


@dataclass(frozen=True)
class ReferenceRow:
    """A published row; values are fractions, ``None`` where the paper has no value; ``source`` names the world
    (``"NSD, paper Table 1"``) and ``candidates`` the retrieval protocol (among 300)."""

    method: str
    values: Mapping[str, float | None]
    source: str
    world: str = "NSD"
    candidates: int = PAPER_CANDIDATES


def _row(method: str, source: str, *vals: float | None) -> ReferenceRow:
    keys = [c[0] for c in COLUMNS]
    conv = {k: (None if v is None else (v / 100.0 if k in PERCENT_KEYS else v)) for k, v in zip(keys, vals)}
    for k in keys[len(vals):]:
        conv[k] = None
    return ReferenceRow(method, conv, f"NSD, {source}")


# Scotti et al., "Reconstructing the Mind's Eye: fMRI-to-Image with Contrastive Learning and Diffusion Priors",
# NeurIPS 2023 (arXiv:2305.18274), Table 1. Percentages as printed (converted to fractions by _row).
# Ozcelik & VanRullen, "Natural scene reconstruction from fMRI signals using generative latent diffusion"
# (Brain-Diffuser, arXiv:2303.05334) rows as reported in that same table (retrieval computed by the MindEye
# authors). Top section: average of subjects 1, 2, 5, 7; "S1" rows: subject 1 only.
TABLE1_REFERENCE: tuple[ReferenceRow, ...] = (
    _row("Ozcelik et al. [4]", "paper Table 1", .254, .356, 94.2, 96.2, 87.2, 91.5, .775, .423, 21.1, 30.3),
    _row("MindEye", "paper Table 1", .309, .323, 94.7, 97.8, 93.8, 94.1, .645, .367, 93.6, 90.1),
    _row("MindEye (Low-Level)", "paper Table 1", .360, .479, 78.1, 74.8, 58.7, 59.2, 1.00, .663, None, None),
    _row("MindEye (High-Level)", "paper Table 1", .194, .308, 91.7, 97.4, 93.6, 94.2, .645, .369, 93.6, 90.1),
    _row("MindEye (LAION)", "paper Table 1", .130, .308, 84.0, 92.6, 86.9, 86.1, .778, .477, None, None),
    _row("Ozcelik et al. (Low-, S1)", "paper Table 1", .358, .437, 97.7, 97.6, 77.0, 71.1, .906, .581, None, None),
    _row("MindEye (Low-, S1)", "paper Table 1", .456, .493, 87.1, 84.1, 61.6, 62.4, .992, .638, None, None),
)

# Same paper, Table 7 (subject 1 alone, img2img strength 0.15).
TABLE7_SUBJ01 = _row("MindEye (Subj 1)", "paper Table 7", .390, .337, 97.4, 98.7, 94.5, 94.6, .630, .358, 97.2, 94.7)

# Same paper, Table 5: subject 1, img2img strength from 1.0 (only low-level) to 0.0 (only high-level).
TABLE5_REFERENCE: Mapping[float, ReferenceRow] = {
    1.0: _row("1.0 (only low-level)", "paper Table 5", .456, .493, 87.1, 84.1, 61.6, 62.4, .992, .638),
    0.7: _row("0.7", "paper Table 5", .439, .416, 92.7, 95.1, 90.0, 87.5, .803, .514),
    0.5: _row("0.5", "paper Table 5", .429, .389, 96.3, 98.4, 94.7, 92.3, .674, .405),
    0.3: _row("0.3", "paper Table 5", .410, .358, 97.5, 98.8, 94.7, 94.5, .638, .362),
    0.15: _row("0.15 (MindEye default)", "paper Table 5", .390, .337, 97.4, 98.7, 94.5, 94.6, .630, .358),
    0.0: _row("0.0 (only high-level)", "paper Table 5", .209, .318, 92.8, 98.0, 94.5, 94.8, .635, .361),
}


@dataclass
class TableRow:
    """One row of a table: ``values`` maps column keys to fractions, ``None`` (missing) or a string
    (``"n/a"``: not computed)."""

    method: str
    values: Mapping[str, float | str | None]
    source: str = "this run"
    candidates: int | None = None
    """Retrieval candidates per draw behind the retrieval values (``None``: no retrieval / unknown)."""


def retrieval_candidates(rows: Sequence[TableRow | ReferenceRow]) -> set[int]:
    """The distinct ``candidates`` of this run's rows (reference rows excluded)."""
    return {int(r.candidates) for r in rows if isinstance(r, TableRow) and r.candidates}


def _few(rows: Sequence[TableRow | ReferenceRow]) -> set[int]:
    ns = retrieval_candidates(rows)
    return ns if any(n != PAPER_CANDIDATES for n in ns) else set()


def format_value(key: str, value: float | str | None) -> str:
    """Paper formatting: ``.309``, ``1.00``, ``94.7%``; ``—`` for missing; strings pass through."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if key in PERCENT_KEYS:
        return f"{100.0 * value:.1f}%"
    text = f"{value:.3f}"
    if abs(value) >= 1.0:
        return f"{value:.2f}"
    return text.replace("0.", ".", 1) if text.startswith("0.") else text.replace("-0.", "-.", 1)


def _headers(keys: Sequence[str], among: int | None = None) -> list[str]:
    heads = {k: f"{h} {'↑' if up else '↓'}" for k, h, up in COLUMNS}
    if among is not None:
        heads.update({k: f"{heads[k]} (among {among})" for k in RETRIEVAL_KEYS})
    return [heads[k] for k in keys]


def _cell(row: TableRow | ReferenceRow, key: str, annotate: bool) -> str:
    text = format_value(key, row.values.get(key))
    n = row.candidates
    if annotate and key in RETRIEVAL_KEYS and n and isinstance(row.values.get(key), float):
        text += f" (among {n})"
    return text


def to_markdown(rows: Sequence[TableRow | ReferenceRow], keys: Sequence[str], *, first: str = "Method", caption: str = "") -> str:
    """A Markdown table with one column per metric key and a trailing "Source" column.

    When a row of this run used fewer (or more) retrieval candidates than the paper's 300, the retrieval
    columns say so: "Image ↑ (among N)" in the header when all such rows share N (the paper's cells then read
    "(among 300)"), else every retrieval cell names its own N.
    """
    few = _few(rows) if any(k in RETRIEVAL_KEYS for k in keys) else set()
    among = next(iter(few)) if len(few) == 1 and len(retrieval_candidates(rows)) == 1 else None
    lines = ["| " + " | ".join([first, *_headers(keys, among), "Source"]) + " |", "|" + "---|" * (len(keys) + 2)]
    for r in rows:
        annotate = bool(few) and (among is None or isinstance(r, ReferenceRow))
        cells = [r.method, *[_cell(r, k, annotate) for k in keys], r.source]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return (caption.rstrip() + "\n\n" + text) if caption else text


def to_csv(rows: Sequence[TableRow | ReferenceRow], keys: Sequence[str], *, first: str = "method") -> str:
    """CSV with raw numbers (fractions); empty cell for missing, ``n/a`` for not computed. When retrieval
    was not among 300 for some row, a ``retrieval_candidates`` column gives each row's N."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = bool(_few(rows)) and any(k in RETRIEVAL_KEYS for k in keys)
    w.writerow([first, *keys, *(["retrieval_candidates"] if extra else []), "source"])
    for r in rows:
        vals = []
        for k in keys:
            v = r.values.get(k)
            vals.append("" if v is None else (v if isinstance(v, str) else repr(float(v))))
        n = [str(r.candidates or "")] if extra else []
        w.writerow([r.method, *vals, *n, r.source])
    return buf.getvalue()


def _retrieval_columns(retrieval: Mapping[str, Any] | None, official_code_directions: bool) -> dict[str, float | None]:
    if not retrieval:
        return {"image_retrieval": None, "brain_retrieval": None}
    b2i, i2b = retrieval.get("brain_to_image"), retrieval.get("image_to_brain")
    if official_code_directions:
        b2i, i2b = i2b, b2i
    return {"image_retrieval": b2i, "brain_retrieval": i2b}


def _metric_values(metrics: Mapping[str, float | None], unavailable: Mapping[str, str]) -> dict[str, float | str | None]:
    out: dict[str, float | str | None] = {}
    for k in TABLE5_KEYS:
        if k in metrics and metrics[k] is not None:
            out[k] = metrics[k]
        elif k in unavailable:
            out[k] = "n/a"
        else:
            out[k] = None
    return out


def pick_strength(available: Sequence[str], wanted: float = 0.15) -> str:
    """The strength key closest to ``wanted`` (the paper's default 0.15)."""
    if not available:
        raise ValueError("no strengths evaluated")
    return min(available, key=lambda s: (abs(float(s) - wanted), float(s)))


EXTRA_ENTRIES: tuple[tuple[str, str], ...] = (("ridge", "Ridge (this bundle, {subject})"),
                                              ("ceiling", "Generator ceiling ({subject})"))
"""Optional entries of a subject's metrics (same keys as the subject's own) and the Table 1 row they give."""


def _candidates(entry: Mapping[str, Any]) -> int | None:
    """``n_candidates`` of an entry's retrieval (``None`` without retrieval)."""
    retrieval = entry.get("retrieval")
    n = retrieval.get("n_candidates") if isinstance(retrieval, Mapping) else None
    return int(n) if isinstance(n, (int, float)) and n > 0 else None


def _entry_values(entry: Mapping[str, Any], strength: float, official_code_directions: bool,
                  unavailable: Mapping[str, str]) -> tuple[str | None, dict[str, float | str | None]]:
    """``(strength key used or None, column values)`` of one metrics entry (``strengths``, ``retrieval``)."""
    strengths = entry.get("strengths") or {}
    key = pick_strength(list(strengths), strength) if strengths else None
    vals = _metric_values(strengths[key] if key is not None else {}, entry.get("unavailable", unavailable))
    vals.update(_retrieval_columns(entry.get("retrieval"), official_code_directions))
    return key, vals


def table1_rows(
    evaluations: Mapping[str, Mapping[str, Any]],
    *,
    strength: float = 0.15,
    official_code_directions: bool = False,
    label: str = "Ours",
) -> list[TableRow]:
    """Rows of Table 1 for each subject of an evaluated bundle (and their mean over subjects).

    Per subject: the final model at ``strength``, its low-level (blurry) row when evaluated, then one row
    per optional entry of :data:`EXTRA_ENTRIES` present in its metrics (``"ridge"``: "Ridge (this bundle,
    subj01)"; ``"ceiling"``: "Generator ceiling (subj01)"). The mean row averages the final-model rows only.

    Args:
        evaluations: subject -> its metrics: the entry written by :func:`~.evaluate.evaluate_bundle`
            (``strengths``, ``blurry``, ``retrieval``, ``unavailable``, optional ``ridge`` / ``ceiling``).
        strength: which img2img strength stands for the final model (closest available is used).
    """
    rows: list[TableRow] = []
    finals: list[TableRow] = []
    for subject, entry in evaluations.items():
        unavailable = entry.get("unavailable", {})
        key, vals = _entry_values(entry, strength, official_code_directions, unavailable)
        if key is None:
            raise ValueError(f"{subject}: no strengths evaluated")
        finals.append(TableRow(f"{label} ({subject}, strength {key})", vals, candidates=_candidates(entry)))
        rows.append(finals[-1])
        if entry.get("blurry"):
            low = _metric_values(entry["blurry"], unavailable)
            rows.append(TableRow(f"{label} (Low-Level, {subject})", low))
        for name, title in EXTRA_ENTRIES:
            extra = entry.get(name)
            if isinstance(extra, Mapping) and (extra.get("strengths") or extra.get("retrieval")):
                _, extra_vals = _entry_values(extra, strength, official_code_directions, unavailable)
                rows.append(TableRow(title.format(subject=subject), extra_vals, candidates=_candidates(extra)))
    if len(finals) > 1:
        mean: dict[str, float | str | None] = {}
        for k, _, _ in COLUMNS:
            nums = [r.values.get(k) for r in finals]
            mean[k] = sum(nums) / len(nums) if all(isinstance(v, float) for v in nums) else (  # type: ignore[arg-type]
                "n/a" if any(v == "n/a" for v in nums) else None)
        ns = {r.candidates for r in finals}
        rows.insert(0, TableRow(f"{label} (mean of {len(finals)} subjects)", mean,
                                candidates=ns.pop() if len(ns) == 1 else None))
    return rows


def table5_rows(entry: Mapping[str, Any], *, subject: str = "", label: str = "Ours") -> list[TableRow]:
    """Rows of Table 5 (metrics across the img2img strength grid, descending) for one subject."""
    strengths = entry.get("strengths", {})
    rows = []
    for key in sorted(strengths, key=float, reverse=True):
        name = f"{label} {subject} {key}".replace("  ", " ").strip()
        rows.append(TableRow(name, _metric_values(strengths[key], entry.get("unavailable", {}))))
    return rows


def chance_note(rows: Sequence[TableRow | ReferenceRow]) -> str:
    """The chance levels actually used: two-way identification 50 %, retrieval 1/N for this run's N."""
    ns = sorted(retrieval_candidates(rows))
    if not ns or ns == [PAPER_CANDIDATES]:
        return f"Chance: 50% (two-way identification), 1/{PAPER_CANDIDATES} = {100 / PAPER_CANDIDATES:.2f}% (retrieval, top-1 among {PAPER_CANDIDATES})."
    levels = ", ".join(f"1/{n} = {100 / n:.2f}% among {n}" for n in ns)
    return (f"Chance: 50% (two-way identification); retrieval is top-1 among the {', '.join(map(str, ns))} test samples "
            f"available here, not the paper's {PAPER_CANDIDATES}: chance {levels} (the paper's rows: "
            f"1/{PAPER_CANDIDATES} = {100 / PAPER_CANDIDATES:.2f}%), so the columns are not comparable with the paper's.")


def write_tables(
    evaluations: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    *,
    strength: float = 0.15,
    official_code_directions: bool = False,
    with_reference: bool = True,
    title: str = "",
) -> dict[str, Path]:
    """Write ``table1.md``, ``table1.csv``, ``table5_<subject>.md`` and ``table5_<subject>.csv``.

    Returns:
        file kind -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = [c[0] for c in COLUMNS]
    rows: list[TableRow | ReferenceRow] = list(table1_rows(evaluations, strength=strength, official_code_directions=official_code_directions))
    if with_reference:
        rows += [*TABLE1_REFERENCE, TABLE7_SUBJ01]
    direction_note = (
        "Image = image_to_brain, Brain = brain_to_image (official-code mapping)" if official_code_directions
        else "Image = brain→image (for each brain sample rank 300 images), Brain = image→brain"
    )
    caption = (
        f"{title + ': ' if title else ''}Table 1 shape. Two-way identification and retrieval in %. "
        f"{chance_note(rows)} {direction_note}. Reference rows [NSD, paper]: Scotti et al. 2023, Tables 1 and 7, "
        "on the Natural Scenes Dataset."
    )
    paths = {"table1_md": out / "table1.md", "table1_csv": out / "table1.csv"}
    paths["table1_md"].write_text(to_markdown(rows, keys, caption=caption))
    paths["table1_csv"].write_text(to_csv(rows, keys))
    for subject, entry in evaluations.items():
        rows5: list[TableRow | ReferenceRow] = list(table5_rows(entry, subject=subject))
        if with_reference:
            rows5 += list(TABLE5_REFERENCE.values())
        md = out / f"table5_{subject}.md"
        cs = out / f"table5_{subject}.csv"
        cap = (f"Table 5 shape ({subject}): metrics across the img2img strength grid (0 = high-level only, 1 = low-level "
               "only). Reference rows [NSD, paper]: Scotti et al. 2023, Table 5 (NSD subject 1).")
        md.write_text(to_markdown(rows5, TABLE5_KEYS, first="Img2Img strength", caption=cap))
        cs.write_text(to_csv(rows5, TABLE5_KEYS, first="strength"))
        paths[f"table5_{subject}_md"] = md
        paths[f"table5_{subject}_csv"] = cs
    return paths
