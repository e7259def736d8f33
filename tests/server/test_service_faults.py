"""Faults: a client that dies mid-stream, cancels mid-request or runs past its deadline leaves its session at a
request boundary (each request applied whole or not at all) and usable; overload gets RESOURCE_EXHAUSTED
with bounded queues; a client that never reads its responses is held to a bounded buffer while other
clients are served exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import ROOT, Offline, bits, service_config

from ntm_serve.client.sdk import NTMClient, step_request
from ntm_serve.server.server import ServerThread

WINDOW = 4  # --stream-window of this module's server


@pytest.fixture(scope="module")
def small_window(copy_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(copy_dir, stream_window=WINDOW)) as server:
        yield server


def _queued(server: ServerThread) -> float:
    return server.server.metrics.registry.get_sample_value("ntm_queue_depth", {"model": "copy"}) or 0.0


def _settled(client: NTMClient, session_id: str, server: ServerThread, limit_s: float = 60) -> int:
    """The session's step count once nothing is queued for it any more (accepted requests finish first)."""
    deadline = time.monotonic() + limit_s
    while True:
        steps = client.get_session(session_id).steps
        if _queued(server) == 0 and client.get_session(session_id).steps == steps:
            return steps
        assert time.monotonic() < deadline, "the session never settled"
        time.sleep(0.05)


def _consistent(client: NTMClient, session_id: str, inputs: np.ndarray, steps: int, offline: Offline) -> None:
    """The session holds exactly the state after inputs[:steps], and goes on exactly."""
    state = client.export_session(session_id)
    assert state.steps == steps
    expected = offline.run(inputs[:steps])["state"]
    for name, value in expected.items():
        np.testing.assert_array_equal(state.tensors[name], value, err_msg=name)
    rest = client.step(session_id, inputs[steps:steps + 7]).outputs
    np.testing.assert_array_equal(rest, offline.run(inputs[:steps + 7])["outputs"][steps:])


CHILD = """
import sys
import numpy as np
from ntm_serve.client.sdk import NTMClient, step_request
target, session, seed, chunk, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
inputs = np.random.default_rng(seed).integers(0, 2, (total, 9)).astype(np.float32)
with NTMClient(target) as client:
    requests = (step_request(session, inputs[t:t + chunk], return_attention=True) for t in range(0, total, chunk))
    for out in client.stream(requests):
        print("answer", out.steps, flush=True)
        input()  # read no more answers: the parent kills us
"""


