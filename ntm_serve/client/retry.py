"""The client's retry policy: which failures are retried, how long it waits, and what it saw (for reports).

A step is retried only with `expect_steps` (the session's acknowledged step count): the server applies it
only where the session stands at exactly that count, and a replica answers a retry of a request whose
commit landed but whose answer was lost from the store's record of it. So a retry never applies a step
twice, and a replica crash is invisible to the client except for latency.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import grpc

# Refusals a retry can fix: the replica is draining / down / lacks the weights (UNAVAILABLE); the session was
# taken over or its commit failed, nothing applied (ABORTED).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
# A call (not a stream's in-band answer) can also end CANCELLED when the server stops under it: a stopping server's
# transport resets calls that arrive as it closes (seen in one restart in three here), and the client cancels
# nothing itself. Retried too: a retried step carries expect_steps, so it is never applied twice.
RETRYABLE_CALL = RETRYABLE | {grpc.StatusCode.CANCELLED}
# A stream that breaks in transit (a replica killed under a proxy resets it: INTERNAL / UNKNOWN / CANCELLED
# depending on where the reset lands): resumed like the above, since every resent request carries expect_steps.
STREAM_BREAKS = RETRYABLE_CALL | {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 50  # tries after the first, per request (or per stream resumption)
    initial_s: float = 0.05
    max_s: float = 1.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return random.uniform(0, min(self.max_s, self.initial_s * 2 ** attempt))


DEFAULT_RETRY = RetryPolicy()


@dataclass
class RetryStats:
    """What the client lived through: retries, outages (a run of failures ended by a success) and how long
    each lasted (time to recover)."""

    retries: int = 0
    outages: list[float] = field(default_factory=list)  # seconds from the first failure to the next success
    codes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)  # "CODE: the start of the message" -> count
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, code: grpc.StatusCode, detail: str = "") -> None:
        reason = f"{code.name}: {detail[:72]}"
        with self._lock:
            self.retries += 1
            self.codes[code.name] = self.codes.get(code.name, 0) + 1
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def recovered(self, since: float) -> None:
        with self._lock:
            self.outages.append(time.monotonic() - since)
