"""The `ntm.v1.NTM` gRPC service (grpc.aio): validates, hands work to the sessions and batchers, answers.

Unary calls turn a `ServiceError` into the call's status. `StreamSteps` answers a refused request with a
response whose `error` is set and goes on; its responses for one session leave in request order (a
per-stream reorder line per session), and at most `stream_window` requests of a stream are unanswered
at a time: a client that stops reading stops being read (bounded memory).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.rpc import status_pb2

from ntm_serve.api.errors import ServiceError, internal, invalid, not_found
from ntm_serve.api.headers import group_of, group_problem
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from ntm_serve.api.tensors import check_answer_size, state_tensors, step_inputs, to_tensor
from ntm_serve.api.wire import Malformed
from ntm_serve.server import packed
from ntm_serve.server.auth import TokenAuth
from ntm_serve.server.batcher import defer_wakeup
from ntm_serve.server.config import ServiceConfig
from ntm_serve.server.jobs import ControlJob, PackJob, StepJob, StepOutcome
from ntm_serve.server.memory_size import admit_rows, imported_rows, served_rows
from ntm_serve.server.metrics import Metrics
from ntm_serve.server.registry import ModelSet, ServedModel
from ntm_serve.server.sessions import MAX_ID_CHARS, Done, SessionRecord, SessionRegistry, read_action

if TYPE_CHECKING:
    from ntm_serve.server.state.keeping import SessionKeeping
    from ntm_serve.server.watch_hub import WatchHub

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_TOTAL_STEPS = 2**62  # an imported step count must leave room to go on (Session.steps is an int64)
MAX_REQUEST_ID_CHARS = 256  # request ids are echoed back and held while a request waits: keep them small


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():  # the caller has gone (cancelled); the work was still applied whole
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class LoopInbox:
    """Runs callbacks on one event loop for the batcher threads, with one loop wake-up per burst (a batch of 64
    finished requests costs one `call_soon_threadsafe`, not 64), and no future in between for stream requests
    (a callback runs straight from the drain, not one loop iteration later as a future's callbacks do)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._scheduled = False

    def callback(self, on_result: Callable[[Any], None]) -> Done:
        """A thread-safe callback that runs `on_result(result)` on the loop."""
        return functools.partial(self._put, on_result)

    def future(self) -> tuple[asyncio.Future[Any], Done]:
        """A future of the loop and a thread-safe callback that settles it."""
        future: asyncio.Future[Any] = self._loop.create_future()
        return future, self.callback(functools.partial(_settle, future))

    def _put(self, on_result: Callable[[Any], None], result: Any) -> None:
        with self._lock:
            self._items.append((on_result, result))
            if self._scheduled:
                return
            self._scheduled = True
        if not defer_wakeup(self._wake):  # on a batcher thread: woken right before its next engine call
            self._wake()

    def _wake(self) -> None:
        if asyncio._get_running_loop() is self._loop:  # on the loop itself (Batcher.run_now): no self-pipe write
            self._loop.call_soon(self._drain)
        else:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._scheduled = False
        for on_result, result in items:
            try:
                on_result(result)
            except Exception:  # one caller's bug must not cost the others their answers
                log.exception("delivering a result on the event loop failed")


def model_info(model: ServedModel, unloading: bool = False, max_memory_rows: int = 0) -> ntm_pb2.ModelInfo:
    """`max_memory_rows`: the server's --max-memory-rows (0: none), which caps the memory sizes offered."""
    c = model.spec.config
    low, high = served_rows(model.spec, max_memory_rows or model.spec.memory_rows[1])
    return ntm_pb2.ModelInfo(
        name=model.spec.name, task=model.spec.task, input_size=c["input_size"], output_size=c["output_size"],
        memory_rows=c["memory_rows"], memory_width=c["memory_width"], read_heads=c["read_heads"],
        write_heads=c["write_heads"], provider=model.provider, controller_size=c.get("controller_size", 0),
        controller=c.get("controller", ""), shift_range=c.get("shift_range", 0), encoding=model.spec.encoding,
        checkpoint_sha256=model.spec.checkpoint_sha256,
        state=[ntm_pb2.StateSpec(name=n, shape=s) for n, s in model.spec.state_shapes.items()],
        version=model.version, unloading=unloading,
        output_activation=model.spec.output_activation, task_metadata=model.spec.task_metadata,
        memory_rows_min=low, memory_rows_max=high,
    )


def _group(group: str) -> str:
    """A requested placement group, checked (ntm_serve/api/headers.py)."""
    problem = group_problem(group)
    if problem is not None:
        raise invalid(problem)
    return group


def unary(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ServiceError into the call's status (and count it)."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: NTMServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if isinstance(request, Malformed):
                raise invalid(request.message)
            return await method(self, request, context)
        except ServiceError as err:
            self._count_error(name, err)
            await context.abort(err.code, err.message)
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # a bug: say so as INTERNAL (not UNKNOWN), and log it
            log.exception("%s failed", name)
            self._count_error(name, internal(str(err)))
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {err}")

    return wrapper


_READ_DONE = object()


class _StreamOrder:
    """One stream's outgoing responses: per session in request order, as soon as each is ready."""

    def __init__(self) -> None:
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self._lines: dict[str, deque[list[Any]]] = {}
        self.outstanding = 0  # requests read and not yet handed to gRPC

    def reserve(self, session_id: str) -> list[Any]:
        cell: list[Any] = [None]
        self._lines.setdefault(session_id, deque()).append(cell)
        self.outstanding += 1
        return cell

    def fill(self, session_id: str, cell: list[Any], response: ntm_pb2.StepResponse) -> None:
        cell[0] = response
        line = self._lines[session_id]
        while line and line[0][0] is not None:
            self.out.put_nowait(line.popleft()[0])
        if not line:
            del self._lines[session_id]


class NTMServicer(ntm_pb2_grpc.NTMServicer):
    def __init__(self, models: ModelSet, registry: SessionRegistry, config: ServiceConfig,
                 metrics: Metrics, auth: TokenAuth, inbox: LoopInbox, keeping: SessionKeeping) -> None:
        self.inbox = inbox
        self.keeping = keeping  # where sessions are kept (memory, snapshots, the shared store): state/keeping.py
        self.models = models
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.auth = auth
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._streams: set[asyncio.Task[None]] = set()  # stream readers, stopped by drain()
        self._draining = False
        self.watch: WatchHub | None = None  # WatchSession's hub (ntm_serve/server/watch_hub.py), set by the server

    # --- helpers --------------------------------------------------------------------------------------

    def _owner(self, context: grpc.aio.ServicerContext) -> str:
        owner = self.auth.owner(context.invocation_metadata())
        if owner is None:  # the interceptor refuses these first; this is the belt to its braces
            raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        return owner

    def _step_metrics(self, model: str, rpc: str) -> tuple[Any, Any]:
        """The latency histogram and request counter of (model, rpc), looked up once (labels() is not free)."""
        key = (model, rpc)
        found = self._metric_children.get(key)
        if found is None:
            found = self._metric_children[key] = (self.metrics.step_latency.labels(model, rpc),
                                                  self.metrics.requests.labels(model, rpc))
        return found

    def _timed(self, model: str, rpc: str, on_result: Callable[[Any], None]) -> Done:
        """A job's answer: `on_result` posted to the event loop, after the request's latency and count are recorded."""
        post = self.inbox.callback(on_result)
        began = time.perf_counter()
        latency, requests = self._step_metrics(model, rpc)

        def done(result: Any) -> None:
            latency.observe(time.perf_counter() - began)
            requests.inc()
            post(result)

        return done

    def _count_error(self, method: str, err: ServiceError) -> None:
        self.metrics.errors.labels(method, err.code.name).inc()
        log.debug("refused", extra={"method": method, "code": err.code.name, "detail": err.message})

    def drain(self) -> None:
        """On SIGTERM: stop reading every open stream; each answers what it read, then ends with UNAVAILABLE (a
        stream opened from now on ends so at once). So a client knows exactly what was applied: every answered
        request, and no other. A replica's client reopens the stream through the proxy on another replica; a single
        server's client resends the rest once it is back (with --state-dir its sessions are)."""
        self._draining = True
        for reader in list(self._streams):
            reader.cancel()

    def _drained(self) -> str:
        """The status message of a stream ended by drain()."""
        return self.keeping.drain_message

    def _served(self, session: SessionRecord) -> ServedModel:
        """The model version a live session runs on."""
        model = self.models.get_key(session.key)
        if model is None:  # its version was removed between the lookup and now (a forced unload)
            raise not_found(f"session {session.id} has ended: its model version was unloaded")
        return model

    async def _control_by_id(self, session_id: str, owner: str, action: Callable[..., T]) -> T:
        future, done = self.inbox.future()
        self.registry.submit(session_id, owner, lambda s, d: ControlJob(s, action, d), done)
        return await future

    def _session_message(self, session: SessionRecord, state: dict[str, Any] | None = None,
                         steps: int | None = None) -> ntm_pb2.Session:
        steps = session.steps if steps is None else steps
        model = self.models.get_key(session.key)
        message = ntm_pb2.Session(session_id=session.id, model=session.model, steps=steps, ttl_seconds=session.ttl_s,
                                  checkpoint_sha256=session.checkpoint_sha256, version=model.version if model else 0,
                                  group=group_of(session.id),
                                  memory_rows=session.memory_rows or (model.spec.trained_rows if model else 0))
        expires = session.expires_wall(self.registry.clock(), time.time())
        message.expires_at.FromNanoseconds(int(expires * 1e9))
        message.created_at.FromNanoseconds(int(session.created_wall * 1e9))
        if state is not None:
            message.state.CopyFrom(self._state_message(session, steps, state))
        return message

    def _state_message(self, session: SessionRecord, steps: int, state: dict[str, Any]) -> ntm_pb2.SessionState:
        model = self.models.get_key(session.key)
        message = ntm_pb2.SessionState(model=session.model, steps=steps, checkpoint_sha256=session.checkpoint_sha256,
                                       version=model.version if model else 0)
        for name, array in state.items():
            message.tensors[name].CopyFrom(to_tensor(array))
        return message

    def _submit_step(self, request: ntm_pb2.StepRequest, owner: str, rpc: str,
                     on_result: Callable[[Any], None]) -> None:
        """Validate a step request and queue it; `on_result` runs on the event loop with a StepOutcome or a
        ServiceError. A refused request raises its ServiceError here and queues nothing."""
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            raise invalid(f"request_id has {len(request.request_id)} characters, more than {MAX_REQUEST_ID_CHARS}")
        try:
            self._queue_step(request, owner, rpc, on_result)
        except ServiceError as err:  # replica mode: dropped between its take-over and now (a failed commit)
            moved = self.keeping.moved(request.session_id, err)
            if moved is None:
                raise
            raise moved from err

    def _queue_step(self, request: ntm_pb2.StepRequest, owner: str, rpc: str,
                    on_result: Callable[[Any], None]) -> None:
        session = self.registry.get(request.session_id, owner)
        model = self._served(session)
        if not request.HasField("inputs"):
            raise invalid(f"inputs is required: a tensor of shape [T, {model.spec.input_size}]")
        inputs = step_inputs(request.inputs, model.spec.input_size, self.config.max_steps)
        check_answer_size(len(inputs), model.spec.answer_values(request.return_attention, session.memory_rows),
                          self.config.max_message_bytes, echoed_chars=len(request.session_id) + len(request.request_id))
        expect = request.expect_steps if request.HasField("expect_steps") else None
        if expect is not None and expect < 0:
            raise invalid(f"expect_steps must be >= 0, got {expect}")
        done = self._timed(session.model, rpc, on_result)

        def make(s: SessionRecord, d: Done) -> StepJob:
            return StepJob(s, inputs, request.return_attention, d, expect)

        self.registry.submit(request.session_id, owner, self.keeping.committing(make, request.request_id), done)

    @staticmethod
    def _step_response(request: ntm_pb2.StepRequest, outcome: StepOutcome) -> ntm_pb2.StepResponse:
        response = ntm_pb2.StepResponse(session_id=request.session_id, request_id=request.request_id,
                                        steps=outcome.steps, outputs=to_tensor(outcome.outputs))
        if request.return_attention:
            response.attention.read_weights.CopyFrom(to_tensor(outcome.read_weights))  # type: ignore[arg-type]
            response.attention.write_weights.CopyFrom(to_tensor(outcome.write_weights))  # type: ignore[arg-type]
        return response

    @staticmethod
    def _error_response(request: ntm_pb2.StepRequest, err: ServiceError) -> ntm_pb2.StepResponse:
        return ntm_pb2.StepResponse(session_id=request.session_id[:MAX_ID_CHARS],
                                    request_id=request.request_id[:MAX_REQUEST_ID_CHARS],
                                    error=status_pb2.Status(code=err.code.value[0], message=err.message))

    # --- RPCs -----------------------------------------------------------------------------------------

    @unary
    async def ListModels(self, request: ntm_pb2.ListModelsRequest, context: Any) -> ntm_pb2.ListModelsResponse:
        self._owner(context)
        limit = self.config.max_memory_rows
        return ntm_pb2.ListModelsResponse(models=[model_info(m, self.models.unloading(m.key), limit)
                                                  for m in self.models.every()])

    @unary
    async def CreateSession(self, request: ntm_pb2.CreateSessionRequest, context: Any) -> ntm_pb2.Session:
        owner = self._owner(context)
        model = self.models.resolve(request.model, request.version if request.HasField("version") else None)
        rows = admit_rows(model.spec, request.memory_rows, self.config.max_memory_rows, model.label)
        return self._session_message(await self.keeping.create(model, request.ttl_seconds, owner,
                                                               group=_group(request.group), memory_rows=rows))

    @unary
    async def GetSession(self, request: ntm_pb2.GetSessionRequest, context: Any) -> ntm_pb2.Session:
        owner = self._owner(context)
        await self.keeping.ensure_local(request.session_id, owner)
        session = self.registry.get(request.session_id, owner)
        if not request.include_state:
            return self._session_message(session)
        state, steps = await self._control_by_id(request.session_id, owner, read_action)
        return self._session_message(session, state, steps)

    @unary
    async def DeleteSession(self, request: ntm_pb2.DeleteSessionRequest, context: Any) -> ntm_pb2.DeleteSessionResponse:
        owner = self._owner(context)
        await self.keeping.delete(request.session_id, owner)
        return ntm_pb2.DeleteSessionResponse()

    @unary
    async def Step(self, request: ntm_pb2.StepRequest, context: Any) -> ntm_pb2.StepResponse:
        owner = self._owner(context)
        replay = await self.keeping.prepare_step(request, owner)
        if replay is not None:  # a retry of a request already applied: its recorded answer
            return self._step_response(request, replay)
        future: asyncio.Future[StepOutcome] = asyncio.get_running_loop().create_future()
        self._submit_step(request, owner, "Step", functools.partial(_settle, future))
        return self._step_response(request, await future)

    async def StreamSteps(self, request_iterator: AsyncIterator[ntm_pb2.StepRequest], context: Any) -> None:
        """Reads with `context.read()` in one task (the reader) and writes with `context.write()` here, in each
        session's request order; results reach the writer through the stream's queue straight from the
        inbox's drain (no future per request)."""
        await self._serve_stream(context, "StreamSteps", self._read_stream)

    async def StreamPackedSteps(self, request_iterator: AsyncIterator[ntm_pb2.PackedStepRequest],
                                context: Any) -> None:
        """As StreamSteps, for packed messages (ntm_serve/server/packed.py); responses leave in request order."""
        await self._serve_stream(context, "StreamPackedSteps", self._read_packed_stream)

    async def _serve_stream(self, context: Any, rpc: str,
                            read: Callable[[Any, str, _StreamOrder, asyncio.Semaphore], Any]) -> None:
        """A stream's writer: `read` (a coroutine, run as its own task) reads the requests and puts their answers in
        the stream's order line; here they are written out, at most `stream_window` unanswered at a time."""
        try:
            owner = self._owner(context)
        except ServiceError as err:
            self._count_error(rpc, err)
            await context.abort(err.code, err.message)
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._drained())
        order = _StreamOrder()
        window = asyncio.Semaphore(self.config.stream_window)
        reader = asyncio.create_task(read(context, owner, order, window))
        self._streams.add(reader)
        reader.add_done_callback(self._streams.discard)
        reading = True
        try:
            while reading or order.outstanding:
                item = await order.out.get()
                if item is _READ_DONE:
                    reading = False
                    continue
                order.outstanding -= 1
                window.release()
                await context.write(item)
            if reader.cancelled():  # drain(): answered all it read
                await context.abort(grpc.StatusCode.UNAVAILABLE, self._drained())
            await reader  # re-raises what ended the reading, if anything did
        finally:
            reader.cancel()

    @staticmethod
    async def _next_request(context: Any, window: asyncio.Semaphore) -> Any:
        """A stream's next request once the window has room for its answer, or grpc.aio.EOF."""
        request = await context.read()
        if request is not grpc.aio.EOF:
            await window.acquire()
        return request

    async def _read_stream(self, context: Any, owner: str, order: _StreamOrder, window: asyncio.Semaphore) -> None:
        try:
            while (request := await self._next_request(context, window)) is not grpc.aio.EOF:
                if isinstance(request, Malformed):  # answered, and the stream goes on
                    err = invalid(request.message)
                    self._count_error("StreamSteps", err)
                    order.fill("", order.reserve(""), ntm_pb2.StepResponse(
                        error=status_pb2.Status(code=err.code.value[0], message=err.message)))
                    continue
                replay: Any
                try:
                    replay = await self.keeping.prepare_step(request, owner)
                except ServiceError as err:
                    replay = err
                cell = order.reserve(request.session_id)
                if isinstance(replay, ServiceError):
                    self._count_error("StreamSteps", replay)
                    order.fill(request.session_id, cell, self._error_response(request, replay))
                    continue
                if replay is not None:
                    order.fill(request.session_id, cell, self._step_response(request, replay))
                    continue
                try:
                    self._submit_step(request, owner, "StreamSteps",
                                      functools.partial(self._stream_done, order, cell, request))
                except ServiceError as err:
                    self._count_error("StreamSteps", err)
                    order.fill(request.session_id, cell, self._error_response(request, err))
                except Exception as err:  # a bug must not end the stream of the other sessions
                    log.exception("StreamSteps: request failed")
                    order.fill(request.session_id, cell, self._error_response(request, internal(str(err))))
        finally:
            order.out.put_nowait(_READ_DONE)

    async def _read_packed_stream(self, context: Any, owner: str, order: _StreamOrder,
                                  window: asyncio.Semaphore) -> None:
        """StreamPackedSteps' reader: one order line for the whole stream (responses in request order)."""
        try:
            while (request := await self._next_request(context, window)) is not grpc.aio.EOF:
                cell = order.reserve("")
                request_id = "" if isinstance(request, Malformed) else request.request_id[:MAX_REQUEST_ID_CHARS]
                try:
                    if isinstance(request, Malformed):
                        raise invalid(request.message)
                    self._check_pack_message(request)
                    replay = await self.keeping.prepare_pack(request, owner)
                    if replay is not None:  # a retry of a message already applied: its recorded answer
                        order.fill("", cell, packed.answer(request_id, replay))
                        continue
                    self._submit_pack(request, owner, functools.partial(self._packed_done, order, cell, request_id))
                except ServiceError as err:
                    self._count_error("StreamPackedSteps", err)
                    order.fill("", cell, packed.refusal(request_id, err))
                except Exception as err:  # a bug must not end the stream
                    log.exception("StreamPackedSteps: message failed")
                    order.fill("", cell, packed.refusal(request_id, internal(str(err))))
        finally:
            order.out.put_nowait(_READ_DONE)

    def _submit_pack(self, request: ntm_pb2.PackedStepRequest, owner: str, on_result: Callable[[Any], None]) -> None:
        """Check a packed message whole and queue it as one PackJob; `on_result` runs on the event loop with a
        PackOutcome or a ServiceError. A refused message raises here (a PackError names its entries) and queues
        nothing."""
        try:
            self._queue_pack(request, owner, on_result)
        except ServiceError as err:  # replica mode: a session dropped between its take-over and now
            moved = self.keeping.moved_pack(err)
            if moved is None:
                raise
            raise moved from err

    def _check_pack_message(self, request: ntm_pb2.PackedStepRequest) -> None:
        """What is checked of a packed message before its sessions are looked at: its size, its request id."""
        entries = len(request.entries)
        if not 1 <= entries <= self.config.max_batch:
            raise invalid(f"a packed message carries 1 to {self.config.max_batch} entries (the server's max_batch), "
                          f"got {entries}")
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            raise invalid(f"request_id has {len(request.request_id)} characters, more than {MAX_REQUEST_ID_CHARS}")

    def _queue_pack(self, request: ntm_pb2.PackedStepRequest, owner: str, on_result: Callable[[Any], None]) -> None:
        ids, expect = packed.entry_fields(request)
        found = self.registry.find_many(ids, owner)
        checked = packed.check(request, found, expect, self._served, self.config.max_steps,
                               self.config.max_message_bytes)
        done = self._timed(checked.sessions[0].model, "StreamPackedSteps", on_result)

        def make(sessions: tuple[SessionRecord, ...], d: Done) -> PackJob:
            return PackJob(sessions, checked.inputs, request.return_attention, d, checked.expect_steps)

        self.registry.submit_pack(checked.sessions, self.keeping.committing_pack(make, request.request_id), done,
                                  wake=False)
        checked.model.batcher.run_now()  # a small complete one-step batch runs here; else the model's thread is woken

    def _response(self, rpc: str, result: Any, refuse: Callable[[ServiceError], Any],
                  answer: Callable[[Any], Any]) -> Any:
        """A stream request's response from its result: `answer(outcome)`, or `refuse(error)` (counted)."""
        if isinstance(result, ServiceError):
            self._count_error(rpc, result)
            return refuse(result)
        if isinstance(result, BaseException):
            return refuse(internal(str(result)))
        return answer(result)

    def _packed_done(self, order: _StreamOrder, cell: list[Any], request_id: str, result: Any) -> None:
        """On the event loop: a packed message's result (PackOutcome or an error) into its place in the line."""
        order.fill("", cell, self._response("StreamPackedSteps", result, functools.partial(packed.refusal, request_id),
                                            functools.partial(packed.answer, request_id)))

    def _stream_done(self, order: _StreamOrder, cell: list[Any], request: ntm_pb2.StepRequest, result: Any) -> None:
        """On the event loop: a stream request's result (StepOutcome or an error) into its place in the line."""
        order.fill(request.session_id, cell, self._response(
            "StreamSteps", result, functools.partial(self._error_response, request),
            functools.partial(self._step_response, request)))

    @unary
    async def ExportSession(self, request: ntm_pb2.ExportSessionRequest, context: Any) -> ntm_pb2.SessionState:
        owner = self._owner(context)
        await self.keeping.ensure_local(request.session_id, owner)
        session = self.registry.get(request.session_id, owner)
        state, steps = await self._control_by_id(request.session_id, owner, read_action)
        return self._state_message(session, steps, state)

    @unary
    async def ImportSession(self, request: ntm_pb2.ImportSessionRequest, context: Any) -> ntm_pb2.Session:
        owner = self._owner(context)
        if not request.HasField("state"):
            raise invalid("state is required (a SessionState from ExportSession)")
        state = request.state
        if state.checkpoint_sha256:  # exactly its own weights, whatever version number they have here
            model = self.models.weights(state.model, state.checkpoint_sha256)
            if self.models.unloading(model.key):
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"{model.label} (checkpoint_sha256 {state.checkpoint_sha256}) is being unloaded: "
                                   "no new sessions")
        else:  # an old client's state without a digest: the version it names, or the newest
            model = self.models.resolve(state.model, state.version or None)
        if not 0 <= state.steps <= MAX_TOTAL_STEPS:
            raise invalid(f"steps must be >= 0 and <= 2**62, got {state.steps}")
        shapes = {name: tuple(tensor.shape) for name, tensor in state.tensors.items()}
        rows = imported_rows(model.spec, shapes, self.config.max_memory_rows, model.label)  # its memory's N
        try:
            tensors = state_tensors(state.tensors, model.spec.shapes_at(rows))
        except ServiceError as err:
            if rows == model.spec.trained_rows:
                raise
            raise invalid(f"{err.message} (the state's memory has {rows} rows: N = {rows})") from err
        group = _group(request.group)
        return self._session_message(await self.keeping.create(model, request.ttl_seconds, owner, tensors,
                                                               state.steps, group, memory_rows=rows))

    async def WatchSession(self, request: ntm_pb2.WatchSessionRequest, context: Any) -> None:
        """Frames of a session after its steps, until it ends: ntm_serve/server/watch_hub.py."""
        if self.watch is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "WatchSession is not served here")
        else:
            await self.watch.serve(request, context)
