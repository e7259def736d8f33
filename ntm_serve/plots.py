"""Figures: learning curves and the attention/memory picture of one example (as in Graves et al.)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def learning_curve(log_path: Path, out: Path, title: str, classification: bool = False) -> None:
    """Training loss and held-out bit errors (classification: misclassified steps) against sequences seen."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval_bit_errors" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([r["sequences"] for r in evals], [r["loss"] for r in evals])
    ax1.set(xlabel="training sequences", ylabel="cross-entropy (train)" if classification else "BCE loss (train)",
            yscale="log", title=title)
    ax2.plot([r["sequences"] for r in evals], [max(r["eval_bit_errors"], 1e-3) for r in evals])
    if classification:
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
    """Inputs, targets, outputs, read/write weightings over time and the final memory."""
    padded = np.zeros_like(outputs)
    padded[-targets.shape[0] :] = targets
    panels = [("inputs", inputs.T), ("targets", padded.T), ("outputs", outputs.T)]
    shown = slice(None) if rows is None else rows
    which = "" if rows is None else f"\nrows {rows[0]}..{rows[-1]}"
    if write_weights is not None and read_weights is not None:
        panels += [(f"write weightings{which}", write_weights[:, 0][:, shown].T),
                   (f"read weightings{which}", read_weights[:, 0][:, shown].T)]
    fig, axes = plt.subplots(len(panels) + (memory is not None), 1, figsize=(9, 1.6 * len(panels) + 3))
    for ax, (name, image) in zip(axes, panels, strict=False):  # the memory panel, if any, comes after
        # Fixed 0..1 colour scale: a 0.5 output must not look like a confident bit.
        ax.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=1.0)
        ax.set_ylabel(name, fontsize=8)
    for ax in axes[: len(panels) - 1]:
        ax.set_xticks([])
    axes[len(panels) - 1].set_xlabel("time step")
    if memory is not None:
        axes[-1].imshow(memory[shown].T, aspect="auto", cmap="RdBu", interpolation="nearest")
        axes[-1].set_ylabel("final memory\n(M x N)", fontsize=8)
        axes[-1].set_xlabel("memory row" if rows is None else f"memory rows {rows[0]}..{rows[-1]} (the heads' path)")
    axes[0].set_title(title)
    fig.tight_layout()
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
