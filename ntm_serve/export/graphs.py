"""Build the three contract graphs from an NTM: step (traced from `NTM.step`), sequence (a Scan over
the step graph) and initial_state (constants). Names and order follow docs/onnx-contract.md."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from ntm_serve.contract import (
    ATTENTION,
    ATTENTION_OF,
    BATCH_DIM,
    MEMORY_ROWS,
    NEXT_STATE,
    ROWS_DIM,
    STATE_NAMES,
    STEP_INPUTS,
    STEP_OUTPUTS,
    next_name,
)
from ntm_serve.export.torch_onnx import OPSET, torch_to_onnx
from ntm_serve.training.model import NTM
from ntm_serve.training.state import NTMState

EXAMPLE_BATCH = 2  # any size > 1 works: the batch axis is declared dynamic, never specialised


def probabilities(logits: Tensor, activation: str) -> Tensor:
    """The served outputs: independent bit probabilities (sigmoid), a distribution over labels (softmax), or the
    clipped outputs themselves (identity: real-valued targets, e.g. a regression data set)."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    if activation == "identity":
        return logits
    raise ValueError(f"unknown output activation {activation!r}")


class StepModule(nn.Module):
    """`NTM.step` with the contract's flat signature; outputs probabilities (the task's activation of the clipped
    logits: sigmoid for the bit tasks, softmax for classification)."""

    def __init__(self, model: NTM, activation: str = "sigmoid") -> None:
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(
        self,
        x: Tensor,
        controller_h: Tensor,
        controller_c: Tensor,
        read_vectors: Tensor,
        memory: Tensor,
        read_weights: Tensor,
        write_weights: Tensor,
    ) -> tuple[Tensor, ...]:
        state = NTMState(controller_h, controller_c, read_vectors, memory, read_weights, write_weights)
        logits, next_state = self.model.step(x, state)  # (B, O), state
        return (probabilities(logits, self.activation), *next_state)


def example_state(model: NTM, batch: int) -> NTMState:
    """The initial state as contiguous tensors of their own (expand() views cannot be traced as inputs)."""
    with torch.no_grad():
        return model.initial_state(batch).owned()


# The axes of each step input that are dimensions of the graph, not constants: the batch, and the memory rows N.
STEP_DYNAMIC: dict[str, dict[int, str]] = {
    **{name: {0: BATCH_DIM} for name in STEP_INPUTS},
    "memory": {0: BATCH_DIM, 1: ROWS_DIM},
    "read_weights": {0: BATCH_DIM, 2: ROWS_DIM},
    "write_weights": {0: BATCH_DIM, 2: ROWS_DIM},
}


def step_graph(model: NTM, activation: str = "sigmoid", lean: bool = True, without: tuple[str, ...] = ()
               ) -> onnx.ModelProto:
    """One time step; batch and memory rows dynamic; no Loop/Scan (so it can be captured by CUDA graphs). Traced at
    the trained N: the graph computes the same at every N (`lean`, `without`: see torch_to_onnx)."""
    state = example_state(model, EXAMPLE_BATCH)
    x = torch.zeros(EXAMPLE_BATCH, model.config.input_size)
    dynamic = [STEP_DYNAMIC[name] for name in STEP_INPUTS]
    return torch_to_onnx(StepModule(model, activation), (x, *state), STEP_INPUTS, STEP_OUTPUTS, dynamic, "ntm_step",
                         lean, without, minimums={ROWS_DIM: model.config.rows_range[0]})


def sequence_graph(step: onnx.ModelProto) -> onnx.ModelProto:
    """T steps in one call: a Scan whose body is the step graph, state loop-carried, `inputs` scanned on axis 0.

    The step graph's weights move to the outer graph (the body reads them from the enclosing scope),
    the body's inputs/outputs are renamed so no name shadows an outer one, and the per-step read and
    write weightings are emitted a second time (through Identity) as scan outputs.
    """
    body = onnx.GraphProto()
    body.CopyFrom(step.graph)
    body.name = "ntm_step_body"
    outer_initializers = list(body.initializer)
    del body.initializer[:]

    inputs = {value.name: value for value in body.input}
    outputs = {value.name: value for value in body.output}
    renames = {name: f"body_in.{name}" for name in STEP_INPUTS}
    renames.update({name: f"body_out.{name}" for name in STEP_OUTPUTS})
    _rename_values(body, renames)

    # Scan body order: loop-carried state first, then the scanned input element.
    del body.input[:]
    body.input.extend(_renamed(inputs[name], renames[name]) for name in (*STATE_NAMES, "input"))
    del body.output[:]
    body.output.extend(_renamed(outputs[name], renames[name]) for name in NEXT_STATE)
    body.output.append(_renamed(outputs["output"], renames["output"]))
    attention_of = {scan_name: next_name(state) for scan_name, state in ATTENTION_OF.items()}
    for scan_name, state_name in attention_of.items():
        body.node.append(helper.make_node("Identity", [renames[state_name]], [f"body_out.{scan_name}"]))
        body.output.append(_renamed(outputs[state_name], f"body_out.{scan_name}"))

    config_dims = {v.name: _dims(v) for v in (*step.graph.input, *step.graph.output)}
    scan = helper.make_node(
        "Scan",
        inputs=[*STATE_NAMES, "inputs"],
        outputs=[*NEXT_STATE, "outputs", *ATTENTION],
        name="ntm_time_scan",
        body=body,
        num_scan_inputs=1,
    )
    graph_inputs = [_value("inputs", ["T", *config_dims["input"]])]
    graph_inputs += [_value(name, config_dims[name]) for name in STATE_NAMES]
    graph_outputs = [
        _value("outputs", ["T", *config_dims["output"]]),
        *(_value(scan_name, ["T", *config_dims[state_name]]) for scan_name, state_name in attention_of.items()),
    ]
    graph_outputs += [_value(name, config_dims[name]) for name in NEXT_STATE]
    graph = helper.make_graph([scan], "ntm_sequence", graph_inputs, graph_outputs, initializer=outer_initializers)
    return _model(graph, step)


