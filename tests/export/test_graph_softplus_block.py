"""The head parameters' Softplus as one block (ntm_serve/export/passes/premises.py: group_softplus_block), and its
premise.

- the premise, in this onnxruntime: its CPU Softplus rounds an element one way in whole packets of SOFTPLUS_PACKET
  elements and another way in the tail of a call, and nothing else (neither the position inside the packets nor
  the thread count) changes an element's bits; every server call has a multiple of SOFTPLUS_PACKET rows;
- alone, after the passes before it, it gives bit-identical outputs and states on calls of a multiple of
  SOFTPLUS_PACKET rows (every server call), one and two threads, over rollouts from the initial state and from
  random states;
- after it, a session's numbers no longer depend on how many rows share its call (before it, they did at batch sizes
  that are not a multiple of the packet: checked, so the test shows what the pass changes there);
- it takes 3 nodes out of a step graph with one read and one write head (4 Softplus and 2 `+ 1` become 3 nodes).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ntm_serve.export.parity import onnx_initial_state, onnx_step
from ntm_serve.export.passes.premises import SOFTPLUS_PACKET, group_softplus_block
from ntm_serve.export.runtime import optimised_node_count, session
from ntm_serve.export.testing import DEV_CONFIGS, around_pass, assert_same_rollout, dev_folder, load_graphs
from ntm_serve.runtime.buckets import ROW_MULTIPLE

NTM_CONFIGS = ["copy_default", "repeat_copy_ff_multihead", "copy_shift_n_learned"]
ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def _before_and_after(name: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The step graph of dev configuration `name` with every pass before this one applied, and with this one too."""
    return around_pass(name, group_softplus_block)


def _softplus() -> object:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Softplus", ["x"], ["y"])], "softplus", [x], [y])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)


def test_onnxruntime_softplus_rounds_by_packet_and_tail_only() -> None:
    rng = np.random.default_rng(41)
    x = (rng.standard_normal(4096) * 4).astype(np.float32)
    run = session(_softplus(), threads=1)
    (whole,) = run.run(None, {"x": x})
    tails_differ = 0
    for length in range(1, 3 * SOFTPLUS_PACKET + 2):
        for start in range(0, 512, length):
            (got,) = run.run(None, {"x": x[start:start + length]})
            body = length - length % SOFTPLUS_PACKET  # whole packets: the bits of the long call, at any offset
            np.testing.assert_array_equal(got[:body].view(np.int32), whole[start:start + body].view(np.int32))
            tails_differ += int((got[body:] != whole[start + body:start + length]).sum())
    assert tails_differ > 0  # the scalar tail rounds differently: why the pass needs its premise
    for threads in (2, 4):
        (got,) = session(_softplus(), threads=threads).run(None, {"x": x})
        np.testing.assert_array_equal(got.view(np.int32), whole.view(np.int32))


def test_every_server_call_is_whole_packets() -> None:
    assert ROW_MULTIPLE % SOFTPLUS_PACKET == 0


def _random_state(initial: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    state = {}
    for key, value in initial.items():
        x = rng.standard_normal(value.shape)
        if key.endswith("_weights"):
            x = np.exp(3 * x) / np.exp(3 * x).sum(-1, keepdims=True)
        state[key] = x.astype(np.float32)
    return state


@pytest.mark.parametrize("name", NTM_CONFIGS)
def test_the_block_is_bit_identical_on_calls_of_whole_packets(name: str) -> None:
    before, after = _before_and_after(name)
    assert optimised_node_count(after, ALL) < optimised_node_count(before, ALL)
    assert sum(n.op_type == "Softplus" for n in after.graph.node) == 1
    initial_session = session(load_graphs(dev_folder(name))["initial_state"], threads=1)
    rng = np.random.default_rng(43)
    input_size = DEV_CONFIGS[name][1].input_size
    for threads in (1, 2):
        want_session, got_session = session(before, threads=threads), session(after, threads=threads)
        for batch in (SOFTPLUS_PACKET, 2 * SOFTPLUS_PACKET, 64):
            initial = onnx_initial_state(initial_session, batch)
            for start in (initial, _random_state(initial, rng), _random_state(initial, rng)):
                assert_same_rollout(want_session, got_session, start, rng, input_size)


def _alone_and_padded(model: onnx.ModelProto, name: str, batch: int, seed: int) -> tuple[int, int]:
    """25 steps of `batch` sessions alone and the same sessions as the first rows of a call padded to a multiple of
    the packet (the other rows random): -> (elements compared, elements whose bits differ)."""
    run = session(model, threads=1)
    initial_session = session(load_graphs(dev_folder(name))["initial_state"], threads=1)
    rng = np.random.default_rng(seed)
    alone = _random_state(onnx_initial_state(initial_session, batch), rng)
    rows = batch + (-batch % SOFTPLUS_PACKET) + SOFTPLUS_PACKET
    filler = _random_state(onnx_initial_state(initial_session, rows - batch), rng)
    padded = {key: np.concatenate([alone[key], filler[key]]) for key in alone}
    compared = differ = 0
    for _ in range(25):
        x = (rng.random((rows, DEV_CONFIGS[name][1].input_size)) < 0.5).astype(np.float32)
        got, alone = onnx_step(run, x[:batch], alone)
        want, padded = onnx_step(run, x, padded)
        for g, w in ((got, want[:batch]), *((alone[k], padded[k][:batch]) for k in alone)):
            compared += g.size
            differ += int((g.view(np.int32) != w.view(np.int32)).sum())
    return compared, differ


@pytest.mark.parametrize("name", NTM_CONFIGS)
def test_after_the_block_a_session_does_not_depend_on_its_call_size(name: str) -> None:
    before, after = _before_and_after(name)
    differed_before = 0
    for batch in (1, 2, 3, 5):
        compared, differ = _alone_and_padded(after, name, batch, seed=batch)
        assert compared > 0 and differ == 0, f"batch {batch}: {differ} of {compared} elements differ"
        differed_before += _alone_and_padded(before, name, batch, seed=batch)[1]
    assert differed_before > 0  # before the pass a lone session rounded otherwise than in a padded call


def test_the_block_takes_three_nodes_out_of_one_read_and_one_write_head() -> None:
    before, after = _before_and_after("copy_default")
    assert optimised_node_count(before, ALL) - optimised_node_count(after, ALL) == 3
