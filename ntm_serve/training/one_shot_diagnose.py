"""`python -m ntm_serve.training.one_shot_diagnose FOLDER`: does a one-shot model compare samples or recognise classes?

Accuracy by instance on training classes, held-out classes, both with every episode's pixels permuted, and on
the synthetic task. A model that recognises its training classes falls on permuted training episodes to about
its held-out level; a model that compares samples scores alike on training and held-out classes, permuted or
not (docs/training.md, "Closing the held-out gap").
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Any

import torch
from torch import nn

from ntm_serve.training import one_shot
from ntm_serve.training.checkpoint import load_model
from ntm_serve.training.one_shot_eval import INSTANCES, instance_accuracy
from ntm_serve.training.one_shot_reference import NearestNeighbour
from ntm_serve.training.tasks import Sampler

DEFAULT_SEED = 7

SAMPLERS: dict[str, Sampler] = {
    "training classes": partial(one_shot.digit_episodes, split="train"),
    "training classes, permuted": partial(one_shot.digit_episodes, split="train", permute=1.0),
    "held-out classes": partial(one_shot.digit_episodes, split="test"),
    "held-out classes, permuted": partial(one_shot.digit_episodes, split="test", permute=1.0),
    "synthetic (random prototypes)": one_shot.synthetic_episodes,
}


def diagnose(model: nn.Module, episodes: int, seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Accuracy by instance (instance_accuracy's report) for every row of SAMPLERS, each on the same seed."""
    return {name: instance_accuracy(model, sample, episodes, seed) for name, sample in SAMPLERS.items()}


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    head = " | ".join(f"{n}." for n in INSTANCES)
    lines = [f"| episodes | {head} | all steps |", "|---|" + "---:|" * (len(INSTANCES) + 1)]
    for name, r in rows.items():
        cells = " | ".join(f"{100 * r['by_instance'][str(n)]:.1f} %" for n in INSTANCES)
        lines.append(f"| {name} | {cells} | {100 * r['accuracy']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ntm_serve.training.one_shot_diagnose",
                                description=__doc__.split("\n")[0])
    p.add_argument("folder", nargs="?", help="a one_shot model folder (checkpoint.pt)")
    p.add_argument("--nearest", action="store_true",
                   help="also the weightless reference: the nearest labelled sample in pixel space (1-NN)")
    p.add_argument("--episodes", type=int, default=500, help="episodes per row")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.folder is None and not a.nearest:
        p.error("give a model folder, --nearest, or both")
    if a.folder is not None:
        print(f"{a.folder}:\n" + markdown(diagnose(load_model(a.folder)[0], a.episodes, a.seed)))
    if a.nearest:
        rows = diagnose(NearestNeighbour(), a.episodes, a.seed)
        print("nearest labelled sample in pixel space (no weights):\n" + markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
