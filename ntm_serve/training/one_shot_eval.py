"""Evaluation of the one-shot tasks: accuracy by instance (the 1st, 2nd, 3rd, 4th, 5th, 10th sight of a class).

`python -m ntm_serve.training.evaluate FOLDER` hands softmax-output (classification) tasks to `evaluate_classifier`,
which writes the same files as the bit tasks' report: eval.json, eval.md, example.png (an episode of
held-out classes: images, labels, predictions and where the heads wrote and read). Each point also gets a
reference row: the pixel nearest neighbour (ntm_serve/training/one_shot_reference.py) on the very same episodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntm_serve.plots import episode_figure
from ntm_serve.training.metrics import point_seed
from ntm_serve.training.one_shot import accuracy_by_instance
from ntm_serve.training.one_shot_reference import NearestNeighbour
from ntm_serve.training.tasks import TaskSpec

INSTANCES = (1, 2, 3, 4, 5, 10)  # the columns of Santoro et al.'s table
# The bars, on held-out classes (NTM folders only): instance -> least accuracy.
TARGETS: dict[str, tuple[str, dict[int, float]]] = {
    "one_shot": ("held-out classes", {2: 0.85, 10: 0.95}),
    "one_shot_glyphs": ("held-out scripts", {2: 0.85, 10: 0.98}),
    "one_shot_glyphs15": ("held-out scripts", {2: 0.65, 10: 0.95}),
}


@torch.no_grad()
def instance_accuracy(model: nn.Module, sample: Any, episodes: int, seed: int, batch_size: int = 100,
                      device: str = "cpu") -> dict[str, Any]:
    """Accuracy at every instance 1..10 and overall, over `episodes` episodes drawn from `sample`."""
    gen = torch.Generator().manual_seed(seed)
    hits, seen = torch.zeros(10), torch.zeros(10)
    correct, steps, count = 0.0, 0, 0
    while count < episodes:
        batch = sample(gen, min(batch_size, episodes - count))
        logits = model(batch.inputs.to(device))[0].cpu()  # (T, B, C)
        h, s = accuracy_by_instance(logits, batch.targets)
        hits, seen = hits + h, seen + s
        correct += float((logits.argmax(-1) == batch.targets.argmax(-1)).sum())
        steps += batch.targets.shape[0] * batch.targets.shape[1]
        count += batch.inputs.shape[1]
    return {
        "episodes": count,
        "accuracy": correct / steps,
        "by_instance": {str(n): float(hits[n - 1] / seen[n - 1]) if seen[n - 1] else None for n in range(1, 11)},
        "counts": {str(n): int(seen[n - 1]) for n in range(1, 11)},
    }


def apply_targets(points: list[dict[str, Any]], task_name: str, kind: str) -> None:
    """Attach the issue's bars (NTM folders only) to the held-out row: target text and whether it is met."""
    if kind != "ntm" or task_name not in TARGETS:
        return
    name, bars = TARGETS[task_name]
    for point in points:
        if point["name"] == name:
            point["target"] = ", ".join(f"{n}{_ordinal(n)} >= {100 * v:g}%" for n, v in bars.items())
            point["met"] = all(point["by_instance"][str(n)] >= v for n, v in bars.items())


def _episode_steps(task: TaskSpec) -> int:
    """Steps of one episode of the task's last eval point."""
    return int(task.eval_points[-1][1](torch.Generator().manual_seed(0), 1).inputs.shape[0])


def _ordinal(n: int) -> str:
    return {1: "st", 2: "nd", 3: "rd"}.get(n, "th")


def markdown_table(report: dict[str, Any]) -> str:
    """Accuracy by instance per point, as in Santoro et al.'s tables."""
    head = " | ".join(f"{n}{_ordinal(n)}" for n in INSTANCES)
    lines = [
        f"### {report['task']} ({report['kind']}), {report['sequences_trained']} training episodes",
        "",
        f"Accuracy by instance (the n-th time a class appears in a {report.get('episode_steps', 50)}-step, "
        f"{report.get('classes', 5)}-class episode) over "
        f"{report['sequences']} episodes per point (seed {report['seed']}).",
        "",
        f"| classes | {head} | all steps | target | met |",
        "|---|" + "---:|" * (len(INSTANCES) + 1) + "---|---|",
    ]
    for p in report["points"]:
        cells = " | ".join(f"{100 * p['by_instance'][str(n)]:.1f}%" for n in INSTANCES)
        met = "" if p.get("met") is None else ("yes" if p["met"] else "**no**")
        lines.append(f"| {p['name']} | {cells} | {100 * p['accuracy']:.1f}% | {p.get('target') or ''} | {met} |")
        if "pixel_nn" in p:
            nn_cells = " | ".join(f"{100 * p['pixel_nn']['by_instance'][str(n)]:.1f}%" for n in INSTANCES)
            lines.append(f"| {p['name']}, pixel NN (same episodes) | {nn_cells} | "
                         f"{100 * p['pixel_nn']['accuracy']:.1f}% |  |  |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def example_figure(model: nn.Module, task: TaskSpec, seed: int, out: Path, device: str = "cpu") -> None:
    """One episode of the last eval point (held-out classes for digits): images, labels, predictions, heads."""
    name, sample = task.eval_points[-1]
    batch = sample(torch.Generator().manual_seed(seed), 1)
    logits, _, read_w, write_w = model(batch.inputs.to(device))  # (T, 1, C), state, (T, 1, R, N), (T, 1, W, N)
    probabilities = torch.softmax(logits[:, 0], -1).cpu().numpy()  # (T, C)
    labels = batch.targets[:, 0].argmax(-1).numpy()  # (T,)
    correct = int((probabilities.argmax(-1) == labels).sum())
    episode_figure(
        batch.inputs[:, 0, :task.input_size - task.output_size].numpy(), labels, probabilities,
        None if read_w is None else read_w[:, 0].cpu().numpy(),
        None if write_w is None else write_w[:, 0].cpu().numpy(),
        out, f"{task.name}, {name}: {correct}/{len(labels)} correct",
    )


def evaluate_classifier(model: nn.Module, task: TaskSpec, kind: str, folder: Path, meta: dict[str, Any],
                        sequences: int, seed: int, batch_size: int, device: str, points: list[str] | None,
                        write: bool, figure: bool, command: str | None, checkpoint_sha256: str) -> dict[str, Any]:
    """Accuracy by instance at every eval point (or the named ones); optionally write eval.json/eval.md/example.png."""
    chosen = [(n, s) for n, s in task.eval_points if points is None or n in points]
    reference = NearestNeighbour(task.input_size - task.output_size, task.output_size)
    results = [{"name": n, **instance_accuracy(model, s, sequences, point_seed(seed, n), batch_size, device),
                "pixel_nn": instance_accuracy(reference, s, sequences, point_seed(seed, n), batch_size)}
               for n, s in chosen]
    apply_targets(results, task.name, kind)
    report = {
        "task": task.name, "kind": kind, "folder": str(folder), "checkpoint_sha256": checkpoint_sha256,
        "sequences_trained": meta.get("sequences_trained"), "sequences": sequences, "seed": seed,
        "classes": task.output_size, "episode_steps": _episode_steps(task),
        "metric": "accuracy by instance: arg-max label correct at the n-th appearance of a class in an episode",
        "points": results, "command": command,
    }
    report["markdown"] = markdown_table(report)
    if write:
        (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "eval.md").write_text(report["markdown"])
    if figure:
        example_figure(model, task, point_seed(seed, "example"), folder / "example.png", device)
    return report
