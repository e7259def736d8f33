"""Soak: many sessions driven for a long time through a real server process, every output checked.

    python -m tests.soak                      # 200 sessions x 10,000 steps, 2 graceful + 2 kill -9 restarts (make soak)
    python -m tests.soak --sessions 16 --steps 200 --restarts 1 --kills 1   # the CI size (tests/test_service_soak.py)

Each session gets its own random copy-task-like inputs, cut at random into requests of 1..--max-chunk steps
and sent by --workers client threads: as unary calls or in streams that drive up to three sessions at once,
now and then over a fresh channel (a reconnect), and now and then cut off after a random number of answers
(a disconnect: the client cancels and asks the server where the session stands). Meanwhile the server is
restarted --restarts times gracefully (SIGTERM) and --kills times with SIGKILL, with `--state-dir`, on the
same port: clients retry until it is back and resynchronise.

Checked: every answer's step count is the one expected; after every disconnect or restart the session
stands at a request boundary (whole requests only; after a kill, one no older than the last snapshot);
every output received and every session's final state equal an offline onnxruntime run of the same
graph bit for bit (`sequence.onnx` over all sessions at once, rows in multiples of 4: the server's layout,
docs/service.md "Batch invariance"); no session is lost; the server's RSS (from /proc) grows by at most
--max-rss-growth-mb after warm-up in every server lifetime. Prints its figures as a table; exit status 1 if
any check fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from ntm_serve.client.sdk import NTMClient, step_request
from ntm_serve.contract import GRAPH_FILES, META_CHECKPOINT, STATE_NAMES
from ntm_serve.runtime.engine import ROW_MULTIPLE  # the server's row layout
from ntm_serve.runtime.ort_session import open_session
from ntm_serve.server.ports import wait_port_file

log = logging.getLogger("soak")
ROOT = Path(__file__).resolve().parent.parent
GRAPHS = tuple(GRAPH_FILES.values())
RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
STALE = grpc.StatusCode.FAILED_PRECONDITION  # the session is not where the request expects it: a kill took steps back


@dataclass(frozen=True)
class SoakConfig:
    models: Path = ROOT / "models"
    model: str = "copy"
    sessions: int = 200
    steps: int = 10_000
    workers: int = 16
    max_chunk: int = 16
    disconnect_p: float = 0.05  # of streams, cut off after a random number of answers
    reconnect_p: float = 0.1  # of actions, on a fresh channel
    restarts: int = 2  # graceful (SIGTERM) restarts of the server
    kills: int = 2  # SIGKILL restarts
    snapshot_interval_s: float = 1.0
    max_batch: int = 64
    seed: int = 0
    max_rss_growth_mb: float = 64.0
    timeout_s: float = 3600.0


# --- the reference ------------------------------------------------------------------------------------


def snapshot_model(source: Path, target: Path) -> Path:
    """Copy a model's three graphs (training may rewrite them meanwhile); retry until they are one export."""
    for _ in range(20):
        target.mkdir(parents=True, exist_ok=True)
        for name in GRAPHS:
            shutil.copy2(source / name, target / name)
        hashes = {open_session(target / name).get_modelmeta().custom_metadata_map.get(META_CHECKPOINT)
                  for name in GRAPHS}
        if len(hashes) == 1:
            return target
        time.sleep(1.0)
    raise RuntimeError(f"{source}: its graphs keep coming from different checkpoints")


