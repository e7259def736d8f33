"""Packed messages (StreamPackedSteps): T steps for each of E sessions in one message, checked whole before
anything is queued, run as one unit (a `PackJob`: one row per session in the same step calls), answered whole.

Why it exists: Python gRPC's own cost per message is several times the engine's cost per session-step at 1-step
messages (docs/performance.md, "Packed steps"); a message that carries many sessions' steps shares that cost.
The rules (docs/service.md, "Packed steps"): one model version per message, each session once, one inputs
tensor [E, T, I]; a message with any refused entry is refused whole, each entry with its own status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
import numpy as np
from google.rpc import status_pb2

from ntm_serve.api.errors import PackError, ServiceError, invalid
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tensors import check_answer_size, nonfinite_entries, packed_inputs, to_tensor
from ntm_serve.server.jobs import PackOutcome
from ntm_serve.server.registry import ServedModel
from ntm_serve.server.sessions import SessionRecord

NOT_APPLIED = status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0],
                                message="not applied: another entry of the message was refused (see error)")


@dataclass(frozen=True)
class CheckedPack:
    """A packed message that passed every check: what its PackJob is made of."""

    sessions: tuple[SessionRecord, ...]  # E, entry order
    model: ServedModel
    inputs: np.ndarray  # (E, T, I) float32
    expect_steps: tuple[int | None, ...]


def _sessions(found: Sequence[SessionRecord | ServiceError], served: Callable[[SessionRecord], ServedModel]
              ) -> tuple[dict[int, ServiceError], ServedModel | None]:
    """Entry -> why, for entries whose session is unknown, someone else's, named twice, or on another model
    version or memory size than the first good entry's; and that model (None when no entry has a session)."""
    if found and all(isinstance(s, SessionRecord) for s in found):  # the usual message, checked in bulk
        sessions = cast(Sequence[SessionRecord], found)
        if len({(s.key, s.memory_rows) for s in sessions}) == 1 and len({s.id for s in sessions}) == len(sessions):
            try:
                return {}, served(sessions[0])
            except ServiceError:
                pass  # the entry-by-entry pass below says which entries, and why
    refused: dict[int, ServiceError] = {}
    seen: dict[str, int] = {}
    model: ServedModel | None = None
    key = None  # the model's key: a session on the same version is served by the same model (one lookup per key)
    first = -1
    rows = 0  # the first good entry's memory size: one step call runs one size
    for e, session in enumerate(found):
        if isinstance(session, ServiceError):
            refused[e] = session
            continue
        if session.id in seen:
            refused[e] = invalid(f"session {session.id} is in entry {seen[session.id]} already: a message steps "
                                 "each session once")
            continue
        seen[session.id] = e
        if session.key == key:
            if session.memory_rows != rows:
                refused[e] = _other_size(session, rows, first)
            continue
        try:
            own = served(session)
        except ServiceError as err:
            refused[e] = err
            continue
        if model is None:
            model, key, first, rows = own, own.key, e, session.memory_rows
        elif own.key != model.key:
            refused[e] = invalid(f"session {session.id} runs on {own.label}, entry {first}'s on {model.label}: "
                                 "a message steps sessions of one model version")
    return refused, model


def _other_size(session: SessionRecord, rows: int, first: int) -> ServiceError:
    return invalid(f"session {session.id} has {session.memory_rows} memory rows, entry {first}'s {rows}: a message "
                   "steps sessions of one memory size (one step call runs one N)")


def entry_fields(request: ntm_pb2.PackedStepRequest) -> tuple[list[str], list[int | None]]:
    """Each entry's session id and expect_steps (None when unset), in one pass over the entries."""
    ids: list[str] = []
    expect: list[int | None] = []
    for entry in request.entries:
        ids.append(entry.session_id)
        expect.append(entry.expect_steps if entry.HasField("expect_steps") else None)
    return ids, expect


def check(request: ntm_pb2.PackedStepRequest, found: Sequence[SessionRecord | ServiceError],
          expect: Sequence[int | None], served: Callable[[SessionRecord], ServedModel], max_steps: int,
          max_bytes: int) -> CheckedPack:
    """Every check of a packed message whose sessions were looked up (`found`, entry order; `expect`: each entry's
    expect_steps, from `entry_fields`). Raises a ServiceError for the message as a whole (a wrong inputs shape, an
    answer larger than `max_bytes`), or a PackError naming every refused entry."""
    refused, model = _sessions(found, served)
    if model is None:
        raise PackError(refused, len(found))
    if not request.HasField("inputs"):
        raise invalid(f"inputs is required: a tensor of shape [E, T, {model.spec.input_size}] (E = {len(found)})")
    inputs = packed_inputs(request.inputs, len(found), model.spec.input_size, max_steps)
    rows = next(s.memory_rows for s in found if isinstance(s, SessionRecord) and s.key == model.key)
    check_answer_size(inputs.shape[0] * inputs.shape[1], model.spec.answer_values(request.return_attention, rows),
                      max_bytes, echoed_chars=len(request.request_id), entries=inputs.shape[0])
    refused |= {e: err for e, err in nonfinite_entries(inputs).items() if e not in refused}
    for e, value in enumerate(expect):
        if value is not None and value < 0 and e not in refused:
            refused[e] = invalid(f"expect_steps of entry {e} must be >= 0, got {value}")
    if refused:
        raise PackError(refused, len(found))
    sessions = cast(tuple[SessionRecord, ...], tuple(found))  # all of them: none was refused
    return CheckedPack(sessions, model, inputs, tuple(expect))


def _status(err: ServiceError) -> status_pb2.Status:
    return status_pb2.Status(code=err.code.value[0], message=err.message)


def refusal(request_id: str, err: ServiceError) -> ntm_pb2.PackedStepResponse:
    """The answer to a refused message: its status, and each entry's when entries were refused."""
    response = ntm_pb2.PackedStepResponse(request_id=request_id, error=_status(err))
    if isinstance(err, PackError):
        response.entry_errors.extend(_status(err.entries[e]) if e in err.entries else NOT_APPLIED
                                     for e in range(err.count))
    return response


def answer(request_id: str, outcome: PackOutcome) -> ntm_pb2.PackedStepResponse:
    """The answer to a message that ran: every entry's outputs in one tensor [E, T, O] (one copy)."""
    response = ntm_pb2.PackedStepResponse(request_id=request_id, outputs=to_tensor(outcome.outputs),
                                          steps=outcome.steps)
    if outcome.read_weights is not None and outcome.write_weights is not None:
        response.attention.read_weights.CopyFrom(to_tensor(outcome.read_weights))
        response.attention.write_weights.CopyFrom(to_tensor(outcome.write_weights))
    return response
