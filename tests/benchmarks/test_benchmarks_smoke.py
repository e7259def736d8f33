"""The benchmark scripts run and write what docs/performance.md is built from. No timing is asserted:
performance is measured by `python -m benchmarks`, never by tests."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks import engine, procstat
from benchmarks.launches import launches, per_step
from benchmarks.models import ModelFolder, find_model, has_graphs
from benchmarks.ort_engine import (
    DEFAULT,
    BoundStep,
    BucketStep,
    RunStep,
    bucket_steps,
    copy_task_inputs,
    initial_state,
    make_session,
)
from benchmarks.profiling import node_counts
from benchmarks.timing import TimingPlan

TINY = TimingPlan(rounds=1, round_s=0.002, warmup_calls=1, max_calls=20)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """A shipped model with its ONNX graphs, else an untrained copy-task model exported for the test."""
    shipped = [p for p in (REPO / "models").glob("*") if has_graphs(p) and (p / "checkpoint.pt").is_file()]
    if shipped:
        return find_model(REPO / "models")
    from benchmarks.models import dev_export

    return dev_export(tmp_path_factory.mktemp("model"))


def test_engine_quick_writes_tables_and_json(model: ModelFolder, tmp_path: Path) -> None:
    payload = engine.run(model, tmp_path, quick=True, batches=(1, 8), compile_torch=False, plan=TINY)
    written = json.loads((tmp_path / "engine.json").read_text())
    assert written["benchmark"] == "engine" and written["mode"] == "quick"
    for key in ("machine", "load_before", "load_after", "model", "config", "results", "torch_compile", "targets",
                "sweep", "node_counts", "profile", "tables"):
        assert key in written, key
    names = {"onnxruntime step, run(), default options, 1 thread", "onnxruntime step, IOBinding, 1 thread",
             "onnxruntime sequence T=10, 1 thread", "torch eager, 1 thread"}
    assert names <= set(written["results"])
    for name in names:
        assert set(written["results"][name]) == {"1", "8"}
        for timing in written["results"][name].values():
            assert timing["wall_us_per_call"] > 0 and timing["session_steps_per_s"] > 0
    assert written["node_counts"]["step"]["exported"] > 0
    assert written["node_counts"]["step"]["optimised"] > 0
    assert written["profile"]["1"]["ops"], "the profiler saw no kernels"
    assert [t["target"] for t in written["targets"]] == ["onnx_vs_eager_b1"]  # batch 64 was not measured
    assert written["torch_compile"]["tried"] is False
    assert "### Engine: latency" in (tmp_path / "engine.md").read_text()
    assert payload["results"].keys() == written["results"].keys()


def test_bound_step_computes_what_run_computes(model: ModelFolder) -> None:
    """The IOBinding ping-pong runner the figures come from steps the same state as plain session.run."""
    batch, steps = 3, 7
    inputs = copy_task_inputs(np.random.default_rng(0), steps, batch, model.config["input_size"])
    state = initial_state(model.path, batch)
    plain = RunStep(make_session(model.graph("step"), DEFAULT), state, inputs)
    bound = BoundStep(make_session(model.graph("step"), DEFAULT), state, inputs)
    for _ in range(steps):
        plain()
        bound()
    for a, b in zip(plain.state, bound.state(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(plain.state[3], state[3]), "seven steps must change the memory"


def test_procstat_agrees_with_the_kernels_other_counters() -> None:
    """/proc's CPU time moves with this process's own CPU clock, and its RSS with memory really touched."""
    pid = os.getpid()
    cpu_before, clock_before = procstat.cpu_seconds(pid), time.process_time()
    while time.process_time() - clock_before < 0.3:  # burn CPU until this process's own clock says 0.3 s
        sum(i * i for i in range(10_000))
    used, clock = procstat.cpu_seconds(pid) - cpu_before, time.process_time() - clock_before
    assert abs(used - clock) <= 0.05 + 2 / os.sysconf("SC_CLK_TCK"), (used, clock)

    rss_before = procstat.rss_bytes(pid)
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page written
    grown = procstat.rss_bytes(pid) - rss_before
    assert grown >= 48 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB after touching 64 MiB"
    assert procstat.rss_bytes(pid) <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + 2**20
    del block


def test_bucket_step_steps_what_bound_step_steps(model: ModelFolder) -> None:
    """The CUDA-graph rows come from the server's bucketed path (ntm_serve/runtime/cuda_graphs.py, here without
    capture on
    CPU): its real rows step the state that the plain IOBinding runner steps, the padding rows aside."""
    batch, steps = 5, 6
    inputs = copy_task_inputs(np.random.default_rng(1), steps, batch, model.config["input_size"])
    made = bucket_steps(model.path, (4, 8, 16), "cpu", cuda_graph=False)
    bucketed = BucketStep(made, inputs, "cpu")
    plain = BoundStep(make_session(model.graph("step"), DEFAULT), initial_state(model.path, batch), inputs)
    assert bucketed.buffers.rows == 8  # 5 sessions: padded to 8, the smallest bucket holding them
    for _ in range(steps):
        bucketed()
        plain()
    np.testing.assert_allclose(bucketed.buffers.output.numpy()[:batch], plain.output.numpy(), atol=1e-6)


def test_launches_are_the_nodes_onnxruntime_runs(model: ModelFolder) -> None:
    """Counted by onnxruntime's profiler as the difference of two runs: on CPU, one node event per node of the
    optimised step graph per step (what the CUDA column counts on a GPU, where a replay counts none)."""
    counted = launches(model.path, 3, (4,), "cpu", cuda_graph=False, steps=4)
    assert counted.nodes == {"CPUExecutionProvider": node_counts(model.graph("step"), DEFAULT)["optimised"]}
    assert counted.kernels is None and not counted.replayed
    assert counted.cell("CPUExecutionProvider", cuda_graph=False).endswith(" nodes")
    assert per_step(Counter(a=10), Counter(a=10), 5).replayed  # no node in the added steps: replays


def test_servers_are_pinned_by_an_exec_shim_not_a_fork_hook() -> None:
    """benchmarks.server starts its servers on their cores through PIN_THEN_EXEC (no preexec_fn, so no fork(): a
    CI run once lost a server to gRPC's fork handlers, "epoll_wait error: Bad file descriptor", SIGABRT)."""
    from benchmarks.server import pinned

    core = min(os.sched_getaffinity(0))
    shown = subprocess.run(pinned([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], {core}),
                           capture_output=True, text=True, timeout=60, check=True)
    assert shown.stdout.strip() == f"[{core}]"
    assert pinned(["true"], None) == ["true"]


def _run_benchmark(module: str, *args: str) -> str:
    """A server benchmark in its own process: they drive servers through grpc.aio, and a process that has run
    grpc.aio can deadlock in gRPC's fork handlers when it later starts a subprocess with a preexec_fn (the
    cluster tests do), so the test process itself never runs them."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_overhead_quick_runs_every_contender_and_writes_json(model: ModelFolder, tmp_path: Path) -> None:
    """The server-against-engine benchmark (pinned when there are two cores): this tree's server, the echo
    floor (both StreamSteps styles) and the in-process batcher all answer, per session and packed (one
    StreamPackedSteps message per tick), and the JSON has every figure."""
    from benchmarks import overhead

    out = _run_benchmark("benchmarks.overhead", "--quick", "--cells", "4x2", "--model", str(model.path),
                         "--out", str(tmp_path))
    written = json.loads((tmp_path / "overhead.json").read_text())
    assert set(written["results"]) == {"this tree", overhead.FLOOR, overhead.FLOOR_ITERATOR, overhead.PACKED,
                                       overhead.FLOOR_PACKED}
    for rounds in written["results"].values():
        assert rounds["4x2"][0]["steps_per_s"] > 0 and rounds["4x2"][0]["errors"] == 0
    assert written["results"][overhead.PACKED]["4x2"][0]["mean_batch"] == 4  # every tick: all 4 sessions in one call
    assert written["batcher_alone"]["4x2"]["steps_per_s"] > 0
    assert written["batcher_alone_packed"]["4x2"]["steps_per_s"] > 0
    assert written["bare_engine"]["4"]["cpu_us_per_step"] > 0
    assert [(t["cell"], t["packed"]) for t in written["targets"]] == [("4x2", False), ("4x2", True)]
    assert f"| 4 × 2 | {overhead.PACKED} |" in out and "PACKED rows:" in out


def test_grpc_hops_quick_measures_every_setting_and_server(model: ModelFolder, tmp_path: Path) -> None:
    """Each GRPC_EXPERIMENTS value starts its own real server and echo floor; every one answers packed messages,
    and the switch counts come from /proc (positive: a message always wakes a thread)."""
    out = _run_benchmark("benchmarks.grpc_hops", "--quick", "--cells", "4x1", "--model", str(model.path),
                         "--out", str(tmp_path))
    written = json.loads((tmp_path / "grpc_hops.json").read_text())
    assert set(written["results"]) == {f"4x1|{value}|{server}" for value in ("", "-event_engine_listener")
                                       for server in ("server", "echo floor")}
    for rounds in written["results"].values():
        assert rounds[0]["steps_per_s"] > 0 and rounds[0]["errors"] == 0 and rounds[0]["switches_per_message"] > 0
    assert "| 4 × 1 | `-event_engine_listener` | echo floor |" in out


def test_idle_gap_quick_times_every_gap(model: ModelFolder, tmp_path: Path) -> None:
    """The step after each kind of gap is timed (wall and thread CPU) and the table compares it with back to back."""
    out = _run_benchmark("benchmarks.idle_gap", "--quick", "--batch", "4", "--model", str(model.path), "--out",
                         str(tmp_path))
    written = json.loads((tmp_path / "idle_gap.json").read_text())
    assert len(written["results"]) == 4
    for rounds in written["results"].values():
        assert rounds[0]["cpu_mean_us"] > 0 and rounds[0]["wall_median_us"] > 0
    assert "| none (back to back) |" in out and "1.00×" in out


def test_profile_server_prints_both_tables(model: ModelFolder, tmp_path: Path) -> None:
    """The server profiler drives a pinned server and reads perf's and py-spy's samples (a tool that is not
    installed gives a note instead of rows)."""
    out = _run_benchmark("benchmarks.profile_server", "--cell", "4x2", "--seconds", "1", "--model",
                         str(model.path), "--out", str(tmp_path))
    assert "Server CPU by shared object" in out and "Python functions holding the GIL" in out
    assert "| MainThread |" in out or "py-spy took no samples" in out  # attaching may be restricted (ptrace)


def test_train_speed_quick_measures_ours_and_says_pytorch_ntm_was_not(tmp_path: Path) -> None:
    """The training-speed benchmark runs (ours only, eager, a few steps); no figure is asserted."""
    from benchmarks import train_speed

    payload = train_speed.run(tmp_path, (2,), pytorch_ntm=None, quick=True, compile_step=False)
    written = json.loads((tmp_path / "train_speed.json").read_text())
    assert written["results"].keys() == payload["results"].keys() == {train_speed.EAGER}
    assert written["results"][train_speed.EAGER]["2"]["session_steps_per_s"] > 0
    table = (tmp_path / "train_speed.md").read_text()
    assert "pytorch-ntm NOT measured" in table and "| 2 | ntm-serve, eager |" in table


def test_train_speed_refuses_a_folder_that_is_not_pytorch_ntm(tmp_path: Path) -> None:
    from benchmarks import train_speed

    with pytest.raises(SystemExit):
        train_speed.main(["--quick", "--pytorch-ntm", str(tmp_path), "--out", str(tmp_path / "out")])
