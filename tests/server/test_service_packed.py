"""Packed messages (StreamPackedSteps): many sessions' steps in one message, run as one unit. Their results equal
the per-session ones bit for bit; a message with a bad entry is refused whole, each entry with its own status, and
changes no session; packed and per-session calls mix on the same sessions; the metrics count session-steps."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import Offline, bits, service_config

from ntm_serve.api.errors import PackError
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.client.sdk import NTMClient, PackedOutput, PackedStepError, packed_request, step_request
from ntm_serve.server.jobs import ControlJob, PackJob, StepJob
from ntm_serve.server.scheduler import take
from ntm_serve.server.server import ServerThread
from ntm_serve.server.sessions import SessionRecord

INVALID, ABORTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED


def _inputs(rng: np.random.Generator, sessions: int, steps: int) -> np.ndarray:
    return np.stack([bits(rng, steps) for _ in range(sessions)])  # (E, T, I)


def _states(client: NTMClient, ids: list[str]) -> list[tuple[int, dict[str, np.ndarray]]]:
    return [(s.steps, s.tensors) for s in map(client.export_session, ids)]


def _assert_unchanged(client: NTMClient, ids: list[str], before: list[tuple[int, dict[str, np.ndarray]]]) -> None:
    for sid, (steps, tensors) in zip(ids, before, strict=True):
        now = client.export_session(sid)
        assert now.steps == steps, sid
        for name, value in tensors.items():
            np.testing.assert_array_equal(now.tensors[name], value, err_msg=f"{sid} {name}")


def _refused(client: NTMClient, request: ntm_pb2.PackedStepRequest) -> PackedStepError:
    (output,) = list(client.stream_packed([request]))
    assert output.error is not None and output.outputs is None
    return output.error


# --- results ----------------------------------------------------------------------------------------------


def test_packed_results_equal_per_session_results_bit_for_bit(client: NTMClient, offline: Offline,
                                                               rng: np.random.Generator) -> None:
    """Six sessions packed over messages of 1, 4 and 7 steps (one with attention), against six sessions stepped
    one by one over StreamSteps and against the offline graph: outputs, attention, steps and state agree exactly."""
    cuts = [1, 4, 7]
    inputs = _inputs(rng, 6, sum(cuts))  # (E, T, I)
    packed_ids = [client.create_session("copy").session_id for _ in range(6)]
    single_ids = [client.create_session("copy").session_id for _ in range(6)]
    requests = []
    at = 0
    for i, t in enumerate(cuts):
        requests.append(packed_request(packed_ids, inputs[:, at:at + t], return_attention=i == 1, request_id=str(i)))
        at += t
    answers = list(client.stream_packed(requests))
    assert [a.request_id for a in answers] == ["0", "1", "2"]  # request order
    assert [a.steps for a in answers] == [[1] * 6, [5] * 6, [12] * 6]
    outputs = np.concatenate([a.check().outputs for a in answers], axis=1)  # (E, T, O)
    assert answers[1].read_weights is not None and answers[0].read_weights is None
    for e, sid in enumerate(single_ids):
        chunks = np.split(inputs[e], np.cumsum(cuts)[:-1])
        single = np.concatenate([o.outputs for o in client.stream_session(sid, chunks)])
        reference = offline.run(inputs[e])
        np.testing.assert_array_equal(outputs[e], single, err_msg=f"entry {e}")
        np.testing.assert_array_equal(outputs[e], reference["outputs"], err_msg=f"entry {e}")
        np.testing.assert_array_equal(answers[1].read_weights[e], reference["read_weights"][1:5])
        np.testing.assert_array_equal(answers[1].write_weights[e], reference["write_weights"][1:5])
        packed_state, single_state = client.export_session(packed_ids[e]), client.export_session(sid)
        assert packed_state.steps == single_state.steps == 12
        for name, value in single_state.tensors.items():
            np.testing.assert_array_equal(packed_state.tensors[name], value, err_msg=name)


def test_packed_and_per_session_calls_mix_on_the_same_sessions(client: NTMClient, offline: Offline,
                                                               rng: np.random.Generator) -> None:
    """Steps of one session through Step, StreamSteps and packed messages (in different entry orders) are one
    sequence: the session ends where the offline run of all its inputs ends."""
    a, b, c = (client.create_session("copy").session_id for _ in range(3))
    inputs = {sid: bits(rng, 12) for sid in (a, b, c)}
    client.step(a, inputs[a][:2])
    client.step_packed([a, b], np.stack([inputs[a][2:5], inputs[b][:3]]))
    list(client.stream_session(b, [inputs[b][3:4], inputs[b][4:6]]))
    client.step_packed([c, b, a], np.stack([inputs[c][:1], inputs[b][6:7], inputs[a][5:6]]))
    client.step_packed([b, a, c], np.stack([inputs[b][7:12], inputs[a][6:11], inputs[c][1:6]]))
    last_a = client.step(a, inputs[a][11:]).outputs
    last_c = client.step_packed([c], inputs[c][None, 6:]).outputs[0]
    np.testing.assert_array_equal(last_a, offline.run(inputs[a])["outputs"][11:])
    np.testing.assert_array_equal(last_c, offline.run(inputs[c])["outputs"][6:])
    for sid in (a, b, c):
        state = client.export_session(sid)
        assert state.steps == 12
        for name, value in offline.run(inputs[sid])["state"].items():
            np.testing.assert_array_equal(state.tensors[name], value, err_msg=name)


def test_sessions_stepped_tick_by_tick_are_read_moved_and_ended_exactly(client: NTMClient, server: ServerThread,
                                                                        offline: Offline,
                                                                        rng: np.random.Generator) -> None:
    """One-step packs of the same sessions step them in place, tick after tick, on the event loop's thread
    (docs/service.md, "Continuous batching"). Whatever else reads or moves a session in between — an export, a
    step through another RPC, a delete, an import of its state — sees or continues exactly the state a session
    that was never resident would have: the offline run of its inputs."""
    a, b, c, d = ids = [client.create_session("copy").session_id for _ in range(4)]
    inputs = {sid: bits(rng, 8) for sid in ids}
    batcher = server.server.models["copy"].batcher
    threads: list[str] = []
    tick = batcher._tick
    batcher._tick = lambda *run: (threads.append(threading.current_thread().name), tick(*run))[1]
    try:
        list(client.stream_packed([packed_request(ids, np.stack([inputs[sid][t:t + 1] for sid in ids]))
                                   for t in range(3)]))
        exported = client.export_session(a)  # the latest state, read from the resident batch
        assert exported.steps == 3
        for name, value in offline.run(inputs[a][:3])["state"].items():
            np.testing.assert_array_equal(exported.tensors[name], value, err_msg=name)
        np.testing.assert_array_equal(client.step(b, inputs[b][3:5]).outputs, offline.run(inputs[b])["outputs"][3:5])
        client.delete_session(c)
        refused = _refused(client, packed_request([a, c, d], _inputs(rng, 3, 1)))
        assert refused.entries[1].code == grpc.StatusCode.NOT_FOUND
        e = client.import_session(exported).session_id  # a's state, now in a second session
        inputs[e] = inputs[a]
        order = [d, e, a, b]
        start = {d: 3, e: 3, a: 3, b: 5}
        got = [client.step_packed(order, np.stack([inputs[sid][start[sid] + t:start[sid] + t + 1] for sid in order]))
               for t in range(2)]
    finally:
        batcher._tick = tick
    assert threading.current_thread().name not in threads and "ntm-server" in threads  # the loop ran some ticks
    for i, sid in enumerate(order):
        want = offline.run(inputs[sid][:start[sid] + 2])
        for t in range(2):
            np.testing.assert_array_equal(got[t].outputs[i, 0], want["outputs"][start[sid] + t], err_msg=sid)
        state = client.export_session(sid)
        assert state.steps == start[sid] + 2
        for name, value in want["state"].items():
            np.testing.assert_array_equal(state.tensors[name], value, err_msg=f"{sid} {name}")


def test_packs_and_streams_run_side_by_side_exactly(copy_dir: Path, offline: Offline) -> None:
    """A small max_batch (8): two streams of packs of 6 sessions (random T) and four sessions streamed one by one,
    at once. Packs wait for room and join whole; every session ends exactly where its offline run does."""
    rng = np.random.default_rng(8)
    with ServerThread(service_config(copy_dir, max_batch=8)) as server, NTMClient(server.target, timeout=120) as c:
        groups = [[c.create_session("copy").session_id for _ in range(6)] for _ in range(2)]
        singles = [c.create_session("copy").session_id for _ in range(4)]
        cuts = {i: [int(t) for t in rng.integers(1, 6, 8)] for i in range(2)}
        packed_inputs = {i: _inputs(rng, 6, sum(cuts[i])) for i in range(2)}
        single_inputs = {sid: bits(rng, 30) for sid in singles}

        def pack_stream(i: int) -> np.ndarray:
            bounds = np.cumsum([0, *cuts[i]])
            requests = (packed_request(groups[i], packed_inputs[i][:, s:e]) for s, e in itertools.pairwise(bounds))
            return np.concatenate([o.check().outputs for o in c.stream_packed(requests)], axis=1)

        def single_stream(sid: str) -> np.ndarray:
            chunks = np.split(single_inputs[sid], [3, 4, 9, 10, 17, 20, 21])
            return np.concatenate([o.outputs for o in c.stream_session(sid, chunks)])

        with ThreadPoolExecutor(6) as pool:
            packs = [pool.submit(pack_stream, i) for i in range(2)]
            streams = {sid: pool.submit(single_stream, sid) for sid in singles}
            for i, future in enumerate(packs):
                got = future.result(timeout=120)
                for e in range(6):
                    np.testing.assert_array_equal(got[e], offline.run(packed_inputs[i][e])["outputs"])
            for sid, future in streams.items():
                np.testing.assert_array_equal(future.result(timeout=120), offline.run(single_inputs[sid])["outputs"])


def test_packs_sharing_sessions_in_opposite_orders_do_not_wait_on_each_other(client: NTMClient,
                                                                             offline: Offline) -> None:
    """Two streams send packs of the same two sessions, one [a, b], the other [b, a], twenty each, at once: a pack
    is queued behind all its sessions' earlier jobs at once, so neither can hold one session while waiting for the
    other's. Every message is answered; the sessions end at 40 steps each."""
    a, b = (client.create_session("copy").session_id for _ in range(2))
    ones = np.ones((2, 1, 9), np.float32)

    def drive(ids: list[str]) -> list[PackedOutput]:
        return list(client.stream_packed(packed_request(ids, ones) for _ in range(20)))

    with ThreadPoolExecutor(2) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(drive, [a, b]), pool.submit(drive, [b, a])]]
    assert all(o.error is None for r in results for o in r)
    assert client.get_session(a).steps == client.get_session(b).steps == 40
    memory = [client.export_session(sid).tensors["memory"] for sid in (a, b)]
    np.testing.assert_array_equal(*memory)


