"""Training speed on the copy task, ours against the public pytorch-ntm, side by side in one process.

    python -m benchmarks.train_speed --pytorch-ntm /work/pytorch-ntm [--batches 1,16,64] [--quick] [--out DIR]

Same sizes for every contender (LSTM controller 100, memory 128 x 20, one read and one write head, copy with
L drawn from 1..20, 8 bits), one thread. Each contender does whole optimiser steps on fresh batches: forward
over the sequence, loss, backward, gradient clipping, optimiser step. Contenders take turns round by round
(benchmarks/timing.py), so background load falls on all alike; the figure is the median round's sequences/s.

pytorch-ntm is not part of this repository: give the path of a checkout (e.g. a clone of
github.com/loudinthecloud/pytorch-ntm made outside the repo) and its `ntm` package is imported from there at
run time. Its own training loop is mirrored step for step (its `train_batch`: RMSprop lr 1e-4, momentum 0.9,
alpha 0.95, BCE on sigmoid outputs, gradients clamped to +-10) without its per-element Python binarisation of
the outputs, which would only slow it down. Without the path only our trainer is measured, and the table says so.

Our contenders run the trainer's own step (`ntm_serve.training.train.train_step`): eager, and with `--compile`
(ntm_serve/training/compiled.py: the step compiled in chunks of several time steps, the optimiser fused), whose one-off
compile of every graph is done and timed before the first timed call and printed beside it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from benchmarks import machine
from benchmarks.report import Table, write_result
from benchmarks.timing import FULL, Contender, TimingPlan, measure
from ntm_serve.training.compiled import training_forward, warm_up
from ntm_serve.training.tasks import TaskSpec, copy_batch, get_task
from ntm_serve.training.train import Run, TrainConfig, build_model, build_optimizer, train_step

QUICK = TimingPlan(rounds=1, round_s=0.05, warmup_calls=1, max_calls=3)
PLAN = replace(FULL, rounds=5, round_s=4.0, warmup_calls=3)
SEED = 0
EAGER, COMPILED, THEIRS = "ntm-serve, eager", "ntm-serve, --compile", "pytorch-ntm"


@dataclass
class Prepared:
    """A contender and the seconds its first call took (for the compiled step: the compile)."""

    contender: Contender
    first_call_s: float


def ours(batch: int, compile_step: bool) -> Prepared:
    """The trainer's own optimiser step (Adam lr 1e-3, clip 10: the trainer's defaults) on copy batches."""
    cfg = TrainConfig(task="copy", out="", batch_size=batch, seed=SEED, compile=compile_step)
    task = get_task("copy")
    run = _new_run(cfg, task)
    device = torch.device("cpu")
    name = COMPILED if compile_step else EAGER
    contender = Contender(name, lambda: train_step(run, task, cfg, device), batch)
    # Every compiled graph (first step, each chunk size) is built before the first timed call, all in "first call s".
    return _prepared(contender, (lambda: warm_up(run.forward, run.model, batch)) if compile_step else None)


def _new_run(cfg: TrainConfig, task: TaskSpec) -> Run:
    model = build_model(cfg, task)
    return Run(model, build_optimizer(cfg, model), torch.Generator().manual_seed(SEED),
               forward=training_forward(model, cfg.compile))


def theirs(batch: int, path: Path) -> Prepared:
    """pytorch-ntm's EncapsulatedNTM and its training step, imported from the checkout at `path`."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    aio = importlib.import_module("ntm.aio")
    torch.manual_seed(SEED)
    net = aio.EncapsulatedNTM(9, 8, 100, 1, 1, 128, 20)  # inputs, outputs, controller, layers, heads, N, M
    optimizer = torch.optim.RMSprop(net.parameters(), lr=1e-4, momentum=0.9, alpha=0.95)
    criterion = nn.BCELoss()
    gen = torch.Generator().manual_seed(SEED)

    def step() -> float:
        length = int(torch.randint(1, 21, (1,), generator=gen))
        batch_data = copy_batch(gen, batch, length)
        inputs, targets = batch_data.inputs[: length + 1], batch_data.targets  # (L+1, B, 9), (L, B, 8)
        optimizer.zero_grad()
        net.init_sequence(batch)
        for x in inputs:
            net(x)
        outputs = torch.zeros(targets.shape)
        for t in range(length):
            outputs[t], _ = net()  # no input: the model's zero input
        loss = criterion(outputs, targets)
        loss.backward()
        for p in net.parameters():
            if p.grad is not None:
                p.grad.data.clamp_(-10, 10)
        optimizer.step()
        return float(loss.detach())

    return _prepared(Contender(THEIRS, step, batch))


