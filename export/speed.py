"""`python -m export.speed FOLDER`: node counts before/after onnxruntime's graph optimisation and the
per-step latency of torch eager vs onnxruntime (step graph, and sequence graph per step) at batch 1
and 64. A quick look, single-threaded on both sides; the benchmarks package measures properly."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.model_files import GRAPH_FILES, load_checkpoint
from export.parity import onnx_initial_state
from export.runtime import session
from training.state import STATE_NAMES, NTMState

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def count_nodes(graph: onnx.GraphProto) -> Counter[str]:
    """Op-type counts, including the nodes of subgraphs (the Scan body)."""
    counts: Counter[str] = Counter()
    for node in graph.node:
        counts[node.op_type] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                counts.update(count_nodes(attr.g))
    return counts


def optimised_counts(path: Path) -> dict[str, Counter[str]]:
    """Node counts of the graph onnxruntime actually runs, per optimisation level (CPU provider)."""
    out = {"exported": count_nodes(onnx.load(str(path)).graph)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, level in LEVELS.items():
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            options.optimized_model_filepath = str(Path(tmp) / f"{name}.onnx")
            options.log_severity_level = 3  # the 'all' level warns that its saved graph is machine-specific
            session(str(path), "cpu", options)
            out[f"ort {name}"] = count_nodes(onnx.load(options.optimized_model_filepath).graph)
    return out


def time_per_call(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Median seconds per call over ~`seconds` of repeated calls (after a warm-up)."""
    for _ in range(5):
        fn()
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 20:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def latencies(folder: Path, batches: list[int], seconds: float, seq_len: int = 100) -> list[tuple[int, float, float,
                                                                                                   float]]:
    """(batch, torch eager µs/step, onnxruntime step graph µs/step, sequence graph µs/step)."""
    model = load_checkpoint(folder).model
    step = session(str(folder / GRAPH_FILES["step"]), threads=1)
    seq = session(str(folder / GRAPH_FILES["sequence"]), threads=1)
    init = session(str(folder / GRAPH_FILES["initial_state"]), threads=1)
    rows = []
    for batch in batches:
        state = onnx_initial_state(init, batch)
        x = (np.random.default_rng(0).random((batch, model.config.input_size)) < 0.5).astype(np.float32)
        xs = np.repeat(x[None], seq_len, axis=0)
        torch_state = NTMState(*(torch.from_numpy(state[n]) for n in STATE_NAMES))
        torch_x = torch.from_numpy(x)

        def torch_call(s: NTMState = torch_state, xt: torch.Tensor = torch_x) -> object:
            with torch.no_grad():
                logits, _ = model.step(xt, s)
                return torch.sigmoid(logits)

        feeds = {"input": x, **state}
        seq_feeds = {"inputs": xs, **state}
        t_torch = time_per_call(torch_call, seconds)
        t_step = time_per_call(lambda f=feeds: step.run(None, f), seconds)
        t_seq = time_per_call(lambda f=seq_feeds: seq.run(None, f), seconds) / seq_len
        rows.append((batch, t_torch * 1e6, t_step * 1e6, t_seq * 1e6))
    return rows


def main(argv: list[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the module docstring's first paragraph
    parser = argparse.ArgumentParser(prog="python -m export.speed", description=summary)
    parser.add_argument("folder", type=Path, metavar="FOLDER")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print(f"## {args.folder}: onnxruntime {ort.__version__}, torch {torch.__version__}, 1 thread each\n")
    print("| graph | exported | ort basic | ort extended | ort all | most common ops (ort all) |")
    print("|---|---:|---:|---:|---:|---|")
    for name in ("step", "sequence"):
        counts = optimised_counts(args.folder / GRAPH_FILES[name])
        common = ", ".join(f"{op} {n}" for op, n in counts["ort all"].most_common(6))
        totals = " | ".join(str(sum(c.values())) for c in counts.values())
        print(f"| {name} | {totals} | {common} |")
    print("\n| batch | torch eager µs/step | ort step graph µs/step | ort sequence graph µs/step (T=100) |")
    print("|---:|---:|---:|---:|")
    for batch, t_torch, t_step, t_seq in latencies(args.folder, args.batches, args.seconds):
        print(f"| {batch} | {t_torch:.0f} | {t_step:.0f} | {t_seq:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
