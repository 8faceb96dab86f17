"""The one versioned-JSON helper and its adoption by every writer/reader of such files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mindeye_core.configfile import (
    CLASS_KEY,
    VERSION_KEY,
    dump_versioned_config,
    read_versioned_config,
    write_versioned_config,
)
from mindeye_core.errors import CheckpointError, ConfigMismatchError, DataFormatError
from mindeye_core.io import ConfigModule


def test_round_trip_with_meta(tmp_path) -> None:
    path = write_versioned_config(tmp_path / "sub" / "c.json", kind="Thing", version=3,
                                  data={"a": 1, "b": [1, 2]}, meta={"provenance": {"sha256": "ab"}})
    raw = json.loads(path.read_text())
    assert raw[CLASS_KEY] == "Thing" and raw[VERSION_KEY] == 3 and raw["_provenance"] == {"sha256": "ab"}
    cfg = read_versioned_config(path, kind="Thing", version=[1, 2, 3])
    assert (cfg.kind, cfg.version, cfg.data, cfg.meta) == ("Thing", 3, {"a": 1, "b": [1, 2]}, {"provenance": {"sha256": "ab"}})
    assert not (tmp_path / "sub" / "c.json.tmp").exists()
    assert json.loads(dump_versioned_config("Thing", 3, {"a": 1}))["a"] == 1


def test_newer_and_unknown_versions_are_refused_with_one_message(tmp_path) -> None:
    path = tmp_path / "c.json"
    for saved, hint in ((2, "newer mindeye_core: upgrade"), (0, "corrupt or was not written"),
                        ("1", "corrupt or was not written"), (True, "corrupt or was not written")):
        path.write_text(json.dumps({CLASS_KEY: "Thing", VERSION_KEY: saved}))
        with pytest.raises(ConfigMismatchError, match=rf"Thing format version {saved!r} is not supported "
                                                      rf"\(this code reads version 1\); .*{hint}"):
            read_versioned_config(path, kind="Thing", version=1, mismatch_error=ConfigMismatchError)
    path.write_text(json.dumps({CLASS_KEY: "Thing"}))
    with pytest.raises(CheckpointError, match="version None is not supported"):
        read_versioned_config(path, kind="Thing", version=1)
    assert read_versioned_config(path, kind="Thing", version=1, missing_version=1).version == 1


def test_kind_missing_and_corrupt_files(tmp_path) -> None:
    path = tmp_path / "c.json"
    with pytest.raises(DataFormatError, match=r"missing manifest: expected .*c.json \(hint\)"):
        read_versioned_config(path, kind="Thing", version=1, error=DataFormatError, what="manifest", missing_hint=" (hint)")
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="corrupt config file .*expected a JSON object, got list"):
        read_versioned_config(path, kind="Thing", version=1)
    path.write_text("{oops")
    with pytest.raises(CheckpointError, match="corrupt config file"):
        read_versioned_config(path, kind="Thing", version=1)
    write_versioned_config(path, kind="Other", version=1, data={})
    with pytest.raises(ConfigMismatchError, match="holds a 'Other' config file, not a 'Thing' one"):
        read_versioned_config(path, kind="Thing", version=1, mismatch_error=ConfigMismatchError)
    assert read_versioned_config(path, kind=None, version=1).kind == "Other"
    with pytest.raises(ValueError, match="reserved"):
        write_versioned_config(path, kind="Thing", version=1, data={"_class": "x"})
    with pytest.raises(ValueError, match="positive int"):
        write_versioned_config(path, kind="Thing", version=0, data={})


def test_legacy_key_names_still_read(tmp_path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "mindeye-results", "version": 1, "subjects": {}}))
    cfg = read_versioned_config(path, kind="mindeye-results", version=1, legacy_kind_key="format",
                                legacy_version_key="version")
    assert cfg.data == {"subjects": {}}
    path.write_text(json.dumps({"format": "mindeye-results", "version": 9}))
    with pytest.raises(CheckpointError, match="version 9 is not supported.*newer"):
        read_versioned_config(path, kind="mindeye-results", version=1, legacy_kind_key="format",
                              legacy_version_key="version")


class _Tiny(ConfigModule):
    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(dim, 1)


def test_config_module_and_ridge_use_the_helper(tmp_path) -> None:
    from mindeye_core.models.ridge import RidgeBaseline

    folder = _Tiny(dim=2).save_pretrained(tmp_path / "tiny")
    assert read_versioned_config(folder / "config.json", kind="_Tiny", version=1).data == {"dim": 2}
    raw = json.loads((folder / "config.json").read_text())
    raw[VERSION_KEY] = 2
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigMismatchError, match="format version 2 is not supported .*newer"):
        _Tiny.from_pretrained(folder)
    x = np.random.default_rng(0).normal(size=(20, 4))
    ridge_dir = RidgeBaseline(alphas=(1.0,), cv=0).fit(x, x[:, :2]).save(tmp_path / "ridge")
    cfg = read_versioned_config(ridge_dir / "config.json", kind="RidgeBaseline", version=1)
    assert cfg.data["fitted"]["n_voxels_"] == 4
    raw = json.loads((ridge_dir / "config.json").read_text())
    raw[VERSION_KEY] = 5
    (ridge_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigMismatchError, match="format version 5 is not supported .*newer"):
        RidgeBaseline.load(ridge_dir)


def test_dataset_manifest_uses_the_helper_and_reads_old_manifests(tmp_path) -> None:
    from mindeye_core.data.format import DatasetWriter, open_dataset, read_manifest

    with DatasetWriter(tmp_path / "ds", name="toy", world="test") as w:
        w.append_images(np.zeros((2, 4, 4, 3), np.uint8))
        w.subject("subj01", n_voxels=3).append(np.zeros((2, 3), np.float32), np.arange(2), np.array([0, 1]),
                                               np.zeros(2, np.int16))
        root = w.finalize()
    raw = json.loads((root / "manifest.json").read_text())
    assert raw[CLASS_KEY] == "mindeye-dataset" and raw[VERSION_KEY] == 1 and "format_version" not in raw
    # a manifest written before the helper (``format`` / ``format_version``) still opens
    raw["format"], raw["format_version"] = raw.pop(CLASS_KEY), raw.pop(VERSION_KEY)
    (root / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(root)["name"] == "toy" and open_dataset(root).n_images == 2
    raw["format_version"] = 2
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(DataFormatError, match="mindeye-dataset format version 2 is not supported .*newer"):
        open_dataset(root)
