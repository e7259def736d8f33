"""Exact local rewrites of an exported graph that leave fewer nodes for onnxruntime to run.

Every pass here is value-preserving in float32: it removes an identity (x * 1, x / 1, a softplus
branch that returns what Softplus returns), replaces data movement by equivalent data movement, moves a
size-1 axis, or hands the same products and sums to another op (one Gemm for two, a one-term sum as a
MatMul, a matrix-vector MatMul as an Einsum); none is an algebraic simplification, and
tests/test_graph_passes.py checks the outputs are bit-identical to the unpassed graph's. The
exporter's own optimiser stays off (docs/export.md: it deleted the 1e-8 epsilons). Each pass checks
its pattern fully (constants, attributes, single consumers, static shapes) and otherwise leaves the
graph alone, so the op graphs (every axis dynamic) and any NTMConfig go through the same code.
The second round's passes (one activation per block, FusedGemm-shaped Gemms, the least-used rows) live in
ntm_serve/export/passes/fusions.py, the third round's (folds of known or already computed results) in
ntm_serve/export/passes/folds.py;
`lean` runs them after these. The index they share is ntm_serve/export/passes/index.py. The passes of
ntm_serve/export/passes/premises.py are exact on every state the server accepts (weightings that are distributions),
not on every input: their premise is enforced where states enter (ntm_serve/api/tensors.py) and documented there.
The very last (ntm_serve/export/passes/accuracy.py) changes bits on purpose: it computes an op that onnxruntime's
float32 kernel gets less accurate closer to exact arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from ntm_serve.export.passes.accuracy import sums_over_rows_in_double
from ntm_serve.export.passes.folds import (
    add_inside_gemm,
    complements_in_the_gate_block,
    divide_one_hot_count_by_its_sum,
    least_used_as_a_column,
    split_for_last_axis_pieces,
    sum_of_indicators,
)
from ntm_serve.export.passes.fusions import (
    broadcast_scalar_in_where,
    drop_saturated_clip_before_sigmoid,
    gemm_per_activation,
    group_head_activations,
    mask_each_pick_once,
    norm_product_as_matmul,
)
from ntm_serve.export.passes.index import (
    GraphIndex,
    add_constant,
    forget_shapes,
    head_view,
    is_standard,
    node_attrs,
    plain_gemm,
    rename_input,
)
from ntm_serve.export.passes.premises import drop_sharpen_floors_on_distributions, group_softplus_block

# ORT's Softplus for x > 0 is x + log1p(exp(-x)); from x = 16 on, exp(-x) < ulp(x) / 2 in float32,
# so it returns x exactly and torch's `where(x > threshold, x, softplus(x))` is Softplus alone.
SOFTPLUS_EXACT_FROM = 16.0

# Elementwise ops that commute with adding or removing a size-1 axis (their other inputs, if any, are scalars).
_ELEMENTWISE = {"Sigmoid", "Softplus", "Tanh", "Exp", "Log", "Neg", "Abs", "Relu", "Add", "Sub", "Mul", "Div"}




def drop_identity_arithmetic(g: GraphIndex) -> int:
    """x * 1 and x / 1 (a scalar 1 that does not broadcast x up) are x: torch's softplus emits both."""
    done = 0
    for node in g.graph.node:
        if not (is_standard(node, "Mul") or is_standard(node, "Div")) or len(node.input) != 2:
            continue
        x, one = node.input
        constant = g.constants.get(one)
        x_dims = g.dims(x)
        if (constant is None or constant.size != 1 or float(constant.reshape(-1)[0]) != 1.0
                or x_dims is None or constant.ndim > len(x_dims) or node.output[0] in g.outputs):
            continue
        rename_input(g, node.output[0], x)
        done += 1
    return done


