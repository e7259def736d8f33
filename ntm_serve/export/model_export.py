"""`export_model`: a model built in one's own PyTorch code (ntm_serve.training.NTMSequence or NTM) as a servable
folder: checkpoint.pt, config.json and the three graphs, their metadata naming the task and its encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ntm_serve.export.exporter import export_folder
from ntm_serve.training.api import NTMSequence, save_checkpoint
from ntm_serve.training.model import NTM


def export_model(model: NTMSequence | NTM, folder: str | Path, task_name: str, encoding: str = "",
                 output_activation: str = "sigmoid", task_metadata: dict[str, Any] | None = None,
                 ) -> dict[str, Path]:
    """Write `model` to `folder` (checkpoint, config, step/sequence/initial_state graphs); returns the graphs' paths.
    `output_activation` says what the served outputs are: "sigmoid" (bits), "softmax" (classes) or "identity"
    (reals); the model's mode (train or eval) is left as it was."""
    ntm = model.ntm if isinstance(model, NTMSequence) else model
    was_training = getattr(ntm, "training", False)
    ntm.eval()
    try:
        save_checkpoint(ntm, folder, task_name, encoding, output_activation, task_metadata)
    finally:
        ntm.train(was_training)
    return export_folder(Path(folder))
