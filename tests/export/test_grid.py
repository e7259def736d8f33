"""The generalisation grid (ntm_serve/export/grid.py): task errors over sizes × memory rows through the graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ntm_serve.export import grid
from ntm_serve.export.testing import dev_folder


@pytest.fixture
def copy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(dev_folder("copy_default"), folder)
    (folder / "eval.md").write_text("### copy (ntm)\n\n| point | bit errors / seq |\n|---|---:|\n| L=20 | 0 |\n")
    return folder


def test_bit_errors_count_the_last_steps_rounded() -> None:
    outputs = np.array([[[0.9, 0.9]], [[0.2, 0.7]], [[0.6, 0.4]]], dtype=np.float32)  # (T=3, B=1, O=2)
    targets = np.array([[[1.0, 1.0]], [[1.0, 1.0]]], dtype=np.float32)  # the last two steps count
    assert grid.bit_errors(outputs, targets).tolist() == [1 + 1]  # 0.2 against 1 at step 1, 0.4 against 1 at 2


def test_the_grid_is_measured_through_the_graphs_and_written_once(copy_folder: Path) -> None:
    """An untrained model: every cell is its errors over fresh sequences of that L at that N (about half the bits
    wrong); the report's section is replaced, not appended, on a second run."""
    assert grid.main([str(copy_folder), "--sizes", "2,5", "--rows", "8,64", "--sequences", "4"]) == 0
    measured = json.loads((copy_folder / "grid.json").read_text())
    assert measured["sizes"] == [2, 5] and measured["rows"] == [8, 64] and measured["task"] == "copy"
    assert np.array(measured["mean"]).shape == (2, 2)
    assert 0 < measured["mean"][1][1] <= 5 * 8 and measured["worst"][1][1] <= 5 * 8  # L vectors of 8 bits
    assert (copy_folder / "grid.png").stat().st_size > 1000
    assert grid.main([str(copy_folder), "--sizes", "2", "--rows", "8", "--sequences", "2"]) == 0
    report = (copy_folder / "eval.md").read_text()
    assert report.count(grid.SECTION) == 1 and report.startswith("### copy (ntm)")
    assert "| L=2 |" in report and "| L=5 |" not in report and "![grid](grid.png)" in report


def test_the_same_cell_gives_the_same_figure(copy_folder: Path) -> None:
    """Fresh sequences from a fixed seed per cell: reproducible."""
    first = grid.measure(copy_folder, (3,), (16,), sequences=6)
    second = grid.measure(copy_folder, (3,), (16,), sequences=6)
    assert first["mean"] == second["mean"] and first["worst"] == second["worst"]


def test_sizes_outside_the_model_range_and_other_tasks_are_refused(copy_folder: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert grid.main([str(copy_folder), "--sizes", "2", "--rows", "2", "--sequences", "2", "--no-write"]) == 2
    assert "outside the model's range [3, 8192]" in capsys.readouterr().err
    assert grid.main([str(dev_folder("one_shot_lru")), "--no-write"]) == 2
    assert "no grid for task 'one_shot'" in capsys.readouterr().err
