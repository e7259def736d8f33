"""Keeping a local cluster's processes up, as Kubernetes keeps a pod's containers up: a process that exits is
reported and started again after an exponential back-off (1 s, doubling, at most 30 s; back to 1 s once it has
run healthy for a minute), one JSON line per event. `python -m ntm_serve.cluster up` runs it on its main thread.

Events (each a dict with "ts", "event" and "process"):
  exited          pid, exit_code (None when a signal ended it), signal ("SIGKILL", ...), restarts, restart_in_s
  restarted       pid (the new one), port, restarts: it is up and healthy again
  restart_failed  pid, reason (exited while starting, or not healthy in time), restarts, restart_in_s
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ntm_serve.cluster.launcher import Proc


class Supervised(Protocol):
    """What the supervisor asks of a cluster (ntm_serve.cluster.launcher.LocalCluster has it)."""

    def processes(self) -> list[Proc]: ...

    def is_ready(self, proc: Proc) -> bool: ...

    def ready_timeout(self, proc: Proc) -> float: ...

    def before_restart(self, proc: Proc) -> None: ...


@dataclass(frozen=True)
class BackOff:
    """Kubernetes' CrashLoopBackOff, on a local scale: the wait before the n-th restart in a row."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0  # healthy this long and the next exit waits initial_s again

    def delay(self, streak: int) -> float:
        """The wait before a restart that follows `streak` earlier restarts without a healthy period between."""
        return min(self.max_s, self.initial_s * 2.0 ** streak)


@dataclass
class Watched:
    """One process under supervision and where it stands."""

    proc: Proc
    state: str = "running"  # running | waiting (to be started at `due`) | starting (until healthy, or `due`)
    restarts: int = 0  # starts after the first, as Kubernetes' restartCount (never reset)
    streak: int = 0  # restarts since it last ran healthy for reset_after_s: picks the back-off
    healthy_since: float = 0.0
    due: float = 0.0
    pid: int = field(default=-1)  # the pid that was running (for the exit event)


def exit_fields(returncode: int | None) -> dict[str, Any]:
    """How a process ended, as Kubernetes says it: an exit code, or the signal that killed it."""
    if returncode is not None and returncode < 0:
        return {"exit_code": None, "signal": signal.Signals(-returncode).name}
    return {"exit_code": returncode, "signal": None}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Supervisor:
    """Restarts the cluster's processes that exit. tick() must run on the thread that started the cluster: a
    process is started behind a shim that kills it when that thread ends (launcher.die_with_parent)."""

    def __init__(self, cluster: Supervised, emit: Callable[[dict[str, Any]], None],
                 backoff: BackOff = BackOff(), clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.emit = emit
        self.backoff = backoff
        self.clock = clock
        now = clock()
        self.watched = [Watched(p, healthy_since=now, pid=p.pid) for p in cluster.processes()]

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Supervise until `stop` is set (then the cluster's own stop ends everything, with nothing restarted)."""
        while not stop.wait(interval_s):
            self.tick()

    def tick(self) -> None:
        """One look at every process: report and schedule the exited, start the due, promote the healthy."""
        now = self.clock()
        for w in self.watched:
            if w.state == "running":
                self._running(w, now)
            elif w.state == "waiting" and now >= w.due:
                self.cluster.before_restart(w.proc)
                w.proc.start()
                w.restarts += 1
                w.pid, w.state, w.due = w.proc.pid, "starting", now + self.cluster.ready_timeout(w.proc)
            elif w.state == "starting":
                self._starting(w, now)

    def _running(self, w: Watched, now: float) -> None:
        if w.proc.alive():
            return
        delay = self._schedule(w, now)
        self.emit({"ts": _now(), "event": "exited", "process": w.proc.name, "pid": w.pid,
                   **exit_fields(w.proc.popen.returncode if w.proc.popen else None),
                   "restarts": w.restarts, "restart_in_s": delay})

    def _starting(self, w: Watched, now: float) -> None:
        if w.proc.alive() and self.cluster.is_ready(w.proc):
            w.state, w.healthy_since = "running", now
            self.emit({"ts": _now(), "event": "restarted", "process": w.proc.name, "pid": w.proc.pid,
                       "port": w.proc.port, "restarts": w.restarts})
            return
        if w.proc.alive() and now < w.due:
            return
        if w.proc.alive():  # not healthy in time: stop it, as a failed startup probe would
            w.proc.signal(signal.SIGKILL)
            w.proc.wait(10)
            reason = f"not healthy after {self.cluster.ready_timeout(w.proc):.0f} s"
        else:
            ended = exit_fields(w.proc.popen.returncode if w.proc.popen else None)
            how = ended["signal"] or f"exit code {ended['exit_code']}"
            reason = f"exited while starting ({how})"
        delay = self._schedule(w, now)
        self.emit({"ts": _now(), "event": "restart_failed", "process": w.proc.name, "pid": w.pid, "reason": reason,
                   "restarts": w.restarts, "restart_in_s": delay, "log_tail": w.proc.tail(5)})

    def _schedule(self, w: Watched, now: float) -> float:
        """The next start of `w` after its back-off; the back-off grows for the one after."""
        if w.state == "running" and now - w.healthy_since >= self.backoff.reset_after_s:
            w.streak = 0  # it ran healthy long enough: the back-off starts over
        delay = self.backoff.delay(w.streak)
        w.streak += 1
        w.state, w.due = "waiting", now + delay
        return delay
