"""Launches per step, counted by onnxruntime's own profiler on the server's CUDA-graph path
(ntm_serve/runtime/cuda_graphs.py).

Plain onnxruntime has no kernel tracer here (no torch.profiler, no CUPTI hook of ours), but its profiler
(`enable_profiling`) writes one `Node` event per node the executor runs, with the node's provider, and, in builds
made with CUDA profiling, one `Kernel` event per CUDA kernel. So:
- without CUDA graphs the launches of a step are at least its CUDA nodes (a node launches one kernel or more;
  `Kernel` events, where the build records them, give the exact count);
- under CUDA graphs a replayed step runs no node: it is one graph launch.

Counting: two fresh profiled runs of the same path, `base` and `base + steps` steps after the capture; the
difference of their events over `steps` is what one steady-state step costs (capture and warm-up cancel out, so
nothing depends on how onnxruntime labels its capture runs). Node counts that do not drop to zero under graphs
mean onnxruntime did not replay, and the table says so. Both paths also copy the inputs up and the outputs
down once per step, outside the run.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ort_engine import DEFAULT, BucketStep, bucket_steps, copy_task_inputs

KERNEL = "(kernel events)"  # the key of the Kernel events in a count


@dataclass(frozen=True)
class Launches:
    nodes: dict[str, float]  # provider -> nodes the executor ran per steady-state step
    kernels: float | None  # CUDA kernel events per step; None when this build records none

    @property
    def replayed(self) -> bool:
        """No node ran in the steady state: each step was a replay of a captured graph."""
        return not any(round(n) for n in self.nodes.values())

    def cell(self, provider: str, cuda_graph: bool) -> str:
        if cuda_graph and self.replayed:
            return "1 graph launch"
        text = f"{self.nodes.get(provider, 0):.0f} nodes"
        text += f", {self.kernels:.0f} kernels" if self.kernels is not None else ""
        return text + (" (NOT replayed)" if cuda_graph else "")

    def to_json(self) -> dict[str, Any]:
        return {"nodes_per_step": self.nodes, "kernels_per_step": self.kernels, "replayed": self.replayed}


def events_by_kind(events: list[dict[str, Any]]) -> Counter[str]:
    """Node events by provider, and Kernel events (under KERNEL), in one onnxruntime profile."""
    out: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            out[e.get("args", {}).get("provider", "?")] += 1
        elif e.get("cat") == "Kernel":
            out[KERNEL] += 1
    return out


def per_step(base: Counter[str], more: Counter[str], steps: int) -> Launches:
    """Launches per step from the counts of two runs `steps` steps apart."""
    kinds = (set(base) | set(more)) - {KERNEL}
    kernels = (more[KERNEL] - base[KERNEL]) / steps if KERNEL in more else None
    return Launches({p: (more[p] - base[p]) / steps for p in kinds}, kernels)


def _profile(folder: Path, batch: int, buckets: tuple[int, ...], device: str, cuda_graph: bool,
             steps: int) -> Counter[str]:
    with tempfile.TemporaryDirectory() as tmp:
        options = DEFAULT.options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "launches")
        made = bucket_steps(folder, buckets, device, cuda_graph, options)  # the server's path, captured
        width = made.session.get_inputs()[0].shape[-1]
        runner = BucketStep(made, copy_task_inputs(np.random.default_rng(batch), 8, batch, width), device)
        for _ in range(steps):
            runner()
        return events_by_kind(json.loads(Path(made.session.end_profiling()).read_text()))


def launches(folder: Path, batch: int, buckets: tuple[int, ...], device: str, cuda_graph: bool,
             steps: int = 20, base: int = 3) -> Launches:
    """What one steady-state step of `batch` sessions launches on the server's bucketed path."""
    return per_step(_profile(folder, batch, buckets, device, cuda_graph, base),
                    _profile(folder, batch, buckets, device, cuda_graph, base + steps), steps)
