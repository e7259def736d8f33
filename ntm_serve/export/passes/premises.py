"""Graph passes that are exact on every call the server makes, not on every input (issue 12, item 3).

The passes of ntm_serve/export/passes/pipeline.py, graph_fusions.py and graph_folds.py give the same bits for *every*
input.
The two here give the same bits whenever their premise holds, and the server makes the premise hold.

`group_softplus_block` (see its docstring) is exact on calls whose row count is a multiple of `SOFTPLUS_PACKET`,
which every server call is (ntm_serve/runtime/buckets.py, ROW_MULTIPLE).

`drop_sharpen_floors_on_distributions`: **premise: every read and write weighting in the state is a distribution**
(finite, >= 0, each head's row summing to 1 within `ntm_serve.api.tensors.WEIGHTING_SUM_TOLERANCE`). The server's own
steps keep it (sharpening ends in `powered / sum`), `CreateSession` starts from the model's initial state
(distributions), and `ImportSession`, the only path that takes a state from a client (the cluster's replicas and the
snapshot store only reload states the server made itself), refuses any other weighting with INVALID_ARGUMENT
(`ntm_serve.api.tensors.state_tensors`).

Why the sharpening's floors are then no-ops (ntm_serve/training/addressing.py:sharpen: `peak + 1e-30`, `sum +
1e-30`): the
weighting entering the sharpening is the shift (a convolution with a softmax) of `g * content + (1 - g) * previous`,
content a softmax, g a sigmoid, every term >= 0, so its peak is at least about max(g, 1 - g) * (1 / N) * (1 / S)
>= 1 / (2 N S) (1/768 for N = 128, S = 3), far above 2**-75, where adding 1e-30 (about 2**-99.7, under half an ulp)
leaves a float32 unchanged. Then the peak divided by itself is exactly 1 (IEEE division), Pow(1, gamma) = 1 and the
other entries are >= 0, so the sum is >= 1 and `sum + 1e-30` is the sum too. A row that is NaN somewhere (a
memory so large that its norms overflow, which a finite import can hold) stays NaN either way: ReduceMax gives NaN
or an infinity, `NaN + 1e-30` is the same NaN, and no finite peak below 2**-75 can come out of such a row (tested).

What the floors still guard, and this pass gives up, is a weighting that is not a distribution: an all-zero row
gives 0 / (0 + 1e-30) = 0 with the floors (then each entry floored to 1e-30: a flat weighting) and 0 / 0 = NaN
without them. No accepted state holds one.
"""

from __future__ import annotations

import itertools
from typing import cast

import numpy as np
import onnx

from ntm_serve.export.passes.folds import axis_piece
from ntm_serve.export.passes.fusions import split_node
from ntm_serve.export.passes.index import (
    GraphIndex,
    add_constant,
    head_view,
    is_standard,
    node_attrs,
    plain_gemm,
    rename_input,
)
from ntm_serve.training.addressing import SHARPEN_FLOOR

FLOOR = np.float32(SHARPEN_FLOOR)


def _sole_reader(g: GraphIndex, name: str, op: str) -> onnx.NodeProto | None:
    """The one node reading `name`, if it is a standard `op` without attributes."""
    if not g.only_use(name):
        return None
    (user,) = g.consumers[name]
    return user if is_standard(user, op) and not user.attribute else None


def _adds_constant(g: GraphIndex, name: str, constant: float) -> onnx.NodeProto | None:
    """The single reader of `name` when it is `name + constant` (a float32 scalar), else None: the sharpening's
    floors, gamma's `1 + softplus`."""
    add = _sole_reader(g, name, "Add")
    if add is None or len(add.input) != 2 or add.output[0] in g.outputs:
        return None
    other = add.input[1] if add.input[0] == name else add.input[0]
    value = g.constants.get(other)
    ok = value is not None and value.size == 1 and value.dtype == np.float32 and value.reshape(-1)[0] == constant
    return add if ok else None


def _last_axis_reduce(g: GraphIndex, node: onnx.NodeProto, op: str, rank: int) -> bool:
    """`node` is `op` over the last axis of a rank-`rank` tensor, dimensions kept."""
    if not is_standard(node, op) or len(node.input) < 2 or node_attrs(node).get("keepdims", 1) != 1:
        return False
    axes = g.constants.get(node.input[1])
    return axes is not None and axes.size == 1 and int(axes.reshape(-1)[0]) % rank == rank - 1


