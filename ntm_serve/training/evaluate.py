"""`python -m ntm_serve.training.evaluate FOLDER`: bit errors per sequence at the training range and beyond.

Writes `eval.json`, `eval.md` and `example.png` into the model folder and prints the table. The
points are the task's `TaskSpec.eval_points` (the training range first, then fixed lengths beyond
it). Every point draws its own held-out sequences from a generator seeded by (seed, point name),
so a point's figure does not depend on which other points exist, and the default seed is neither a
training seed nor the trainer's held-out seed (`ntm_serve.training.train.EVAL_SEED`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntm_serve.plots import attention_figure, used_rows
from ntm_serve.training.checkpoint import MODEL_FILE, checkpoint_hash, load_model
from ntm_serve.training.device import DEVICES, resolve_device
from ntm_serve.training.metrics import bit_errors, point_seed
from ntm_serve.training.model import NTM
from ntm_serve.training.one_shot_eval import evaluate_classifier
from ntm_serve.training.task_source import task_of
from ntm_serve.training.tasks import EvalSource, SequenceSet, TaskSpec, batch_errors, heldout_batches

log = logging.getLogger("ntm_serve.training.evaluate")  # not "__main__" under `python -m`

DEFAULT_SEED = 20_141_020  # the NTM paper's arXiv date; far from the training seeds and EVAL_SEED
DEFAULT_SEQUENCES = 1000
DEFAULT_BATCH = 100  # keeps the longest points (copy L=120: 241 steps) at a few MB per step
RANGE_BATCH = 10  # training-range points draw one length per batch: small batches cover the range evenly

# Targets from the issue, in bit errors per sequence: (point name, comparison, bound).
# Only NTM folders are held to them; the LSTM baselines are reported for comparison.
TARGETS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "copy": (("L in [1,20]", "<", 0.1), ("L=40", "<=", 1.0), ("L=80", "<=", 1.0), ("L=120", "<=", 5.0)),
    "repeat_copy": (("L,R in [1,10]", "<", 0.1),),
    "associative_recall": (("K in [2,6]", "<", 0.1), ("K=12", "<=", 0.5),
                           ("K in [2,6], wrap", "<", 0.1), ("K=12, wrap", "<=", 0.5)),
    "priority_sort": (("20 -> 16", "<=", 2.0),),
}


@dataclass
class PointResult:
    """One row of the report."""

    name: str
    training_range: bool
    bit_errors: float  # mean bit errors per sequence
    perfect: float  # fraction of sequences with no bit error
    max_errors: float  # worst sequence
    sequences: int
    max_steps: int  # longest input sequence seen at this point
    seconds: float
    target: str | None = None  # e.g. "< 0.1"
    met: bool | None = None


def model_kind(model: nn.Module) -> str:
    return "ntm" if isinstance(model, NTM) else "lstm_baseline"


@torch.no_grad()
def sequence_errors(
    model: nn.Module, sample: EvalSource, sequences: int, seed: int, batch_size: int, device: str = "cpu",
    task: TaskSpec | None = None,
) -> tuple[torch.Tensor, int]:
    """Bit errors (or the task's errors) of each of `sequences` held-out sequences (or of every sequence of a fixed
    set), batched. -> ((sequences,), T)."""
    errors: list[torch.Tensor] = []
    longest = 0
    for batch in heldout_batches(sample, sequences, seed, batch_size):
        batch = batch.to(device)
        logits = model(batch.inputs)[0]  # (T, B, O)
        found = bit_errors(logits, batch.targets) if task is None else batch_errors(task, logits, batch)
        errors.append(found.cpu())  # (B,)
        longest = max(longest, batch.inputs.shape[0])
    return torch.cat(errors).double(), longest  # double: means print as exact decimals


def evaluate_point(
    model: nn.Module, task: TaskSpec, name: str, sample: EvalSource, sequences: int, seed: int,
    batch_size: int = DEFAULT_BATCH, device: str = "cpu",
) -> PointResult:
    """Evaluate one point; the training-range point uses small batches so its lengths are well spread."""
    training_range = sample is task.sample
    started = time.monotonic()
    errors, longest = sequence_errors(
        model, sample, sequences, point_seed(seed, name),
        min(batch_size, RANGE_BATCH) if training_range else batch_size, device, task,
    )
    return PointResult(
        name=name, training_range=training_range, bit_errors=float(errors.mean()),
        perfect=float((errors == 0).double().mean()), max_errors=float(errors.max()), sequences=len(errors),
        max_steps=longest, seconds=round(time.monotonic() - started, 2),
    )


def apply_targets(results: list[PointResult], task_name: str, kind: str) -> None:
    """Attach the issue's targets (NTM folders only) to the matching rows."""
    if kind != "ntm":
        return
    by_name = {r.name: r for r in results}
    for point, op, bound in TARGETS.get(task_name, ()):
        row = by_name.get(point)
        if row is not None:
            row.target = f"{op} {bound:g}"
            row.met = row.bit_errors < bound if op == "<" else row.bit_errors <= bound


