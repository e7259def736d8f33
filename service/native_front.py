"""The native front end (`--native-port`): StreamPackedSteps served by `ntm-front` (native/front.cc, C++ gRPC),
which hands each message's bytes to this process over a Unix socket and writes back the response bytes.

Why: Python gRPC's own cost per message (its threads, the event loop, the hand-offs between them) is about the
engine's whole step at 8 sessions x 1 step on a CPU (docs/performance.md, "Native front end"). Here a message
costs one socket read and one write in Python: this module's thread parses it, checks and queues it exactly as
the main port's StreamPackedSteps does (`NTMServicer.submit_pack`: one definition of what a packed message means),
runs it on this thread when the model's thread is idle (`Batcher.run_now`), and sends the answer from whichever
thread finished it. Ordering, the stream window and HTTP/2 stay in C++.

The socket's frames: a header `HEADER` (payload length, `Kind`, stream id, seq) and the payload.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from service import packed
from service.errors import ServiceError, internal, invalid
from service.proto_gen.ntm.v1 import ntm_pb2
from service.wire import tolerant

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IB3xQQ")  # payload length, kind, stream id, seq (native/front.cc: kHeader)
REPO_BINARY = Path(__file__).resolve().parent.parent / "native" / "build" / "ntm-front"
RPC = "StreamPackedSteps"
_parse = tolerant(ntm_pb2.PackedStepRequest)


class Kind(enum.IntEnum):
    """Frame kinds; native/front.cc mirrors these numbers."""

    READY = 1  # front -> here: seq = the port it bound
    OPEN = 2  # a stream opened; payload = its authorization header's value
    MESSAGE = 3  # a request of a stream; seq = its index in the stream
    HALF_CLOSE = 4  # the client sent its last request
    GONE = 5  # the stream ended
    REPLY = 6  # here -> front: the response to request seq
    FINISH = 7  # end the stream now with status code seq, message = payload
    ACCEPT = 8  # the stream may be read
    DRAIN = 9  # here -> front: read no more; end each stream UNAVAILABLE once what it read is answered
    DRAINED = 10  # front -> here: after DRAIN, every stream has ended


class NativeFrontError(RuntimeError):
    """The native front end could not start (a start-up error: one line, exit status 2)."""


def frame(kind: Kind, stream: int, seq: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), kind, stream, seq) + payload


def frames(buffer: bytearray) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """The whole frames at the start of `buffer` as (kind, stream, seq, payload), and how many bytes they took."""
    out: list[tuple[int, int, int, bytes]] = []
    at = 0
    while len(buffer) - at >= HEADER.size:
        length, kind, stream, seq = HEADER.unpack_from(buffer, at)
        end = at + HEADER.size + length
        if end > len(buffer):
            break
        out.append((kind, stream, seq, bytes(buffer[at + HEADER.size:end])))
        at = end
    return out, at


def find_binary(given: Path | None) -> Path:
    """The ntm-front executable: `given`, else the one `make native` builds in this checkout."""
    binary = given or REPO_BINARY
    if not os.access(binary, os.X_OK):
        raise NativeFrontError(f"native front end {binary} is not there or not executable: build it with "
                               "`make native` (needs Debian's libgrpc++-dev), or give --native-binary")
    return binary


class NativeFront:
    """Starts ntm-front on `host:port`, serves its frames on a thread of this process, stops it with the server."""

    def __init__(self, servicer: Any, binary: Path, window: int, max_message_bytes: int,
                 tls: tuple[Path, Path, Path | None] | None = None) -> None:
        self._servicer = servicer
        self._binary = binary
        self._window = window
        self._max_bytes = max_message_bytes
        self._tls = tls
        self._owners: dict[int, str] = {}  # open streams' owners (auth), by stream id
        self._send_lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._dir: str | None = None
        self._drained = threading.Event()
        self.port = 0

    # --- starting and stopping ------------------------------------------------------------------------

    def start(self, host: str, port: int, timeout_s: float = 30.0) -> int:
        """Bind ntm-front to host:port (0 picks), wait for it to say READY, and start serving; the bound port."""
        self._dir = tempfile.mkdtemp(prefix="ntm-front-")
        path = os.path.join(self._dir, "engine.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        argv = [str(self._binary), "--listen", f"{host}:{port}", "--engine-socket", path,
                "--window", str(self._window), "--max-message-bytes", str(self._max_bytes)]
        if self._tls is not None:
            cert, key, client_ca = self._tls
            argv += ["--tls-cert", str(cert), "--tls-key", str(key)]
            if client_ca is not None:
                argv += ["--tls-client-ca", str(client_ca)]
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._conn = self._accept(listener, timeout_s)
            ready = self._read_ready()
        except (OSError, TimeoutError) as err:
            raise NativeFrontError(self._start_failure(f"native front end on {host}:{port} did not start ({err})")
                                   ) from None
        finally:
            listener.close()
        self._conn.settimeout(None)
        self._conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.port = ready
        self._thread = threading.Thread(target=self._serve, name="ntm-native-front", daemon=True)
        self._thread.start()
        return ready

    def _accept(self, listener: socket.socket, timeout_s: float) -> socket.socket:
        """ntm-front's connection; an OSError as soon as it exits without connecting (e.g. a missing library)."""
        assert self._process is not None
        listener.settimeout(0.1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if self._process.poll() is not None:
                    raise OSError(f"it exited with status {self._process.returncode}") from None
                continue
            conn.settimeout(timeout_s)
            return conn
        raise OSError(f"it did not connect within {timeout_s:g} s")

    def _read_ready(self) -> int:
        assert self._conn is not None
        buffer = bytearray()
        while len(buffer) < HEADER.size:
            chunk = self._conn.recv(HEADER.size - len(buffer))
            if not chunk:
                raise OSError("it closed the socket")
            buffer += chunk
        _, kind, _, seq = HEADER.unpack(buffer)
        if kind != Kind.READY:
            raise OSError(f"it sent frame kind {kind} before READY")
        return int(seq)

    def _start_failure(self, what: str) -> str:
        """`what`, with ntm-front's own words (its stderr's last line) when it has exited."""
        if self._process is not None:
            try:
                self._process.wait(timeout=2)
                assert self._process.stderr is not None
                said = self._process.stderr.read().decode(errors="replace").strip().splitlines()
                if said:
                    return f"{what}: {said[-1]}"
            except subprocess.TimeoutExpired:
                self._process.kill()
        return what

    def drain(self, grace_s: float) -> bool:
        """Stop reading new messages; each stream ends UNAVAILABLE once every message it read is answered. True
        when every stream ended within `grace_s`."""
        if self._conn is None:
            return True
        self._send(frame(Kind.DRAIN, 0, 0))
        return self._drained.wait(grace_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the socket (ntm-front ends what streams are left with UNAVAILABLE and exits), then wait for it."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            self._conn.close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._process is not None:
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # --- serving --------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            with self._send_lock:
                conn.sendall(data)
        except OSError:  # the front end is gone: its streams have ended; nothing left to answer
            pass

    def _serve(self) -> None:
        """The socket's frames, in order, until it closes."""
        assert self._conn is not None
        buffer = bytearray()
        while True:
            try:
                chunk = self._conn.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            got, used = frames(buffer)
            del buffer[:used]
            for kind, stream, seq, payload in got:
                try:
                    self._on_frame(kind, stream, seq, payload)
                except Exception:  # one bad frame must not end the others' streams
                    log.exception("native front end: frame %s of stream %s failed", kind, stream)
        if self._process is not None and self._process.poll() is not None:
            log.error("native front end exited with status %s: StreamPackedSteps on its port is down",
                      self._process.returncode)

    def _on_frame(self, kind: int, stream: int, seq: int, payload: bytes) -> None:
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
                self._send(frame(Kind.FINISH, stream, err.code.value[0], err.message.encode()))
                return
            self._owners[stream] = owner
            self._send(frame(Kind.ACCEPT, stream, 0))
        elif kind == Kind.GONE:
            self._owners.pop(stream, None)
        elif kind == Kind.DRAINED:
            self._drained.set()

    def _message(self, stream: int, seq: int, owner: str, payload: bytes) -> None:
        """One packed message: checked and queued (or refused) as on the main port; answered by `_reply`."""
        request = _parse(payload)
        request_id = "" if not isinstance(request, ntm_pb2.PackedStepRequest) else request.request_id[:256]
        try:
            if not isinstance(request, ntm_pb2.PackedStepRequest):
                raise invalid(request.message)
            self._servicer.submit_pack(request, owner, functools.partial(self._reply, stream, seq, request_id),
                                       post=_at_once)
        except ServiceError as err:
            self._servicer._count_error(RPC, err)
            self._send(frame(Kind.REPLY, stream, seq, packed.refusal(request_id, err).SerializeToString()))
        except Exception as err:  # a bug must not end the stream
            log.exception("native front end: message failed")
            self._send(frame(Kind.REPLY, stream, seq,
                             packed.refusal(request_id, internal(str(err))).SerializeToString()))

    def _reply(self, stream: int, seq: int, request_id: str, result: Any) -> None:
        """On the thread that ran the message: its response, to the front end."""
        response = self._servicer._response(RPC, result, functools.partial(packed.refusal, request_id),
                                            functools.partial(packed.answer, request_id))
        self._send(frame(Kind.REPLY, stream, seq, response.SerializeToString()))


def _at_once(on_result: Any) -> Any:
    """A job's answer delivered on the thread that finished it (no event loop in between)."""
    return on_result
