"""Training loop: batched, seeded, resumable, logged to JSONL, on any device.

A run is fully determined by its TrainConfig: the model init comes from `seed`, training batches
from a generator seeded with `seed`, held-out evaluation from a separate fixed seed. The resume
file stores the optimizer and the batch generator's RNG state, so a resumed run ends exactly
where the uninterrupted run ends. Resuming with a larger `sequences` budget continues the run.

The shipped `checkpoint.pt` is the best model by held-out bit errors (ties go to the later one),
not the last: NTM training with Adam can diverge long after it has converged, and a late blow-up
must not overwrite a good model. `resume.pt` always holds the latest state.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntm_serve.plots import learning_curve
from ntm_serve.training.checkpoint import MODEL_FILE, RESUME_FILE, load_model, save_model
from ntm_serve.training.compiled import Forward, training_forward, use_fast_kernels
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.device import resolve_device
from ntm_serve.training.metrics import bit_errors
from ntm_serve.training.model import NTM, LSTMBaseline
from ntm_serve.training.progress import Progress
from ntm_serve.training.tasks import Errors, Sampler, TaskSpec, get_task
from ntm_serve.training.transplant import transplant

log = logging.getLogger(__name__)
EVAL_SEED = 1_000_003  # held-out sequences come from their own stream, never the training one


@dataclass
class TrainConfig:
    task: str
    out: str
    model: str = "ntm"  # or "lstm_baseline"
    seed: int = 0
    batch_size: int = 16
    sequences: int = 200_000  # training budget, in sequences
    optimizer: str = "adam"  # "adam" (Collier & Beel) or "rmsprop" (Graves: momentum 0.9)
    lr: float = 1e-3
    momentum: float = 0.9
    clip: float = 10.0  # gradient norm clipping
    eval_every: int = 5_000  # sequences between held-out evaluations and checkpoints
    eval_sequences: int = 256
    stop_below: float = 0.0  # stop once held-out bit errors < this (0 = never); deterministic
    threads: int = 1
    ntm: dict[str, Any] = field(default_factory=dict)  # NTMConfig overrides
    baseline: dict[str, Any] = field(default_factory=dict)  # LSTMBaseline overrides
    wrap: bool = False  # associative recall: the seed's variant where the query may be the last item
    permute: float = 0.0  # one_shot: fraction of training episodes with pixels permuted (one_shot.permuted)
    init_from: str = ""  # warm start: an NTM checkpoint folder whose weights seed this run (see transplant)
    max_length: int = 0  # copy only: train on L in [1, max_length] (0: the task's 1..20)
    min_items: int = 0  # priority_sort only: train on n in [min_items, 20] items (0: always 20)
    narrow: float = 0.0  # priority_sort only: fraction of training batches with priorities in a narrower interval
    select_on: str = ""  # eval point whose held-out figure picks the shipped checkpoint ("": the training range)
    device: str = "auto"  # auto (CUDA when torch sees one), cpu, cuda; not part of the run's identity
    # NTM.step compiled in chunks, Adam fused (ntm_serve/training/compiled.py); not part of the identity
    compile: bool = False


def build_model(cfg: TrainConfig, task: TaskSpec) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.model == "ntm":
        return NTM(NTMConfig(task.input_size, task.output_size, **cfg.ntm))
    if cfg.model == "lstm_baseline":
        return LSTMBaseline(task.input_size, task.output_size, **cfg.baseline)
    raise ValueError(f"unknown model {cfg.model!r}")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser; with --compile its update runs fused (ntm_serve/training/compiled.py:
    use_fast_kernels)."""
    if cfg.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    elif cfg.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, alpha=0.95)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    use_fast_kernels(optimizer, cfg.compile)
    return optimizer


@torch.no_grad()
def evaluate_point(model: nn.Module, sample: Sampler, sequences: int, seed: int, batch_size: int = 64,
                   device: torch.device | str = "cpu", errors: Errors = bit_errors) -> float:
    """Mean errors per sequence (bit errors, or the task's `errors`) over `sequences` held-out sequences."""
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    while count < sequences:
        batch = sample(gen, min(batch_size, sequences - count))
        logits = model(batch.inputs.to(device))[0]  # (T, B, O)
        total += float(errors(logits, batch.targets.to(device)).sum())
        count += batch.inputs.shape[1]
    return total / count


