"""The leaner step graph (issue 12, item 3): export/graph_passes.py removes nodes without changing a value.

- every shipped NTM step graph stays within STEP_NODES after onnxruntime's optimisation (ALL and EXTENDED);
- for every test configuration the lean step graph and the unpassed one give bit-identical outputs and
  states over a rollout (so the passes are exact, not merely within tolerance), and every pass fired on
  the default configuration;
- the softplus rewrite's premise holds in this onnxruntime: Softplus(x) == x in float32 for x >= 16.
Parity with torch is tests/test_parity_model.py's job, on the same (re-exported) graphs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import graph_passes
from export.graphs import step_graph
from export.model_files import load_checkpoint
from export.parity import onnx_initial_state, onnx_step
from export.runtime import optimised_node_count, session
from export.testing import DEV_CONFIGS, dev_folder, load_graphs, shipped_folders

REPO = Path(__file__).resolve().parent.parent
SHIPPED = shipped_folders(REPO / "models")
STEP_NODES = 84  # after onnxruntime's optimisation; 125 before the passes (docs/performance.md, section 2)
# The one-shot models' LRU heads (usage kept in an extra memory column) and 4 read heads add their own ops:
# 89 raw, 87 after onnxruntime (102 / 98 before the passes; outputs bit-identical over 300 steps).
LRU_STEP_NODES = 87
LEVELS = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@pytest.mark.skipif(not SHIPPED, reason="no shipped model yet (models/*/step.onnx next to checkpoint.pt)")
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_step_graph_is_within_the_node_budget(folder: Path, level: str) -> None:
    nodes = optimised_node_count(str(folder / "step.onnx"), LEVELS[level])
    budget = LRU_STEP_NODES if json.loads((folder / "config.json").read_text())["config"].get("heads") == "lru" \
        else STEP_NODES
    assert nodes <= budget, f"{folder.name}: {nodes} nodes after onnxruntime ({level}), budget {budget}"


@pytest.mark.parametrize("name", list(DEV_CONFIGS))
def test_lean_step_graph_is_bit_identical_to_the_unpassed_one(name: str) -> None:
    """Feed-forward controller, 2 + 2 heads, S = 5, S = N, learned memory, LRU heads with softmax outputs: every
    config of the tests."""
    folder = dev_folder(name)
    checkpoint = load_checkpoint(folder)
    raw = step_graph(checkpoint.model, checkpoint.output_activation, lean=False)
    lean = load_graphs(folder)["step"]
    raw_nodes = optimised_node_count(raw, LEVELS["all"])
    assert optimised_node_count(lean, LEVELS["all"]) < raw_nodes
    raw_sess, lean_sess = session(raw, threads=1), session(lean, threads=1)
    rng = np.random.default_rng(7)
    state = onnx_initial_state(session(load_graphs(folder)["initial_state"], threads=1), 3)
    lean_state = state
    for _ in range(60):
        x = (rng.random((3, DEV_CONFIGS[name][1].input_size)) < 0.5).astype(np.float32)
        want, state = onnx_step(raw_sess, x, state)
        got, lean_state = onnx_step(lean_sess, x, lean_state)
        np.testing.assert_array_equal(got, want)
        for key in state:
            np.testing.assert_array_equal(lean_state[key], state[key], err_msg=key)


def test_every_pass_fires_on_the_default_configuration() -> None:
    """A pass that silently stops matching (a new exporter version, a changed model) fails here."""
    graph = copy.deepcopy(step_graph(load_checkpoint(dev_folder("copy_default")).model, lean=False))
    done = graph_passes.lean(graph.graph)
    assert all(count > 0 for count in done.values()), done
    onnx.checker.check_model(graph, full_check=True)


def test_softplus_is_the_identity_from_the_threshold_on() -> None:
    """The premise of fuse_thresholded_softplus: onnxruntime's Softplus returns x itself for x >= 16."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Softplus", ["x"], ["y"])], "softplus", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    rng = np.random.default_rng(0)
    values = np.concatenate([
        np.float32(graph_passes.SOFTPLUS_EXACT_FROM) + rng.random(100_000, dtype=np.float32) * 8,
        np.exp(rng.uniform(np.log(16), np.log(3e38), 100_000)).astype(np.float32),
        np.nextafter(np.float32(graph_passes.SOFTPLUS_EXACT_FROM), np.float32(np.inf), dtype=np.float32)[None],
        np.float32([graph_passes.SOFTPLUS_EXACT_FROM, 20.0, 1e30]),
    ]).astype(np.float32)
    (out,) = session(model, threads=1).run(None, {"x": values})
    np.testing.assert_array_equal(out, values)
