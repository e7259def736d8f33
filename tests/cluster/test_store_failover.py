"""The replicated store on its own (real valkey-server primaries, replicas and Sentinels on loopback; the store
client as the replicas use it): what a committed write means (on `min_replicas` store replicas, else refused and
not acknowledged), fencing across a failover, a stalled primary that comes back stale, two nodes lost at once,
a node that lost its disk. The same faults under live sessions through the proxy: test_store_faults.py."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from helpers import Offline, bits, service_config

from ntm_serve.api.replay import REPLAY_DEPTH
from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import LOCAL, ClusterError, LocalCluster, store_role
from ntm_serve.server.config import ServiceConfig
from ntm_serve.server.server import ServerThread
from ntm_serve.server.state.store import CommitItem, SessionStore, StoreUnavailable, state_blob
from ntm_serve.server.state.store_url import SentinelTarget, check_store_url, parse_sentinel
from tests.store_faults import stale_write

SID = "s-failover"


def _blob(steps: int) -> bytes:
    return state_blob(SID, "m", "", 600.0, 0.0, steps, "d", {"memory": np.full((4, 3), steps, np.float32)})


def _item(epoch: int, start: int, end: int) -> CommitItem:
    return CommitItem(SID, epoch, start, end, _blob(end), f"r{end}", 1, np.zeros(8, "<f4").tobytes(), 600.0)


_LOOP: list[asyncio.AbstractEventLoop] = []


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """The async client's calls on one event loop per test (its connections belong to the loop)."""
    return _LOOP[0].run_until_complete(coro)


async def _create_and_claim(store: SessionStore, holder: str) -> int:
    assert await store.create(SID, model="m", version="1", digest="d", owner="", ttl_s=600.0, created_wall=0.0,
                              steps=0, blob=_blob(0))
    return await _claim(store, holder)


async def _claim(store: SessionStore, holder: str) -> int:
    claim = await store.claim(SID, "", ["d"], holder)
    assert claim.outcome == "ok" and claim.session is not None
    return claim.session.epoch


def _fresh(url: str, **kwargs: int) -> SessionStore:
    """A new client (its own connections), as a replica restarted or another replica would have."""
    return SessionStore(url, **kwargs)


def _record(port: int) -> dict[str, str]:
    client = redis.Redis(LOCAL, port, decode_responses=False)
    try:
        return {k.decode(): v.decode() for k, v in client.hgetall(f"ntm:s:{{{SID}}}").items() if k != b"state"}
    finally:
        client.close()


