"""Which memory size N a new session gets (CreateSession's memory_rows, an imported state's shapes), or why not.

A model's graphs run on the range of N their export declares (ModelSpec.memory_rows); a server serves that range
capped by its --max-memory-rows (one session's state grows with N), and always the trained N (docs/service.md,
"Memory size per session"). Refusals are INVALID_ARGUMENT saying the range and the limit. Restored and taken-over
sessions are checked against the model's range only: a restart or a move must not lose a session the server
admitted once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ntm_serve.api.errors import invalid
from ntm_serve.contract import STATE_NAMES
from ntm_serve.runtime.memory_rows import served_range

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import ModelSpec


def served_rows(spec: ModelSpec, limit: int) -> tuple[int, int]:
    """[min, max] N a new session of this model may have here (what ListModels reports)."""
    return served_range(spec.memory_rows, spec.trained_rows, limit)


def _range_text(spec: ModelSpec, label: str, limit: int) -> str:
    low, high = spec.memory_rows
    served = served_rows(spec, limit)
    return (f"{label} runs on {low} to {high} memory rows (trained on {spec.trained_rows}), and this server serves at "
            f"most {limit} (--max-memory-rows): {served[0]} to {served[1]} here")


def admit_rows(spec: ModelSpec, requested: int, limit: int, label: str) -> int:
    """The N of a new session that asks for `requested` rows (0: the trained N) of the model `label`."""
    if requested < 0:
        raise invalid(f"memory_rows must be >= 0 (0 takes the model's trained N, {spec.trained_rows}), got {requested}")
    if requested == 0:
        return spec.trained_rows
    low, high = served_rows(spec, limit)
    if not low <= requested <= high:
        raise invalid(f"memory_rows {requested} is out of range: {_range_text(spec, label, limit)}")
    return requested


def imported_rows(spec: ModelSpec, shapes: Mapping[str, Sequence[int]], limit: int, label: str) -> int:
    """The N of an imported state with these tensor shapes, admitted like `admit_rows`: its memory's rows (the first
    state tensor with an N axis: memory [N, M]). A memory of the wrong rank gives the trained N: the shape check
    that follows (`state_tensors`, at this N) names what is wrong with it or with any other tensor."""
    name = next((n for n in STATE_NAMES if n in spec.rows_axes), None)
    shape = shapes.get(name) if name is not None else None
    if name is None or shape is None or len(shape) != len(spec.state_shapes[name]):
        return spec.trained_rows
    rows = int(shape[spec.rows_axes[name][0]])
    if rows < 1:  # not a size: the shape check says what is wrong
        return spec.trained_rows
    low, high = served_rows(spec, limit)
    if rows != spec.trained_rows and not low <= rows <= high:
        raise invalid(f"the state's {name} has {rows} rows (its memory size N), out of range: "
                      f"{_range_text(spec, label, limit)}")
    return rows


def restorable(spec: ModelSpec, state_shapes: Mapping[str, Sequence[int]]) -> int | None:
    """The N of a kept state (a snapshot, the store's copy) when this model runs on it with these exact shapes;
    None when not (another N than its graphs run on, or shapes that are not the model's at any N)."""
    rows = spec.rows_of({name: tuple(shape) for name, shape in state_shapes.items()})
    if rows is None or not spec.runs_on(rows):
        return None
    expected = spec.shapes_at(rows)
    if {name: tuple(shape) for name, shape in state_shapes.items()} != expected:
        return None
    return rows
