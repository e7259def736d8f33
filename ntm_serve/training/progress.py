"""Training progress: a tqdm bar on a terminal, periodic plain lines in a log file.

tqdm redraws with carriage returns; when stderr is a file every redraw becomes a new line (a
12-minute run left megabytes of them). Off a terminal we log one line every `interval_s` instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("training")


class Progress:
    """`update(n, **stats)` after each batch; `close()` at the end."""

    def __init__(self, total: int, initial: int, enabled: bool = True, interval_s: float = 30.0,
                 terminal: bool | None = None) -> None:
        self.total, self.done, self.interval_s = total, initial, interval_s
        self.enabled = enabled
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, initial=initial, unit="seq", dynamic_ncols=True) if enabled and terminal else None
        self.started = self.last_line = time.monotonic()
        self.started_at = initial

    def update(self, n: int, **stats: Any) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(**stats)
            return
        now = time.monotonic()
        if self.enabled and now - self.last_line >= self.interval_s:
            self.last_line = now
            rate = (self.done - self.started_at) / max(now - self.started, 1e-9)
            fields = " ".join(f"{k}={v}" for k, v in stats.items())
            log.info("%d/%d sequences (%.0f%%), %.1f seq/s, %s", self.done, self.total,
                     100.0 * self.done / max(self.total, 1), rate, fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
