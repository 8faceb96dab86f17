"""Tables never mislead: retrieval among fewer than 300 test samples says "among N", the caption states the
chance level actually used, and the paper's reference rows are labelled NSD."""

from __future__ import annotations

from pathlib import Path

from mindeye_core.metrics.tables import write_tables


def _entry(n: int) -> dict:
    return {"strengths": {"0.15": {"pixcorr": 0.3, "ssim": 0.3}}, "unavailable": {},
            "retrieval": {"brain_to_image": 0.5, "image_to_brain": 0.4, "n_candidates": n, "n_samples": n}}


def test_fewer_than_300_samples_say_among_n(tmp_path: Path) -> None:
    md = write_tables({"subj01": _entry(150)}, tmp_path)["table1_md"].read_text()
    assert "| Image ↑ (among 150) | Brain ↑ (among 150) |" in md
    assert "1/150 = 0.67% among 150" in md and "not the paper's 300" in md
    mindeye = next(line for line in md.splitlines() if line.startswith("| MindEye |"))
    assert "93.6% (among 300)" in mindeye and mindeye.endswith("| NSD, paper Table 1 |")


def test_rows_with_different_n_name_their_own(tmp_path: Path) -> None:
    paths = write_tables({"subj01": _entry(150), "subj02": _entry(120)}, tmp_path)
    md = paths["table1_md"].read_text()
    assert "50.0% (among 150)" in md and "50.0% (among 120)" in md and "1/120" in md and "1/150" in md
    assert "retrieval_candidates" in paths["table1_csv"].read_text().splitlines()[0]


def test_300_samples_keep_the_paper_layout(tmp_path: Path) -> None:
    md = write_tables({"subj01": _entry(300)}, tmp_path)["table1_md"].read_text()
    assert "| Image ↑ | Brain ↑ |" in md and "(among" not in md and "1/300 = 0.33%" in md
    assert "| NSD, paper Table 5 |" in (tmp_path / "table5_subj01.md").read_text()
