"""Test sandbox: no network, data and cache dirs in tmp, offline hubs, deterministic torch."""

from __future__ import annotations

import os
import socket

import pytest

# Set before anything imports huggingface_hub / transformers / diffusers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class NetworkAccessInTest(RuntimeError):
    """Raised when a test tries to reach a non-local host."""


_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0"}
_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection
_real_getaddrinfo = socket.getaddrinfo


def _host_of(address: object) -> str | None:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None  # unix sockets


def _guard_connect(self: socket.socket, address: object) -> None:
    host = _host_of(address)
    if host is not None and host not in _LOCAL_HOSTS:
        raise NetworkAccessInTest(f"test tried to open a network connection to {address!r}")
    return _real_connect(self, address)


def _guard_create_connection(address, *args, **kwargs):  # type: ignore[no-untyped-def]
    host = _host_of(address)
    if host is not None and host not in _LOCAL_HOSTS:
        raise NetworkAccessInTest(f"test tried to open a network connection to {address!r}")
    return _real_create_connection(address, *args, **kwargs)


def _guard_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if host is not None and str(host) not in _LOCAL_HOSTS:
        raise NetworkAccessInTest(f"test tried to resolve the host {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guard_connect  # type: ignore[method-assign]
socket.create_connection = _guard_create_connection  # type: ignore[assignment]
socket.getaddrinfo = _guard_getaddrinfo  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _sandbox_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point MINDEYE_DATA / MINDEYE_CACHE / HF_HOME at per-test temporary folders."""
    root = tmp_path_factory.mktemp("mindeye_home")
    monkeypatch.setenv("MINDEYE_DATA", str(root / "data"))
    monkeypatch.setenv("MINDEYE_CACHE", str(root / "cache"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
