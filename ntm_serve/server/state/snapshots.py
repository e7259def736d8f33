"""Durable sessions: snapshots of every session's state in `--state-dir`, restored at start-up.

Layout: one file per session, `<sha256(session id)[:32]>.snap` (the id itself, a capability when auth is
off, is not put in a file name), in the format of ntm_serve/server/state/snapshot_format.py (magic, version, length,
sha256 checksum). One file per session keeps each file self-consistent and makes a pass cost only the
sessions that changed since the last one (their step count or last use moved); sessions are
independent, so a crash in the middle of a pass leaves every session at one of its request boundaries.

Writing is atomic: the bytes go to `<name>.tmp`, are fsynced, renamed over `<name>.snap`, and the
directory is fsynced once per batch of renames. A deleted or expired session's file is unlinked at
once (so a restart cannot bring it back). `.tmp` files left by a crash are removed at start-up; a file
that fails its checks is renamed to `<name>.snap.corrupt`, counted in `ntm_snapshot_errors_total` and
logged, and never loaded. Files of a model that is not served now, or of other weights, are skipped and
left in place: their sessions answer FAILED_PRECONDITION naming the weights they need, and come back when
that model version is loaded (at run time too: `restore(only=key)`). Engines are keyed by model version,
`(name, checkpoint_sha256)` (ntm_serve/server/registry.py): a session is restored onto exactly its own weights.
A lock (`flock` on `.lock`) keeps a second server off the same directory.

Periodic passes run in their own thread every `--snapshot-interval-s`. Each session's state is read by a
control job on its model's batcher, i.e. between two of its requests (a request is applied whole or
not at all, so a snapshot never holds half a request); other sessions keep being served meanwhile. The
final pass, on graceful shutdown, runs after the batchers have drained and reads the rows directly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ntm_serve.api.errors import ServiceError
from ntm_serve.server.jobs import ControlJob
from ntm_serve.server.memory_size import restorable
from ntm_serve.server.registry import weights_missing
from ntm_serve.server.sessions import SessionRecord
from ntm_serve.server.state.snapshot_format import SessionSnapshot, SnapshotError, decode, encode

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.sessions import SessionRegistry

log = logging.getLogger(__name__)

SUFFIX, TEMP, CORRUPT, LOCK = ".snap", ".tmp", ".corrupt", ".lock"
CHUNK = 256  # sessions read, written and renamed per batch (bounds the memory of a pass)
READ_TIMEOUT_S = 120.0  # a snapshot read waits at most this long behind a session's queued requests


class StateDirError(RuntimeError):
    """The state directory cannot be used (not writable, or held by another server)."""


def file_name(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()[:32] + SUFFIX


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotStore:
    """The files of one state directory: atomic writes, removal, scanning with integrity checks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise StateDirError(f"state dir {directory} cannot be used: {err}") from err
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._lock_fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateDirError(f"state dir {directory} is in use by another server") from err
            raise StateDirError(f"state dir {directory}: cannot lock it: {err}") from err
        if not os.access(directory, os.W_OK | os.X_OK):
            self.close()
            raise StateDirError(f"state dir {directory} is not writable")
        self._lock = threading.Lock()  # a rename and a removal of the same session never interleave

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)  # releases the flock

    def path(self, session_id: str) -> Path:
        return self.directory / file_name(session_id)

    def clear_temps(self) -> int:
        """Remove the half-written files a crash left behind."""
        temps = list(self.directory.glob(f"*{SUFFIX}{TEMP}"))
        for temp in temps:
            temp.unlink(missing_ok=True)
        return len(temps)

    def scan(self) -> Iterator[tuple[Path, SessionSnapshot | SnapshotError]]:
        """Every `.snap` file, decoded, or the reason it cannot be trusted."""
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                data = path.read_bytes()
            except OSError as err:
                yield path, SnapshotError("unreadable", str(err))
                continue
            try:
                snapshot = decode(data)
            except SnapshotError as err:
                yield path, err
                continue
            if path.name != file_name(snapshot.session_id):
                yield path, SnapshotError("format", f"file name {path.name} does not belong to its session")
                continue
            yield path, snapshot

    def quarantine(self, path: Path) -> Path:
        """Move a bad file aside (kept for inspection, never loaded again)."""
        target = path.with_name(path.name + CORRUPT)
        os.replace(path, target)
        return target

    def write(self, items: list[tuple[SessionRecord, bytes]]) -> list[SessionRecord]:
        """Atomically replace the files of these sessions; the ones written (ended sessions are skipped)."""
        staged: list[tuple[SessionRecord, Path]] = []
        try:
            for session, data in items:
                temp = self.path(session.id).with_suffix(SUFFIX + TEMP)
                staged.append((session, temp))
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError:  # e.g. a full disk: leave the old files as they were
            for _, temp in staged:
                temp.unlink(missing_ok=True)
            raise
        written = []
        with self._lock:
            for session, temp in staged:
                if session.ended:  # deleted or expired while we wrote: its file must not come back
                    temp.unlink(missing_ok=True)
                else:
                    os.replace(temp, self.path(session.id))
                    written.append(session)
        _fsync_dir(self.directory)
        return written

    def remove(self, session_id: str) -> None:
        with self._lock:
            self.path(session_id).unlink(missing_ok=True)

    def sync(self) -> None:
        """Make removals durable too (renames are synced by `write`)."""
        _fsync_dir(self.directory)


