"""`python -m ntm_serve.training TASK [options]` trains; `python -m ntm_serve.training.evaluate FOLDER` evaluates."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from ntm_serve.training.device import DEVICES
from ntm_serve.training.tasks import TASKS
from ntm_serve.training.train import TrainConfig, train


def parse(argv: list[str]) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m ntm_serve.training", description="Train an NTM (or the LSTM baseline).")
    p.add_argument("task", choices=sorted(TASKS), help="the task to train on")
    p.add_argument("--out", help="output folder (default models/<task>)")
    p.add_argument("--model", choices=["ntm", "lstm_baseline"], default="ntm",
                   help="the NTM, or the LSTM baseline it is compared with (default ntm)")
    d = TrainConfig(task="copy", out="")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the weights and the data (default {d.seed})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"sequences per optimiser step (default {d.batch_size})")
    p.add_argument("--sequences", type=int, default=d.sequences, help="training budget in sequences")
    p.add_argument("--optimizer", choices=["adam", "rmsprop"], default=d.optimizer,
                   help=f"adam (Collier & Beel) or rmsprop (Graves, with --momentum) (default {d.optimizer})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--momentum", type=float, default=d.momentum, help="RMSprop momentum")
    p.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clip")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help=f"sequences between held-out evaluations and checkpoints (default {d.eval_every})")
    p.add_argument("--eval-sequences", type=int, default=d.eval_sequences,
                   help=f"held-out sequences per evaluation (default {d.eval_sequences})")
    p.add_argument("--stop-below", type=float, default=d.stop_below,
                   help="stop when held-out bit errors fall below this")
    p.add_argument("--threads", type=int, default=d.threads, help=f"torch CPU threads (default {d.threads})")
    p.add_argument("--ntm", type=json.loads, default={},
                   help='NTMConfig overrides as JSON, e.g. \'{"controller": "feedforward", "memory_rows": 64}\'')
    p.add_argument("--baseline", type=json.loads, default={}, help="LSTMBaseline overrides as JSON")
    p.add_argument("--init-from", default="",
                   help="warm start from a trained NTM folder of another task (e.g. models/copy for repeat_copy)")
    p.add_argument("--permute", type=float, default=0.0,
                   help="one_shot only: fraction of training episodes whose pixels are permuted (per episode)")
    p.add_argument("--wrap", action="store_true",
                   help="associative_recall only: the query may be the last item (its answer wraps to item 1)")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help="copy only: train on L in [1, max_length] (default: the task's 1..20)")
    p.add_argument("--min-items", type=int, default=d.min_items,
                   help="priority_sort only: train on n in [min_items, 20] items, keeping the ceil(4n/5) highest; "
                        "the checkpoint is still picked on 20 -> 16 (default: always 20 -> 16)")
    p.add_argument("--narrow", type=float, default=d.narrow,
                   help="priority_sort only: fraction of training batches whose priorities lie in a random narrower "
                        "interval (closer priorities; evaluated on the plain task)")
    p.add_argument("--select-on", default=d.select_on,
                   help='eval point whose held-out figure picks the shipped checkpoint, e.g. "L=80" '
                        '(default: the training range)')
    p.add_argument("--device", choices=DEVICES, default=d.device, help="auto: CUDA when torch sees one, else CPU")
    p.add_argument("--compile", action="store_true",
                   help="compile the NTM step for training (torch.compile, chunks of steps) and fuse the optimiser; "
                        "faster after a one-off compile, see docs/training.md#training-speed")
    a = p.parse_args(argv)
    suffix = "" if a.model == "ntm" else "_lstm_baseline"
    return TrainConfig(
        task=a.task, out=a.out or f"models/{a.task}{suffix}", model=a.model, seed=a.seed, batch_size=a.batch_size,
        sequences=a.sequences, optimizer=a.optimizer, lr=a.lr, momentum=a.momentum, clip=a.clip,
        eval_every=a.eval_every, eval_sequences=a.eval_sequences, stop_below=a.stop_below, threads=a.threads,
        ntm=a.ntm, baseline=a.baseline, wrap=a.wrap, init_from=a.init_from, max_length=a.max_length,
        min_items=a.min_items, narrow=a.narrow, select_on=a.select_on, device=a.device, permute=a.permute,
        compile=a.compile,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse(argv)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "command.txt").write_text("python -m ntm_serve.training " + shlex.join(argv) + "\n")
    result = train(cfg)
    logging.getLogger("training").info("done: %s", result)


if __name__ == "__main__":
    main()
