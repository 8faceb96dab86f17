"""ConfigModule save/load: round trips and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from mindeye_core.errors import CheckpointError, ConfigMismatchError
from mindeye_core.io import ConfigModule


class _Head(ConfigModule):
    def __init__(self, dim: int = 8, out: int = 2, act: str = "gelu") -> None:
        super().__init__()
        self.lin = torch.nn.Linear(dim, out)
        self.register_buffer("scale", torch.arange(out, dtype=torch.float32))


class _Deeper(_Head):
    pass


class _Other(ConfigModule):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(dim, 2)


def test_config_records_arguments_with_defaults() -> None:
    assert _Head(16).config == {"dim": 16, "out": 2, "act": "gelu"}
    assert _Deeper(dim=4).config == {"dim": 4, "out": 2, "act": "gelu"}


def test_round_trip_is_bit_identical(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    head = _Head(dim=5, out=3)
    head.save_pretrained(tmp_path)
    loaded = _Head.from_pretrained(tmp_path)
    assert loaded.config == head.config
    for (k, a), (_, b) in zip(head.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_fp16_save_casts_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    head = _Head()
    head.save_pretrained(tmp_path, dtype=torch.float16)
    loaded = _Head.from_pretrained(tmp_path)
    assert loaded.lin.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.lin.weight, head.lin.weight, atol=1e-3, rtol=1e-3)


def test_errors_name_the_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointError, match="missing config file"):
        _Head.from_pretrained(tmp_path / "nope")
    _Head(dim=4).save_pretrained(tmp_path)
    with pytest.raises(ConfigMismatchError, match="holds a '_Head' config file, not a '_Other' one"):
        _Other.from_pretrained(tmp_path)
    with pytest.raises(ConfigMismatchError, match="dim: saved 4, expected 8"):
        _Head.from_pretrained(tmp_path, expected_config={"dim": 8})
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigMismatchError, match="unknown config keys"):
        _Head.from_pretrained(tmp_path)
    del cfg["bogus"]
    cfg["dim"] = 6
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        _Head.from_pretrained(tmp_path)
    cfg["dim"] = 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt weights file"):
        _Head.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights file"):
        _Head.from_pretrained(tmp_path)
