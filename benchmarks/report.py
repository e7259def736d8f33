"""Markdown tables and JSON result files: what every benchmark prints and writes."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    """A titled markdown table; cells are already formatted strings."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}


def fmt_us(seconds: float | None) -> str:
    """Seconds as microseconds with sensible precision; '—' for missing."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    us = seconds * 1e6
    if us >= 1000:
        return f"{us:,.0f}"
    if us >= 10:
        return f"{us:.1f}"
    return f"{us:.2f}"


def fmt_rate(per_second: float | None) -> str:
    if per_second is None or (isinstance(per_second, float) and math.isnan(per_second)):
        return "—"
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f} M"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.1f} k"
    return f"{per_second:.0f}"


def median_of_rounds(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds of one cell (every round has the same keys)."""
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def write_result(out_dir: Path, name: str, payload: dict[str, Any], tables: Sequence[Table]) -> Path:
    """Write `<name>.json` (payload plus the tables) and `<name>.md` (the tables) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "tables": [t.to_json() for t in tables]}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    (out_dir / f"{name}.md").write_text("\n".join(t.markdown() for t in tables))
    return path


def _jsonable(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
