"""The memory size N of a served model: which axes of the state are N, the state's shapes at any N, the N a state
has, and the range a model runs on (pure functions; docs/memory-size.md).

The graphs say it themselves: their state inputs name the dimension ROWS_DIM ("N") wherever the memory size goes
(memory (B, N, M), the weightings (B, H, N)), and the metadata keys META_MEMORY_ROWS_MIN / _MAX give the range.
A graph exported before N was free has the trained size there as a number and no range: it runs on that N only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ntm_serve.contract import META_MEMORY_ROWS_MAX, META_MEMORY_ROWS_MIN, ROWS_DIM, STATE_NAMES

Shapes = Mapping[str, Sequence[int]]  # per-session state shapes (no batch dimension), by state name
Axes = Mapping[str, tuple[int, ...]]  # per state name, its axes (no batch dimension) of length N


def rows_axes(inputs: Iterable[tuple[str, Sequence[int | str | None]]]) -> dict[str, tuple[int, ...]]:
    """From a graph's inputs (name, shape with the batch first): the axes of each state tensor that the graph names
    ROWS_DIM, without the batch dimension; {} for a graph of one fixed N."""
    axes = {}
    for name, shape in inputs:
        found = tuple(i - 1 for i, d in enumerate(shape) if i > 0 and d == ROWS_DIM)
        if name in STATE_NAMES and found:
            axes[name] = found
    return axes


def shapes_at(shapes: Shapes, axes: Axes, rows: int) -> dict[str, tuple[int, ...]]:
    """`shapes` with `rows` at every N axis: {'memory': (N, M), 'read_weights': (R, N), ...}."""
    out = {}
    for name, shape in shapes.items():
        dims = list(shape)
        for axis in axes.get(name, ()):
            dims[axis] = rows
        out[name] = tuple(dims)
    return out


def rows_in(shapes: Shapes, axes: Axes) -> set[int]:
    """The lengths a state's tensors have at their N axes (one value when the state is of one N; empty when the
    model has no N axes or a tensor is missing or of the wrong rank)."""
    found = set()
    for name, tensor_axes in axes.items():
        shape = shapes.get(name)
        if shape is None or any(axis >= len(shape) for axis in tensor_axes):
            return set()
        found.update(int(shape[axis]) for axis in tensor_axes)
    return found


def declared_range(props: Mapping[str, str], trained: int) -> tuple[int, int]:
    """[min, max] N from a graph's metadata; (trained, trained) where the keys are absent (graphs before issue 24).
    ValueError when they are not integers or the range does not hold the trained N."""
    if META_MEMORY_ROWS_MIN not in props and META_MEMORY_ROWS_MAX not in props:
        return trained, trained
    try:
        low, high = int(props[META_MEMORY_ROWS_MIN]), int(props[META_MEMORY_ROWS_MAX])
    except (KeyError, ValueError) as err:
        raise ValueError(f"metadata {META_MEMORY_ROWS_MIN!r} and {META_MEMORY_ROWS_MAX!r} must both be integers "
                         f"({err})") from None
    if not 1 <= low <= trained <= high:
        raise ValueError(f"memory rows range [{low}, {high}] must hold the trained N {trained} (and start at 1 or "
                         "more)")
    return low, high


def served_range(declared: tuple[int, int], trained: int, limit: int) -> tuple[int, int]:
    """The N a server admits for new sessions: the declared range capped by its limit (--max-memory-rows), never
    below the trained N (a model's default size is always served)."""
    low, high = declared
    return low, max(trained, min(high, limit))
