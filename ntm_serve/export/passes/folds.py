"""Exact graph passes, third round (issue 12, item 3): fold nodes whose result is known or already computed.

Like the first two rounds (ntm_serve/export/passes/pipeline.py runs all three), each pass is value-preserving in
float32 on
the CPU provider, checked by tests/test_graph_passes.py for bit-identical outputs (each pass alone, on random
states). They hand the pieces of one tensor out with one Split, add a Gemm's addend inside the Gemm, sum 0/1
indicators in one node, divide a count of one-hot rows by the count it always has, let one subtraction give
the gates' complements, and pick the least-used rows on the usage column in the layout its users need.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx

from ntm_serve.export.passes.fusions import indicator, split_node, split_sizes
from ntm_serve.export.passes.index import (
    GraphIndex,
    add_constant,
    arange_length,
    forget_shapes,
    head_view,
    is_standard,
    node_attrs,
    plain_gemm,
    rename_input,
)

# MLAS accumulates a Gemm's K in panels of 256 and adds each panel to C: up to one panel, Gemm(x, W, C=y) is
# round(x·W + y), the same bits as Add(Gemm(x, W), y) (tests/test_graph_passes.py checks the premise).
GEMM_ONE_PANEL = 256


def axis_piece(g: GraphIndex, reader: onnx.NodeProto, value: str, rank: int, width: int) -> tuple[int, int] | None:
    """[start, end) of the last axis that `reader` takes from `value` (Slice with step 1, Gather of a 1-element
    list: both keep the axis), or None when it reads `value` any other way."""
    if len(reader.input) < 2 or reader.input[0] != value or value in reader.input[1:]:
        return None
    if is_standard(reader, "Gather"):
        index = g.constants.get(reader.input[1])
        if index is None or index.shape != (1,) or int(node_attrs(reader).get("axis", 0)) % rank != rank - 1:
            return None
        start = int(index[0]) % width
        return start, start + 1
    if not is_standard(reader, "Slice") or len(reader.input) < 4:
        return None
    params = [g.constants.get(n) for n in reader.input[1:]]
    if not all(p is not None and p.size == 1 for p in params):
        return None
    if int(params[2].reshape(-1)[0]) % rank != rank - 1 or (len(params) > 3 and int(params[3].reshape(-1)[0]) != 1):
        return None
    start, end, _ = slice(int(params[0].reshape(-1)[0]), int(params[1].reshape(-1)[0])).indices(width)
    return (start, end) if end > start else None


def split_for_last_axis_pieces(g: GraphIndex) -> int:
    """Several Slice/Gather readers of disjoint pieces of one tensor's last axis as one Split (with unread
    filler outputs for the gaps): the same elements, one node. onnxruntime does this itself only when the
    pieces cover the whole axis (the least-used-row heads leave columns unread)."""
    done = 0
    for value in [*(v.name for v in g.graph.input), *(out for node in list(g.graph.node) for out in node.output)]:
        dims, readers = g.dims(value), g.consumers.get(value, [])
        if not dims or not isinstance(dims[-1], int) or dims[-1] < 1 or len(readers) < 2 or value in g.outputs:
            continue
        rank, width = len(dims), dims[-1]
        pieces = [axis_piece(g, reader, value, rank, width) for reader in readers]
        if any(p is None for p in pieces):
            continue
        order = sorted(zip(pieces, readers, strict=True), key=lambda pr: pr[0])
        if any(a[0][1] > b[0][0] for a, b in itertools.pairwise(order)):
            continue  # overlapping pieces
        outputs, sizes, at = [], [], 0
        for (start, end), reader in order:
            if start > at:
                outputs.append(f"{value}_unread_{at}")
                sizes.append(start - at)
            outputs.append(reader.output[0])
            sizes.append(end - start)
            at = end
        if at < width:
            outputs.append(f"{value}_unread_{at}")
            sizes.append(width - at)
        first = min(list(g.graph.node).index(r) for r in readers)
        for reader in readers:
            g.graph.node.remove(reader)
        g.graph.node.insert(first, split_node(value, outputs, sizes, rank - 1, g, f"{value}_pieces"))
        done += 1
    return done


def _sum_terms(g: GraphIndex, name: str, top: bool) -> list[str] | None:
    """The 0/1 indicators whose sum `name` is (through Add/Sum nodes used once), or None."""
    node = g.producer.get(name)
    if node is not None and (is_standard(node, "Add") or is_standard(node, "Sum")) and (top or g.only_use(name)):
        terms = [_sum_terms(g, n, False) for n in node.input]
        return None if any(t is None for t in terms) else [t for ts in terms for t in ts]
    return [name] if indicator(g, name) is not None else None


def sum_of_indicators(g: GraphIndex) -> int:
    """An Add chain over 0/1 indicators (the least-used rows' count) as one Sum: small integers add exactly in
    any order, so the variadic Sum gives the same bits with one node."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Add"):
            continue
        terms = _sum_terms(g, node.output[0], True)
        if terms is None or len(terms) < 3 or len({str(g.dims(t)) for t in terms}) != 1 or g.dims(terms[0]) is None:
            continue
        node.op_type = "Sum"
        node.input[:] = terms
        done += 1
    return done


