"""Evaluation of data sets and task files: each eval point's figure by the kind of target.

bits -> bit errors per sequence (counted bits only); classes -> accuracy over counted steps; reals -> mean squared
error over counted values. A data set's points are its splits, evaluated whole (the training split: a fixed sample
of it, see ntm_serve/training/dataset.py); a task file's are drawn fresh, `sequences` per point. Writes eval.json,
eval.md and example.png, as the built-in tasks' report does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntm_serve.plots import attention_figure, used_rows
from ntm_serve.training.metrics import point_seed
from ntm_serve.training.tasks import Batch, EvalSource, SequenceSet, TaskSpec, batch_errors, heldout_batches

FIGURES = {  # metric -> (the report's figure, the markdown column, how it is counted)
    "bits": ("bit_errors", "bit errors / seq", "counted target bits where round(output) != target, per sequence"),
    "classes": ("accuracy", "accuracy", "counted steps whose arg-max label is the target, over all counted steps"),
    "reals": ("mse", "mean squared error", "squared output - target over every counted value"),
}


def counted(batch: Batch) -> torch.Tensor:
    """Counted steps per sequence (B,): the mask's, or every target step."""
    if batch.mask is not None:
        return batch.mask.sum(0)
    return torch.full((batch.targets.shape[1],), float(batch.targets.shape[0]), device=batch.targets.device)


@torch.no_grad()
def point_figures(model: nn.Module, task: TaskSpec, name: str, source: EvalSource, sequences: int, seed: int,
                  batch_size: int, device: str) -> dict[str, Any]:
    """One point's row: the figure, errors per sequence, the share of sequences without an error, the worst."""
    started = time.monotonic()
    errors, steps = [], []
    longest = 0
    for batch in heldout_batches(source, sequences, point_seed(seed, name), batch_size):
        batch = batch.to(device)
        logits = model(batch.inputs)[0]  # (T, B, O)
        errors.append(batch_errors(task, logits, batch).double().cpu())  # (B,)
        steps.append(counted(batch).double().cpu())  # (B,)
        longest = max(longest, batch.inputs.shape[0])
    err, units = torch.cat(errors), torch.cat(steps)  # (S,), (S,) counted steps
    if task.metric == "classes":
        value = 1.0 - float(err.sum() / units.sum())
    elif task.metric == "reals":  # errors are each sequence's MSE: weigh by its counted steps (x O, the same for all)
        value = float((err * units).sum() / units.sum())
    else:
        value = float(err.mean())
    key = FIGURES.get(task.metric, FIGURES["bits"])[0]
    return {"name": name, key: value, "errors_per_sequence": float(err.mean()),
            "perfect": float((err == 0).double().mean()), "worst": float(err.max()), "sequences": len(err),
            "counted_steps": int(units.sum()), "max_steps": longest, "seconds": round(time.monotonic() - started, 2),
            "fixed_set": isinstance(source, SequenceSet)}


def markdown_table(report: dict[str, Any]) -> str:
    key, column, how = FIGURES.get(report["metric_kind"], FIGURES["bits"])
    lines = [
        f"### {report['task']} ({report['kind']}), {report['sequences_trained']} training sequences",
        "",
        f"{column[0].upper() + column[1:]}: {how}. Fixed sets (a data set's splits) are evaluated whole; drawn "
        f"points over {report['sequences']} sequences each (seed {report['seed']}).",
        "",
        f"| point | {column} | errors / seq | perfect | worst seq | sequences | max steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["points"]:
        value = f"{100 * p[key]:.2f}%" if key == "accuracy" else f"{p[key]:.4g}"
        lines.append(f"| {p['name']} | {value} | {p['errors_per_sequence']:.4g} | {100 * p['perfect']:.1f}% | "
                     f"{p['worst']:.4g} | {p['sequences']} | {p['max_steps']} |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def example_figure(model: nn.Module, task: TaskSpec, seed: int, out: Path, device: str = "cpu") -> None:
    """The first sequence of the last point (a data set's validation split): inputs, targets, outputs, heads."""
    name, source = task.eval_points[-1]
    batch = next(heldout_batches(source, 1, point_seed(seed, "example:" + name), 1)).to(device)
    logits, state, read_w, write_w = model(batch.inputs)  # (T, 1, O), ..., (T, 1, R, N), (T, 1, W, N)
    outputs = {"sigmoid": torch.sigmoid, "softmax": lambda x: torch.softmax(x, -1)}.get(
        task.output_activation, lambda x: x)(logits[:, 0])  # (T, O)
    errors = float(batch_errors(task, logits, batch).sum())
    attention_figure(
        inputs=batch.inputs[:, 0].cpu().numpy(), targets=batch.targets[:, 0].cpu().numpy(),
        outputs=outputs.cpu().numpy(),
        read_weights=None if read_w is None else read_w[:, 0].cpu().numpy(),
        write_weights=None if write_w is None else write_w[:, 0].cpu().numpy(),
        memory=None if state is None else state.memory[0].cpu().numpy(),
        out=out, title=f"{task.name}, {name}: {errors:.4g} {task.figure.split(' /')[0]}",
        rows=None if read_w is None else used_rows(torch.cat([read_w, write_w], dim=2)[:, 0].cpu().numpy()),
    )


def evaluate_figures(model: nn.Module, task: TaskSpec, kind: str, folder: Path, meta: dict[str, Any],
                     sequences: int, seed: int, batch_size: int, device: str, points: list[str] | None,
                     write: bool, figure: bool, command: str | None, checkpoint_sha256: str) -> dict[str, Any]:
    """Every eval point's figure (or the named ones'); optionally write eval.json, eval.md and example.png."""
    chosen = [(n, s) for n, s in task.eval_points if points is None or n in points]
    if points is not None and len(chosen) != len(points):
        known = [n for n, _ in task.eval_points]
        raise ValueError(f"unknown eval point(s) {sorted(set(points) - set(known))}; {task.name} has {known}")
    results = [point_figures(model, task, n, s, sequences, seed, batch_size, device) for n, s in chosen]
    report: dict[str, Any] = {
        "task": task.name, "kind": kind, "folder": str(folder), "checkpoint_sha256": checkpoint_sha256,
        "sequences_trained": meta.get("sequences_trained"), "sequences": sequences, "seed": seed,
        "metric_kind": task.metric, "metric": FIGURES.get(task.metric, FIGURES["bits"])[2],
        "points": results, "command": command,
    }
    report["markdown"] = markdown_table(report)
    if write:
        (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "eval.md").write_text(report["markdown"])
    if figure:
        example_figure(model, task, seed, folder / "example.png", device)
    return report
