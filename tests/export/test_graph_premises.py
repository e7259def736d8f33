"""The pass that is exact on the states the server accepts (ntm_serve/export/passes/premises.py: the sharpening's
1e-30 floors
dropped), and its premise.

- alone, after every other pass, it gives bit-identical outputs and states over rollouts from the initial state,
  from random states whose weightings are distributions (flat, sharp, one-hot with exact zeros), and from finite
  states whose memory is so large that its norms overflow (NaN rows: a state ImportSession accepts);
- on those rollouts and on every shipped NTM, the peak entering each sharpening is >= 1 / (2 N S) or NaN: far above
  2**-75, where onnxruntime's `x + 1e-30` is x (tested over every exponent), x / x is 1 and Pow(1, gamma) is 1;
- outside the premise it is not exact (an all-zero weighting entering the sharpening gives NaN instead of 0): that
  is why ImportSession refuses weightings that are not distributions (tests/test_service_errors.py,
  tests/test_service_badinput.py, tests/test_cluster_store.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ntm_serve.export.parity import onnx_initial_state
from ntm_serve.export.passes import pipeline
from ntm_serve.export.passes.premises import FLOOR, drop_sharpen_floors_on_distributions
from ntm_serve.export.runtime import session
from ntm_serve.export.testing import (
    DEV_CONFIGS,
    around_pass,
    assert_same_rollout,
    dev_folder,
    load_graphs,
    shipped_folders,
)
from ntm_serve.export.torch_onnx import torch_to_onnx
from ntm_serve.training.addressing import sharpen, shift

REPO = Path(__file__).resolve().parents[2]
NTM_CONFIGS = ["copy_default", "repeat_copy_ff_multihead", "copy_shift_n_learned"]
SHIPPED_NTMS = [p for p in shipped_folders(REPO / "models")
                if json.loads((p / "config.json").read_text())["config"].get("heads", "ntm") != "lru"]
PASS = drop_sharpen_floors_on_distributions.__name__


def _before_and_after(name: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The step graph of dev configuration `name` with every pass before this one applied, and with this one too."""
    return around_pass(name, drop_sharpen_floors_on_distributions)


def _distribution_state(initial: dict[str, np.ndarray], rng: np.random.Generator, sharpness: float,
                        memory_scale: float = 1.0) -> dict[str, np.ndarray]:
    """A state ImportSession accepts: finite, weightings distributions (sharpness 0: flat; 60: one-hot-like, most
    entries exactly 0), the rest normal (memory times `memory_scale`)."""
    state = {}
    for key, value in initial.items():
        x = rng.standard_normal(value.shape)
        if key.endswith("_weights"):
            x = np.exp(sharpness * (x - x.max(-1, keepdims=True)))
            x = x / x.sum(-1, keepdims=True)
        elif key == "memory":
            x = np.tanh(x) * memory_scale  # finite: |x| < memory_scale
        state[key] = x.astype(np.float32)
    return state


def _states(name: str, batch: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    initial = onnx_initial_state(session(load_graphs(dev_folder(name))["initial_state"], threads=1), batch)
    return [initial, *(_distribution_state(initial, rng, s) for s in (0.0, 3.0, 60.0)),
            _distribution_state(initial, rng, 3.0, memory_scale=3e19),  # norms overflow: NaN rows from step 1
            _distribution_state(initial, rng, 3.0, memory_scale=1e38)]


@pytest.mark.parametrize("name", NTM_CONFIGS)
def test_dropping_the_floors_is_bit_identical_on_accepted_states(name: str) -> None:
    before, after = _before_and_after(name)
    rng = np.random.default_rng(23)
    input_size = DEV_CONFIGS[name][1].input_size
    for threads in (1, 2):
        want_session, got_session = session(before, threads=threads), session(after, threads=threads)
        for batch in (1, 3, 64):
            for start in _states(name, batch, rng):
                assert_same_rollout(want_session, got_session, start, rng, input_size)


def _with_peaks(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """`model` with the input of every sharpening (the ReduceMax fed by the shift's Einsum) as an extra output."""
    model = copy.deepcopy(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    peaks = [n.output[0] for n in model.graph.node if n.op_type == "ReduceMax"
             and producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "Einsum"]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, None) for p in peaks)
    return model, peaks


def _peak_floor(config: dict) -> float:
    """1 / (2 N S): the least peak a shift of g * content + (1 - g) * previous can have (module docstring of
    ntm_serve/export/passes/premises.py), less float32 rounding."""
    return 0.99 / (2 * config["memory_rows"] * config["shift_range"])


@pytest.mark.parametrize("name", NTM_CONFIGS)
def test_the_sharpening_peak_stays_far_above_the_floor_on_accepted_states(name: str) -> None:
    model, peaks = _with_peaks(_before_and_after(name)[1])
    assert len(peaks) == 2
    config = vars(DEV_CONFIGS[name][1])
    run = session(model, threads=1)
    rng = np.random.default_rng(29)
    seen = 0
    for start in _states(name, 4, rng):
        state = start
        for _ in range(40):
            x = (rng.random((4, config["input_size"])) < 0.5).astype(np.float32)
            outputs = run.run(None, {"input": x, **state})
            state = dict(zip(state, outputs[1:1 + len(state)], strict=True))
            for peak in outputs[-len(peaks):]:
                finite = peak[np.isfinite(peak)]
                assert (finite >= _peak_floor(config)).all(), finite.min()
                assert not np.isinf(peak).any()
                seen += finite.size
    assert seen > 0


@pytest.mark.skipif(not SHIPPED_NTMS, reason="no shipped NTM model")
@pytest.mark.parametrize("folder", SHIPPED_NTMS, ids=[p.name for p in SHIPPED_NTMS])
def test_the_sharpening_peak_stays_far_above_the_floor_on_shipped_models(folder: Path) -> None:
    """300 steps of random bits from the initial state: the trained models' own regime."""
    model, peaks = _with_peaks(onnx.load(str(folder / "step.onnx")))
    config = json.loads((folder / "config.json").read_text())["config"]
    run = session(model, threads=1)
    state = onnx_initial_state(session(str(folder / "initial_state.onnx"), threads=1), 4)
    rng = np.random.default_rng(31)
    least = np.inf
    for _ in range(300):
        x = (rng.random((4, run.get_inputs()[0].shape[1])) < 0.5).astype(np.float32)
        outputs = run.run(None, {"input": x, **state})
        state = dict(zip(state, outputs[1:1 + len(state)], strict=True))
        least = min(least, *(float(p.min()) for p in outputs[-len(peaks):]))
    assert least >= _peak_floor(config), least


def _binary(op: str) -> object:
    a = onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["n"])
    b = onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["n"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])
    graph = onnx.helper.make_graph([onnx.helper.make_node(op, ["a", "b"], ["y"])], op.lower(), [a, b], [y])
    return session(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10),
                   threads=1)


