"""onnxruntime sessions on a named provider, failing loudly when that provider does not really load."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort

PROVIDERS = ("cpu", "cuda")


class ProviderUnavailable(RuntimeError):
    """The requested execution provider did not load (no GPU, missing CUDA/cuDNN libraries, ...)."""


def session(model: onnx.ModelProto | bytes | str, provider: str = "cpu",
            options: ort.SessionOptions | None = None, threads: int = 0) -> ort.InferenceSession:
    """An InferenceSession on `provider`.

    onnxruntime-gpu lists CUDAExecutionProvider as *available* even when the CUDA libraries are
    missing, then silently falls back to CPU; so the providers the session really got are checked.
    TF32 is off on CUDA (it is on by default and costs ~1e-3 relative error in MatMul).
    """
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if provider == "cpu":
        providers: list = ["CPUExecutionProvider"]
    elif provider == "cuda":
        providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    else:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    sess = ort.InferenceSession(source, options, providers=providers)
    if provider == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise ProviderUnavailable(f"CUDAExecutionProvider did not load (session got {sess.get_providers()})")
    return sess


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """None when the CUDA provider really loads here, else why not (for pytest skip messages)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is reported through the return value
    try:
        session(probe, "cuda", options).run(None, {"x": np.ones(1, np.float32)})
    except Exception as err:
        return f"CUDA execution provider does not load on this machine: {err}"
    return None
