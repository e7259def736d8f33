"""How sessions are kept (ntm_serve/server/state/keeping.py): one implementation per mode behind one interface,
picked once from the flags, and a servicer whose handlers never ask which mode they are in."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from ntm_serve.api.errors import PackError, invalid, not_found
from ntm_serve.client.sdk import packed_request
from ntm_serve.server import servicer as servicer_module
from ntm_serve.server.metrics import Metrics
from ntm_serve.server.registry import ModelSet
from ntm_serve.server.servicer import LoopInbox
from ntm_serve.server.sessions import SessionRecord, SessionRegistry
from ntm_serve.server.state.choice import keeping_for, keeping_mode
from ntm_serve.server.state.keeping import MemoryKeeping, SessionKeeping
from ntm_serve.server.state.snapshot_keeping import SnapshotKeeping
from ntm_serve.server.state.snapshots import StateDirError
from ntm_serve.server.state.store import SessionStore
from ntm_serve.server.state.store_keeping import StoreKeeping
from tests.helpers import service_config

KEEPERS = (MemoryKeeping, SnapshotKeeping, StoreKeeping)
STORE_URL = "redis://127.0.0.1:1"  # never connected to: building a keeper opens no connection


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def build(config, loop: asyncio.AbstractEventLoop) -> SessionKeeping:
    metrics = Metrics()
    models = ModelSet()
    registry = SessionRegistry(models.batchers, metrics, max_sessions=10, max_sessions_per_owner=0,
                               default_ttl_s=60.0, max_ttl_s=600.0)
    store = SessionStore(config.store_url) if config.store_url else None
    return keeping_for(config, registry=registry, models=models, metrics=metrics, inbox=LoopInbox(loop), store=store)


@pytest.mark.parametrize("keeper", KEEPERS, ids=lambda k: k.__name__)
def test_each_keeping_implements_the_whole_interface(keeper: type[SessionKeeping]) -> None:
    """No abstract method left, and each one with the interface's parameters and kind (a coroutine or not)."""
    assert issubclass(keeper, SessionKeeping)
    assert not inspect.isabstract(keeper), sorted(keeper.__abstractmethods__)
    for name in SessionKeeping.__abstractmethods__:
        declared, implemented = getattr(SessionKeeping, name), getattr(keeper, name)
        assert implemented is not declared, f"{keeper.__name__}.{name} is not implemented"
        assert list(inspect.signature(implemented).parameters) == list(inspect.signature(declared).parameters), name
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(declared), name
    assert isinstance(keeper.drain_message, str) and keeper.drain_message


@pytest.mark.parametrize(("flags", "mode", "keeper"), [
    ({}, "memory", MemoryKeeping),
    ({"state_dir": "state"}, "snapshots", SnapshotKeeping),
    ({"store_url": STORE_URL, "replica_name": "r7"}, "store", StoreKeeping),
], ids=["memory", "snapshots", "store"])
def test_the_flags_pick_the_keeping(copy_dir: Path, tmp_path: Path, loop: asyncio.AbstractEventLoop, flags: dict,
                                    mode: str, keeper: type[SessionKeeping]) -> None:
    if "state_dir" in flags:
        flags = {**flags, "state_dir": tmp_path / flags["state_dir"]}
    config = service_config(copy_dir, **flags)
    assert keeping_mode(config) == mode
    keeping = build(config, loop)
    try:
        assert type(keeping) is keeper
        assert keeping.replica_name == ("r7" if mode == "store" else None)
        if mode == "snapshots":  # the directory is locked for this server
            with pytest.raises(StateDirError, match="in use by another server"):
                build(config, loop)
    finally:
        loop.run_until_complete(keeping.close(batchers_ran=False))
    if mode == "snapshots":  # and let go on close
        loop.run_until_complete(build(config, loop).close(batchers_ran=False))