def fuse_thresholded_softplus(g: GraphIndex) -> int:
    """Where(x > t, x, Softplus(x)) with t >= SOFTPLUS_EXACT_FROM (torch's softplus, beta 1) is Softplus(x)."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Where"):
            continue
        condition, x, soft = node.input
        greater, softplus = g.producer.get(condition), g.producer.get(soft)
        if greater is None or softplus is None or not is_standard(greater, "Greater") or not is_standard(
                softplus, "Softplus"):
            continue
        threshold = g.scalar(greater.input[1])
        if greater.input[0] != x or softplus.input[0] != x or threshold is None or threshold < SOFTPLUS_EXACT_FROM:
            continue
        if g.constants[greater.input[1]].dtype != np.float32 or node.output[0] in g.outputs:
            continue
        rename_input(g, node.output[0], soft)
        done += 1
    return done


def keep_axis_through_elementwise(g: GraphIndex) -> int:
    """Gather(x, i, axis=a) -> elementwise chain -> Unsqueeze(a) is Gather(x, [i], axis=a) -> the same chain.

    Selecting one index drops the axis, the chain runs on (B, H), and the consumer puts the axis back
    for broadcasting; with a 1-element index list the axis stays and both Squeeze/Unsqueeze go.
    """
    done = 0
    for node in list(g.graph.node):
        if not is_standard(node, "Gather") or node.input[1] not in g.constants:
            continue
        index = g.constants[node.input[1]]
        rank = len(g.dims(node.input[0]) or ())
        axis = int(node_attrs(node).get("axis", 0))
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
        node.input[1] = add_constant(g, f"{node.input[1]}_as_list", index.reshape(1))
        last = chain[-2].output[0] if len(chain) > 1 else node.output[0]
        rename_input(g, unsqueeze.output[0], last)
        forget_shapes(g, {node.output[0], *(n.output[0] for n in chain)})  # these values gained the axis back
        done += 1
    return done


def constant_batch_reshape(g: GraphIndex) -> int:
    """Reshape to (B, static...) whose data starts with the same B: the target shape is the constant
    [0, static...] ("copy dim 0"), so the Shape/Squeeze/Concat arithmetic that built it goes."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Reshape") or node.input[1] in g.constants:
            continue
        data, out = g.dims(node.input[0]), g.dims(node.output[0])
        if not data or not out or not isinstance(out[0], str) or out[0] in ("", "?") or data[0] != out[0]:
            continue
        rest = out[1:]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            continue
        node.input[1] = add_constant(g, f"{node.output[0]}_shape", np.array([0, *rest], dtype=np.int64))
        for attr in node.attribute:
            if attr.name == "allowzero":
                attr.i = 0
        done += 1
    return done


def merge_nested_concat(g: GraphIndex) -> int:
    """Concat(Concat(a, b), c) on one axis, the inner used once, is Concat(a, b, c)."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Concat"):
            continue
        axis = node_attrs(node).get("axis")
        inputs: list[str] = []
        for name in node.input:
            inner = g.producer.get(name)
            if (inner is not None and is_standard(inner, "Concat") and node_attrs(inner).get("axis") == axis
                    and g.only_use(name)):
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


def einsum_for_matrix_vector(g: GraphIndex) -> int:
    """MatMul(A, Unsqueeze(v, -1)) -> Squeeze(-1): a batched matrix-vector product as one Einsum."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Squeeze") or len(node.input) < 2 or g.scalar(node.input[1]) != -1:
            continue
        matmul = g.producer.get(node.input[0])
        if matmul is None or not is_standard(matmul, "MatMul") or not g.only_use(matmul.output[0]):
            continue
        unsqueeze = g.producer.get(matmul.input[1])
        if unsqueeze is None or not is_standard(unsqueeze, "Unsqueeze") or len(unsqueeze.input) < 2:
            continue
        if g.scalar(unsqueeze.input[1]) != -1 or not g.only_use(unsqueeze.output[0]):
            continue
        node.op_type = "Einsum"
        node.input[:] = [matmul.input[0], unsqueeze.input[0]]
        node.attribute.append(onnx.helper.make_attribute("equation", "...ij,...j->...i"))
        done += 1
    return done


def outer_product_over_one_head(g: GraphIndex) -> int:
    """Squeeze(c - Unsqueeze(w, -1) * Unsqueeze(e, -2), head axis of size 1) is c - MatMul(w^T, e).

    The erase term of `memory.write` with one write head: (B, 1, N) x (B, 1, M) -> (B, N, M). A product
    summed over one term is the product itself, so onnxruntime's (Fused)MatMul gives the same bits
    while the two Unsqueezes, the Mul and the Squeeze go.
    """
    done = 0
    for index, node in enumerate(list(g.graph.node)):
        if not is_standard(node, "Squeeze") or len(node.input) < 2 or g.scalar(node.input[1]) != 1:
            continue
        sub = g.producer.get(node.input[0])
        if (sub is None or not is_standard(sub, "Sub") or not g.only_use(sub.output[0])
                or g.scalar(sub.input[0]) is None):
            continue
        mul = g.producer.get(sub.input[1])
        if mul is None or not is_standard(mul, "Mul") or not g.only_use(mul.output[0]):
            continue
        left, right = (g.producer.get(name) for name in mul.input)
        if any(u is None or not is_standard(u, "Unsqueeze") or len(u.input) < 2 for u in (left, right)):
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




