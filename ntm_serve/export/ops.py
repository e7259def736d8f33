"""Every piece of the NTM step as a graph of its own, exported from the very torch function the model uses.

Each `OpSpec` wraps one function of `training/` (addressing, memory, controller) in a tiny module.
The pure functions are exported with every size dynamic (batch B, heads H, rows N, width M, shift
width S), so one graph serves every shape a test draws; modules with weights (controller, whole step)
are exported per model with only the batch dynamic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from ntm_serve.export.graphs import step_graph
from ntm_serve.export.torch_onnx import torch_to_onnx
from ntm_serve.training import addressing, memory
from ntm_serve.training.model import NTM

Arrays = dict[str, np.ndarray]


class _Call(nn.Module):
    """Calls `fn(*inputs)`; the graph is exactly what torch traces through `fn`."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.fn(*inputs)


class _Controller(nn.Module):
    def __init__(self, controller: nn.Module) -> None:
        super().__init__()
        self.controller = controller

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        h_next, c_next = self.controller(x, h, c)
        return h_next, c_next


@dataclass(frozen=True)
class OpSpec:
    """One addressing/memory function: its inputs (name -> symbolic shape) and its single output. `static`: sizes
    the function unrolls over (the shift's S rolled copies), so each value has a graph of its own."""

    name: str
    fn: Callable[..., Tensor]
    inputs: dict[str, tuple[str, ...]]
    output: str = "out"
    static: tuple[str, ...] = ()

    @property
    def onnx_inputs(self) -> list[str]:
        """Graph input names: prefixed, so none collides with a value the exporter names after an op (`add`)."""
        return [f"in.{name}" for name in self.inputs]

    def feeds(self, arrays: Arrays) -> Arrays:
        return {f"in.{name}": arrays[name] for name in self.inputs}

    def call_torch(self, arrays: Arrays) -> np.ndarray:
        with torch.no_grad():
            out = self.fn(*(torch.from_numpy(arrays[name]) for name in self.inputs))
        return out.numpy()


# Symbolic sizes: B batch, H heads, N rows, M width, S shift width.
PURE_OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("content_weighting", addressing.content_weighting,
               {"memory": ("B", "N", "M"), "key": ("B", "H", "M"), "beta": ("B", "H")}),
        OpSpec("interpolate", addressing.interpolate,
               {"content": ("B", "H", "N"), "previous": ("B", "H", "N"), "gate": ("B", "H")}),
        OpSpec("shift", addressing.shift,
               {"weights": ("B", "H", "N"), "shift": ("B", "H", "S")}, static=("S",)),
        OpSpec("sharpen", addressing.sharpen, {"weights": ("B", "H", "N"), "gamma": ("B", "H")}),
        OpSpec("address", addressing.address,
               {"memory": ("B", "N", "M"), "previous": ("B", "H", "N"), "key": ("B", "H", "M"), "beta": ("B", "H"),
                "gate": ("B", "H"), "shift_weights": ("B", "H", "S"), "gamma": ("B", "H")}, static=("S",)),
        OpSpec("read", memory.read, {"memory": ("B", "N", "M"), "weights": ("B", "H", "N")}),
        OpSpec("write", memory.write,
               {"memory": ("B", "N", "M"), "weights": ("B", "H", "N"), "erase": ("B", "H", "M"),
                "add": ("B", "H", "M")}),
    )
}

# Example sizes for tracing: all different and > 1, so no size is mistaken for another or specialised.
_TRACE_SIZES = {"B": 4, "H": 2, "N": 11, "M": 6, "S": 3}


