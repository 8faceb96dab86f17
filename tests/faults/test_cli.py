"""The CLI answers every expected failure with one line on stderr naming the problem and a non-zero exit; a
traceback only with --debug; values are validated before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import write_dataset

from mindeye_core import cli
from mindeye_core.errors import DataFormatError


@pytest.fixture(autouse=True)
def _stable_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the sub-commands these tests drive (others may be mid-edit in a shared tree)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["mindeye_core.data.demo_cli", "mindeye_core.data.nsd",
                                                 "mindeye_core.metrics.cli"])


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args, message", [
    (["demo", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["demo", "--noise-level", "nan"], "argument --noise-level: must be a finite number"),
    (["demo", "--train-images", "0"], "argument --train-images: must be >= 1"),
    (["evaluate", "{bundle}", "--n-draws", "0"], "argument --n-draws: must be >= 1, got 0"),
    (["evaluate", "{bundle}", "--batch-size", "zero"], "argument --batch-size: expected an integer, got 'zero'"),
    (["evaluate", "{bundle}", "--device", "banana"], "argument --device: unknown torch device 'banana'"),
    (["evaluate", "{bundle}", "--device", "cuda:9"], "argument --device: device 'cuda:9'"),
    (["demo", "--out", "{file}"], "argument --out: folder {file} is a file, not a folder"),
    (["nsd", "convert", "--source", "{file}"], "argument --source: {file} is a file, not a folder"),
    (["evaluate", "{bundle}", "--out", "{file}/tables"], "is a file, not a folder"),
], ids=["seed", "noise_nan", "train_images", "n_draws", "batch_size", "device", "device_index", "out_file",
        "source_file", "out_below_file"])
def test_bad_values_are_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list,
                                                 message: str) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("x")
    (tmp_path / "bundle").mkdir()
    fill = {"bundle": str(tmp_path / "bundle"), "file": str(file)}
    with pytest.raises(SystemExit) as stop:
        cli.main([a.format(**fill) for a in args])
    assert stop.value.code == 2
    assert message.format(**fill) in _one_line(capsys)


def test_expected_failure_is_one_line_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert cli.main(["evaluate", str(tmp_path / "empty")]) == 1
    assert "not a results bundle: missing" in _one_line(capsys)


def test_existing_destination_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "mine.txt").write_text("x")
    assert cli.main(["demo", "--small", "--out", str(root), "--quiet", "--overwrite"]) == 1
    err = _one_line(capsys)
    assert err.startswith("mindeye demo: error: refusing to overwrite") and (root / "mine.txt").is_file()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="not a results bundle"):
        cli.main(["evaluate", str(tmp_path / "empty"), "--debug"])


def test_os_and_key_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import mindeye_core.data.demo_cli as demo_cli

    def boom(args: object) -> int:
        raise KeyError("subject 'subj09' not in dataset /x (available: subj01)")

    monkeypatch.setattr(demo_cli, "run_demo", boom)
    assert cli.main(["demo"]) == 1
    assert "mindeye demo: error: subject 'subj09' not in dataset" in _one_line(capsys)

    def full(args: object) -> int:
        raise OSError(28, "No space left on device\n(details on a second line)")

    monkeypatch.setattr(demo_cli, "run_demo", full)
    assert cli.main(["demo"]) == 1
    assert "No space left on device (details on a second line)" in _one_line(capsys)


def test_written_dataset_summary_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_dataset(tmp_path / "world")
    assert cli.main(["demo", "--out", str(root), "--quiet"]) == 1  # not a demo world: refused, one line
    assert "not a usable demo world" in _one_line(capsys)
