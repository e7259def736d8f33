"""Continuous batching: many sessions share onnxruntime calls without cross-talk; batching can be turned
off; a request is applied whole or not at all (even when its caller leaves, or the engine fails)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import Offline, bits, service_config

from ntm_serve.client.sdk import NTMClient, step_request
from ntm_serve.server.server import ServerThread

EXACT = 1e-6


def _histogram(server: ServerThread, name: str, model: str = "copy") -> tuple[float, float]:
    """(count, sum) of a histogram of the live server."""
    registry = server.server.metrics.registry
    count = registry.get_sample_value(f"{name}_count", {"model": model}) or 0.0
    total = registry.get_sample_value(f"{name}_sum", {"model": model}) or 0.0
    return count, total


def _drive(target: str, inputs: np.ndarray, seed: int) -> tuple[str, np.ndarray]:
    """One client: a session streamed in random chunks (1-6 steps), some chunks as unary calls."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < len(inputs):
        sizes.append(int(min(rng.integers(1, 7), len(inputs) - sum(sizes))))
    chunks = np.split(inputs, np.cumsum(sizes)[:-1])
    with NTMClient(target, timeout=120) as client:
        session = client.create_session("copy").session_id
        outputs = [client.step(session, chunks[0]).outputs]
        outputs += [o.outputs for o in client.stream_session(session, chunks[1:])]
    return session, np.concatenate(outputs)


def test_64_concurrent_sessions_batch_without_cross_talk(server: ServerThread, offline: Offline) -> None:
    rng = np.random.default_rng(64)
    inputs = [bits(rng, 24) for _ in range(64)]
    calls_before, sessions_before = _histogram(server, "ntm_batch_size")
    barrier = threading.Barrier(64)

    def one(i: int) -> tuple[str, np.ndarray]:
        barrier.wait(timeout=60)
        return _drive(server.target, inputs[i], seed=i)

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert len({session for session, _ in results}) == 64
    for i, (_, got) in enumerate(results):  # bit for bit: a row's numbers do not depend on its batch
        np.testing.assert_array_equal(got, offline.run(inputs[i])["outputs"], err_msg=f"session {i}")
    calls, sessions = _histogram(server, "ntm_batch_size")
    calls, sessions = calls - calls_before, sessions - sessions_before
    assert sessions == 64 * 24  # every session-step went through a batched call, exactly once
    assert sessions / calls > 2, f"mean batch size {sessions / calls:.2f}: steps were not batched"


def test_batching_off_gives_the_same_numbers(copy_dir: Path, offline: Offline, rng: np.random.Generator) -> None:
    inputs = [bits(rng, 20) for _ in range(8)]
    with ServerThread(service_config(copy_dir, batching=False)) as server:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _drive(server.target, inputs[i], seed=i), range(8)))
        calls, sessions = _histogram(server, "ntm_batch_size")
    for i, (_, got) in enumerate(results):  # sequence.onnx (whole requests) and step.onnx agree bit for bit
        np.testing.assert_array_equal(got, offline.run(inputs[i])["outputs"])
    assert calls == sessions  # one session per onnxruntime call


def test_a_request_is_applied_whole_even_when_its_caller_leaves(copy_dir: Path, offline: Offline,
                                                                rng: np.random.Generator) -> None:
    inputs = bits(rng, 1000)
    with ServerThread(service_config(copy_dir)) as server, NTMClient(server.target) as client:
        session = client.create_session("copy").session_id
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Step(step_request(session, inputs), timeout=0.02)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 30
        while client.get_session(session).steps != 1000:  # the request finishes without its caller
            assert time.monotonic() < deadline, "the abandoned request did not finish"
            time.sleep(0.05)
        after = client.step(session, inputs[:5]).outputs
    np.testing.assert_allclose(after, offline.run(np.concatenate([inputs, inputs[:5]]))["outputs"][1000:],
                               rtol=0, atol=EXACT)


def test_an_engine_failure_mid_request_leaves_the_session_as_it_was(copy_dir: Path, offline: Offline,
                                                                    rng: np.random.Generator) -> None:
    """Fault injection: the engine raises on its 4th step call, in the middle of a 10-step request."""
    inputs = bits(rng, 20)
    with ServerThread(service_config(copy_dir)) as server, NTMClient(server.target) as client:
        session = client.create_session("copy").session_id
        client.step(session, inputs[:5])
        before = client.export_session(session)
        engine = server.server.models["copy"].batcher.engine
        real_step, calls = engine.step, []

        def failing_step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                raise RuntimeError("injected fault")
            return real_step(*args, **kwargs)

        engine.step = failing_step
        try:
            with pytest.raises(grpc.RpcError) as err:
                client.step(session, inputs[5:15])
        finally:
            engine.step = real_step
        assert err.value.code() == grpc.StatusCode.INTERNAL and "not applied" in err.value.details()
        after = client.export_session(session)
        assert after.steps == before.steps == 5
        for name in before.tensors:
            np.testing.assert_array_equal(after.tensors[name], before.tensors[name], err_msg=name)
        rest = client.step(session, inputs[5:]).outputs  # and it goes on as if nothing happened
    np.testing.assert_allclose(rest, offline.run(inputs)["outputs"][5:], rtol=0, atol=EXACT)
