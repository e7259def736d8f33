"""onnxruntime sessions for the parity checks: ntm_serve/runtime/ort_session.py's factory with onnxruntime's
defaults."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ntm_serve.runtime.ort_session import PROVIDERS, ProviderUnavailable, SessionSettings, open_session

__all__ = ["PROVIDERS", "ProviderUnavailable", "cuda_unavailable_reason", "optimised_node_count", "session"]

# onnxruntime's own defaults (every core, warnings logged): what a user of the exported graphs gets.
PARITY = SessionSettings(threads=0, spinning=True, log_severity=2)


def session(model: onnx.ModelProto | bytes | str, provider: str = "cpu",
            options: ort.SessionOptions | None = None, threads: int = 0) -> ort.InferenceSession:
    """An InferenceSession on `provider` ('cpu' or 'cuda'; ProviderUnavailable when CUDA does not really load)."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return open_session(source, provider, PARITY.with_threads(threads), options=options)


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """None when the CUDA provider really loads here, else why not (for pytest skip messages)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    quiet = replace(PARITY, log_severity=4)  # the failure is reported through the return value
    try:
        session(probe, "cuda", quiet.options()).run(None, {"x": np.ones(1, np.float32)})
    except Exception as err:
        return f"CUDA execution provider does not load on this machine: {err}"
    return None


def optimised_node_count(model: onnx.ModelProto | str, level: ort.GraphOptimizationLevel) -> int:
    """Nodes of `model` as onnxruntime runs it on the CPU provider after its graph optimisation at `level`
    (read back through `optimized_model_filepath`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimised.onnx"
        options = PARITY.options()
        options.graph_optimization_level = level
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3  # level ALL warns that its file may hold hardware-specific nodes
        session(model if isinstance(model, onnx.ModelProto) else str(model), "cpu", options)
        return len(onnx.load(str(path)).graph.node)
