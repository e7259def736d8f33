"""Packed messages through a real cluster (valkey-server, three replicas, Envoy): sessions created in a placement
group are placed on one replica by the proxy (`x-ntm-group`), a group's packed ticks are served there whole, every
answer is bit-identical to the offline run of the same graphs, and a replica killed -9 in the middle of a packed
stream loses no answered tick (the SDK resumes the stream with expect_steps on the replica the group moves to)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import Offline, bits

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import LocalCluster
from ntm_serve.server.state.store import SessionStore


@pytest.fixture(scope="module")
def cluster(copy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(copy_dir, 3, workdir=tmp_path_factory.mktemp("cluster")) as up:
        yield up


def _holders(cluster: LocalCluster, ids: list[str]) -> dict[str, dict[str, str]]:
    """Each session's record in the store (without its state): holder, steps, epoch."""
    store = SessionStore(cluster.store_url)
    try:
        return {sid: {k.decode(): v.decode() for k, v in store.sync.hgetall(store.key(sid)).items()
                      if k in (b"holder", b"steps", b"epoch")} for sid in ids}
    finally:
        store.close()


def _check_against_offline(offline: Offline, inputs: np.ndarray, outputs: np.ndarray) -> None:
    """inputs (E, T, I), outputs (E, T, O): every session's outputs equal the offline run of its inputs, bit for bit."""
    for e in range(len(inputs)):
        np.testing.assert_array_equal(outputs[e], offline.run(inputs[e])["outputs"], err_msg=f"entry {e}")


def test_a_groups_packed_ticks_are_served_on_one_replica_bit_for_bit(cluster: LocalCluster, offline: Offline,
                                                                      rng: np.random.Generator) -> None:
    """Two groups of four sessions, 24 ticks each (one step per tick, then messages of 3 steps), over one packed
    stream per group through the proxy: each group's sessions are held by one replica, which also gets each
    session's own calls (never taken over again), and all outputs are the offline run's."""
    groups = {"tick-A": 4, "tick-B": 4}
    with NTMClient(cluster.proxy, timeout=60) as client:
        ids = {g: [client.create_session("copy", group=g).session_id for _ in range(n)] for g, n in groups.items()}
        for group, members in ids.items():
            assert all(sid.startswith(f"{group}.") for sid in members)
            x = np.stack([bits(rng, 30) for _ in members])  # (E, T, I)
            ticks = [x[:, t:t + 1] for t in range(24)] + [x[:, t:t + 3] for t in range(24, 30, 3)]
            answers = list(client.stream_packed_sessions(members, ticks, start_steps=[0] * len(members)))
            assert [a.steps for a in answers][-1] == [30] * len(members)
            _check_against_offline(offline, x, np.concatenate([a.outputs for a in answers], axis=1))
            # each session's own calls go where its group is: a read elsewhere would take it over (a new epoch)
            assert [client.get_session(sid).steps for sid in members] == [30] * len(members)
            records = _holders(cluster, members)
            assert len({r["holder"] for r in records.values()}) == 1, records  # the group on one replica
            assert all(r["steps"] == "30" and r["epoch"] == "1" for r in records.values()), records  # never moved
        assert client.stats.retries == 0


def test_a_replica_killed_mid_stream_loses_no_answered_tick(cluster: LocalCluster, offline: Offline,
                                                            rng: np.random.Generator) -> None:
    """Six sessions of one group tick through one resumable packed stream; after 10 answered ticks the replica
    holding the group is killed -9. The stream is resumed on the replica the group moves to, which takes every
    session over from the store: 40 ticks answered, every one bit-identical to the offline run, the store at 40
    steps for each session, held by another replica."""
    ticks_n, kill_at = 40, 10
    with NTMClient(cluster.proxy, timeout=60) as client:
        members = [client.create_session("copy", group="kill-me").session_id for _ in range(6)]
        x = np.stack([bits(rng, ticks_n) for _ in members])  # (E, T, I)
        answered: list[np.ndarray] = []
        reached, killed = threading.Event(), threading.Event()

        def ticks() -> Iterator[np.ndarray]:
            for t in range(ticks_n):
                if t == kill_at + 2:  # two ticks in flight when the replica dies
                    killed.wait(120)
                yield x[:, t]  # (E, I): one step each

        errors: list[BaseException] = []

        def run() -> None:
            try:
                for answer in client.stream_packed_sessions(members, ticks(), start_steps=[0] * len(members)):
                    answered.append(answer.outputs)  # type: ignore[arg-type]
                    if len(answered) == kill_at:
                        reached.set()
            except BaseException as err:  # raised on the test's thread below
                errors.append(err)
                reached.set()

        consumer = threading.Thread(target=run, daemon=True)
        consumer.start()
        assert reached.wait(120) and not errors, errors
        holder = _holders(cluster, members)[members[0]]["holder"]
        index = next(i for i, node in enumerate(cluster.nodes) if node.name == holder)
        cluster.kill_replica(index)
        killed.set()
        consumer.join(180)
        assert not consumer.is_alive() and not errors, errors
        assert len(answered) == ticks_n
        _check_against_offline(offline, x, np.concatenate(answered, axis=1))
        records = _holders(cluster, members)
        assert all(r["steps"] == str(ticks_n) and r["holder"] not in ("", holder) for r in records.values()), records
        assert len({r["holder"] for r in records.values()}) == 1, records
        assert client.stats.retries > 0  # the stream broke with the replica and was resumed
    cluster.restart_replica(index)
