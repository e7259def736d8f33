"""Figures: learning curves and the attention/memory picture of one example (as in Graves et al.)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def learning_curve(log_path: Path, out: Path, title: str, classification: bool = False, figure: str = "",
                   loss: str = "") -> None:
    """Training loss and held-out bit errors (classification: misclassified steps) against sequences seen; a data
    set or task file names its own `figure` and `loss` (e.g. "mean squared error", "MSE")."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval_bit_errors" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([r["sequences"] for r in evals], [r["loss"] for r in evals])
    ax1.set(xlabel="training sequences", yscale="log", title=title,
            ylabel=f"{loss} (train)" if loss else "cross-entropy (train)" if classification else "BCE loss (train)")
    ax2.plot([r["sequences"] for r in evals], [max(r["eval_bit_errors"], 1e-3) for r in evals])
    if figure:
        ax2.set(xlabel="training sequences", ylabel=f"{figure} (held out)", yscale="log")
    elif classification:
        ax2.set(xlabel="training episodes", ylabel="wrong labels / episode (held out)", yscale="log")
    else:
        ax2.set(xlabel="training sequences", ylabel="bit errors / sequence (held out)", yscale="log")
        ax2.axhline(0.1, color="grey", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def used_rows(weights: np.ndarray, threshold: float = 0.01, margin: int = 2) -> np.ndarray:
    """The memory rows the heads visited (weighting above `threshold` at some step), as the shortest circular
    window holding them all plus `margin` rows either side: shifts wrap around, so a path over rows N-1, 0, 1
    stays in one piece. All rows when none is visited. weights (T, H, N) -> (K,) row indices, in order."""
    rows = weights.shape[-1]
    hit = np.flatnonzero((weights > threshold).any(axis=(0, 1)))  # (V,) visited rows, ascending
    if hit.size == 0:
        return np.arange(rows)
    gaps = np.diff(np.concatenate([hit, hit[:1] + rows]))  # (V,) distance from each visited row to the next
    largest = int(np.argmax(gaps))  # the window is everything but the largest gap
    start, end = int(hit[(largest + 1) % hit.size]), int(hit[largest])
    length = min(rows, (end - start) % rows + 1 + 2 * margin)
    return (start - margin + np.arange(length)) % rows


def row_ticks(rows: np.ndarray, most: int = 8) -> tuple[np.ndarray, list[str]]:
    """Ticks for a panel drawing memory `rows` (K,) top to bottom: positions (indices into `rows`) and labels, the
    memory's own row numbers, at round numbers (multiples of the 1-2-5 step that gives at most `most` ticks), so a
    window that wraps from N-1 to 0 reads as one (..., 125, 0, 5, ...)."""
    step = next(s * k for s in (10 ** e for e in range(12)) for k in (1, 2, 5) if len(rows) / (s * k) <= most)
    positions = np.flatnonzero(rows % step == 0)  # (J,)
    return positions, [str(int(rows[p])) for p in positions]


def _wraps(rows: np.ndarray) -> np.ndarray:
    """Positions k where the next drawn row is not row k + 1 (the window wraps from N-1 to 0 after k)."""
    return np.flatnonzero(np.diff(rows) != 1)


def draw_attention(
    inputs: np.ndarray,  # (T, I)
    targets: np.ndarray,  # (T_out, O)
    outputs: np.ndarray,  # (T, O)
    read_weights: np.ndarray | None,  # (T, R, N)
    write_weights: np.ndarray | None,  # (T, W, N)
    memory: np.ndarray | None,  # (N, M)
    title: str,
    rows: np.ndarray | None = None,  # (K,) the memory rows to draw (e.g. `used_rows`); None: all N
) -> Figure:
    """The figure of `attention_figure`, not yet saved: the axes are labelled (`Axes.get_label()`) inputs, targets,
    outputs, write, read and memory. One orientation throughout: time on x; channels, or memory rows (labelled
    with their own indices), on y; the final memory beside the write weighting, its rows level with the path's."""
    padded = np.zeros_like(outputs)  # (T, O): targets at the last T_out steps
    padded[-targets.shape[0] :] = targets
    panels: list[tuple[str, str, np.ndarray]] = [("inputs", "inputs", inputs.T), ("targets", "targets", padded.T),
                                                 ("outputs", "outputs", outputs.T)]
    n = next((w.shape[-1] for w in (write_weights, read_weights) if w is not None), None)
    n = n if n is not None else (memory.shape[0] if memory is not None else 0)
    shown = np.arange(n) if rows is None else np.asarray(rows)  # (K,)
    if write_weights is not None and read_weights is not None:
        panels += [("write", "write weighting\n(memory row)", write_weights[:, 0][:, shown].T),  # (K, T)
                   ("read", "read weighting\n(memory row)", read_weights[:, 0][:, shown].T)]  # (K, T)
    beside = next((i for i, (key, _, _) in enumerate(panels) if key == "write"), len(panels) - 1)
    fig = plt.figure(figsize=(11 if memory is not None else 9, 1.6 * len(panels) + 1.2))
    grid = fig.add_gridspec(len(panels), 2 if memory is not None else 1,
                            width_ratios=[4, 1] if memory is not None else None)
    time_axes: list[Axes] = []
    for i, (key, name, image) in enumerate(panels):
        ax = fig.add_subplot(grid[i, 0], sharex=time_axes[0] if time_axes else None, label=key)
        # Fixed 0..1 colour scale: a 0.5 output must not look like a confident bit.
        ax.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=1.0)
        ax.set_ylabel(name, fontsize=8)
        if key in ("write", "read"):
            _label_rows(ax, shown)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # bit channels: whole numbers
        time_axes.append(ax)
    for ax in time_axes[:-1]:
        ax.tick_params(labelbottom=False)
    time_axes[-1].set_xlabel("time step")
    time_axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if memory is not None:
        anchor = time_axes[beside]
        ax = fig.add_subplot(grid[beside, 1], sharey=anchor if panels[beside][0] == "write" else None,
                             label="memory")
        words = memory[shown]  # (K, M): memory rows on y, level with the write weighting's rows
        scale = float(np.abs(words).max()) or 1.0  # symmetric: white is 0
        ax.imshow(words, aspect="auto", cmap="RdBu", interpolation="nearest", vmin=-scale, vmax=scale)
        _label_rows(ax, shown)
        ax.tick_params(labelleft=panels[beside][0] != "write")  # the write panel's row labels serve both
        ax.set_title("final memory", fontsize=8)
        ax.set_xlabel(f"word (M = {words.shape[1]})", fontsize=8)
    time_axes[0].set_title(title)
    fig.tight_layout()
    return fig


