"""The generalisation grid of a model: its task errors per sequence over sequence lengths × memory sizes, measured
through onnxruntime with the model's own exported graphs (issue 24).

`python -m ntm_serve.export.grid FOLDER [--sizes 20,60,...] [--rows 64,128,...] [--sequences 128]`

The graphs take the memory size N as a dimension (docs/onnx-contract.md): each cell starts `--sequences` fresh
task sequences from initial_state.onnx fed that N and runs them through sequence.onnx, one call per batch; the
figure is bit errors per sequence (the task's own rule: copy's L vectors, associative recall's queried item).
Writes FOLDER/grid.json and FOLDER/grid.png and puts the table in FOLDER/eval.md (its "Generalisation grid"
section, replaced on each run). The sizes are copy's L and associative recall's K (items).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ntm_serve.contract import GRAPH_FILES, META_CHECKPOINT
from ntm_serve.export.metadata import read_metadata
from ntm_serve.export.parity import onnx_initial_state, onnx_sequence
from ntm_serve.export.runtime import session
from ntm_serve.training import tasks
from ntm_serve.training.batch import Batch

GRID_SEED = 24_024  # not a training, held-out or evaluation seed
BATCH = 32
SECTION = "## Generalisation grid"


@dataclass(frozen=True)
class GridTask:
    """How a task's sequences of one size are drawn, and what the size is called."""

    size_name: str  # "L" or "K"
    sample: Callable[[torch.Generator, int, int], Batch]  # (generator, batch, size) -> batch
    sizes: tuple[int, ...]  # default sizes
    rows: tuple[int, ...]  # default memory sizes


GRID_TASKS: dict[str, GridTask] = {
    "copy": GridTask("L", tasks.copy_batch, (20, 60, 120, 250, 500, 1000), (64, 128, 256, 512, 1024, 2048)),
    "associative_recall": GridTask("K", tasks.associative_recall_batch, (6, 12, 25, 50, 100),
                                   (64, 128, 256, 512, 1024)),
}


