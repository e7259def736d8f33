"""Export: the three graphs of docs/onnx-contract.md, single files, checked, dynamic, deterministic."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ntm_serve.contract import (
    GRAPH_FILES,
    INITIAL_STATE_INPUTS,
    METADATA_KEYS,
    NEXT_STATE,
    SEQUENCE_INPUTS,
    SEQUENCE_OUTPUTS,
    STATE_NAMES,
    STEP_INPUTS,
    STEP_OUTPUTS,
)
from ntm_serve.export.__main__ import main as export_main
from ntm_serve.export.exporter import build_graphs
from ntm_serve.export.metadata import read_metadata
from ntm_serve.export.model_files import load_checkpoint, model_bytes
from ntm_serve.export.parity import onnx_initial_state, onnx_sequence, onnx_step, torch_step
from ntm_serve.export.runtime import session
from ntm_serve.export.testing import DEV_CONFIGS, dev_folder, load_graphs, shipped_folders
from ntm_serve.training.checkpoint import save_model
from ntm_serve.training.model import LSTMBaseline
from ntm_serve.training.tasks import TASKS

REPO = Path(__file__).resolve().parents[2]
# Spelled out here as docs/onnx-contract.md spells them: a second, independent writing of the contract.
DOCUMENTED_KEYS = {"ntm.task", "ntm.config", "ntm.state", "ntm.inputs", "ntm.outputs", "ntm.encoding",
                   "ntm.checkpoint_sha256", "ntm.graph", "ntm.memory_rows_min", "ntm.memory_rows_max"}



def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ntm_serve.export", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=240, check=False)


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev checkpoint (default sizes: N=128, M=20, S=3) exported by the CLI in a separate process."""
    folder = tmp_path_factory.mktemp("copy_dev")
    shutil.copy(dev_folder("copy_default") / "checkpoint.pt", folder / "checkpoint.pt")
    result = _run_cli(str(folder))
    assert result.returncode == 0, result.stderr
    assert "step.onnx" in result.stdout
    return folder


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_cli_writes_three_single_files_that_pass_the_full_checker(cli_folder: Path) -> None:
    for name, file in GRAPH_FILES.items():
        path = cli_folder / file
        assert path.is_file(), name
        model = onnx.load(str(path), load_external_data=False)
        tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
        assert not any(onnx.external_data_helper.uses_external_data(t) for t in tensors), name
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    assert not list(cli_folder.glob("*.data")) and not list(cli_folder.glob("*.onnx.*")), list(cli_folder.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    for file in GRAPH_FILES.values():  # the usual 0666 & ~umask, not mkstemp's 0600: a service user must read them
        assert (cli_folder / file).stat().st_mode & 0o777 == 0o666 & ~umask, oct((cli_folder / file).stat().st_mode)
    assert not list(cli_folder.glob(".*.tmp"))


def test_graph_names_order_and_shapes_follow_the_contract(cli_folder: Path) -> None:
    graphs = load_graphs(cli_folder)
    _, c = DEV_CONFIGS["copy_default"]
    state_dims = {"controller_h": ["B", c.controller_size], "controller_c": ["B", c.controller_size],
                  "read_vectors": ["B", c.read_heads, c.memory_width], "memory": ["B", "N", c.memory_width],
                  "read_weights": ["B", c.read_heads, "N"], "write_weights": ["B", c.write_heads, "N"]}

    step = graphs["step"].graph
    assert [v.name for v in step.input] == ["input", *STATE_NAMES] == list(STEP_INPUTS)
    assert [v.name for v in step.output] == ["output", *(f"next_{n}" for n in STATE_NAMES)] == list(STEP_OUTPUTS)
    assert _dims(step.input[0]) == ["B", c.input_size] and _dims(step.output[0]) == ["B", c.output_size]
    for value in (*step.input[1:], *step.output[1:]):
        assert _dims(value) == state_dims[value.name.removeprefix("next_")], value.name

    seq = graphs["sequence"].graph
    assert [v.name for v in seq.input] == ["inputs", *STATE_NAMES] == list(SEQUENCE_INPUTS)
    assert [v.name for v in seq.output] == ["outputs", "read_attention", "write_attention", *NEXT_STATE] == list(
        SEQUENCE_OUTPUTS)
    assert _dims(seq.input[0]) == ["T", "B", c.input_size]
    assert _dims(seq.output[1]) == ["T", "B", c.read_heads, "N"]

    init = graphs["initial_state"].graph
    assert [v.name for v in init.input] == list(INITIAL_STATE_INPUTS) == ["memory_rows"]
    assert _dims(init.input[0]) == [] and init.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    (default,) = [t for t in init.initializer if t.name == "memory_rows"]  # optional: it defaults to the trained N
    assert onnx.numpy_helper.to_array(default).item() == c.memory_rows
    assert [v.name for v in init.output] == list(STATE_NAMES)
    for value in init.output:
        assert _dims(value) == [1, *state_dims[value.name][1:]]


def test_step_graph_has_no_control_flow_and_sequence_is_a_scan(cli_folder: Path) -> None:
    graphs = load_graphs(cli_folder)
    assert not {n.op_type for n in graphs["step"].graph.node} & {"Loop", "Scan", "If"}
    assert [n.op_type for n in graphs["sequence"].graph.node] == ["Scan"]


def test_reduceprod_over_one_write_head_is_exported_as_squeeze(cli_folder: Path) -> None:
    """W = 1: the erase product over heads is a copy, rewritten to Squeeze (bit-identical, see docs/export.md);
    W = 2 keeps its ReduceProd (and the parity tests cover both)."""
    assert "ReduceProd" not in {n.op_type for n in load_graphs(cli_folder)["step"].graph.node}
    multihead = load_graphs(dev_folder("repeat_copy_ff_multihead"))["step"]
    assert "ReduceProd" in {n.op_type for n in multihead.graph.node}


def test_metadata_props(cli_folder: Path) -> None:
    sha = hashlib.sha256((cli_folder / "checkpoint.pt").read_bytes()).hexdigest()
    _, config = DEV_CONFIGS["copy_default"]
    for name, model in load_graphs(cli_folder).items():
        meta = read_metadata(model)
        assert set(meta) == set(METADATA_KEYS) == DOCUMENTED_KEYS
        assert meta["ntm.graph"] == name and meta["ntm.task"] == "copy"
        assert meta["ntm.checkpoint_sha256"] == sha
        assert meta["ntm.encoding"] == TASKS["copy"].encoding
        assert meta["ntm.config"] == config.to_dict()
        assert [s["name"] for s in meta["ntm.state"]] == list(STATE_NAMES)
        assert meta["ntm.state"][3] == {"name": "memory", "shape": ["B", 128, 20]}  # at the trained N, the default
        assert (meta["ntm.memory_rows_min"], meta["ntm.memory_rows_max"]) == ("3", "8192")
        assert [i["name"] for i in meta["ntm.inputs"]] == [v.name for v in model.graph.input]
        assert [o["name"] for o in meta["ntm.outputs"]] == [v.name for v in model.graph.output]
        for spec, value in zip(meta["ntm.outputs"], model.graph.output, strict=True):
            assert spec["shape"] == _dims(value), spec
        json.dumps(meta)  # everything is plain JSON


def test_export_is_deterministic_across_processes(cli_folder: Path) -> None:
    """The CLI (another process, another folder) and an in-process export give byte-identical files."""
    in_process = dev_folder("copy_default")
    assert in_process != cli_folder
    for file in GRAPH_FILES.values():
        assert (in_process / file).read_bytes() == (cli_folder / file).read_bytes(), file
    text = b"".join((cli_folder / f).read_bytes() for f in GRAPH_FILES.values())
    assert str(REPO).encode() not in text and b"stack_trace" not in text  # no paths or traces inside


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_step_graph_batch_is_dynamic(cli_folder: Path, batch: int) -> None:
    ckpt = load_checkpoint(cli_folder)
    graphs = load_graphs(cli_folder)
    step, init = session(graphs["step"], threads=1), session(graphs["initial_state"], threads=1)
    state = onnx_initial_state(init, batch)
    x = (np.random.default_rng(batch).random((batch, ckpt.model.config.input_size)) < 0.5).astype(np.float32)
    p_onnx, s_onnx = onnx_step(step, x, state)
    p_torch, s_torch = torch_step(ckpt.model, x, state)
    assert p_onnx.shape == (batch, ckpt.model.config.output_size)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5, rtol=0)
    for name in STATE_NAMES:
        np.testing.assert_allclose(s_onnx[name], s_torch[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("length", [1, 2, 37, 200])
def test_sequence_graph_length_is_dynamic_not_unrolled(cli_folder: Path, length: int) -> None:
    """The Scan runs any T (no traced time loop), and equals the step graph looped T times."""
    graphs = load_graphs(cli_folder)
    step, seq = session(graphs["step"], threads=1), session(graphs["sequence"], threads=1)
    state = onnx_initial_state(session(graphs["initial_state"], threads=1), 3)
    inputs = (np.random.default_rng(length).random((length, 3, 9)) < 0.5).astype(np.float32)
    out, final = onnx_sequence(seq, inputs, state)
    assert out["outputs"].shape == (length, 3, 8) and out["read_attention"].shape == (length, 3, 1, 128)
    loop_state = state
    for t in range(length):
        p, loop_state = onnx_step(step, inputs[t], loop_state)
        np.testing.assert_allclose(out["outputs"][t], p, atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["write_attention"][t], loop_state["write_weights"], atol=1e-6, rtol=0)
    for name in STATE_NAMES:
        np.testing.assert_allclose(final[name], loop_state[name], atol=1e-6, rtol=0, err_msg=name)


def test_sequence_graph_rejects_zero_steps(cli_folder: Path) -> None:
    """T = 0 is an error in onnxruntime's Scan (documented in the contract): callers must not send it."""
    graphs = load_graphs(cli_folder)
    seq = session(graphs["sequence"], threads=1)
    state = onnx_initial_state(session(graphs["initial_state"], threads=1), 1)
    with pytest.raises(Exception, match=r"Scan|dim"):
        onnx_sequence(seq, np.zeros((0, 1, 9), np.float32), state)


def test_initial_state_graph_is_the_models_initial_state(cli_folder: Path) -> None:
    ckpt = load_checkpoint(cli_folder)
    got = session(load_graphs(cli_folder)["initial_state"]).run(None, {})
    for name, value, expected in zip(STATE_NAMES, got, ckpt.model.initial_state(1), strict=True):
        np.testing.assert_array_equal(value, expected.detach().numpy(), err_msg=name)


@pytest.mark.parametrize("rows", [3, 64, 128, 2048, 8192])
def test_initial_state_graph_takes_the_memory_rows(cli_folder: Path, rows: int) -> None:
    """N fed: the model's initial state at N rows (constant memory rows, heads on row 0), bit for bit."""
    ckpt = load_checkpoint(cli_folder)
    got = onnx_initial_state(session(load_graphs(cli_folder)["initial_state"], threads=1), 2, rows)
    for name, expected in zip(STATE_NAMES, ckpt.model.initial_state(2, rows), strict=True):
        np.testing.assert_array_equal(got[name], expected.detach().numpy(), err_msg=name)
    assert got["memory"].shape == (2, rows, 20) and got["read_weights"].shape == (2, 1, rows)
    assert got["write_weights"][:, 0, 0].tolist() == [1.0, 1.0] and got["write_weights"].sum() == 2.0


@pytest.mark.parametrize("rows", [64, 512, 2048])
def test_step_and_sequence_graphs_run_on_any_memory_rows(cli_folder: Path, rows: int) -> None:
    """The same graphs at N = 64, 512 and 2048 (traced at 128): the step looped and the sequence graph vs torch
    with that N, over a 40-step episode from the initial state at N."""
    ckpt = load_checkpoint(cli_folder)
    graphs = load_graphs(cli_folder)
    step, seq = session(graphs["step"], threads=1), session(graphs["sequence"], threads=1)
    start = onnx_initial_state(session(graphs["initial_state"], threads=1), 3, rows)
    inputs = (np.random.default_rng(rows).random((40, 3, 9)) < 0.5).astype(np.float32)
    out, final = onnx_sequence(seq, inputs, start)
    assert out["read_attention"].shape == (40, 3, 1, rows)
    state, torch_state = start, start
    for t in range(len(inputs)):
        p, state = onnx_step(step, inputs[t], state)
        p_torch, torch_state = torch_step(ckpt.model, inputs[t], torch_state)
        np.testing.assert_allclose(p, p_torch, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(out["outputs"][t], p)
    for name in STATE_NAMES:
        np.testing.assert_allclose(state[name], torch_state[name], atol=1e-5, rtol=0, err_msg=name)
        np.testing.assert_array_equal(final[name], state[name], err_msg=name)


def test_a_learned_initial_memory_has_its_trained_rows_only() -> None:
    """Its rows are parameters: the range is the trained N, and the initial-state graph has no input."""
    folder = dev_folder("copy_shift_n_learned")
    graphs = load_graphs(folder)
    assert list(graphs["initial_state"].graph.input) == []
    meta = read_metadata(graphs["step"])
    assert meta["ntm.memory_rows_min"] == meta["ntm.memory_rows_max"] == "7"
    with pytest.raises(ValueError, match="outside this model's range"):
        load_checkpoint(folder).model.initial_state(1, 8)


@pytest.mark.parametrize("name", ["repeat_copy_ff_multihead", "copy_shift_n_learned", "one_shot_lru",
                                  "one_shot_lru_skip"])
def test_other_configurations_export(name: str) -> None:
    """Feed-forward controller (controller_c passed through), 2 read + 2 write heads, S = 5, S = N, learned memory,
    LRU heads with softmax outputs (the one-shot task: metadata says so and carries the class split)."""
    folder = dev_folder(name)
    task, config = DEV_CONFIGS[name]
    graphs = load_graphs(folder)
    for graph in graphs.values():
        onnx.checker.check_model(graph, full_check=True)
    ckpt = load_checkpoint(folder)
    seq = session(graphs["sequence"], threads=1)
    state = onnx_initial_state(session(graphs["initial_state"], threads=1), 4)
    inputs = np.random.default_rng(0).normal(size=(25, 4, config.input_size)).astype(np.float32)
    out, final = onnx_sequence(seq, inputs, state)
    torch_state = state
    for t in range(len(inputs)):
        p, torch_state = torch_step(ckpt.model, inputs[t], torch_state, ckpt.output_activation)
        np.testing.assert_allclose(out["outputs"][t], p, atol=1e-5, rtol=0)
    for n in STATE_NAMES:
        np.testing.assert_allclose(final[n], torch_state[n], atol=1e-5, rtol=0, err_msg=n)
    meta = read_metadata(graphs["step"])
    assert meta["ntm.task"] == task
    if task == "one_shot":
        assert meta["ntm.output_activation"] == "softmax"
        assert meta["ntm.task_metadata"]["class_split"]["held_out_digits"] == [3, 4, 7]
        np.testing.assert_allclose(out["outputs"].sum(-1), 1.0, atol=1e-5)
    else:
        assert "ntm.output_activation" not in meta and "ntm.task_metadata" not in meta


def test_cli_reports_bad_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    baseline = tmp_path / "baseline"
    save_model(LSTMBaseline(9, 8, hidden_size=8, layers=1), baseline, {"task": "copy", "input_size": 9,
                                                                       "output_size": 8,
                                                                       "baseline": {"hidden_size": 8, "layers": 1}})
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert export_main([str(empty), str(baseline), str(garbage)]) == 1
    assert "no checkpoint.pt" in caplog.text
    assert "only NTM checkpoints export" in caplog.text
    assert "cannot load checkpoint" in caplog.text
    assert not list(tmp_path.rglob("*.onnx"))


SHIPPED = shipped_folders(REPO / "models")


@pytest.mark.skipif(not SHIPPED, reason="no shipped model yet (models/*/step.onnx next to checkpoint.pt)")
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_graphs_are_reproducible_from_their_checkpoint(folder: Path, tmp_path: Path) -> None:
    """Re-exporting the shipped checkpoint gives byte-identical files (and they match its hash)."""
    sha = hashlib.sha256((folder / "checkpoint.pt").read_bytes()).hexdigest()
    for file in GRAPH_FILES.values():
        recorded = read_metadata(onnx.load(str(folder / file), load_external_data=False))["ntm.checkpoint_sha256"]
        assert recorded == sha, f"{folder / file} is stale: run `make export`"
    shutil.copy(folder / "checkpoint.pt", tmp_path / "checkpoint.pt")
    graphs = build_graphs(load_checkpoint(tmp_path))
    for name, file in GRAPH_FILES.items():
        assert model_bytes(graphs[name]) == (folder / file).read_bytes(), f"{folder / file} differs from a re-export"
