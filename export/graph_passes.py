"""Exact local rewrites of an exported graph that leave fewer nodes for onnxruntime to run.

Every pass here is value-preserving in float32: it removes an identity (x * 1, x / 1, a softplus
branch that returns what Softplus returns), replaces data movement by equivalent data movement, moves a
size-1 axis, or hands the same products and sums to another op (one Gemm for two, a one-term sum as a
MatMul, a matrix-vector MatMul as an Einsum); none is an algebraic simplification, and
tests/test_graph_passes.py checks the outputs are bit-identical to the unpassed graph's. The
exporter's own optimiser stays off (docs/export.md: it deleted the 1e-8 epsilons). Each pass checks
its pattern fully (constants, attributes, single consumers, static shapes) and otherwise leaves the
graph alone, so the op graphs (every axis dynamic) and any NTMConfig go through the same code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

# ORT's Softplus for x > 0 is x + log1p(exp(-x)); from x = 16 on, exp(-x) < ulp(x) / 2 in float32,
# so it returns x exactly and torch's `where(x > threshold, x, softplus(x))` is Softplus alone.
SOFTPLUS_EXACT_FROM = 16.0

# Elementwise ops that commute with adding or removing a size-1 axis (their other inputs, if any, are scalars).
_ELEMENTWISE = {"Sigmoid", "Softplus", "Tanh", "Exp", "Log", "Neg", "Abs", "Relu", "Add", "Sub", "Mul", "Div"}


class _Graph:
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


def _constant(g: _Graph, name: str, value: np.ndarray) -> str:
    """An initializer holding `value`: `name`, or the existing one of that name if it holds the same."""
    existing = g.constants.get(name)
    if existing is not None:
        if existing.dtype == value.dtype and np.array_equal(existing, value):
            return name
        raise RuntimeError(f"graph pass: initializer {name!r} exists with another value")
    g.graph.initializer.append(numpy_helper.from_array(value, name))
    g.constants[name] = value
    return name


def _forget_shapes(g: _Graph, names: set[str]) -> None:
    """Drop the recorded shapes of values a rewrite changed (the final check re-infers them)."""
    kept = [v for v in g.graph.value_info if v.name not in names]
    del g.graph.value_info[:]
    g.graph.value_info.extend(kept)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _standard(node: onnx.NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def _rename_input(g: _Graph, old: str, new: str) -> None:
    for node in g.consumers.get(old, ()):
        node.input[:] = [new if n == old else n for n in node.input]


def drop_identity_arithmetic(g: _Graph) -> int:
    """x * 1 and x / 1 (a scalar 1 that does not broadcast x up) are x: torch's softplus emits both."""
    done = 0
    for node in g.graph.node:
        if not (_standard(node, "Mul") or _standard(node, "Div")) or len(node.input) != 2:
            continue
        x, one = node.input
        constant = g.constants.get(one)
        x_dims = g.dims(x)
        if (constant is None or constant.size != 1 or float(constant.reshape(-1)[0]) != 1.0
                or x_dims is None or constant.ndim > len(x_dims) or node.output[0] in g.outputs):
            continue
        _rename_input(g, node.output[0], x)
        done += 1
    return done


def fuse_thresholded_softplus(g: _Graph) -> int:
    """Where(x > t, x, Softplus(x)) with t >= SOFTPLUS_EXACT_FROM (torch's softplus, beta 1) is Softplus(x)."""
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Where"):
            continue
        condition, x, soft = node.input
        greater, softplus = g.producer.get(condition), g.producer.get(soft)
        if greater is None or softplus is None or not _standard(greater, "Greater") or not _standard(
                softplus, "Softplus"):
            continue
        threshold = g.scalar(greater.input[1])
        if greater.input[0] != x or softplus.input[0] != x or threshold is None or threshold < SOFTPLUS_EXACT_FROM:
            continue
        if g.constants[greater.input[1]].dtype != np.float32 or node.output[0] in g.outputs:
            continue
        _rename_input(g, node.output[0], soft)
        done += 1
    return done