@pytest.fixture
def replicated(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A store alone: a primary, `store_replicas` replicas, three Sentinels (down after 1 s)."""
    replicas, min_replicas = request.param
    cluster = LocalCluster(tmp_path, 0, workdir=tmp_path / "store", store_replicas=replicas,
                           store_min_replicas=min_replicas, store_wait_ms=300)
    cluster.start_store()
    _LOOP.append(asyncio.new_event_loop())
    try:
        yield cluster
    finally:
        _LOOP.pop().close()
        cluster.stop()


def test_store_url_forms() -> None:
    assert parse_sentinel("redis+sentinel://a:26379,10.0.0.2:26380/ntm") == SentinelTarget(
        (("a", 26379), ("10.0.0.2", 26380)), "ntm", 0, None)
    assert parse_sentinel("redis+sentinel://:pw@a:1/ntm/3") == SentinelTarget((("a", 1),), "ntm", 3, "pw")
    for url in ("redis://h:6379/0", "rediss://h:6380", "unix:///tmp/v.sock"):
        check_store_url(url)
    for url, words in (("redis+sentinel://a:1", "no service name"), ("redis+sentinel:///ntm", "no sentinel address"),
                       ("redis+sentinel://a/ntm", "not host:port"), ("redis+sentinel://a:1/ntm/x", "/service[/db]"),
                       ("http://h:1", "store_url must be")):
        with pytest.raises(ValueError, match=re.escape(words)):
            check_store_url(url)
    with pytest.raises(ValueError, match="store_min_replicas needs store_url"):
        ServiceConfig(models=Path("."), store_min_replicas=1)
    with pytest.raises(ValueError, match="store_wait_ms"):
        ServiceConfig(models=Path("."), store_url="redis://h:1/0", store_wait_ms=0)
    with pytest.raises(ClusterError, match=r"store_min_replicas must be in 0\.\.store_replicas"):
        LocalCluster(Path("."), 1, store_replicas=1, store_min_replicas=2).start()


@pytest.mark.parametrize("replicated", [(1, 1)], indirect=True)
def test_a_write_counts_only_once_on_the_store_replicas(replicated: LocalCluster) -> None:
    """A commit the store applied but its replica did not confirm within wait_ms is StoreUnavailable (the replica
    answers UNAVAILABLE, nothing acknowledged); so is a take-over; once the replica is back, the retried commit is
    recognised as applied and confirmed."""
    store = _fresh(replicated.store_url, min_replicas=1, wait_ms=300)
    epoch = _run(_create_and_claim(store, "a"))
    assert store.commit_many([_item(epoch, 0, 1)]) == [("ok", "")]
    replica = replicated.stores[1]
    replicated.kill_store_node(replica, signal.SIGSTOP)
    try:
        [refused] = store.commit_many([_item(epoch, 1, 2)])
        assert isinstance(refused, StoreUnavailable) and "written on 0 of the 1 store replicas" in str(refused)
        assert _record(replicated.primary().port)["steps"] == "2"  # applied on the primary, yet not acknowledged
        with pytest.raises(StoreUnavailable, match="written on 0 of the 1"):
            _run(store.claim(SID, "", ["d"], "b"))
        unreplicated = _fresh(replicated.store_url)  # min_replicas 0: the primary's word would do
        assert unreplicated.commit_many([_item(epoch + 1, 2, 3)]) == [("ok", "")]
    finally:
        replicated.kill_store_node(replica, signal.SIGCONT)
    store = _fresh(replicated.store_url, min_replicas=1, wait_ms=2000)
    assert store.commit_many([_item(epoch + 1, 2, 3)]) == [("ok", "")]  # the retry: already applied, now confirmed
    assert _record(replica.port)["steps"] == "3"


@pytest.mark.parametrize("replicated", [(2, 1)], indirect=True)
def test_fencing_holds_across_a_failover(replicated: LocalCluster) -> None:
    """a holds the session and commits; b takes it over (confirmed by a replica); the primary is killed -9. On
    the promoted replica a's commit is fenced, b's lands, and a's acknowledged step is there."""
    url = replicated.store_url
    a, b = _fresh(url, min_replicas=1, wait_ms=1000), _fresh(url, min_replicas=1, wait_ms=1000)
    epoch_a = _run(_create_and_claim(a, "a"))
    assert a.commit_many([_item(epoch_a, 0, 1)]) == [("ok", "")]
    epoch_b = _run(_claim(b, "b"))
    old = replicated.primary()
    replicated.kill_store_node(old)
    replicated.wait_failover(old.port)
    promoted = _record(replicated.primary().port)
    assert (promoted["holder"], promoted["epoch"], promoted["steps"]) == ("b", str(epoch_b), "1")
    assert a.commit_many([_item(epoch_a, 1, 2)]) == [("fenced", str(epoch_b))]
    assert b.commit_many([_item(epoch_b, 1, 2)]) == [("ok", "")]
    record = _record(replicated.primary().port)
    last = int(record["seq"]) % REPLAY_DEPTH  # the ring slot of the last recorded answer
    assert (record["steps"], record["epoch"], record[f"rid:{last}"]) == ("2", str(epoch_b), "r2")


@pytest.mark.parametrize("replicated", [(1, 0)], indirect=True)
def test_a_takeover_no_replica_confirmed_is_refused_and_lost_with_the_primary(replicated: LocalCluster) -> None:
    """The replica lags (stopped, its link cut); b's take-over lands on the primary only, so WAIT refuses it: b
    serves nothing. The primary dies and the lagging replica is promoted without b's epoch: a, the one holder any
    replica ever confirmed, may go on; b's next take-over fences it as usual. Never two writers acknowledged.
    (The store nodes run without min-replicas-to-write here, so the claim is applied on the primary and only the
    client's WAIT stands between it and an acknowledgement.)"""
    url = replicated.store_url
    a, b = _fresh(url, min_replicas=1, wait_ms=300), _fresh(url, min_replicas=1, wait_ms=300)
    epoch_a = _run(_create_and_claim(a, "a"))
    assert a.commit_many([_item(epoch_a, 0, 1)]) == [("ok", "")]
    replica, old = replicated.stores[1], replicated.primary()
    replicated.kill_store_node(replica, signal.SIGSTOP)
    primary = redis.Redis(LOCAL, old.port)
    assert primary.client_kill_filter(_type="replica") == 1  # what it sends from now on never reaches the replica
    primary.close()
    with pytest.raises(StoreUnavailable, match="written on 0 of the 1"):
        _run(b.claim(SID, "", ["d"], "b"))
    assert _record(old.port)["epoch"] == str(epoch_a + 1)  # applied on the primary, not acknowledged
    replicated.kill_store_node(old)
    replicated.kill_store_node(replica, signal.SIGCONT)
    replicated.wait_failover(old.port)
    assert _record(replica.port)["epoch"] == str(epoch_a) and _record(replica.port)["steps"] == "1"
    replicated.restart_store_node(old)  # a replica to confirm writes again
    replicated.wait_store_settled(30)
    assert a.commit_many([_item(epoch_a, 1, 2)]) == [("ok", "")]
    epoch_b = _run(_claim(b, "b"))
    assert epoch_b == epoch_a + 1 and a.commit_many([_item(epoch_a, 2, 3)]) == [("fenced", str(epoch_b))]


@pytest.mark.parametrize("replicated", [(2, 1)], indirect=True)
def test_a_stalled_primary_comes_back_as_a_replica_and_acknowledges_nothing(replicated: LocalCluster) -> None:
    """SIGSTOP the primary past the Sentinels' down-after: a replica is promoted and b takes the session over
    there. SIGCONT: the old primary still believes it is the primary and a still has connections to it, but no
    write to it is acknowledged (NOREPLICAS / WAIT confirms nothing); the Sentinels turn it into a replica of the
    new primary, and it then holds b's line."""
    url = replicated.store_url
    a = _fresh(url, min_replicas=1, wait_ms=500)
    epoch_a = _run(_create_and_claim(a, "a"))
    assert a.commit_many([_item(epoch_a, 0, 1)]) == [("ok", "")]
    old = replicated.primary()
    replicated.kill_store_node(old, signal.SIGSTOP)
    try:
        replicated.wait_failover(old.port)
        b = _fresh(url, min_replicas=1, wait_ms=500)
        epoch_b = _run(_claim(b, "b"))
        assert b.commit_many([_item(epoch_b, 1, 2)]) == [("ok", "")]
    finally:
        replicated.kill_store_node(old, signal.SIGCONT)
    stale = _fresh(f"redis://{LOCAL}:{old.port}/0", min_replicas=1, wait_ms=500)
    assert _record(old.port)["epoch"] == str(epoch_a)  # it still has a's line: a's commit would pass its fencing
    [refused] = stale.commit_many([_item(epoch_a, 1, 2)])
    assert isinstance(refused, StoreUnavailable)
    assert stale_write(old.port) in ("NOREPLICAS", "READONLY")
    for _ in range(3):  # a's own client: the stale primary refuses, the new one fences; never "ok"
        [result] = a.commit_many([_item(epoch_a, 1, 2)])
        assert isinstance(result, StoreUnavailable) or result == ("fenced", str(epoch_b))
    replicated.wait_store_settled(60)
    assert store_role(old.port) == "replica"
    record = _record(old.port)
    assert (record["steps"], record["epoch"]) == ("2", str(epoch_b))


@pytest.mark.parametrize("replicated", [(2, 2)], indirect=True)
def test_the_primary_and_a_replica_lost_together_lose_nothing_confirmed_by_two(replicated: LocalCluster) -> None:
    """min_replicas 2: an acknowledged step is on three nodes, so kill -9 of the primary and a replica together
    loses none. Writes are refused (one node cannot confirm two) until the killed nodes are back as replicas."""
    url = replicated.store_url
    store = _fresh(url, min_replicas=2, wait_ms=500)
    epoch = _run(_create_and_claim(store, "a"))
    for end in range(1, 6):
        assert store.commit_many([_item(epoch, end - 1, end)]) == [("ok", "")]
    old = replicated.primary()
    replica = next(s for s in replicated.stores if s is not old)
    replicated.kill_store_node(old)
    replicated.kill_store_node(replica)
    replicated.wait_failover(old.port)
    assert _record(replicated.primary().port)["steps"] == "5"
    [refused] = store.commit_many([_item(epoch, 5, 6)])
    assert isinstance(refused, StoreUnavailable)
    for node in (replica, old):
        replicated.restart_store_node(node)
    replicated.wait_store_settled(30)
    assert sorted(store_role(s.port) for s in replicated.stores) == ["primary", "replica", "replica"]
    assert store.commit_many([_item(epoch, 5, 6)]) == [("ok", "")]  # the refused one, retried: applied once
    assert all(_record(s.port)["steps"] == "6" for s in replicated.stores)


@pytest.mark.parametrize("replicated", [(2, 1)], indirect=True)
def test_a_store_node_that_lost_its_disk_comes_back_as_a_replica_with_everything(replicated: LocalCluster) -> None:
    """The primary is killed and its data directory deleted (a lost disk): restarted, it does not come back as
    an empty primary but as a replica of the promoted one, and copies every session from it."""
    store = _fresh(replicated.store_url, min_replicas=1, wait_ms=1000)
    epoch = _run(_create_and_claim(store, "a"))
    assert store.commit_many([_item(epoch, 0, 1)]) == [("ok", "")]
    old = replicated.primary()
    replicated.kill_store_node(old)
    data = replicated.workdir / f"store-{replicated.stores.index(old)}"  # type: ignore[operator]
    shutil.rmtree(data)
    data.mkdir()
    replicated.wait_failover(old.port)
    replicated.restart_store_node(old)
    replicated.wait_store_settled(30)
    assert store_role(old.port) == "replica" and _record(old.port)["steps"] == "1"
    assert store.commit_many([_item(epoch, 1, 2)]) == [("ok", "")]


@pytest.mark.parametrize("replicated", [(1, 1)], indirect=True)
def test_a_replica_refuses_a_step_its_store_replicas_did_not_confirm(replicated: LocalCluster, copy_dir: Path,
                                                                     offline: Offline,
                                                                     rng: np.random.Generator) -> None:
    """Through a real replica (redis+sentinel:// URL, --store-min-replicas 1): while the store's replica is
    stopped, a step is computed and applied on the primary but refused UNAVAILABLE (not acknowledged) and counted
    `unreplicated`; once the store replica is back, the retry with expect_steps is answered, bit-exact."""
    x = bits(rng, 8)
    config = service_config(copy_dir, store_url=replicated.store_url, replica_name="r", metrics_port=-1,
                            store_min_replicas=1, store_wait_ms=300)
    with ServerThread(config) as server, NTMClient(server.target, timeout=30, retry=None) as client:
        sid = client.create_session("copy").session_id
        first = client.step(sid, x[:4], expect_steps=0).outputs
        store_replica = replicated.stores[1]
        replicated.kill_store_node(store_replica, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                client.step(sid, x[4:], expect_steps=4, request_id="second")
        finally:
            replicated.kill_store_node(store_replica, signal.SIGCONT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "not acknowledged" in refused.value.details()
        registry = server.server.metrics.registry
        assert registry.get_sample_value("ntm_cluster_commits_total", {"outcome": "unreplicated"}) == 1
        replicated.wait_store_settled(30)
        second = client.step(sid, x[4:], expect_steps=4, request_id="second").outputs
        assert client.get_session(sid).steps == 8
    assert np.array_equal(np.concatenate([first, second]), offline.run(x)["outputs"])
