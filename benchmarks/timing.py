"""Interleaved timing: every contender runs one round in turn, so background load hits all alike.

Each round times `calls` back-to-back calls with the wall clock and the process CPU clock. The
median over rounds is the figure; the CPU time per call shows how much of a wall time was the
process's own work (on a busy machine wall time includes waiting for a core).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TimingPlan:
    rounds: int  # rounds per contender, interleaved
    round_s: float  # target wall time of one round (calls are calibrated to it)
    warmup_calls: int  # untimed calls before calibration
    max_calls: int = 100_000  # cap on calls per round


QUICK = TimingPlan(rounds=2, round_s=0.02, warmup_calls=2)
FULL = TimingPlan(rounds=7, round_s=0.25, warmup_calls=10)


@dataclass
class Contender:
    """One thing to time: `call()` does one unit of work that advances `steps` session-steps."""

    name: str
    call: Callable[[], object]
    steps: int  # session-steps per call (batch x time steps)
    before: Callable[[], object] | None = None  # run before each round (e.g. set torch's thread count)
    calls: int = 0  # calibrated calls per round
    wall: list[float] = field(default_factory=list)  # seconds per call, one entry per round
    cpu: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Timing:
    """Seconds per call (median and best round), CPU seconds per call, session-steps per call."""

    wall_s: float
    best_s: float
    cpu_s: float
    steps: int
    calls: int
    rounds: int

    @property
    def per_step_s(self) -> float:
        return self.wall_s / self.steps

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s

    def to_json(self) -> dict[str, float | int]:
        return {"wall_us_per_call": self.wall_s * 1e6, "best_us_per_call": self.best_s * 1e6,
                "cpu_us_per_call": self.cpu_s * 1e6, "us_per_session_step": self.per_step_s * 1e6,
                "session_steps_per_s": self.steps_per_s, "steps_per_call": self.steps,
                "calls_per_round": self.calls, "rounds": self.rounds}


def _time(call: Callable[[], object], calls: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def calibrate(contender: Contender, plan: TimingPlan) -> None:
    """Warm up, then pick the number of calls that fills one round."""
    if contender.before is not None:
        contender.before()
    for _ in range(plan.warmup_calls):
        contender.call()
    per_call, _ = _time(contender.call, 1)
    if per_call < plan.round_s / 10:  # a single call is too short to calibrate on: time a few
        per_call, _ = _time(contender.call, max(1, int(plan.round_s / 10 / max(per_call, 1e-7))))
    contender.calls = max(1, min(plan.max_calls, int(plan.round_s / max(per_call, 1e-9))))


def measure(contenders: Sequence[Contender], plan: TimingPlan) -> dict[str, Timing]:
    """Time every contender, interleaved round by round; returns name -> Timing."""
    for c in contenders:
        calibrate(c, plan)
    for _ in range(plan.rounds):
        for c in contenders:
            if c.before is not None:
                c.before()
            wall, cpu = _time(c.call, c.calls)
            c.wall.append(wall)
            c.cpu.append(cpu)
    return {
        c.name: Timing(statistics.median(c.wall), min(c.wall), statistics.median(c.cpu), c.steps, c.calls, plan.rounds)
        for c in contenders
    }
