"""The sandbox itself: network attempts fail loudly, data dirs are redirected."""

from __future__ import annotations

import socket

import pytest

from mindeye_core import paths


def test_network_is_blocked() -> None:
    with pytest.raises(RuntimeError, match="network connection"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(RuntimeError, match="resolve the host"):
        socket.getaddrinfo("huggingface.co", 443)


def test_hub_download_fails_offline() -> None:
    from huggingface_hub import hf_hub_download

    with pytest.raises(Exception) as info:
        hf_hub_download("openai/clip-vit-large-patch14", "config.json")
    assert "offline" in str(info.value).lower() or "network" in str(info.value).lower() or "connect" in str(info.value).lower()


def test_paths_follow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MINDEYE_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("MINDEYE_CACHE", str(tmp_path / "c"))
    assert paths.data_dir() == tmp_path / "d"
    assert paths.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MINDEYE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert paths.data_dir() == tmp_path / "x" / "mindeye" / "data"
