"""The native front end (`--native-port`): StreamPackedSteps served by libntmfront (native/front.cc: C++ gRPC in
this process, through ctypes), whose requests this module's thread takes as bytes and answers as bytes.

Why: Python gRPC's own cost per message (its threads, the event loop, the hand-offs between them) is about the
engine's whole step at 8 sessions x 1 step on a CPU (docs/performance.md, "Native front end"). Here HTTP/2 and
gRPC run in C++; one Python thread takes each request's bytes (`ntmf_next` waits without the GIL: ctypes releases
it), parses, checks and queues the message exactly as the main port's StreamPackedSteps does
(`NTMServicer.submit_pack`: one definition of what a packed message means), runs it on this thread when the
model's thread is idle (`Batcher.run_now`), and writes the answer from whichever thread finished it
(`ntmf_reply`). Ordering, the stream window and HTTP/2 stay in C++.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any

import grpc

from service import packed
from service.errors import ServiceError, internal, invalid
from service.proto_gen.ntm.v1 import ntm_pb2
from service.servicer import MAX_REQUEST_ID_CHARS
from service.wire import tolerant

log = logging.getLogger(__name__)

REPO_LIBRARY = Path(__file__).resolve().parent.parent / "native" / "build" / "libntmfront.so"
RPC = "StreamPackedSteps"
_parse = tolerant(ntm_pb2.PackedStepRequest)
_u64 = ctypes.c_uint64


class Kind(enum.IntEnum):
    """The library's events (`ntmf_next`); native/front.cc mirrors these numbers."""

    STOPPED = 0  # the front end stopped: no more events
    OPEN = 2  # a stream opened; payload = its authorization header's value
    MESSAGE = 3  # a request of a stream; seq = its index in the stream
    HALF_CLOSE = 4  # the client sent its last request
    GONE = 5  # the stream ended
    DRAINED = 10  # after ntmf_drain, every stream has ended


class NativeFrontError(RuntimeError):
    """The native front end could not start (a start-up error: one line, exit status 2)."""


@functools.cache
def load_library(path: Path) -> ctypes.CDLL:
    """libntmfront with its functions' signatures (ctypes.CDLL: every call releases the GIL)."""
    lib = ctypes.CDLL(str(path))
    lib.ntmf_start.restype = ctypes.c_void_p
    lib.ntmf_start.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_long]
    lib.ntmf_next.restype = ctypes.c_long
    lib.ntmf_next.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_long, ctypes.POINTER(ctypes.c_int),
                              ctypes.POINTER(_u64), ctypes.POINTER(_u64)]
    lib.ntmf_accept.argtypes = [ctypes.c_void_p, _u64]
    lib.ntmf_reply.argtypes = [ctypes.c_void_p, _u64, _u64, ctypes.c_char_p, ctypes.c_long]
    lib.ntmf_finish.argtypes = [ctypes.c_void_p, _u64, ctypes.c_int, ctypes.c_char_p]
    lib.ntmf_drain.argtypes = [ctypes.c_void_p]
    lib.ntmf_stop.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.ntmf_free.argtypes = [ctypes.c_void_p]
    for name in ("ntmf_accept", "ntmf_reply", "ntmf_finish"):
        getattr(lib, name).restype = ctypes.c_int
    for name in ("ntmf_drain", "ntmf_stop", "ntmf_free"):
        getattr(lib, name).restype = None
    return lib


def find_library(given: Path | None) -> ctypes.CDLL:
    """libntmfront: `given`, else the one `make native` builds in this checkout."""
    path = given or REPO_LIBRARY
    if not path.is_file():
        raise NativeFrontError(f"native front end {path} is not there: build it with `make native` (needs Debian's "
                               "libgrpc++-dev), or give --native-library")
    try:
        return load_library(path.resolve())
    except OSError as err:
        raise NativeFrontError(f"native front end {path} does not load: {err}") from None