def test_the_floor_changes_no_float32_from_2_to_the_minus_75_on() -> None:
    """x + 1e-30 is x for every x >= 2**-75 (each exponent, random mantissas, both ends), not below; x / x is 1;
    Pow(1, gamma) is 1 for every gamma the model makes (>= 1), so the normalising sum is >= 1."""
    rng = np.random.default_rng(37)
    exponents = np.repeat(np.arange(-75, 128), 2000)
    x = np.ldexp(1.0 + rng.random(exponents.size), exponents).astype(np.float32)
    x = np.concatenate([x[np.isfinite(x)], np.float32([2.0**-75, np.finfo(np.float32).max])]).astype(np.float32)
    floor = np.full_like(x, FLOOR)
    (added,) = _binary("Add").run(None, {"a": x, "b": floor})
    np.testing.assert_array_equal(added.view(np.int32), x.view(np.int32))
    below = np.float32([2.0**-76, 1e-25, 0.0])
    (added,) = _binary("Add").run(None, {"a": below, "b": np.full_like(below, FLOOR)})
    assert (added != below).all()
    normal = x[x >= np.finfo(np.float32).tiny]
    (ratio,) = _binary("Div").run(None, {"a": normal, "b": normal})
    np.testing.assert_array_equal(ratio, np.ones_like(ratio))
    gamma = np.concatenate([[1.0], 1.0 + np.exp(rng.uniform(-20, 80, 10_000))]).astype(np.float32)
    (power,) = _binary("Pow").run(None, {"a": np.ones_like(gamma), "b": gamma})
    np.testing.assert_array_equal(power, np.ones_like(power))


class _ShiftAndSharpen(nn.Module):
    """The end of the addressing alone: any weighting (not only a distribution) in, shifted and sharpened."""

    def forward(self, weights: torch.Tensor, shift_logits: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return sharpen(shift(weights, torch.softmax(shift_logits, -1)), gamma)


def test_outside_the_premise_the_floors_matter() -> None:
    """An all-zero weighting entering the sharpening: finite with the floors (every entry floored to 1e-30, then
    1e-30 / 9e-30), NaN without (0 / 0). No accepted state leads there; the pass fires on this graph too, so the
    premise is what makes it exact."""
    args = (torch.zeros(2, 1, 8), torch.zeros(2, 1, 3), torch.ones(2, 1))
    dynamic = [{0: "B"}] * 3
    module = _ShiftAndSharpen()
    names = (["weights", "shift_logits", "gamma"], ["sharpened"])
    raw = torch_to_onnx(module, args, *names, dynamic, "sharpen", lean=False)
    lean = copy.deepcopy(raw)
    done = pipeline.lean(lean.graph)
    assert done[PASS] == 1
    feed = {"weights": np.zeros((2, 1, 8), np.float32), "shift_logits": np.zeros((2, 1, 3), np.float32),
            "gamma": np.ones((2, 1), np.float32)}
    (floored,), (bare,) = (session(m, threads=1).run(None, feed) for m in (raw, lean))
    np.testing.assert_array_equal(floored, np.full_like(floored, np.float32(1e-30) / np.float32(9e-30)))
    assert np.isnan(bare).all()
    feed["weights"] = np.full((2, 1, 8), 1 / 8, np.float32)  # a distribution: the same bits
    (floored,), (bare,) = (session(m, threads=1).run(None, feed) for m in (raw, lean))
    np.testing.assert_array_equal(bare.view(np.int32), floored.view(np.int32))
