"""`python -m ntm_serve.training [TASK | --data PATH | --task-file FILE | --config FILE] [options]` trains;
`python -m ntm_serve.training.evaluate FOLDER` evaluates again.

Everything is checked before anything is written (a refused command leaves --out as it was); then the run writes
command.txt, trains (checkpoint.pt, config.json, train_log.jsonl, learning_curve.png; its resume state in
<out>/.resume/) and ends with the evaluation report (eval.json, eval.md, example.png)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from ntm_serve.training import config_file
from ntm_serve.training.device import DEVICES
from ntm_serve.training.tasks import BUILTIN
from ntm_serve.training.train import TrainConfig, prepare, run_prepared

log = logging.getLogger("ntm_serve.training")

# Named flags -> the config key each overrides (also `--set KEY=VALUE` for any key).
FLAG_KEYS: dict[str, str] = {
    "out": "out", "model": "model", "seed": "seed", "init_from": "init_from",
    "batch_size": "budget.batch_size", "sequences": "budget.sequences", "eval_every": "budget.eval_every",
    "eval_sequences": "budget.eval_sequences", "stop_below": "budget.stop_below", "select_on": "budget.select_on",
    "optimizer": "optimizer.name", "lr": "optimizer.lr", "momentum": "optimizer.momentum", "clip": "optimizer.clip",
    "threads": "run.threads", "device": "run.device", "compile": "run.compile", "memory_rows": "memory_rows",
    "validation": "task.validation",
    # The built-in tasks' own options, before they moved into [task]: old command lines keep working.
    "wrap": "task.wrap", "max_length": "task.max_length", "min_items": "task.min_items", "narrow": "task.narrow",
    "permute": "task.permute",
}


def _row_list(text: str) -> list[int]:
    """`--memory-rows 64,128,256` -> [64, 128, 256]."""
    try:
        rows = [int(n) for n in text.split(",") if n.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"want whole numbers separated by commas, got {text!r}") from err
    if not rows:
        raise argparse.ArgumentTypeError("want at least one memory size")
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ntm_serve.training", argument_default=argparse.SUPPRESS,
        description="Train an NTM (or the LSTM baseline) on a built-in task, a data set or a task file. "
                    "Flags override the --config file's keys; see docs/training.md.")
    p.add_argument("task", nargs="?", choices=sorted(BUILTIN), default=None, help="a built-in task")
    p.add_argument("--config", help="a TOML config (configs/*.toml): the run whole; flags override its keys")
    p.add_argument("--data", help="a sequence data set: an .npz file, a folder of them, or a folder of .npy files")
    p.add_argument("--validation", type=config_file.parse_value,
                   help="--data only: the validation split, a fraction (default 0.1) or a second data set")
    p.add_argument("--task-file", help="a Python file (or module) defining make_task(**options) -> TaskSpec")
    p.add_argument("--out", help="output folder (default runs/<task>)")
    p.add_argument("--model", choices=["ntm", "lstm_baseline"],
                   help="the NTM, or the LSTM baseline it is compared with (default ntm)")
    p.add_argument("--seed", type=int, help="seed of the weights and the data")
    p.add_argument("--batch-size", type=int, help="sequences per optimiser step")
    p.add_argument("--sequences", type=int, help="training budget in sequences")
    p.add_argument("--optimizer", choices=["adam", "rmsprop"],
                   help="adam (Collier & Beel) or rmsprop (Graves, with --momentum)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="RMSprop momentum")
    p.add_argument("--clip", type=float, help="gradient-norm clip")
    p.add_argument("--eval-every", type=int, help="sequences between held-out evaluations and checkpoints")
    p.add_argument("--eval-sequences", type=int, help="held-out sequences per evaluation (a data set's "
                   "validation split is evaluated whole)")
    p.add_argument("--stop-below", type=float, help="stop when the held-out figure falls below this")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--ntm", type=json.loads,
                   help='[ntm] keys as JSON, e.g. \'{"controller": "feedforward", "memory_rows": 64}\'')
    p.add_argument("--baseline", type=json.loads, help="[baseline] keys as JSON")
    p.add_argument("--memory-rows", type=_row_list, metavar="N[,N...]",
                   help="memory sizes N, one drawn per training batch (a model that works at any N); default: the "
                        "model's own memory_rows for every batch")
    p.add_argument("--init-from", help="warm start from a trained NTM folder (e.g. models/copy for repeat_copy)")
    p.add_argument("--select-on", help='eval point whose held-out figure picks the shipped checkpoint, e.g. "L=80"')
    p.add_argument("--device", choices=DEVICES, help="auto: CUDA when torch sees one, else CPU")
    p.add_argument("--compile", action="store_const", const=True,
                   help="compile the NTM step for training (torch.compile, chunks of steps) and fuse the "
                        "optimiser; see docs/training.md#training-speed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config key, e.g. --set task.max_length=40 --set ntm.read_heads=2 (TOML values)")
    p.add_argument("--no-report", action="store_true", help="skip the evaluation report after training")
    # Old spellings of the built-in tasks' options (now [task] keys): hidden, still accepted.
    p.add_argument("--wrap", action="store_const", const=True, help=argparse.SUPPRESS)
    p.add_argument("--max-length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--min-items", type=int, help=argparse.SUPPRESS)
    p.add_argument("--narrow", type=float, help=argparse.SUPPRESS)
    p.add_argument("--permute", type=float, help=argparse.SUPPRESS)
    return p


def parse(argv: list[str]) -> TrainConfig:
    """The TrainConfig a command line describes: the config file, then the task named here, the named flags and
    the --set overrides, in that order. Raises ValueError (config_file.ConfigError) for a config that is wrong."""
    return _parse(argv)[0]


def _parse(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    args = vars(parser().parse_args(argv))
    doc: dict[str, Any] = config_file.read(args["config"]) if "config" in args else {}
    sources = [(k, args[a]) for a, k in (("task", "name"), ("data", "data"), ("task_file", "file"))
               if args.get(a) is not None]
    if len(sources) > 1:
        raise config_file.ConfigError(f"name one task, not {' and '.join(k for k, _ in sources)}")
    for key, value in sources:
        config_file.set_task_source(doc, key, value)
    for name, value in args.items():
        if name in FLAG_KEYS:
            config_file.apply_override(doc, FLAG_KEYS[name], value)
    for name in ("ntm", "baseline"):
        if name in args:
            if not isinstance(args[name], dict):
                raise config_file.ConfigError(f"--{name} must be a JSON object, got {args[name]!r}")
            doc.setdefault(name, {}).update(args[name])
    for item in args.get("set", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise config_file.ConfigError(f"--set {item!r}: want KEY=VALUE, e.g. optimizer.lr=3e-4")
        config_file.apply_override(doc, key.strip(), config_file.parse_value(value.strip()))
    if not any(doc.get("task", {}).get(k) for k in config_file.TASK_SOURCES):
        raise config_file.ConfigError("no task: name a built-in task, --data PATH, --task-file FILE, or a --config "
                                      "with a [task] section")
    return config_file.train_config(doc), argparse.Namespace(**args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, args = _parse(argv)
        torch.set_num_threads(cfg.threads)
        prepared = prepare(cfg)  # everything checked; nothing written yet
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text("python -m ntm_serve.training " + shlex.join(argv) + "\n")
    result = run_prepared(prepared)
    log.info("done: %s", result)
    if not getattr(args, "no_report", False):
        from ntm_serve.training.evaluate import evaluate_folder, report_markdown

        report = evaluate_folder(out, device=str(prepared.device),
                                 command=f"python -m ntm_serve.training.evaluate {shlex.quote(str(out))}")
        print(report_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
