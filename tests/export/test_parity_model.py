"""Whole-model parity: the step graph looped, the sequence graph and torch, from the same state, for
>= 1000 steps of long copy / repeat-copy inputs; drift <= 1e-4 on outputs and every state tensor,
identical rounded bits; chunked sequence calls equal one call. And the parity CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ntm_serve.contract import GRAPH_FILES, STATE_NAMES
from ntm_serve.export.model_files import load_checkpoint
from ntm_serve.export.parity import exact_path_rows, model_rows, sessions
from ntm_serve.export.parity import main as parity_main
from ntm_serve.export.runtime import cuda_unavailable_reason
from ntm_serve.export.testing import DEV_CONFIGS, dev_folder, make_dev_checkpoint, shipped_folders

REPO = Path(__file__).resolve().parents[2]
STEPS = 1000
SHIPPED = shipped_folders(REPO / "models")
PROVIDERS = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        cuda_unavailable_reason() is not None, reason=str(cuda_unavailable_reason()))]),
]



def _assert_model_parity(folder: Path, provider: str, strict: bool, steps: int = STEPS) -> None:
    """Every row passes; with `strict`, within the issue's tolerances themselves (no float32-floor rows)."""
    ckpt = load_checkpoint(folder)
    sess = sessions({name: str(folder / file) for name, file in GRAPH_FILES.items()}, provider, threads=1)
    rows = model_rows(ckpt.model, sess, ckpt.task, steps=steps, batch=2)
    failed = [r for r in rows if not (r.strict if strict else r.passed)]
    assert not failed, "\n".join(
        f"{r.check}: max abs {r.max_abs:.3g} > {r.tolerance:g} (torch f32 vs f64 {r.floor}, onnx vs f64 {r.exact})"
        for r in failed)
    checks = {r.check for r in rows}
    for name in ("output", "controller_h", "controller_c", "read_vectors", "memory", "read_weights", "write_weights"):
        assert f"step loop vs torch: {name}" in checks
    decision = "arg-max label" if ckpt.output_activation == "softmax" else "rounded output bits"
    assert f"sequence vs torch: {decision}" in checks and f"step loop vs torch: {decision}" in checks
    assert any(c.startswith("sequence chunked 7+13+1") for c in checks)
    bits = [r for r in rows if decision in r.check or "chunked" in r.check or "initial_state" in r.check]
    assert all(r.strict for r in bits)  # identical bits, exact chunking and initial state: never floor-relaxed


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config", list(DEV_CONFIGS))
def test_dev_model_parity_over_1000_steps(config: str, provider: str) -> None:
    """Untrained dev checkpoints with the real shapes: always available, so this always proves something.
    They are well conditioned, so they must meet the tolerances strictly."""
    _assert_model_parity(dev_folder(config), provider, strict=True)


# The shipped priority-sort model sorts by selection: it reads the stored row with the highest priority left and
# erases it. On 1000 steps of back-to-back episodes (never reset: a regime it never trained on) the memory holds
# stale rows with near-equal priorities and float rounding decides the pick: torch float32 itself ends as far from
# float64 as onnxruntime does (docs/training.md, "priority sort, learned"). On single episodes onnxruntime and torch
# agree bit for bit; its parity is checked over one episode (below) and the 1000-step check is a strict xfail.
# The shipped copy model is fed one copy of 500 vectors here, four times what its 128 rows hold. The copy before
# issue 24 read at near-ties between overwritten rows there and failed; the one trained on several memory sizes
# passes within the float32 floor, and with 1024 rows, where the sequence fits, strictly (the test after this one).
# The shipped repeat-copy model is chaotic over 1000 steps too: on four input seeds the graph before the Softplus
# block (ntm_serve/export/passes/premises.py) passed on two and failed on two, the current graph passes on one; the
# differences start in the last bit of beta/gamma (onnxruntime's vector Softplus, which the server always ran).
CHAOTIC = {"priority_sort": "selection over stale rows of earlier episodes (never reset, never trained on) "
                            "turns rounding into different picks: torch float32 is as far from float64",
           "repeat_copy": "chaotic over 1000 steps: on input seeds 0-3 the graphs before the Softplus block failed "
                          "this check on seeds 1 and 3, the current ones on 0, 1 and 3 (benchmarks/results/parity/"
                          "repeat_copy_seeds.md): which seed passes is rounding luck, and it differs by CPU",
           "associative_recall_wrap": "chaotic over 1000 steps of back-to-back episodes: every continuous row "
                                      "is within torch float32's own distance from float64, yet 4.9% of rounded "
                                      "bits differ"}


# Rounding luck that differs between CPUs (their float kernels differ): on one of this project's 2-core boxes the
# repeat-copy check fails, on another it passes, so its xfail is not strict. The others fail on every box seen.
LUCK_BY_CPU = {"repeat_copy"}


