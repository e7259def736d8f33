"""Where the time goes: node counts before and after onnxruntime's optimiser, and its profiler by op type."""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.ort_engine import BoundStep, Options


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, including those inside Scan/Loop/If bodies."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += _nodes(attr.g)
    return out


def node_counts(path: Path, options: Options) -> dict[str, Any]:
    """Nodes (and op types) of the graph as exported and as onnxruntime runs it after optimisation."""
    exported = _nodes(onnx.load(str(path)).graph)
    with tempfile.TemporaryDirectory() as tmp:
        optimised_path = Path(tmp) / "optimised.onnx"
        so = options.session_options()
        so.optimized_model_filepath = str(optimised_path)
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        optimised = _nodes(onnx.load(str(optimised_path)).graph)
    return {
        "exported": len(exported),
        "optimised": len(optimised),
        "exported_ops": dict(collections.Counter(n.op_type for n in exported).most_common()),
        "optimised_ops": dict(collections.Counter(n.op_type for n in optimised).most_common()),
    }


def profile_step(step_path: Path, state: list[np.ndarray], inputs: np.ndarray, options: Options,
                 calls: int) -> dict[str, Any]:
    """Run the step graph `calls` times under onnxruntime's profiler; time per call by op type.

    `outside_kernels_us` is the part of each run not inside any kernel: the executor's own overhead
    per node and per call (the profiler itself adds some).
    """
    with tempfile.TemporaryDirectory() as tmp:
        so = options.session_options()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_profile")
        sess = ort.InferenceSession(str(step_path), so, providers=["CPUExecutionProvider"])
        runner = BoundStep(sess, state, inputs)
        for _ in range(calls):
            runner()
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    run_us, runs = 0.0, 0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op[op] += e["dur"]
            count[op] += 1
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            run_us += e["dur"]
            runs += 1
    runs = max(runs, 1)
    kernels = sum(by_op.values()) / runs
    per_run = run_us / runs
    ops = [{"op": op, "us_per_call": us / runs, "share": us / runs / per_run if per_run else 0.0,
            "nodes": count[op] // runs} for op, us in by_op.most_common()]
    return {"calls": runs, "us_per_call": per_run, "kernels_us": kernels,
            "outside_kernels_us": max(per_run - kernels, 0.0), "ops": ops}
