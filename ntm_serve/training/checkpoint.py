"""Checkpoints: the model file that ships (weights + config) and the resume file (optimizer, RNG, log position).

The resume file is the trainer's scratch, not part of a model: it lives in `<out>/.resume/` (ignored by git), so a
model folder holds what a user needs (weights, graphs, config, reports) and nothing else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntm_serve.training.config import NTMConfig
from ntm_serve.training.model import NTM, LSTMBaseline

MODEL_FILE = "checkpoint.pt"
RESUME_FILE = "resume.pt"
RESUME_DIR = ".resume"
CONFIG_FILE = "config.json"


def resume_path(out: Path | str, for_writing: bool = False) -> Path:
    """Where `out`'s resume state is: `<out>/.resume/resume.pt`; for reading, `<out>/resume.pt` (where runs before
    the scratch folder kept it) when only that one exists."""
    path = Path(out) / RESUME_DIR / RESUME_FILE
    legacy = Path(out) / RESUME_FILE
    if not for_writing and not path.exists() and legacy.exists():
        return legacy
    return path


def save_model(model: nn.Module, folder: Path, meta: dict[str, Any]) -> Path:
    """Write the shipped checkpoint: weights, model config and metadata (task, training config)."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = "ntm" if isinstance(model, NTM) else "lstm_baseline"
    payload = {"kind": kind, "state_dict": model.state_dict(), "meta": meta}
    if isinstance(model, NTM):
        payload["config"] = model.config.to_dict()
    path = folder / MODEL_FILE
    # Write-then-rename: a reader (evaluation, export, tests) never sees a half-written file mid-training.
    tmp = folder / (MODEL_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    summary = {"kind": kind, "config": payload.get("config"), **meta}
    tmp_config = folder / (CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(summary, indent=2) + "\n")
    tmp_config.replace(folder / CONFIG_FILE)
    return path


def load_model(folder: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Load a shipped checkpoint (a folder or the file itself) as an eval-mode model and its metadata."""
    path = Path(folder)
    if path.is_dir():
        path = path / MODEL_FILE
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    if payload["kind"] == "ntm":
        model: nn.Module = NTM(NTMConfig.from_dict(payload["config"]))
    else:
        model = LSTMBaseline(meta["input_size"], meta["output_size"], **meta.get("baseline", {}))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, meta


def checkpoint_hash(folder: Path | str) -> str:
    """sha256 of the shipped checkpoint file: ties exported graphs to the weights they came from."""
    path = Path(folder)
    if path.is_dir():
        path = path / MODEL_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()