def test_batching_off_runs_a_pack_as_one_unit(copy_dir: Path, offline: Offline, rng: np.random.Generator) -> None:
    inputs = _inputs(rng, 5, 6)
    with ServerThread(service_config(copy_dir, batching=False)) as server, NTMClient(server.target, timeout=60) as c:
        ids = [c.create_session("copy").session_id for _ in range(5)]
        registry = server.server.metrics.registry
        calls_before = registry.get_sample_value("ntm_batch_size_count", {"model": "copy"}) or 0.0
        got = c.step_packed(ids, inputs).outputs
        calls = (registry.get_sample_value("ntm_batch_size_count", {"model": "copy"}) or 0.0) - calls_before
    for e in range(5):
        np.testing.assert_array_equal(got[e], offline.run(inputs[e])["outputs"])
    assert calls == 6  # one call per step, every entry in it


# --- refusals ---------------------------------------------------------------------------------------------


def test_a_bad_entry_refuses_the_whole_message_and_changes_nothing(client: NTMClient, offline: Offline,
                                                                  rng: np.random.Generator) -> None:
    ids = [client.create_session("copy").session_id for _ in range(3)]
    client.step_packed(ids, _inputs(rng, 3, 2))
    before = _states(client, ids)
    good = _inputs(rng, 3, 4)
    nan = good.copy()
    nan[1, 2, 5] = np.nan
    cases = {
        "unknown session": (packed_request([ids[0], "no-such-session", ids[2]], good), {1: grpc.StatusCode.NOT_FOUND}),
        "non-finite values": (packed_request(ids, nan), {1: INVALID}),
        "a session twice": (packed_request([ids[0], ids[1], ids[0]], good), {2: INVALID}),
        "negative expect_steps": (packed_request(ids, good, expect_steps=[2, -1, None]), {1: INVALID}),
        "empty session id": (packed_request([ids[0], "", ids[2]], good), {1: INVALID}),
        "two bad entries": (packed_request(["gone-1", ids[1], "gone-2"], nan), {0: grpc.StatusCode.NOT_FOUND,
                                                                                1: INVALID,
                                                                                2: grpc.StatusCode.NOT_FOUND}),
    }
    for case, (request, bad) in cases.items():
        err = _refused(client, request)
        first = min(bad)
        assert err.code == bad[first], case
        assert "nothing was applied" in err.message and f"entry {first}" in err.message, (case, err.message)
        assert [e.code for e in err.entries] == [bad.get(i, ABORTED) for i in range(3)], case
        assert all("not applied" in e.message for i, e in enumerate(err.entries) if i not in bad), case
    assert "finite" in _refused(client, cases["non-finite values"][0]).entries[1].message
    assert "in entry 0 already" in _refused(client, cases["a session twice"][0]).entries[2].message
    _assert_unchanged(client, ids, before)


