"""The --plot figure (ntm_serve/plots.py): memory rows on y in every panel that draws them, labelled with the
memory's own row indices (also across the wrap from N-1 to 0), time on x, the final memory level with the path."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from ntm_serve.plots import draw_attention, row_ticks, used_rows

T, N, M = 25, 128, 20
START = 124  # the heads' path: rows 124, 125, ..., 127, 0, 1, ... (wraps)


def test_row_ticks_are_round_row_numbers_at_their_positions() -> None:
    positions, labels = row_ticks(np.arange(38, 47))  # 9 rows: step 2
    assert labels == ["38", "40", "42", "44", "46"] and positions.tolist() == [0, 2, 4, 6, 8]
    positions, labels = row_ticks(np.arange(128))  # all rows: step 20
    assert labels == [str(r) for r in range(0, 128, 20)] and positions.tolist() == list(range(0, 128, 20))
    rows = (122 + np.arange(34)) % 128  # 122..127, 0..27: step 5
    positions, labels = row_ticks(rows)
    assert labels == ["125", "0", "5", "10", "15", "20", "25"] and positions.tolist() == [3, 6, 11, 16, 21, 26, 31]
    assert row_ticks(np.array([5, 6, 7]))[1] == ["5", "6", "7"]


@pytest.fixture
def figure_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    path = (START + np.arange(T)) % N  # (T,) the row each step writes
    write = np.zeros((T, 1, N), np.float32)
    write[np.arange(T), 0, path] = 1.0
    read = np.zeros((T, 1, N), np.float32)
    read[np.arange(T), 0, path] = 1.0
    memory = rng.normal(size=(N, M)).astype(np.float32)
    return {"path": path, "write": write, "read": read, "memory": memory,
            "inputs": rng.integers(0, 2, (T, 9)).astype(np.float32),
            "targets": rng.integers(0, 2, (12, 8)).astype(np.float32),
            "outputs": rng.random((T, 8)).astype(np.float32)}


def test_attention_and_memory_rows_are_labelled_with_the_memorys_indices(figure_data: dict[str, np.ndarray]) -> None:
    d = figure_data
    rows = used_rows(np.concatenate([d["read"], d["write"]], axis=1))  # (K,) 122..127, 0..22: wraps
    assert rows[0] == 122 and rows[-1] == 22
    fig = draw_attention(d["inputs"], d["targets"], d["outputs"], d["read"], d["write"], d["memory"], "t", rows)
    try:
        axes = {ax.get_label(): ax for ax in fig.axes}
        assert set(axes) == {"inputs", "targets", "outputs", "write", "read", "memory"}
        for key in ("write", "read", "memory"):
            ax = axes[key]
            positions = ax.get_yticks()
            labels = ax.yaxis.get_major_formatter().format_ticks(positions)  # memory: shown once, by write's
            assert labels == [str(rows[int(p)]) for p in positions], key  # each tick names the row drawn there
            assert {"125", "0", "20"} <= set(labels), labels
            assert [line.get_ydata()[0] for line in ax.get_lines()] == [5.5], key  # the wrap, after row 127
        for key in ("write", "read"):  # rows on y, time on x: the path sits on the row labelled with its index
            image = np.asarray(axes[key].images[0].get_array())
            assert image.shape == (len(rows), T)
            np.testing.assert_array_equal(rows[image.argmax(axis=0)], d["path"])
        memory = np.asarray(axes["memory"].images[0].get_array())
        np.testing.assert_array_equal(memory, d["memory"][rows])  # (K, M): row k is memory row rows[k]
        assert axes["memory"].get_ylim() == axes["write"].get_ylim()  # level with the path
        assert axes["read"].get_xlabel() == "time step"
        for key in ("inputs", "targets", "outputs"):  # channels: whole numbers
            assert all(float(t).is_integer() for t in axes[key].get_yticks())
    finally:
        plt.close(fig)


def test_a_model_without_memory_draws_three_panels(figure_data: dict[str, np.ndarray]) -> None:
    d = figure_data
    fig = draw_attention(d["inputs"], d["targets"], d["outputs"], None, None, None, "LSTM baseline")
    try:
        assert [ax.get_label() for ax in fig.axes] == ["inputs", "targets", "outputs"]
        assert fig.axes[-1].get_xlabel() == "time step"
    finally:
        plt.close(fig)
