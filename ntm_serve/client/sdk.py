"""Python client of the NTM service: numpy in, numpy out.

    with NTMClient("localhost:50051") as client:
        session = client.create_session("copy")
        out = client.step(session.session_id, inputs)  # inputs (T, I) -> out.outputs (T, O)
        # many sessions in one message (one tick of many agents): inputs (E, T, I) -> outputs (E, T, O)
        out = client.step_packed([a.session_id, b.session_id], inputs)

Over TLS, with a bearer token (and a client certificate, for mutual TLS):

    NTMClient("ntm.example:50051", token="...", tls_ca="ca.pem", tls_cert="client.pem", tls_key="client.key")
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from ntm_serve.api.headers import routing
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from ntm_serve.api.replay import REPLAY_DEPTH
from ntm_serve.api.tensors import to_array, to_tensor
from ntm_serve.api.tls import channel_credentials
from ntm_serve.client.retry import DEFAULT_RETRY, RETRYABLE, RETRYABLE_CALL, STREAM_BREAKS, RetryPolicy, RetryStats

R = TypeVar("R")


class StepError(Exception):
    """A streamed request the server refused (its response carried `error`)."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class PackedStepError(StepError):
    """A packed message the server refused: nothing was applied. `entries` has one StepError per entry (entry
    order): a refused entry's own, ABORTED for an entry that was fine; empty when the message itself was wrong."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str, entries: list[StepError]) -> None:
        super().__init__(code, message, request_id)
        self.entries = entries


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    steps: int
    expires_at: datetime
    ttl_seconds: float
    state: SessionStateData | None = None
    version: int = 0  # the model version it runs on, for life
    checkpoint_sha256: str = ""  # that version's weights
    group: str = ""  # its placement group ("" for none): create_session(..., group=...)
    memory_rows: int = 0  # its memory size N, for life (0 from a server that predates memory_rows)


@dataclass(frozen=True)
class SessionStateData:
    """A session's complete state (ExportSession / ImportSession), per-session shapes."""

    model: str
    steps: int
    tensors: dict[str, np.ndarray]
    checkpoint_sha256: str = ""
    version: int = 0


@dataclass(frozen=True)
class StepOutput:
    session_id: str
    outputs: np.ndarray | None  # (T, O); None when the request was refused
    steps: int
    request_id: str = ""
    read_weights: np.ndarray | None = None  # (T, R, N) when asked
    write_weights: np.ndarray | None = None  # (T, W, N) when asked
    error: StepError | None = field(default=None)

    def check(self) -> StepOutput:
        """Raise the error this response carries, if any."""
        if self.error is not None:
            raise self.error
        return self


@dataclass(frozen=True)
class PackedOutput:
    """The answer to a packed message (StreamPackedSteps): every entry's T steps, entry order."""

    outputs: np.ndarray | None  # (E, T, O); None when the message was refused
    steps: list[int]  # each session's total after the message
    request_id: str = ""
    read_weights: np.ndarray | None = None  # (E, T, R, N) when asked
    write_weights: np.ndarray | None = None  # (E, T, W, N) when asked
    error: PackedStepError | None = field(default=None)

    def check(self) -> PackedOutput:
        """Raise the error this response carries, if any."""
        if self.error is not None:
            raise self.error
        return self


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _state_data(message: ntm_pb2.SessionState) -> SessionStateData:
    return SessionStateData(message.model, message.steps,
                            {name: to_array(t, name) for name, t in message.tensors.items()},
                            message.checkpoint_sha256, message.version)


def _state_message(state: SessionStateData) -> ntm_pb2.SessionState:
    message = ntm_pb2.SessionState(model=state.model, steps=state.steps, checkpoint_sha256=state.checkpoint_sha256,
                                   version=state.version)
    for name, array in state.tensors.items():
        message.tensors[name].CopyFrom(to_tensor(array))
    return message