def keep_axis_through_elementwise(g: _Graph) -> int:
    """Gather(x, i, axis=a) -> elementwise chain -> Unsqueeze(a) is Gather(x, [i], axis=a) -> the same chain.

    Selecting one index drops the axis, the chain runs on (B, H), and the consumer puts the axis back
    for broadcasting; with a 1-element index list the axis stays and both Squeeze/Unsqueeze go.
    """
    done = 0
    for node in list(g.graph.node):
        if not _standard(node, "Gather") or node.input[1] not in g.constants:
            continue
        index = g.constants[node.input[1]]
        rank = len(g.dims(node.input[0]) or ())
        axis = int(_attrs(node).get("axis", 0))
        if index.ndim != 0 or rank == 0:
            continue
        chain, value = [], node.output[0]
        while g.only_use(value):
            (user,) = g.consumers[value]
            if user.domain not in ("", "ai.onnx") or user.op_type not in (*_ELEMENTWISE, "Unsqueeze"):
                break
            if user.op_type == "Unsqueeze":
                axes = g.constants.get(user.input[1]) if len(user.input) > 1 else None
                if axes is not None and axes.size == 1 and int(axes.reshape(-1)[0]) % rank == axis % rank:
                    chain.append(user)
                break
            others = [n for n in user.input if n != value]
            if len(user.input) > 2 or any(g.scalar(n) is None or g.constants[n].ndim > 1 for n in others):
                break
            chain.append(user)
            value = user.output[0]
        if not chain or chain[-1].op_type != "Unsqueeze":
            continue
        unsqueeze = chain[-1]
        node.input[1] = _constant(g, f"{node.input[1]}_as_list", index.reshape(1))
        last = chain[-2].output[0] if len(chain) > 1 else node.output[0]
        _rename_input(g, unsqueeze.output[0], last)
        _forget_shapes(g, {node.output[0], *(n.output[0] for n in chain)})  # these values gained the axis back
        done += 1
    return done


def gather_instead_of_transposed_gathernd(g: _Graph) -> int:
    """Transpose(last axis first) -> GatherND(constant index (..., 1)) -> Transpose(back) is one Gather on
    the last axis (how torch exports `w[..., index]`): the same elements, no copies of the weighting."""
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Transpose"):
            continue
        first = g.producer.get(node.input[0])
        if first is None or not _standard(first, "GatherND") or not g.only_use(first.output[0]):
            continue
        front = g.producer.get(first.input[0])
        index = g.constants.get(first.input[1])
        if front is None or not _standard(front, "Transpose") or index is None or index.shape[-1] != 1:
            continue
        if _attrs(first).get("batch_dims", 0) or not g.only_use(front.output[0]):
            continue
        perm_in = list(_attrs(front).get("perm", []))
        rank, k = len(perm_in), index.ndim - 1
        perm_out = list(_attrs(node).get("perm", []))
        if rank < 2 or perm_in != [rank - 1, *range(rank - 1)] or perm_out != [*range(k, k + rank - 1), *range(k)]:
            continue
        node.op_type = "Gather"
        node.input[:] = [front.input[0], _constant(g, f"{first.input[1]}_last_axis", index[..., 0])]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("axis", rank - 1))
        done += 1
    return done


def constant_batch_reshape(g: _Graph) -> int:
    """Reshape to (B, static...) whose data starts with the same B: the target shape is the constant
    [0, static...] ("copy dim 0"), so the Shape/Squeeze/Concat arithmetic that built it goes."""
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Reshape") or node.input[1] in g.constants:
            continue
        data, out = g.dims(node.input[0]), g.dims(node.output[0])
        if not data or not out or not isinstance(out[0], str) or out[0] in ("", "?") or data[0] != out[0]:
            continue
        rest = out[1:]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            continue
        node.input[1] = _constant(g, f"{node.output[0]}_shape", np.array([0, *rest], dtype=np.int64))
        for attr in node.attribute:
            if attr.name == "allowzero":
                attr.i = 0
        done += 1
    return done


