"""Checkpoint -> the three contract graphs, with metadata, checked by onnx before anything is written."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ntm_serve.contract import (
    BATCH_DIM,
    GRAPH_FILES,
    INITIAL_STATE_INPUTS,
    INITIAL_STATE_OUTPUTS,
    ROWS_DIM,
    SEQUENCE_INPUTS,
    SEQUENCE_OUTPUTS,
    STEP_INPUTS,
    STEP_OUTPUTS,
    TIME_DIM,
    next_name,
)
from ntm_serve.export.graphs import initial_state_graph, sequence_graph, step_graph
from ntm_serve.export.metadata import Shape, graph_metadata, set_metadata, state_shapes
from ntm_serve.export.model_files import Checkpoint, load_checkpoint, model_bytes, write_atomically

log = logging.getLogger(__name__)


def build_graphs(ckpt: Checkpoint) -> dict[str, onnx.ModelProto]:
    """The step, sequence and initial_state graphs of one checkpoint, metadata set, validated."""
    config = ckpt.model.config
    step = step_graph(ckpt.model, ckpt.output_activation)
    sequence = sequence_graph(step)
    initial = initial_state_graph(ckpt.model, step)

    c = config
    resizable = c.rows_range[0] < c.rows_range[1]
    rows = ROWS_DIM if resizable else c.memory_rows  # the initial state's N; the step and sequence graphs': ROWS_DIM
    state = state_shapes(config, ROWS_DIM)
    io_shapes: dict[str, Shape] = {
        "input": [BATCH_DIM, c.input_size],
        "output": [BATCH_DIM, c.output_size],
        "inputs": [TIME_DIM, BATCH_DIM, c.input_size],
        "outputs": [TIME_DIM, BATCH_DIM, c.output_size],
        "read_attention": [TIME_DIM, BATCH_DIM, c.read_heads, ROWS_DIM],
        "write_attention": [TIME_DIM, BATCH_DIM, c.write_heads, ROWS_DIM],
        **state,
        **{next_name(name): shape for name, shape in state.items()},
    }
    initial_shapes: dict[str, Shape] = {name: [1, *shape[1:]] for name, shape in state_shapes(config, rows).items()}
    initial_inputs = INITIAL_STATE_INPUTS if resizable else ()
    initial_shapes.update({name: [] for name in initial_inputs})  # N, a scalar
    specs = {
        "step": (STEP_INPUTS, STEP_OUTPUTS, io_shapes),
        "sequence": (SEQUENCE_INPUTS, SEQUENCE_OUTPUTS, io_shapes),
        "initial_state": (initial_inputs, INITIAL_STATE_OUTPUTS, initial_shapes),
    }
    graphs = {"step": step, "sequence": sequence, "initial_state": initial}
    for name, graph in graphs.items():
        inputs, outputs, shapes = specs[name]
        props = graph_metadata(
            name, ckpt.task, config, ckpt.encoding, ckpt.sha256,
            [(n, shapes[n]) for n in inputs], [(n, shapes[n]) for n in outputs],
            ckpt.output_activation, ckpt.task_metadata,
        )
        set_metadata(graph, props)
        validate(graph, inputs, outputs)
    return graphs


def validate(model: onnx.ModelProto, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """onnx's full checker and strict shape inference, plus the contract's input/output names and order."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    got_in = tuple(v.name for v in model.graph.input)
    got_out = tuple(v.name for v in model.graph.output)
    if got_in != inputs or got_out != outputs:
        raise RuntimeError(f"graph {model.graph.name}: inputs {got_in} outputs {got_out}, want {inputs} {outputs}")


def export_folder(folder: Path) -> dict[str, Path]:
    """Export `folder/checkpoint.pt` to `folder/{step,sequence,initial_state}.onnx`. Returns the paths."""
    ckpt = load_checkpoint(folder)
    graphs = build_graphs(ckpt)
    paths = {}
    for name, graph in graphs.items():
        path = folder / GRAPH_FILES[name]
        write_atomically(path, model_bytes(graph))
        paths[name] = path
    log.info("%s: exported %s (checkpoint sha256 %s)", folder, ", ".join(p.name for p in paths.values()),
             ckpt.sha256[:12])
    return paths
