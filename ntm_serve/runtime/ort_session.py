"""The one place onnxruntime sessions are made: provider choice, threads and session options.

Used by the server (ntm_serve/runtime/engine.py), the parity checker (ntm_serve/export/runtime.py) and the benchmarks
(benchmarks/ort_engine.py), so all three run the graphs exactly the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator, Mapping
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
    """The requested execution provider did not load (no GPU, missing CUDA/cuDNN libraries, ...); `why` is the
    reason alone, for messages that say themselves what was asked."""

    def __init__(self, why: str) -> None:
        super().__init__(f"provider cuda asked for, but {why}")
        self.why = why


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

    onnxruntime-gpu lists CUDA as available even with no GPU or no CUDA libraries; asked for it, it prints a red
    error and silently runs on CPU. So CUDA is first checked without onnxruntime (cuda_blocker), then opened with
    onnxruntime's logger quiet, and the session's own `get_providers()` is the truth: ProviderUnavailable, with
    the reason, when CUDA did not load.
    """
    source = str(model) if isinstance(model, Path) else model
    if provider != "cuda":
        return ort.InferenceSession(source, options or settings.options(), providers=provider_list(provider))
    blocker = cuda_blocker(device_id)
    if blocker is not None:
        raise ProviderUnavailable(f"CUDA cannot run here: {blocker}")
    with _quiet_onnxruntime():
        session = ort.InferenceSession(source, options or settings.options(),
                                       providers=provider_list(provider, device_id, cuda_graph))
    got = session.get_providers()
    if got[0] != CUDA:
        why = _cuda_library_error() or "see onnxruntime's CUDA requirements (CUDA 13, cuDNN 9)"
        raise ProviderUnavailable(f"CUDAExecutionProvider did not load ({why})")
    return session


def cuda_blocker(device_id: int = 0) -> str | None:
    """Why CUDA cannot run in this process, found without asking onnxruntime (whose failed attempt logs an error
    and a warning to stderr); None when nothing here rules it out (opening a session then has the last word)."""
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return _driver_blocker(device_id)


@functools.cache
def _driver_blocker(device_id: int) -> str | None:
    """The NVIDIA driver's answer (libcuda, cuInit, the device count); cached: it does not change in a process."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" with CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    code = driver.cuInit(0)
    if code == 100:  # CUDA_ERROR_NO_DEVICE
        return f"the NVIDIA driver sees no GPU{where}"
    if code != 0:
        return f"the NVIDIA driver did not start (cuInit error {code}){where}"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or device_id >= count.value:
        return f"device {device_id} asked for, {count.value} GPU(s) visible{where}"
    return None


def _cuda_library_error() -> str | None:
    """The loader's reason onnxruntime's CUDA provider library does not load (e.g. 'libcublasLt.so.13: cannot
    open shared object file'), or None when it loads; only asked after a failed session, for the message."""
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(library))
    except OSError as err:
        return str(err)
    return None


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's process-wide logger at FATAL while CUDA is tried (its failure is reported by our exception,
    not a red error line), then back to onnxruntime's default, WARNING (it has no getter to restore from)."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def provider_name(provider: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider', 'cpu' -> 'CPUExecutionProvider' (what ListModels reports)."""
    return CUDA if provider == "cuda" else CPU
