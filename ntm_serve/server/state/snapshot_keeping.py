"""`--state-dir`: sessions served as in memory, and snapshotted to files (state/snapshots.py) every
`--snapshot-interval-s` and at shutdown; restored at start-up and when their model version is loaded."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

from ntm_serve.server.state.keeping import LoopJobs, MemoryKeeping
from ntm_serve.server.state.snapshots import SnapshotStore, Snapshotter

if TYPE_CHECKING:
    from ntm_serve.server.config import ServiceConfig
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.registry import Key, ModelSet

log = logging.getLogger(__name__)


class SnapshotKeeping(MemoryKeeping):
    def __init__(self, jobs: LoopJobs, metrics: Metrics, snapshotter: Snapshotter) -> None:
        super().__init__(jobs, metrics)
        self.snapshotter = snapshotter

    @classmethod
    def build(cls, config: ServiceConfig, jobs: LoopJobs, models: ModelSet, metrics: Metrics) -> SnapshotKeeping:
        """Lock the state directory (StateDirError when it cannot be used) and snapshot the registry into it."""
        assert config.state_dir is not None
        files = SnapshotStore(config.state_dir)
        return cls(jobs, metrics, Snapshotter(files, jobs.registry, models.engines, metrics,
                                              config.snapshot_interval_s))

    def restore(self, only: Key | None = None) -> None:
        self.snapshotter.restore(only=only)

    def start(self) -> None:
        self.snapshotter.start()

    def stop_background(self) -> None:
        self.snapshotter.stop()

    async def close(self, batchers_ran: bool) -> None:
        """The final pass (every session changed since the last one, read from the stopped engines), then the
        directory's lock is released."""
        if batchers_ran:
            written = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self.snapshotter.run_pass, live=False))
            log.info("final snapshot", extra={"written": written, "sessions": self.registry.count()})
        self.snapshotter.store.close()
