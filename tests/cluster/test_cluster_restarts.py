"""Restarts of the parts that hold no session state of their own, through the real processes: the proxy killed -9
and started again while a session streams through it, and the whole cluster (a replicated store whose primary
moved, the replicas, the proxy) stopped and started again on its data. Nothing acknowledged is lost; outputs are
bit-identical to an offline run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from helpers import Offline, bits

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import LocalCluster, store_role


def test_a_proxy_killed_and_restarted_loses_nothing(copy_dir: Path, offline: Offline, rng: np.random.Generator,
                                                    tmp_path: Path) -> None:
    """A session streams through the proxy; after four answers the proxy is killed -9 and started again on its
    ports (from this thread: a process dies with the thread that started it), then the stream goes on."""
    x = bits(rng, 40)
    chunks = [x[i:i + 4] for i in range(0, 40, 4)]
    out: list[np.ndarray] = []
    errors: list[BaseException] = []
    four, restarted = threading.Event(), threading.Event()

    def feed() -> Iterator[np.ndarray]:
        for k, chunk in enumerate(chunks):
            if k == 4:
                restarted.wait(120)
            yield chunk

    with LocalCluster(copy_dir, 2, workdir=tmp_path / "cluster") as cluster, \
            NTMClient(cluster.proxy, timeout=60) as client:
        sid = client.create_session("copy").session_id

        def consume() -> None:
            try:
                for output in client.stream_session(sid, feed(), start_steps=0):
                    out.append(output.outputs)  # type: ignore[arg-type]
                    if len(out) == 4:
                        four.set()
            except BaseException as err:  # raised below, on the test's thread
                errors.append(err)
                four.set()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        assert four.wait(120) and not errors
        cluster.restart_proxy()
        restarted.set()
        consumer.join(120)
        assert not errors, errors
        assert client.get_session(sid).steps == 40
    assert np.array_equal(np.concatenate(out), offline.run(x)["outputs"])
    assert client.stats.retries > 0  # the stream broke with the proxy and was resumed


def test_the_whole_cluster_restarted_on_its_data_loses_nothing(copy_dir: Path, offline: Offline,
                                                               rng: np.random.Generator, tmp_path: Path) -> None:
    """Steps, a store failover (the first node is a replica now), more steps; everything stopped (SIGTERM) and
    started again from the same directory: the session goes on from its last acknowledged step."""
    x = bits(rng, 12)
    work = tmp_path / "cluster"
    with LocalCluster(copy_dir, 1, workdir=work, store_replicas=1) as cluster, \
            NTMClient(cluster.proxy, timeout=60) as client:
        sid = client.create_session("copy").session_id
        out = [client.step(sid, x[:4], expect_steps=0).outputs]
        old = cluster.primary()
        cluster.kill_store_node(old)
        cluster.wait_failover(old.port)
        cluster.restart_store_node(old)
        cluster.wait_store_settled(30)
        assert store_role(cluster.stores[0].port) == "replica"
        out.append(client.step(sid, x[4:8], expect_steps=4).outputs)
    with LocalCluster(copy_dir, 1, workdir=work, store_replicas=1) as cluster, \
            NTMClient(cluster.proxy, timeout=60) as client:
        out.append(client.step(sid, x[8:], expect_steps=8).outputs)
        assert client.get_session(sid).steps == 12
    assert np.array_equal(np.concatenate(out), offline.run(x)["outputs"])
