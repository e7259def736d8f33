"""Small untrained checkpoints with the real shapes, for the tests and for trying the tools without a
trained model. Cached per process so test files share one export per configuration."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from ntm_serve.contract import GRAPH_FILES
from ntm_serve.export.exporter import build_graphs
from ntm_serve.export.graphs import step_graph
from ntm_serve.export.model_files import load_checkpoint, model_bytes, write_atomically
from ntm_serve.export.parity import onnx_step
from ntm_serve.export.passes import pipeline
from ntm_serve.training.checkpoint import save_model
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.model import NTM
from ntm_serve.training.tasks import get_task

# Configurations the tests cover: the shipped default, and the corners (feed-forward controller,
# several heads, S = 5, S = N, learned memory, LRU heads with softmax outputs, one least-used row per write
# with an input skip to the heads, an input layer, reads that skip the row just renewed).
DEV_CONFIGS: dict[str, tuple[str, NTMConfig]] = {
    "copy_default": ("copy", NTMConfig(input_size=9, output_size=8)),
    "repeat_copy_ff_multihead": ("repeat_copy", NTMConfig(
        input_size=10, output_size=9, controller="feedforward", controller_size=32, memory_rows=16,
        memory_width=6, read_heads=2, write_heads=2, shift_range=5)),
    "copy_shift_n_learned": ("copy", NTMConfig(
        input_size=9, output_size=8, controller_size=24, memory_rows=7, memory_width=5, shift_range=7,
        memory_init="learned")),
    "one_shot_lru": ("one_shot", NTMConfig(  # softmax outputs; least-recently-used heads (memory has a usage column)
        input_size=69, output_size=5, controller_size=24, memory_rows=8, memory_width=5, read_heads=2, heads="lru",
        lru_rows=3)),  # three least-used rows: a count of three one-hot rows (tests/test_graph_passes.py)
    "one_shot_lru_skip": ("one_shot", NTMConfig(  # one least-used row per write; heads see the raw input
        input_size=69, output_size=5, controller_size=24, memory_rows=8, memory_width=5, read_heads=2, heads="lru",
        lru_rows=1, heads_see_input=True)),
    "one_shot_lru_follow": ("one_shot", NTMConfig(  # a second write head follows the first's previous rows
        input_size=69, output_size=5, controller_size=24, memory_rows=8, memory_width=5, read_heads=2,
        write_heads=2, heads="lru", lru_rows=1, heads_see_input=True, write_follows=True)),
    "one_shot_lru_input_layer": ("one_shot", NTMConfig(  # a ReLU layer over the input, seen by controller and heads
        input_size=69, output_size=5, controller_size=24, memory_rows=8, memory_width=5, read_heads=2,
        write_heads=2, heads="lru", lru_rows=1, heads_see_input=True, write_follows=True, input_layer=16)),
    "one_shot_lru_skip_new": ("one_shot", NTMConfig(  # the read heads skip the row renewed this step
        input_size=69, output_size=5, controller_size=24, memory_rows=8, memory_width=5, read_heads=2,
        write_heads=2, heads="lru", lru_rows=1, heads_see_input=True, write_follows=True, read_skips_new=True)),
}


def make_dev_checkpoint(folder: Path, task: str, config: NTMConfig, seed: int = 0) -> Path:
    """Save an untrained NTM (seeded weights; the learned initial state perturbed so it is not trivial)."""
    torch.manual_seed(seed)
    model = NTM(config).eval()
    with torch.no_grad():
        if config.memory_init == "learned":
            model.memory0.normal_(0.0, 0.1)
        for name, weight in model.named_parameters():
            if ".skip." in name:  # zero at init: made non-zero so the input skip's path is exercised
                weight.normal_(0.0, 0.1)
    spec = get_task(task)
    meta = {"task": task, "input_size": spec.input_size, "output_size": spec.output_size,
            "encoding": spec.encoding, "dev_checkpoint": True}
    return save_model(model, folder, meta)


@functools.cache
def dev_folder(name: str) -> Path:
    """A folder with a dev checkpoint and its three exported graphs (made once per process)."""
    task, config = DEV_CONFIGS[name]
    folder = Path(tempfile.mkdtemp(prefix=f"ntm-dev-{name}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    make_dev_checkpoint(folder, task, config)
    for graph_name, graph in build_graphs(load_checkpoint(folder)).items():
        write_atomically(folder / GRAPH_FILES[graph_name], model_bytes(graph))
    return folder


def load_graphs(folder: Path) -> dict[str, onnx.ModelProto]:
    return {name: onnx.load(str(folder / file)) for name, file in GRAPH_FILES.items()}


def shipped_folders(root: Path = Path("models")) -> list[Path]:
    """Model folders that ship ONNX graphs next to an NTM checkpoint (`models/*/step.onnx`)."""
    return sorted(p.parent for p in root.glob(f"*/{GRAPH_FILES['step']}") if (p.parent / "checkpoint.pt").is_file())


def around_pass(name: str, run: pipeline.Pass) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The step graph of dev configuration `name` with every pass before `run` applied, and with `run` too (which
    must rewrite something)."""
    checkpoint = load_checkpoint(dev_folder(name))
    graph = step_graph(checkpoint.model, checkpoint.output_activation, lean=False)
    names = [p.__name__ for p in pipeline.PASSES]
    for earlier in pipeline.PASSES[:names.index(run.__name__)]:
        earlier(pipeline.GraphIndex(graph.graph))
        pipeline.remove_dead(graph.graph)
    before = onnx.ModelProto()
    before.CopyFrom(graph)
    assert run(pipeline.GraphIndex(graph.graph)) > 0
    pipeline.remove_dead(graph.graph)
    onnx.checker.check_model(graph, full_check=True)
    return before, graph


def assert_same_rollout(want: object, got: object, start: dict[str, np.ndarray], rng: np.random.Generator,
                        input_size: int, steps: int = 25) -> None:
    """Two step-graph sessions fed the same random bits from `start`: every output and state bit equal, NaN too."""
    want_state, got_state = start, start
    batch = next(iter(start.values())).shape[0]
    for _ in range(steps):
        x = (rng.random((batch, input_size)) < 0.5).astype(np.float32)
        want_out, want_state = onnx_step(want, x, want_state)  # type: ignore[arg-type]
        got_out, got_state = onnx_step(got, x, got_state)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got_out.view(np.int32), want_out.view(np.int32))
        for key in want_state:
            np.testing.assert_array_equal(got_state[key].view(np.int32), want_state[key].view(np.int32), err_msg=key)
