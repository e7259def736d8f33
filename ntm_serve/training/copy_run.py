"""`python -m ntm_serve.training.copy_run RUN MODEL [--config FILE]`: ship a training run's current checkpoint while
the run goes on.

Why: a long run (one-shot glyphs: hours on a shared CPU) keeps its best checkpoint in its own folder; a model folder
needs that checkpoint with its config, the learning curve up to it and a command.txt saying where it came from, but
not the trainer's resume state. Then `python -m ntm_serve.training.evaluate MODEL` and `python -m ntm_serve.export
MODEL` complete it. The checkpoint and config.json are re-read until they describe the same weights (the trainer
replaces each atomically, one after the other).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from ntm_serve.plots import learning_curve
from ntm_serve.training.checkpoint import CONFIG_FILE, MODEL_FILE

LOG_FILE = "train_log.jsonl"
BEFORE_CONFIGS = "# The same run before config files (the flags still work): "


def copy_run(run: Path, model: Path, config: str = "", attempts: int = 5) -> int:
    """Copy RUN's checkpoint, config and log (cut at the checkpoint) into MODEL, draw its learning curve and write its
    command.txt. -> the training episodes of the copied checkpoint."""
    if not (run / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{run}: no {MODEL_FILE} yet (the run writes one at its first evaluation)")
    model.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        shutil.copy2(run / MODEL_FILE, model / MODEL_FILE)
        shutil.copy2(run / CONFIG_FILE, model / CONFIG_FILE)
        meta = torch.load(model / MODEL_FILE, map_location="cpu", weights_only=False)["meta"]
        summary = json.loads((model / CONFIG_FILE).read_text())
        if meta.get("sequences_trained") == summary.get("sequences_trained"):
            break
    else:
        raise RuntimeError(f"{run}: checkpoint and config kept changing under the copy; try again")
    trained = int(meta["sequences_trained"])
    rows = [line for line in (run / LOG_FILE).read_text().splitlines()
            if line.strip() and json.loads(line)["sequences"] <= trained]
    (model / LOG_FILE).write_text("\n".join(rows) + "\n")
    learning_curve(model / LOG_FILE, model / "learning_curve.png", f"{summary['kind']} on {summary['task']}",
                   classification=True)
    flags = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else ""
    lines = [f"# The checkpoint of {run} at {trained:,} training episodes (its best held-out evaluation then), copied "
             f"with python -m ntm_serve.training.copy_run while the run went on."]
    if flags:
        lines.append(BEFORE_CONFIGS + flags)
    if config:
        lines.append(f"python -m ntm_serve.training --config {config}")
    (model / "command.txt").write_text("\n".join(lines) + "\n")
    return trained


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ntm_serve.training.copy_run", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the run's --out folder, e.g. runs/one_shot_glyphs")
    p.add_argument("model", type=Path, help="the model folder to write, e.g. models/one_shot_glyphs")
    p.add_argument("--config", default="", help="the run's config file, for command.txt "
                   "(e.g. configs/models/one_shot_glyphs.toml)")
    a = p.parse_args(argv)
    try:
        trained = copy_run(a.run, a.model, a.config)
    except (OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{a.model}: the checkpoint at {trained:,} episodes; next: python -m ntm_serve.training.evaluate {a.model} "
          f"&& python -m ntm_serve.export {a.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