def initial_state_graph(model: NTM, like: onnx.ModelProto) -> onnx.ModelProto:
    """The six state tensors at batch 1 with N memory rows, N the graph's one input (`memory_rows`, an int64 scalar)
    whose default, an initializer of the same name, is the trained N.

    controller_h, controller_c and read_vectors are constants; the memory is the constant row broadcast to N rows
    (Expand) and the weightings one-hot at row 0 (OneHot of depth N): at the trained N the same values as
    `model.initial_state(1)`. A learned initial memory has its trained N only: then every tensor is a constant and
    there is no input.
    """
    state = example_state(model, 1)
    c = model.config
    resizable = c.rows_range[0] < c.rows_range[1]
    nodes, outputs, inputs, initializers = [], [], [], []
    for name, tensor in zip(STATE_NAMES, state, strict=True):
        array = tensor.numpy()
        if resizable and name in ("memory", "read_weights", "write_weights"):
            continue
        nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                      value=numpy_helper.from_array(array, name=f"{name}_value")))
    if resizable:
        inputs.append(helper.make_tensor_value_info(MEMORY_ROWS, TensorProto.INT64, []))
        initializers.append(numpy_helper.from_array(np.array(c.memory_rows, dtype=np.int64), MEMORY_ROWS))
        nodes += _resizable_state_nodes(state.memory[:, :1].numpy(), c.read_heads, c.write_heads)
    rows = ROWS_DIM if resizable else c.memory_rows
    shapes = {"memory": [1, rows, c.memory_columns], "read_weights": [1, c.read_heads, rows],
              "write_weights": [1, c.write_heads, rows]}
    for name, tensor in zip(STATE_NAMES, state, strict=True):
        outputs.append(_value(name, shapes.get(name, list(tensor.shape))))
    order = {name: i for i, name in enumerate(STATE_NAMES)}  # outputs' producers in contract order, helpers first
    nodes.sort(key=lambda n: order.get(n.output[0], -1))
    graph = helper.make_graph(nodes, "ntm_initial_state", inputs, outputs, initializer=initializers)
    return _model(graph, like)


def _resizable_state_nodes(row: np.ndarray, read_heads: int, write_heads: int) -> list[onnx.NodeProto]:
    """memory = Expand(row, [1, N, columns]); read/write_weights = OneHot(zeros (1, heads), N, [0, 1]).
    row (1, 1, columns): the initial memory's constant row."""

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], name=f"const_{name}",
                                value=numpy_helper.from_array(value, name=f"{name}_value"))

    columns = row.shape[-1]
    return [
        const("memory_row", row.astype(np.float32)),
        const("memory_shape_head", np.array([1], dtype=np.int64)),
        const("memory_shape_tail", np.array([columns], dtype=np.int64)),
        const("rows_axis", np.array([0], dtype=np.int64)),
        helper.make_node("Unsqueeze", [MEMORY_ROWS, "rows_axis"], ["rows_as_list"], name="rows_as_list"),
        helper.make_node("Concat", ["memory_shape_head", "rows_as_list", "memory_shape_tail"], ["memory_shape"],
                         name="memory_shape", axis=0),
        helper.make_node("Expand", ["memory_row", "memory_shape"], ["memory"], name="expand_memory"),
        const("off_on", np.array([0.0, 1.0], dtype=np.float32)),
        const("read_heads_at_row_0", np.zeros((1, read_heads), dtype=np.int64)),
        const("write_heads_at_row_0", np.zeros((1, write_heads), dtype=np.int64)),
        helper.make_node("OneHot", ["read_heads_at_row_0", MEMORY_ROWS, "off_on"], ["read_weights"],
                         name="one_hot_read_weights", axis=-1),
        helper.make_node("OneHot", ["write_heads_at_row_0", MEMORY_ROWS, "off_on"], ["write_weights"],
                         name="one_hot_write_weights", axis=-1),
    ]


def _model(graph: onnx.GraphProto, like: onnx.ModelProto) -> onnx.ModelProto:
    """A ModelProto with the same IR version, opset and producer as the exported step graph."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = like.ir_version
    model.producer_name, model.producer_version = like.producer_name, like.producer_version
    return model


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


def _value(name: str, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _renamed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    return out


def _rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename values used or produced by the nodes of `graph` (one level: the step graph has no subgraphs)."""
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in graph.value_info:
        value.name = renames.get(value.name, value.name)
    produced = {out for node in graph.node for out in node.output}
    missing = [name for name in STEP_OUTPUTS if renames[name] not in produced]
    if missing:  # the exporter always emits a node per named output; anything else is a new exporter behaviour
        raise RuntimeError(f"step graph outputs {missing} are not produced by a node; cannot build the Scan body")