@dataclass
class Run:
    """The live state of one training run: what a resume file restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    gen: torch.Generator  # the training batches' stream; always on the CPU, so a run is the same on any device
    seen: int = 0  # sequences trained on
    best: float = float("inf")  # best held-out figure so far (the shipped checkpoint's)
    last_eval: float | None = None  # latest held-out bit errors on the training distribution
    started: float = field(default_factory=time.monotonic)  # the log's "seconds" count from here
    forward: Forward | None = None  # what training differentiates (compiled or eager); None: the model's forward


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a model; writes checkpoint, resume file, JSONL log and learning curve to cfg.out."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    task = get_task(cfg.task, cfg.wrap, cfg.max_length, cfg.permute, cfg.min_items, cfg.narrow)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = _start_or_resume(cfg, task, out, device)
    select = _selection_sampler(cfg, task)
    meta = _checkpoint_meta(cfg, task)
    bar = Progress(cfg.sequences, run.seen, enabled=progress)
    window = _Window()
    run.model.train()
    while run.seen < cfg.sequences and not (run.last_eval is not None and run.last_eval < cfg.stop_below):
        window.add(*train_step(run, task, cfg, device))
        bar.update(cfg.batch_size, loss=f"{window.loss:.4f}", bits=f"{window.bits:.2f}",
                   eval=f"{run.last_eval:.3f}" if run.last_eval is not None else "-")
        if run.seen % cfg.eval_every < cfg.batch_size or run.seen >= cfg.sequences:
            _evaluate_and_checkpoint(run, task, select, cfg, out, meta, window, device)
            window = _Window()
    bar.close()
    run.model.eval()
    if not (out / MODEL_FILE).exists():  # a budget shorter than one evaluation period
        save_model(run.model, out, {**meta, "sequences_trained": run.seen, "eval_bit_errors": run.last_eval})
    _save_resume(run, cfg, out)
    learning_curve(out / "train_log.jsonl", out / "learning_curve.png", f"{cfg.model} on {task.name}",
                   task.output_activation == "softmax")
    return {"sequences": run.seen, "eval_bit_errors": run.last_eval}


def _start_or_resume(cfg: TrainConfig, task: TaskSpec, out: Path, device: torch.device) -> Run:
    """A fresh run (seeded init, optional warm start) or the one `resume.pt` holds; the log is cut to match."""
    model = build_model(cfg, task)
    if cfg.init_from:
        source, _ = load_model(cfg.init_from)
        transplant(source, model)
    model.to(device)
    run = Run(model, build_optimizer(cfg, model), torch.Generator().manual_seed(cfg.seed),
              forward=training_forward(model, cfg.compile))
    log_path, resume_path = out / "train_log.jsonl", out / RESUME_FILE
    if not resume_path.exists():
        log_path.unlink(missing_ok=True)
        return run
    state = torch.load(resume_path, map_location="cpu", weights_only=False)  # CPU: the generator state must stay there
    if _identity(state["train_config"]) != _identity(asdict(cfg)):
        raise ValueError(f"{resume_path} was written by a different training config; use another --out")
    model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    use_fast_kernels(run.optimizer, cfg.compile)  # the saved groups' flags are the writer's choice, not this run's
    run.gen.set_state(state["generator"])
    run.seen, run.best = state["sequences"], state.get("best_eval", run.best)
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    log_path.write_text("".join(line + "\n" for line in lines if json.loads(line)["sequences"] <= run.seen))
    run.last_eval = _last_eval(log_path)
    log.info("resumed %s at %d sequences", out, run.seen)
    return run


def _checkpoint_meta(cfg: TrainConfig, task: TaskSpec) -> dict[str, Any]:
    meta = {"task": task.name, "input_size": task.input_size, "output_size": task.output_size,
            "train_config": asdict(cfg), "encoding": task.encoding, **task.metadata}
    if cfg.model == "lstm_baseline":
        meta["baseline"] = cfg.baseline
    return meta


def _selection_sampler(cfg: TrainConfig, task: TaskSpec) -> Sampler | None:
    """The eval point that picks the shipped checkpoint (None: the training distribution's held-out set).

    A priority sort trained on fewer items (min_items) is picked on its encoding, 20 -> 16, not on the mixture.
    """
    name = cfg.select_on or (task.eval_points[0][0] if cfg.min_items or cfg.narrow else "")
    if not name:
        return None
    points = dict(task.eval_points)
    if name not in points:
        raise ValueError(f"select_on {name!r} is not an eval point of {task.name}: {sorted(points)}")
    return points[name]


class _Window:
    """Training loss and bit errors averaged since the last evaluation."""

    def __init__(self) -> None:
        self.loss_sum, self.bits_sum, self.batches = 0.0, 0.0, 0

    def add(self, loss: float, bits: float) -> None:
        self.loss_sum, self.bits_sum, self.batches = self.loss_sum + loss, self.bits_sum + bits, self.batches + 1

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.batches, 1)

    @property
    def bits(self) -> float:
        return self.bits_sum / max(self.batches, 1)


def train_step(run: Run, task: TaskSpec, cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """One optimiser step on a fresh batch. -> (loss, mean bit errors per sequence)."""
    batch = task.sample(run.gen, cfg.batch_size)
    inputs, targets = batch.inputs.to(device), batch.targets.to(device)  # (T, B, I), (T_out, B, O)
    logits = run.forward(inputs) if run.forward is not None else run.model(inputs)[0]  # (T, B, O)
    loss = task.loss(logits, targets)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip)
    run.optimizer.step()
    run.seen += cfg.batch_size
    return float(loss.detach()), float(task.errors(logits.detach(), targets).mean())


def _evaluate_and_checkpoint(run: Run, task: TaskSpec, select: Sampler | None, cfg: TrainConfig, out: Path,
                             meta: dict[str, Any], window: _Window, device: torch.device) -> None:
    """Held-out evaluation, a log row, the shipped checkpoint when the selection figure is the best so far,
    and the resume file."""
    run.model.eval()
    run.last_eval = evaluate_point(run.model, task.sample, cfg.eval_sequences, EVAL_SEED, device=device,
                                   errors=task.errors)
    row: dict[str, Any] = {"sequences": run.seen, "loss": window.loss, "bit_errors": window.bits,
                           "eval_bit_errors": run.last_eval}
    figure = run.last_eval
    if select is not None:
        figure = evaluate_point(run.model, select, cfg.eval_sequences, EVAL_SEED, device=device, errors=task.errors)
        row["select_bit_errors"] = figure
    run.model.train()
    row["seconds"] = round(time.monotonic() - run.started, 1)
    with (out / "train_log.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    if figure <= run.best:
        run.best = figure
        save_model(run.model, out, {**meta, "sequences_trained": run.seen, "eval_bit_errors": run.last_eval,
                                    **({"select_bit_errors": figure} if select is not None else {})})
    _save_resume(run, cfg, out)


def _last_eval(log_path: Path) -> float | None:
    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return rows[-1]["eval_bit_errors"] if rows else None


def _identity(train_config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a training config that define the run; the folder, budget, stop rule and device may change
    on resume (a run moved to another folder or machine is the same run; compiled or eager steps differ by float
    noise only)."""
    defaults = asdict(TrainConfig(task="", out=""))  # fields added since an old resume file was written
    merged = {**defaults, **train_config}
    return {k: v for k, v in merged.items() if k not in ("out", "sequences", "stop_below", "device", "compile")}


def _save_resume(run: Run, cfg: TrainConfig, out: Path) -> None:
    tmp = out / (RESUME_FILE + ".tmp")
    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "generator": run.gen.get_state(), "sequences": run.seen, "best_eval": run.best,
                "train_config": asdict(cfg)}, tmp)
    tmp.replace(out / RESUME_FILE)
