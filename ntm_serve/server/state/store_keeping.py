"""`--store-url` (replica mode): sessions live in the shared store, this replica serves the ones whose calls it
gets (state/replica.py: take-over, commits, fencing); this module is that `Replica` behind `SessionKeeping`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

import grpc

from ntm_serve.api.errors import PackError, ServiceError
from ntm_serve.server.state.keeping import LoopJobs, SessionKeeping
from ntm_serve.server.state.replica import Replica

if TYPE_CHECKING:
    import numpy as np

    from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
    from ntm_serve.server.config import ServiceConfig
    from ntm_serve.server.jobs import PackOutcome, StepOutcome
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.registry import Key, ModelSet, ServedModel
    from ntm_serve.server.sessions import MakeJob, MakePack, SessionRecord
    from ntm_serve.server.state.store import SessionStore

log = logging.getLogger(__name__)

REPLICA_DRAIN = ("replica draining: reopen the stream (the proxy routes it to another replica) and resend the "
                 "unanswered requests")


def replica_name(config: ServiceConfig) -> str:
    """This replica's name in the store and logs: --replica-name, else host:pid."""
    return config.replica_name or f"{socket.gethostname()}:{os.getpid()}"


class StoreKeeping(SessionKeeping):
    drain_message = REPLICA_DRAIN

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.replica_name = replica.name
        self._started = False

    @classmethod
    def build(cls, config: ServiceConfig, store: SessionStore, jobs: LoopJobs, models: ModelSet,
              metrics: Metrics) -> StoreKeeping:
        return cls(Replica(store, jobs.registry, models, metrics, jobs.control, name=replica_name(config),
                           commit_every=config.commit_every))

    # --- the RPC handlers' calls ----------------------------------------------------------------------

    async def create(self, model: ServedModel, ttl_seconds: float, owner: str,
                     state: dict[str, np.ndarray] | None = None, steps: int = 0, group: str = "",
                     memory_rows: int = 0) -> SessionRecord:
        return await self.replica.create(model, ttl_seconds, owner, state, steps, group, memory_rows=memory_rows)

    async def ensure_local(self, session_id: str, owner: str) -> None:
        await self.replica.ensure_local(session_id, owner, verify=True)  # a read never answers from a stale copy

    async def prepare_step(self, request: ntm_pb2.StepRequest, owner: str) -> StepOutcome | None:
        return await self.replica.prepare_step(request, owner)

    def committing(self, make: MakeJob, request_id: str) -> MakeJob:
        return self.replica.committing(make, request_id)

    def moved(self, session_id: str, err: ServiceError) -> ServiceError | None:
        """Dropped between its take-over and now (a failed commit): the client retries with expect_steps."""
        return self.replica.moved(session_id) if err.code == grpc.StatusCode.NOT_FOUND else None

    async def delete(self, session_id: str, owner: str) -> None:
        await self.replica.delete(session_id, owner)

    async def prepare_pack(self, request: ntm_pb2.PackedStepRequest, owner: str) -> PackOutcome | None:
        """One group's sessions (INVALID_ARGUMENT naming the others), each taken over here; or the recorded answer."""
        return await self.replica.prepare_pack(request, owner)

    def committing_pack(self, make: MakePack, request_id: str) -> MakePack:
        return self.replica.committing_pack(make, request_id)

    def moved_pack(self, err: ServiceError) -> ServiceError | None:
        """Entries whose session was dropped between its take-over and now: the client retries with expect_steps."""
        if not isinstance(err, PackError) or not any(e.code == grpc.StatusCode.NOT_FOUND for e in err.entries.values()):
            return None
        return PackError({e: ServiceError(grpc.StatusCode.ABORTED, f"{why.message}: dropped by this replica (taken "
                                          "over elsewhere, or its commit failed); retry with expect_steps")
                          if why.code == grpc.StatusCode.NOT_FOUND else why for e, why in err.entries.items()},
                         err.count)

    # --- the server's calls ---------------------------------------------------------------------------

    def restore(self, only: Key | None = None) -> None:
        return None  # sessions are taken over from the store on their first call

    def start(self) -> None:
        self.replica.start()
        self._started = True

    def stop_background(self) -> None:
        return None

    async def close(self, batchers_ran: bool) -> None:
        """Commit what was answered and not committed yet (--commit-every > 1), then close the store."""
        flushed = None
        if self._started:
            flushed = await asyncio.get_running_loop().run_in_executor(None, self.replica.flush)
        self.replica.close()
        await self.replica.store.aclose()
        if flushed is not None:
            log.info("drained", extra={"flushed": flushed, "sessions": self.replica.registry.count()})
