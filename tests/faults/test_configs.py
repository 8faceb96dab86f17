"""Saved configs are checked key by key on load: a missing constructor argument, a value of the wrong type, a
non-finite number or a value the constructor refuses raises ConfigMismatchError naming the key and the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from faultkit import write_dataset

from mindeye_core.data.format import open_dataset
from mindeye_core.errors import ConfigMismatchError, DataFormatError
from mindeye_core.models import BrainMLP


def _saved(tmp_path: Path, edit: Any) -> Path:
    folder = BrainMLP(n_voxels=20, hidden=12, n_blocks=1, n_tokens=3, dim=8, proj_hidden=10).save_pretrained(tmp_path / "m")
    path = folder / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("hidden"), r"config key\(s\) \['hidden'\] of BrainMLP missing"),
    (lambda d: d.update(hidden="12"), r"config key 'hidden' of BrainMLP must be an integer, got '12'"),
    (lambda d: d.update(dropout_in=float("nan")), r"config key 'dropout_in' of BrainMLP must be a finite number"),
    (lambda d: d.update(use_projector=1), r"config key 'use_projector' of BrainMLP must be true or false"),
    (lambda d: d.update(n_voxels=-5), r"BrainMLP refuses this config: BrainMLP: n_voxels must be a positive integer"),
], ids=["missing", "wrong_type", "nan", "int_for_bool", "out_of_range"])
def test_bad_saved_config_is_refused_naming_key_and_file(tmp_path: Path, edit: Any, message: str) -> None:
    folder = _saved(tmp_path, edit)
    with pytest.raises(ConfigMismatchError, match=message) as info:
        BrainMLP.from_pretrained(folder)
    assert str(folder / "config.json") in str(info.value)


def test_dataset_manifest_missing_a_key_is_refused(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds")
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    del data["n_images"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"manifest\.json: missing key 'n_images'"):
        open_dataset(root)
