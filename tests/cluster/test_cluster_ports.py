"""The launcher against the port race, provoked on purpose: the ports it picks for the store and the proxy are
already taken (one by another real valkey-server that answers PING there, one by a plain listener), and a replica
restarted on its old port finds it held. Real processes throughout (valkey-server, Envoy, `python -m
ntm_serve.server`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import (
    ClusterError,
    LocalCluster,
    Proc,
    healthy,
    start_on_free_ports,
    store_proc,
    store_ready,
    wait_ready,
)
from ntm_serve.server.ports import IN_USE, LOCAL, free_port, listens
from ntm_serve.server.state.store import SessionStore


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[Proc]:
    """Another store on a loopback port: whoever takes its port and asks PING there gets +PONG, not from itself."""
    (tmp_path / "impostor").mkdir()
    proc = start_on_free_ports(lambda: store_proc(free_port(), tmp_path / "impostor", tmp_path / "impostor.log",
                                                  durable=False), store_ready, 30)
    yield proc
    proc.signal(15)
    proc.wait(10)


def _listener(port: int = 0, share: bool = False) -> socket.socket:
    """share: SO_REUSEPORT, as another Envoy's listener has it (one that sets it too would share the port)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port the last holder left in TIME_WAIT is free
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(share))
    s.bind((LOCAL, port))
    s.listen()
    return s


def _keys(url: str) -> int:
    store = SessionStore(url)
    try:
        return int(store.sync.dbsize())
    finally:
        store.close()


def _one_call(target: str) -> None:
    with NTMClient(target, timeout=60) as client:
        session = client.create_session("copy")
        assert client.step(session.session_id, np.zeros((4, 9), np.float32)).steps == 4


def test_store_and_proxy_come_up_when_their_picked_ports_are_taken(copy_dir: Path, tmp_path: Path,
                                                                   impostor: Proc) -> None:
    """pick_port hands the store the impostor's port, then the proxy a port held by a listener that would share it
    (SO_REUSEPORT): each child fails to bind, the launcher sees IN_USE in its log, starts it on new ports, and the
    cluster serves, with its sessions in its own store (the impostor answered PING on the first port but never
    became the cluster's store)."""
    with _listener(share=True) as held:
        picks = iter([impostor.port, None, held.getsockname()[1], None])  # None: a free port
        with LocalCluster(copy_dir, 1, "cpu", workdir=tmp_path / "cluster",
                          pick_port=lambda: next(picks, None) or free_port()) as cluster:
            assert next(picks, "used") == "used"  # every taken port was handed out
            assert cluster.store is not None and cluster.envoy is not None
            assert IN_USE in (tmp_path / "cluster" / "store.log").read_text()
            assert IN_USE in (tmp_path / "cluster" / "envoy.log").read_text()
            assert cluster.store.port not in (impostor.port, held.getsockname()[1])
            assert cluster.proxy_port not in (impostor.port, held.getsockname()[1])
            assert listens(cluster.store.pid, cluster.store.port) and listens(cluster.envoy.pid, cluster.proxy_port)
            _one_call(cluster.proxy)
            assert _keys(cluster.store_url) >= 1 and _keys(f"redis://{LOCAL}:{impostor.port}/0") == 0


def test_replicas_bind_port_0_and_a_restart_wants_its_old_port_back(copy_dir: Path, tmp_path: Path) -> None:
    """A replica's first port is its own choice (port file); restarted, it must have that port again (the proxy
    routes there): while another process holds it, restart_replica fails naming the port (after port_wait_s),
    and once the port is free again the same call brings the replica back, on that port, behind the proxy."""
    with LocalCluster(copy_dir, 1, "cpu", workdir=tmp_path / "cluster", port_wait_s=0) as cluster:
        node = cluster.nodes[0]
        port = node.port
        assert port != 0 and listens(node.pid, port)
        cluster.kill_replica(0)
        with _listener(port):
            with pytest.raises(ClusterError, match=f"replica-0 cannot get its port {port} back"):
                cluster.restart_replica(0)
            assert f"cannot bind the gRPC port {LOCAL}:{port}: {IN_USE}" in node.tail()
        cluster.restart_replica(0)
        assert node.port == port and listens(node.pid, port)
        assert cluster.envoy is not None
        wait_ready(cluster.envoy, lambda: healthy(cluster.proxy), 30)  # the proxy's health check saw it come back
        _one_call(cluster.proxy)
