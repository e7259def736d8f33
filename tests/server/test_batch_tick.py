"""One-step batches: a plan whose every request takes one step runs without the batch frame (Batcher._tick).

Driven in process on a real engine (real onnxruntime): the jobs are queued before the batcher starts, so they
share one plan. The answers must be exactly what the frame path gives for the same batch and what each session's
offline run gives, attention included where asked; a failed step call answers every job "not applied" and leaves
every state as it was.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from helpers import Offline, bits

from ntm_serve.api.errors import ServiceError
from ntm_serve.runtime.engine import Engine
from ntm_serve.server.batcher import Batcher
from ntm_serve.server.jobs import ControlJob, PackJob, PackOutcome, RowJob, StepJob, StepOutcome
from ntm_serve.server.metrics import Metrics
from ntm_serve.server.scheduler import Scheduler
from ntm_serve.server.sessions import SessionRecord


class _Answers:
    """Done callbacks that keep each job's result by name."""

    def __init__(self) -> None:
        self.got: dict[str, Any] = {}
        self._lock = threading.Lock()

    def done(self, name: str) -> Any:
        def keep(result: Any) -> None:
            with self._lock:
                self.got[name] = result
        return keep


def _sessions(engine: Engine, count: int) -> list[SessionRecord]:
    records = []
    for i in range(count):
        record = SessionRecord(f"s{i}", engine.spec.name, "test", 600.0, 0.0, 0.0)
        record.slot = engine.new_row()
        records.append(record)
    return records


def _jobs(sessions: list[SessionRecord], x: np.ndarray, answers: _Answers) -> list[RowJob]:
    """A 1-step pack of sessions 0 and 1 with attention, then 1-step requests of sessions 2 (no attention) and
    3 (attention): x (4, I), one row per session."""
    pack = PackJob((sessions[0], sessions[1]), np.ascontiguousarray(x[:2, None]), True, answers.done("pack"),
                   (None, None))
    return [pack, StepJob(sessions[2], x[2:3], False, answers.done("plain")),
            StepJob(sessions[3], x[3:4], True, answers.done("attended"))]


def _run_one_plan(engine: Engine, jobs: list[RowJob]) -> list[str]:
    """Queue `jobs`, then start the batcher: they share its first plan. Returns the path each plan took."""
    batcher = Batcher(engine, Metrics())
    paths: list[str] = []
    tick, iterate = batcher._tick, batcher._iterate
    batcher._tick = lambda *run: (paths.append("tick"), tick(*run))[1]  # type: ignore[method-assign]
    batcher._iterate = lambda *run: (paths.append("frame"), iterate(*run))[1]  # type: ignore[method-assign]
    for job in jobs:
        batcher.submit(job)
    batcher.start()
    batcher.stop(timeout=30)
    return paths


def test_a_one_step_batch_answers_exactly_what_the_frame_and_the_offline_run_give(
        models_dir: Path, offline: Offline, rng: np.random.Generator) -> None:
    x = bits(rng, 4)  # (4, I): one step for each of 4 sessions
    runs = {}
    for path in ("tick", "frame"):
        engine = Engine(models_dir / "copy", "cpu")
        sessions, answers = _sessions(engine, 4), _Answers()
        jobs = _jobs(sessions, x, answers)
        if path == "frame":  # the same batch through the batch frame: a 2-step request in progress beside it
            longer = _sessions(engine, 1)[0]
            jobs.append(StepJob(longer, bits(rng, 2), False, answers.done("longer")))
        assert _run_one_plan(engine, jobs)[0] == path
        runs[path] = (answers.got, [engine.read_row(s.slot) for s in sessions])
    got, states = runs["tick"]
    pack, plain, attended = got["pack"], got["plain"], got["attended"]
    assert isinstance(pack, PackOutcome) and pack.outputs.shape == (2, 1, engine.spec.output_size)
    assert pack.steps == [1, 1] and isinstance(plain, StepOutcome) and plain.steps == 1
    assert plain.read_weights is None and attended.read_weights is not None and pack.read_weights is not None
    frame_got, frame_states = runs["frame"]
    for name in ("pack", "plain", "attended"):
        for field in ("outputs", "read_weights", "write_weights"):
            a, b = getattr(got[name], field), getattr(frame_got[name], field)
            assert (a is None) == (b is None), (name, field)
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {field}")
    for row, state in enumerate(states):
        want = offline.run(x[row:row + 1])
        for name, value in want["state"].items():
            np.testing.assert_array_equal(state[name], value, err_msg=name)
            np.testing.assert_array_equal(frame_states[row][name], value, err_msg=name)
    outputs = [pack.outputs[0, 0], pack.outputs[1, 0], plain.outputs[0], attended.outputs[0]]
    for row, out in enumerate(outputs):
        np.testing.assert_array_equal(out, offline.run(x[row:row + 1])["outputs"][0])
    np.testing.assert_array_equal(attended.read_weights[0], offline.run(x[3:4])["read_weights"][0])
    np.testing.assert_array_equal(pack.write_weights[1, 0], offline.run(x[1:2])["write_weights"][0])


