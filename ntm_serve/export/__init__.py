"""ONNX export of trained NTMs and the parity checks that prove the graphs compute what torch computes.

`python -m ntm_serve.export FOLDER...` writes `step.onnx`, `sequence.onnx` and `initial_state.onnx` into each
model folder (see docs/onnx-contract.md); `python -m ntm_serve.export.parity FOLDER` prints the parity table.
`export_model(model, folder, task_name=..., encoding=...)` does it for a model built in one's own code.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`export_model`, imported on first use (the CLI and parity modules need not load it)."""
    if name == "export_model":
        from ntm_serve.export.model_export import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
