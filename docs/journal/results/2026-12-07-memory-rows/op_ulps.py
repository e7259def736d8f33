"""Per node of a step graph: its float32 output against the same node run alone in float64 on the same (float32)
inputs, in ulps of the float64 result; the worst 25 nodes.

Usage, from the repository root: python docs/journal/results/2026-12-07-memory-rows/op_ulps.py models/copy N WARM
(N memory rows, WARM steps of the model's task inputs before the step that is measured).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

from ntm_serve.export.model_files import load_checkpoint
from ntm_serve.export.parity import long_inputs, onnx_initial_state, onnx_step
from ntm_serve.export.runtime import session


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # each node as written
    return options


def _values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every value of the graph on `feeds` (each node output made a graph output), the initializers too."""
    inferred = shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    exposed = copy.deepcopy(model)
    existing = {o.name for o in exposed.graph.output}
    for name in (o for n in exposed.graph.node for o in n.output if o and o not in existing):
        exposed.graph.output.append(helper.make_tensor_value_info(name, types.get(name, 0), None))
    run = ort.InferenceSession(exposed.SerializeToString(), _options(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in exposed.graph.output], run.run(None, feeds), strict=True))
    values.update(feeds)
    values.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    return values


def _wide(a: np.ndarray) -> int:
    return TensorProto.DOUBLE if a.dtype == np.float32 else helper.np_dtype_to_tensor_dtype(a.dtype)


def _in_double(model: onnx.ModelProto, node: onnx.NodeProto, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`node` alone with every float32 input and output in float64, fed the float32 inputs widened."""
    inputs = [values[i] if i else None for i in node.input]
    alone = copy.deepcopy(node)
    alone.input[:] = [f"i{k}" if i else "" for k, i in enumerate(node.input)]
    alone.output[:] = [f"o{k}" for k in range(len(node.output))]
    for attr in alone.attribute:
        if attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.DOUBLE
    graph_in = [helper.make_tensor_value_info(f"i{k}", _wide(a), a.shape)
                for k, a in enumerate(inputs) if a is not None]
    graph_out = [helper.make_tensor_value_info(f"o{k}", _wide(values[o]), None) for k, o in enumerate(node.output)]
    one = helper.make_model(helper.make_graph([alone], "one", graph_in, graph_out),
                            opset_imports=[helper.make_opsetid(o.domain, o.version) for o in model.opset_import])
    one.ir_version = model.ir_version
    run = ort.InferenceSession(one.SerializeToString(), _options(), providers=["CPUExecutionProvider"])
    feeds = {f"i{k}": a.astype(np.float64) if a.dtype == np.float32 else a
             for k, a in enumerate(inputs) if a is not None}
    return run.run(None, feeds)


def main() -> None:
    folder, rows, warm = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    model = onnx.load(str(folder / "step.onnx"))
    ckpt = load_checkpoint(folder)
    step = session(model, threads=1)
    state = onnx_initial_state(session(str(folder / "initial_state.onnx"), threads=1), 2, rows)
    inputs = long_inputs(ckpt.task, ckpt.model.config.input_size, warm + 1, 2)
    for x in inputs[:warm]:
        state = onnx_step(step, x, state)[1]
    values = _values(model, {"input": inputs[warm], **state})
    found = []
    for node in model.graph.node:
        if not any(values[i].dtype == np.float32 for i in node.input if i):
            continue
        for name, wide in zip(node.output, _in_double(model, node, values), strict=True):
            narrow = values[name]
            if narrow.dtype != np.float32 or not narrow.size:
                continue
            ulp = np.maximum(np.spacing(np.abs(wide).astype(np.float32)), np.spacing(np.float32(1e-30)))
            err = np.abs(narrow.astype(np.float64) - wide) / ulp
            at = np.unravel_index(np.argmax(err), err.shape)
            found.append((float(err.max()), node.op_type, name, float(wide[at]), narrow.shape))
    for ulps, op, name, value, shape in sorted(found, key=lambda f: -f[0])[:25]:
        print(f"{ulps:12.1f} ulp  {op:10s} {name:36s} at a value of {value:.3e}, shape {shape}")


if __name__ == "__main__":
    main()
