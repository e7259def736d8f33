"""Exact graph passes that hand work to fewer, larger kernels (issue 12, item 3, second round).

Like ntm_serve/export/passes/pipeline.py (which runs them, after its own), each pass is value-preserving in float32
on the
CPU provider: it gives one activation a contiguous block instead of several pieces, one Gemm per kind of
activation (which onnxruntime fuses into FusedGemm), an outer product over one term as a MatMul, or drops an
operation the next kernel already performs. tests/test_graph_passes.py checks each one alone for bit-identical
outputs, and the onnxruntime behaviour each relies on.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx

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

# tensor's length and the element's position in it (tests/test_graph_passes.py checks this premise). Softplus
# is not one: its Eigen kernel takes a vectorised path for whole packets and a scalar one for the tail.
POSITION_FREE = ("Sigmoid", "Tanh")


def split_sizes(g: GraphIndex, split: onnx.NodeProto, width: int) -> list[int] | None:
    """The piece sizes of a Split along an axis of static size `width` (sizes input or `num_outputs`)."""
    if len(split.input) > 1 and split.input[1]:
        sizes = g.constants.get(split.input[1])
        return [int(s) for s in sizes] if sizes is not None and int(sizes.sum()) == width else None
    count = int(node_attrs(split).get("num_outputs", len(split.output)))
    return [width // count] * count if count == len(split.output) and width % count == 0 else None


def _sole_activation(g: GraphIndex, value: str) -> onnx.NodeProto | None:
    """The one node reading `value`, if it is a position-free activation of it alone."""
    if not g.only_use(value):
        return None
    (user,) = g.consumers[value]
    return user if user.domain in ("", "ai.onnx") and user.op_type in POSITION_FREE and not user.attribute else None


def split_node(source: str, outputs: list[str], sizes: list[int], axis: int, g: GraphIndex, tag: str) -> onnx.NodeProto:
    return onnx.helper.make_node("Split", [source, add_constant(g, f"{tag}_sizes", np.array(sizes, dtype=np.int64))],
                                 outputs, axis=axis)


def gemm_per_activation(g: GraphIndex) -> int:
    """Gemm -> Split -> one activation per piece (the LSTM's gates) as one Gemm + activation per kind of activation.

    The weight rows of the pieces with the same activation go to one Gemm, its output through that activation once,
    then split (onnxruntime fuses Gemm + Sigmoid/Tanh into one FusedGemm). Each output is the same dot product as
    before in another column, and the activations give every element the same bits wherever it sits.
    """
    done = 0
    for index, gemm in enumerate(list(g.graph.node)):
        if not plain_gemm(g, gemm) or not g.only_use(gemm.output[0]):
            continue
        (split,) = g.consumers[gemm.output[0]]
        weight, bias = g.constants[gemm.input[1]], g.constants[gemm.input[2]]
        if not is_standard(split, "Split") or int(node_attrs(split).get("axis", 0)) % 2 != 1 or bias.shape != (
                weight.shape[0],):
            continue
        sizes = split_sizes(g, split, weight.shape[0])
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
            new += [onnx.helper.make_node("Gemm", [gemm.input[0], add_constant(g, f"{tag}_weight", weight[rows]),
                                                   add_constant(g, f"{tag}_bias", bias[rows])], [f"{tag}_linear"],
                                          transB=1),
                    onnx.helper.make_node(kind, [f"{tag}_linear"], [block])]
            if len(pieces) > 1:
                new.append(split_node(block, outs, [sizes[i] for i in pieces], 1, g, tag))
        for act in acts:
            act.output[0] = f"{act.output[0]}_unused"
        gemm.output[0] = f"{gemm.output[0]}_unused"
        for offset, made in enumerate(new):
            g.graph.node.insert(index + offset, made)
        forget_shapes(g, {a.output[0] for a in acts})
        done += 1
        break  # the index is stale now; one Gemm per run is all the step graph has
    return done


def norm_product_as_matmul(g: GraphIndex) -> int:
    """a * Unsqueeze(ReduceL2(X, -1), 1), a of shape (B, H, 1), as MatMul(a, Transpose(ReduceL2(X, -1, keepdims))).

    The cosine's denominator `key_norm * row_norm`: an outer product over one term is the product itself, and the
    Transpose folds into onnxruntime's FusedMatMul, so the Unsqueeze and the Mul become one node.
    """
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Mul") or node.output[0] in g.outputs:
            continue
        for a, u in (node.input, node.input[::-1]):
            unsqueeze = g.producer.get(u)
            if unsqueeze is None or not is_standard(unsqueeze, "Unsqueeze") or g.scalar(unsqueeze.input[1]) != 1:
                continue
            reduce = g.producer.get(unsqueeze.input[0])
            if reduce is None or not is_standard(reduce, "ReduceL2") or node_attrs(reduce).get("keepdims", 1) != 0:
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
            forget_shapes(g, {reduce.output[0]})
            done += 1
            break
    return done


def _pieces(g: GraphIndex, view: str, width: int) -> dict[str, tuple[int, int]] | None:
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


def group_head_activations(g: GraphIndex) -> int:
    """The head parameters that go through the same position-free activation (the gates and the erase vector)
    made contiguous in the head projection, so one activation runs over the block, then one Split hands out
    the pieces. The weight rows are permuted within each head: every output is the same dot product as before
    in another column, and the activation gives each element the same bits wherever it sits."""
    for reshape in g.graph.node:
        if not is_standard(reshape, "Reshape"):
            continue
        gemm = g.producer.get(reshape.input[0])
        if gemm is None or not plain_gemm(g, gemm) or head_view(g, gemm) is None:
            continue
        _, heads, width = head_view(g, gemm)
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
            gemm.input[1] = add_constant(g, f"{tag}_weight", w.reshape(heads, width, -1)[:, columns].reshape(w.shape))
            gemm.input[2] = add_constant(g, f"{tag}_bias", b.reshape(heads, width)[:, columns].reshape(-1))
            for reader in list(g.consumers[view]):
                start, end = pieces[reader.output[0]]
                if reader.op_type == "Gather":
                    index = g.constants[reader.input[1]]
                    reader.input[1] = add_constant(g, f"{reader.output[0]}_{tag}_index",
                                                np.full(index.shape, moved[start], dtype=index.dtype))
                else:
                    for position, bound in ((1, moved[start]), (2, moved[start] + end - start)):
                        reader.input[position] = add_constant(g, f"{reader.output[0]}_{tag}_bound{position}",
                                                           np.array([bound], dtype=np.int64))
            acts = [g.consumers[out][0] for out in group]
            sizes = [pieces[out][1] - pieces[out][0] for out in group]
            block = f"{tag}_block"
            index = list(g.graph.node).index(reshape) + 1
            new = [
                onnx.helper.make_node("Slice", [view, add_constant(g, f"{tag}_start", np.array([0], np.int64)),
                                                 add_constant(g, f"{tag}_end", np.array([sum(sizes)], np.int64)),
                                                 add_constant(g, f"{tag}_axis", np.array([2], np.int64))],
                                      [f"{block}_in"]),
                onnx.helper.make_node(kind, [f"{block}_in"], [block]),
                split_node(block, [a.output[0] for a in acts], sizes, 2, g, tag),
            ]
            for act in acts:
                act.output[0] = f"{act.output[0]}_unused"
            for offset, made in enumerate(new):
                g.graph.node.insert(index + offset, made)
            forget_shapes(g, {gemm.output[0], view, *(a.output[0] for a in acts)})
            return 1  # the index is stale now
    return 0


# onnxruntime's CPU Sigmoid (MLAS) clamps its input to [-18, 18] and returns exactly 0 and 1 there.
SIGMOID_SATURATES_AT = 18.0


def drop_saturated_clip_before_sigmoid(g: GraphIndex) -> int:
    """Sigmoid(Clip(x, lo, hi)) with lo <= -18 and hi >= 18 is Sigmoid(x) on the CPU provider: the logit clip.

    onnxruntime's CPU Sigmoid already returns exactly 0 below -18 and 1 above 18 (tests/test_graph_passes.py
    checks it, NaN included), so a wider clip in front changes no output there. On a provider whose Sigmoid does
    not saturate (CUDA) an output below sigmoid(lo) (2.1e-9 for the models' lo = -20) moves towards 0 by less than
    that.
    """
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Sigmoid"):
            continue
        clip = g.producer.get(node.input[0])
        if clip is None or not is_standard(clip, "Clip") or len(clip.input) != 3 or not g.only_use(clip.output[0]):
            continue
        lo, hi = g.scalar(clip.input[1]), g.scalar(clip.input[2])
        if lo is None or hi is None or lo > -SIGMOID_SATURATES_AT or hi < SIGMOID_SATURATES_AT:
            continue
        node.input[0] = clip.input[0]
        done += 1
    return done


_COMPARISONS = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor")


def _zeros(g: GraphIndex, name: str) -> bool:
    """`name` is all zeros: a zero constant, or an Expand of one (torch's zeros_like)."""
    node = g.producer.get(name)
    if node is not None and is_standard(node, "Expand"):
        name = node.input[0]
    value = g.constants.get(name)
    return value is not None and value.size > 0 and not np.any(value)


def indicator(g: GraphIndex, name: str) -> str | None:
    """The boolean behind `name` = Cast(comparison, to float32): its values are exactly 0 and 1."""
    cast = g.producer.get(name)
    if cast is None or not is_standard(cast, "Cast") or node_attrs(cast).get("to") != onnx.TensorProto.FLOAT:
        return None
    source = g.producer.get(cast.input[0])
    return cast.input[0] if source is not None and source.domain in ("", "ai.onnx") and \
        source.op_type in _COMPARISONS else None


def mask_each_pick_once(g: GraphIndex) -> int:
    """The least-used rows (ntm_serve/training/lru.py): `count = count + onehot; masked = Where(count > 0, inf, usage)`
    as `masked = Where(onehot, inf, masked_before)`, and the first `Where(zeros > 0, ...)`, `zeros + onehot` go.

    A count built from zeros by adding 0/1 indicators is never negative, so `count + onehot > 0` is
    `onehot or count_before > 0`: the same selection, element by element, without the Greater per pick.
    """
    done = 0
    masked: dict[tuple[str, str, str], str] = {}  # (count, fill, values) -> the value masked by that count
    for node in list(g.graph.node):
        if not is_standard(node, "Where") or node.output[0] in g.outputs:
            continue
        condition, fill, values = node.input
        greater = g.producer.get(condition)
        if greater is None or not is_standard(greater, "Greater") or g.scalar(greater.input[1]) != 0.0:
            continue
        count = greater.input[0]
        if _zeros(g, count):
            rename_input(g, node.output[0], values)
            masked[(count, fill, values)] = values
            done += 1
            continue
        add = g.producer.get(count)
        if add is None or not is_standard(add, "Add"):
            continue
        for before, pick in (add.input, add.input[::-1]):
            previous, onehot = masked.get((before, fill, values)), indicator(g, pick)
            if previous is not None and onehot is not None:
                node.input[:] = [onehot, fill, previous]
                masked[(count, fill, values)] = node.output[0]
                done += 1
                break
    for node in g.graph.node:  # zeros + onehot is the onehot (0 + 0 and 0 + 1 are exact), same shape
        if is_standard(node, "Add") and node.output[0] not in g.outputs:
            for zeros, pick in (node.input, node.input[::-1]):
                if _zeros(g, zeros) and indicator(g, pick) and g.dims(zeros) == g.dims(pick) is not None:
                    rename_input(g, node.output[0], pick)
                    done += 1
                    break
    return done


def broadcast_scalar_in_where(g: GraphIndex) -> int:
    """Where(c, Expand(scalar, Shape(x)), x) with c and x of one static shape is Where(c, scalar, x): the
    `full_like(usage, inf)` of the least-used rows, broadcast by Where itself instead of materialised."""
    done = 0
    for node in g.graph.node:
        if not is_standard(node, "Where"):
            continue
        condition, fill, values = node.input
        expand = g.producer.get(fill)
        if expand is None or not is_standard(expand, "Expand") or g.scalar(expand.input[0]) is None:
            continue
        shape = g.producer.get(expand.input[1])
        dims = g.dims(values)
        if (shape is None or not is_standard(shape, "Shape") or node_attrs(shape) not in ({}, {"start": 0})
                or dims is None):
            continue
        if g.dims(shape.input[0]) != dims or g.dims(condition) != dims:
            continue
        scalar = g.constants[expand.input[0]]
        node.input[1] = add_constant(g, f"{expand.input[0]}_scalar", scalar.reshape(()))
        done += 1
    return done
