"""A real `python -m ntm_serve.server` process on loopback ports, for the service and memory benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.loadgen import LoadSpec, run_load
from benchmarks.models import ModelFolder, find_model, single_model_dir
from benchmarks.procstat import context_switches, cpu_seconds
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from ntm_serve.server.ports import free_port

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: the load generator never leaves the machine


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("server %d ignored SIGTERM for %.0f s: killing it", self.pid, timeout)
                self.proc.kill()
                self.proc.wait(10)


def load_cells(text: str) -> list[tuple[int, int]]:
    """"64x20,8x1" -> [(64, 20), (8, 1)]: (sessions, steps per message) load cells."""
    return [(int(a), int(b)) for a, b in (cell.split("x") for cell in text.split(","))]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --models-dir and --out, as every server benchmark takes them."""
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))


def prepare(args: argparse.Namespace) -> tuple[ModelFolder, Path, list[tuple[int, int]]]:
    """From a server benchmark's parsed options: the model, a models folder serving only it, the load cells."""
    logging.basicConfig(level=logging.WARNING)
    model = find_model(args.models_dir, args.model)
    return model, single_model_dir(model), load_cells(args.cells)


def pin_here(cores: set[int] | None) -> None:
    """Pin this process (and the threads it starts from now on) to `cores`; None: leave it as it is."""
    if cores is not None:
        os.sched_setaffinity(0, cores)


def split_cores() -> tuple[set[int], set[int]] | None:
    """(load generator cores, server cores) for a pinned run: the first core, the rest; None on one core."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, set(cores[1:])) if len(cores) > 1 else None


# Run in front of a server to pin it: set the CPU affinity (every thread the server starts inherits it), then exec
# the real command in the same process. A shim rather than a preexec_fn: a preexec_fn forces fork(), which runs
# gRPC's fork handlers in a process that has used gRPC (this one has, once a server answered), and those can
# deadlock or abort the child; without one, subprocess starts it with vfork/posix_spawn (as
# ntm_serve/cluster/launcher.py does for its processes).
PIN_THEN_EXEC = (
    "import os, sys\n"
    "os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')})\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def pinned(argv: list[str], cores: set[int] | None) -> list[str]:
    """argv run on `cores` (behind PIN_THEN_EXEC); argv itself when cores is None."""
    return argv if cores is None else [sys.executable, "-c", PIN_THEN_EXEC, ",".join(map(str, sorted(cores))), *argv]


def server_module(tree: Path) -> str:
    """The server's module in source tree `tree`: `ntm_serve.server`, or `service` in a tree from before the
    package had one import root (a baseline checkout for A/B runs)."""
    return "ntm_serve.server" if (tree / "ntm_serve" / "server").is_dir() else "service"


def start_server(models_dir: Path, extra: Sequence[str] = (), ready_timeout: float = 120.0,
                 tree: Path = REPO, cores: set[int] | None = None, module: str | None = None,
                 env: Mapping[str, str] | None = None) -> ServerProcess:
    """Start the server of source tree `tree` on free loopback ports and wait until ListModels answers. `cores`:
    pin the server process (every thread it starts) to these CPUs; `module`: what runs (default: the tree's
    server; `benchmarks.echo_server`: the same contract without a model); `env`: variables set for it alone."""
    module = module or server_module(tree)
    port, metrics_port = free_port(), free_port()
    log_file = Path(tempfile.mkstemp(prefix="ntm-bench-server-", suffix=".log")[1])
    cmd = [sys.executable, "-m", *module.split(), "--models", str(models_dir), "--host", HOST, "--port", str(port),
           "--metrics-host", HOST, "--metrics-port", str(metrics_port), "--log-level", "WARNING", *extra]
    variables = {**os.environ, **(env or {}), "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log_file.open("wb") as out:
        proc = subprocess.Popen(pinned(cmd, cores), cwd=tree, env=variables, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, port, metrics_port, log_file)
    deadline = time.monotonic() + ready_timeout
    with grpc.insecure_channel(server.target) as channel:
        stub = ntm_pb2_grpc.NTMStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                stub.ListModels(ntm_pb2.ListModelsRequest(), timeout=2)
                return server
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"server not ready after {ready_timeout} s:\n{server.log_tail()}") from None
                time.sleep(0.2)


@contextlib.contextmanager
def running_server(models_dir: Path, extra: Sequence[str] = (), cores: set[int] | None = None
                   ) -> Iterator[ServerProcess]:
    server = start_server(models_dir, extra, cores=cores)
    try:
        yield server
    finally:
        server.stop()


def scrape(metrics_port: int) -> dict[str, float]:
    """Prometheus samples of the server as name{label=value,...} -> value."""
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets (e.g. every model), ignoring histogram buckets."""
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name)


def measure_cell(server: ServerProcess, model: str, input_size: int, spec: LoadSpec) -> dict[str, float]:
    """One load cell against `server`: session-steps/s, latency, mean batch and the server's CPU per
    session-step over the measured window (from /proc and its own metrics)."""
    state: dict[str, Any] = {}

    def start() -> None:
        state.update(wall=time.perf_counter(), cpu=cpu_seconds(server.pid), metrics=scrape(server.metrics_port),
                     switches=context_switches(server.pid))

    def end(_: None) -> dict[str, float]:
        wall = time.perf_counter() - state["wall"]
        m, before = scrape(server.metrics_port), state["metrics"]
        calls = metric_sum(m, "ntm_batch_size_count") - metric_sum(before, "ntm_batch_size_count")
        rows = metric_sum(m, "ntm_batch_size_sum") - metric_sum(before, "ntm_batch_size_sum")
        return {"server_cores": (cpu_seconds(server.pid) - state["cpu"]) / wall,
                "switches": context_switches(server.pid) - state["switches"],
                "mean_batch": rows / calls if calls else 0.0}

    r = run_load(server.target, model, input_size, spec, start, end)
    cores = r.window_hooks["server_cores"]
    return {"steps_per_s": r.steps_per_s, "p50_ms": r.percentile(50) * 1e3, "p99_ms": r.percentile(99) * 1e3,
            "mean_batch": r.window_hooks["mean_batch"],
            "switches_per_message": r.window_hooks["switches"] / r.messages if r.messages else float("nan"),
            "server_cpu_us_per_step": cores / r.steps_per_s * 1e6 if r.steps_per_s else float("nan"),
            "errors": r.errors}
