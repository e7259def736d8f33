"""Error measures and the parity table shared by the parity CLI and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OP_TOLERANCE = 1e-5  # max abs error of one op / one step, float32
DRIFT_TOLERANCE = 1e-4  # max abs drift over >= 1000 steps, every output and state tensor
REL_FLOOR = 1e-6  # relative error is |a - e| / max(|e|, REL_FLOOR): tiny references do not blow it up


@dataclass
class Row:
    """One line of the parity table."""

    check: str
    max_abs: float
    max_rel: float
    tolerance: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance

    def merge(self, other: Row) -> Row:
        """The worse of two measurements of the same check."""
        notes = ", ".join(dict.fromkeys(n for n in (self.note, other.note) if n))
        return Row(self.check, max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel),
                   self.tolerance, notes)


def errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs, max rel) error. A shape mismatch or NaN/inf where the reference is finite counts as inf."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf"), float("inf")
    finite = np.isfinite(expected)
    if not np.array_equal(finite, np.isfinite(actual)) or not np.array_equal(
        actual[~finite], expected[~finite], equal_nan=True
    ):
        return float("inf"), float("inf")  # NaN/inf in one and not (the same) in the other
    if not finite.any():
        return 0.0, 0.0
    diff = np.abs(actual[finite] - expected[finite])
    rel = diff / np.maximum(np.abs(expected[finite]), REL_FLOOR)
    return float(diff.max()), float(rel.max())


def row(check: str, actual: np.ndarray, expected: np.ndarray, tolerance: float, note: str = "") -> Row:
    max_abs, max_rel = errors(actual, expected)
    return Row(check, max_abs, max_rel, tolerance, note)


def markdown(rows: list[Row]) -> str:
    """The table the parity CLI prints."""
    lines = ["| check | max abs error | max rel error | tolerance | result | note |",
             "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.check} | {r.max_abs:.3g} | {r.max_rel:.3g} | {r.tolerance:.0e} | "
                     f"{'pass' if r.passed else '**FAIL**'} | {r.note} |")
    return "\n".join(lines)
