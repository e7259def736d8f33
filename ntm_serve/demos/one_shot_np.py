"""The one-shot tasks' encoding in numpy, for clients that have no torch (the demo, CI's served-accuracy test).

Exactly the layout of `ntm_serve/training/one_shot.py` (tests/test_one_shot.py checks the encoding against it on the
same content): input at step t = the sample's 64 features, then the one-hot of step t-1's true label (zeros
at t = 0); target = the one-hot of step t's label; outputs are softmax probabilities over 5 labels. The
classes come from the model's metadata (`ModelInfo.task_metadata`: the class split), so a client draws test
episodes from exactly the classes the model never saw. The random streams differ from torch's.

Glyph models (one_shot_glyphs, one_shot_glyphs15: 400 pixels, 5 or 15 labels) name their held-out scripts in the same
metadata; `glyph_episode` draws their episodes from the glyphs data set (numpy only, the repository's
datasets/glyphs/glyphs.npz or $NTM_GLYPHS), as ntm_serve/training/one_shot_glyphs.py does.
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
INSTANCES = (1, 2, 3, 4, 5, 10)
GLYPH_PER_CLASS = 10  # renderings of each character per episode (one_shot_glyphs.PER_CLASS)


@dataclass(frozen=True)
class Episode:
    inputs: np.ndarray  # (T, F + C) float32: F features (64 digits, 400 glyphs), C labels (5 or 15)
    targets: np.ndarray  # (T, C) float32 one-hot
    labels: np.ndarray  # (T,) int
    classes: tuple[str, ...]  # what each label stands for, e.g. "digit 3 turned 90°"
    draw: Callable[[np.random.Generator, int], np.ndarray]  # a new sample (F,) of the class with this label

    @property
    def classes_count(self) -> int:
        return int(self.targets.shape[1])

    @property
    def features(self) -> int:
        return int(self.inputs.shape[1]) - self.classes_count


def encode_episode(features: np.ndarray, labels: np.ndarray, classes: int = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """features (T, F), labels (T,) -> inputs (T, F + C) with the label one step late, targets (T, C) one-hot."""
    targets = np.eye(classes, dtype=np.float32)[labels]  # (T, C)
    previous = np.vstack([np.zeros((1, classes), np.float32), targets[:-1]])  # (T, C): zeros at t = 0
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
    labels = rng.integers(0, episode.classes_count, count)
    inputs, targets = encode_episode(np.stack([episode.draw(rng, y) for y in labels]), labels, episode.classes_count)
    inputs[0, episode.features:] = episode.targets[-1]
    return Episode(inputs, targets, labels, episode.classes, episode.draw)


def glyph_test_characters(task_metadata: str, path: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Every rendering of every character of the model's held-out scripts (ModelInfo.task_metadata's class_split)
    and a name for each. -> ((C, R, 400) float32, [C] names)"""
    from ntm_serve.data.glyphs import load_glyphs  # numpy only

    scripts = set(json.loads(task_metadata)["class_split"]["test_scripts"])
    g = load_glyphs(path)
    chosen = np.array([str(g.script_names[s]) in scripts for s in g.script])  # (C,)
    if not chosen.any():
        raise ValueError(f"none of the held-out scripts {sorted(scripts)} is in the glyphs data set")
    names = [f"{g.script_names[s]} U+{cp:04X} {name.lower()}"
             for s, cp, name in zip(g.script[chosen], g.codepoints[chosen], g.char_names[chosen], strict=True)]
    images = g.images[chosen]
    return images.reshape(images.shape[0], images.shape[1], -1), names


def glyph_episode(rng: np.random.Generator, images: np.ndarray, names: list[str], ways: int,
                  per_class: int = GLYPH_PER_CLASS) -> Episode:
    """`ways` characters of `images` (C, R, 400), a random label each, `per_class` distinct renderings of each in
    random order (so every label appears exactly `per_class` times)."""
    chars = rng.choice(images.shape[0], ways, replace=False)  # chars[label]
    draws = np.stack([rng.choice(images.shape[1], per_class, replace=False) for _ in range(ways)])  # (ways, k)
    order = rng.permutation(ways * per_class)  # entry i: label i // k, its (i % k)-th rendering
    labels = order // per_class
    features = images[chars[labels], draws[labels, order % per_class]]  # (T, 400)

    def draw(r: np.random.Generator, label: int) -> np.ndarray:
        return images[chars[label], r.integers(images.shape[1])]

    inputs, targets = encode_episode(features, labels, ways)
    return Episode(inputs, targets, labels, tuple(names[c] for c in chars), draw)


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
    seen = np.zeros(int(labels.max(initial=0)) + 1, dtype=int)
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
