"""Held-out glyph episodes with what each step shows (shared by the diagnostics beside it)."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import torch

from ntm_serve.data.glyphs import load_glyphs
from ntm_serve.demos.one_shot_np import encode_episode
from ntm_serve.training import one_shot_glyphs


@dataclass
class Drawn:
    inputs: torch.Tensor  # (T, B, I)
    labels: np.ndarray  # (T, B)
    instance: np.ndarray  # (T, B): the n-th sight of its class, 1-based
    character: np.ndarray  # (T, B): index into the held-out characters
    rendering: np.ndarray  # (T, B): which of the character's 20 renderings


def held_out() -> tuple[np.ndarray, np.ndarray, object]:
    """(images (C, 20, 400), font files (C, 20), the glyph set) of the held-out scripts."""
    scripts = set(one_shot_glyphs.split_description()["test_scripts"])
    g = load_glyphs()
    chosen = np.array([str(g.script_names[s]) in scripts for s in g.script])  # (C,)
    return g.images[chosen].reshape(chosen.sum(), 20, -1), g.font_index[chosen], g


def draw(images: np.ndarray, ways: int, episodes: int, seed: int) -> Drawn:
    """Episodes as the client's numpy twin draws them: `ways` characters, 10 distinct renderings each."""
    rng = np.random.default_rng(seed)
    inputs, labels, chars, rends = [], [], [], []
    for _ in range(episodes):
        c = rng.choice(images.shape[0], ways, replace=False)
        r = np.stack([rng.choice(images.shape[1], 10, replace=False) for _ in range(ways)])  # (ways, 10)
        order = rng.permutation(ways * 10)
        y = order // 10
        x, _ = encode_episode(images[c[y], r[y, order % 10]], y, ways)
        inputs.append(x), labels.append(y), chars.append(c[y]), rends.append(r[y, order % 10])
    labels_ = np.stack(labels, 1)
    instance = np.zeros_like(labels_)
    for b in range(episodes):
        seen: collections.Counter[int] = collections.Counter()
        for t, label in enumerate(labels_[:, b]):
            seen[label] += 1
            instance[t, b] = seen[label]
    return Drawn(torch.from_numpy(np.stack(inputs, 1)), labels_, instance, np.stack(chars, 1), np.stack(rends, 1))


def accuracy(predicted: np.ndarray, drawn: Drawn) -> list[float]:
    """Percent right at the 1st, 2nd, 3rd, 4th, 5th and 10th instance."""
    ok = predicted == drawn.labels
    return [round(100 * float(ok[drawn.instance == k].mean()), 1) for k in (1, 2, 3, 4, 5, 10)]
