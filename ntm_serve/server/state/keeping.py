"""How sessions are kept beyond their rows on the device: one `SessionKeeping`, chosen once at start-up from
the flags (`keeping_for`), which every RPC handler calls the same way whatever the mode.

- `MemoryKeeping` (no flag): sessions live in this process only; a restart loses them.
- `SnapshotKeeping` (`--state-dir`, state/snapshot_keeping.py): as memory, plus snapshots of changed sessions
  every `--snapshot-interval-s` and at shutdown, restored at start-up and when a model version is loaded.
- `StoreKeeping` (`--store-url`, state/store_keeping.py): the shared store is the source of truth; a session is
  taken over on its first call here and every answered step is committed (state/replica.py).

Which one the flags ask for, and building it: state/choice.py (`keeping_mode`, `keeping_for`).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ntm_serve.server.jobs import ControlJob
from ntm_serve.server.sessions import Done, MakeJob, MakePack, SessionRecord, SessionRegistry, init_action

if TYPE_CHECKING:
    import numpy as np

    from ntm_serve.api.errors import ServiceError
    from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
    from ntm_serve.server.jobs import PackOutcome, StepOutcome
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.registry import Key, ServedModel

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCAL_DRAIN = ("server stopping: every request it read from this stream was answered and applied, no other; "
               "resend the unanswered ones when it is back")


class Futures(Protocol):
    """The servicer's LoopInbox, as the keepers see it (ntm_serve/server/servicer.py)."""

    def future(self) -> tuple[asyncio.Future[Any], Done]: ...


class LoopJobs:
    """Jobs on a session's model batcher (in the session's order), awaited on the event loop."""

    def __init__(self, registry: SessionRegistry, inbox: Futures) -> None:
        self.registry = registry
        self.inbox = inbox

    async def control(self, session: SessionRecord, action: Callable[..., T]) -> T:
        """Run `action` on the row of a record already in hand (its create or take-over)."""
        future, done = self.inbox.future()
        self.registry.submit_to(session, lambda s, d: ControlJob(s, action, d), done)
        return await future

    async def close(self, session_id: str, owner: str) -> None:
        """Delete: the id answers NOT_FOUND at once; returns once the row is freed."""
        future, done = self.inbox.future()
        self.registry.close(session_id, owner, done)
        await future


class SessionKeeping(ABC):
    """Where sessions live and how their changes are kept. Request calls run on the event loop; `restore` and
    `stop_background` on a thread (at start-up, on a model load, at shutdown)."""

    drain_message: str = LOCAL_DRAIN  # how a stream ended by SIGTERM says what to do
    replica_name: str | None = None  # this server's name in the shared store (replica mode only)

    # --- the RPC handlers' calls ----------------------------------------------------------------------

    @abstractmethod
    async def create(self, model: ServedModel, ttl_seconds: float, owner: str,
                     state: dict[str, np.ndarray] | None = None, steps: int = 0, group: str = "",
                     memory_rows: int = 0) -> SessionRecord:
        """A new session on `model` (CreateSession: the initial state; ImportSession: `state` after `steps`), in
        placement group `group`, of memory size `memory_rows` (both checked by the caller; "" for none, 0 for the
        trained N)."""

    @abstractmethod
    async def ensure_local(self, session_id: str, owner: str) -> None:
        """Before a read (GetSession, ExportSession): the session's current state is here."""

    @abstractmethod
    async def prepare_step(self, request: ntm_pb2.StepRequest, owner: str) -> StepOutcome | None:
        """Before a step is queued; the recorded answer when the request is a retry already applied."""

    @abstractmethod
    def committing(self, make: MakeJob, request_id: str) -> MakeJob:
        """The step job to queue: `make`, or `make` with its answer kept first."""

    @abstractmethod
    def moved(self, session_id: str, err: ServiceError) -> ServiceError | None:
        """The answer to a step refused with `err` when queued, if not `err` itself (None)."""

    @abstractmethod
    async def delete(self, session_id: str, owner: str) -> None:
        """DeleteSession: the session is gone everywhere it was kept."""

    @abstractmethod
    async def prepare_pack(self, request: ntm_pb2.PackedStepRequest, owner: str) -> PackOutcome | None:
        """Before a packed message is checked and queued (its sessions are here: a replica takes them over); the
        recorded answer when the message is a retry already applied. Raises a ServiceError (a PackError naming
        entries) for a message this keeping does not serve."""

    @abstractmethod
    def committing_pack(self, make: MakePack, request_id: str) -> MakePack:
        """The packed job to queue: `make`, or `make` with its answer kept first (every entry, as one unit)."""

    @abstractmethod
    def moved_pack(self, err: ServiceError) -> ServiceError | None:
        """The answer to a packed message refused with `err` when queued, if not `err` itself (None)."""

    # --- the server's calls ---------------------------------------------------------------------------

    @abstractmethod
    def restore(self, only: Key | None = None) -> None:
        """Bring back kept sessions: every one at start-up, or those of the version `only` just loaded. Runs
        before the batchers of the engines concerned start."""

    @abstractmethod
    def start(self) -> None:
        """Begin background work (the batchers run)."""

    @abstractmethod
    def stop_background(self) -> None:
        """End background work that reads through the batchers; called before they stop."""

    @abstractmethod
    async def close(self, batchers_ran: bool) -> None:
        """After the batchers stopped: keep what is not kept yet, and let go of files and connections."""


