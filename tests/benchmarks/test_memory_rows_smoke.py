"""benchmarks/memory_rows.py runs (quick mode, tiny counts) and writes its tables; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import memory_rows
from benchmarks.models import ModelFolder, find_model, has_graphs
from benchmarks.timing import TimingPlan

TINY = TimingPlan(rounds=1, round_s=0.002, warmup_calls=1, max_calls=10)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelFolder:
    """A shipped model with its graphs, else an untrained copy-task export."""
    if any(has_graphs(p) and (p / "checkpoint.pt").is_file() for p in (REPO / "models").glob("*")):
        return find_model(REPO / "models")
    from benchmarks.models import dev_export

    return dev_export(tmp_path_factory.mktemp("model"))


def test_memory_rows_quick_writes_both_tables(model: ModelFolder, tmp_path: Path) -> None:
    payload = memory_rows.run(model, tmp_path, quick=True, engines=("ort", "eager"), plan=TINY)
    written = json.loads((tmp_path / "memory_rows.json").read_text())
    assert written["benchmark"] == "memory_rows" and written["mode"] == "quick" == payload["mode"]
    assert set(written["growth"]) == {"128", "512"}
    assert written["growth"]["512"]["server_batch"] == 8  # the quick table's largest B; 8 x 46 KB is under 3 MiB
    assert set(written["compare"]) == {"N=128,B=1", "N=128,B=8"}
    assert set(written["compare"]["N=128,B=8"]) >= {"onnxruntime IOBinding", "torch eager"}
    text = (tmp_path / "memory_rows.md").read_text()
    assert "Memory size N" in text and "onnxruntime against PyTorch" in text


def test_a_session_grows_linearly_with_its_memory_rows(model: ModelFolder) -> None:
    """The state bytes the table reports are the six tensors at N: (M + R + W) floats more per row."""
    c = model.config
    per_row = 4 * (c["memory_width"] + (c.get("heads", "ntm") == "lru") + c["read_heads"] + c["write_heads"])
    assert memory_rows.state_bytes(model, 1024) - memory_rows.state_bytes(model, 512) == 512 * per_row
    state = memory_rows.initial_state(model, 1, 300)
    assert sum(a.nbytes for a in state) == memory_rows.state_bytes(model, 300)
