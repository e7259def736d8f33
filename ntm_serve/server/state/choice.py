"""Which `SessionKeeping` the flags ask for (deciding: `keeping_mode`, a pure function of the config), and that
keeping built for a server (doing: `keeping_for`). Called once, at start-up (ntm_serve/server/server.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ntm_serve.server.state.keeping import Futures, LoopJobs, MemoryKeeping, SessionKeeping
from ntm_serve.server.state.snapshot_keeping import SnapshotKeeping
from ntm_serve.server.state.store_keeping import StoreKeeping

if TYPE_CHECKING:
    from ntm_serve.server.config import ServiceConfig
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.registry import ModelSet
    from ntm_serve.server.sessions import SessionRegistry
    from ntm_serve.server.state.store import SessionStore

Mode = Literal["memory", "snapshots", "store"]


def keeping_mode(config: ServiceConfig) -> Mode:
    """Which keeping the flags ask for (the config refuses --store-url with --state-dir)."""
    if config.store_url:
        return "store"
    if config.state_dir is not None:
        return "snapshots"
    return "memory"


def keeping_for(config: ServiceConfig, *, registry: SessionRegistry, models: ModelSet, metrics: Metrics,
                inbox: Futures, store: SessionStore | None = None) -> SessionKeeping:
    """The keeping the flags ask for, built (not started). `store`: the shared store, opened and checked by the
    caller before the models were loaded (replica mode). Raises StateDirError for an unusable --state-dir."""
    jobs = LoopJobs(registry, inbox)
    mode = keeping_mode(config)
    if mode == "store":
        if store is None:
            raise ValueError("replica mode (--store-url) needs its opened session store")
        return StoreKeeping.build(config, store, jobs, models, metrics)
    if mode == "snapshots":
        return SnapshotKeeping.build(config, jobs, models, metrics)
    return MemoryKeeping(jobs, metrics)