def export_pure_op(spec: OpSpec, static: dict[str, int] | None = None) -> onnx.ModelProto:
    """The op's graph with every axis dynamic but the op's `static` sizes, which take the values given (default the
    trace sizes'): the shift's S."""
    fixed = {k: v for k, v in (static or {}).items() if k in spec.static}
    sizes = {**_TRACE_SIZES, **fixed}
    sizes["N"] = max(sizes["N"], sizes["S"] + 2)  # N is traced apart from S
    arrays = random_inputs(spec, np.random.default_rng(0), sizes)
    args = tuple(torch.from_numpy(arrays[name]) for name in spec.inputs)
    dynamic = [{axis: dim for axis, dim in enumerate(shape) if dim not in spec.static}
               for shape in spec.inputs.values()]
    minimums = {"N": max(2, sizes["S"] // 2)} if spec.static else None  # the shift's rolls need N >= S // 2
    return torch_to_onnx(_Call(spec.fn), args, spec.onnx_inputs, [spec.output], dynamic, f"op_{spec.name}",
                         minimums=minimums)


def export_controller(model: NTM) -> onnx.ModelProto:
    """The model's controller (with its trained weights) on its own: (x, h, c) -> (h', c'), batch dynamic."""
    c = model.config
    x = torch.zeros(_TRACE_SIZES["B"], c.features + c.read_heads * c.memory_width)
    h = torch.zeros(_TRACE_SIZES["B"], c.controller_size)
    return torch_to_onnx(_Controller(model.controller), (x, h, h.clone()), ["x", "h", "c"], ["h_next", "c_next"],
                         [{0: "B"}] * 3, "op_controller")


def export_step(model: NTM) -> onnx.ModelProto:
    """The whole step: exactly the graph `step.onnx` ships (same builder)."""
    return step_graph(model)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_inputs(spec: OpSpec, rng: np.random.Generator, sizes: dict[str, int]) -> Arrays:
    """Inputs in the ranges the model produces: weightings and shifts are distributions, gates in [0, 1],
    beta >= 0, gamma >= 1, erase in [0, 1]; memory, keys and adds are unconstrained."""
    out: Arrays = {}
    for name, dims in spec.inputs.items():
        shape = tuple(sizes[d] for d in dims)
        if name in ("content", "previous", "weights", "shift", "shift_weights"):
            out[name] = _softmax(rng.normal(0.0, 3.0, shape)).astype(np.float32)
        elif name in ("gate", "erase"):
            out[name] = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        elif name == "beta":
            out[name] = rng.exponential(5.0, shape).astype(np.float32)
        elif name == "gamma":
            out[name] = (1.0 + rng.exponential(3.0, shape)).astype(np.float32)
        else:  # memory, key, add
            out[name] = rng.normal(0.0, 1.0, shape).astype(np.float32)
    return out


def edge_cases(spec: OpSpec, sizes: dict[str, int]) -> dict[str, Arrays]:
    """The issue's edge cases that apply to this op: zero memory/key, beta 0 and huge, gate 0 and 1,
    one-hot weightings at rows 0 and N-1, large gamma. Everything not set is a fixed random draw."""
    base = random_inputs(spec, np.random.default_rng(1), sizes)
    n = sizes["N"]
    cases: dict[str, Arrays] = {}

    def case(label: str, **overrides: np.ndarray | float) -> None:
        arrays = dict(base)
        for name, value in overrides.items():
            if name in arrays:
                full = np.broadcast_to(np.asarray(value, np.float32), arrays[name].shape)
                arrays[name] = np.array(full, dtype=np.float32)  # a writable copy
        cases[label] = arrays

    names = spec.inputs
    if "memory" in names:
        case("zero memory", memory=0.0)
    if "key" in names:
        case("zero key", key=0.0)
        if "memory" in names:
            case("zero key and memory", key=0.0, memory=0.0)
    if "beta" in names:
        case("beta = 0", beta=0.0)
        # Huge beta with the key equal to a memory row: the weighting must saturate to that row, not
        # overflow. (With a random key, beta = 1e4 turns 1-ulp cosine differences into ~1e-4 weight
        # differences: that is conditioning, not an export error; see docs/export.md.)
        if "memory" in names and "key" in names:
            row_key = np.repeat(base["memory"][:, :1, :], base["key"].shape[1], axis=1)  # (B, H, M)
            case("beta = 1e4, key = row 0", beta=1e4, key=row_key)
    if "gate" in names:
        case("gate = 0", gate=0.0)
        case("gate = 1", gate=1.0)
    if "gamma" in names:
        case("gamma = 1", gamma=1.0)
        case("gamma = 50", gamma=50.0)
        case("gamma = 1e3", gamma=1e3)
    for weight_name in ("weights", "previous", "content"):
        if weight_name in names:
            for row in (0, n - 1):
                one_hot = np.zeros(n, np.float32)
                one_hot[row] = 1.0
                case(f"{weight_name} one-hot at {row}", **{weight_name: one_hot})
    if "shift" in names or "shift_weights" in names:
        key = "shift" if "shift" in names else "shift_weights"
        s = sizes["S"]
        for j, label in ((0, "full backward"), (s // 2, "identity"), (s - 1, "full forward")):
            one_hot = np.zeros(s, np.float32)
            one_hot[j] = 1.0
            case(f"shift one-hot {label}", **{key: one_hot})
    if "erase" in names:
        case("erase = 1", erase=1.0)
        case("erase = 0", erase=0.0)
    return cases
