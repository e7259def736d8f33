"""`ntm-cluster up` keeps its processes up as Kubernetes would: a replica killed with kill -9 is reported (one
JSON line: which process, how it ended, restarts, the wait) and started again, healthy, with a new pid, while a
session goes on through the proxy; the back-off doubles and starts over after a healthy period (real processes,
a clock the test moves)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from helpers import ROOT, Offline, alive, bits

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import Proc
from ntm_serve.cluster.supervisor import BackOff, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Processes:
    """A cluster of plain processes, ready while alive (the supervisor's side of LocalCluster)."""

    def __init__(self, *procs: Proc) -> None:
        self.procs = list(procs)

    def processes(self) -> list[Proc]:
        return self.procs

    def is_ready(self, proc: Proc) -> bool:
        return proc.alive()

    def ready_timeout(self, proc: Proc) -> float:
        return 5.0

    def before_restart(self, proc: Proc) -> None:
        pass


def _until_dead(proc: Proc) -> None:
    deadline = time.monotonic() + 30
    while proc.alive():
        assert time.monotonic() < deadline, f"{proc.name} did not exit"
        time.sleep(0.02)


def test_a_crashing_process_is_restarted_after_a_doubling_back_off(tmp_path: Path) -> None:
    crasher = Proc("crasher", 0, [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "crasher.log")
    crasher.start()
    first_pid = crasher.pid
    _until_dead(crasher)
    clock, events = Clock(), []
    supervisor = Supervisor(Processes(crasher), events.append, BackOff(1.0, 8.0, 60.0), clock)
    supervisor.tick()
    assert events[-1] | {"ts": None} == {"ts": None, "event": "exited", "process": "crasher", "pid": first_pid,
                                         "exit_code": 3, "signal": None, "restarts": 0, "restart_in_s": 1.0}
    waits = []
    for attempt in range(1, 6):
        clock.now += events[-1]["restart_in_s"] - 0.01
        supervisor.tick()
        assert supervisor.watched[0].state == "waiting" and crasher.pid == events[-1]["pid"]  # not yet due
        clock.now += 0.01
        supervisor.tick()  # due: started again
        _until_dead(crasher)
        supervisor.tick()
        event = events[-1]
        assert event["event"] == "restart_failed" and event["restarts"] == attempt
        assert event["pid"] == crasher.pid and "exit code 3" in event["reason"]
        waits.append(event["restart_in_s"])
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped


def test_a_healthy_period_resets_the_back_off(tmp_path: Path) -> None:
    sleeper = Proc("sleeper", 0, [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "sleeper.log")
    sleeper.start()
    clock, events = Clock(), []
    supervisor = Supervisor(Processes(sleeper), events.append, BackOff(1.0, 30.0, 60.0), clock)
    try:
        waits = []
        for healthy_s in (0.0, 5.0, 60.0):
            clock.now += healthy_s
            old = sleeper.pid
            os.kill(old, signal.SIGKILL)
            _until_dead(sleeper)
            supervisor.tick()
            exited = events[-1]
            assert (exited["event"], exited["pid"], exited["signal"], exited["exit_code"]) == (
                "exited", old, "SIGKILL", None)
            waits.append(exited["restart_in_s"])
            clock.now += exited["restart_in_s"]
            supervisor.tick()  # started
            supervisor.tick()  # alive: ready
            restarted = events[-1]
            assert restarted["event"] == "restarted" and restarted["pid"] == sleeper.pid != old
        assert waits == [1.0, 2.0, 1.0]  # after a minute up, the next crash waits the shortest time again
        assert events[-1]["restarts"] == 3
    finally:
        sleeper.signal(signal.SIGKILL)
        sleeper.wait(10)


def _lines(stream: Any, into: queue.Queue[dict[str, Any]]) -> None:
    for line in stream:
        into.put(json.loads(line))


def _next(events: queue.Queue[dict[str, Any]], event: str, process: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if got.get("event") == event and got.get("process") == process:
            return got


def test_cluster_up_restarts_a_killed_replica_and_sessions_go_on(copy_dir: Path, offline: Offline,
                                                                  rng: np.random.Generator) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ntm_serve.cluster", "up", "--replicas", "3", "--models",
                             str(copy_dir), "--provider", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, proc.stderr.read()  # type: ignore[union-attr]
        info = json.loads(line)
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, events), daemon=True).start()
        x = bits(rng, 12)
        with NTMClient(info["proxy"], timeout=60) as client:
            sid = client.create_session("copy").session_id
            out = [client.step(sid, x[:4], expect_steps=0).outputs]
            victim = info["replicas"][1]
            os.kill(victim["pid"], signal.SIGKILL)
            exited = _next(events, "exited", victim["name"], 30)
            assert (exited["pid"], exited["signal"], exited["exit_code"], exited["restarts"]) == (
                victim["pid"], "SIGKILL", None, 0)
            assert exited["restart_in_s"] == 1.0
            out.append(client.step(sid, x[4:8], expect_steps=4).outputs)  # two replicas carry on meanwhile
            restarted = _next(events, "restarted", victim["name"])
            assert restarted["pid"] != victim["pid"] and alive(restarted["pid"])
            assert restarted["port"] == victim["port"] and restarted["restarts"] == 1
            out.append(client.step(sid, x[8:], expect_steps=8).outputs)
        assert np.array_equal(np.concatenate(out), offline.run(x)["outputs"])
        assert events.empty()  # nothing else died
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    pids = [info["store"]["pid"], info["proxy_process"]["pid"], restarted["pid"],
            *(r["pid"] for r in info["replicas"])]
    assert not any(alive(p) for p in pids)