def test_a_wrong_message_is_refused_as_a_whole(client: NTMClient, server: ServerThread,
                                               rng: np.random.Generator) -> None:
    """Faults of the message itself (its tensor's shape, its size) are its own status, with no entry statuses."""
    ids = [client.create_session("copy").session_id for _ in range(2)]
    before = _states(client, ids)
    max_batch = server.server.config.max_batch
    wrong = {
        "wrong width": (packed_request(ids, np.ones((2, 3, 7), np.float32)), "width 9"),
        "rows for another number of entries": (packed_request(ids[:1], np.ones((2, 3, 9), np.float32)),
                                               "2 rows of steps"),
        "no steps": (packed_request(ids, np.ones((2, 0, 9), np.float32)), "T >= 1"),
        "rank 2": (ntm_pb2.PackedStepRequest(entries=[ntm_pb2.PackedEntry(session_id=s) for s in ids],
                                             inputs=ntm_pb2.Tensor(shape=[2, 9], values=[0.0] * 18)), "[E, T, 9]"),
        "no inputs": (ntm_pb2.PackedStepRequest(entries=[ntm_pb2.PackedEntry(session_id=s) for s in ids]),
                      "inputs is required"),
        "no entries": (ntm_pb2.PackedStepRequest(), "1 to"),
        "more entries than max_batch": (packed_request([ids[0]] * (max_batch + 1),
                                                       np.ones((max_batch + 1, 1, 9), np.float32)), "max_batch"),
    }
    for case, (request, words) in wrong.items():
        err = _refused(client, request)
        assert err.code == INVALID and words in err.message and err.entries == [], (case, err.message)
    _assert_unchanged(client, ids, before)


