"""Where the time goes: node counts before and after onnxruntime's optimiser, and its profiler by op type."""

from __future__ import annotations

import collections
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks.ort_engine import BoundStep
from ntm_serve.runtime.ort_session import SessionSettings, open_session


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, including those inside Scan/Loop/If bodies."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += _nodes(attr.g)
    return out


def node_counts(path: Path, settings: SessionSettings) -> dict[str, Any]:
    """Nodes (and op types) of the graph as exported and as onnxruntime runs it after optimisation."""
    exported = _nodes(onnx.load(str(path)).graph)
    with tempfile.TemporaryDirectory() as tmp:
        optimised_path = Path(tmp) / "optimised.onnx"
        so = settings.options()
        so.optimized_model_filepath = str(optimised_path)
        open_session(path, "cpu", options=so)
        optimised = _nodes(onnx.load(str(optimised_path)).graph)
    return {
        "exported": len(exported),
        "optimised": len(optimised),
        "exported_ops": dict(collections.Counter(n.op_type for n in exported).most_common()),
        "optimised_ops": dict(collections.Counter(n.op_type for n in optimised).most_common()),
    }


def profile_step(step_path: Path, state: list[np.ndarray], inputs: np.ndarray, settings: SessionSettings,
                 calls: int, warmup: int = 10) -> dict[str, Any]:
    """Run the step graph `warmup + calls` times under onnxruntime's profiler; time per call by op type
    over the last `calls` runs.

    Figures are medians (per node, and of whole runs). `outside_kernels_us` is the part of a run not
    inside any kernel: the executor's own overhead per node and per call (the profiler adds some).
    """
    with tempfile.TemporaryDirectory() as tmp:
        so = settings.options()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_profile")
        sess = open_session(step_path, "cpu", options=so)
        runner = BoundStep(sess, state, inputs)
        for _ in range(warmup + calls):
            runner()
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs_ts = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept = runs_ts[warmup:]  # the first runs plan allocations and fill caches: not what steady state costs
    since = kept[0][0] if kept else float("inf")
    durations: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= since:
            durations[e["name"]].append(e["dur"])
            op_of[e["name"]] = e["args"]["op_name"]
    # Medians, per node and per run: a run preempted by another process must not count as slow kernels.
    by_op: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for node, durs in durations.items():
        by_op[op_of[node]] += statistics.median(durs)
        count[op_of[node]] += 1
    runs = len(kept)
    per_run = statistics.median(dur for _, dur in kept) if kept else 0.0
    kernels = float(sum(by_op.values()))
    ops = [{"op": op, "us_per_call": us, "share": us / per_run if per_run else 0.0, "nodes": count[op]}
           for op, us in by_op.most_common()]
    return {"calls": runs, "us_per_call": per_run, "kernels_us": kernels,
            "outside_kernels_us": max(per_run - kernels, 0.0), "ops": ops}
