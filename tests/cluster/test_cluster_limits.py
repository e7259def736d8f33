"""The session limits hold across a cluster: `--max-sessions` and `--max-sessions-per-owner` are counted in the shared
store (ntm_serve/server/state/store.py, `_LIVE`), so an owner gets the same answer from every replica. The store's
count against a real valkey-server (deletes and expiries free a place, a gone session never holds one), then three
replicas behind the real proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import bits

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import LOCAL, LocalCluster
from ntm_serve.server.state.store import SessionStore, StoreLimit

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED



async def _create(store: SessionStore, sid: str, owner: str, ttl_s: float = 60.0, **limits: int) -> bool:
    return await store.create(sid, model="m", version="1", digest="d", owner=owner, ttl_s=ttl_s, created_wall=0.0,
                              steps=0, blob=b"x", **limits)


def test_the_store_counts_live_sessions_and_a_gone_one_holds_no_place(store_url: str) -> None:
    """Per owner and in all: the create past a limit is refused (and writes nothing); a delete frees a place at once;
    an expired session's id stays in the set until a create at the limit looks at it, finds its key gone and drops
    it; a session kept alive past its first deadline (a commit refreshes its TTL) is still counted."""

    async def run() -> None:
        store = SessionStore(store_url, prefix="limits:")
        try:
            per_owner = {"max_per_owner": 2, "max_sessions": 5}
            assert await _create(store, "a1", "alice", **per_owner)
            assert await _create(store, "a2", "alice", ttl_s=0.3, **per_owner)
            with pytest.raises(StoreLimit) as err:
                await _create(store, "a3", "alice", **per_owner)
            assert (err.value.which, err.value.live) == ("owner", 2)
            assert store.sync.exists(store.key("a3")) == 0  # refused: nothing written
            assert await _create(store, "b1", "bob", **per_owner)  # another owner is not affected
            assert await store.delete("a1", "alice") == "ok"  # a delete frees a place at once
            assert await store.live_count("alice") == 1
            assert await _create(store, "a3", "alice", **per_owner)
            await asyncio.sleep(0.5)  # a2 expires; its id is still in the sets
            assert store.sync.exists(store.key("a2")) == 0
            assert await store.live_count("alice") == 2 and await store.live_count() == 3
            assert await _create(store, "a4", "alice", **per_owner)  # a2 was looked at: its key is gone, dropped
            assert await store.live_count("alice") == 2
            # b2 lives past its first deadline because its TTL was refreshed (as a commit does): still counted
            assert await _create(store, "b2", "bob", ttl_s=0.3, **per_owner)
            store.sync.pexpire(store.key("b2"), 60_000)
            await asyncio.sleep(0.5)
            with pytest.raises(StoreLimit) as err:
                await _create(store, "b3", "bob", **per_owner)
            assert (err.value.which, err.value.live) == ("owner", 2)
            assert await _create(store, "c1", "carol", **per_owner)
            with pytest.raises(StoreLimit) as err:  # 5 live in all: a3, a4, b1, b2, c1
                await _create(store, "c2", "carol", **per_owner)
            assert (err.value.which, err.value.live) == ("full", 5)
            assert await _create(store, "c2", "carol")  # no limits given: none applies
        finally:
            await store.aclose()
            store.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def cluster(copy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    args = ["--auth-tokens", "alice,bob,carol", "--max-sessions-per-owner", "2", "--max-sessions", "5"]
    with LocalCluster(copy_dir, 3, workdir=tmp_path_factory.mktemp("cluster"), replica_args=args) as up:
        yield up


def _refused_everywhere(cluster: LocalCluster, token: str, limit: str) -> None:
    """Through the proxy (several times: any replica may answer) and at each replica directly."""
    targets = [cluster.proxy] * 3 + [f"{LOCAL}:{node.port}" for node in cluster.nodes]
    for target in targets:
        with NTMClient(target, token=token, timeout=30) as client, pytest.raises(grpc.RpcError) as err:
            client.create_session("copy")
        assert err.value.code() == EXHAUSTED, (target, err.value.details())
        assert limit in err.value.details() and "across the cluster" in err.value.details(), err.value.details()


def test_an_owner_at_its_quota_is_refused_by_every_replica(cluster: LocalCluster, rng: np.random.Generator) -> None:
    """Three replicas, per-owner limit 2, 5 sessions in all: alice at 2 is refused by every replica; bob is not
    affected; deleting one of alice's (held by a replica: it was stepped) frees one place everywhere; the expiry of
    another frees one too; when 5 live in all, carol (holding 1) is refused by the cluster-wide limit."""
    with NTMClient(cluster.proxy, token="alice", timeout=30) as alice, \
            NTMClient(cluster.proxy, token="bob", timeout=30) as bob, \
            NTMClient(cluster.proxy, token="carol", timeout=30) as carol:
        kept = alice.create_session("copy").session_id
        short = alice.create_session("copy", ttl_seconds=3.0).session_id
        created = time.monotonic()
        alice.step(kept, bits(rng, 2), expect_steps=0)  # held by the replica the proxy picks
        _refused_everywhere(cluster, "alice", "per-client session limit reached (2")
        bob_ids = [bob.create_session("copy").session_id for _ in range(2)]  # another owner: unaffected
        _refused_everywhere(cluster, "bob", "per-client")

        alice.delete_session(kept)  # one place free, wherever alice asks
        again = alice.create_session("copy").session_id
        _refused_everywhere(cluster, "alice", "per-client")

        time.sleep(max(0.0, created + 3.5 - time.monotonic()))  # `short` expires in the store
        with pytest.raises(grpc.RpcError) as gone:
            alice.get_session(short)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        third = alice.create_session("copy").session_id  # the expiry freed its place

        first_of_carol = carol.create_session("copy").session_id  # 5 live: alice 2, bob 2, carol 1
        _refused_everywhere(cluster, "carol", "session limit reached (5 live sessions across the cluster)")
        bob.delete_session(bob_ids[0])
        assert carol.create_session("copy").session_id  # a place freed by another owner's delete
        for client, sid in ((alice, again), (alice, third), (bob, bob_ids[1]), (carol, first_of_carol)):
            client.delete_session(sid)
