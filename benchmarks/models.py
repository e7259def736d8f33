"""Which model the benchmarks run: a shipped model folder with its ONNX graphs, else a fresh dev export.

Timing does not depend on how well a model is trained, only on its sizes, so an untrained NTM with
the copy task's sizes is a faithful stand-in when no shipped model has been exported yet.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntm_serve.contract import GRAPH_FILES, META_CHECKPOINT, META_CONFIG, META_TASK
from ntm_serve.runtime.ort_session import open_session

log = logging.getLogger(__name__)

GRAPHS = tuple(GRAPH_FILES.values())
PREFERRED = ("copy", "repeat_copy", "associative_recall", "priority_sort")


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    task: str
    config: dict[str, Any]  # NTMConfig as JSON (from the step graph's metadata)
    checkpoint_sha256: str  # of the checkpoint the graphs were exported from
    source: str  # "shipped" or "dev export (untrained)"

    def graph(self, name: str) -> Path:
        return self.path / f"{name}.onnx"

    @property
    def state_bytes(self) -> int:
        """float32 bytes of one session's state (the six state tensors at batch 1)."""
        c = self.config
        h, r, w, n, m = c["controller_size"], c["read_heads"], c["write_heads"], c["memory_rows"], c["memory_width"]
        return 4 * (2 * h + r * m + n * m + r * n + w * n)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "task": self.task, "source": self.source, "config": self.config,
                "checkpoint_sha256": self.checkpoint_sha256, "state_bytes_per_session": self.state_bytes}


def has_graphs(folder: Path) -> bool:
    return all((folder / name).is_file() for name in GRAPHS)


def read_folder(folder: Path, source: str) -> ModelFolder:
    """Read the task, sizes and checkpoint hash from the step graph's metadata (docs/onnx-contract.md)."""
    meta = open_session(folder / GRAPH_FILES["step"], "cpu").get_modelmeta()
    props = meta.custom_metadata_map
    return ModelFolder(folder, props[META_TASK], json.loads(props[META_CONFIG]),
                       props.get(META_CHECKPOINT, ""), source)


def find_model(models_dir: Path = Path("models"), explicit: Path | None = None) -> ModelFolder:
    """`explicit` if given; else the first shipped folder (copy first) with all three graphs; else a dev export."""
    if explicit is not None:
        if not has_graphs(explicit):
            raise FileNotFoundError(f"{explicit}: needs {', '.join(GRAPHS)}")
        return read_folder(explicit, "given")
    candidates = [models_dir / name for name in PREFERRED]
    candidates += sorted(p for p in models_dir.glob("*") if p.is_dir() and p not in candidates)
    for folder in candidates:
        if has_graphs(folder):
            return read_folder(folder, "shipped")
    return dev_export()


def dev_export(folder: Path | None = None) -> ModelFolder:
    """An untrained NTM with the copy task's default sizes, saved and exported (needs torch and onnx)."""
    import torch

    from ntm_serve.export.exporter import export_folder  # dev dependencies: only here
    from ntm_serve.training.checkpoint import save_model
    from ntm_serve.training.config import NTMConfig
    from ntm_serve.training.model import NTM
    from ntm_serve.training.tasks import get_task

    folder = folder or Path(tempfile.mkdtemp(prefix="ntm-bench-model-"))
    task = get_task("copy")
    torch.manual_seed(0)
    model = NTM(NTMConfig(input_size=task.input_size, output_size=task.output_size))
    save_model(model, folder, {"task": "copy", "input_size": task.input_size, "output_size": task.output_size,
                               "encoding": task.encoding})
    log.info("no shipped model with ONNX graphs: exporting an untrained copy-task NTM into %s", folder)
    export_folder(folder)
    return read_folder(folder, "dev export (untrained, copy-task sizes)")


def load_torch_model(folder: Path, attempts: int = 5) -> tuple[Any, str] | None:
    """The folder's checkpoint as an eval-mode NTM and its sha256, or None without one.

    Background training rewrites the file atomically but often; a failed read is retried.
    """
    from ntm_serve.export.model_files import load_checkpoint

    if not (folder / "checkpoint.pt").is_file():
        return None
    for attempt in range(attempts):
        try:
            ckpt = load_checkpoint(folder)
            return ckpt.model, ckpt.sha256
        except ValueError as err:
            log.warning("checkpoint read failed (%s), attempt %d", err, attempt + 1)
            time.sleep(0.5)
    return None


def single_model_dir(model: ModelFolder) -> Path:
    """A temp models directory holding only this model's graphs (what the benchmarked server serves)."""
    root = Path(tempfile.mkdtemp(prefix="ntm-bench-models-"))
    dest = root / model.path.name
    dest.mkdir()
    for name in GRAPHS:
        shutil.copy2(model.path / name, dest / name)
    return root