def test_a_failed_one_step_call_answers_every_job_and_changes_no_state(models_dir: Path,
                                                                      rng: np.random.Generator) -> None:
    engine = Engine(models_dir / "copy", "cpu")
    sessions, answers = _sessions(engine, 4), _Answers()
    warm = bits(rng, 4)
    engine.step(np.array([s.slot for s in sessions], dtype=np.int64), warm)  # a resident batch, not the initial state
    before = [engine.read_row(s.slot) for s in sessions]
    real_step = engine.step

    def failing_step(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    engine.step = failing_step  # type: ignore[method-assign]
    try:
        assert _run_one_plan(engine, _jobs(sessions, bits(rng, 4), answers)) == ["tick"]
    finally:
        engine.step = real_step  # type: ignore[method-assign]
    assert set(answers.got) == {"pack", "plain", "attended"}
    for result in answers.got.values():
        assert isinstance(result, ServiceError) and "not applied" in result.message
    assert [s.steps for s in sessions] == [0, 0, 0, 0]
    for session, state in zip(sessions, before, strict=True):
        after = engine.read_row(session.slot)
        for name, value in state.items():
            np.testing.assert_array_equal(after[name], value, err_msg=name)


def _pack(sessions: tuple[SessionRecord, ...], steps: int, answers: _Answers, name: str) -> PackJob:
    return PackJob(sessions, np.zeros((len(sessions), steps, 9), np.float32), False, answers.done(name),
                   (None,) * len(sessions))


def test_plan_now_takes_only_a_complete_batch_of_one_step_requests() -> None:
    """The policy of running on the caller's thread (pure: no engine). Whatever it declines stays queued."""
    scheduler = Scheduler("m", batching=True, max_batch=8, max_wait_s=0.001, max_queue=100)
    s0, s1 = (SessionRecord(f"s{i}", "m", "test", 600.0, 0.0, 0.0, slot=i) for i in range(2))
    answers = _Answers()
    first = _pack((s0, s1), 1, answers, "first")
    scheduler.submit(first)
    assert scheduler.plan_now(16) is None  # no batch before it: the policy would wait for more sessions
    assert scheduler.next_plan().batch == [first]
    scheduler.finish(s0, s1)
    longer, short = StepJob(s0, np.zeros((2, 9), np.float32), False, answers.done("a")), \
        StepJob(s1, np.zeros((1, 9), np.float32), False, answers.done("b"))
    scheduler.submit(longer, wake=False)
    scheduler.submit(short, wake=False)
    assert scheduler.plan_now(16) is None  # a two-step request: the batch frame's work, on the model's thread
    assert scheduler.next_plan().batch == [longer, short]  # still queued
    scheduler.finish(s1)
    scheduler.carry([longer])  # in progress
    again = StepJob(s1, np.zeros((1, 9), np.float32), False, answers.done("c"))
    scheduler.submit(again, wake=False)
    assert scheduler.plan_now(16) is None  # a request in progress
    scheduler.carry([])
    scheduler.finish(s0)
    assert scheduler.next_plan().batch == [again]
    scheduler.finish(s1)
    control = ControlJob(s0, lambda engine, session: None, answers.done("control"))
    scheduler.submit(control, wake=False)
    assert scheduler.plan_now(16) is None  # a control job at a head
    assert scheduler.next_plan().controls == [control]
    scheduler.finish(s0)
    scheduler.submit(_pack((s0,), 1, answers, "half"), wake=False)
    assert scheduler.plan_now(16) is None  # the last batch (s1 alone) is not back yet: it would wait for it
    assert scheduler.next_plan().batch
    scheduler.finish(s0)
    scheduler.submit(_pack((s0, s1), 1, answers, "both"), wake=False)
    assert scheduler.plan_now(1) is None  # more rows than allowed
    plan = scheduler.plan_now(2)
    assert plan is not None and len(plan.batch) == 1 and plan.one_step
    scheduler.finish(s0, s1)
    scheduler.stop()
    scheduler.submit(_pack((s0, s1), 1, answers, "late"), force=True, wake=False)
    assert scheduler.plan_now(16) is None  # stopping: the model's thread finishes what is queued


def test_run_now_steps_a_pack_on_the_callers_thread_and_the_model_thread_runs_what_follows(
        models_dir: Path, offline: Offline, rng: np.random.Generator) -> None:
    engine = Engine(models_dir / "copy", "cpu")
    batcher = Batcher(engine, Metrics(), inline_rows=8)
    threads: list[str] = []
    tick = batcher._tick
    batcher._tick = lambda *run: (threads.append(threading.current_thread().name), tick(*run))[1]  # type: ignore
    sessions, answers = _sessions(engine, 2), _Answers()
    x = bits(rng, 2)  # (2 steps, I): step t of both sessions
    batcher.start()
    try:
        done = threading.Event()
        batcher.submit(PackJob(tuple(sessions), np.ascontiguousarray(np.stack([x[:1], x[:1]])), False,
                               lambda r: (answers.done("first")(r), done.set()), (None, None)))
        assert done.wait(30)
        with batcher._turn:  # the model's thread has finished that plan and waits
            pass
        second = PackJob(tuple(sessions), np.ascontiguousarray(np.stack([x[1:], x[1:]])), True,
                         answers.done("second"), (None, None))
        read = threading.Event()
        batcher.submit(second, wake=False)
        batcher.scheduler.submit(ControlJob(sessions[0], lambda e, s: e.read_row(s.slot),
                                            lambda r: (answers.done("read")(r), read.set())), wake=False)
        batcher.run_now()
        assert "second" in answers.got  # answered before run_now returned: it ran here
        assert threads == ["batcher-copy", threading.current_thread().name]
        assert read.wait(30)  # queued behind the pack: the model's thread ran it once the pack finished
    finally:
        batcher.stop(timeout=30)
    want = offline.run(x)
    got = answers.got["second"]
    assert got.steps == [2, 2]
    for e in range(2):
        np.testing.assert_array_equal(answers.got["first"].outputs[e, 0], want["outputs"][0])
        np.testing.assert_array_equal(got.outputs[e, 0], want["outputs"][1])
        np.testing.assert_array_equal(got.read_weights[e, 0], want["read_weights"][1])
    for name, value in want["state"].items():
        np.testing.assert_array_equal(answers.got["read"][name], value, err_msg=name)
