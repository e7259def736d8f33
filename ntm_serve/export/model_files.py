"""Read a model folder's checkpoint once (hash and weights from the same bytes) and write its ONNX files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ntm_serve.training.checkpoint import MODEL_FILE, load_model
from ntm_serve.training.model import NTM
from ntm_serve.training.task_source import task_facts


@dataclass(frozen=True)
class Checkpoint:
    model: NTM
    meta: dict[str, Any]
    sha256: str
    task: str
    encoding: str
    output_activation: str = "sigmoid"  # the task's: sigmoid (bits), softmax (classification) or identity (reals)
    task_metadata: dict[str, Any] | None = None  # more task facts a client needs (one_shot: the class split)


def load_checkpoint(folder: Path) -> Checkpoint:
    """Load `folder/checkpoint.pt` from one read of its bytes.

    Training may rewrite the file while we export; hashing and loading the same bytes guarantees the
    hash in the ONNX metadata is the hash of the weights inside the ONNX files.
    """
    path = folder / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MODEL_FILE}")
    data = path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / MODEL_FILE
        copy.write_bytes(data)
        try:
            model, meta = load_model(copy)
        except Exception as err:  # a half-written file while training saves, or not a checkpoint at all
            raise ValueError(f"{path}: cannot load checkpoint ({err})") from err
    if not isinstance(model, NTM):
        raise ValueError(f"{path}: only NTM checkpoints export (this one is {type(model).__name__})")
    encoding, activation, task_metadata = task_facts(meta)  # a data set or task file need not be at hand
    return Checkpoint(model, meta, hashlib.sha256(data).hexdigest(), meta["task"], encoding, activation,
                      task_metadata)


def model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, data: bytes) -> None:
    """Write then rename, so a reader (the service) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a service running as another user must read it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
