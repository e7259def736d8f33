"""Op-by-op parity: each addressing/memory function, the controller and the whole step, exported on its
own from the torch function the model uses, run in onnxruntime against torch. Max abs error <= 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntm_serve.export.compare import OP_TOLERANCE, errors, row
from ntm_serve.export.model_files import load_checkpoint
from ntm_serve.export.ops import PURE_OPS, edge_cases, export_controller, random_inputs
from ntm_serve.export.parity import controller_row, pure_op_graph, pure_op_row, step_row
from ntm_serve.export.runtime import cuda_unavailable_reason, session
from ntm_serve.export.testing import DEV_CONFIGS, dev_folder, load_graphs

PROVIDERS = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        cuda_unavailable_reason() is not None, reason=str(cuda_unavailable_reason()))]),
]
_SESSIONS: dict[tuple[str, str], object] = {}



def op_session(name: str, provider: str, shift_range: int = 3):
    """One session per (op, provider[, S]) for the whole run: the graph has every axis dynamic but the shift's S."""
    key = (name, provider, shift_range if "S" in PURE_OPS[name].static else 0)
    if key not in _SESSIONS:
        _SESSIONS[key] = session(pure_op_graph(name, shift_range), provider, threads=1)
    return _SESSIONS[key]


@st.composite
def sizes(draw: st.DrawFn) -> dict[str, int]:
    """B 1..64, H 1..3, N 3..130 or 131..2100 (the graphs' N is a dimension), M 1..24, S in {3, 5, 7, 9} (odd,
    <= N; S = N among them: the shift and address graphs are exported once per S)."""
    n = draw(st.integers(3, 130) | st.integers(131, 2100))
    shift_choices = [s for s in {3, 5, 7, 9} if s <= n]
    return {"B": draw(st.integers(1, 64)), "H": draw(st.integers(1, 3)), "N": n,
            "M": draw(st.integers(1, 24)), "S": draw(st.sampled_from(sorted(shift_choices)))}


def _check(name: str, provider: str, arrays: dict[str, np.ndarray], label: str) -> None:
    spec = PURE_OPS[name]
    actual = op_session(name, provider, arrays["shift" if "shift" in arrays else "shift_weights"].shape[-1]
                        if "S" in spec.static else 3).run(None, spec.feeds(arrays))[0]
    expected = spec.call_torch(arrays)
    max_abs, _ = errors(actual, expected)
    assert max_abs <= OP_TOLERANCE, f"{name} {label}: max abs error {max_abs:.3g} > {OP_TOLERANCE}"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", list(PURE_OPS))
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=sizes(), seed=st.integers(0, 2**31 - 1))
def test_op_matches_torch_on_random_inputs(name: str, provider: str, size: dict[str, int], seed: int) -> None:
    arrays = random_inputs(PURE_OPS[name], np.random.default_rng(seed), size)
    _check(name, provider, arrays, f"sizes {size} seed {seed}")