class NativeFront:
    """Serves StreamPackedSteps on host:port through libntmfront, with a thread of this process taking its events."""

    def __init__(self, servicer: Any, lib: ctypes.CDLL, window: int, max_message_bytes: int,
                 tls: tuple[Path, Path, Path | None] | None = None) -> None:
        self._servicer = servicer
        self._lib = lib
        self._window = window
        self._max_bytes = max_message_bytes
        self._tls = tls
        self._owners: dict[int, str] = {}  # open streams' owners (auth), by stream id
        self._handle: int | None = None
        self._handle_lock = threading.Lock()  # a reply from the model's thread never meets a freed handle
        self._thread: threading.Thread | None = None
        self._drained = threading.Event()
        self.port = 0

    def start(self, host: str, port: int) -> int:
        """Bind host:port (0 picks) and start serving; the bound port."""
        cert, key, client_ca = self._tls if self._tls is not None else ("", "", None)
        bound = ctypes.c_int(0)
        error = ctypes.create_string_buffer(512)
        handle = self._lib.ntmf_start(f"{host}:{port}".encode(), self._window, self._max_bytes, os.fsencode(cert),
                                      os.fsencode(key), os.fsencode(client_ca or ""), ctypes.byref(bound), error,
                                      len(error))
        if not handle:
            raise NativeFrontError(f"native front end: {error.value.decode(errors='replace')}")
        self._handle, self.port = handle, bound.value
        self._thread = threading.Thread(target=self._serve, name="ntm-native-front", daemon=True)
        self._thread.start()
        return self.port

    def drain(self, grace_s: float) -> bool:
        """Stop reading new messages; each stream ends UNAVAILABLE once every message it read is answered. True
        when every stream ended within `grace_s`."""
        if self._handle is None:
            return True
        self._lib.ntmf_drain(self._handle)
        return self._drained.wait(grace_s)

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving (streams still open end UNAVAILABLE), end the thread, release the library's state."""
        if self._handle is None:
            return
        self._lib.ntmf_stop(self._handle, int(grace_s * 1000))
        if self._thread is not None:
            self._thread.join()
        with self._handle_lock:
            self._lib.ntmf_free(self._handle)
            self._handle = None

    # --- serving --------------------------------------------------------------------------------------

    def _serve(self) -> None:
        """The library's events, in order, until it stops."""
        buffer = ctypes.create_string_buffer(1 << 16)
        kind, stream, seq = ctypes.c_int(), _u64(), _u64()
        refs = ctypes.byref(kind), ctypes.byref(stream), ctypes.byref(seq)
        while True:
            length = self._lib.ntmf_next(self._handle, buffer, len(buffer), *refs)
            if length < 0:  # a larger message than any before: grow, and take it again
                buffer = ctypes.create_string_buffer(-length)
                continue
            if kind.value == Kind.STOPPED:
                return
            try:
                self._on_event(kind.value, stream.value, seq.value, buffer.raw[:length])
            except Exception:  # one bad event must not end the others' streams
                log.exception("native front end: event %s of stream %s failed", kind.value, stream.value)

    def _on_event(self, kind: int, stream: int, seq: int, payload: bytes) -> None:
        if kind == Kind.MESSAGE:
            owner = self._owners.get(stream)
            if owner is not None:
                self._message(stream, seq, owner, payload)
        elif kind == Kind.OPEN:
            owner = self._servicer.auth.owner([("authorization", payload.decode(errors="replace"))])
            if owner is None:
                err = ServiceError(grpc.StatusCode.UNAUTHENTICATED,
                                   "missing or invalid bearer token (metadata 'authorization: Bearer <token>')")
                self._servicer._count_error(RPC, err)
                self._lib.ntmf_finish(self._handle, stream, err.code.value[0], err.message.encode())
                return
            self._owners[stream] = owner
            self._lib.ntmf_accept(self._handle, stream)
        elif kind == Kind.GONE:
            self._owners.pop(stream, None)
        elif kind == Kind.DRAINED:
            self._drained.set()

    def _message(self, stream: int, seq: int, owner: str, payload: bytes) -> None:
        """One packed message: checked and queued (or refused) as on the main port; answered by `_reply`."""
        request = _parse(payload)
        request_id = request.request_id[:MAX_REQUEST_ID_CHARS] if isinstance(request, ntm_pb2.PackedStepRequest) \
            else ""
        try:
            if not isinstance(request, ntm_pb2.PackedStepRequest):
                raise invalid(request.message)
            self._servicer.submit_pack(request, owner, functools.partial(self._reply, stream, seq, request_id),
                                       post=_at_once)
        except ServiceError as err:
            self._servicer._count_error(RPC, err)
            self._write(stream, seq, packed.refusal(request_id, err))
        except Exception as err:  # a bug must not end the stream
            log.exception("native front end: message failed")
            self._write(stream, seq, packed.refusal(request_id, internal(str(err))))

    def _reply(self, stream: int, seq: int, request_id: str, result: Any) -> None:
        """On the thread that ran the message: its response, written out."""
        self._write(stream, seq, self._servicer._response(RPC, result, functools.partial(packed.refusal, request_id),
                                                          functools.partial(packed.answer, request_id)))

    def _write(self, stream: int, seq: int, response: ntm_pb2.PackedStepResponse) -> None:
        data = response.SerializeToString()
        with self._handle_lock:
            if self._handle is not None:  # else: stopped; the stream has ended
                self._lib.ntmf_reply(self._handle, stream, seq, data, len(data))


def _at_once(on_result: Any) -> Any:
    """A job's answer delivered on the thread that finished it (no event loop in between)."""
    return on_result