def _move_readers(g: GraphIndex, view: onnx.NodeProto, source: str, width: int, offset: int) -> None:
    """Point the readers of `view` at `source`, their pieces of the last axis moved right by `offset`."""
    for reader in list(g.consumers.get(view.output[0], ())):
        if reader.op_type == "Gather":
            index = g.constants[reader.input[1]]
            reader.input[1] = add_constant(g, f"{reader.output[0]}_index", (index % width + offset).astype(index.dtype))
        else:
            start, end = (int(g.constants[n].reshape(-1)[0]) for n in reader.input[1:3])
            start, end, _ = slice(start, end).indices(width)
            for position, bound in ((1, start), (2, end)):
                dtype = g.constants[reader.input[position]].dtype
                reader.input[position] = add_constant(g, f"{reader.output[0]}_bound{position}",
                                                   np.array([bound + offset], dtype=dtype))
        reader.input[0] = source


def merge_sibling_head_projections(g: GraphIndex) -> int:
    """The read and write head projections of the same controller output (same head count H) as one Gemm.

    The weight rows are interleaved per head (head h: its write parameters, then its read parameters),
    so one (B, H, Pw + Pr) view serves both and each reader takes its piece at a shifted offset. Every
    output element is the same dot product as before: only its position changes.
    """
    gemms = [n for n in g.graph.node if plain_gemm(g, n)]
    for first in gemms:
        for second in gemms:
            if second is first or second.input[0] != first.input[0]:
                continue
            views = head_view(g, first), head_view(g, second)
            if views[0] is None or views[1] is None or views[0][1] != views[1][1]:
                continue
            (view1, heads, p1), (view2, _, p2) = views
            w1, b1, w2, b2 = (g.constants[n] for n in (*first.input[1:], *second.input[1:]))
            weight = np.concatenate([w1.reshape(heads, p1, -1), w2.reshape(heads, p2, -1)], axis=1)
            bias = np.concatenate([b1.reshape(heads, p1), b2.reshape(heads, p2)], axis=1)
            name = first.output[0]
            first.input[1] = add_constant(g, f"{name}_merged_weight", weight.reshape(heads * (p1 + p2), -1))
            first.input[2] = add_constant(g, f"{name}_merged_bias", bias.reshape(-1))
            view1.input[1] = add_constant(g, f"{view1.output[0]}_merged_shape", np.array([0, heads, p1 + p2]))
            _move_readers(g, view1, view1.output[0], p1, 0)
            _move_readers(g, view2, view1.output[0], p2, p1)
            forget_shapes(g, {first.output[0], view1.output[0]})
            return 1  # one merge per run: the index is stale now
    return 0


Pass = Callable[[GraphIndex], int]  # a rewrite of the graph an index describes: -> how many places it changed

PASSES: tuple[Pass, ...] = (
    drop_identity_arithmetic,
    fuse_thresholded_softplus,
    keep_axis_through_elementwise,
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
    complements_in_the_gate_block,
    group_softplus_block,
    add_inside_gemm,
    sum_of_indicators,
    divide_one_hot_count_by_its_sum,
    least_used_as_a_column,
    split_for_last_axis_pieces,
    drop_sharpen_floors_on_distributions,
    sums_over_rows_in_double,
)


def lean(graph: onnx.GraphProto, without: tuple[str, ...] = ()) -> dict[str, int]:
    """Run every pass once, in order (each on a fresh index, dead nodes removed in between), but those named in
    `without`; -> rewrites per pass."""
    unknown = set(without) - {run.__name__ for run in PASSES}
    if unknown:
        raise ValueError(f"no graph passes {sorted(unknown)}")
    done = {}
    for run in PASSES:
        if run.__name__ in without:
            continue
        done[run.__name__] = run(GraphIndex(graph))
        remove_dead(graph)
    return done