def _session_info(message: ntm_pb2.Session) -> SessionInfo:
    state = _state_data(message.state) if message.HasField("state") else None
    return SessionInfo(message.session_id, message.model, message.steps, message.expires_at.ToDatetime(tzinfo=UTC),
                       message.ttl_seconds, state, message.version, message.checkpoint_sha256, message.group,
                       message.memory_rows)


def _step_output(response: ntm_pb2.StepResponse) -> StepOutput:
    if response.HasField("error") and response.error.code != 0:
        code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
        error = StepError(code, response.error.message, response.request_id)
        return StepOutput(response.session_id, None, response.steps, response.request_id, error=error)
    attention = response.HasField("attention")
    return StepOutput(
        response.session_id, to_array(response.outputs, "outputs"), response.steps, response.request_id,
        to_array(response.attention.read_weights, "read_weights") if attention else None,
        to_array(response.attention.write_weights, "write_weights") if attention else None,
    )


def _packed_output(response: ntm_pb2.PackedStepResponse) -> PackedOutput:
    if response.HasField("error") and response.error.code != 0:
        entries = [StepError(_CODES.get(s.code, grpc.StatusCode.UNKNOWN), s.message, response.request_id)
                   for s in response.entry_errors]
        error = PackedStepError(_CODES.get(response.error.code, grpc.StatusCode.UNKNOWN), response.error.message,
                                response.request_id, entries)
        return PackedOutput(None, [], response.request_id, error=error)
    attention = response.HasField("attention")
    return PackedOutput(
        to_array(response.outputs, "outputs"), list(response.steps), response.request_id,
        to_array(response.attention.read_weights, "read_weights") if attention else None,
        to_array(response.attention.write_weights, "write_weights") if attention else None,
    )


def packed_request(session_ids: Sequence[str], inputs: np.ndarray, return_attention: bool = False,
                   request_id: str = "", expect_steps: Sequence[int | None] | None = None) -> ntm_pb2.PackedStepRequest:
    """One message of steps for several sessions: inputs (E, T, I), or (E, I) for one step each; `expect_steps`:
    per entry, as in `step_request` (one mismatch refuses the whole message)."""
    inputs = np.asarray(inputs, dtype=np.float32)
    inputs = inputs[:, None] if inputs.ndim == 2 else inputs  # (E, T, I)
    expect = expect_steps if expect_steps is not None else [None] * len(session_ids)
    entries = [ntm_pb2.PackedEntry(session_id=sid, expect_steps=e) for sid, e in zip(session_ids, expect, strict=True)]
    return ntm_pb2.PackedStepRequest(entries=entries, inputs=to_tensor(inputs), return_attention=return_attention,
                                     request_id=request_id)


def step_request(session_id: str, inputs: np.ndarray, return_attention: bool = False,
                 request_id: str = "", expect_steps: int | None = None) -> ntm_pb2.StepRequest:
    """`expect_steps`: apply only if the session stands at exactly this many steps (safe retries; see the proto)."""
    return ntm_pb2.StepRequest(session_id=session_id, inputs=to_tensor(np.atleast_2d(inputs)),
                               return_attention=return_attention, request_id=request_id, expect_steps=expect_steps)


Pem = str | Path | bytes


def _session_requests(session_id: str, attention: bool, steps: int) -> Callable[[np.ndarray, int], ntm_pb2.StepRequest]:
    """Request n of a resumable session stream, made from its chunk (T, I), expecting where the one before left
    (request ids unique to this stream, as in _packed_requests)."""
    at, tag = steps, secrets.token_hex(4)

    def make(chunk: np.ndarray, n: int) -> ntm_pb2.StepRequest:
        nonlocal at
        request = step_request(session_id, chunk, attention, f"{tag}-{n}", at)
        at += int(request.inputs.shape[0])
        return request

    return make


def _packed_requests(session_ids: Sequence[str], attention: bool,
                     steps: Sequence[int]) -> Callable[[np.ndarray, int], ntm_pb2.PackedStepRequest]:
    """Message n of a resumable packed stream, made from its inputs (E, T, I) or (E, I), each entry expecting where the
    message before left it (request ids unique to this stream: a retry is recognised, another message never)."""
    at, tag = list(steps), secrets.token_hex(4)

    def make(chunk: np.ndarray, n: int) -> ntm_pb2.PackedStepRequest:
        nonlocal at
        request = packed_request(session_ids, chunk, attention, f"{tag}-{n}", at)
        at = [a + int(request.inputs.shape[1]) for a in at]
        return request

    return make