def _one_hot_rows(g: GraphIndex, name: str) -> int | None:
    """How many one-hot rows (along the last axis) the float tensor `name` is the sum of, or None.

    A one-hot row is Cast(Equal(arange(N), ArgMin(v, axis=-1, keepdims=1))) with N the last axis of v (static, or
    the arange spans that very dimension): ArgMin returns an index in [0, N) whatever v holds (NaN included), so
    each row has exactly one 1.
    """
    node = g.producer.get(name)
    if node is not None and (is_standard(node, "Add") or is_standard(node, "Sum")):
        counts = [_one_hot_rows(g, n) for n in node.input]
        return None if any(c is None for c in counts) else sum(counts)
    equal_out = indicator(g, name)
    equal = g.producer.get(equal_out) if equal_out is not None else None
    if equal is None or not is_standard(equal, "Equal"):
        return None
    for index_name, arg_name in (equal.input, equal.input[::-1]):
        length, argmin = arange_length(g, index_name), g.producer.get(arg_name)
        if length is None or argmin is None or not is_standard(argmin, "ArgMin"):
            continue
        dims, attrs = g.dims(argmin.input[0]), node_attrs(argmin)
        if not dims or dims[-1] in ("", "?") or attrs.get("keepdims", 1) != 1:
            continue
        if int(attrs.get("axis", 0)) % len(dims) != len(dims) - 1:
            continue
        if length == dims[-1]:
            return 1
    return None


def divide_one_hot_count_by_its_sum(g: GraphIndex) -> int:
    """x / ReduceSum(x, -1) with x the sum of k one-hot rows is x / k: each row of x sums to k exactly (small
    integers), so the ReduceSum goes; with k = 1 (one least-used row per write) the Div goes too."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Div") or node.output[0] in g.outputs:
            continue
        x, total = node.input
        reduce = g.producer.get(total)
        if reduce is None or not is_standard(reduce, "ReduceSum") or reduce.input[0] != x:
            continue
        dims = g.dims(x)
        axes = g.constants.get(reduce.input[1]) if len(reduce.input) > 1 else None
        if not dims or axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) % len(dims) != len(dims) - 1:
            continue
        if node_attrs(reduce).get("keepdims", 1) != 1:
            continue
        count = _one_hot_rows(g, x)
        if count is None:
            continue
        if count == 1:
            rename_input(g, node.output[0], x)
        else:
            node.input[1] = add_constant(g, f"{node.output[0]}_count", np.array(count, dtype=np.float32))
        done += 1
    return done


def add_inside_gemm(g: GraphIndex) -> int:
    """Add(Gemm(x, W), y), the Gemm without a bias and K within one MLAS panel, as Gemm(x, W, C=y): the input
    skip of the one-shot heads (`linear(h) + skip(x)`), one node instead of two, the same bits."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Add") or node.output[0] in g.outputs:
            continue
        for gemm_out, other in (node.input, node.input[::-1]):
            gemm = g.producer.get(gemm_out)
            if gemm is None or not is_standard(gemm, "Gemm") or len(gemm.input) != 2 or not g.only_use(gemm_out):
                continue
            attrs = node_attrs(gemm)
            weight = g.constants.get(gemm.input[1])
            if weight is None or weight.ndim != 2 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0):
                continue
            k = weight.shape[1] if attrs.get("transB", 0) else weight.shape[0]
            if k > GEMM_ONE_PANEL or g.dims(other) is None or g.dims(other) != g.dims(gemm_out):
                continue
            node.op_type = "Gemm"
            node.input[:] = [gemm.input[0], gemm.input[1], other]
            node.attribute.extend(a for a in gemm.attribute if a.name not in ("beta",))
            node.attribute.append(onnx.helper.make_attribute("beta", 1.0))
            done += 1
            break
    return done



def _complement_use(g: GraphIndex, gate: str) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto] | None:
    """(Sub, Mul, Add) of the interpolation `x + (1 - gate) * w` reading `gate`, each used once, or None."""
    subs = [n for n in g.consumers.get(gate, ()) if is_standard(n, "Sub") and n.input[1] == gate]
    if len(subs) != 1 or g.scalar(subs[0].input[0]) != 1.0 or not g.only_use(subs[0].output[0]):
        return None
    (mul,) = g.consumers[subs[0].output[0]]
    if not is_standard(mul, "Mul") or not g.only_use(mul.output[0]):
        return None
    (add,) = g.consumers[mul.output[0]]
    return (subs[0], mul, add) if is_standard(add, "Add") and add.input[0] != add.input[1] else None


