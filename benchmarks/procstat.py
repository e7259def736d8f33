"""CPU time and resident memory of a process from /proc (psutil is not a dependency)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_SWITCHES = ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces; fields start after ')'
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), 0-based after the name
    return (utime + stime) / _TICKS


def context_switches(pid: int) -> int:
    """Context switches of every thread of the process so far, voluntary and not (/proc/<pid>/task/*/status): how
    often its threads gave up or lost the core, e.g. handing a message from one thread to another."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in lines if line.split(":")[0] in _SWITCHES)
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) in bytes, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class CpuMeter:
    """CPU cores a process kept busy between start() and stop() (1.0 = one core fully busy)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu = 0.0
        self._wall = 0.0

    def start(self) -> None:
        self._cpu, self._wall = cpu_seconds(self.pid), time.perf_counter()

    def stop(self) -> float:
        return (cpu_seconds(self.pid) - self._cpu) / max(time.perf_counter() - self._wall, 1e-9)
