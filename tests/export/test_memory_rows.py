"""The memory size N is a dimension of the graphs (issue 24): the same shipped graphs compute what the graphs with N
baked in computed, bit for bit, at the trained N; the one pass that changes bits on purpose (the sums over N in
float64, ntm_serve/export/passes/accuracy.py) moves them towards float64 and keeps a session's bits independent of
the call it runs in. Parity at other N: tests/export/test_export.py and test_parity_model.py."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ntm_serve.contract import GRAPH_FILES, META_CHECKPOINT, STATE_NAMES
from ntm_serve.export.graphs import initial_state_graph, sequence_graph, step_graph
from ntm_serve.export.metadata import read_metadata
from ntm_serve.export.model_files import load_checkpoint, model_bytes
from ntm_serve.export.parity import long_inputs, onnx_initial_state, onnx_sequence, onnx_step, torch_step
from ntm_serve.export.passes.accuracy import MORE_ACCURATE
from ntm_serve.export.runtime import session
from ntm_serve.export.testing import DEV_CONFIGS, dev_folder, load_graphs, shipped_folders

REPO = Path(__file__).resolve().parents[2]
SHIPPED = shipped_folders(REPO / "models")
# The last commit whose shipped graphs had N baked in (memory: ['B', 128, 20], the shift a Gather by an index table).
BEFORE = "399293b5d2b976fbc3768c707f65ab91c4d60599"
EPISODE = 150  # steps of the bit-for-bit comparison
BATCH = 4


def _graph_before(folder: Path, graph: str) -> bytes | None:
    """`folder`'s graph as committed at BEFORE, or None (no git, a shallow clone, a model added since)."""
    if shutil.which("git") is None:
        return None
    path = (folder / GRAPH_FILES[graph]).relative_to(REPO)
    result = subprocess.run(["git", "show", f"{BEFORE}:{path.as_posix()}"], cwd=REPO, capture_output=True, check=False)
    return result.stdout if result.returncode == 0 else None


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.int32)


@pytest.mark.skipif(not SHIPPED, reason="no shipped model yet (models/*/step.onnx next to checkpoint.pt)")
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_graphs_with_n_a_dimension_compute_what_the_graphs_before_computed(folder: Path) -> None:
    """Today's exporter (every pass but the more accurate sums) against the graphs committed before N became a
    dimension, from the same checkpoint: the initial state, an episode of the step graph looped and the sequence
    graph, every output and state bit equal."""
    old = {name: _graph_before(folder, name) for name in GRAPH_FILES}
    if any(data is None for data in old.values()):
        pytest.skip(f"{folder.name}: no graphs at {BEFORE[:7]} (git history not at hand, or a newer model)")
    ckpt = load_checkpoint(folder)
    recorded = read_metadata(onnx.load_from_string(old["step"]))[META_CHECKPOINT]
    if recorded != ckpt.sha256:
        pytest.skip(f"{folder.name}: its checkpoint changed since {BEFORE[:7]} (retrained); nothing to compare")
    step = step_graph(ckpt.model, ckpt.output_activation, without=MORE_ACCURATE)
    new = {"step": step, "sequence": sequence_graph(step), "initial_state": initial_state_graph(ckpt.model, step)}
    want = {name: session(data, threads=1) for name, data in old.items()}
    got = {name: session(model_bytes(graph), threads=1) for name, graph in new.items()}
    start = onnx_initial_state(want["initial_state"], BATCH)
    got_start = onnx_initial_state(got["initial_state"], BATCH)
    for name in STATE_NAMES:
        np.testing.assert_array_equal(_bits(got_start[name]), _bits(start[name]), err_msg=name)
    inputs = long_inputs(ckpt.task, ckpt.model.config.input_size, EPISODE, BATCH)
    want_state, got_state = start, start
    for x in inputs:
        want_out, want_state = onnx_step(want["step"], x, want_state)
        got_out, got_state = onnx_step(got["step"], x, got_state)
        np.testing.assert_array_equal(_bits(got_out), _bits(want_out))
        for name in STATE_NAMES:
            np.testing.assert_array_equal(_bits(got_state[name]), _bits(want_state[name]), err_msg=name)
    want_seq, want_final = onnx_sequence(want["sequence"], inputs[:60], start)
    got_seq, got_final = onnx_sequence(got["sequence"], inputs[:60], start)
    for key in want_seq:
        np.testing.assert_array_equal(_bits(got_seq[key]), _bits(want_seq[key]), err_msg=key)
    for name in STATE_NAMES:
        np.testing.assert_array_equal(_bits(got_final[name]), _bits(want_final[name]), err_msg=name)