class MemoryKeeping(SessionKeeping):
    """Sessions in this process only: what every handler did before any persistence flag."""

    def __init__(self, jobs: LoopJobs, metrics: Metrics) -> None:
        self.jobs = jobs
        self.registry = jobs.registry
        self.metrics = metrics

    async def create(self, model: ServedModel, ttl_seconds: float, owner: str,
                     state: dict[str, np.ndarray] | None = None, steps: int = 0, group: str = "",
                     memory_rows: int = 0) -> SessionRecord:
        session = self.registry.open(model.spec.name, ttl_seconds, owner, model.spec.checkpoint_sha256, group,
                                     memory_rows or model.spec.trained_rows)
        session.steps = steps
        try:
            await self.jobs.control(session, init_action(state))
        except BaseException:  # includes the caller cancelling: nobody knows the id, so drop it
            self.registry.discard(session)
            raise
        if state is None:
            self.metrics.sessions_created.labels(session.model, "create").inc()
            log.info("session created", extra={"session": session.id, "model": session.model,
                                               "version": model.version, "ttl_s": session.ttl_s,
                                               "memory_rows": session.memory_rows})
        else:
            self.metrics.sessions_created.labels(session.model, "import").inc()
            log.info("session imported", extra={"session": session.id, "model": session.model,
                                                "steps": session.steps})
        return session

    async def ensure_local(self, session_id: str, owner: str) -> None:
        return None

    async def prepare_step(self, request: ntm_pb2.StepRequest, owner: str) -> StepOutcome | None:
        return None

    def committing(self, make: MakeJob, request_id: str) -> MakeJob:
        return make

    def moved(self, session_id: str, err: ServiceError) -> ServiceError | None:
        return None

    async def delete(self, session_id: str, owner: str) -> None:
        await self.jobs.close(session_id, owner)

    async def prepare_pack(self, request: ntm_pb2.PackedStepRequest, owner: str) -> PackOutcome | None:
        return None

    def committing_pack(self, make: MakePack, request_id: str) -> MakePack:
        return make

    def moved_pack(self, err: ServiceError) -> ServiceError | None:
        return None

    def restore(self, only: Key | None = None) -> None:
        return None

    def start(self) -> None:
        return None

    def stop_background(self) -> None:
        return None

    async def close(self, batchers_ran: bool) -> None:
        return None