def complements_in_the_gate_block(g: GraphIndex) -> int:
    """The interpolation gates' `1 - g` (one Sub per head kind) as one Sub over the Sigmoid block.

    Each gate's logit gets a duplicate column right after the block (the same weight row: the same bits), the
    block minus [0, ..., 0, 1, ..., 1] turns the duplicates into g - 1 = -(1 - g) exactly and leaves the rest
    as they are (x - 0 = x), and `x + (1 - g) * w` becomes `x - (g - 1) * w`, the same sum. One Sub replaces
    one per gate (the read and the write head: 2 -> 1).
    """
    for split in g.graph.node:
        sigmoid = g.producer.get(split.input[0]) if is_standard(split, "Split") else None
        block_in = g.producer.get(sigmoid.input[0]) if sigmoid is not None and is_standard(sigmoid, "Sigmoid") else None
        reshape = g.producer.get(block_in.input[0]) if block_in is not None and is_standard(block_in, "Slice") else None
        gemm = g.producer.get(reshape.input[0]) if reshape is not None else None
        if gemm is None or not plain_gemm(g, gemm) or head_view(g, gemm) is None or not g.only_use(sigmoid.output[0]):
            continue
        _, heads, width = head_view(g, gemm)
        view = reshape.output[0]
        pieces = {r.output[0]: axis_piece(g, r, view, 3, width) for r in g.consumers[view]}
        if any(p is None for p in pieces.values()) or pieces[block_in.output[0]][0] != 0:
            continue
        block = pieces[block_in.output[0]][1]
        sizes = split_sizes(g, split, block)
        if sizes is None or int(node_attrs(split).get("axis", 0)) % 3 != 2:
            continue
        starts = np.cumsum([0, *sizes])
        gates = [(i, use) for i, out in enumerate(split.output) if sizes[i] == 1 and (use := _complement_use(g, out))]
        if len(gates) < 2:
            continue
        extra = len(gates)
        columns = [*range(block), *(int(starts[i]) for i, _ in gates), *range(block, width)]
        w, b = g.constants[gemm.input[1]], g.constants[gemm.input[2]]
        tag = f"{view}_complements"
        gemm.input[1] = add_constant(g, f"{tag}_weight", w.reshape(heads, width, -1)[:, columns].reshape(
            heads * (width + extra), -1))
        gemm.input[2] = add_constant(g, f"{tag}_bias", b.reshape(heads, width)[:, columns].reshape(-1))
        reshape.input[1] = add_constant(g, f"{tag}_shape", np.array([0, heads, width + extra], dtype=np.int64))
        for reader in g.consumers[view]:
            start, end = pieces[reader.output[0]]
            if reader is block_in:
                start, end = 0, block + extra
            elif start >= block:
                start, end = start + extra, end + extra
            else:
                continue
            if is_standard(reader, "Gather"):
                reader.input[1] = add_constant(g, f"{reader.output[0]}_{tag}_index", np.array([start], dtype=np.int64))
            else:
                reader.input[1] = add_constant(g, f"{reader.output[0]}_{tag}_start", np.array([start], dtype=np.int64))
                reader.input[2] = add_constant(g, f"{reader.output[0]}_{tag}_end", np.array([end], dtype=np.int64))
        shifted = f"{tag}_block"
        minus = np.concatenate([np.zeros(block), np.ones(extra)]).astype(np.float32)
        g.graph.node.insert(list(g.graph.node).index(split), onnx.helper.make_node(
            "Sub", [sigmoid.output[0], add_constant(g, f"{tag}_minus", minus)], [shifted]))
        split.input[0] = shifted
        split.input[1] = add_constant(g, f"{tag}_sizes", np.array([*sizes, *[1] * extra], dtype=np.int64))
        for _, (sub, mul, add) in gates:
            split.output.append(f"{sub.output[0]}_negated")
            mul.input[:] = [split.output[-1] if n == sub.output[0] else n for n in mul.input]
            add.op_type = "Sub"
            add.input[:] = [n for n in add.input if n != mul.output[0]] + [mul.output[0]]
        forget_shapes(g, {gemm.output[0], view, block_in.output[0], sigmoid.output[0]})
        return 1  # the index is stale now
    return 0


_LIFTED = ("ArgMin", "Equal", "Cast", "Where", "Sum", "Add", "Div", "Sub")