EDGE_SIZES = [
    {"B": 3, "H": 1, "N": 128, "M": 20, "S": 3},  # the shipped default
    {"B": 2, "H": 2, "N": 16, "M": 6, "S": 5},
    {"B": 4, "H": 1, "N": 9, "M": 4, "S": 9},  # S = N
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", EDGE_SIZES, ids=lambda s: f"N{s['N']}-S{s['S']}-H{s['H']}")
@pytest.mark.parametrize("name", list(PURE_OPS))
def test_op_matches_torch_on_edge_cases(name: str, provider: str, size: dict[str, int]) -> None:
    """Zero memory/key, beta 0 and huge, gate 0/1, one-hot weightings at rows 0 and N-1, large gamma, ..."""
    cases = edge_cases(PURE_OPS[name], size)
    assert cases
    for label, arrays in cases.items():
        _check(name, provider, arrays, label)


def test_edge_case_outputs_are_what_the_math_says() -> None:
    """The edge cases really hit their corner (so a pass above means something)."""
    size = {"B": 2, "H": 1, "N": 8, "M": 4, "S": 3}
    content = edge_cases(PURE_OPS["content_weighting"], size)
    for label in ("zero key", "zero memory", "beta = 0"):
        out = op_session("content_weighting", "cpu").run(None, PURE_OPS["content_weighting"].feeds(content[label]))[0]
        np.testing.assert_allclose(out, 1 / 8, atol=1e-6, err_msg=label)  # uniform, not NaN
    saturated = content["beta = 1e4, key = row 0"]
    out = op_session("content_weighting", "cpu").run(None, PURE_OPS["content_weighting"].feeds(saturated))[0]
    assert np.all(out[:, :, 0] > 0.999), out[:, :, 0]
    shift_cases = edge_cases(PURE_OPS["shift"], size)
    out = op_session("shift", "cpu").run(None, PURE_OPS["shift"].feeds(shift_cases["weights one-hot at 7"]))[0]
    # the random shift moves the one-hot at N-1 partly to rows 6, 7 and (wrapping) 0
    assert out[..., 0].min() > 0 and out[..., 1:6].max() == 0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config", list(DEV_CONFIGS))
def test_controller_and_whole_step_match_torch(config: str, provider: str) -> None:
    """The model's controller (its own export) and the shipped step graph, at B = 1 and 64."""
    folder = dev_folder(config)
    ckpt = load_checkpoint(folder)
    model = ckpt.model
    controller = controller_row(model, session(export_controller(model), provider, threads=1))
    assert controller.strict, controller
    step = step_row(model, session(load_graphs(folder)["step"], provider, threads=1),
                    activation=ckpt.output_activation)
    assert step.strict, step


@pytest.mark.parametrize("config", list(DEV_CONFIGS))
def test_parity_rows_at_model_sizes(config: str) -> None:
    """The rows the parity CLI prints for each op, at this model's N, M, S and head counts."""
    _, c = DEV_CONFIGS[config]
    for name, spec in PURE_OPS.items():
        for heads in {c.read_heads, c.write_heads}:
            sizes_ = {"H": heads, "N": c.memory_rows, "M": c.memory_width, "S": c.shift_range}
            r = pure_op_row(spec, op_session(name, "cpu", c.shift_range), sizes_)
            assert r.strict, r


def test_float32_floor_relaxes_only_rows_that_torch_itself_cannot_meet() -> None:
    """Past tolerance, a row passes only when onnx is no further from float64 than FLOOR_FACTOR x torch f32."""
    exact = np.zeros(4)
    torch32 = np.array([0.0, 3e-4, 0.0, 0.0])  # the float32 model is 3e-4 from exact math
    near = np.array([0.0, -2e-4, 0.0, 0.0])  # onnx: 5e-4 from torch, 2e-4 from exact -> floor pass
    far = np.array([0.0, 3e-4, 0.0, 9e-4])  # onnx: 9e-4 from exact, > 2 x 3e-4 -> fail
    assert row("x", near, torch32, 1e-4, exact=exact).verdict == "pass (f32 floor)"
    assert row("x", far, torch32, 1e-4, exact=exact).verdict == "**FAIL**"
    assert row("x", near, torch32, 1e-4).verdict == "**FAIL**"  # no float64 reference: tolerance only
    assert row("x", torch32, torch32, 1e-4, exact=exact).verdict == "pass"


def test_a_wrong_graph_fails_the_check() -> None:
    """The comparison can fail: the interpolate graph fed a gate of 1 - g disagrees with torch."""
    spec = PURE_OPS["interpolate"]
    arrays = random_inputs(spec, np.random.default_rng(0), {"B": 4, "H": 2, "N": 10, "M": 3, "S": 3})
    wrong = dict(arrays, gate=1.0 - arrays["gate"])
    actual = op_session("interpolate", "cpu").run(None, spec.feeds(wrong))[0]
    assert errors(actual, spec.call_torch(arrays))[0] > OP_TOLERANCE