def test_sessions_of_two_models_are_refused_entry_by_entry(client: NTMClient) -> None:
    others = [m.name for m in client.list_models() if m.name != "copy"]
    if not others:
        pytest.skip("only the copy model is served")
    copy, other = client.create_session("copy").session_id, client.create_session(others[0]).session_id
    before = _states(client, [copy, other])
    err = _refused(client, packed_request([copy, other], np.ones((2, 1, 9), np.float32)))
    assert [e.code for e in err.entries] == [ABORTED, INVALID]
    assert "one model version" in err.entries[1].message
    _assert_unchanged(client, [copy, other], before)


def test_expect_steps_is_checked_for_every_entry_at_the_messages_turn(client: NTMClient, offline: Offline,
                                                                     rng: np.random.Generator) -> None:
    a, b = (client.create_session("copy").session_id for _ in range(2))
    inputs = _inputs(rng, 2, 3)
    client.step(a, inputs[0, :1])
    before = _states(client, [a, b])
    err = _refused(client, packed_request([a, b], inputs[:, 1:], expect_steps=[1, 5]))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [e.code for e in err.entries] == [ABORTED, grpc.StatusCode.FAILED_PRECONDITION]
    assert "stands at 0 steps" in err.entries[1].message
    _assert_unchanged(client, [a, b], before)
    out = client.step_packed([a, b], np.stack([inputs[0, 1:], inputs[1, :2]]), expect_steps=[1, 0])
    assert out.steps == [3, 2]
    np.testing.assert_array_equal(out.outputs[0], offline.run(inputs[0])["outputs"][1:])