def _lift_set(g: GraphIndex, select: str) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
    """The arg-min chain reading `select` (B, N) that can run on the (B, N, 1) column instead, and its ends (the
    Unsqueezes that put the axis back): -> (chain nodes in graph order, ends), or None."""
    chain: list[onnx.NodeProto] = []
    values = {select}
    for node in g.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _LIFTED:
            continue
        inside = [n for n in node.input if n in values]
        others = [n for n in node.input if n not in values]
        constant_ok = ((lambda n: arange_length(g, n) is not None) if node.op_type == "Equal"
                       else (lambda n: g.scalar(n) is not None))
        if not inside or not all(constant_ok(n) for n in others):
            continue
        attrs = node_attrs(node)
        if node.op_type == "ArgMin" and (attrs.get("keepdims", 1) != 1 or int(attrs.get("axis", 0)) % 2 != 1):
            return None
        if node.op_type in ("Div", "Sub") and node.input[0 if node.op_type == "Div" else 1] not in values:
            return None
        if node.op_type == "Equal" and len(others) != 1:
            return None
        chain.append(node)
        values.add(node.output[0])
    ends = []
    for value in values - {select}:
        if value in g.outputs:
            return None
        for user in g.consumers.get(value, ()):
            if user in chain:
                continue
            axes = g.constants.get(user.input[1]) if is_standard(user, "Unsqueeze") and len(user.input) > 1 else None
            if axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) % 3 not in (1, 2):
                return None
            ends.append(user)
    return (chain, ends) if chain and ends else None


def least_used_as_a_column(g: GraphIndex) -> int:
    """The least-used rows' arg-min chain run on the usage column as (B, N, 1) instead of (B, N).

    torch takes `usage = memory[..., -1]` (B, N), picks rows along N, and puts an axis back twice: (B, 1, N) for
    the write weighting, (B, N, 1) for the erase. Run on the column itself (ArgMin over axis 1, the index
    `arange(N)` as a column), the chain gives the same values already shaped (B, N, 1): the erase's Unsqueeze
    goes and the other becomes a Reshape to (B, 1, N). ArgMin picks the same index along either layout,
    ties, NaN and infinities included (tests/test_graph_passes.py).
    """
    for gather in list(g.graph.node):
        index = g.constants.get(gather.input[1]) if is_standard(gather, "Gather") else None
        dims = g.dims(gather.input[0])
        if index is None or index.ndim != 0 or not dims or len(dims) != 3:
            continue
        if int(node_attrs(gather).get("axis", 0)) % 3 != 2:
            continue
        select = gather.output[0]
        found = _lift_set(g, select)
        if found is None:
            continue
        chain, ends = found
        column = f"{select}_column"
        chain_outputs, columns = {n.output[0] for n in chain}, set()
        position = list(g.graph.node).index(gather)
        as_list = add_constant(g, f"{gather.input[1]}_as_list", index.reshape(1))
        g.graph.node.insert(position + 1, onnx.helper.make_node("Gather", [gather.input[0], as_list], [column], axis=2))
        for node in chain:
            node.input[:] = [column if n == select else n for n in node.input]
            if node.op_type == "ArgMin":
                for attr in node.attribute:
                    if attr.name == "axis":
                        attr.i = 1
            if node.op_type == "Equal":
                for position_, name in enumerate(node.input):
                    if name in g.constants:
                        node.input[position_] = add_constant(g, f"{name}_column", g.constants[name].reshape(-1, 1))
                    elif name != column and name not in chain_outputs:  # a Range over the dynamic N: as a column
                        if name not in columns:
                            axis = add_constant(g, f"{name}_column_axis", np.array([1], dtype=np.int64))
                            unsqueeze = onnx.helper.make_node("Unsqueeze", [name, axis], [f"{name}_column"])
                            g.graph.node.insert(list(g.graph.node).index(node), unsqueeze)
                            columns.add(name)
                        node.input[position_] = f"{name}_column"
        for end in ends:
            if int(g.constants[end.input[1]].reshape(-1)[0]) % 3 == 2:  # (B, N) -> (B, N, 1): the value already is
                rename_input(g, end.output[0], end.input[0])
            else:  # (B, N) -> (B, 1, N): the (B, N, 1) value reshaped (a Transpose would be moved about by onnxruntime)
                end.op_type = "Reshape"
                end.input[1] = add_constant(g, f"{select}_row_shape", np.array([0, 1, -1], dtype=np.int64))
        if any(n not in chain for n in g.consumers.get(select, ())):  # the usage update still reads (B, N)
            gather.op_type = "Squeeze"
            gather.input[:] = [column, add_constant(g, f"{select}_squeeze_axis", np.array([2], dtype=np.int64))]
            del gather.attribute[:]
            gather.output[0] = select
            g.graph.node.remove(gather)
            g.graph.node.insert(position + 1, gather)
        forget_shapes(g, {n.output[0] for n in chain})
        return 1  # the index is stale now
    return 0