def test_a_client_killed_mid_stream(small_window: ServerThread, offline: Offline) -> None:
    """A real client process is SIGKILLed with many requests sent and unanswered: the connection drops, the requests
    the server had accepted are applied whole, the rest not at all; the session goes on from there."""
    chunk, total, seed = 40, 4000, 99
    inputs = bits(np.random.default_rng(seed), total)
    with NTMClient(small_window.target, timeout=60) as client:
        session = client.create_session("copy").session_id
        child = subprocess.Popen([sys.executable, "-c", CHILD, small_window.target, session, str(seed), str(chunk),
                                  str(total)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert child.stdout is not None and child.stdout.readline().startswith("answer")
            child.kill()
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        steps = _settled(client, session, small_window)
        assert steps % chunk == 0 and chunk <= steps < total, steps  # whole requests; the unread ones dropped
        _consistent(client, session, inputs, steps, offline)
        client.delete_session(session)


def test_cancel_mid_request(small_window: ServerThread, offline: Offline, rng: np.random.Generator) -> None:
    inputs = bits(rng, 1100)
    with NTMClient(small_window.target, timeout=60) as client:
        session = client.create_session("copy").session_id
        call = client.stub.Step.future(step_request(session, inputs[:1000]))
        deadline = time.monotonic() + 30
        while _queued(small_window) < 1:  # the server has it
            assert time.monotonic() < deadline and not call.done()
            time.sleep(0.001)
        assert call.cancel()
        assert _settled(client, session, small_window) == 1000  # accepted, so applied whole without its caller
        _consistent(client, session, inputs, 1000, offline)
        # a stream cancelled after its first answer: the rest of its accepted requests are applied whole
        other = client.create_session("copy").session_id
        stream = client.stub.StreamSteps(iter([step_request(other, inputs[t:t + 300]) for t in range(0, 900, 300)]))
        assert next(stream).steps == 300
        stream.cancel()
        steps = _settled(client, other, small_window)
        assert steps in (300, 600, 900)
        _consistent(client, other, inputs, steps, offline)


def test_deadline_passing_mid_stream(small_window: ServerThread, offline: Offline, rng: np.random.Generator) -> None:
    inputs = bits(rng, 1600)
    with NTMClient(small_window.target, timeout=60) as client:
        session = client.create_session("copy").session_id
        requests = [step_request(session, inputs[t:t + 500]) for t in range(0, 1500, 500)]
        with pytest.raises(grpc.RpcError) as err:
            list(client.stub.StreamSteps(iter(requests), timeout=0.05))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        steps = _settled(client, session, small_window)
        assert steps in (0, 500, 1000, 1500)
        _consistent(client, session, inputs, steps, offline)


def test_a_client_that_never_reads(small_window: ServerThread, offline: Offline, rng: np.random.Generator) -> None:
    """A stream whose client sends forever and reads nothing: the server stops reading it after --stream-window
    unanswered requests and one flow-control window of answers, so its buffers stay small; meanwhile another
    client is served, exactly."""
    sent: list[np.ndarray] = []
    lazy_rng = np.random.default_rng(10)  # its own: gRPC pulls the requests on another thread

    def endless() -> Iterator[object]:
        while True:
            x = bits(lazy_rng, 10)
            sent.append(x)
            yield step_request(lazy_session, x, return_attention=True)  # ~11 kB answers

    # No BDP probing on the lazy client: its receive window stays 64 kB, as a slow or stuck reader's would.
    lazy = NTMClient(channel=grpc.insecure_channel(small_window.target, options=[("grpc.http2.bdp_probe", 0)]))
    with NTMClient(small_window.target, timeout=60) as client:
        lazy_session = client.create_session("copy").session_id
        call = lazy.stub.StreamSteps(endless())
        try:
            deadline, last = time.monotonic() + 30, (-1, -1)
            while True:  # until neither the server's count nor the client's sending moves for 0.5 s
                time.sleep(0.5)
                now = (client.get_session(lazy_session).steps, len(sent))
                if now == last:
                    break
                last = now
                assert time.monotonic() < deadline, f"the stream never stalled: {now}"
            applied, pulled = last
            answers_per_window = 64 * 1024 // (10 * (8 + 2 * 128) * 4)
            assert applied // 10 <= WINDOW + answers_per_window + 4, last  # the server's buffer is bounded
            assert pulled < 2000, last  # and so is what the client could push into the transport
            # another client meanwhile: served, exactly
            x = bits(rng, 30)
            other = client.create_session("copy").session_id
            got = np.concatenate([o.outputs for o in client.stream_session(other, np.split(x, 6))])
            np.testing.assert_array_equal(got, offline.run(x)["outputs"])
        finally:
            call.cancel()
            lazy.close()
        steps = _settled(client, lazy_session, small_window)
        assert steps % 10 == 0
        _consistent(client, lazy_session, np.concatenate([*sent[:steps // 10], bits(rng, 7)]), steps, offline)


# --- overload -------------------------------------------------------------------------------------------


def test_overload_gets_resource_exhausted_with_bounded_queues(copy_dir: Path, offline: Offline) -> None:
    """24 clients at once against --max-queue 4: the queue never holds more than 4 requests, the others get
    RESOURCE_EXHAUSTED and change nothing, the accepted ones are exact."""
    max_queue, clients = 4, 24
    rng = np.random.default_rng(24)
    inputs = [bits(rng, 200) for _ in range(clients)]
    with ServerThread(service_config(copy_dir, max_queue=max_queue, max_batch=4)) as server, \
            NTMClient(server.target, timeout=60) as client:
        sessions = [client.create_session("copy").session_id for _ in range(clients)]
        batcher = server.server.models["copy"].batcher
        deepest, storm = [0], threading.Event()

        def watch() -> None:
            while not storm.is_set():
                deepest[0] = max(deepest[0], batcher.queued)
                time.sleep(0.0005)

        barrier = threading.Barrier(clients)

        def one(i: int) -> tuple[grpc.StatusCode, str, np.ndarray | None]:
            barrier.wait(timeout=30)
            try:
                return grpc.StatusCode.OK, "", client.step(sessions[i], inputs[i]).outputs
            except grpc.RpcError as err:
                return err.code(), err.details(), None

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(clients)))
        storm.set()
        watcher.join()
        refused = [i for i, (code, _, _) in enumerate(results) if code != grpc.StatusCode.OK]
        assert refused and len(refused) < clients, [r[0] for r in results]
        for i, (code, details, outputs) in enumerate(results):
            if i in refused:
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"(limit {max_queue})" in details, details
                assert client.get_session(sessions[i]).steps == 0  # nothing changed
            else:
                np.testing.assert_array_equal(outputs, offline.run(inputs[i])["outputs"])
        assert deepest[0] <= max_queue


def test_concurrent_rpc_limit(copy_dir: Path, rng: np.random.Generator) -> None:
    """Past --max-concurrent-rpcs (streams count while open) a call gets RESOURCE_EXHAUSTED; when they close,
    calls go through again."""
    with ServerThread(service_config(copy_dir, max_concurrent_rpcs=3)) as server, \
            NTMClient(server.target, timeout=30) as client:
        session = client.create_session("copy").session_id
        release = threading.Event()

        def held() -> Iterator[object]:
            yield step_request(session, bits(rng, 1))
            release.wait(30)

        streams = [client.stub.StreamSteps(held()) for _ in range(3)]
        for stream in streams:
            assert next(stream).steps >= 1  # each is open, on the server
        with pytest.raises(grpc.RpcError) as err:
            client.get_session(session)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        for stream in streams:
            assert list(stream) == []
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.get_session(session).steps == 3
                break
            except grpc.RpcError as again:  # the server may still be closing the streams
                assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.05)


def test_expect_steps_makes_retries_safe(small_window: ServerThread, offline: Offline,
                                         rng: np.random.Generator) -> None:
    """A client that does not know whether its request was applied (its call failed) retries it with
    expect_steps: applied at most once. In a stream, a refused expectation refuses the session's later
    requests too (they expect the steps it would have added), so nothing is applied out of place."""
    inputs = bits(rng, 20)
    with NTMClient(small_window.target, timeout=60) as client:
        session = client.create_session("copy").session_id
        first = client.step(session, inputs[:5], expect_steps=0).outputs
        with pytest.raises(grpc.RpcError) as err:  # the "retry" of an applied request
            client.step(session, inputs[:5], expect_steps=0)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "stands at 5 steps, the request expects 0" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.step(session, inputs[5:6], expect_steps=-1)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        chain = [step_request(session, inputs[5:8], expect_steps=5),
                 step_request(session, inputs[8:10], expect_steps=9),  # wrong: it stands at 8
                 step_request(session, inputs[10:12], expect_steps=10),  # would be right after the one refused
                 step_request(session, inputs[10:12])]
        outs = list(client.stream(chain))
        assert [o.error.code if o.error else None for o in outs] == [
            None, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION, None]
        assert outs[-1].steps == 10  # no expectation: applied where the session stood
    np.testing.assert_array_equal(first, offline.run(inputs[:5])["outputs"])
    np.testing.assert_array_equal(np.concatenate([outs[0].outputs, outs[3].outputs]),
                                  offline.run(np.concatenate([inputs[:8], inputs[10:12]]))["outputs"][5:])
