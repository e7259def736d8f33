"""Tiny committed ONNX graphs that move session state rows between device tensors.

onnxruntime's Python API can bind device memory but cannot index it, so gathering the states of a
batch from the per-model state pool, scattering the next states back and copying rows between pools
are themselves onnxruntime calls, on the same execution provider as the model. The graphs are built by
`python -m ntm_serve.runtime.graphs.build` (needs the `onnx` package, a dev dependency) and committed, so serving
needs neither `onnx` nor torch.

- `gather.onnx`: slots (B,), pool_<s> (C, ...) -> <s> (B, ...)  for the six state tensors s
- `scatter.onnx`: slots (B,), pool_<s> (C, ...), update_<s> (B, ...) -> pool_out_<s> (C, ...); the
  output is bound to the pool tensor itself, so the update is in place (ScatterND skips its copy when
  input and output are the same buffer, on CPU and CUDA).
- `copy_rows.onnx`: src_rows (K,), dst_rows (K,), src_<s>, dst_<s> -> dst_out_<s> (in place, as above)
"""

from __future__ import annotations

from importlib.resources import files

GRAPHS = ("gather", "scatter", "copy_rows")
OPSET = 18


def graph_bytes(name: str) -> bytes:
    """The committed bytes of one helper graph."""
    if name not in GRAPHS:
        raise ValueError(f"unknown helper graph {name!r}")
    return (files(__package__) / f"{name}.onnx").read_bytes()
