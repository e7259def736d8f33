"""A graph pass that is exact on every state the server accepts, not on every input (issue 12, item 3).

The passes of export/graph_passes.py, graph_fusions.py and graph_folds.py give the same bits for *every* input.
This one gives the same bits whenever its premise holds, and the premise is enforced where states enter:

**Premise: every read and write weighting in the state is a distribution** (finite, >= 0, each head's row summing
to 1 within `service.tensors.WEIGHTING_SUM_TOLERANCE`). The server's own steps keep it (sharpening ends in
`powered / sum`), `CreateSession` starts from the model's initial state (distributions), and `ImportSession`, the
only path that takes a state from a client (the cluster's replicas and the snapshot store only reload states the
server made itself), refuses any other weighting with INVALID_ARGUMENT (`service.tensors.state_tensors`).

Why the sharpening's floors are then no-ops (training/addressing.py:sharpen: `peak + 1e-30`, `sum + 1e-30`): the
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

import numpy as np
import onnx

from export.graph_index import _attrs, _Graph, _rename_input, _standard
from training.addressing import SHARPEN_FLOOR

FLOOR = np.float32(SHARPEN_FLOOR)


def _floor_add(g: _Graph, name: str) -> onnx.NodeProto | None:
    """The single reader of `name` when it is `name + SHARPEN_FLOOR` (a float32 scalar), else None."""
    if not g.only_use(name):
        return None
    (add,) = g.consumers[name]
    if not _standard(add, "Add") or len(add.input) != 2 or add.output[0] in g.outputs:
        return None
    other = add.input[1] if add.input[0] == name else add.input[0]
    value = g.constants.get(other)
    ok = value is not None and value.size == 1 and value.dtype == np.float32 and value.reshape(-1)[0] == FLOOR
    return add if ok else None


def _last_axis_reduce(g: _Graph, node: onnx.NodeProto, op: str, rank: int) -> bool:
    """`node` is `op` over the last axis of a rank-`rank` tensor, dimensions kept."""
    if not _standard(node, op) or len(node.input) < 2 or _attrs(node).get("keepdims", 1) != 1:
        return False
    axes = g.constants.get(node.input[1])
    return axes is not None and axes.size == 1 and int(axes.reshape(-1)[0]) % rank == rank - 1


def _reader(g: _Graph, name: str, op: str) -> onnx.NodeProto | None:
    readers = [n for n in g.consumers.get(name, ()) if _standard(n, op)]
    return readers[0] if len(readers) == 1 else None


def drop_sharpen_floors_on_distributions(g: _Graph) -> int:
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
        if shift is None or not _standard(shift, "Einsum") or not any(
                (p := g.producer.get(n)) is not None and _standard(p, "Softmax") for n in shift.input):
            continue
        peak_add = _floor_add(g, reduce_max.output[0])
        if peak_add is None or not g.only_use(peak_add.output[0]):
            continue
        (scale,) = g.consumers[peak_add.output[0]]
        if not _standard(scale, "Div") or list(scale.input) != [weights, peak_add.output[0]]:
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
        sum_add = _floor_add(g, total.output[0])
        if sum_add is None or not g.only_use(sum_add.output[0]):
            continue
        (normalise,) = g.consumers[sum_add.output[0]]
        if not _standard(normalise, "Div") or list(normalise.input) != [power.output[0], sum_add.output[0]]:
            continue
        _rename_input(g, peak_add.output[0], reduce_max.output[0])
        _rename_input(g, sum_add.output[0], total.output[0])
        done += 1
    return done
