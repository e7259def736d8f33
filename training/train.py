"""Training loop: batched, seeded, resumable, logged to JSONL, with a tqdm progress bar.

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
from tqdm import tqdm

from training.checkpoint import MODEL_FILE, RESUME_FILE, load_model, save_model
from training.config import NTMConfig
from training.metrics import bit_errors
from training.model import NTM, LSTMBaseline
from training.plots import learning_curve
from training.tasks import TaskSpec, get_task

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


def build_model(cfg: TrainConfig, task: TaskSpec) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.model == "ntm":
        return NTM(NTMConfig(task.input_size, task.output_size, **cfg.ntm))
    if cfg.model == "lstm_baseline":
        return LSTMBaseline(task.input_size, task.output_size, **cfg.baseline)
    raise ValueError(f"unknown model {cfg.model!r}")


@torch.no_grad()
def transplant(source: nn.Module, target: nn.Module) -> None:
    """Warm-start `target` from a trained NTM of another task (e.g. repeat copy from copy).

    Parameters of equal shape are copied. Where only the task's input or output width differs, the
    shared channels are copied and the new ones keep their fresh initialisation: the controller's input
    columns are laid out as [x (I), read vectors (R*M), h], so x's columns and the rest are copied
    separately; the output layer's rows are the output channels.
    """
    if not (isinstance(source, NTM) and isinstance(target, NTM)):
        raise ValueError("init_from needs an NTM checkpoint and an NTM run")
    src_in, dst_in = source.config.input_size, target.config.input_size
    for name, dst in target.state_dict().items():
        src = source.state_dict()[name]
        if src.shape == dst.shape:
            dst.copy_(src)
        elif name.startswith("controller.") and name.endswith("weight") and src.shape[0] == dst.shape[0]:
            shared = min(src_in, dst_in)
            dst[:, :shared] = src[:, :shared]
            dst[:, dst_in:] = src[:, src_in:]
        elif name.startswith("output.") and src.shape[1:] == dst.shape[1:]:
            shared = min(src.shape[0], dst.shape[0])
            dst[:shared] = src[:shared]
        else:
            raise ValueError(f"cannot transplant {name}: {tuple(src.shape)} -> {tuple(dst.shape)}")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, alpha=0.95)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


@torch.no_grad()
def evaluate_point(model: nn.Module, sample: Any, sequences: int, seed: int, batch_size: int = 64,
                   errors: Any = bit_errors) -> float:
    """Mean errors per sequence (bit errors, or the task's `errors`) over `sequences` held-out sequences."""
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    while count < sequences:
        batch = sample(gen, min(batch_size, sequences - count))
        logits = model(batch.inputs)[0]
        total += float(errors(logits, batch.targets).sum())
        count += batch.inputs.shape[1]
    return total / count


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a model; writes checkpoint, resume file, JSONL log and learning curve to cfg.out."""
    torch.set_num_threads(cfg.threads)
    task = get_task(cfg.task, cfg.wrap, cfg.permute)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, task)
    if cfg.init_from:
        source, _ = load_model(cfg.init_from)
        transplant(source, model)
    optimizer = build_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    seen, started, best = 0, time.monotonic(), float("inf")
    log_path = out / "train_log.jsonl"
    resume_path = out / RESUME_FILE

    if resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        if _identity(state["train_config"]) != _identity(asdict(cfg)):
            raise ValueError(f"{resume_path} was written by a different training config; use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        seen = state["sequences"]
        best = state.get("best_eval", best)
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        log_path.write_text("".join(line + "\n" for line in lines if json.loads(line)["sequences"] <= seen))
        log.info("resumed %s at %d sequences", out, seen)
    elif log_path.exists():
        log_path.unlink()

    meta = {"task": task.name, "input_size": task.input_size, "output_size": task.output_size,
            "train_config": asdict(cfg), "encoding": task.encoding, **task.metadata}
    if cfg.model == "lstm_baseline":
        meta["baseline"] = cfg.baseline
    last_eval = _last_eval(log_path)
    bar = tqdm(total=cfg.sequences, initial=seen, disable=not progress, unit="seq", dynamic_ncols=True)
    loss_sum, err_sum, n_batches = 0.0, 0.0, 0
    model.train()
    while seen < cfg.sequences and not (last_eval is not None and last_eval < cfg.stop_below):
        batch = task.sample(gen, cfg.batch_size)
        logits = model(batch.inputs)[0]
        loss = task.loss(logits, batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        seen += cfg.batch_size
        loss_sum += float(loss.detach())
        err_sum += float(task.errors(logits.detach(), batch.targets).mean())
        n_batches += 1
        bar.update(cfg.batch_size)
        bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}", bits=f"{err_sum / n_batches:.2f}",
                        eval=f"{last_eval:.3f}" if last_eval is not None else "-")
        if seen % cfg.eval_every < cfg.batch_size or seen >= cfg.sequences:
            model.eval()
            last_eval = evaluate_point(model, task.sample, cfg.eval_sequences, EVAL_SEED, errors=task.errors)
            model.train()
            row = {"sequences": seen, "loss": loss_sum / n_batches, "bit_errors": err_sum / n_batches,
                   "eval_bit_errors": last_eval, "seconds": round(time.monotonic() - started, 1)}
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            loss_sum, err_sum, n_batches = 0.0, 0.0, 0
            if last_eval <= best:
                best = last_eval
                save_model(model, out, {**meta, "sequences_trained": seen, "eval_bit_errors": last_eval})
            _save_resume(model, optimizer, gen, seen, best, cfg, out)
    bar.close()
    model.eval()
    if not (out / MODEL_FILE).exists():  # a budget shorter than one evaluation period
        save_model(model, out, {**meta, "sequences_trained": seen, "eval_bit_errors": last_eval})
    _save_resume(model, optimizer, gen, seen, best, cfg, out)
    learning_curve(log_path, out / "learning_curve.png", f"{cfg.model} on {task.name}",
                   task.output_activation == "softmax")
    return {"sequences": seen, "eval_bit_errors": last_eval}


def _last_eval(log_path: Path) -> float | None:
    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return rows[-1]["eval_bit_errors"] if rows else None


def _identity(train_config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a training config that define the run; the budget and stop rule may change on resume."""
    defaults = asdict(TrainConfig(task="", out=""))  # fields added since an old resume file was written
    merged = {**defaults, **train_config}
    return {k: v for k, v in merged.items() if k not in ("sequences", "stop_below")}


def _save_resume(model: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator, seen: int,
                 best: float, cfg: TrainConfig, out: Path) -> None:
    tmp = out / (RESUME_FILE + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                "sequences": seen, "best_eval": best, "train_config": asdict(cfg)}, tmp)
    tmp.replace(out / RESUME_FILE)