def _reader(g: GraphIndex, name: str, op: str) -> onnx.NodeProto | None:
    readers = [n for n in g.consumers.get(name, ()) if is_standard(n, op)]
    return readers[0] if len(readers) == 1 else None


def drop_sharpen_floors_on_distributions(g: GraphIndex) -> int:
    """The sharpening's `peak + 1e-30` and `sum + 1e-30` (two Adds per addressing) are dropped: see the module
    docstring for the premise. Matches the whole sharpening (ReduceMax -> +floor -> Div -> Clip(floor) -> Pow ->
    ReduceSum -> +floor -> Div) fed by the shift (an Einsum with a Softmax operand), and nothing else."""
    done = 0
    for reduce_max in list(g.graph.node):
        weights = reduce_max.input[0] if reduce_max.input else ""
        dims = g.dims(weights)
        if dims is None or not _last_axis_reduce(g, reduce_max, "ReduceMax", len(dims)):
            continue
        shift = g.producer.get(weights)
        if shift is None or not is_standard(shift, "Einsum") or not any(
                (p := g.producer.get(n)) is not None and is_standard(p, "Softmax") for n in shift.input):
            continue
        peak_add = _adds_constant(g, reduce_max.output[0], FLOOR)
        if peak_add is None or not g.only_use(peak_add.output[0]):
            continue
        (scale,) = g.consumers[peak_add.output[0]]
        if not is_standard(scale, "Div") or list(scale.input) != [weights, peak_add.output[0]]:
            continue
        clip = _reader(g, scale.output[0], "Clip")
        if clip is None or not g.only_use(scale.output[0]) or len(clip.input) < 2 or g.scalar(clip.input[1]) != FLOOR:
            continue
        if len(clip.input) > 2 and clip.input[2]:
            continue  # an upper bound: not the sharpening
        power = _reader(g, clip.output[0], "Pow")
        if power is None or not g.only_use(clip.output[0]) or power.input[0] != clip.output[0]:
            continue
        total = _reader(g, power.output[0], "ReduceSum")
        if total is None or not _last_axis_reduce(g, total, "ReduceSum", len(dims)):
            continue
        sum_add = _adds_constant(g, total.output[0], FLOOR)
        if sum_add is None or not g.only_use(sum_add.output[0]):
            continue
        (normalise,) = g.consumers[sum_add.output[0]]
        if not is_standard(normalise, "Div") or list(normalise.input) != [power.output[0], sum_add.output[0]]:
            continue
        rename_input(g, peak_add.output[0], reduce_max.output[0])
        rename_input(g, sum_add.output[0], total.output[0])
        done += 1
    return done


# onnxruntime's CPU Softplus is an Eigen expression: it runs whole packets of this many float32 elements vectorised
# and the rest of the call (the tail) scalar, and the two paths round differently in the last bit
# (tests/test_graph_premises.py measures both, and that threads do not move the packets).
SOFTPLUS_PACKET = 4


def _set_last_dim(g: GraphIndex, names: set[str], size: int) -> None:
    """The recorded shapes of `names` get `size` as their last dimension (a head projection that grew columns)."""
    for value in g.graph.value_info:
        if value.name in names and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[-1].dim_value = size


def group_softplus_block(g: GraphIndex) -> int:
    """`_group_softplus_block` on every head projection (one with both head kinds, or one per kind when their counts
    differ): -> how many were grouped."""
    done = 0
    while _group_softplus_block(g):
        done += 1
        g = GraphIndex(g.graph)  # the index is stale after a rewrite
    return done


