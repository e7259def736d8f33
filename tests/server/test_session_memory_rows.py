"""Memory that grows at serve time (issue 24), through a real server on loopback: sessions of several memory sizes N
stepping side by side, each bit-identical to the offline run of the same graphs at its N (and close to torch); the
range ListModels reports; refusals (below the model's range, above it, above --max-memory-rows, an imported state
whose shapes say no admissible N), none of which changes anything; export and import, snapshots and a restart, a
watch, at a non-default N; sizes batched apart (each plan one size's) and fair (a busy size does not starve
another); a size's group freed with its last session; the demo's --memory-rows."""

from __future__ import annotations

import contextlib
import io
import json
import queue
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from helpers import Offline, bits, service_config

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tensors import to_array
from ntm_serve.client.sdk import NTMClient, SessionStateData
from ntm_serve.contract import GRAPH_FILES, META_MEMORY_ROWS_MAX, META_MEMORY_ROWS_MIN
from ntm_serve.demos.__main__ import main as demo
from ntm_serve.server.jobs import StepJob
from ntm_serve.server.scheduler import Scheduler, batch_cap
from ntm_serve.server.server import ServerThread
from ntm_serve.server.sessions import SessionRecord

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TRAINED = 0  # memory_rows 0: the model's trained N


def _declared(folder: Path) -> tuple[int, int, int]:
    """(trained N, min, max) as the step graph's own metadata says, read without the server."""
    props = {p.key: p.value for p in onnx.load(folder / GRAPH_FILES["step"], load_external_data=False).metadata_props}
    trained = int(json.loads(props["ntm.config"])["memory_rows"])
    if META_MEMORY_ROWS_MIN not in props:
        pytest.skip(f"{folder.name}: graphs exported before the memory size was free (re-export them)")
    return trained, int(props[META_MEMORY_ROWS_MIN]), int(props[META_MEMORY_ROWS_MAX])


@pytest.fixture(scope="module")
def declared(models_dir: Path) -> tuple[int, int, int]:
    return _declared(models_dir / "copy")


@pytest.fixture(scope="module")
def reference(models_dir: Path) -> Callable[[int], Offline]:
    """The offline run of the copy model's graphs at N (0: trained), one per N."""
    made: dict[int, Offline] = {}

    def at(rows: int) -> Offline:
        if rows not in made:
            made[rows] = Offline(models_dir / "copy", rows=rows)
        return made[rows]

    return at


