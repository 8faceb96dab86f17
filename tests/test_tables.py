"""Tables: the reference rows print exactly as the paper prints them; our rows, CSV, strengths, directions."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from mindeye_core.metrics.tables import (
    COLUMNS,
    TABLE1_REFERENCE,
    TABLE5_KEYS,
    TABLE5_REFERENCE,
    format_value,
    pick_strength,
    table1_rows,
    to_csv,
    to_markdown,
    write_tables,
)

# Rows as printed in the paper's text (tab-separated), Table 1 and Table 5.
PAPER_TABLE1 = """\
Ozcelik et al. [4]\t.254\t.356\t94.2%\t96.2%\t87.2%\t91.5%\t.775\t.423\t21.1%\t30.3%
MindEye\t.309\t.323\t94.7%\t97.8%\t93.8%\t94.1%\t.645\t.367\t93.6%\t90.1%
MindEye (Low-Level)\t.360\t.479\t78.1%\t74.8%\t58.7%\t59.2%\t1.00\t.663\t—\t—
MindEye (High-Level)\t.194\t.308\t91.7%\t97.4%\t93.6%\t94.2%\t.645\t.369\t93.6%\t90.1%
MindEye (LAION)\t.130\t.308\t84.0%\t92.6%\t86.9%\t86.1%\t.778\t.477\t—\t—
Ozcelik et al. (Low-, S1)\t.358\t.437\t97.7%\t97.6%\t77.0%\t71.1%\t.906\t.581\t—\t—
MindEye (Low-, S1)\t.456\t.493\t87.1%\t84.1%\t61.6%\t62.4%\t.992\t.638\t—\t—"""

PAPER_TABLE5 = """\
1.0\t.456\t.493\t87.1%\t84.1%\t61.6%\t62.4%\t.992\t.638
0.7\t.439\t.416\t92.7%\t95.1%\t90.0%\t87.5%\t.803\t.514
0.5\t.429\t.389\t96.3%\t98.4%\t94.7%\t92.3%\t.674\t.405
0.3\t.410\t.358\t97.5%\t98.8%\t94.7%\t94.5%\t.638\t.362
0.15\t.390\t.337\t97.4%\t98.7%\t94.5%\t94.6%\t.630\t.358
0.0\t.209\t.318\t92.8%\t98.0%\t94.5%\t94.8%\t.635\t.361"""


def test_reference_rows_print_as_in_the_paper() -> None:
    keys = [c[0] for c in COLUMNS]
    got = "\n".join("\t".join([r.method, *[format_value(k, r.values[k]) for k in keys]]) for r in TABLE1_REFERENCE)
    assert got == PAPER_TABLE1
    rows5 = [TABLE5_REFERENCE[s] for s in (1.0, 0.7, 0.5, 0.3, 0.15, 0.0)]
    got5 = "\n".join("\t".join([f"{s:g}" if s != 1.0 and s != 0.0 else f"{s:.1f}", *[format_value(k, r.values[k]) for k in TABLE5_KEYS]])
                     for s, r in zip((1.0, 0.7, 0.5, 0.3, 0.15, 0.0), rows5))
    assert got5 == PAPER_TABLE5
    assert TABLE1_REFERENCE[1].values["alexnet2"] == pytest.approx(0.947)


def test_format_value() -> None:
    assert format_value("pixcorr", 0.3094) == ".309"
    assert format_value("effnet", 1.0) == "1.00"
    assert format_value("clip", 0.9412) == "94.1%"
    assert format_value("pixcorr", -0.05) == "-.050"
    assert format_value("ssim", None) == "—"
    assert format_value("swav", "n/a") == "n/a"


def _entry(shift: float, retrieval: tuple[float, float] = (0.9, 0.8)) -> dict:
    base = {"pixcorr": 0.3 + shift, "ssim": 0.32, "alexnet2": 0.9, "alexnet5": 0.95, "inception": 0.9, "clip": 0.93, "effnet": 0.7}
    return {
        "strengths": {"0": dict(base, pixcorr=0.2), "0.15": base, "1": dict(base, pixcorr=0.45)},
        "unavailable": {"swav": "weights not cached"},
        "retrieval": {"brain_to_image": retrieval[0], "image_to_brain": retrieval[1]},
        "blurry": {"pixcorr": 0.5, "ssim": 0.5},
    }


def test_table1_rows_and_directions() -> None:
    evals = {"subj01": _entry(0.0), "subj02": _entry(0.1, (0.7, 0.6))}
    rows = table1_rows(evals)
    assert [r.method for r in rows] == ["Ours (mean of 2 subjects)", "Ours (subj01, strength 0.15)", "Ours (Low-Level, subj01)",
                                        "Ours (subj02, strength 0.15)", "Ours (Low-Level, subj02)"]
    assert rows[0].values["pixcorr"] == pytest.approx(0.35)
    assert rows[0].values["image_retrieval"] == pytest.approx(0.8)
    assert rows[0].values["swav"] == "n/a"
    assert rows[1].values["image_retrieval"] == 0.9 and rows[1].values["brain_retrieval"] == 0.8
    swapped = table1_rows(evals, official_code_directions=True)
    assert swapped[1].values["image_retrieval"] == 0.8 and swapped[1].values["brain_retrieval"] == 0.9
    assert "1" in table1_rows({"s": _entry(0)}, strength=0.9)[0].method
    assert pick_strength(["0", "0.2", "1"], 0.15) == "0.2"


def test_write_tables_markdown_and_csv(tmp_path: Path) -> None:
    paths = write_tables({"subj01": _entry(0.0)}, tmp_path / "t")
    md = paths["table1_md"].read_text()
    assert "| Method | PixCorr ↑ | SSIM ↑ | Alex(2) ↑ | Alex(5) ↑ | Incep ↑ | CLIP ↑ | Eff ↓ | SwAV ↓ | Image ↑ | Brain ↑ | Source |" in md
    assert "| Ours (subj01, strength 0.15) | .300 | .320 | 90.0% | 95.0% | 90.0% | 93.0% | .700 | n/a | 90.0% | 80.0% | this run |" in md
    assert "| MindEye (Subj 1) |" in md
    rows = list(csv.DictReader(io.StringIO(paths["table1_csv"].read_text())))
    assert rows[0]["pixcorr"] == "0.3" and rows[0]["swav"] == "n/a"
    mind = next(r for r in rows if r["method"] == "MindEye (Low-Level)")
    assert mind["image_retrieval"] == "" and float(mind["effnet"]) == 1.0
    md5 = paths["table5_subj01_md"].read_text()
    lines = [ln for ln in md5.splitlines() if ln.startswith("| Ours")]
    assert [ln.split(" | ")[0] for ln in lines] == ["| Ours subj01 1", "| Ours subj01 0.15", "| Ours subj01 0"]
    assert "0.15 (MindEye default)" in md5


def test_markdown_and_csv_have_consistent_shape() -> None:
    rows = list(TABLE1_REFERENCE)
    keys = [c[0] for c in COLUMNS]
    md = to_markdown(rows, keys)
    assert all(line.count("|") == len(keys) + 3 for line in md.strip().splitlines())
    assert len(to_csv(rows, keys).strip().splitlines()) == len(rows) + 1


def test_table1_rows_ridge_and_ceiling_entries(tmp_path: Path) -> None:
    entry = _entry(0.0)
    entry["ridge"] = {"strengths": {"0.15": {"pixcorr": 0.1, "ssim": 0.2}},
                      "retrieval": {"brain_to_image": 0.25, "image_to_brain": 0.125}}
    entry["ceiling"] = {"strengths": {"0": {"pixcorr": 0.6}, "0.15": {"pixcorr": 0.7, "clip": 0.99}},
                        "unavailable": {"clip": "no weights"}}
    evals = {"subj01": entry, "subj02": _entry(0.1)}
    rows = table1_rows(evals)
    assert [r.method for r in rows] == [
        "Ours (mean of 2 subjects)", "Ours (subj01, strength 0.15)", "Ours (Low-Level, subj01)",
        "Ridge (this bundle, subj01)", "Generator ceiling (subj01)", "Ours (subj02, strength 0.15)", "Ours (Low-Level, subj02)"]
    assert rows[0].values["pixcorr"] == pytest.approx(0.35)  # the mean is over the final-model rows only
    ridge, ceiling = rows[3].values, rows[4].values
    assert (ridge["pixcorr"], ridge["ssim"], ridge["image_retrieval"], ridge["brain_retrieval"]) == (0.1, 0.2, 0.25, 0.125)
    assert ridge["swav"] == "n/a"  # the subject's unavailable metrics apply when the entry has none
    assert (ceiling["pixcorr"], ceiling["clip"], ceiling["swav"], ceiling["image_retrieval"]) == (0.7, 0.99, None, None)
    assert table1_rows(evals, official_code_directions=True)[3].values["image_retrieval"] == 0.125
    entry["ceiling"] = {"strengths": {}}  # empty entries give no row
    assert "Generator ceiling (subj01)" not in [r.method for r in table1_rows(evals)]
    md = write_tables({"subj01": entry}, tmp_path / "t")["table1_md"].read_text()
    assert "| Ridge (this bundle, subj01) | .100 | .200 | — | — | — | — | — | n/a | 25.0% | 12.5% | this run |" in md
    with pytest.raises(ValueError, match="subj03: no strengths evaluated"):
        table1_rows({"subj03": {"strengths": {}}})
