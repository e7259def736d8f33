"""Watching a session think, the batcher's half: after a step call, the watched sessions' state is copied out into
frames, and each watcher gets the newest one through a slot of its own.

Why this shape (docs/inspector.md):
- Zero cost when nobody watches: a model's batcher checks one dict (`Tap.watched`) after each step call; only the
  rows of watched sessions are read back from the device (`Engine.peek_rows`), only the state names asked for.
- Watching never slows or blocks stepping: `Watcher.offer` puts the frame in the watcher's one-frame slot and never
  waits; a frame still there (the watcher reads slower than its session steps) is replaced and counted as dropped,
  and the next frame the watcher gets says how many. Memory per watcher is one frame, however slow it is.
- Frames come in step order, and the first one is the state as the watch began: attaching runs as a control job in
  the session's own order (between two of its requests), on the batcher thread that also makes its frames.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ntm_serve.api.errors import ServiceError
from ntm_serve.server.sessions import SessionRecord

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine

log = logging.getLogger(__name__)

HEADS: tuple[str, ...] = ("read_weights", "write_weights")  # (R, N), (W, N): what a heads-only watcher gets
FRAME_STATE: tuple[str, ...] = (*HEADS, "read_vectors", "memory")  # and (R, M), (N, M): the full picture


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """A tap's hook runs on the batcher thread in the middle of a step: a bug in it must cost the watchers their
    frame, never the batcher its thread or the requests their answers."""

    @functools.wraps(method)
    def wrapper(*args: object) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("watch: making frames failed")

    return wrapper


@dataclass(frozen=True)
class Frame:
    """A session right after one of its steps (or, `snapshot`, as a watch began). Host arrays, never changed."""

    session_id: str
    steps: int  # the session's step count after this step
    snapshot: bool
    inputs: np.ndarray | None  # (I,); None in a snapshot
    outputs: np.ndarray | None  # (O,); None in a snapshot
    state: dict[str, np.ndarray]  # some of FRAME_STATE, per-session shapes


class Watcher:
    """One watch of one session: a one-frame slot filled by the batcher thread and emptied on the event loop."""

    def __init__(self, session: SessionRecord, every: int, heads_only: bool, loop: asyncio.AbstractEventLoop,
                 on_drop: Callable[[], None] = lambda: None) -> None:
        self.session = session
        self.every = max(1, every)
        self.heads_only = heads_only
        self._loop = loop
        self._on_drop = on_drop
        self._event = asyncio.Event()
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._dropped = 0  # frames replaced in the slot since the last one taken
        self._end: ServiceError | None = None

    def wants(self, steps: int) -> bool:
        return steps % self.every == 0

    def offer(self, frame: Frame) -> None:
        """Any thread, never blocks: `frame` takes the slot; a frame still there is dropped (and counted)."""
        with self._lock:
            if self._end is not None:
                return
            replaced = self._frame is not None
            self._frame = frame
            self._dropped += replaced
        if replaced:  # the reader has a wake-up pending already
            self._on_drop()
        else:
            self._wake()

    def finish(self, why: ServiceError) -> None:
        """Any thread: the watch ends with `why` once the frame in the slot (if any) has been taken."""
        with self._lock:
            if self._end is not None:
                return
            self._end = why
        self._wake()

    @property
    def ended(self) -> bool:
        return self._end is not None

    def _wake(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._event.set)

    async def next(self) -> tuple[Frame, int] | ServiceError:
        """On the loop: the next frame and how many were dropped before it, or why the watch ended."""
        while True:
            self._event.clear()  # before looking: a frame offered after the look sets it again
            with self._lock:
                frame, dropped, end = self._frame, self._dropped, self._end
                self._frame, self._dropped = None, 0
            if frame is not None:
                return frame, dropped
            if end is not None:
                return end
            await self._event.wait()


class Tap:
    """A model's watched sessions, read by its batcher thread after every step call. `watched` is replaced whole
    on every change (under the lock), so the batcher reads it without the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.watched: dict[SessionRecord, tuple[Watcher, ...]] = {}

    def add(self, watcher: Watcher) -> None:
        with self._lock:
            watched = dict(self.watched)
            watched[watcher.session] = (*watched.get(watcher.session, ()), watcher)
            self.watched = watched

    def remove(self, watcher: Watcher) -> None:
        with self._lock:
            rest = tuple(w for w in self.watched.get(watcher.session, ()) if w is not watcher)
            watched = dict(self.watched)
            if rest:
                watched[watcher.session] = rest
            else:
                watched.pop(watcher.session, None)
            self.watched = watched

    def remove_session(self, session: SessionRecord) -> tuple[Watcher, ...]:
        """Forget every watcher of `session`; returns them."""
        with self._lock:
            watched = dict(self.watched)
            gone = watched.pop(session, ())
            self.watched = watched
        return gone

    # --- the batcher thread ---------------------------------------------------------------------------

    def snapshot(self, engine: Engine, watcher: Watcher) -> None:
        """Attach `watcher` and give it the session's state as it stands (a control job: between its requests)."""
        session = watcher.session
        state = engine.peek_rows([session.slot], FRAME_STATE, session.memory_rows)
        self.add(watcher)
        watcher.offer(Frame(session.id, session.steps, True, None, None, {n: v[0] for n, v in state.items()}))

    @_guarded
    def after_step(self, engine: Engine, size: int, slots: np.ndarray, x: np.ndarray, outputs: np.ndarray,
                   applied: np.ndarray | int) -> None:
        """After one step call of the sessions in `slots` (B,) of memory size `size` (rows of the engine's group of
        that size) with inputs x (B, I) and outputs (B, O): a frame for each watcher whose session was in it and wants
        this step. `applied`: steps of each row's request applied so far, this one included ((B,), or one
        number for all); the session's count is `steps` plus that."""
        picks: list[tuple[SessionRecord, int, int, list[Watcher]]] = []
        for session, watchers in self.watched.items():
            if session.memory_rows != size:  # another size's rows: its slot numbers are another pool's
                continue
            rows = np.flatnonzero(slots == session.slot)
            if not rows.size:
                continue
            row = int(rows[0])
            steps = session.steps + (applied if isinstance(applied, int) else int(applied[row]))
            wanting = [w for w in watchers if w.wants(steps)]
            if wanting:
                picks.append((session, row, steps, wanting))
        if not picks:
            return
        names = HEADS if all(w.heads_only for *_, wanting in picks for w in wanting) else FRAME_STATE
        state = engine.peek_rows([session.slot for session, *_ in picks], names, size)  # (K, ...) each
        for k, (session, row, steps, wanting) in enumerate(picks):
            frame = Frame(session.id, steps, False, x[row].copy(), outputs[row].copy(),
                          {n: v[k] for n, v in state.items()})
            for watcher in wanting:
                watcher.offer(frame)

    @_guarded
    def after_sequence(self, engine: Engine, session: SessionRecord, inputs: np.ndarray, outputs: np.ndarray,
                       reads: np.ndarray | None, writes: np.ndarray | None) -> None:
        """After one call that ran a whole request of T steps (batching off): inputs (T, I), outputs (T, O), the
        heads' weightings (T, R|W, N). Memory and read vectors exist only after the last step: earlier frames go
        without them."""
        watchers = self.watched.get(session, ())
        last = engine.peek_rows([session.slot], FRAME_STATE, session.memory_rows) if watchers else {}
        for t in range(len(inputs)):
            steps = session.steps + t + 1
            wanting = [w for w in watchers if w.wants(steps)]
            if not wanting:
                continue
            state: dict[str, np.ndarray] = {}
            if t == len(inputs) - 1:
                state = {n: v[0] for n, v in last.items()}
            elif reads is not None and writes is not None:
                state = {"read_weights": reads[t], "write_weights": writes[t]}
            frame = Frame(session.id, steps, False, inputs[t].copy(), outputs[t].copy(), state)
            for watcher in wanting:
                watcher.offer(frame)
