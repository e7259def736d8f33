"""One-shot learning (Santoro et al. 2016): episodes of 5 new classes whose labels arrive one step late.

An episode draws 5 classes from a class pool and a random label (0-4) for each, new every episode,
then shows EPISODE_STEPS samples of those classes (every class at least once, order random). The
input at step t is the sample's 64 features, then the one-hot of step t-1's true label (zeros at
t = 0); the target is the one-hot of step t's label, read as 5 softmax probabilities. A model can
only score above chance by binding each sample to the label that arrives one step later and
recalling the binding when the class comes back: the weights never see these classes' labels.

Two class pools:
- digits: scikit-learn's bundled 8x8 digits (pixels / 16), each digit turned by 0/90/180/270
  degrees, with the turns that coincide dropped (`digit_classes`). The held-out classes are every
  turn of `HELD_OUT_DIGITS`; training episodes never contain them (tests/test_one_shot.py).
- synthetic: a fresh random 64-bit prototype per class per episode, samples with each bit
  flipped with probability SYNTHETIC_FLIP; the pool is unbounded, so every test class is new.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ntm_serve.training.batch import Batch

CLASSES = 5  # labels per episode
EPISODE_STEPS = 50
FEATURES = 64  # 8x8 pixels in [0, 1]
INPUT_SIZE = FEATURES + CLASSES  # [features, one-hot of the previous step's label]
HELD_OUT_DIGITS = (3, 4, 7)  # every turn of these digits is held out of training
SYNTHETIC_FLIP = 0.1  # probability that a synthetic sample's bit differs from its class prototype
# 180-degree turns that map a digit onto itself (0, 1, 8) or onto another digit (6 <-> 9): for these,
# 180 equals 0 and 270 equals 90 (or the partner's 0 and 90), so only the 0 and 90 degree turns are classes.
HALF_TURN_COLLIDES = (0, 1, 6, 8, 9)

ENCODING = (
    "Episodes of 50 steps over 5 classes with labels 0-4 assigned at random per episode (each class shown at "
    "least once). Input at step t (69 channels): the sample's 64 features (8x8 image, row-major, pixel/16 in "
    "[0, 1]), then the one-hot of step t-1's true label on ch 64-68 (all zero at t = 0). Output at step t: "
    "softmax probabilities of step t's label over 5 labels."
)


class DigitClass(NamedTuple):
    digit: int
    quarter_turns: int  # counter-clockwise quarter turns (numpy.rot90 / torch.rot90 on the (row, col) axes)


def digit_classes(digits: tuple[int, ...] = tuple(range(10))) -> tuple[DigitClass, ...]:
    """The class pool for `digits`: every turn, minus the half-turn and three-quarter-turn of HALF_TURN_COLLIDES."""
    return tuple(
        DigitClass(d, k) for k in range(4) for d in digits if not (d in HALF_TURN_COLLIDES and k >= 2)
    )


def split_digits(split: str) -> tuple[int, ...]:
    """The digits of the "train" or "test" (held-out) classes."""
    if split == "test":
        return HELD_OUT_DIGITS
    if split == "train":
        return tuple(d for d in range(10) if d not in HELD_OUT_DIGITS)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def split_description() -> dict[str, object]:
    """The class split as written to config.json and the ONNX metadata, so a client can rebuild test episodes."""
    return {
        "data": "sklearn.datasets.load_digits (8x8, pixel/16)",
        "turns": "counter-clockwise quarter turns of the 8x8 image (numpy.rot90(image, k))",
        "held_out_digits": list(HELD_OUT_DIGITS),
        "train_classes": [list(c) for c in digit_classes(split_digits("train"))],
        "test_classes": [list(c) for c in digit_classes(split_digits("test"))],
    }


class ClassPool(NamedTuple):
    samples: Tensor  # (S, 64) every sample of every class, grouped by class
    offsets: Tensor  # (C,) int64 first sample of each class
    counts: Tensor  # (C,) int64 samples per class


@cache
def _digit_images() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # bundled with the package: no download

    data = load_digits()
    return torch.tensor(data.images, dtype=torch.float32) / 16.0, torch.tensor(data.target)  # (n, 8, 8), (n,)


@cache
def digit_pool(split: str) -> ClassPool:
    """All samples of the split's classes, each class's images turned by its quarter turns."""
    images, targets = _digit_images()
    groups = [torch.rot90(images[targets == c.digit], c.quarter_turns, dims=(1, 2)).reshape(-1, FEATURES)
              for c in digit_classes(split_digits(split))]
    counts = torch.tensor([len(g) for g in groups])
    return ClassPool(torch.cat(groups), torch.cumsum(counts, 0) - counts, counts)


def episode_slots(gen: torch.Generator, batch: int, steps: int = EPISODE_STEPS) -> Tensor:
    """Which of the 5 episode classes each step shows: every class at least once, order random. -> (T, B)"""
    slots = torch.cat([torch.arange(CLASSES).expand(batch, -1),
                       torch.randint(0, CLASSES, (batch, steps - CLASSES), generator=gen)], dim=1)  # (B, T)
    order = torch.argsort(torch.rand(batch, steps, generator=gen), dim=1)  # (B, T)
    return torch.gather(slots, 1, order).T  # (T, B)


def encode_episode(features: Tensor, labels: Tensor) -> Batch:
    """features (T, B, 64), labels (T, B) int -> inputs (T, B, 69) with the label one step late, targets (T, B, 5)."""
    targets = F.one_hot(labels, CLASSES).float()  # (T, B, 5)
    previous = torch.cat([torch.zeros_like(targets[:1]), targets[:-1]])  # (T, B, 5), zeros at t = 0
    return Batch(torch.cat([features, previous], dim=-1), targets)


def digit_episodes(gen: torch.Generator, batch: int, split: str, steps: int = EPISODE_STEPS,
                   permute: float = 0.0) -> Batch:
    """A batch of episodes over 5 classes of the split's pool. With `permute`, that fraction of the episodes
    shows every image with its pixels shuffled by one random permutation per episode (see `permuted`)."""
    pool = digit_pool(split)
    classes = torch.argsort(torch.rand(batch, len(pool.counts), generator=gen), dim=1)[:, :CLASSES]  # (B, 5)
    labels = torch.argsort(torch.rand(batch, CLASSES, generator=gen), dim=1)  # (B, 5) label of each episode class
    slots = episode_slots(gen, batch, steps)  # (T, B)
    cls = torch.gather(classes.T, 0, slots)  # (T, B) pool class at each step
    pick = (torch.rand(steps, batch, generator=gen) * pool.counts[cls]).long()  # (T, B) sample within the class
    features = pool.samples[pool.offsets[cls] + pick]  # (T, B, 64)
    if permute:
        features = permuted(gen, features, permute)
    return encode_episode(features, torch.gather(labels.T, 0, slots))


def permuted(gen: torch.Generator, features: Tensor, fraction: float) -> Tensor:
    """Meta-training augmentation: in a `fraction` of the episodes, one random pixel permutation (per episode)
    applied to every image. Such an episode's 5 classes are new classes that are as alike as the digits are,
    but whose shapes no weight can have learned, so the model must compare samples with each other rather than
    recognise digit strokes it was trained on; with 18 training classes the plain task overfits to them.
    features (T, B, 64) -> (T, B, 64)"""
    steps, batch, width = features.shape
    chosen = torch.rand(batch, generator=gen) < fraction  # (B,)
    order = torch.argsort(torch.rand(batch, width, generator=gen), dim=1)  # (B, 64)
    order = torch.where(chosen.unsqueeze(1), order, torch.arange(width))  # identity where not chosen
    return torch.gather(features, 2, order.expand(steps, -1, -1))


def synthetic_episodes(gen: torch.Generator, batch: int, steps: int = EPISODE_STEPS) -> Batch:
    """A batch of episodes over 5 fresh random binary prototypes; samples flip each bit with SYNTHETIC_FLIP."""
    prototypes = torch.randint(0, 2, (CLASSES, batch, FEATURES), generator=gen).float()  # (5, B, 64)
    slots = episode_slots(gen, batch, steps)  # (T, B) the slot is the label: prototypes are already random
    clean = torch.gather(prototypes, 0, slots.unsqueeze(-1).expand(-1, -1, FEATURES))  # (T, B, 64)
    flips = (torch.rand(steps, batch, FEATURES, generator=gen) < SYNTHETIC_FLIP).float()
    return encode_episode((clean - flips).abs(), slots)


def classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy over every step. logits (T, B, 5), targets one-hot (T, B, 5) -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.argmax(-1).reshape(-1))


def misclassified(logits: Tensor, targets: Tensor) -> Tensor:
    """Steps whose arg-max label is wrong, per episode (the classification analogue of bit errors). -> (B,)"""
    return (logits.argmax(-1) != targets.argmax(-1)).float().sum(0)


def instance_index(targets: Tensor) -> Tensor:
    """How many times the step's label has appeared so far, counting this step (1 = first sight). -> (T, B)"""
    return torch.cumsum(targets, dim=0).mul(targets).sum(-1).long()  # (T, B)


def accuracy_by_instance(logits: Tensor, targets: Tensor, max_instance: int = 10) -> tuple[Tensor, Tensor]:
    """Correct predictions and counts per instance 1..max_instance. -> ((max_instance,), (max_instance,))"""
    instance = instance_index(targets)  # (T, B)
    correct = (logits.argmax(-1) == targets.argmax(-1)).float()  # (T, B)
    hits, seen = torch.zeros(max_instance), torch.zeros(max_instance)
    for n in range(1, max_instance + 1):  # a handful of instance numbers, never a loop over data
        mask = instance == n
        hits[n - 1] = correct[mask].sum()
        seen[n - 1] = mask.sum()
    return hits, seen