def merge_nested_concat(g: _Graph) -> int:
    """Concat(Concat(a, b), c) on one axis, the inner used once, is Concat(a, b, c)."""
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Concat"):
            continue
        axis = _attrs(node).get("axis")
        inputs: list[str] = []
        for name in node.input:
            inner = g.producer.get(name)
            if inner is not None and _standard(inner, "Concat") and _attrs(inner).get("axis") == axis and g.only_use(
                    name):
                inputs += inner.input
                done += 1
            else:
                inputs.append(name)
        node.input[:] = inputs
    return done


def remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads."""
    while True:
        used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    produced = {out for node in graph.node for out in node.output}
    values = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(values)


def einsum_for_matrix_vector(g: _Graph) -> int:
    """MatMul(A, Unsqueeze(v, -1)) -> Squeeze(-1): a batched matrix-vector product as one Einsum."""
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Squeeze") or len(node.input) < 2 or g.scalar(node.input[1]) != -1:
            continue
        matmul = g.producer.get(node.input[0])
        if matmul is None or not _standard(matmul, "MatMul") or not g.only_use(matmul.output[0]):
            continue
        unsqueeze = g.producer.get(matmul.input[1])
        if unsqueeze is None or not _standard(unsqueeze, "Unsqueeze") or len(unsqueeze.input) < 2:
            continue
        if g.scalar(unsqueeze.input[1]) != -1 or not g.only_use(unsqueeze.output[0]):
            continue
        node.op_type = "Einsum"
        node.input[:] = [matmul.input[0], unsqueeze.input[0]]
        node.attribute.append(onnx.helper.make_attribute("equation", "...ij,...j->...i"))
        done += 1
    return done


def outer_product_over_one_head(g: _Graph) -> int:
    """Squeeze(c - Unsqueeze(w, -1) * Unsqueeze(e, -2), head axis of size 1) is c - MatMul(w^T, e).

    The erase term of `memory.write` with one write head: (B, 1, N) x (B, 1, M) -> (B, N, M). A product
    summed over one term is the product itself, so onnxruntime's (Fused)MatMul gives the same bits
    while the two Unsqueezes, the Mul and the Squeeze go.
    """
    done = 0
    for index, node in enumerate(list(g.graph.node)):
        if not _standard(node, "Squeeze") or len(node.input) < 2 or g.scalar(node.input[1]) != 1:
            continue
        sub = g.producer.get(node.input[0])
        if sub is None or not _standard(sub, "Sub") or not g.only_use(sub.output[0]) or g.scalar(sub.input[0]) is None:
            continue
        mul = g.producer.get(sub.input[1])
        if mul is None or not _standard(mul, "Mul") or not g.only_use(mul.output[0]):
            continue
        left, right = (g.producer.get(name) for name in mul.input)
        if any(u is None or not _standard(u, "Unsqueeze") or len(u.input) < 2 for u in (left, right)):
            continue
        if g.scalar(left.input[1]) != -1 or g.scalar(right.input[1]) != -2:
            continue
        w, e = g.dims(left.input[0]), g.dims(right.input[0])
        if w is None or e is None or len(w) != 3 or len(e) != 3 or w[1] != 1 or e[1] != 1:
            continue
        base = node.output[0]
        new = [
            onnx.helper.make_node("Transpose", [left.input[0]], [f"{base}_wt"], perm=[0, 2, 1]),
            onnx.helper.make_node("MatMul", [f"{base}_wt", right.input[0]], [f"{base}_outer"]),
            onnx.helper.make_node("Sub", [sub.input[0], f"{base}_outer"], [base]),
        ]
        node.output[0] = f"{base}_unused"
        for offset, made in enumerate(new):
            g.graph.node.insert(index + done * 3 + offset, made)
        done += 1
    return done


def _plain_gemm(g: _Graph, node: onnx.NodeProto) -> bool:
    """Gemm(x, W, b) with constant W (transposed, as nn.Linear exports it) and b, alpha = beta = 1."""
    attrs = _attrs(node)
    return (_standard(node, "Gemm") and len(node.input) == 3 and all(n in g.constants for n in node.input[1:])
            and attrs.get("transA", 0) == 0 and attrs.get("transB", 0) == 1
            and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)


def _head_view(g: _Graph, gemm: onnx.NodeProto) -> tuple[onnx.NodeProto, int, int] | None:
    """The Reshape of a head projection to (B, H, P) whose every reader takes a constant piece of the last
    axis (Slice with step 1, Gather of one index): -> (reshape, H, P)."""
    if not g.only_use(gemm.output[0]):
        return None
    (reshape,) = g.consumers[gemm.output[0]]
    target = g.constants.get(reshape.input[1]) if _standard(reshape, "Reshape") else None
    if target is None or target.shape != (3,) or target[0] != 0 or min(target[1:]) < 1:
        return None
    view = reshape.output[0]
    return (reshape, int(target[1]), int(target[2])) if view not in g.outputs and all(
        _reads_last_axis_piece(g, reader, view) for reader in g.consumers.get(view, ())) else None


def _reads_last_axis_piece(g: _Graph, reader: onnx.NodeProto, view: str) -> bool:
    """`reader` takes a constant piece of the last axis of the rank-3 `view`: Gather, or Slice with step 1."""
    if reader.input[0] != view:
        return False
    if _standard(reader, "Gather"):
        return reader.input[1] in g.constants and int(_attrs(reader).get("axis", 0)) % 3 == 2
    if not _standard(reader, "Slice") or len(reader.input) < 4:
        return False
    params = [g.constants.get(n) for n in reader.input[1:]]
    if not all(p is not None and p.size == 1 for p in params):
        return False
    return int(params[2].reshape(-1)[0]) % 3 == 2 and (len(params) == 3 or int(params[3].reshape(-1)[0]) == 1)



def _move_readers(g: _Graph, view: onnx.NodeProto, source: str, width: int, offset: int) -> None:
    """Point the readers of `view` at `source`, their pieces of the last axis moved right by `offset`."""
    for reader in list(g.consumers.get(view.output[0], ())):
        if reader.op_type == "Gather":
            index = g.constants[reader.input[1]]
            reader.input[1] = _constant(g, f"{reader.output[0]}_index", (index % width + offset).astype(index.dtype))
        else:
            start, end = (int(g.constants[n].reshape(-1)[0]) for n in reader.input[1:3])
            start, end, _ = slice(start, end).indices(width)
            for position, bound in ((1, start), (2, end)):
                dtype = g.constants[reader.input[position]].dtype
                reader.input[position] = _constant(g, f"{reader.output[0]}_bound{position}",
                                                   np.array([bound + offset], dtype=dtype))
        reader.input[0] = source


def merge_sibling_head_projections(g: _Graph) -> int:
    """The read and write head projections of the same controller output (same head count H) as one Gemm.

    The weight rows are interleaved per head (head h: its write parameters, then its read parameters),
    so one (B, H, Pw + Pr) view serves both and each reader takes its piece at a shifted offset. Every
    output element is the same dot product as before: only its position changes.
    """
    gemms = [n for n in g.graph.node if _plain_gemm(g, n)]
    for first in gemms:
        for second in gemms:
            if second is first or second.input[0] != first.input[0]:
                continue
            views = _head_view(g, first), _head_view(g, second)
            if views[0] is None or views[1] is None or views[0][1] != views[1][1]:
                continue
            (view1, heads, p1), (view2, _, p2) = views
            w1, b1, w2, b2 = (g.constants[n] for n in (*first.input[1:], *second.input[1:]))
            weight = np.concatenate([w1.reshape(heads, p1, -1), w2.reshape(heads, p2, -1)], axis=1)
            bias = np.concatenate([b1.reshape(heads, p1), b2.reshape(heads, p2)], axis=1)
            name = first.output[0]
            first.input[1] = _constant(g, f"{name}_merged_weight", weight.reshape(heads * (p1 + p2), -1))
            first.input[2] = _constant(g, f"{name}_merged_bias", bias.reshape(-1))
            view1.input[1] = _constant(g, f"{view1.output[0]}_merged_shape", np.array([0, heads, p1 + p2]))
            _move_readers(g, view1, view1.output[0], p1, 0)
            _move_readers(g, view2, view1.output[0], p2, p1)
            _forget_shapes(g, {first.output[0], view1.output[0]})
            return 1  # one merge per run: the index is stale now
    return 0


# Elementwise activations whose onnxruntime CPU kernel (MLAS) gives each element the same bits whatever the
# tensor's length and the element's position in it (tests/test_graph_passes.py checks this premise). Softplus
# is not one: its Eigen kernel takes a vectorised path for whole packets and a scalar one for the tail.
POSITION_FREE = ("Sigmoid", "Tanh")


def _split_sizes(g: _Graph, split: onnx.NodeProto, width: int) -> list[int] | None:
    """The piece sizes of a Split along an axis of static size `width` (sizes input or `num_outputs`)."""
    if len(split.input) > 1 and split.input[1]:
        sizes = g.constants.get(split.input[1])
        return [int(s) for s in sizes] if sizes is not None and int(sizes.sum()) == width else None
    count = int(_attrs(split).get("num_outputs", len(split.output)))
    return [width // count] * count if count == len(split.output) and width % count == 0 else None


def _sole_activation(g: _Graph, value: str) -> onnx.NodeProto | None:
    """The one node reading `value`, if it is a position-free activation of it alone."""
    if not g.only_use(value):
        return None
    (user,) = g.consumers[value]
    return user if user.domain in ("", "ai.onnx") and user.op_type in POSITION_FREE and not user.attribute else None


def _split_node(source: str, outputs: list[str], sizes: list[int], axis: int, g: _Graph, tag: str) -> onnx.NodeProto:
    return onnx.helper.make_node("Split", [source, _constant(g, f"{tag}_sizes", np.array(sizes, dtype=np.int64))],
                                 outputs, axis=axis)


def gemm_per_activation(g: _Graph) -> int:
    """Gemm -> Split -> one activation per piece (the LSTM's gates) as one Gemm + activation per kind of activation.

    The weight rows of the pieces with the same activation go to one Gemm, its output through that activation once,
    then split (onnxruntime fuses Gemm + Sigmoid/Tanh into one FusedGemm). Each output is the same dot product as
    before in another column, and the activations give every element the same bits wherever it sits.
    """
    done = 0
    for index, gemm in enumerate(list(g.graph.node)):
        if not _plain_gemm(g, gemm) or not g.only_use(gemm.output[0]):
            continue
        (split,) = g.consumers[gemm.output[0]]
        weight, bias = g.constants[gemm.input[1]], g.constants[gemm.input[2]]
        if not _standard(split, "Split") or int(_attrs(split).get("axis", 0)) % 2 != 1 or bias.shape != (
                weight.shape[0],):
            continue
        sizes = _split_sizes(g, split, weight.shape[0])
        acts = [_sole_activation(g, out) for out in split.output]
        if sizes is None or any(a is None for a in acts):
            continue
        starts = np.cumsum([0, *sizes])
        new: list[onnx.NodeProto] = []
        for kind in dict.fromkeys(a.op_type for a in acts):
            pieces = [i for i, a in enumerate(acts) if a.op_type == kind]
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in pieces])
            tag = f"{gemm.output[0]}_{kind.lower()}"
            outs = [acts[i].output[0] for i in pieces]
            block = outs[0] if len(pieces) == 1 else f"{tag}_block"
            new += [onnx.helper.make_node("Gemm", [gemm.input[0], _constant(g, f"{tag}_weight", weight[rows]),
                                                   _constant(g, f"{tag}_bias", bias[rows])], [f"{tag}_linear"],
                                          transB=1),
                    onnx.helper.make_node(kind, [f"{tag}_linear"], [block])]
            if len(pieces) > 1:
                new.append(_split_node(block, outs, [sizes[i] for i in pieces], 1, g, tag))
        for act in acts:
            act.output[0] = f"{act.output[0]}_unused"
        gemm.output[0] = f"{gemm.output[0]}_unused"
        for offset, made in enumerate(new):
            g.graph.node.insert(index + offset, made)
        _forget_shapes(g, {a.output[0] for a in acts})
        done += 1
        break  # the index is stale now; one Gemm per run is all the step graph has
    return done


def norm_product_as_matmul(g: _Graph) -> int:
    """a * Unsqueeze(ReduceL2(X, -1), 1), a of shape (B, H, 1), as MatMul(a, Transpose(ReduceL2(X, -1, keepdims))).

    The cosine's denominator `key_norm * row_norm`: an outer product over one term is the product itself, and the
    Transpose folds into onnxruntime's FusedMatMul, so the Unsqueeze and the Mul become one node.
    """
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Mul") or node.output[0] in g.outputs:
            continue
        for a, u in (node.input, node.input[::-1]):
            unsqueeze = g.producer.get(u)
            if unsqueeze is None or not _standard(unsqueeze, "Unsqueeze") or g.scalar(unsqueeze.input[1]) != 1:
                continue
            reduce = g.producer.get(unsqueeze.input[0])
            if reduce is None or not _standard(reduce, "ReduceL2") or _attrs(reduce).get("keepdims", 1) != 0:
                continue
            x, a_dims = g.dims(reduce.input[0]), g.dims(a)
            if x is None or len(x) != 3 or len(reduce.input) < 2 or g.scalar(reduce.input[1]) not in (-1, 2):
                continue
            if a_dims is None or len(a_dims) != 3 or a_dims[2] != 1 or not (g.only_use(u) and g.only_use(
                    unsqueeze.input[0])):
                continue
            for attr in reduce.attribute:
                if attr.name == "keepdims":
                    attr.i = 1
            unsqueeze.op_type = "Transpose"
            del unsqueeze.input[1:]
            unsqueeze.attribute.append(onnx.helper.make_attribute("perm", [0, 2, 1]))
            node.op_type = "MatMul"
            node.input[:] = [a, u]
            _forget_shapes(g, {reduce.output[0]})
            done += 1
            break
    return done


def _pieces(g: _Graph, view: str, width: int) -> dict[str, tuple[int, int]] | None:
    """reader output -> [start, end) of the last axis it takes (Slice with step 1, Gather of one index)."""
    found = {}
    for reader in g.consumers.get(view, ()):
        if reader.op_type == "Gather":
            index = g.constants[reader.input[1]]
            if index.shape != (1,):
                return None  # a scalar index drops the axis: its piece is not a (B, H, 1) block
            start = int(index.reshape(-1)[0]) % width
            found[reader.output[0]] = (start, start + 1)
        else:
            start, end = (int(g.constants[n].reshape(-1)[0]) for n in reader.input[1:3])
            start, end, _ = slice(start, end).indices(width)
            found[reader.output[0]] = (start, end)
    return found


def group_head_activations(g: _Graph) -> int:
    """The head parameters that go through the same position-free activation (the gates and the erase vector)
    made contiguous in the head projection, so one activation runs over the block, then one Split hands out
    the pieces. The weight rows are permuted within each head: every output is the same dot product as before
    in another column, and the activation gives each element the same bits wherever it sits."""
    for reshape in g.graph.node:
        if not _standard(reshape, "Reshape"):
            continue
        gemm = g.producer.get(reshape.input[0])
        if gemm is None or not _plain_gemm(g, gemm) or _head_view(g, gemm) is None:
            continue
        _, heads, width = _head_view(g, gemm)
        view = reshape.output[0]
        pieces = _pieces(g, view, width)
        if pieces is None:
            continue
        taken = sorted(pieces.values())
        if any(a[1] > b[0] for a, b in itertools.pairwise(taken)):
            continue  # overlapping readers: leave the layout alone
        for kind in POSITION_FREE:
            group = [out for out in pieces if (act := _sole_activation(g, out)) is not None and act.op_type == kind]
            if len(group) < 2:
                continue
            order = [*(pieces[out] for out in group), *(p for out, p in pieces.items() if out not in group)]
            read = {c for s, e in order for c in range(s, e)}
            columns = [c for s, e in order for c in range(s, e)] + [c for c in range(width) if c not in read]
            moved = {old: new for new, old in enumerate(columns)}
            w, b = g.constants[gemm.input[1]], g.constants[gemm.input[2]]
            tag = f"{view}_{kind.lower()}"
            gemm.input[1] = _constant(g, f"{tag}_weight", w.reshape(heads, width, -1)[:, columns].reshape(w.shape))
            gemm.input[2] = _constant(g, f"{tag}_bias", b.reshape(heads, width)[:, columns].reshape(-1))
            for reader in list(g.consumers[view]):
                start, end = pieces[reader.output[0]]
                if reader.op_type == "Gather":
                    index = g.constants[reader.input[1]]
                    reader.input[1] = _constant(g, f"{reader.output[0]}_{tag}_index",
                                                np.full(index.shape, moved[start], dtype=index.dtype))
                else:
                    for position, bound in ((1, moved[start]), (2, moved[start] + end - start)):
                        reader.input[position] = _constant(g, f"{reader.output[0]}_{tag}_bound{position}",
                                                           np.array([bound], dtype=np.int64))
            acts = [g.consumers[out][0] for out in group]
            sizes = [pieces[out][1] - pieces[out][0] for out in group]
            block = f"{tag}_block"
            index = list(g.graph.node).index(reshape) + 1
            new = [
                onnx.helper.make_node("Slice", [view, _constant(g, f"{tag}_start", np.array([0], np.int64)),
                                                _constant(g, f"{tag}_end", np.array([sum(sizes)], np.int64)),
                                                _constant(g, f"{tag}_axis", np.array([2], np.int64))], [f"{block}_in"]),
                onnx.helper.make_node(kind, [f"{block}_in"], [block]),
                _split_node(block, [a.output[0] for a in acts], sizes, 2, g, tag),
            ]
            for act in acts:
                act.output[0] = f"{act.output[0]}_unused"
            for offset, made in enumerate(new):
                g.graph.node.insert(index + offset, made)
            _forget_shapes(g, {gemm.output[0], view, *(a.output[0] for a in acts)})
            return 1  # the index is stale now
    return 0


# onnxruntime's CPU Sigmoid (MLAS) clamps its input to [-18, 18] and returns exactly 0 and 1 there.
SIGMOID_SATURATES_AT = 18.0


def drop_saturated_clip_before_sigmoid(g: _Graph) -> int:
    """Sigmoid(Clip(x, lo, hi)) with lo <= -18 and hi >= 18 is Sigmoid(x) on the CPU provider: the logit clip.

    onnxruntime's CPU Sigmoid already returns exactly 0 below -18 and 1 above 18 (tests/test_graph_passes.py
    checks it, NaN included), so a wider clip in front changes no output there. On a provider whose Sigmoid does
    not saturate (CUDA) an output below sigmoid(lo) (2.1e-9 for the models' lo = -20) moves towards 0 by less than
    that.
    """
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Sigmoid"):
            continue
        clip = g.producer.get(node.input[0])
        if clip is None or not _standard(clip, "Clip") or len(clip.input) != 3 or not g.only_use(clip.output[0]):
            continue
        lo, hi = g.scalar(clip.input[1]), g.scalar(clip.input[2])
        if lo is None or hi is None or lo > -SIGMOID_SATURATES_AT or hi < SIGMOID_SATURATES_AT:
            continue
        node.input[0] = clip.input[0]
        done += 1
    return done


_COMPARISONS = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor")


def _zeros(g: _Graph, name: str) -> bool:
    """`name` is all zeros: a zero constant, or an Expand of one (torch's zeros_like)."""
    node = g.producer.get(name)
    if node is not None and _standard(node, "Expand"):
        name = node.input[0]
    value = g.constants.get(name)
    return value is not None and value.size > 0 and not np.any(value)


def _indicator(g: _Graph, name: str) -> str | None:
    """The boolean behind `name` = Cast(comparison, to float32): its values are exactly 0 and 1."""
    cast = g.producer.get(name)
    if cast is None or not _standard(cast, "Cast") or _attrs(cast).get("to") != onnx.TensorProto.FLOAT:
        return None
    source = g.producer.get(cast.input[0])
    return cast.input[0] if source is not None and source.domain in ("", "ai.onnx") and \
        source.op_type in _COMPARISONS else None


def mask_each_pick_once(g: _Graph) -> int:
    """The least-used rows (training/lru.py): `count = count + onehot; masked = Where(count > 0, inf, usage)`
    as `masked = Where(onehot, inf, masked_before)`, and the first `Where(zeros > 0, ...)`, `zeros + onehot` go.

    A count built from zeros by adding 0/1 indicators is never negative, so `count + onehot > 0` is
    `onehot or count_before > 0`: the same selection, element by element, without the Greater per pick.
    """
    done = 0
    masked: dict[tuple[str, str, str], str] = {}  # (count, fill, values) -> the value masked by that count
    for node in list(g.graph.node):
        if not _standard(node, "Where") or node.output[0] in g.outputs:
            continue
        condition, fill, values = node.input
        greater = g.producer.get(condition)
        if greater is None or not _standard(greater, "Greater") or g.scalar(greater.input[1]) != 0.0:
            continue
        count = greater.input[0]
        if _zeros(g, count):
            _rename_input(g, node.output[0], values)
            masked[(count, fill, values)] = values
            done += 1
            continue
        add = g.producer.get(count)
        if add is None or not _standard(add, "Add"):
            continue
        for before, pick in (add.input, add.input[::-1]):
            previous, onehot = masked.get((before, fill, values)), _indicator(g, pick)
            if previous is not None and onehot is not None:
                node.input[:] = [onehot, fill, previous]
                masked[(count, fill, values)] = node.output[0]
                done += 1
                break
    for node in g.graph.node:  # zeros + onehot is the onehot (0 + 0 and 0 + 1 are exact), same shape
        if _standard(node, "Add") and node.output[0] not in g.outputs:
            for zeros, pick in (node.input, node.input[::-1]):
                if _zeros(g, zeros) and _indicator(g, pick) and g.dims(zeros) == g.dims(pick) is not None:
                    _rename_input(g, node.output[0], pick)
                    done += 1
                    break
    return done


def broadcast_scalar_in_where(g: _Graph) -> int:
    """Where(c, Expand(scalar, Shape(x)), x) with c and x of one static shape is Where(c, scalar, x): the
    `full_like(usage, inf)` of the least-used rows, broadcast by Where itself instead of materialised."""
    done = 0
    for node in g.graph.node:
        if not _standard(node, "Where"):
            continue
        condition, fill, values = node.input
        expand = g.producer.get(fill)
        if expand is None or not _standard(expand, "Expand") or g.scalar(expand.input[0]) is None:
            continue
        shape = g.producer.get(expand.input[1])
        dims = g.dims(values)
        if shape is None or not _standard(shape, "Shape") or _attrs(shape) not in ({}, {"start": 0}) or dims is None:
            continue
        if g.dims(shape.input[0]) != dims or g.dims(condition) != dims:
            continue
        scalar = g.constants[expand.input[0]]
        node.input[1] = _constant(g, f"{expand.input[0]}_scalar", scalar.reshape(()))
        done += 1
    return done


PASSES: tuple[Callable[[_Graph], int], ...] = (
    drop_identity_arithmetic,
    fuse_thresholded_softplus,
    keep_axis_through_elementwise,
    gather_instead_of_transposed_gathernd,
    constant_batch_reshape,
    merge_nested_concat,
    merge_sibling_head_projections,
    outer_product_over_one_head,
    einsum_for_matrix_vector,
    gemm_per_activation,
    norm_product_as_matmul,
    group_head_activations,
    drop_saturated_clip_before_sigmoid,
    mask_each_pick_once,
    broadcast_scalar_in_where,
)


def lean(graph: onnx.GraphProto) -> dict[str, int]:
    """Run every pass once, in order (each on a fresh index, dead nodes removed in between); -> rewrites per pass."""
    done = {}
    for run in PASSES:
        done[run.__name__] = run(_Graph(graph))
        remove_dead(graph)
    return done

