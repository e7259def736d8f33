"""The one place onnxruntime sessions are made: provider choice, threads and session options.

Used by the server (ntm_serve/runtime/engine.py), the parity checker (ntm_serve/export/runtime.py) and the benchmarks
(benchmarks/ort_engine.py), so all three run the graphs exactly the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDERS = ("cpu", "cuda")  # what callers name a provider; onnxruntime's names are CPU and CUDA above

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderUnavailable(RuntimeError):
    """The requested execution provider did not load (no GPU, missing CUDA/cuDNN libraries, ...)."""


@dataclass(frozen=True)
class SessionSettings:
    """The session options anyone varies. The defaults are the server's: one intra-op thread that does not
    spin (idle cores stay free for gRPC and the other models), every graph optimisation."""

    threads: int = 1  # intra-op threads (0: onnxruntime's default, one per core)
    level: str = "all"  # graph optimisation level, a key of LEVELS
    spinning: bool = False  # session.intra_op.allow_spinning (busy-wait of idle pool threads)
    denormal_as_zero: bool = False  # session.set_denormal_as_zero (flush-to-zero)
    parallel: bool = False  # ORT_PARALLEL execution mode (inter-op threads = 2) instead of sequential
    arena: bool = True  # CPU memory arena
    mem_pattern: bool = True  # memory pattern planning
    log_severity: int = 3  # 3: errors only
    extra: Mapping[str, str] = field(default_factory=dict)  # more session config entries

    def label(self) -> str:
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}"

    def with_threads(self, threads: int) -> SessionSettings:
        return replace(self, threads=threads)

    def options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 2 if self.parallel else 1
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = LEVELS[self.level]
        so.enable_cpu_mem_arena = self.arena
        so.enable_mem_pattern = self.mem_pattern
        so.log_severity_level = self.log_severity
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        so.add_session_config_entry("session.set_denormal_as_zero", "1" if self.denormal_as_zero else "0")
        for key, value in self.extra.items():
            so.add_session_config_entry(key, value)
        return so


SERVER = SessionSettings()
ORT_DEFAULTS = SessionSettings(spinning=True)  # onnxruntime's own defaults, at one thread


def provider_list(provider: str, device_id: int = 0, cuda_graph: bool = False) -> list[Any]:
    """onnxruntime's provider list for 'cpu' or 'cuda'. CUDA runs with TF32 off: it is on by default and
    costs ~1e-3 relative error in MatMul, which the bit-exact and parity checks would see."""
    if provider == "cpu":
        return [CPU]
    if provider == "cuda":
        cuda = {"device_id": str(device_id), "use_tf32": "0", "enable_cuda_graph": "1" if cuda_graph else "0"}
        return [(CUDA, cuda), CPU]
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def open_session(model: str | Path | bytes, provider: str = "cpu", settings: SessionSettings = SERVER,
                 device_id: int = 0, cuda_graph: bool = False,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession on exactly `provider` ('cpu' or 'cuda'); `options` replaces `settings`.

    onnxruntime-gpu lists CUDA as available even when its libraries are missing and then silently runs
    on CPU, so the session's own `get_providers()` is the truth: ProviderUnavailable when CUDA did not load.
    """
    if provider == "cuda" and CUDA not in ort.get_available_providers():
        raise ProviderUnavailable("provider cuda asked for, but this onnxruntime build has no CUDAExecutionProvider")
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, options or settings.options(),
                                   providers=provider_list(provider, device_id, cuda_graph))
    got = session.get_providers()
    if provider == "cuda" and got[0] != CUDA:
        raise ProviderUnavailable(f"provider cuda asked for, but CUDAExecutionProvider did not load (running {got})")
    return session


def provider_name(provider: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider', 'cpu' -> 'CPUExecutionProvider' (what ListModels reports)."""
    return CUDA if provider == "cuda" else CPU