def bit_errors(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Bit errors per sequence: the last T_out outputs rounded against the targets. (T, B, O), (T_out, B, O) -> (B,)"""
    tail = outputs[-targets.shape[0]:]  # (T_out, B, O)
    return ((tail > 0.5) != (targets > 0.5)).sum(axis=(0, 2))


def cell(initial: ort.InferenceSession, sequence: ort.InferenceSession, grid_task: GridTask, size: int, rows: int,
         sequences: int, seed: int = GRID_SEED) -> np.ndarray:
    """Bit errors of `sequences` fresh sequences of `size` with `rows` memory rows, through the graphs. -> (S,)"""
    gen = torch.Generator().manual_seed(seed + 1000 * size + rows)
    errors = []
    while sum(len(e) for e in errors) < sequences:
        batch = grid_task.sample(gen, min(BATCH, sequences - sum(len(e) for e in errors)), size)
        start = onnx_initial_state(initial, batch.inputs.shape[1], rows)
        out, _ = onnx_sequence(sequence, batch.inputs.numpy(), start)
        errors.append(bit_errors(out["outputs"], batch.targets.numpy()))
    return np.concatenate(errors)


def measure(folder: Path, sizes: tuple[int, ...] | None = None, rows: tuple[int, ...] | None = None,
            sequences: int = 128, threads: int = 1) -> dict:
    """The grid of one model folder: {task, size_name, sizes, rows, mean, worst, perfect, ...} (JSON-ready)."""
    graphs = {name: folder / file for name, file in GRAPH_FILES.items()}
    meta = read_metadata(onnx.load(str(graphs["step"]), load_external_data=False))
    task = meta["ntm.task"]
    if task not in GRID_TASKS:
        raise ValueError(f"{folder}: no grid for task {task!r} (only {', '.join(GRID_TASKS)})")
    grid_task = GRID_TASKS[task]
    sizes, rows = sizes or grid_task.sizes, rows or grid_task.rows
    low, high = int(meta["ntm.memory_rows_min"]), int(meta["ntm.memory_rows_max"])
    bad = [n for n in rows if not low <= n <= high]
    if bad:
        raise ValueError(f"{folder}: memory rows {bad} outside the model's range [{low}, {high}]")
    initial = session(str(graphs["initial_state"]), threads=threads)
    sequence = session(str(graphs["sequence"]), threads=threads)
    mean, worst, perfect = [], [], []
    started = time.perf_counter()
    for size in sizes:
        cells = [cell(initial, sequence, grid_task, size, n, sequences) for n in rows]
        mean.append([float(c.mean()) for c in cells])
        worst.append([int(c.max()) for c in cells])
        perfect.append([float((c == 0).mean()) for c in cells])
    return {"task": task, "size_name": grid_task.size_name, "sizes": list(sizes), "rows": list(rows),
            "trained_rows": meta["ntm.config"]["memory_rows"], "sequences": sequences,
            "seed": GRID_SEED, "mean": mean, "worst": worst, "perfect": perfect,
            "checkpoint_sha256": meta[META_CHECKPOINT], "seconds": round(time.perf_counter() - started, 1),
            "measured_with": f"onnxruntime {ort.__version__}, CPU, the folder's sequence.onnx and initial_state.onnx"}


def markdown(grid: dict) -> str:
    """The grid as a markdown table: mean bit errors per sequence (worst sequence in brackets)."""
    name = grid["size_name"]
    lines = [f"| {name} \\ N | " + " | ".join(f"{n}{' (trained)' if n == grid['trained_rows'] else ''}"
                                             for n in grid["rows"]) + " |",
             "|---|" + "---:|" * len(grid["rows"])]
    for i, size in enumerate(grid["sizes"]):
        cells = [("0" if not m else f"{m:.0f} ({w})" if m >= 10 else f"{m:.3g} ({w})")
                 for m, w in zip(grid["mean"][i], grid["worst"][i], strict=True)]
        lines.append(f"| {name}={size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(grid: dict, out: Path, title: str) -> None:
    """A heat map of log10(1 + mean bit errors), each cell labelled with its mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = np.array(grid["mean"])  # (sizes, rows)
    fig, ax = plt.subplots(figsize=(1.2 + 1.05 * len(grid["rows"]), 0.9 + 0.55 * len(grid["sizes"])))
    ax.imshow(np.log10(1.0 + mean), cmap="Reds", vmin=0.0, vmax=max(1.0, float(np.log10(1.0 + mean.max()))),
              aspect="auto")
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            value = mean[i, j]
            label = "0" if value == 0 else f"{value:.0f}" if value >= 10 else f"{value:.2g}"
            ax.text(j, i, label, ha="center", va="center", fontsize=8,
                    color="white" if value > 30 else "black")
    ax.set_xticks(range(len(grid["rows"])), [str(n) for n in grid["rows"]])
    ax.set_yticks(range(len(grid["sizes"])), [f"{grid['size_name']}={s}" for s in grid["sizes"]])
    ax.set(xlabel="memory rows N", title=title)
    if grid["trained_rows"] in grid["rows"]:
        ax.axvline(grid["rows"].index(grid["trained_rows"]), color="grey", linestyle=":", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def section(grid: dict, command: str) -> str:
    """The eval.md section: what was measured, the table, the figure."""
    return (f"{SECTION}\n\nBit errors per sequence (mean; the worst sequence in brackets) over {grid['sequences']} "
            f"fresh sequences per cell (seed {grid['seed']}), by {grid['size_name']} and memory rows N, measured "
            f"through onnxruntime with this folder's graphs (the trained N is {grid['trained_rows']}; "
            f"{grid['seconds']:.0f} s). `{command}`\n\n{markdown(grid)}\n\n![grid](grid.png)\n")


def write(folder: Path, grid: dict, command: str) -> None:
    """grid.json, grid.png and eval.md's grid section (replaced, or appended)."""
    (folder / "grid.json").write_text(json.dumps(grid, indent=1) + "\n")
    figure(grid, folder / "grid.png", f"{folder.name}: bit errors / sequence ({grid['size_name']} × N)")
    report = folder / "eval.md"
    text = report.read_text() if report.is_file() else ""
    text = re.sub(rf"\n*{re.escape(SECTION)}\n.*?(?=\n## |\Z)", "", text, flags=re.S).rstrip("\n")
    report.write_text((text + "\n\n" if text else "") + section(grid, command))


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"want whole numbers separated by commas, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want positive whole numbers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="python -m ntm_serve.export.grid", description=summary)
    parser.add_argument("folder", type=Path, metavar="FOLDER")
    parser.add_argument("--sizes", type=_ints, help="copy's L or associative recall's K (default: the task's)")
    parser.add_argument("--rows", type=_ints, help="memory sizes N (default: the task's)")
    parser.add_argument("--sequences", type=int, default=128, help="fresh sequences per cell (default 128)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.sequences < 1:
        parser.error("--sequences must be >= 1")
    torch.set_num_threads(1)
    try:
        grid = measure(args.folder, args.sizes, args.rows, args.sequences)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(grid))
    if not args.no_write:
        command = "python -m ntm_serve.export.grid " + " ".join(argv if argv is not None else sys.argv[1:])
        write(args.folder, grid, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