def test_garbage_in_a_packed_stream_is_answered_and_the_stream_goes_on(server: ServerThread, client: NTMClient,
                                                                       rng: np.random.Generator) -> None:
    sid = client.create_session("copy").session_id
    x = _inputs(rng, 1, 2)
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream("/ntm.v1.NTM/StreamPackedSteps", request_serializer=None,
                                       response_deserializer=ntm_pb2.PackedStepResponse.FromString)
        messages = [packed_request([sid], x, request_id="a").SerializeToString(), b"\xff\xff\xff",
                    packed_request([sid], x, request_id="b").SerializeToString()]
        responses = list(stream(iter(messages), timeout=60))
    assert [r.request_id for r in responses] == ["a", "", "b"]
    assert responses[1].error.code == INVALID.value[0] and "PackedStepRequest" in responses[1].error.message
    assert list(responses[2].steps) == [4]


def test_an_engine_failure_mid_pack_leaves_every_session_as_it_was(copy_dir: Path, offline: Offline,
                                                                  rng: np.random.Generator) -> None:
    """Fault injection: the engine raises on the 3rd step call of a 5-step pack of 4 sessions."""
    inputs = _inputs(rng, 4, 8)
    with ServerThread(service_config(copy_dir)) as server, NTMClient(server.target, timeout=60) as client:
        ids = [client.create_session("copy").session_id for _ in range(4)]
        client.step_packed(ids, inputs[:, :3])
        before = _states(client, ids)
        engine = server.server.models["copy"].batcher.engine
        real_step, calls = engine.step, []

        def failing_step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected fault")
            return real_step(*args, **kwargs)

        engine.step = failing_step
        try:
            err = _refused(client, packed_request(ids, inputs[:, 3:8]))
        finally:
            engine.step = real_step
        assert err.code == grpc.StatusCode.INTERNAL and "not applied" in err.message and err.entries == []
        _assert_unchanged(client, ids, before)
        rest = client.step_packed(ids, inputs[:, 3:]).outputs
    for e in range(4):
        np.testing.assert_array_equal(rest[e], offline.run(inputs[e])["outputs"][3:])


def test_another_clients_session_is_refused(copy_dir: Path) -> None:
    alpha, beta = "alpha-" + "a" * 32, "beta-" + "b" * 32
    with ServerThread(service_config(copy_dir, auth_tokens=(alpha, beta))) as server, \
            NTMClient(server.target, token=alpha, timeout=60) as a, \
            NTMClient(server.target, token=beta, timeout=60) as b:
        mine, theirs = a.create_session("copy").session_id, b.create_session("copy").session_id
        with pytest.raises(PackedStepError) as err:
            a.step_packed([mine, theirs], np.ones((2, 1, 9), np.float32))
        assert [e.code for e in err.value.entries] == [ABORTED, grpc.StatusCode.PERMISSION_DENIED]
        assert a.get_session(mine).steps == 0 and b.get_session(theirs).steps == 0


# --- metrics ----------------------------------------------------------------------------------------------


def test_metrics_count_session_steps_and_messages(client: NTMClient, server: ServerThread,
                                                  rng: np.random.Generator) -> None:
    registry = server.server.metrics.registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"model": "copy", **labels}) or 0.0

    ids = [client.create_session("copy").session_id for _ in range(5)]
    before = (sample("ntm_steps_total"), sample("ntm_batch_size_sum"),
              sample("ntm_step_requests_total", rpc="StreamPackedSteps"),
              registry.get_sample_value("ntm_errors_total", {"method": "StreamPackedSteps", "code": "NOT_FOUND"}) or 0)
    list(client.stream_packed([packed_request(ids, _inputs(rng, 5, 3)), packed_request(ids, _inputs(rng, 5, 1)),
                               packed_request(["unknown", *ids[1:]], _inputs(rng, 5, 1))]))
    after = (sample("ntm_steps_total"), sample("ntm_batch_size_sum"),
             sample("ntm_step_requests_total", rpc="StreamPackedSteps"),
             registry.get_sample_value("ntm_errors_total", {"method": "StreamPackedSteps", "code": "NOT_FOUND"}) or 0)
    assert after[0] - before[0] == 5 * 4  # session-steps: entries x steps, refused messages none
    assert after[1] - before[1] == 5 * 4  # every session-step in a batched call, once
    assert after[2] - before[2] == 2  # messages answered
    assert after[3] - before[3] == 1  # the refused one, once