def offline_reference(folder: Path, inputs: np.ndarray, group: int = 64,
                      window: int = 1000) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`sequence.onnx` on every session's whole input: inputs (S, T, I) -> outputs (S, T, O) and the final state
    {name: (S, ...)}. Sessions share calls in groups padded to a multiple of 4 rows with initial-state rows, and
    time runs in windows of `window` steps (the state carried over), to bound memory."""
    sequence = open_session(folder / GRAPH_FILES["sequence"])
    names = list(STATE_NAMES)
    initial = dict(zip(names, open_session(folder / GRAPH_FILES["initial_state"]).run(None, {}), strict=True))  # B=1
    outputs, finals = [], {n: [] for n in names}
    for first in range(0, len(inputs), group):
        x = inputs[first:first + group]  # (B, T, I)
        rows = len(x) + (-len(x) % ROW_MULTIPLE)
        state = {n: np.repeat(v, rows, 0) for n, v in initial.items()}
        pieces = []
        for start in range(0, x.shape[1], window):
            span = x[:, start:start + window]  # (B, W, I)
            padded = np.zeros((span.shape[1], rows, x.shape[2]), np.float32)  # (W, rows, I)
            padded[:, :len(x)] = span.transpose(1, 0, 2)
            out, _, _, *final = sequence.run(None, {"inputs": padded, **state})
            pieces.append(out[:, :len(x)].transpose(1, 0, 2))  # (B, W, O)
            state = dict(zip(names, final, strict=True))
        outputs.append(np.concatenate(pieces, axis=1))
        for n in names:
            finals[n].append(state[n][:len(x)])
    return np.concatenate(outputs), {n: np.concatenate(v) for n, v in finals.items()}


# --- the server process ---------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ServerProcess:
    """`python -m ntm_serve.server` with a state dir. Its first start binds free ports itself (port 0, --port-file: no
    picked port to lose to another process); restarts go back to those ports, so clients reconnect to the same
    target."""

    def __init__(self, models: Path, state_dir: Path, log_path: Path, config: SoakConfig) -> None:
        self.port = self.metrics_port = 0
        self.port_file = log_path.with_suffix(".ports")
        self.argv = [sys.executable, "-m", "ntm_serve.server", "--models", str(models), "--host", "127.0.0.1",
                     "--metrics-host", "127.0.0.1", "--port-file", str(self.port_file),
                     "--provider", "cpu", "--state-dir", str(state_dir), "--snapshot-interval-s",
                     str(config.snapshot_interval_s), "--max-batch", str(config.max_batch), "--log-level", "WARNING",
                     "--grace-s", "5"]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.exit_codes: list[int] = []
        self.snapshot_errors = 0.0
        self.snapshot_passes = self.snapshot_seconds = self.snapshot_writes = 0.0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120) -> None:
        """Start and wait for the port file (written once the server says SERVING on every port)."""
        argv = [*self.argv, "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        with open(self.log_path, "a") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONPATH": str(ROOT)})
        ports = wait_port_file(self.port_file, self.process, self.log_path, timeout)
        self.port, self.metrics_port = ports["port"], ports["metrics_port"]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.snapshot_errors += self.metric("ntm_snapshot_errors_total")  # e.g. files it could not load
        self.snapshot_passes += self.metric("ntm_snapshot_seconds_count")
        self.snapshot_seconds += self.metric("ntm_snapshot_seconds_sum")
        self.snapshot_writes += self.metric("ntm_snapshot_writes_total")
        self.process.send_signal(sig)
        code = self.process.wait(timeout=120)
        self.exit_codes.append(code)
        return code

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "{"))


# --- the clients ----------------------------------------------------------------------------------------


@dataclass
class Track:
    """One session as its client sees it."""

    session_id: str
    inputs: np.ndarray  # (T, I)
    outputs: np.ndarray  # (T, O), NaN where no answer came
    cursor: int = 0  # steps applied, as far as the client knows
    possible: set[int] = field(default_factory=lambda: {0})  # request boundaries the session may stand at

    @property
    def done(self) -> bool:
        return self.cursor >= len(self.inputs)


@dataclass
class Tally:
    requests: int = 0
    streams: int = 0
    disconnects: int = 0
    reconnects: int = 0
    resyncs: int = 0
    rewinds: int = 0  # resyncs that found the session behind the client (a kill lost its last steps)
    retries: int = 0  # calls that found the server away (restarting)
    stale: int = 0  # requests refused because the session stood elsewhere (expect_steps): after a kill
    violations: list[str] = field(default_factory=list)  # anything that must not happen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def violate(self, what: str) -> None:
        with self.lock:
            self.violations.append(what)
        log.error("violation: %s", what)


class Worker:
    def __init__(self, target: str, tracks: list[Track], config: SoakConfig, tally: Tally, seed: int) -> None:
        self.target = target
        self.tracks = tracks
        self.config = config
        self.tally = tally
        self.rng = np.random.default_rng(seed)
        self.client = NTMClient(target, timeout=60)

    def finish(self) -> None:
        """After the run: a kill may have taken the last steps of sessions this client had finished; find them
        (they must stand at a boundary) and drive them to the end again."""
        self.client = NTMClient(self.target, timeout=60)
        try:
            for track in self.tracks:
                self._resync(track)
                while not track.done:
                    self._unary(track)
        finally:
            self.client.close()

    def _reconnect(self) -> None:
        self.client.close()
        self.client = NTMClient(self.target, timeout=60)
        self.tally.add(reconnects=1)

    def run(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                pending = [t for t in self.tracks if not t.done]
                if not pending:
                    return
                if self.rng.random() < self.config.reconnect_p:
                    self._reconnect()
                try:
                    if self.rng.random() < 0.35:
                        self._unary(pending[self.rng.integers(len(pending))])
                    else:
                        picked = self.rng.choice(len(pending), min(len(pending), int(self.rng.integers(1, 4))),
                                                 replace=False)
                        self._stream([pending[i] for i in picked])
                except grpc.RpcError as err:
                    if err.code() == STALE:  # type: ignore[attr-defined]
                        self.tally.add(stale=1)
                    elif err.code() in RETRY:  # type: ignore[attr-defined]
                        self.tally.add(retries=1)
                    else:
                        self.tally.violate(f"unexpected {err.code()}: {err.details()}")  # type: ignore[attr-defined]
                    self._resync_all(pending)
        finally:
            self.client.close()

    def _chunk(self, track: Track, start: int) -> tuple[int, int]:
        size = int(self.rng.integers(1, self.config.max_chunk + 1))
        return start, min(start + size, len(track.inputs))

    def _answered(self, track: Track, start: int, end: int, steps: int, values: Sequence[float]) -> None:
        if steps != end:
            self.tally.violate(f"{track.session_id}: answer says {steps} steps, expected {end}")
        track.outputs[start:end] = np.asarray(values, np.float32).reshape(end - start, -1)
        track.cursor = end

    def _unary(self, track: Track) -> None:
        start, end = self._chunk(track, track.cursor)
        track.possible.add(end)
        request = step_request(track.session_id, track.inputs[start:end], expect_steps=start)
        response = self.client.stub.Step(request, timeout=60)
        self.tally.add(requests=1)
        self._answered(track, start, end, response.steps, response.outputs.values)

    def _stream(self, tracks: list[Track]) -> None:
        """1..8 requests per session, the sessions interleaved at random (each one's requests in order)."""
        plans: dict[str, deque[tuple[int, int]]] = {}
        for track in tracks:
            plans[track.session_id] = plan = deque()
            at = track.cursor
            for _ in range(int(self.rng.integers(1, 9))):
                if at >= len(track.inputs):
                    break
                plan.append(self._chunk(track, at))
                at = plan[-1][1]
                track.possible.add(at)
        by_id = {t.session_id: t for t in tracks}
        requests, expected = [], {t.session_id: deque() for t in tracks}
        while any(plans.values()):
            session_id = self.rng.choice([s for s, plan in plans.items() if plan])
            start, end = plans[session_id].popleft()
            requests.append(step_request(session_id, by_id[session_id].inputs[start:end], expect_steps=start))
            expected[session_id].append((start, end))
        cut = int(self.rng.integers(0, len(requests))) if self.rng.random() < self.config.disconnect_p else None
        call = self.client.stub.StreamSteps(iter(requests), timeout=120)
        self.tally.add(streams=1, requests=len(requests))
        answered = 0
        try:
            for response in call:
                if cut is not None and answered >= cut:
                    break
                track = by_id[response.session_id]
                start, end = expected[track.session_id].popleft()
                if response.error.code:
                    if response.error.code == STALE.value[0]:
                        self.tally.add(stale=1)
                    elif response.error.code != grpc.StatusCode.UNAVAILABLE.value[0]:
                        self.tally.violate(f"{track.session_id}: refused in a stream: {response.error.message}")
                    cut = answered  # the server is going away, or went back: stop here, and resynchronise
                    break
                self._answered(track, start, end, response.steps, response.outputs.values)
                answered += 1
        finally:
            if cut is not None:
                call.cancel()
        if cut is not None:
            self.tally.add(disconnects=1)
            self._resync_all(tracks)

    def _resync_all(self, tracks: list[Track]) -> None:
        for track in tracks:
            self._resync(track)

    def _resync(self, track: Track) -> None:
        """Ask the server where the session stands (waiting while it restarts); it must be a request boundary."""
        deadline = time.monotonic() + 300
        readings: list[int] = []
        # GetSession with the state is a control job queued behind the session's requests, so it sees every one
        # the server has accepted; read until two readings 0.2 s apart agree (a cancelled call's last request
        # may still be on its way in)
        while len(readings) < 2 or readings[-1] != readings[-2]:
            try:
                readings.append(self.client.get_session(track.session_id, include_state=True).steps)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    self.tally.violate(f"{track.session_id}: lost ({err.details()})")  # type: ignore[attr-defined]
                    track.cursor = len(track.inputs)  # give up on it
                    return
                if time.monotonic() > deadline:
                    raise
                self.tally.add(retries=1)
            time.sleep(0.2)
        steps = readings[-1]
        self.tally.add(resyncs=1)
        if steps not in track.possible:
            self.tally.violate(f"{track.session_id}: stands at {steps} steps, not a request boundary")
        if steps < track.cursor:
            self.tally.add(rewinds=1)
        track.cursor = steps
        track.possible = {b for b in track.possible if b <= steps}


# --- the run --------------------------------------------------------------------------------------------


@dataclass
class SoakReport:
    config: SoakConfig
    wall_s: float
    steps_applied: int
    tally: Tally
    mismatched_sessions: int
    mismatched_outputs: int
    checked_outputs: int
    state_mismatches: int
    lost_sessions: int
    unfinished_sessions: int
    lifetimes: list[dict[str, float]]
    exit_codes: list[int]
    snapshot_errors: float
    snapshots: tuple[float, float, float]  # periodic passes, seconds, files: of the servers stopped by SIGTERM

    @property
    def ok(self) -> bool:
        growth_ok = all(life["growth_mb"] <= self.config.max_rss_growth_mb for life in self.lifetimes
                        if life["assessed"])
        return (not self.tally.violations and self.mismatched_outputs == 0 and self.state_mismatches == 0
                and self.lost_sessions == 0 and self.unfinished_sessions == 0 and growth_ok
                and self.exit_codes[-1] == 0 and self.snapshot_errors == 0)

    def table(self) -> str:
        c, t = self.config, self.tally
        rows = [
            ("sessions x steps", f"{c.sessions} x {c.steps} ({c.sessions * c.steps:,} session-steps)"),
            ("workers, chunk", f"{c.workers} client threads, 1..{c.max_chunk} steps per request"),
            ("wall time", f"{self.wall_s:.1f} s"),
            ("throughput", f"{self.steps_applied / self.wall_s:,.0f} session-steps/s"),
            ("requests / streams", f"{t.requests:,} / {t.streams:,}"),
            ("disconnects / reconnects", f"{t.disconnects:,} / {t.reconnects:,}"),
            ("restarts (TERM / KILL)", f"{c.restarts} / {c.kills}; exit codes {self.exit_codes}"),
            ("resyncs / rewinds / retries", f"{t.resyncs:,} / {t.rewinds:,} / {t.retries:,}"),
            ("stale requests refused", f"{t.stale:,} (expect_steps did not match: steps a kill took back)"),
            ("outputs checked", f"{self.checked_outputs:,} of {c.sessions * c.steps:,} (the rest: answers lost "
                                "to disconnects; covered by the final state)"),
            ("output mismatches", f"{self.mismatched_outputs} (in {self.mismatched_sessions} sessions)"),
            ("final-state mismatches", str(self.state_mismatches)),
            ("lost / unfinished sessions", f"{self.lost_sessions} / {self.unfinished_sessions}"),
            ("protocol violations", str(len(t.violations))),
            ("snapshot errors", f"{self.snapshot_errors:.0f}"),
            ("periodic snapshots", f"{self.snapshots[0]:.0f} passes, {self.snapshots[2]:,.0f} session files, mean "
                                f"{1000 * self.snapshots[1] / max(1.0, self.snapshots[0]):.1f} ms per pass "
                                f"(--snapshot-interval-s {c.snapshot_interval_s})"),
        ]
        for i, life in enumerate(self.lifetimes):
            growth = f"{life['growth_mb']:+.1f} MB" if life["assessed"] else "not assessed (too short)"
            rows.append((f"server RSS, lifetime {i + 1}",
                         f"start {life['start_mb']:.0f} MB, after warm-up {life['warm_mb']:.0f} MB, peak "
                         f"{life['peak_mb']:.0f} MB, end {life['end_mb']:.0f} MB: growth {growth}"))
        rows.append(("verdict", "PASS" if self.ok else "FAIL"))
        width = max(len(k) for k, _ in rows)
        lines = [f"{'figure':<{width}}  value", f"{'-' * width}  {'-' * 40}"]
        lines += [f"{k:<{width}}  {v}" for k, v in rows]
        return "\n".join(lines)


def _lifetimes(samples: list[tuple[int, float, int]]) -> list[dict[str, float]]:
    """Per server process: RSS at its start, after warm-up (the first quarter of its samples), peak after it."""
    result = []
    for pid in dict.fromkeys(p for p, _, _ in samples):
        rss = [r / 2**20 for p, _, r in samples if p == pid]
        warm = max(1, len(rss) // 4)
        assessed = len(rss) >= 8
        result.append({"start_mb": rss[0], "warm_mb": rss[warm - 1], "peak_mb": max(rss[warm - 1:]),
                       "end_mb": rss[-1], "growth_mb": max(rss[warm - 1:]) - rss[warm - 1], "assessed": assessed})
    return result


def run_soak(config: SoakConfig, work_dir: Path) -> SoakReport:
    rng = np.random.default_rng(config.seed)
    model_dir = snapshot_model(config.models / config.model, work_dir / "models" / config.model)
    width = open_session(model_dir / GRAPH_FILES["step"]).get_inputs()[0]
    inputs = rng.integers(0, 2, (config.sessions, config.steps, int(width.shape[1]))).astype(np.float32)
    began = time.perf_counter()
    ref_outputs, ref_state = offline_reference(model_dir, inputs)
    log.info("offline reference: %.1f s", time.perf_counter() - began)

    server = ServerProcess(work_dir / "models", work_dir / "state", work_dir / "server.log", config)
    server.start()
    tally = Tally()
    with NTMClient(server.target, timeout=60) as client:
        ids = [client.create_session(config.model, ttl_seconds=config.timeout_s).session_id
               for _ in range(config.sessions)]
    tracks = [Track(i, inputs[k], np.full(ref_outputs[k].shape, np.nan, np.float32)) for k, i in enumerate(ids)]
    if config.kills:  # every session is on disk before any kill
        passes = server.metric("ntm_snapshot_passes_total")
        while server.metric("ntm_snapshot_passes_total") < passes + 2:
            time.sleep(0.05)

    samples: list[tuple[int, float, int]] = []
    done = threading.Event()
    total = config.sessions * config.steps

    def progress() -> float:
        return sum(t.cursor for t in tracks) / total

    def monitor() -> None:
        last_log = time.monotonic()
        while not done.wait(0.25):
            pid = server.pid
            rss = rss_bytes(pid)
            if rss is not None:
                samples.append((pid, progress(), rss))
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log.info("progress %.0f%%, server RSS %.0f MB", 100 * progress(), (rss or 0) / 2**20)

    def disrupt() -> None:
        plan = ["TERM"] * config.restarts + ["KILL"] * config.kills
        np.random.default_rng(config.seed + 1).shuffle(plan)
        for n, kind in enumerate(plan):
            mark = (n + 1) / (len(plan) + 1)
            while progress() < mark and not done.is_set():
                time.sleep(0.05)
            if done.is_set():
                return
            code = server.stop(signal.SIGTERM if kind == "TERM" else signal.SIGKILL)
            log.info("restart %d (%s): exit code %d at %.0f%%", n + 1, kind, code, 100 * progress())
            if kind == "TERM" and code != 0:
                tally.violate(f"graceful stop exited with {code}")
            server.start()

    deadline = time.monotonic() + config.timeout_s
    workers = [Worker(server.target, tracks[w::config.workers], config, tally, config.seed + 100 + w)
               for w in range(config.workers)]
    threads = [threading.Thread(target=w.run, args=(deadline,), name=f"soak-{i}") for i, w in enumerate(workers)]
    helpers = [threading.Thread(target=monitor, name="soak-monitor"), threading.Thread(target=disrupt,
                                                                                      name="soak-disrupt")]
    began = time.perf_counter()
    for thread in [*helpers, *threads]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in helpers:
        thread.join()
    threads = [threading.Thread(target=w.finish, name=f"soak-finish-{i}") for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began

    lost = state_mismatches = 0
    with NTMClient(server.target, timeout=60) as client:
        for k, track in enumerate(tracks):
            try:
                state = client.export_session(track.session_id)
            except grpc.RpcError:
                lost += 1
                continue
            differ = [n for n in ref_state if state.tensors[n].tobytes() != ref_state[n][k].tobytes()]
            if state.steps != config.steps or differ:
                state_mismatches += 1
                log.error("session %s: final state differs: steps %d, tensors %s", track.session_id, state.steps,
                          differ)
    server.stop(signal.SIGTERM)
    got = np.stack([t.outputs for t in tracks])  # (S, T, O)
    answered = ~np.isnan(got)
    wrong = answered & (got != ref_outputs)
    return SoakReport(
        config=config, wall_s=wall, steps_applied=sum(t.cursor for t in tracks), tally=tally,
        mismatched_sessions=int(wrong.any(axis=(1, 2)).sum()), mismatched_outputs=int(wrong.any(axis=2).sum()),
        checked_outputs=int(answered.all(axis=2).sum()), state_mismatches=state_mismatches, lost_sessions=lost,
        unfinished_sessions=sum(not t.done for t in tracks), lifetimes=_lifetimes(samples),
        exit_codes=server.exit_codes, snapshot_errors=server.snapshot_errors,
        snapshots=(server.snapshot_passes, server.snapshot_seconds, server.snapshot_writes))


def parse_args(argv: Sequence[str] | None) -> tuple[SoakConfig, argparse.Namespace]:
    defaults = SoakConfig()
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.splitlines()[0])
    for name, value in vars(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value) if not isinstance(value, Path) else Path,
                       default=value)
    p.add_argument("--keep", type=Path, help="work in this directory and keep it (server log, state dir)")
    args = p.parse_args(argv)
    config = SoakConfig(**{k: getattr(args, k) for k in vars(defaults)})
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    config, args = parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run_soak(config, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="ntm-soak-") as work:
            report = run_soak(config, Path(work))
    print(report.table())
    for violation in report.tally.violations[:20]:
        print("violation:", violation)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