class _Outbox:
    """The requests of one resumable stream, numbered: each (re)opened stream sends the unanswered ones again, then
    new ones made by `make(chunk, n)` from `chunks`, each with the expect_steps where it must apply. `chunks` is read
    by one stream at a time (a superseded stream's reader may still be blocked in it: what it gets is numbered and
    sent by the next stream). At most `window` requests are unanswered at a time: a cluster keeps the answers of a
    session's last REPLAY_DEPTH requests, so each one a broken stream has to send again is still on record."""

    def __init__(self, chunks: Iterator[np.ndarray], make: Callable[[np.ndarray, int], Any],
                 window: int = REPLAY_DEPTH) -> None:
        self._chunks, self._make, self._window = chunks, make, window
        self._lock = threading.Condition()
        self._source = threading.Lock()
        self._requests: dict[int, Any] = {}
        self._made = 0  # requests numbered so far
        self._acked = 0  # requests answered
        self._exhausted = False
        self._generation = 0

    def stream(self) -> Iterator[Any]:
        """The requests of a new stream (supersedes the previous one)."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()
            generation, index = self._generation, self._acked
        while True:
            with self._lock:
                self._lock.wait_for(lambda i=index: generation != self._generation or i < self._acked + self._window)
                if generation != self._generation:
                    return
                request = self._requests.get(index) if index < self._made else None
                if request is None and self._exhausted:
                    return
            if request is None:
                self._pull(index)
                continue
            index += 1
            yield request

    def _pull(self, index: int) -> None:
        """Number the chunk at `index` (one reader of `chunks` at a time; only that lock is held while it
        blocks). Nothing to do when a superseded stream's reader numbered it meanwhile."""
        with self._source:
            with self._lock:
                if self._exhausted or index < self._made:
                    return
            chunk = next(self._chunks, None)
            with self._lock:
                if chunk is None:
                    self._exhausted = True
                    return
                self._requests[self._made] = self._make(chunk, self._made)
                self._made += 1

    def answered(self) -> None:
        with self._lock:
            del self._requests[self._acked]
            self._acked += 1
            self._lock.notify_all()

    def close(self) -> None:
        """No stream sends anything more (a reader waiting for room in the window returns)."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()

    def done(self) -> bool:
        with self._lock:
            return self._exhausted and self._acked == self._made


class NTMClient:
    """`tls=True` (or any `tls_*`) speaks TLS, trusting `tls_ca` (default: the system's roots); `tls_cert` and
    `tls_key` present a client certificate (mutual TLS); `tls_server_name` overrides the name checked in the
    server's certificate. `token` is sent as `authorization: Bearer <token>` on every call.

    Session-scoped calls carry the `x-ntm-session` header, and `x-ntm-group` for a session in a placement group
    (a cluster's proxy routes on them: ntm_serve/api/headers.py). `retry` is the policy for steps given
    `expect_steps` (`step`, and `step_packed` with it on every entry) and for `stream_session(..., start_steps=...)`
    and `stream_packed_sessions`: UNAVAILABLE, ABORTED and CANCELLED are retried (streams also resume after a
    break), never without `expect_steps`; `stats` counts what happened."""

    def __init__(self, target: str = "localhost:50051", *, token: str | None = None, timeout: float | None = None,
                 max_message_bytes: int = 4 * 1024 * 1024, channel: grpc.Channel | None = None,
                 tls: bool = False, tls_ca: Pem | None = None, tls_cert: Pem | None = None,
                 tls_key: Pem | None = None, tls_server_name: str | None = None,
                 retry: RetryPolicy | None = DEFAULT_RETRY) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if channel is not None:
            self.channel = channel
        elif tls or tls_ca is not None or tls_cert is not None:
            self.channel = grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = ntm_pb2_grpc.NTMStub(self.channel)
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.retry = retry
        self.stats = RetryStats()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> NTMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _routed(self, session_id: str | None) -> tuple[tuple[str, str], ...]:
        """Auth, and the headers a cluster's proxy places the call by: the session's id and group (api/headers.py)."""
        return (*self.metadata, *routing(session_id))

    def _call(self, method: str, request: object, session_id: str | None = None) -> object:
        return getattr(self.stub, method)(request, timeout=self.timeout, metadata=self._routed(session_id))

    def _retrying(self, call: Callable[[], R], session_id: str,
                  retryable: frozenset[grpc.StatusCode] = RETRYABLE_CALL) -> R:
        """`call` again after a `retryable` failure (default: UNAVAILABLE, ABORTED, CANCELLED), with backoff, up to
        the policy's attempts. A StepError raised by `call` (a refusal in a stream's answer) is retried only when its
        code is RETRYABLE (a stream's call ending CANCELLED is a break; an answer saying so is not)."""
        assert self.retry is not None
        since = None
        for attempt in range(self.retry.attempts + 1):
            try:
                result = call()
            except (grpc.RpcError, StepError) as err:
                refused = isinstance(err, StepError)
                code, detail = (err.code, err.message) if refused else (err.code(), err.details() or "")  # type: ignore[union-attr]
                if code not in (RETRYABLE if refused else retryable) or attempt == self.retry.attempts:
                    raise
                since = time.monotonic() if since is None else since
                self.stats.failed(code, detail.replace(session_id, "<session>"))
                time.sleep(self.retry.delay(attempt))
                continue
            if since is not None:
                self.stats.recovered(since)
            return result
        raise AssertionError("unreachable")

    def list_models(self) -> list[ntm_pb2.ModelInfo]:
        return list(self._call("ListModels", ntm_pb2.ListModelsRequest()).models)  # type: ignore[attr-defined]

    def create_session(self, model: str, ttl_seconds: float = 0.0, version: int | None = None,
                       group: str = "", memory_rows: int = 0) -> SessionInfo:
        """A new session on `version` of the model (default: the newest); it stays on that version. `group`: a
        placement group (1 to 64 of A-Z a-z 0-9 _ -): its id begins "<group>.", and a cluster places a group's
        sessions on one replica, so packed messages of one group's sessions are served there (in a cluster they
        must be). `memory_rows`: the session's memory size N, for life (0: the model's trained N; ListModels gives
        the range, ModelInfo.memory_rows_min/_max): a larger memory for longer sequences, the same weights."""
        request = ntm_pb2.CreateSessionRequest(model=model, ttl_seconds=ttl_seconds, version=version, group=group,
                                               memory_rows=memory_rows)
        return _session_info(self._call("CreateSession", request))

    def get_session(self, session_id: str, include_state: bool = False) -> SessionInfo:
        request = ntm_pb2.GetSessionRequest(session_id=session_id, include_state=include_state)
        return _session_info(self._call("GetSession", request, session_id))

    def delete_session(self, session_id: str) -> None:
        self._call("DeleteSession", ntm_pb2.DeleteSessionRequest(session_id=session_id), session_id)

    def step(self, session_id: str, inputs: np.ndarray, return_attention: bool = False,
             request_id: str = "", expect_steps: int | None = None) -> StepOutput:
        """Apply inputs (T, I) (or one step (I,)) to a session; raises grpc.RpcError when refused. With
        `expect_steps`, only if the session stands at that many steps (FAILED_PRECONDITION otherwise), and then
        retried on UNAVAILABLE / ABORTED / CANCELLED (ntm_serve/client/retry.py; a request id is made up when none is
        given:
        a retry of a request whose answer was lost is answered again)."""
        if expect_steps is None or self.retry is None:
            request = step_request(session_id, inputs, return_attention, request_id, expect_steps)
            return _step_output(self._call("Step", request, session_id))  # type: ignore[arg-type]
        request = step_request(session_id, inputs, return_attention, request_id or secrets.token_hex(8), expect_steps)
        return self._retrying(lambda: _step_output(self._call("Step", request, session_id)),  # type: ignore[arg-type]
                              session_id)

    def stream(self, requests: Iterable[ntm_pb2.StepRequest], route: str | None = None) -> Iterator[StepOutput]:
        """One bidirectional stream: requests may name any sessions; refused ones come back with `.error`.
        In a cluster a stream lives on one replica (the one `route`, a session id, hashes to): sessions of a
        multi-session stream are taken over by that replica; `stream_session` per session avoids the moves."""
        for response in self.stub.StreamSteps(iter(requests), timeout=self.timeout, metadata=self._routed(route)):
            yield _step_output(response)

    def stream_packed(self, requests: Iterable[ntm_pb2.PackedStepRequest],
                      route: str | None = None) -> Iterator[PackedOutput]:
        """One StreamPackedSteps stream (make requests with `packed_request`): answers in request order, refused
        messages with `.error`. `route`: a session id; a cluster's proxy places the stream where that session's
        group is (in a cluster every message's sessions must share one group: `create_session(..., group=...)`)."""
        for response in self.stub.StreamPackedSteps(iter(requests), timeout=self.timeout,
                                                    metadata=self._routed(route)):
            yield _packed_output(response)

    def step_packed(self, session_ids: Sequence[str], inputs: np.ndarray, return_attention: bool = False,
                    request_id: str = "", expect_steps: Sequence[int | None] | None = None) -> PackedOutput:
        """T steps for each of several sessions in one message, applied whole or not at all: inputs (E, T, I), or
        (E, I) for one step each -> outputs (E, T, O). Raises PackedStepError (with each entry's status) when
        refused. With `expect_steps` for every entry, retried like a resumed stream when the server is unavailable
        or the stream breaks (stopping, restarting, unreachable): a message the server had applied is then refused
        with FAILED_PRECONDITION, never applied twice. For a steady flow of messages, keep one stream open with
        `stream_packed`."""
        every = expect_steps is not None and all(e is not None for e in expect_steps)
        route = session_ids[0] if session_ids else None  # in a cluster: the replica of the entries' group
        if not every or self.retry is None or not session_ids:
            request = packed_request(session_ids, inputs, return_attention, request_id, expect_steps)
            return next(self.stream_packed([request], route)).check()
        request = packed_request(session_ids, inputs, return_attention, request_id or secrets.token_hex(8),
                                 expect_steps)
        # A stream: retried on the breaks a stream can end with (a server stopping may reset it: CANCELLED), and on
        # a retryable refusal in its answer (a replica: the store unreachable, a session moved; nothing applied)
        return self._retrying(lambda: next(self.stream_packed([request], route)).check(), session_ids[0],
                              STREAM_BREAKS)

    def stream_session(self, session_id: str, chunks: Iterable[np.ndarray], return_attention: bool = False,
                       start_steps: int | None = None) -> Iterator[StepOutput]:
        """Stream chunks (T_i, I) of one session; raises StepError on the first refused chunk. With
        `start_steps` (where the session stands), every request carries its expect_steps and the stream is
        resumed after a break or a retryable refusal: unanswered requests are sent again, in order."""
        if start_steps is None or self.retry is None:
            requests = (step_request(session_id, c, return_attention, str(i)) for i, c in enumerate(chunks))
            for output in self.stream(requests, route=session_id):
                yield output.check()
            return
        outbox = _Outbox(iter(chunks), _session_requests(session_id, return_attention, start_steps))
        yield from self._resumable(outbox, self.stub.StreamSteps, _step_output, session_id, f"session {session_id}")

    def stream_packed_sessions(self, session_ids: Sequence[str], ticks: Iterable[np.ndarray],
                               start_steps: Sequence[int], return_attention: bool = False) -> Iterator[PackedOutput]:
        """One packed message per item of `ticks` (inputs (E, T, I), or (E, I) for one step each) for the same
        sessions, over one StreamPackedSteps stream, in order: the fast path for a client that steps many agents
        tick after tick. `start_steps`: where each session stands. Every message carries each entry's
        expect_steps, and the stream is resumed after a break or a retryable refusal (a replica killed, drained, or
        its store unreachable): unanswered messages are sent again, in order, and one the server had applied is
        answered again from its record, never applied twice. In a cluster the sessions must share one group.
        Raises PackedStepError on a refusal that a retry cannot fix."""
        assert self.retry is not None, "a resumable stream needs a retry policy"
        if len(start_steps) != len(session_ids):
            raise ValueError(f"start_steps has {len(start_steps)} counts for {len(session_ids)} sessions")
        outbox = _Outbox(iter(ticks), _packed_requests(session_ids, return_attention, start_steps))
        yield from self._resumable(outbox, self.stub.StreamPackedSteps, _packed_output,
                                   session_ids[0] if session_ids else None, f"sessions {', '.join(session_ids[:3])}")

    def _resumable(self, outbox: _Outbox, method: Callable[..., Any], parse: Callable[[Any], Any], route: str | None,
                   label: str) -> Iterator[Any]:
        try:
            yield from self._resume(outbox, method, parse, route, label)
        finally:
            outbox.close()  # however it ended: no request reader is left waiting

    def _resume(self, outbox: _Outbox, method: Callable[..., Any], parse: Callable[[Any], Any], route: str | None,
                label: str) -> Iterator[Any]:
        """Open the stream, and open it again after a break or a retryable refusal, until every request is answered."""
        assert self.retry is not None
        attempt, since = 0, None
        while True:
            call = method(outbox.stream(), timeout=self.timeout, metadata=self._routed(route))
            failure, detail = grpc.StatusCode.UNAVAILABLE, "stream ended early"  # (a draining replica): resume
            try:
                for response in call:
                    output = parse(response)
                    if output.error is not None:
                        if output.error.code not in RETRYABLE:
                            raise output.error
                        failure, detail = output.error.code, output.error.message
                        call.cancel()  # the requests behind it expect its steps: resend from it
                        break
                    outbox.answered()
                    if since is not None:
                        self.stats.recovered(since)
                        attempt, since = 0, None
                    yield output
                else:
                    if outbox.done():
                        return
            except grpc.RpcError as err:
                failure, detail = err.code(), err.details() or ""  # type: ignore[attr-defined]
                if failure not in STREAM_BREAKS:
                    raise
            if attempt >= self.retry.attempts:
                raise StepError(failure, f"{label}: gave up after {attempt} retries ({detail})")
            since = time.monotonic() if since is None else since
            self.stats.failed(failure, detail.replace(route, "<session>") if route else detail)
            time.sleep(self.retry.delay(attempt))
            attempt += 1

    def watch_session(self, session_id: str, every: int = 1, heads_only: bool = False,
                      timeout: float | None = None) -> Iterator[ntm_pb2.WatchFrame]:
        """The session's frames: its state as the watch begins (`snapshot`), then after each of its steps (every
        k-th; only the heads' weightings with `heads_only`) until it ends, which raises grpc.RpcError with the
        reason (NOT_FOUND deleted or expired, ABORTED moved to another replica). `timeout`: the whole watch's
        (default: none, not the client's per-call timeout). Cancel it with `.cancel()` on the returned call."""
        request = ntm_pb2.WatchSessionRequest(session_id=session_id, every=every, heads_only=heads_only)
        return self.stub.WatchSession(request, timeout=timeout, metadata=self._routed(session_id))  # type: ignore[no-any-return]

    def export_session(self, session_id: str) -> SessionStateData:
        request = ntm_pb2.ExportSessionRequest(session_id=session_id)
        return _state_data(self._call("ExportSession", request, session_id))

    def import_session(self, state: SessionStateData, ttl_seconds: float = 0.0, group: str = "") -> SessionInfo:
        """A new session holding `state` (from export_session), in placement group `group` (as in create_session)."""
        request = ntm_pb2.ImportSessionRequest(state=_state_message(state), ttl_seconds=ttl_seconds, group=group)
        return _session_info(self._call("ImportSession", request))
