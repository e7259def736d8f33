"""A bounded, loopback-only gRPC load generator: N sessions, each streaming copy-task steps in a closed loop.

Every session has its own `StreamSteps` stream and keeps exactly one request in flight: it sends a
message of `steps_per_message` steps, waits for the answer, and sends the next. Latency per message
is measured from just before the write to just after the read. The run is bounded twice: by time
(warm-up + measured window) and by a cap on messages per session. Only messages completed inside
the measured window count.

Packed (`LoadSpec.packed`): the sessions are split among `packed_clients` clients (default one: a client hosting
every agent), each with one `StreamPackedSteps` stream and one message in flight; a message carries
`steps_per_message` steps of each of its client's sessions (one tick). Latency is per message, i.e. per tick.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from ntm_serve.api.headers import SESSION_HEADER
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from ntm_serve.api.tensors import to_tensor

COPY_LENGTH = 20  # copy-task vectors per sequence: 2L + 1 = 41 steps, streamed round and round


@dataclass(frozen=True)
class LoadSpec:
    sessions: int
    steps_per_message: int
    warmup_s: float
    window_s: float
    max_messages_per_session: int
    packed: bool = False  # one StreamPackedSteps message per tick carries every session of a client
    packed_clients: int = 1  # clients (streams) the sessions are split among, when packed


@dataclass
class LoadResult:
    sessions: int
    steps_per_message: int
    window_s: float
    messages: int = 0
    steps: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    window_hooks: dict[str, Any] = field(default_factory=dict)  # what the hooks measured over the window

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.window_s if self.window_s else 0.0

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.window_s if self.window_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s), q))

    def to_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "steps_per_message": self.steps_per_message, "window_s": self.window_s,
                "messages": self.messages, "steps": self.steps, "errors": self.errors,
                "steps_per_s": self.steps_per_s, "messages_per_s": self.messages_per_s,
                "p50_ms": self.percentile(50) * 1e3, "p99_ms": self.percentile(99) * 1e3,
                "mean_ms": statistics.fmean(self.latencies_s) * 1e3 if self.latencies_s else None,
                **self.window_hooks}


def copy_task_chunks(rng: np.random.Generator, input_size: int, steps_per_message: int, count: int) -> np.ndarray:
    """(count, T, I): `count` messages of consecutive copy-task steps: L random 8-bit vectors, a delimiter, L
    blanks, again."""
    seqs = []
    total = count * steps_per_message
    while sum(len(s) for s in seqs) < total:
        seq = np.zeros((2 * COPY_LENGTH + 1, input_size), np.float32)  # (2L+1, I)
        seq[:COPY_LENGTH, : input_size - 1] = rng.random((COPY_LENGTH, input_size - 1)) < 0.5
        seq[COPY_LENGTH, input_size - 1] = 1.0  # the delimiter channel
        seqs.append(seq)
    return np.concatenate(seqs)[:total].reshape(count, steps_per_message, input_size)


def copy_task_messages(rng: np.random.Generator, input_size: int, steps_per_message: int, count: int,
                       session_id: str) -> list[ntm_pb2.StepRequest]:
    """`count` StepRequests of one session (copy_task_chunks)."""
    return [ntm_pb2.StepRequest(session_id=session_id, inputs=to_tensor(chunk), request_id=str(i))
            for i, chunk in enumerate(copy_task_chunks(rng, input_size, steps_per_message, count))]


def copy_task_packed(rng: np.random.Generator, input_size: int, steps_per_message: int, count: int,
                     session_ids: list[str]) -> list[ntm_pb2.PackedStepRequest]:
    """`count` PackedStepRequests, each one tick of every session: inputs (E, T, I)."""
    chunks = np.stack([copy_task_chunks(rng, input_size, steps_per_message, count) for _ in session_ids], axis=1)
    entries = [ntm_pb2.PackedEntry(session_id=sid) for sid in session_ids]
    return [ntm_pb2.PackedStepRequest(entries=entries, inputs=to_tensor(tick), request_id=str(i))
            for i, tick in enumerate(chunks)]  # tick (E, T, I)


async def _session(stub: ntm_pb2_grpc.NTMStub, requests: list[Any], spec: LoadSpec,
                   window: tuple[float, float], result: LoadResult) -> None:
    """One closed-loop stream: a session's StreamSteps, or (packed) a client's StreamPackedSteps."""
    if spec.packed:
        call = stub.StreamPackedSteps(metadata=((SESSION_HEADER, requests[0].entries[0].session_id),))
        steps = spec.steps_per_message * len(requests[0].entries)  # session-steps per message
    else:
        call = stub.StreamSteps(metadata=((SESSION_HEADER, requests[0].session_id),))  # a cluster's proxy routes on it
        steps = spec.steps_per_message
    start, end = window
    try:
        for i in range(spec.max_messages_per_session):
            now = time.perf_counter()
            if now >= end:
                break
            await call.write(requests[i % len(requests)])
            response = await call.read()
            done = time.perf_counter()
            if response is grpc.aio.EOF:
                raise RuntimeError("the server closed the stream")
            if start <= now and done <= end:
                result.messages += 1
                result.steps += steps
                result.latencies_s.append(done - now)
                if response.HasField("error") and response.error.code != 0:
                    result.errors += 1
        await call.done_writing()
    finally:
        call.cancel()


async def _run(target: str, model: str, input_size: int, spec: LoadSpec,
               at_window_start: Callable[[], Any] | None, at_window_end: Callable[[Any], dict[str, Any]] | None
               ) -> LoadResult:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = ntm_pb2_grpc.NTMStub(channel)
        ids = [(await stub.CreateSession(ntm_pb2.CreateSessionRequest(model=model, ttl_seconds=600))).session_id
               for _ in range(spec.sessions)]
        rng = np.random.default_rng(spec.sessions * 100 + spec.steps_per_message)
        per_session = max(4, min(spec.max_messages_per_session, 64))
        if spec.packed:
            groups = [ids[c::spec.packed_clients] for c in range(min(spec.packed_clients, len(ids)))]
            requests = [copy_task_packed(rng, input_size, spec.steps_per_message, per_session, g) for g in groups]
        else:
            requests = [copy_task_messages(rng, input_size, spec.steps_per_message, per_session, sid) for sid in ids]
        result = LoadResult(spec.sessions, spec.steps_per_message, spec.window_s)
        begin = time.perf_counter()
        window = (begin + spec.warmup_s, begin + spec.warmup_s + spec.window_s)

        async def observe() -> None:
            await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
            token = await asyncio.to_thread(at_window_start) if at_window_start else None
            await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
            if at_window_end:
                result.window_hooks.update(await asyncio.to_thread(at_window_end, token))

        await asyncio.gather(observe(), *(_session(stub, r, spec, window, result) for r in requests))
        for sid in ids:
            await stub.DeleteSession(ntm_pb2.DeleteSessionRequest(session_id=sid))
        return result


def run_load(target: str, model: str, input_size: int, spec: LoadSpec,
             at_window_start: Callable[[], Any] | None = None,
             at_window_end: Callable[[Any], dict[str, Any]] | None = None) -> LoadResult:
    """Drive the server at `target` with `spec`; the hooks run (in a thread) at the window's start and end."""
    return asyncio.run(_run(target, model, input_size, spec, at_window_start, at_window_end))
