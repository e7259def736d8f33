"""The one-shot tasks' encoding in numpy, for clients that have no torch (the demo, CI's served-accuracy test).

Exactly the layout of `ntm_serve/training/one_shot.py` (tests/test_one_shot.py checks the encoding against it on the
same content): input at step t = the sample's 64 features, then the one-hot of step t-1's true label (zeros
at t = 0); target = the one-hot of step t's label; outputs are softmax probabilities over 5 labels. The
classes come from the model's metadata (`ModelInfo.task_metadata`: the class split), so a client draws test
episodes from exactly the classes the model never saw. The random streams differ from torch's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

CLASSES = 5
EPISODE_STEPS = 50
FEATURES = 64
INSTANCES = (1, 2, 3, 5, 10)


@dataclass(frozen=True)
class Episode:
    inputs: np.ndarray  # (T, 69) float32
    targets: np.ndarray  # (T, 5) float32 one-hot
    labels: np.ndarray  # (T,) int
    classes: tuple[str, ...]  # what each label stands for, e.g. "digit 3 turned 90°"
    draw: Callable[[np.random.Generator, int], np.ndarray]  # a new sample (64,) of the class with this label


def encode_episode(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (T, 64), labels (T,) -> inputs (T, 69) with the label one step late, targets (T, 5) one-hot."""
    targets = np.eye(CLASSES, dtype=np.float32)[labels]  # (T, 5)
    previous = np.vstack([np.zeros((1, CLASSES), np.float32), targets[:-1]])  # (T, 5): zeros at t = 0
    return np.hstack([features.astype(np.float32), previous]), targets


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target  # (n, 8, 8), (n,)


def digit_class(digit: int, quarter_turns: int) -> np.ndarray:
    """Every sample of one class: the digit's images turned counter-clockwise. -> (n, 64)"""
    images, targets = _digits()
    return np.rot90(images[targets == digit], quarter_turns, axes=(1, 2)).reshape(-1, FEATURES)


def test_classes(task_metadata: str) -> list[tuple[int, int]]:
    """The held-out (digit, quarter turns) classes from a model's task metadata (ModelInfo.task_metadata)."""
    split = json.loads(task_metadata)["class_split"]
    return [(int(d), int(k)) for d, k in split["test_classes"]]


def episode_slots(rng: np.random.Generator, steps: int = EPISODE_STEPS) -> np.ndarray:
    """Which of the 5 episode classes each step shows: every class at least once, order random. -> (T,)"""
    return rng.permutation(np.concatenate([np.arange(CLASSES), rng.integers(0, CLASSES, steps - CLASSES)]))


def digit_episode(rng: np.random.Generator, classes: list[tuple[int, int]], steps: int = EPISODE_STEPS) -> Episode:
    """5 classes of `classes`, a random label for each, `steps` samples (every class at least once)."""
    chosen = [classes[i] for i in rng.choice(len(classes), CLASSES, replace=False)]
    slot_of = rng.permutation(CLASSES)  # slot_of[label]: the chosen class a label stands for
    pools = [digit_class(*chosen[slot]) for slot in slot_of]  # by label

    def draw(r: np.random.Generator, label: int) -> np.ndarray:
        return pools[label][r.integers(len(pools[label]))]

    labels = episode_slots(rng, steps)  # every label (so every class) at least once
    inputs, targets = encode_episode(np.stack([draw(rng, y) for y in labels]), labels)
    names = tuple(f"digit {chosen[slot][0]} turned {90 * chosen[slot][1]}°" for slot in slot_of)
    return Episode(inputs, targets, labels, names, draw)


def more_samples(rng: np.random.Generator, episode: Episode, count: int) -> Episode:
    """`count` new samples of an episode's classes with its labels, as the continuation of its stream: the label
    still arrives one step late, so the first new step carries the episode's last label."""
    labels = rng.integers(0, CLASSES, count)
    inputs, targets = encode_episode(np.stack([episode.draw(rng, y) for y in labels]), labels)
    inputs[0, FEATURES:] = episode.targets[-1]
    return Episode(inputs, targets, labels, episode.classes, episode.draw)


def synthetic_episode(rng: np.random.Generator, flip: float = 0.1, steps: int = EPISODE_STEPS) -> Episode:
    """5 fresh random 64-bit prototypes; each sample flips every bit with probability `flip`."""
    prototypes = rng.integers(0, 2, (CLASSES, FEATURES)).astype(np.float32)

    def draw(r: np.random.Generator, label: int) -> np.ndarray:
        return np.abs(prototypes[label] - (r.random(FEATURES) < flip).astype(np.float32))

    labels = episode_slots(rng, steps)
    inputs, targets = encode_episode(np.stack([draw(rng, y) for y in labels]), labels)
    return Episode(inputs, targets, labels, tuple(f"random prototype {i}" for i in range(CLASSES)), draw)


def instance_index(labels: np.ndarray) -> np.ndarray:
    """How many times each step's label has appeared so far, this step included (1 = first sight). -> (T,)"""
    seen = np.zeros(CLASSES, dtype=int)
    out = np.empty(len(labels), dtype=int)
    for t, y in enumerate(labels):
        seen[y] += 1
        out[t] = seen[y]
    return out


def accuracy_by_instance(probabilities: np.ndarray, labels: np.ndarray, max_instance: int = 10
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Correct arg-max predictions and counts per instance 1..max_instance. -> ((max,), (max,))"""
    instance = instance_index(labels)
    correct = probabilities.argmax(-1) == labels
    hits = np.array([correct[instance == n].sum() for n in range(1, max_instance + 1)], dtype=float)
    seen = np.array([(instance == n).sum() for n in range(1, max_instance + 1)], dtype=float)
    return hits, seen
