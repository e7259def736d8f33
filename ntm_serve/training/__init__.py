"""Neural Turing Machine (Graves et al. 2014): model, tasks, training and evaluation.

The model is written so that one time step is a pure function of
(parameters, input, state) -> (output, next state); see :mod:`ntm_serve.training.model`.

The library surface (ntm_serve/training/api.py), importable from here: `NTMConfig`, `NTM` (time-major, the
trainer's), `NTMSequence` (batch-first whole sequences), `NTMState`, `build_ntm`, `save_checkpoint`; and for tasks
of your own `TaskSpec` and `Batch`. `ntm_serve.export.export_model` turns a model into a servable folder.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "NTMConfig": "ntm_serve.training.config", "NTM": "ntm_serve.training.model",
    "NTMState": "ntm_serve.training.state", "NTMSequence": "ntm_serve.training.api",
    "build_ntm": "ntm_serve.training.api", "save_checkpoint": "ntm_serve.training.api",
    "TaskSpec": "ntm_serve.training.tasks", "Batch": "ntm_serve.training.batch",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imported on first use: `import ntm_serve.training.config` alone must not pull in torch."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
