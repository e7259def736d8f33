"""The benchmark scripts run and write what docs/performance.md is built from. No timing is asserted:
performance is measured by `python -m benchmarks`, never by tests."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import engine, procstat
from benchmarks.models import ModelFolder, find_model, has_graphs
from benchmarks.ort_engine import DEFAULT, BoundStep, RunStep, copy_task_inputs, initial_state, make_session
from benchmarks.timing import TimingPlan

TINY = TimingPlan(rounds=1, round_s=0.002, warmup_calls=1, max_calls=20)
REPO = Path(__file__).resolve().parents[1]


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
