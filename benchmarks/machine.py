"""What a figure was measured on: CPU model, cores, load average, library versions.

Figures taken on a busy machine are distorted; the load average before and after each benchmark
goes into its JSON so a reader can tell.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BUSY_LOAD = 0.7  # 1-minute load average above which figures are flagged as measured on a busy machine


def cpu_model() -> str:
    """`lscpu`'s model name, else /proc/cpuinfo's, else platform's guess."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
        match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name from nvidia-smi, or None where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip().splitlines()
    return name[0].strip() if out.returncode == 0 and name else None


def describe() -> dict[str, Any]:
    """Everything about the machine a reader needs to compare figures."""
    return {
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("onnxruntime-gpu", "onnxruntime", "torch", "grpcio", "numpy")},
    }


def load_note(before: list[float], after: list[float]) -> str:
    """One line for tables: the load average around the measurement, flagged when the machine was busy."""
    if not before:
        return "load average unknown"
    peak = max(before[0], after[0] if after else 0.0)
    text = f"1-min load average {before[0]:.2f} before, {after[0] if after else float('nan'):.2f} after"
    if peak > BUSY_LOAD:
        text += " (BUSY machine: other processes competed for the cores; figures are distorted)"
    return text
