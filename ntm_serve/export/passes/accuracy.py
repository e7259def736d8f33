"""Graph passes that make an op more accurate than onnxruntime's float32 kernel computes it (issue 24, item 5).

Unlike the other passes these change bits: each replaces an op whose float32 kernel loses accuracy by the same
mathematical function computed closer to exact arithmetic, so the graph moves towards float64, not away from it.

`sums_over_rows_in_double`: a ReduceSum over the memory rows N (the sharpening's `sum(w ** gamma)`, which
normalises every weighting) runs in float64: Cast to double, ReduceSum, Cast back, i.e. the float32 rounding of the
(nearly) exact sum. onnxruntime's CPU ReduceSum accumulates N float32 terms with an error that grows with N (measured
against float64, op by op: 2 ulps at N = 128, 43 at N = 2048; torch's float32 sum, pairwise, stays within about an
ulp), and every weighting, read and write inherits the relative error of its normaliser: at N = 2048 onnxruntime
ended 18 times further from a float64 run than torch float32 after 30 copy steps. Upcast, this sum no longer counts
(docs/export.md, "Accuracy").
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from ntm_serve.contract import ROWS_DIM
from ntm_serve.export.passes.index import GraphIndex, forget_shapes, is_standard, node_attrs


def _reduces_rows(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """`node` is a float32 ReduceSum over exactly the memory-rows axis of its input (symbolic ROWS_DIM)."""
    dims = g.dims(node.input[0])
    axes = g.constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if not dims or axes is None or axes.size != 1 or node_attrs(node).get("noop_with_empty_axes", 0):
        return False
    return dims[int(axes.reshape(-1)[0]) % len(dims)] == ROWS_DIM


def sums_over_rows_in_double(g: GraphIndex) -> int:
    """ReduceSum(x, N axis) as Cast(ReduceSum(Cast(x, double)), float): the float32 rounding of the float64 sum."""
    done = 0
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.graph.input, *g.graph.value_info, *g.graph.output)}
    for node in list(g.graph.node):
        if not is_standard(node, "ReduceSum") or types.get(node.input[0]) != TensorProto.FLOAT:
            continue
        if not _reduces_rows(g, node):
            continue
        source, result = node.input[0], node.output[0]
        wide_in, wide_out = f"{result}_double_in", f"{result}_double"
        position = list(g.graph.node).index(node)
        g.graph.node.insert(position, onnx.helper.make_node("Cast", [source], [wide_in], to=TensorProto.DOUBLE))
        node.input[0] = wide_in
        node.output[0] = wide_out
        g.graph.node.insert(position + 2, onnx.helper.make_node("Cast", [wide_out], [result], to=TensorProto.FLOAT))
        forget_shapes(g, {result})
        done += 1
    return done




# The passes here, by name: a graph built without them computes what the unpassed export computes, bit for bit
# (`step_graph(model, without=MORE_ACCURATE)`; tests/export/test_graph_passes.py, test_memory_rows.py).
MORE_ACCURATE: tuple[str, ...] = (sums_over_rows_in_double.__name__,)