def _group_softplus_block(g: GraphIndex) -> int:
    """The head parameters that go through Softplus (beta, and gamma = 1 + softplus, of every head) as one Softplus
    over a block of whole packets, one Add of [0, 1, 0, 1, ...] for the gammas' `+ 1`, and one Split.

    Their columns move to the end of the head projection, padded with copies of one of them to a multiple of
    `SOFTPLUS_PACKET` per head row (the copies' results are dropped): every output is the same dot product as
    before in another column. x + 0 is x for a softplus (never -0), and x + 1 is the same Add as before.

    **Premise: a call of a multiple of `SOFTPLUS_PACKET` rows.** Before, each parameter had its own Softplus over
    (B, H, 1), B * H elements: all in the vectorised path when B is a multiple of the packet, some in the scalar tail
    otherwise. The block has B * H * k elements with k a multiple of the packet: all vectorised, at every B. So the
    new graph gives the old graph's bits on every call of a multiple of the packet's rows (every server call:
    ntm_serve/runtime/buckets.py pads to ROW_MULTIPLE), and at every other B what the old graph gave padded, where
    the old graph
    itself changed with the batch size.
    """
    for reshape in g.graph.node:
        gemm = g.producer.get(reshape.input[0]) if is_standard(reshape, "Reshape") else None
        if gemm is None or not plain_gemm(g, gemm) or (view_of := head_view(g, gemm)) is None:
            continue
        _, heads, width = view_of
        view = reshape.output[0]
        readers = list(g.consumers[view])
        found = [axis_piece(g, reader, view, 3, width) for reader in readers]
        if any(p is None for p in found):
            continue
        pieces = cast(list[tuple[int, int]], found)
        if any(a[1] > b[0] for a, b in itertools.pairwise(sorted(pieces))):
            continue  # overlapping readers: moving columns would split one of them
        group = [(reader, start, act) for reader, (start, end) in zip(readers, pieces, strict=True)
                 if end - start == 1 and (act := _sole_reader(g, reader.output[0], "Softplus")) is not None]
        if len(group) < 2:
            continue
        taken = [start for _, start, _ in group]
        pad = -len(taken) % SOFTPLUS_PACKET
        rest = [c for c in range(width) if c not in taken]
        columns = [*rest, *taken, *[taken[0]] * pad]
        moved = {old: new for new, old in enumerate(columns[:width])}
        grown = width + pad
        w, b = g.constants[gemm.input[1]], g.constants[gemm.input[2]]
        tag = f"{view}_softplus"
        moved_rows = w.reshape(heads, width, -1)[:, columns]  # (H, P + pad, inputs)
        gemm.input[1] = add_constant(g, f"{tag}_weight", moved_rows.reshape(heads * grown, -1))
        gemm.input[2] = add_constant(g, f"{tag}_bias", b.reshape(heads, width)[:, columns].reshape(-1))
        reshape.input[1] = add_constant(g, f"{tag}_shape", np.array([0, heads, grown], dtype=np.int64))
        grouped = {reader.output[0] for reader, _, _ in group}
        for reader, (start, end) in zip(readers, pieces, strict=True):
            if reader.output[0] in grouped:
                continue
            if is_standard(reader, "Gather"):
                reader.input[1] = add_constant(g, f"{reader.output[0]}_{tag}_index", np.array([moved[start]], np.int64))
            else:
                reader.input[1] = add_constant(g, f"{reader.output[0]}_{tag}_start", np.array([moved[start]], np.int64))
                reader.input[2] = add_constant(g, f"{reader.output[0]}_{tag}_end",
                                            np.array([moved[start] + end - start], np.int64))
        outputs, plus = [], []
        for reader, _, act in group:  # each piece's reader, Softplus and `+ 1` go: the block's Split gives their value
            add = _adds_constant(g, act.output[0], 1.0)
            outputs.append((add or act).output[0])
            plus.append(1.0 if add is not None else 0.0)
            for node in (reader, act, *([add] if add is not None else [])):
                g.graph.node.remove(node)
        block = f"{tag}_block"
        new = [
            onnx.helper.make_node("Slice", [view, add_constant(g, f"{tag}_start", np.array([len(rest)], np.int64)),
                                            add_constant(g, f"{tag}_end", np.array([grown], np.int64)),
                                            add_constant(g, f"{tag}_axis", np.array([2], np.int64))], [f"{block}_in"]),
            onnx.helper.make_node("Softplus", [f"{block}_in"], [block]),
        ]
        if any(plus):
            ones = np.array([*plus, *[0.0] * pad], np.float32)
            new.append(onnx.helper.make_node("Add", [block, add_constant(g, f"{tag}_plus", ones)], [f"{block}_plus"]))
        if pad:
            outputs.append(f"{tag}_padding")
        new.append(split_node(new[-1].output[0], outputs, [1] * len(group) + ([pad] if pad else []), 2, g, tag))
        index = list(g.graph.node).index(reshape) + 1
        for offset, made in enumerate(new):
            g.graph.node.insert(index + offset, made)
        _set_last_dim(g, {view}, grown)
        _set_last_dim(g, {gemm.output[0]}, heads * grown)
        return 1  # the index is stale now
    return 0