def test_replica_mode_without_its_store_is_refused(copy_dir: Path, loop: asyncio.AbstractEventLoop) -> None:
    config = service_config(copy_dir, store_url=STORE_URL)
    metrics, models = Metrics(), ModelSet()
    registry = SessionRegistry(models.batchers, metrics, max_sessions=10, max_sessions_per_owner=0,
                               default_ttl_s=60.0, max_ttl_s=600.0)
    with pytest.raises(ValueError, match="session store"):
        keeping_for(config, registry=registry, models=models, metrics=metrics, inbox=LoopInbox(loop))


def test_memory_keeping_leaves_steps_as_they_are(copy_dir: Path, loop: asyncio.AbstractEventLoop) -> None:
    keeping = build(service_config(copy_dir), loop)

    def make(session, done):
        return (session, done)

    assert keeping.committing(make, "r1") is make
    assert keeping.committing_pack(make, "r1") is make
    assert keeping.moved("s", not_found("gone")) is None
    assert keeping.moved_pack(PackError({0: not_found("gone")}, 1)) is None
    assert loop.run_until_complete(keeping.prepare_step(None, "owner")) is None  # type: ignore[arg-type]
    assert loop.run_until_complete(keeping.prepare_pack(None, "owner")) is None  # type: ignore[arg-type]
    assert "server stopping" in keeping.drain_message


def test_store_keeping_refuses_a_pack_of_several_groups_and_turns_a_lost_session_into_a_retry(
        copy_dir: Path, loop: asyncio.AbstractEventLoop) -> None:
    keeping = build(service_config(copy_dir, store_url=STORE_URL), loop)
    try:
        request = packed_request(["g.a", "h.b", "c"], np.zeros((3, 1, 9), np.float32))
        with pytest.raises(PackError) as err:  # refused before the store is asked anything
            loop.run_until_complete(keeping.prepare_pack(request, "owner"))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and sorted(err.value.entries) == [1, 2]
        assert "group 'h'" in err.value.entries[1].message and "no group" in err.value.entries[2].message
        moved = keeping.moved("s1", not_found("unknown session 's1'"))
        assert moved is not None and moved.code == grpc.StatusCode.ABORTED and "expect_steps" in moved.message
        assert keeping.moved("s1", invalid("bad inputs")) is None  # any other refusal stands
        moved = keeping.moved_pack(PackError({0: invalid("nan"), 2: not_found("unknown session 'g.c'")}, 3))
        assert isinstance(moved, PackError) and moved.entries[0].code == grpc.StatusCode.INVALID_ARGUMENT
        assert moved.entries[2].code == grpc.StatusCode.ABORTED and "expect_steps" in moved.entries[2].message
        assert keeping.moved_pack(PackError({0: invalid("nan")}, 1)) is None
        assert "replica draining" in keeping.drain_message
    finally:
        loop.run_until_complete(keeping.close(batchers_ran=False))


def test_the_servicer_does_not_branch_on_the_mode() -> None:
    """Handlers call `self.keeping` unconditionally: no replica or snapshot names, no flag look-ups, no isinstance
    on a keeper, no attribute compared with None to find the mode."""
    tree = ast.parse(Path(inspect.getfile(servicer_module)).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    modes = {"cluster", "replica", "Replica", "snapshotter", "Snapshotter", "store_url", "state_dir",
             *(k.__name__ for k in KEEPERS)}
    assert not (names | attributes) & modes, (names | attributes) & modes
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("ntm_serve.server.state.") and m.endswith(
        ("replica", "snapshots", "store", "snapshot_keeping", "store_keeping"))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.IsNot | ast.Is) for op in node.ops):
            assert "keeping" not in ast.unparse(node), ast.unparse(node)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance":
            assert "keeping" not in ast.unparse(node) and "Keeping" not in ast.unparse(node), ast.unparse(node)
    assert "self.keeping." in Path(inspect.getfile(servicer_module)).read_text()


def test_the_session_record_holds_no_persistence_bookkeeping() -> None:
    fields = {f.name for f in dataclasses.fields(SessionRecord)}
    assert not {f for f in fields if f.startswith("saved") or "snapshot" in f or "epoch" in f}, fields