def snapshot_read(engine: Engine, session: SessionRecord) -> tuple[dict[str, np.ndarray], int] | None:
    """Control job: the session's state and step count between its requests; None if it has no row."""
    if session.slot < 0:
        return None
    return engine.read_row(session.slot, session.memory_rows), session.steps


@dataclass(frozen=True)
class Saved:
    """What a session's snapshot file holds: its step count, and its last use when it was read."""

    steps: int
    used: float  # the session's last_used (monotonic clock)


@dataclass(frozen=True)
class RestoreReport:
    restored: int
    expired: int
    skipped: int  # intact files of models not served now, or of other weights: left in place
    corrupt: int  # moved aside
    temps: int  # half-written files removed


class Snapshotter:
    """Periodic and final snapshots of a registry's sessions into a store; restore at start-up."""

    def __init__(self, store: SnapshotStore, registry: SessionRegistry, engines: Mapping[tuple[str, str], Engine],
                 metrics: Metrics, interval_s: float, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.registry = registry
        self.engines = engines
        self.metrics = metrics
        self.interval_s = interval_s
        self.wall = wall
        self._saved: dict[SessionRecord, Saved] = {}  # what each live session's file holds (no file: absent)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="snapshotter", daemon=True)
        registry.on_end = self._ended

    # --- start-up -------------------------------------------------------------------------------------

    def restore(self, only: tuple[str, str] | None = None) -> RestoreReport:
        """Load every snapshot into the registry and the engines' pools; with `only`, the snapshots of that
        model version (just loaded at run time). Call before the batchers of the engines filled start (the
        engines are used directly)."""
        temps = self.store.clear_temps() if only is None else 0
        restored = expired = skipped = corrupt = 0
        for path, item in self.store.scan():
            if only is not None and (isinstance(item, SnapshotError) or (item.model, item.checkpoint_sha256) != only):
                continue
            if isinstance(item, SnapshotError):
                corrupt += 1
                self._reject(path, item.reason, item.message, quarantine=True)
                continue
            problem = self._unservable(item)
            if isinstance(problem, tuple):
                reason, message, bad = problem
                corrupt += bad
                skipped += not bad
                self._reject(path, reason, message, quarantine=bad)
                if not bad:  # kept: the session comes back when its weights are loaded
                    self.registry.remember_gone(item.session_id,
                                                weights_missing(item.model, item.checkpoint_sha256))
                continue
            idle = max(0.0, self.wall() - item.idle_wall)
            if idle > item.ttl_s:
                expired += 1
                self.store.remove(item.session_id)
                self.registry.remember_gone(item.session_id, "expired")
                self.metrics.evictions.labels(item.model, "ttl").inc()
                log.info("session expired while the server was down", extra={"session": item.session_id,
                                                                            "model": item.model, "idle_s": idle})
                continue
            engine = self.engines[(item.model, item.checkpoint_sha256)]
            now = self.registry.clock()
            rows = problem  # the memory size N its state has (its tensors' shapes say it)
            session = SessionRecord(item.session_id, item.model, item.owner, item.ttl_s, item.created_wall,
                                    now - idle, slot=engine.new_row(item.state, rows), steps=item.steps,
                                    checkpoint_sha256=item.checkpoint_sha256, memory_rows=rows)
            self._mark_saved(session, session.steps, session.last_used)  # its file is its state: clean
            try:
                self.registry.adopt(session)
            except ValueError as err:
                self._saved.pop(session, None)
                engine.free_row(session.slot, rows)
                corrupt += 1
                self._reject(path, "format", str(err), quarantine=True)
                continue
            restored += 1
            self.metrics.sessions_created.labels(item.model, "restore").inc()
        self.store.sync()
        report = RestoreReport(restored, expired, skipped, corrupt, temps)
        log.info("sessions restored", extra={"state_dir": str(self.store.directory), **vars(report),
                                             "model": only[0] if only else None,
                                             "checkpoint": only[1] if only else None})
        return report

    def _unservable(self, snapshot: SessionSnapshot) -> tuple[str, str, bool] | int:
        """(reason, message, corrupt?) when this server cannot continue the session; else its memory size N."""
        engine = self.engines.get((snapshot.model, snapshot.checkpoint_sha256))
        if engine is None:
            if not any(name == snapshot.model for name, _ in self.engines):
                return "model", f"model {snapshot.model!r} is not served now", False
            return "checkpoint", (f"made with checkpoint {snapshot.checkpoint_sha256}, which no served version of "
                                  f"model {snapshot.model} has"), False
        shapes = {name: tuple(a.shape) for name, a in snapshot.state.items()}
        rows = restorable(engine.spec, shapes)
        if rows is None:
            low, high = engine.spec.memory_rows
            return "state", (f"state tensors {shapes}, model {snapshot.model} needs {engine.spec.state_shapes} (at N "
                             f"= {engine.spec.trained_rows}; its graphs run on N = {low} to {high})"), True
        return rows

    def _reject(self, path: Path, reason: str, message: str, quarantine: bool) -> None:
        self.metrics.snapshot_errors.labels(reason).inc()
        moved = None
        if quarantine:
            try:
                moved = self.store.quarantine(path)
            except OSError:
                log.exception("could not move %s aside", path)
        log.log(logging.ERROR if quarantine else logging.WARNING, "snapshot not loaded",
                extra={"file": str(path), "reason": reason, "detail": message,
                       "moved_to": str(moved) if moved else None})

    # --- snapshots ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the periodic passes (a pass in progress completes). The batchers must still be running."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_pass(live=True)

    def dirty(self, session: SessionRecord) -> bool:
        """Its step count or last use moved since its file was written (or it has no file yet)."""
        saved = self._saved.get(session)
        return session.slot >= 0 and (saved is None or session.steps != saved.steps or session.last_used != saved.used)

    def _mark_saved(self, session: SessionRecord, steps: int, used: float) -> None:
        self._saved[session] = Saved(steps, used)
        if session.ended:  # ended meanwhile, after _ended forgot it: forget it again (ended is set before _ended)
            self._saved.pop(session, None)

    def _ended(self, session: SessionRecord) -> None:
        """Deleted, expired or discarded: its file goes at once (a restart must not bring it back)."""
        self._saved.pop(session, None)
        self.store.remove(session.id)

    def run_pass(self, live: bool = True) -> int:
        """Write every session changed since its last snapshot; returns how many were written. `live`: read
        through the batchers (they run); else read the engines directly (they are stopped)."""
        began = time.perf_counter()
        dirty = [s for s in self.registry.sessions() if self.dirty(s)]
        written = 0
        try:
            for first in range(0, len(dirty), CHUNK):
                chunk = dirty[first:first + CHUNK]
                used = {s.id: s.last_used for s in chunk}
                reads = self._read_live(chunk) if live else self._read_direct(chunk)
                items = [(s, encode(self._snapshot(s, used[s.id], state, steps))) for s, state, steps in reads]
                saved = self.store.write(items)
                steps_of = {s.id: steps for s, _, steps in reads}
                for session in saved:
                    self._mark_saved(session, steps_of[session.id], used[session.id])
                written += len(saved)
            self.store.sync()
        except Exception:  # a full disk must not stop serving; the sessions stay dirty for the next pass
            log.exception("snapshot pass failed after writing %d of %d sessions", written, len(dirty))
            self.metrics.snapshot_errors.labels("write").inc()
            self.metrics.snapshot_writes.inc(written)
            return written
        self.metrics.snapshot_writes.inc(written)
        self.metrics.snapshot_passes.inc()
        self.metrics.snapshot_seconds.observe(time.perf_counter() - began)
        self.metrics.snapshot_last_success.set(self.wall())
        if written:
            log.debug("snapshot pass", extra={"written": written, "seconds": time.perf_counter() - began})
        return written

    def _snapshot(self, session: SessionRecord, used: float, state: dict[str, np.ndarray],
                  steps: int) -> SessionSnapshot:
        idle_wall = self.wall() - max(0.0, self.registry.clock() - used)
        return SessionSnapshot(session.id, session.model, session.owner, session.ttl_s, session.created_wall,
                               idle_wall, steps, session.checkpoint_sha256, state)

    def _read_live(self, sessions: list[SessionRecord]) -> list[tuple[SessionRecord, dict[str, Any], int]]:
        waiting = []
        for session in sessions:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            queued = self.registry.submit_internal(
                session, lambda s, done: ControlJob(s, snapshot_read, done), future.set_result)
            if queued:
                waiting.append((session, future))
        reads = []
        for session, future in waiting:
            result = future.result(timeout=READ_TIMEOUT_S)
            if result is None or isinstance(result, ServiceError):
                continue
            reads.append((session, *result))
        return reads

    def _read_direct(self, sessions: list[SessionRecord]) -> list[tuple[SessionRecord, dict[str, Any], int]]:
        return [(s, self.engines[s.key].read_row(s.slot, s.memory_rows), s.steps) for s in sessions
                if s.slot >= 0 and not s.ended]