def sequences_to_reach(log_path: Path, threshold: float = 0.1) -> int | None:
    """Training sequences seen when the trainer's held-out bit errors first fell below `threshold` (None: never)."""
    if not log_path.exists():
        return None
    for line in log_path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("eval_bit_errors", float("inf")) < threshold:
            return int(row["sequences"])
    return None


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table with a short header."""
    reached = report.get("sequences_to_below_0.1")
    lines = [
        f"### {report['task']} ({report['kind']}), {report['sequences_trained']} training sequences",
        "",
        f"Bit errors per sequence over {report['sequences']} held-out sequences per point (seed {report['seed']}).",
        "First below 0.1 bit errors/seq on the trainer's held-out set after "
        + (f"{reached} training sequences." if reached is not None else "— not reached (or no train_log.jsonl)."),
        "",
        "| point | bit errors / seq | perfect | worst seq | max steps | target | met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in report["points"]:
        name = r["name"] + (" (training)" if r["training_range"] else "")
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {name} | {r['bit_errors']:.4f} | {100 * r['perfect']:.1f}% | {r['max_errors']:g} | "
            f"{r['max_steps']} | {r['target'] or ''} | {met} |"
        )
    return "\n".join(lines) + "\n"


@torch.no_grad()
def example_figure(model: nn.Module, task: TaskSpec, seed: int, out: Path, device: str = "cpu") -> None:
    """One example (the first fixed point beyond the range if any): inputs, targets, outputs, attention, memory."""
    name, sample = task.eval_points[1] if len(task.eval_points) > 1 else task.eval_points[0]
    batch = sample(torch.Generator().manual_seed(point_seed(seed, "example:" + name)), 1)
    logits, state, read_w, write_w = model(batch.inputs.to(device))  # (T, 1, O), ..., (T, 1, R, N), (T, 1, W, N)
    errors = float(bit_errors(logits, batch.targets.to(device)).sum())
    attention_figure(
        inputs=batch.inputs[:, 0].numpy(),  # (T, I)
        targets=batch.targets[:, 0].numpy(),  # (T_out, O)
        outputs=torch.sigmoid(logits[:, 0]).cpu().numpy(),  # (T, O)
        read_weights=None if read_w is None else read_w[:, 0].cpu().numpy(),  # (T, R, N)
        write_weights=None if write_w is None else write_w[:, 0].cpu().numpy(),  # (T, W, N)
        memory=None if state is None else state.memory[0].cpu().numpy(),  # (N, M)
        out=out,
        title=f"{task.name} ({model_kind(model)}), {name}: {errors:g} bit errors",
        # Only the rows the heads visited: a 20-row path drawn over 128 rows is a few pixels high.
        rows=None if read_w is None else used_rows(torch.cat([read_w, write_w], dim=2)[:, 0].cpu().numpy()),
    )


def evaluate_folder(
    folder: Path | str, sequences: int = DEFAULT_SEQUENCES, seed: int = DEFAULT_SEED, batch_size: int = DEFAULT_BATCH,
    device: str = "cpu", points: list[str] | None = None, write: bool = True, figure: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model folder at every eval point (or the named ones); optionally write the report files."""
    folder = Path(folder)
    if folder.is_file():  # the checkpoint itself was named
        folder = folder.parent
    model, meta = load_model(folder)
    model.to(device)
    task = task_of(meta)
    kind = model_kind(model)
    if task.metric == "episodes":  # one-shot classification: accuracy by instance, not bit errors
        return evaluate_classifier(model, task, kind, folder, meta, sequences, seed, batch_size, device, points,
                                   write, figure, command, checkpoint_hash(folder))
    if task.metric != "bits" or any(isinstance(s, SequenceSet) for _, s in task.eval_points):
        from ntm_serve.training.figures_eval import evaluate_figures  # data sets and task files

        return evaluate_figures(model, task, kind, folder, meta, sequences, seed, batch_size, device, points,
                                write, figure, command, checkpoint_hash(folder))
    chosen = [(n, s) for n, s in task.eval_points if points is None or n in points]
    if points is not None and len(chosen) != len(points):
        known = [n for n, _ in task.eval_points]
        raise ValueError(f"unknown eval point(s) {sorted(set(points) - set(known))}; {task.name} has {known}")
    results = []
    for name, sample in chosen:
        results.append(evaluate_point(model, task, name, sample, sequences, seed, batch_size, device))
        log.info("%s %s: %.4f bit errors/seq (%.1fs)", folder, name, results[-1].bit_errors, results[-1].seconds)
    apply_targets(results, task.name, kind)
    report = {
        "task": task.name, "kind": kind, "folder": str(folder), "checkpoint_sha256": checkpoint_hash(folder),
        "sequences_trained": meta.get("sequences_trained"),
        "sequences_to_below_0.1": sequences_to_reach(folder / "train_log.jsonl"),
        "sequences": sequences, "seed": seed,
        "metric": "bit errors per sequence: target bits where round(output) != target, averaged over sequences",
        "points": [asdict(r) for r in results],
        "command": command,
    }
    if write:
        (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "eval.md").write_text(markdown_table(report))
    if figure:
        example_figure(model, task, seed, folder / "example.png", device)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m ntm_serve.training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="model folder holding checkpoint.pt (e.g. models/copy)")
    p.add_argument("--sequences", type=int, default=DEFAULT_SEQUENCES, help="held-out sequences per point")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--device", default="auto", help=f"one of {DEVICES}: auto is CUDA when torch sees one")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads: per-step tensors are small, one thread is fastest (0: torch default)")
    p.add_argument("--points", nargs="+", help="evaluate only these points (names as in the table)")
    a = p.parse_args(argv)
    if a.sequences < 1 or a.batch_size < 1:
        p.error("--sequences and --batch-size must be >= 1")
    if not (Path(a.folder) / MODEL_FILE).exists() and not Path(a.folder).is_file():
        p.error(f"{a.folder}: no {MODEL_FILE} there")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    command = "python -m ntm_serve.training.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
    device = str(resolve_device(a.device))
    report = evaluate_folder(a.folder, a.sequences, a.seed, a.batch_size, device, a.points, command=command)
    print(report_markdown(report))
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The report's table, whichever kind of report it is."""
    return report.get("markdown") or markdown_table(report)


if __name__ == "__main__":
    main()