def _label_rows(ax: Axes, rows: np.ndarray) -> None:
    """y ticks at the memory's own row numbers, and a dashed line where the drawn window wraps from N-1 to 0."""
    positions, labels = row_ticks(rows)
    ax.set_yticks(positions, labels)
    for k in _wraps(rows):
        ax.axhline(k + 0.5, color="white", linestyle="--", linewidth=0.6)


def attention_figure(
    inputs: np.ndarray,  # (T, I)
    targets: np.ndarray,  # (T_out, O)
    outputs: np.ndarray,  # (T, O)
    read_weights: np.ndarray | None,  # (T, R, N)
    write_weights: np.ndarray | None,  # (T, W, N)
    memory: np.ndarray | None,  # (N, M)
    out: Path,
    title: str,
    rows: np.ndarray | None = None,  # (K,) the memory rows to draw (e.g. `used_rows`); None: all N
) -> None:
    """Inputs, targets, outputs, read/write weightings over time and the final memory, written to `out` (PNG)."""
    fig = draw_attention(inputs, targets, outputs, read_weights, write_weights, memory, title, rows)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def episode_figure(
    images: np.ndarray,  # (T, 64) 8x8 samples, row-major
    labels: np.ndarray,  # (T,) true labels
    probabilities: np.ndarray,  # (T, C) predicted label distribution
    read_weights: np.ndarray | None,  # (T, R, N)
    write_weights: np.ndarray | None,  # (T, W, N)
    out: Path,
    title: str,
) -> None:
    """A one-shot episode: each step's image with its true label, the predicted distribution (true label
    marked, wrong arg-max in red), and the rows the first write and read heads used."""
    steps = len(labels)
    side = round(np.sqrt(images.shape[1]))
    per_row = 25
    rows = -(-steps // per_row)
    strip = np.full((rows * (side + 4), per_row * (side + 1)), 0.06)  # near-white ground, room for labels
    for t in range(steps):
        r, c = divmod(t, per_row)
        strip[r * (side + 4) : r * (side + 4) + side, c * (side + 1) : c * (side + 1) + side] = (
            images[t].reshape(side, side))
    panels = 2 + (read_weights is not None and write_weights is not None)
    fig, axes = plt.subplots(panels + (panels == 3), 1, figsize=(13, 2.2 * (panels + 1) + 1),
                             gridspec_kw={"height_ratios": [1.6] + [2] * (panels + (panels == 3) - 1)})
    axes[0].imshow(strip, aspect="equal", cmap="gray_r", interpolation="nearest", vmin=0, vmax=1)
    for t in range(steps):
        r, c = divmod(t, per_row)
        wrong = probabilities[t].argmax() != labels[t]
        axes[0].text(c * (side + 1) + side / 2, r * (side + 4) + side + 1.6, f"{t}:{int(labels[t])}",
                     ha="center", fontsize=5, color="red" if wrong else "black")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_ylabel("step:true label\n(red: wrong)", fontsize=8)
    axes[0].set_title(title)
    predicted = probabilities.argmax(-1)
    axes[1].imshow(probabilities.T, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
    axes[1].scatter(np.arange(steps), labels, marker="o", facecolors="none", edgecolors="white", s=30)
    wrong = predicted != labels
    axes[1].scatter(np.arange(steps)[wrong], predicted[wrong], marker="x", color="red", s=25)
    axes[1].set_ylabel("P(label)\n○ true, × wrong", fontsize=8)
    if panels == 3:
        assert read_weights is not None and write_weights is not None
        axes[2].imshow(write_weights[:, 0].T, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
        axes[2].set_ylabel("write weighting\n(memory row)", fontsize=8)
        axes[3].imshow(read_weights[:, 0].T, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
        axes[3].set_ylabel("read weighting\n(memory row)", fontsize=8)
    axes[-1].set_xlabel("time step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