def _shipped_params() -> list[object]:
    return [pytest.param(p, marks=pytest.mark.xfail(strict=p.name not in LUCK_BY_CPU, reason=CHAOTIC[p.name])
                         if p.name in CHAOTIC else (), id=p.name) for p in SHIPPED]


@pytest.mark.skipif(not SHIPPED, reason="no shipped model yet (models/*/step.onnx next to checkpoint.pt)")
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("folder", _shipped_params())
def test_shipped_model_parity_over_1000_steps(folder: Path, provider: str) -> None:
    """Trained models: a row past tolerance passes only if onnx is no further from float64 than torch f32 is."""
    _assert_model_parity(folder, provider, strict=False)


@pytest.mark.skipif(not SHIPPED, reason="no shipped model yet (models/*/step.onnx next to checkpoint.pt)")
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_one_step_parity_along_the_float64_path(folder: Path) -> None:
    """What the chaotic models above are held to instead, and every other model too: along the float64 trajectory of
    the same 1000 steps, each step taken by the step graph and by torch float32 from the same state agrees within
    1e-5 of the tensor's scale, or, at an ill-conditioned step (priority sort's picks), onnx is no further from
    float64 than 2x torch float32 at that step. An op that computes something else fails here whatever the
    recurrence does with rounding."""
    ckpt = load_checkpoint(folder)
    sess = sessions({name: str(folder / file) for name, file in GRAPH_FILES.items()}, "cpu", threads=1)
    rows = exact_path_rows(ckpt.model, sess, ckpt.task, steps=STEPS, batch=2, activation=ckpt.output_activation)
    assert {r.check for r in rows} == {f"one step from float64: {n}" for n in ("output", *STATE_NAMES)}
    failed = [r for r in rows if not r.passed]
    assert not failed, "\n".join(f"{r.check}: {r.max_abs:.3g} > {r.tolerance:.3g} ({r.note}; torch f32 vs f64 "
                                 f"{r.floor:.3g}, onnx vs f64 {r.exact:.3g})" for r in failed)


@pytest.mark.skipif(not (REPO / "models" / "copy" / "step.onnx").is_file(), reason="no shipped copy model")
def test_the_one_step_check_fails_an_export_that_computes_something_else() -> None:
    """The check above can fail: the copy graphs against a torch model one weight of which moved by 1e-3."""
    folder = REPO / "models" / "copy"
    ckpt = load_checkpoint(folder)
    sess = sessions({name: str(folder / file) for name, file in GRAPH_FILES.items()}, "cpu", threads=1)
    with torch.no_grad():
        ckpt.model.controller.gates.weight[0, 0] += 1e-3  # the input gate of cell 0 reads input bit 0 a little more
    rows = exact_path_rows(ckpt.model, sess, ckpt.task, steps=50, batch=2, activation=ckpt.output_activation)
    assert not all(r.passed for r in rows)


COPY = REPO / "models" / "copy"


@pytest.mark.skipif(not (COPY / "step.onnx").is_file(), reason="no shipped copy model")
def test_shipped_copy_parity_over_1000_steps_with_a_memory_that_holds_the_sequence() -> None:
    """The same 500-vector copy with N = 1024 rows (the graphs take N as a dimension): every row strictly within
    tolerance, no float32-floor relief: the model reads sharp rows, not near-ties between overwritten ones."""
    ckpt = load_checkpoint(COPY)
    sess = sessions({name: str(COPY / file) for name, file in GRAPH_FILES.items()}, "cpu", threads=1)
    rows = model_rows(ckpt.model, sess, ckpt.task, steps=STEPS, batch=2, rows=1024)
    failed = [r for r in rows if not r.strict]
    assert not failed, "\n".join(f"{r.check}: {r.max_abs:.3g} (torch f32 vs f64 {r.floor}, onnx vs f64 {r.exact})"
                                 for r in failed)


@pytest.mark.skipif(not SHIPPED, reason="no shipped model yet (models/*/step.onnx next to checkpoint.pt)")
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_parity_over_one_episode(folder: Path, provider: str) -> None:
    """Every shipped model, over one task episode (37 steps) from its initial state: strict tolerances."""
    _assert_model_parity(folder, provider, strict=True, steps=37)


OTHER_ROWS = (64, 512, 2048)
# Memory sizes a shipped model never trained at can put it in an ill-conditioned regime of its own: priority sort at
# N = 512 picks among near-equal scores within its first episode, and torch float32 itself ends 4.7e-4 from float64
# (onnxruntime 1.7e-3): rounding decides, as in its 1000-step check above; which N it hits depends on the CPU.
CHAOTIC_AT = {("priority_sort", 512): "selection among near-equal scores at a size it never trained at: torch "
                                      "float32 is 4.7e-4 from float64 within one episode (an AMD EPYC)",
              ("priority_sort", 2048): "the same at N = 2048 on an Intel Xeon: memory 1.2e-4 from torch, onnxruntime "
                                       "9.4e-5 from float64 and torch 2.1e-5 (the EPYC passed it; which N is hit "
                                       "depends on the CPU's rounding)"}


