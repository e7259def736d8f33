"""The NTM as a library: build one from a config, use it in your own PyTorch code, export it for serving.

    import torch
    from ntm_serve.export import export_model
    from ntm_serve.training import NTMConfig, NTMSequence

    model = NTMSequence(NTMConfig(input_size=4, output_size=3, memory_rows=32, memory_width=8))
    logits = model(torch.zeros(16, 10, 4))          # [B, T, I] -> [B, T, O] logits, batch first
    # ... your own loss, optimiser and data ...
    export_model(model, "models/mine", task_name="mine", encoding="what the channels mean")

`NTMSequence` runs whole sequences; `NTMSequence.step(x, state)` is the pure step over an explicit state (the
function the service runs, one request at a time). `export_model` (ntm_serve/export/model_export.py: training never
imports export) writes the folder; it is served like a shipped model: start the server over its parent folder and
ListModels shows `task_name` and `encoding`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ntm_serve.training.checkpoint import save_model
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.model import NTM
from ntm_serve.training.state import NTMState

ACTIVATIONS = ("sigmoid", "softmax", "identity")  # how the served outputs come from the logits


class NTMSequence(nn.Module):
    """An NTM over batch-first sequences: inputs [B, T, I] -> logits [B, T, O] (clipped to +-logit_clip).

    Apply a sigmoid (bits), softmax (classes) or nothing (reals) yourself, as your loss wants; `export_model`'s
    `output_activation` says which one the served outputs get."""

    def __init__(self, config: NTMConfig | NTM) -> None:
        super().__init__()
        self.ntm = config if isinstance(config, NTM) else NTM(config)

    @property
    def config(self) -> NTMConfig:
        return self.ntm.config

    def forward(self, inputs: Tensor, state: NTMState | None = None) -> Tensor:
        """inputs [B, T, I] (from `state`, or the model's initial state) -> logits [B, T, O]."""
        return self.run(inputs, state)[0]

    def run(self, inputs: Tensor, state: NTMState | None = None) -> tuple[Tensor, NTMState]:
        """inputs [B, T, I] -> (logits [B, T, O], the state after the last step): carry it to continue."""
        logits, final, _, _ = self.ntm(inputs.transpose(0, 1), state)  # (T, B, O)
        return logits.transpose(0, 1), final

    def initial_state(self, batch_size: int) -> NTMState:
        """The learned state every sequence starts from, for `batch_size` sequences (batch-first tensors)."""
        return self.ntm.initial_state(batch_size)

    def step(self, x: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """The pure step: x [B, I], state -> (logits [B, O], next state). No state lives in the module."""
        return self.ntm.step(x, state)


def build_ntm(config: NTMConfig | dict[str, Any]) -> NTMSequence:
    """An NTMSequence from an NTMConfig or its dict (e.g. a config file's [ntm] section plus the two sizes)."""
    return NTMSequence(config if isinstance(config, NTMConfig) else NTMConfig.from_dict(config))


def save_checkpoint(model: NTMSequence | NTM, folder: str | Path, task_name: str, encoding: str = "",
                    output_activation: str = "sigmoid", task_metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` as a model folder's checkpoint.pt and config.json, recording the task facts its graphs will
    carry (ntm_serve.export.export_model writes the graphs too). Everything is checked before the folder is
    touched."""
    ntm = model.ntm if isinstance(model, NTMSequence) else model
    if not isinstance(ntm, NTM):
        raise TypeError(f"takes an NTMSequence or NTM, not {type(model).__name__}")
    if output_activation not in ACTIVATIONS:
        raise ValueError(f"output_activation must be one of {ACTIVATIONS}, got {output_activation!r}")
    if not task_name:
        raise ValueError("task_name must name the task (ListModels shows it)")
    meta = {"task": task_name, "input_size": ntm.config.input_size, "output_size": ntm.config.output_size,
            "encoding": encoding, "output_activation": output_activation, "task_metadata": task_metadata or {}}
    return save_model(ntm, Path(folder), meta)


__all__ = ["ACTIVATIONS", "NTM", "NTMConfig", "NTMSequence", "NTMState", "build_ntm", "save_checkpoint"]
