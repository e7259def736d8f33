"""The index the graph passes work on: one GraphProto's constants, producers, consumers and value shapes,
and the small helpers every pass shares (constants, attributes, renaming, the head projections' views)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Index of one GraphProto: constants, producers, consumers, value ranks."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.outputs = {v.name for v in graph.output}
        self.shapes = {v.name: v.type.tensor_type.shape for v in (*graph.input, *graph.value_info, *graph.output)}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def only_use(self, name: str) -> bool:
        """`name` feeds exactly one node input and is not a graph output."""
        return name not in self.outputs and len(self.consumers.get(name, ())) == 1

    def dims(self, name: str) -> list[int | str] | None:
        shape = self.shapes.get(name)
        if shape is None:
            return None
        return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
                for d in shape.dim]


def add_constant(g: GraphIndex, name: str, value: np.ndarray) -> str:
    """An initializer holding `value`: `name`, or the existing one of that name if it holds the same."""
    existing = g.constants.get(name)
    if existing is not None:
        if existing.dtype == value.dtype and np.array_equal(existing, value):
            return name
        raise RuntimeError(f"graph pass: initializer {name!r} exists with another value")
    g.graph.initializer.append(numpy_helper.from_array(value, name))
    g.constants[name] = value
    return name


def forget_shapes(g: GraphIndex, names: set[str]) -> None:
    """Drop the recorded shapes of values a rewrite changed (the final check re-infers them)."""
    kept = [v for v in g.graph.value_info if v.name not in names]
    del g.graph.value_info[:]
    g.graph.value_info.extend(kept)


def node_attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def is_standard(node: onnx.NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def rename_input(g: GraphIndex, old: str, new: str) -> None:
    for node in g.consumers.get(old, ()):
        node.input[:] = [new if n == old else n for n in node.input]

def dimension_of(g: GraphIndex, name: str) -> int | str | None:
    """The graph's name for the dimension the scalar `name` holds when it is Squeeze(Shape(v, start=k, end=k + 1))
    (how torch exports `v.shape[k]`): a symbol such as "N", or a static size; else None."""
    squeeze = g.producer.get(name)
    shape = g.producer.get(squeeze.input[0]) if squeeze is not None and is_standard(squeeze, "Squeeze") else None
    dims = g.dims(shape.input[0]) if shape is not None and is_standard(shape, "Shape") else None
    if shape is None or not dims:
        return None
    attrs = node_attrs(shape)
    start = int(attrs.get("start", 0)) % len(dims)
    end = int(attrs.get("end", len(dims)))
    end = end % len(dims) if end < 0 else min(end, len(dims))
    dim = dims[start] if end == start + 1 else None
    return None if dim in (None, "", "?") else dim


def arange_length(g: GraphIndex, name: str) -> int | str | None:
    """n when `name` is arange(n): a constant [0, 1, ..., n - 1] (a static n), or Range(0, v.shape[k], 1) (torch's
    `arange` over a dynamic axis: n is that dimension, e.g. the memory rows "N"); else None."""
    value = g.constants.get(name)
    if value is not None:
        return int(value.shape[0]) if value.ndim == 1 and np.array_equal(value, np.arange(value.shape[0])) else None
    node = g.producer.get(name)
    if node is None or not is_standard(node, "Range") or g.scalar(node.input[0]) != 0 or g.scalar(node.input[2]) != 1:
        return None
    return dimension_of(g, node.input[1])


def plain_gemm(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """Gemm(x, W, b) with constant W (transposed, as nn.Linear exports it) and b, alpha = beta = 1."""
    attrs = node_attrs(node)
    return (is_standard(node, "Gemm") and len(node.input) == 3 and all(n in g.constants for n in node.input[1:])
            and attrs.get("transA", 0) == 0 and attrs.get("transB", 0) == 1
            and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)


def head_view(g: GraphIndex, gemm: onnx.NodeProto) -> tuple[onnx.NodeProto, int, int] | None:
    """The Reshape of a head projection to (B, H, P) whose every reader takes a constant piece of the last
    axis (Slice with step 1, Gather of one index): -> (reshape, H, P)."""
    if not g.only_use(gemm.output[0]):
        return None
    (reshape,) = g.consumers[gemm.output[0]]
    target = g.constants.get(reshape.input[1]) if is_standard(reshape, "Reshape") else None
    if target is None or target.shape != (3,) or target[0] != 0 or min(target[1:]) < 1:
        return None
    view = reshape.output[0]
    return (reshape, int(target[1]), int(target[2])) if view not in g.outputs and all(
        reads_last_axis_piece(g, reader, view) for reader in g.consumers.get(view, ())) else None


def reads_last_axis_piece(g: GraphIndex, reader: onnx.NodeProto, view: str) -> bool:
    """`reader` takes a constant piece of the last axis of the rank-3 `view`: Gather, or Slice with step 1."""
    if reader.input[0] != view:
        return False
    if is_standard(reader, "Gather"):
        return reader.input[1] in g.constants and int(node_attrs(reader).get("axis", 0)) % 3 == 2
    if not is_standard(reader, "Slice") or len(reader.input) < 4:
        return False
    params = [g.constants.get(n) for n in reader.input[1:]]
    if not all(p is not None and p.size == 1 for p in params):
        return False
    return int(params[2].reshape(-1)[0]) % 3 == 2 and (len(params) == 3 or int(params[3].reshape(-1)[0]) == 1)