def _other_rows_params() -> list[object]:
    return [pytest.param(p, n, id=f"{p.name}-N{n}", marks=pytest.mark.xfail(strict=False, reason=CHAOTIC_AT[p.name, n])
                         if (p.name, n) in CHAOTIC_AT else ()) for p in SHIPPED for n in OTHER_ROWS]


@pytest.mark.skipif(not SHIPPED, reason="no shipped model yet (models/*/step.onnx next to checkpoint.pt)")
@pytest.mark.parametrize(("folder", "rows"), _other_rows_params())
def test_shipped_model_parity_over_one_episode_at_other_memory_sizes(folder: Path, rows: int) -> None:
    """The same graphs with N = 64, 512 and 2048 memory rows (the models trained at 128): one episode (37 steps)
    from the initial state at that N. Away from its trained N a model's float32 conditioning is its own: a row past
    tolerance passes where onnxruntime is no further from float64 than twice torch float32 (the float32 floor)."""
    ckpt = load_checkpoint(folder)
    sess = sessions({name: str(folder / file) for name, file in GRAPH_FILES.items()}, "cpu", threads=1)
    rows_ = model_rows(ckpt.model, sess, ckpt.task, steps=37, batch=2, rows=rows)
    assert any(r.check == "initial_state: memory" for r in rows_)
    assert all(r.strict for r in rows_ if "initial_state" in r.check or "chunked" in r.check)
    failed = [r for r in rows_ if not r.passed]
    assert not failed, "\n".join(f"{r.check}: {r.max_abs:.3g} (torch f32 vs f64 {r.floor}, onnx vs f64 {r.exact})"
                                 for r in failed)


def test_parity_cli_prints_the_table_and_passes(capsys: pytest.CaptureFixture[str]) -> None:
    folder = dev_folder("copy_default")
    assert parity_main([str(folder), "--steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "| check | max abs error | max rel error |" in out
    for row in ("op: content_weighting", "op: shift", "op: sharpen", "op: write", "op: read", "op: controller",
                "op: whole step", "step loop vs torch: memory", "sequence vs torch: final write_weights"):
        assert f"| {row}" in out, row
    assert "**FAIL**" not in out


@pytest.fixture
def tampered_folder(tmp_path: Path) -> Path:
    """A copy of the dev model whose step.onnx has its output bias nudged by 1e-3 (the metadata still matches)."""
    folder = tmp_path / "tampered"
    shutil.copytree(dev_folder("copy_default"), folder)
    step = onnx.load(str(folder / "step.onnx"))
    bias = next(t for t in step.graph.initializer if t.name.endswith("output.bias"))
    values = onnx.numpy_helper.to_array(bias) + np.float32(1e-3)
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
    onnx.save(step, str(folder / "step.onnx"))
    return folder


def test_parity_cli_fails_past_tolerance(tampered_folder: Path) -> None:
    """Run as a user would (separate process, whole-model rows only): exit 1 and FAIL rows."""
    result = subprocess.run([sys.executable, "-m", "ntm_serve.export.parity", str(tampered_folder), "--no-ops",
                             "--steps", "50"], cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "| step loop vs torch: output |" in result.stdout and "**FAIL**" in result.stdout
    assert "sequence vs torch: outputs | " in result.stdout  # the untouched sequence graph still passes


def test_parity_cli_refuses_stale_graphs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX files exported from another checkpoint are reported, not compared."""
    folder = tmp_path / "stale"
    shutil.copytree(dev_folder("copy_default"), folder)
    task, config = DEV_CONFIGS["copy_default"]
    make_dev_checkpoint(folder, task, config, seed=1)  # new weights, old graphs
    assert parity_main([str(folder), "--no-ops", "--steps", "5"]) == 2
    assert "re-export" in capsys.readouterr().err


def test_parity_cli_cuda_fails_loudly_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    if cuda_unavailable_reason() is None:
        pytest.skip("CUDA loads here; the CUDA parity runs in the provider-parametrised tests")
    assert parity_main([str(dev_folder("copy_default")), "--provider", "cuda", "--no-ops", "--steps", "5"]) == 2
    err = capsys.readouterr().err  # why: onnxruntime's own refusal, or the driver check that runs before it
    assert "provider cuda asked for" in err and ("did not load" in err or "CUDA cannot run here" in err), err