# --- the scheduler's policy (a pure function) ------------------------------------------------------------


def _session(i: int, steps: int = 0) -> SessionRecord:
    return SessionRecord(f"s{i}", "m", "o", 60.0, 0.0, 0.0, slot=i, steps=steps)


def _queues(*jobs: StepJob | PackJob) -> dict[SessionRecord, deque]:
    queues: dict[SessionRecord, deque] = {}
    for job in jobs:
        for s in job.sessions:
            queues.setdefault(s, deque()).append(job)
    return queues


def _step_job(session: SessionRecord) -> StepJob:
    return StepJob(session, np.zeros((1, 2), np.float32), False, lambda r: None)


def _pack_job(sessions: list[SessionRecord], expect: list[int | None] | None = None) -> PackJob:
    return PackJob(tuple(sessions), np.zeros((len(sessions), 2, 2), np.float32), False, lambda r: None,
                   tuple(expect or [None] * len(sessions)))


def test_take_joins_a_pack_whole_once_all_its_sessions_are_at_its_turn() -> None:
    s = [_session(i) for i in range(5)]
    pack = _pack_job(s[:3])
    lone = _step_job(s[3])
    queues = _queues(pack, lone)
    arrived: dict[PackJob, int] = {}
    held: deque[PackJob] = deque()
    plan = take(deque([s[0], s[1], s[3]]), queues, [], 8, arrived, held)
    assert plan.batch == [lone] and arrived == {pack: 2}  # two of its three sessions wait on it
    plan = take(deque([s[2]]), queues, [], 8, arrived, held)
    assert plan.batch == [pack] and arrived == {}


def test_take_holds_a_pack_that_does_not_fit_and_admits_nothing_before_it() -> None:
    s = [_session(i) for i in range(6)]
    running = [_step_job(s[0]), _step_job(s[1])]
    pack = _pack_job(s[2:5])
    later = _step_job(s[5])
    queues = _queues(*running, pack, later)
    held: deque[PackJob] = deque()
    plan = take(deque([s[2], s[3], s[4], s[5]]), queues, running, 4, {}, held)
    assert plan.batch == running and list(held) == [pack]  # 2 + 3 rows > 4: it waits, and `later` behind it
    plan = take(deque([s[5]]), queues, running[:1], 4, {}, held)
    assert plan.batch == [running[0], pack] and not held  # 1 + 3 rows fit
    plan = take(deque(), queues, [], 2, {}, deque([pack]))
    assert plan.batch == [pack]  # an empty batch takes a pack of any size


def test_take_refuses_a_pack_whose_entry_expects_another_step_count() -> None:
    s = [_session(0, steps=4), _session(1, steps=2)]
    pack = _pack_job(s, expect=[4, 3])
    plan = take(deque(s), _queues(pack), [], 8, {}, deque())
    assert plan.batch == [] and len(plan.refused) == 1
    job, err = plan.refused[0]
    assert job is pack and isinstance(err, PackError) and set(err.entries) == {1}
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "stands at 2 steps" in err.message
    assert not any(isinstance(j, ControlJob) for j in plan.controls)


def test_the_old_rpcs_are_untouched(client: NTMClient, rng: np.random.Generator) -> None:
    """The contract did not break: StreamSteps and Step answer as before on sessions that packs also step."""
    a = client.create_session("copy").session_id
    x = bits(rng, 3)
    (response,) = list(client.stub.StreamSteps(iter([step_request(a, x[:2], request_id="r")])))
    client.step_packed([a], x[None, 2:])
    assert response.request_id == "r" and response.steps == 2 and not response.HasField("error")
    assert client.get_session(a).steps == 3
