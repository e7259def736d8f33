"""Training loop: batched, seeded, resumable, logged to JSONL, on any device.

A run is fully determined by its TrainConfig: the model init comes from `seed`, training batches
from a generator seeded with `seed`, held-out evaluation from a separate fixed seed. The resume
file stores the optimizer and the batch generator's RNG state, so a resumed run ends exactly
where the uninterrupted run ends. Resuming with a larger `sequences` budget continues the run.

The shipped `checkpoint.pt` is the best model by held-out bit errors (ties go to the later one),
not the last: NTM training with Adam can diverge long after it has converged, and a late blow-up
must not overwrite a good model. `.resume/resume.pt` always holds the latest state: the trainer's scratch, kept
apart from what a model folder ships.

Everything a run needs is checked before anything is written (`prepare`): the task (a data set is read and
checked whole), the model and optimiser settings, the warm start, and that the output folder holds either nothing
of a model or this very run's resume state. A refused run leaves the folder as it was.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntm_serve.plots import learning_curve
from ntm_serve.training.checkpoint import MODEL_FILE, load_model, resume_path, save_model
from ntm_serve.training.compiled import Forward, training_forward, use_fast_kernels
from ntm_serve.training.config import NTMConfig
from ntm_serve.training.device import resolve_device
from ntm_serve.training.model import NTM, LSTMBaseline
from ntm_serve.training.progress import Progress
from ntm_serve.training.task_source import resolve_task
from ntm_serve.training.tasks import (
    BUILTIN,
    LEGACY_OPTIONS,
    EvalSource,
    TaskSpec,
    batch_errors,
    batch_loss,
    heldout_batches,
    task_options,
)
from ntm_serve.training.tasks import legacy_options as legacy_options_of
from ntm_serve.training.transplant import transplant

log = logging.getLogger(__name__)
EVAL_SEED = 1_000_003  # held-out sequences come from their own stream, never the training one


@dataclass
class TrainConfig:
    """One run, whole: a config file (ntm_serve/training/config_file.py) or the command line fills it in."""

    task: str = ""  # a built-in task (ntm_serve.training.tasks.BUILTIN); or one of data and task_file
    out: str = ""
    data: str = ""  # a data set: an .npz file, a folder of them, or a folder of one .npy per key
    task_file: str = ""  # a Python file (or module) whose make_task(**options) returns the TaskSpec
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's own options (a config's [task] section)
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
    init_from: str = ""  # warm start: an NTM checkpoint folder whose weights seed this run (see transplant)
    select_on: str = ""  # eval point whose held-out figure picks the shipped checkpoint ("": the task's choice)
    device: str = "auto"  # auto (CUDA when torch sees one), cpu, cuda; not part of the run's identity
    # NTM.step compiled in chunks, Adam fused (ntm_serve/training/compiled.py); not part of the identity
    compile: bool = False
    # Memory sizes N, one drawn per training batch (uniformly, from the batch generator) so the model learns an
    # algorithm that does not depend on N; empty: every batch at the model's own N (memory_rows). With --compile
    # each N compiles its own graphs: a few sizes, not a range.
    memory_rows: list[int] = field(default_factory=list)


def build_model(cfg: TrainConfig, task: TaskSpec) -> nn.Module:
    torch.manual_seed(cfg.seed)
    try:
        if cfg.model == "ntm":
            return NTM(NTMConfig(task.input_size, task.output_size, **cfg.ntm))
        if cfg.model == "lstm_baseline":
            return LSTMBaseline(task.input_size, task.output_size, **cfg.baseline)
    except TypeError as err:  # an unknown key in the [ntm] or [baseline] section
        raise ValueError(f"{cfg.model} settings {cfg.ntm if cfg.model == 'ntm' else cfg.baseline}: {err}") from err
    raise ValueError(f"unknown model {cfg.model!r}; choose ntm or lstm_baseline")


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
def evaluate_point(model: nn.Module, task: TaskSpec, source: EvalSource, sequences: int, seed: int,
                   batch_size: int = 64, device: torch.device | str = "cpu") -> float:
    """Mean of the task's errors per sequence (bit errors for the bit tasks) over `sequences` held-out sequences,
    or over the whole of a fixed set (a data set's validation split)."""
    total, count = 0.0, 0
    for batch in heldout_batches(source, sequences, seed, batch_size):
        batch = batch.to(device)
        logits = model(batch.inputs)[0]  # (T, B, O)
        total += float(batch_errors(task, logits, batch).sum())
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


@dataclass
class Prepared:
    """A run checked and built, nothing written yet: what `train` goes on with."""

    cfg: TrainConfig
    task: TaskSpec
    device: torch.device
    run: Run
    select: EvalSource | None  # the eval point that picks the checkpoint (None: the task's held-out set)
    resume: dict[str, Any] | None  # the resume state to continue from


def prepare(cfg: TrainConfig) -> Prepared:
    """Check everything a run needs and build it, writing nothing: the settings, the task (a data set read and
    checked whole), the model, optimiser and warm start, and the output folder (empty of a model, or holding this
    run's resume state). Raises ValueError, naming what is wrong."""
    _check_settings(cfg)
    device = resolve_device(cfg.device)
    task = resolve_task(cfg.task, cfg.data, cfg.task_file, cfg.task_options)
    select = _selection_sampler(cfg, task)
    out = Path(cfg.out)
    resume = _resume_state(cfg, out)
    model = build_model(cfg, task)
    if cfg.init_from:
        source, _ = load_model(cfg.init_from)
        transplant(source, model)
    model.to(device)
    run = Run(model, build_optimizer(cfg, model), torch.Generator().manual_seed(cfg.seed),
              forward=training_forward(model, cfg.compile))
    return Prepared(cfg, task, device, run, select, resume)


def _check_settings(cfg: TrainConfig) -> None:
    if not cfg.out:
        raise ValueError("no output folder: give --out DIR (or out = \"...\" in the config)")
    for name in ("batch_size", "sequences", "eval_every", "eval_sequences"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.clip <= 0:
        raise ValueError(f"lr and clip must be > 0, got lr {cfg.lr}, clip {cfg.clip}")
    if cfg.init_from and not (Path(cfg.init_from) / MODEL_FILE).is_file() and not Path(cfg.init_from).is_file():
        raise ValueError(f"init_from {cfg.init_from}: no {MODEL_FILE} there")
    if cfg.memory_rows:
        if cfg.model != "ntm":
            raise ValueError("memory_rows (N per batch) applies to the NTM only")
        low, high = NTMConfig(**{**cfg.ntm, "input_size": 1, "output_size": 1}).rows_range
        bad = [n for n in cfg.memory_rows if not isinstance(n, int) or isinstance(n, bool) or not low <= n <= high]
        if bad:
            raise ValueError(f"memory_rows {bad} outside the model's range [{low}, {high}]")


def _resume_state(cfg: TrainConfig, out: Path) -> dict[str, Any] | None:
    """This run's resume state in `out`, if any; refuses a folder holding another run's, or a model without one
    (a shipped model folder: training there would overwrite it)."""
    path = resume_path(out)
    if not path.exists():
        if (out / MODEL_FILE).exists():
            raise ValueError(f"{out} holds a {MODEL_FILE} but no resume state of a run: training there would "
                             "overwrite that model; use another --out (the default is runs/<task>)")
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)  # CPU: the generator state must stay there
    if _identity(state["train_config"]) != _identity(asdict(cfg)):
        raise ValueError(f"{path} was written by a different training config; use another --out")
    return state


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a model; writes checkpoint, resume file, JSONL log and learning curve to cfg.out."""
    torch.set_num_threads(cfg.threads)
    return run_prepared(prepare(cfg), progress)


def run_prepared(prepared: Prepared, progress: bool = True) -> dict[str, Any]:
    """Train a prepared run to its budget (or its stop rule)."""
    cfg, task, device, run, select = prepared.cfg, prepared.task, prepared.device, prepared.run, prepared.select
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _restore(run, prepared.resume, out, cfg)
    meta = _checkpoint_meta(cfg, task)
    bar = Progress(cfg.sequences, run.seen, enabled=progress)
    window = _Window()
    run.model.train()
    while run.seen < cfg.sequences and not (run.last_eval is not None and run.last_eval < cfg.stop_below):
        window.add(*train_step(run, task, cfg, device))
        bar.update(cfg.batch_size, loss=f"{window.loss:.4f}", err=f"{window.bits:.2f}",
                   eval=f"{run.last_eval:.3f}" if run.last_eval is not None else "-")
        if run.seen % cfg.eval_every < cfg.batch_size or run.seen >= cfg.sequences:
            _evaluate_and_checkpoint(run, task, select, cfg, out, meta, window, device)
            window = _Window()
    bar.close()
    run.model.eval()
    if not (out / MODEL_FILE).exists():  # a budget shorter than one evaluation period
        save_model(run.model, out, {**meta, "sequences_trained": run.seen, "eval_bit_errors": run.last_eval})
    _save_resume(run, cfg, out)
    own = task.metric in ("classes", "reals")  # a data set's or task file's figure, not the built-ins' labels
    learning_curve(out / "train_log.jsonl", out / "learning_curve.png", f"{cfg.model} on {task.name}",
                   task.output_activation == "softmax", figure=task.figure if own else "",
                   loss="MSE" if task.metric == "reals" else "")
    return {"sequences": run.seen, "eval_bit_errors": run.last_eval}


def _restore(run: Run, state: dict[str, Any] | None, out: Path, cfg: TrainConfig) -> None:
    """Continue from the resume state (the log cut to match), or start the log afresh."""
    log_path = out / "train_log.jsonl"
    if state is None:
        log_path.unlink(missing_ok=True)
        return
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    use_fast_kernels(run.optimizer, cfg.compile)  # the saved groups' flags are the writer's choice, not this run's
    run.gen.set_state(state["generator"])
    run.seen, run.best = state["sequences"], state.get("best_eval", run.best)
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    log_path.write_text("".join(line + "\n" for line in lines if json.loads(line)["sequences"] <= run.seen))
    run.last_eval = _last_eval(log_path)
    log.info("resumed %s at %d sequences", out, run.seen)


def _checkpoint_meta(cfg: TrainConfig, task: TaskSpec) -> dict[str, Any]:
    """What config.json and the checkpoint record: the task's facts (what export puts in the graphs' metadata,
    so a folder exports without its data set or task file) and the training config."""
    meta = {"task": task.name, "input_size": task.input_size, "output_size": task.output_size,
            "train_config": asdict(cfg), "encoding": task.encoding, **task.metadata,
            "output_activation": task.output_activation, "task_metadata": task.metadata, "metric": task.metric}
    if cfg.model == "lstm_baseline":
        meta["baseline"] = cfg.baseline
    return meta


def _selection_sampler(cfg: TrainConfig, task: TaskSpec) -> EvalSource | None:
    """The eval point that picks the shipped checkpoint (None: the task's held-out set).

    The run's select_on, else the task's own choice (a priority sort trained on fewer items is picked on its
    encoding, 20 -> 16, not on the mixture)."""
    name = cfg.select_on or task.select_on
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


def training_rows(choices: list[int], gen: torch.Generator) -> int | None:
    """One of `choices`, uniformly from `gen` (drawn only when there are choices, so other runs' streams stay as
    they were); None without choices."""
    if not choices:
        return None
    return choices[int(torch.randint(len(choices), (1,), generator=gen))]


def train_step(run: Run, task: TaskSpec, cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """One optimiser step on a fresh batch. -> (loss, mean bit errors per sequence)."""
    batch = task.sample(run.gen, cfg.batch_size).to(device)  # inputs (T, B, I), targets (T_out, B, O)
    rows = training_rows(cfg.memory_rows, run.gen)  # this batch's memory size N (None: the model's own)
    if run.forward is not None:
        logits = run.forward(batch.inputs, rows)  # (T, B, O)
    else:
        logits = (run.model(batch.inputs) if rows is None else run.model(batch.inputs, rows=rows))[0]
    loss = batch_loss(task, logits, batch)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip)
    run.optimizer.step()
    run.seen += cfg.batch_size
    return float(loss.detach()), float(batch_errors(task, logits.detach(), batch).mean())


def _evaluate_and_checkpoint(run: Run, task: TaskSpec, select: EvalSource | None, cfg: TrainConfig, out: Path,
                             meta: dict[str, Any], window: _Window, device: torch.device) -> None:
    """Held-out evaluation, a log row, the shipped checkpoint when the selection figure is the best so far,
    and the resume file."""
    run.model.eval()
    run.last_eval = evaluate_point(run.model, task, task.heldout or task.sample, cfg.eval_sequences, EVAL_SEED,
                                   device=device)
    row: dict[str, Any] = {"sequences": run.seen, "loss": window.loss, "bit_errors": window.bits,
                           "eval_bit_errors": run.last_eval}
    figure = run.last_eval
    if select is not None:
        figure = evaluate_point(run.model, task, select, cfg.eval_sequences, EVAL_SEED, device=device)
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
    merged = canonical(train_config)
    return {k: v for k, v in merged.items() if k not in ("out", "sequences", "stop_below", "device", "compile")}


def canonical(train_config: dict[str, Any]) -> dict[str, Any]:
    """A recorded training config in today's form with every default spelled out: the flat task fields of older
    runs as task options, and the model's and a built-in task's omitted settings at their defaults. Two configs
    that build the same run are equal here (an [ntm] section that spells out a default, or leaves it out)."""
    defaults = asdict(TrainConfig())  # fields added since an old config was written
    merged = {**defaults, **{k: v for k, v in train_config.items() if k not in LEGACY_OPTIONS}}
    merged["task_options"] = legacy_options_of(train_config)
    if merged["data"]:
        from ntm_serve.training.dataset import dataset_task

        defaults = {k: v for k, v in task_options(dataset_task).items() if k != "path"}
        merged["task_options"] = {**defaults, **merged["task_options"]}
    elif merged["task"] in BUILTIN and not merged["task_file"]:
        merged["task_options"] = {**task_options(BUILTIN[merged["task"]]), **merged["task_options"]}
    merged["ntm"] = {**_NTM_DEFAULTS, **merged["ntm"]}
    merged["baseline"] = {**_BASELINE_DEFAULTS, **merged["baseline"]}
    return merged


_NTM_DEFAULTS = {k: v for k, v in asdict(NTMConfig(1, 1)).items() if k not in ("input_size", "output_size")}
_BASELINE_DEFAULTS = {name: p.default for name, p in inspect.signature(LSTMBaseline.__init__).parameters.items()
                      if p.default is not inspect.Parameter.empty}


def _save_resume(run: Run, cfg: TrainConfig, out: Path) -> None:
    path = resume_path(out, for_writing=True)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "generator": run.gen.get_state(), "sequences": run.seen, "best_eval": run.best,
                "train_config": asdict(cfg)}, tmp)
    tmp.replace(path)