def _refused(call: Callable[[], object], *words: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == INVALID, err.value
    details = err.value.details() or ""
    for word in words:
        assert word in details, details
    return details


def test_list_models_reports_the_trained_n_and_the_range_the_graphs_declare(client: NTMClient,
                                                                            declared: tuple[int, int, int]) -> None:
    trained, low, high = declared
    copy = next(m for m in client.list_models() if m.name == "copy")
    assert (copy.memory_rows, copy.memory_rows_min, copy.memory_rows_max) == (trained, low, min(high, 8192))
    assert copy.state[3].name == "memory" and list(copy.state[3].shape) == [trained, copy.memory_width]


def test_sessions_of_several_sizes_step_side_by_side_each_equal_to_the_offline_run_at_its_n(
        client: NTMClient, server: ServerThread, reference: Callable[[int], Offline], declared: tuple[int, int, int],
        rng: np.random.Generator) -> None:
    """Sessions of the trained N, the smallest N, and two larger ones (two of some sizes, so a size's sessions share
    calls) step concurrently in uneven requests: each answer and each final state equals the offline graphs' at that
    N, bit for bit; the heads' weightings have N columns."""
    trained, low, _ = declared
    sizes = [TRAINED, TRAINED, low, 64, 64, 1024]
    sessions = [client.create_session("copy", memory_rows=n) for n in sizes]
    assert [s.memory_rows for s in sessions] == [n or trained for n in sizes]
    inputs = [bits(rng, 40) for _ in sizes]
    got: list[list[np.ndarray]] = [[] for _ in sizes]
    attention: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with NTMClient(server.target, timeout=60) as own:
                at = 0
                for length in (1, 7, 12, 20):
                    out = own.step(sessions[i].session_id, inputs[i][at:at + length], return_attention=length == 7)
                    got[i].append(out.outputs)
                    if out.read_weights is not None:
                        attention[i] = out.read_weights
                    at += length
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for i, n in enumerate(sizes):
        want = reference(n).run(inputs[i])
        np.testing.assert_array_equal(np.concatenate(got[i]), want["outputs"], err_msg=f"N={n}")
        assert attention[i].shape == (7, 1, n or trained)
        np.testing.assert_array_equal(attention[i], want["read_weights"][1:8], err_msg=f"N={n}")
        state = client.export_session(sessions[i].session_id)
        for name, value in want["state"].items():
            np.testing.assert_array_equal(state.tensors[name], value, err_msg=f"N={n} {name}")
        client.delete_session(sessions[i].session_id)


def test_a_larger_memory_computes_what_the_trained_model_computes_at_that_size(
        client: NTMClient, reference: Callable[[int], Offline], rng: np.random.Generator) -> None:
    """Against the PyTorch model run at the same N: the graphs' float32 arithmetic, not another model."""
    x = bits(rng, 30)
    session = client.create_session("copy", memory_rows=256).session_id
    out = client.step(session, x).outputs
    client.delete_session(session)
    np.testing.assert_allclose(out, reference(256).torch_outputs(x), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def capped(copy_dir: Path) -> Iterator[ServerThread]:
    """A server whose --max-memory-rows (64) is below the copy model's trained N (128)."""
    with ServerThread(service_config(copy_dir, max_memory_rows=64, metrics_port=-1)) as running:
        yield running


def test_sizes_outside_the_range_or_above_the_limit_are_refused_and_change_nothing(
        client: NTMClient, capped: ServerThread, copy_dir: Path, declared: tuple[int, int, int]) -> None:
    trained, low, high = declared
    with NTMClient(capped.target, timeout=30) as c, \
            ServerThread(service_config(copy_dir, max_memory_rows=high + 100, metrics_port=-1)) as roomy, \
            NTMClient(roomy.target, timeout=30) as r:
        copy = next(m for m in c.list_models() if m.name == "copy")
        assert (copy.memory_rows_min, copy.memory_rows_max) == (low, trained)  # the trained N stays served
        live = capped.server.registry.count()
        _refused(lambda: c.create_session("copy", memory_rows=low - 1), f"memory_rows {low - 1} is out of range",
                 f"runs on {low} to {high} memory rows", "at most 64 (--max-memory-rows)")
        _refused(lambda: c.create_session("copy", memory_rows=trained + 1),
                 f"memory_rows {trained + 1} is out of range", "at most 64 (--max-memory-rows)",
                 f"{low} to {trained} here")
        _refused(lambda: c.create_session("copy", memory_rows=-5), "memory_rows must be >= 0")
        _refused(lambda: r.create_session("copy", memory_rows=high + 1), f"runs on {low} to {high} memory rows",
                 f"at most {high + 100}")
        assert capped.server.registry.count() == live and roomy.server.registry.count() == 0
        # the limit is never below the trained N (always served), so nothing smaller is refused for it either
        assert [c.create_session("copy", memory_rows=n).memory_rows for n in (0, trained, 100, low)] == \
            [trained, trained, 100, low]


def test_imports_are_admitted_by_their_memory_s_shape(client: NTMClient, capped: ServerThread,
                                                      rng: np.random.Generator, declared: tuple[int, int, int]) -> None:
    """An exported N=1024 state imports where 1024 is served and is refused past --max-memory-rows; a state whose
    weightings disagree with its memory on N, or whose memory is smaller than the model's range, is refused."""
    _, low, _ = declared
    session = client.create_session("copy", memory_rows=1024).session_id
    client.step(session, bits(rng, 5))
    state = client.export_session(session)
    client.delete_session(session)
    assert state.tensors["memory"].shape[0] == 1024
    again = client.import_session(state)
    assert again.memory_rows == 1024
    client.delete_session(again.session_id)
    with NTMClient(capped.target, timeout=30) as c:
        live = capped.server.registry.count()
        _refused(lambda: c.import_session(state), "the state's memory has 1024 rows", "at most 64 (--max-memory-rows)")
        small = client.create_session("copy", memory_rows=32).session_id
        good = client.export_session(small)
        client.delete_session(small)
        bad = dict(good.tensors, read_weights=np.full((1, 33), 1 / 33, np.float32))
        _refused(lambda: c.import_session(SessionStateData(good.model, 0, bad, good.checkpoint_sha256)),
                 "read_weights must have shape [1, 32], got [1, 33]", "(the state's memory has 32 rows: N = 32)")
        tiny = {name: value for name, value in good.tensors.items()}
        tiny["memory"] = good.tensors["memory"][:low - 1]
        for name in ("read_weights", "write_weights"):
            tiny[name] = np.full((1, low - 1), 1 / (low - 1), np.float32)
        _refused(lambda: c.import_session(SessionStateData(good.model, 0, tiny, good.checkpoint_sha256)),
                 f"the state's memory has {low - 1} rows", "out of range")
        assert capped.server.registry.count() == live
        assert c.import_session(good).memory_rows == 32  # the same state at an N it serves


def test_an_exported_session_of_another_size_continues_exactly_where_it_stood(
        client: NTMClient, reference: Callable[[int], Offline], rng: np.random.Generator) -> None:
    x = bits(rng, 30)
    original = client.create_session("copy", memory_rows=96).session_id
    first = client.step(original, x[:12]).outputs
    state = client.export_session(original)
    assert state.tensors["memory"].shape == (96, 20) and state.tensors["write_weights"].shape == (1, 96)
    copy = client.import_session(state)
    assert copy.memory_rows == 96 and copy.steps == 12
    a = client.step(original, x[12:]).outputs
    b = client.step(copy.session_id, x[12:]).outputs
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate([first, a]), reference(96).run(x)["outputs"])
    info = client.get_session(copy.session_id, include_state=True)
    assert info.memory_rows == 96 and info.state is not None and info.state.tensors["memory"].shape == (96, 20)


def test_a_restart_restores_sessions_of_every_size_from_their_snapshots(
        copy_dir: Path, tmp_path: Path, reference: Callable[[int], Offline], declared: tuple[int, int, int],
        rng: np.random.Generator) -> None:
    x = {n: bits(rng, 20) for n in (TRAINED, 48, 512)}
    config = service_config(copy_dir, state_dir=tmp_path / "state", metrics_port=-1)
    with ServerThread(config) as first, NTMClient(first.target, timeout=30) as c:
        ids = {n: c.create_session("copy", memory_rows=n).session_id for n in x}
        before = {n: c.step(ids[n], x[n][:8]).outputs for n in x}
    with ServerThread(config) as second, NTMClient(second.target, timeout=30) as c:
        for n in x:
            info = c.get_session(ids[n])
            assert info.steps == 8 and info.memory_rows == (n or declared[0])
            after = c.step(ids[n], x[n][8:], expect_steps=8).outputs
            np.testing.assert_array_equal(np.concatenate([before[n], after]), reference(n).run(x[n])["outputs"],
                                          err_msg=f"N={n}")
        assert sorted(second.server.models["copy"].batcher.engine.groups) == sorted([48, declared[0], 512])


def test_a_watch_of_one_size_sees_its_own_session_only(copy_dir: Path, reference: Callable[[int], Offline],
                                                       rng: np.random.Generator) -> None:
    """On a fresh server the first session of each size holds the same pool row number (each size has its own
    pool): steps of the trained-N session must give the N=64 session's watcher nothing; its own steps give frames
    of its own state at N=64."""
    x, other = bits(rng, 3), bits(rng, 4)
    with ServerThread(service_config(copy_dir, metrics_port=-1)) as running, \
            NTMClient(running.target, timeout=30) as c:
        busy = c.create_session("copy").session_id
        watched = c.create_session("copy", memory_rows=64).session_id
        sessions = running.server.registry.sessions()
        assert len({s.slot for s in sessions}) == 1  # the same row number, in two pools
        call = c.watch_session(watched)
        frames: queue.Queue[ntm_pb2.WatchFrame] = queue.Queue()

        def read() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                for frame in call:
                    frames.put(frame)

        threading.Thread(target=read, daemon=True).start()
        assert frames.get(timeout=20).snapshot
        for t in range(len(other)):
            c.step(busy, other[t:t + 1])
        time.sleep(0.3)
        assert frames.empty()  # the other size's steps are not this session's
        for t in range(len(x)):
            c.step(watched, x[t:t + 1])
        want = reference(64)
        for t in range(len(x)):
            frame = frames.get(timeout=20)
            assert frame.steps == t + 1
            state = want.run(x[:t + 1])["state"]
            np.testing.assert_array_equal(to_array(frame.memory, "memory"), state["memory"])
            np.testing.assert_array_equal(to_array(frame.write_weights, "w"), state["write_weights"])
        call.cancel()


def test_a_size_s_group_goes_with_its_last_session(copy_dir: Path) -> None:
    with ServerThread(service_config(copy_dir, metrics_port=-1)) as running, \
            NTMClient(running.target, timeout=30) as c:
        engine = running.server.models["copy"].batcher.engine
        a, b = (c.create_session("copy", memory_rows=200).session_id for _ in range(2))
        assert sorted(engine.groups) == [128, 200]
        c.delete_session(a)
        assert sorted(engine.groups) == [128, 200]
        c.delete_session(b)
        assert sorted(engine.groups) == [128]  # freed (its pool's memory with it); the trained N's stays
        again = c.create_session("copy", memory_rows=200).session_id
        c.step(again, np.zeros((2, 9), np.float32))
        assert sorted(engine.groups) == [128, 200]


def _record(i: int, rows: int) -> SessionRecord:
    return SessionRecord(f"s{rows}-{i}", "m", "o", 60.0, 0.0, 0.0, slot=i, memory_rows=rows)


def test_each_plan_is_one_size_s_and_the_sizes_take_turns() -> None:
    """A size with many long requests always in progress and one with a new one-step request after each of its
    plans: every plan holds one size's sessions, and neither size gets two plans in a row while the other waits."""
    scheduler = Scheduler("m", batching=True, max_batch=4, max_wait_s=0.0, max_queue=1000)
    busy = [_record(i, 128) for i in range(8)]
    quiet = _record(0, 1024)
    for session in busy:
        scheduler.submit(StepJob(session, np.zeros((50, 9), np.float32), False, lambda _: None))
    scheduler.submit(StepJob(quiet, np.zeros((1, 9), np.float32), False, lambda _: None))
    order = deque()
    for _ in range(20):
        plan = scheduler.next_plan()
        assert plan is not None and plan.batch
        assert {s.memory_rows for job in plan.batch for s in job.sessions} == {plan.rows}
        order.append(plan.rows)
        if plan.rows == 128:
            scheduler.carry(plan.batch, 128)  # long requests: in progress, first in the size's next batch
        else:
            scheduler.carry([], 1024)
            scheduler.finish(quiet)  # answered; its client sends the next one at once
            scheduler.submit(StepJob(quiet, np.zeros((1, 9), np.float32), False, lambda _: None))
    assert list(order) == [128, 1024] * 10 or list(order) == [1024, 128] * 10, order


def test_the_batch_cap_keeps_a_call_s_state_within_the_budget() -> None:
    assert batch_cap(64, 0, 10**9) == 64  # no budget
    assert batch_cap(64, 3 << 20, 12_000) == 64  # small sessions: max_batch
    assert batch_cap(64, 3 << 20, 181_104) == 17  # N = 2048 copy sessions: 17 x 177 KiB <= 3 MiB < 18 x
    assert batch_cap(64, 3 << 20, 4 << 20) == 1  # a session larger than the budget still runs, alone
    for session_bytes in range(1, 5000, 37):
        cap = batch_cap(64, 20_000, session_bytes)
        assert 1 <= cap <= 64 and (cap == 1 or cap * session_bytes <= 20_000)
        assert cap == 64 or (cap + 1) * session_bytes > 20_000


def test_a_size_whose_state_outgrows_the_budget_is_batched_fewer_at_a_time() -> None:
    """Ten one-step requests at each of two sizes, the larger capped at 3 sessions per call: every plan of the
    larger holds at most 3, the smaller's fill max_batch (8); nothing is lost or run twice."""
    scheduler = Scheduler("m", batching=True, max_batch=8, max_wait_s=0.0, max_queue=1000,
                          cap=lambda rows: 3 if rows == 4096 else 100)
    sessions = [_record(i, rows) for rows in (128, 4096) for i in range(10)]
    for session in sessions:
        scheduler.submit(StepJob(session, np.zeros((1, 9), np.float32), False, lambda _: None))
    plans: dict[int, list[int]] = {128: [], 4096: []}
    stepped = []
    while scheduler.queued:
        plan = scheduler.next_plan()
        assert plan is not None
        plans[plan.rows].append(len(plan.batch))
        scheduler.carry([], plan.rows)
        for job in plan.batch:
            stepped.append(job.session)
            scheduler.finish(job.session)
    assert plans[4096] == [3, 3, 3, 1] and plans[128] == [8, 2], plans
    assert sorted(s.id for s in stepped) == sorted(s.id for s in sessions)


def test_a_server_batches_large_memories_by_their_state_and_answers_the_same(
        copy_dir: Path, reference: Callable[[int], Offline], rng: np.random.Generator) -> None:
    """--max-batch-kib 200: copy sessions at N = 1024 (~89 KiB of state each) run at most 2 per step call even when
    6 step concurrently (ntm_batch_size never above 2), and each answer equals the offline run at that N."""
    sessions, inputs = 6, [bits(rng, 60) for _ in range(6)]
    with ServerThread(service_config(copy_dir, max_batch_kib=200)) as running, \
            NTMClient(running.target, timeout=60) as c:
        ids = [c.create_session("copy", memory_rows=1024).session_id for _ in range(sessions)]
        got: dict[int, np.ndarray] = {}

        def run(i: int) -> None:
            with NTMClient(running.target, timeout=60) as own:
                got[i] = np.concatenate([own.step(ids[i], inputs[i][at:at + 20]).outputs for at in (0, 20, 40)])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    calls = samples['ntm_batch_size_count{model="copy"}']
    assert calls >= 60 * sessions / 2  # 360 session-steps, at most 2 per call
    assert samples['ntm_batch_size_bucket{le="2.0",model="copy"}'] == calls
    for i in range(sessions):
        np.testing.assert_array_equal(got[i], reference(1024).run(inputs[i])["outputs"])


def test_a_busy_size_does_not_hold_up_a_one_step_request_of_another(copy_dir: Path, rng: np.random.Generator) -> None:
    """Four sessions at N=4096 each run a 1000-step request (one call per step, a second or more in all); a
    one-step request of a trained-N session sent meanwhile is answered long before they finish."""
    with ServerThread(service_config(copy_dir, metrics_port=-1)) as running, \
            NTMClient(running.target, timeout=120) as c:
        busy = [c.create_session("copy", memory_rows=4096).session_id for _ in range(4)]
        quick = c.create_session("copy").session_id
        c.step(quick, bits(rng, 1))
        finished: list[float] = []
        began = time.monotonic()

        def long_request(session: str) -> None:
            with NTMClient(running.target, timeout=120) as own:
                own.step(session, bits(np.random.default_rng(0), 1000))
            finished.append(time.monotonic() - began)

        threads = [threading.Thread(target=long_request, args=(s,)) for s in busy]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        sent = time.monotonic()
        c.step(quick, bits(rng, 1))
        answered = time.monotonic() - began
        waited = time.monotonic() - sent
        for thread in threads:
            thread.join(120)
        assert len(finished) == 4
        assert answered < min(finished), (answered, finished)
        assert waited < 0.5 * (min(finished) - 0.2), (waited, finished)


@pytest.mark.parametrize("plot", [False, True], ids=["text", "plot"])
def test_the_demo_runs_longer_than_a_request_on_a_memory_of_the_size_asked_for(server: ServerThread, tmp_path: Path,
                                                                                plot: bool) -> None:
    """1041 steps (more than the server's 1000 a request) at N = 1024: several requests, and with --plot ones small
    enough that each answer with the heads' weightings fits a message."""
    if plot:
        pytest.importorskip("matplotlib")
    out = io.StringIO()
    figure = tmp_path / "copy.png"
    argv = ["copy", "--length", "520", "--memory-rows", "1024", "--target", server.target]
    with contextlib.redirect_stdout(out):
        assert demo(argv + (["--plot", str(figure)] if plot else [])) == 0
    assert "1041 steps" in out.getvalue() and "memory of 1024 rows" in out.getvalue()
    assert "bit errors:" in out.getvalue() and figure.is_file() == plot
