"""Error measures and the parity table shared by the parity CLI and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OP_TOLERANCE = 1e-5  # max abs error of one op / one step, float32
DRIFT_TOLERANCE = 1e-4  # max abs drift over >= 1000 steps, every output and state tensor
REL_FLOOR = 1e-6  # relative error is |a - e| / max(|e|, REL_FLOOR): tiny references do not blow it up
FLOOR_FACTOR = 2.0  # past tolerance, onnx may be at most this many times further from float64 than torch f32 is


@dataclass
class Row:
    """One line of the parity table: onnxruntime vs torch (float32), and where measured, both vs float64.

    `floor` = max |torch f32 - torch f64|: how far the float32 model itself is from exact arithmetic.
    `exact` = max |onnx - torch f64|. A row past `tolerance` still passes, marked "f32 floor", when onnx
    is no further from exact math than FLOOR_FACTOR x the float32 torch model is: the difference is then
    the model's own float32 conditioning (rounding differences amplified by the recurrence), not the export.
    """

    check: str
    max_abs: float
    max_rel: float
    tolerance: float
    note: str = ""
    floor: float | None = None
    exact: float | None = None
    # Set where the floor is judged step by step (a one-step check, ntm_serve/export/parity.py exact_path_rows): the
    # steps past tolerance where onnx is also further from float64 than FLOOR_FACTOR x torch f32 is. Then the row
    # passes when there are none, since per-row maxima may come from different steps.
    bad_steps: int | None = None

    @property
    def strict(self) -> bool:
        """Within the tolerance itself."""
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance

    @property
    def passed(self) -> bool:
        if self.strict:
            return True
        if self.bad_steps is not None:
            return self.bad_steps == 0
        if self.floor is None or self.exact is None or not np.isfinite(self.exact):
            return False
        return self.exact <= FLOOR_FACTOR * self.floor

    @property
    def verdict(self) -> str:
        return "pass" if self.strict else "pass (f32 floor)" if self.passed else "**FAIL**"

    def merge(self, other: Row) -> Row:
        """The worse of two measurements of the same check."""
        notes = ", ".join(dict.fromkeys(n for n in (self.note, other.note) if n))
        return Row(self.check, max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel),
                   self.tolerance, notes, _max_opt(self.floor, other.floor), _max_opt(self.exact, other.exact))


def _max_opt(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


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


def row(check: str, actual: np.ndarray, expected: np.ndarray, tolerance: float, note: str = "",
        exact: np.ndarray | None = None) -> Row:
    """onnx `actual` vs torch f32 `expected`; with `exact` (torch f64) also the float32 floor."""
    max_abs, max_rel = errors(actual, expected)
    if exact is None:
        return Row(check, max_abs, max_rel, tolerance, note)
    return Row(check, max_abs, max_rel, tolerance, note, errors(expected, exact)[0], errors(actual, exact)[0])


def markdown(rows: list[Row]) -> str:
    """The table the parity CLI prints."""
    lines = ["| check | max abs error | max rel error | tolerance | torch f32 vs f64 | onnx vs f64 | result | note |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        floor = "" if r.floor is None else f"{r.floor:.3g}"
        exact = "" if r.exact is None else f"{r.exact:.3g}"
        lines.append(f"| {r.check} | {r.max_abs:.3g} | {r.max_rel:.3g} | {r.tolerance:.0e} | {floor} | {exact} | "
                     f"{r.verdict} | {r.note} |")
    return "\n".join(lines)