def _sums_in_double(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.DOUBLE for n in model.graph.node)


def test_the_sharpening_sums_run_in_double_on_ntm_heads_only() -> None:
    """One per head kind's sharpening (the sum over N); the least-used-row heads sum nothing over N."""
    assert _sums_in_double(load_graphs(dev_folder("copy_default"))["step"]) == 2
    assert _sums_in_double(load_graphs(dev_folder("repeat_copy_ff_multihead"))["step"]) == 2
    assert _sums_in_double(load_graphs(dev_folder("one_shot_lru"))["step"]) == 0


@pytest.mark.parametrize("rows", [128, 2048])
def test_the_sums_in_double_move_the_step_towards_float64(rows: int) -> None:
    """One step from the same states, with and without the pass: the outputs and state differ by float32 rounding
    only, and the passed graph's normalised weightings sum to 1 at least as closely (it is the float32 rounding
    of the float64 sum). Random states at N = 128 and 2048."""
    ckpt = load_checkpoint(dev_folder("copy_default"))
    exact = copy.deepcopy(ckpt.model).double()
    plain = session(step_graph(ckpt.model, without=MORE_ACCURATE), threads=1)
    passed = session(load_graphs(dev_folder("copy_default"))["step"], threads=1)
    rng = np.random.default_rng(rows)
    start = onnx_initial_state(session(load_graphs(dev_folder("copy_default"))["initial_state"], threads=1), 8, rows)
    state = start
    for _ in range(12):  # away from the initial one-hots
        state = onnx_step(plain, (rng.random((8, 9)) < 0.5).astype(np.float32), state)[1]
    x = (rng.random((8, 9)) < 0.5).astype(np.float32)
    _, plain_state = onnx_step(plain, x, state)
    _, passed_state = onnx_step(passed, x, state)
    _, exact_state = torch_step(exact, x.astype(np.float64), {k: v.astype(np.float64) for k, v in state.items()})
    for name in STATE_NAMES:
        np.testing.assert_allclose(passed_state[name], plain_state[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for name in ("read_weights", "write_weights"):
        passed_err = np.abs(passed_state[name].astype(np.float64) - exact_state[name]).max()
        plain_err = np.abs(plain_state[name].astype(np.float64) - exact_state[name]).max()
        assert passed_err <= plain_err * 1.5 + 1e-9, (name, passed_err, plain_err)


def test_a_session_does_not_depend_on_its_call_with_the_sums_in_double() -> None:
    """The server's batch invariance (docs/service.md): a session alone and as rows of a call of 8, 64 and 65 give the
    same bits over 20 steps, the sums in double included, at N = 128 and 1024."""
    graphs = load_graphs(dev_folder("copy_default"))
    run = session(graphs["step"], threads=1)
    initial = session(graphs["initial_state"], threads=1)
    rng = np.random.default_rng(5)
    for rows in (128, 1024):
        for batch in (8, 64, 65):
            alone = onnx_initial_state(initial, 1, rows)
            together = onnx_initial_state(initial, batch, rows)
            for _ in range(20):
                x = (rng.random((batch, 9)) < 0.5).astype(np.float32)
                out_alone, alone = onnx_step(run, x[:1], alone)
                out_together, together = onnx_step(run, x, together)
                np.testing.assert_array_equal(_bits(out_alone), _bits(out_together[:1]))
                for name in STATE_NAMES:
                    np.testing.assert_array_equal(_bits(alone[name]), _bits(together[name][:1]), err_msg=name)


def test_torch_runs_on_any_memory_rows_from_the_initial_state() -> None:
    """`NTM.initial_state(B, rows)` and `forward(inputs, rows=...)`: the state has N rows, N in the model's range."""
    _, config = DEV_CONFIGS["copy_default"]
    model = load_checkpoint(dev_folder("copy_default")).model
    assert config.rows_range == (3, 8192)
    _, state, reads, writes = model(torch.zeros(5, 2, 9), rows=300)
    assert state.memory.shape == (2, 300, 20) and reads.shape == (5, 2, 1, 300) and writes.shape == (5, 2, 1, 300)
    with pytest.raises(ValueError, match="outside this model's range"):
        model.initial_state(1, 2)
    with pytest.raises(ValueError, match="outside this model's range"):
        model.initial_state(1, 8193)