def _prepared(contender: Contender, warm: Callable[[], None] | None = None) -> Prepared:
    start = time.perf_counter()
    if warm is not None:
        warm()
    contender.call()
    return Prepared(contender, time.perf_counter() - start)


def run(out: Path, batches: tuple[int, ...], pytorch_ntm: Path | None, quick: bool,
        compile_step: bool = True, plan: TimingPlan | None = None) -> dict:
    """Measure every contender at every batch size; print and write the table."""
    torch.set_num_threads(1)
    plan = plan or (QUICK if quick else PLAN)
    load_before = machine.load_average()
    results: dict[str, dict[str, dict]] = {}
    first_calls: dict[str, dict[str, float]] = {}
    for batch in batches:
        prepared = [ours(batch, compile_step=False)]
        if compile_step:
            prepared.append(ours(batch, compile_step=True))
        if pytorch_ntm is not None:
            prepared.append(theirs(batch, pytorch_ntm))
        timings = measure([p.contender for p in prepared], plan)
        for p in prepared:
            results.setdefault(p.contender.name, {})[str(batch)] = timings[p.contender.name].to_json()
            first_calls.setdefault(p.contender.name, {})[str(batch)] = p.first_call_s
    load_after = machine.load_average()
    table = _table(results, first_calls, batches, pytorch_ntm, plan, load_before, load_after)
    payload = {"benchmark": "train_speed", "mode": "quick" if quick else "full", "machine": machine.describe(),
               "load_before": load_before, "load_after": load_after, "threads": 1,
               "pytorch_ntm": str(pytorch_ntm) if pytorch_ntm else None, "results": results,
               "first_call_s": first_calls}
    write_result(out, "train_speed", payload, [table])
    print(table.markdown())
    return payload


def _table(results: dict[str, dict[str, dict]], first_calls: dict[str, dict[str, float]],
           batches: tuple[int, ...], pytorch_ntm: Path | None, plan: TimingPlan,
           load_before: list[float], load_after: list[float]) -> Table:
    table = Table("Training speed, copy task (sequences/s, one thread)",
                  ["batch", "contender", "sequences/s (median round)", "best round", "x pytorch-ntm",
                   "first call s"])
    for batch in batches:
        key = str(batch)
        reference = results.get(THEIRS, {}).get(key)
        for name, by_batch in results.items():
            timing = by_batch[key]
            rate, best = _rate(timing), timing["steps_per_call"] / (timing["best_us_per_call"] / 1e6)
            ratio = f"{rate / _rate(reference):.1f}" if reference else "—"
            table.add(batch, name, f"{rate:.0f}", f"{best:.0f}", ratio, f"{first_calls[name][key]:.1f}")
    table.notes.append(machine.load_note(load_before, load_after))
    table.notes.append(f"{plan.rounds} interleaved rounds of about {plan.round_s:g} s per contender and batch size; "
                       "every contender draws its lengths from the same seeded stream")
    table.notes.append("first call s: the first optimiser step; for --compile it includes the compile")
    if pytorch_ntm is None:
        table.notes.append("pytorch-ntm NOT measured (no --pytorch-ntm PATH given): ours only")
    return table


def _rate(timing: dict) -> float:
    return float(timing["session_steps_per_s"])


def _batches(text: str) -> tuple[int, ...]:
    return tuple(int(b) for b in text.split(",") if b.strip())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--pytorch-ntm", type=Path, default=None,
                   help="a checkout of github.com/loudinthecloud/pytorch-ntm (outside this repo) to measure against")
    p.add_argument("--batches", type=_batches, default=(1, 16, 64))
    p.add_argument("--quick", action="store_true", help="a few calls per contender: checks the script, no figures")
    p.add_argument("--no-compile", action="store_true", help="leave out the --compile contender")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)
    if a.pytorch_ntm is not None and not (a.pytorch_ntm / "ntm" / "aio.py").is_file():
        p.error(f"{a.pytorch_ntm} is not a pytorch-ntm checkout (no ntm/aio.py)")
    run(a.out, a.batches, a.pytorch_ntm, a.quick, not a.no_compile)

if __name__ == "__main__":
    main()
