"""A sequence data set as a task: `python -m ntm_serve.training --data PATH`.

The files are checked first (ntm_serve/training/dataset_files.py); then the kind of target picks the loss, the
served outputs and the figure: bits -> BCE, sigmoid, bit errors per sequence; class ids -> softmax cross-entropy,
softmax, accuracy; reals -> mean squared error, the outputs as they are (clipped to +-logit_clip, 20 by default).

A validation split (a fraction, drawn once with a fixed seed, or a second data set) is the trainer's held-out set:
it is evaluated whole at every evaluation and picks the checkpoint. Training batches draw sequences of the training
split uniformly, with replacement, from the run's seeded generator (so a run resumes exactly). A batch is cut at
its longest sequence; a shorter one is padded with zeros after its length, with its mask 0 there: the model is
causal, so padding after a sequence's last step changes none of its outputs, and it is never scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ntm_serve.training.batch import Batch
from ntm_serve.training.dataset_files import DataError, Shard, open_data
from ntm_serve.training.metrics import (
    masked_bce,
    masked_bit_errors,
    masked_cross_entropy,
    masked_misclassified,
    masked_mse,
    masked_sequence_mse,
)
from ntm_serve.training.tasks import TaskSpec

SPLIT_SEED = 20_141_020  # the validation fraction's draw: fixed, so every run of a data set splits it alike
TRAINING_POINT = 1000  # the report's training-split point: max(this, validation size) of its sequences

_KINDS = {  # kind -> (loss, errors per sequence, output activation)
    "bits": (masked_bce, masked_bit_errors, "sigmoid"),
    "classes": (masked_cross_entropy, masked_misclassified, "softmax"),
    "reals": (masked_mse, masked_sequence_mse, "identity"),
}


@dataclass
class SequenceData:
    """Checked shards seen as one indexable set of sequences."""

    shards: list[Shard]
    kind: str  # bits, classes or reals
    classes: int  # class ids (class targets); 0 otherwise

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [s.size for s in self.shards])  # (shards + 1,)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    @property
    def input_size(self) -> int:
        return int(self.shards[0].inputs.shape[2])

    @property
    def output_size(self) -> int:
        return self.classes if self.kind == "classes" else int(self.shards[0].targets.shape[2])

    @property
    def longest(self) -> int:
        return max(s.steps for s in self.shards)

    def batch(self, indices: np.ndarray) -> Batch:
        """Sequences `indices` as one batch, cut at its longest length: inputs (T, B, I), targets (T, B, O)
        (class ids one-hot), mask (T, B); zero past each sequence's length and wherever the mask is 0."""
        rows = [self._sequence(int(i)) for i in indices]
        steps = max(len(r[0]) for r in rows)
        inputs = np.zeros((steps, len(rows), self.input_size), np.float32)  # (T, B, I)
        targets = np.zeros((steps, len(rows), self.output_size), np.float32)  # (T, B, O)
        mask = np.zeros((steps, len(rows)), np.float32)  # (T, B)
        for b, (x, y, m) in enumerate(rows):
            n = len(x)
            inputs[:n, b] = x
            mask[:n, b] = m
            if self.kind == "classes":
                counted = np.flatnonzero(m)
                targets[counted, b, y[counted]] = 1.0
            else:
                targets[:n, b] = np.where(m[:, None] > 0, y, 0.0)
        return Batch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask))

    def _sequence(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sequence up to its length: inputs (n, I), targets (n, O) or (n,), counted steps (n,) as 0/1."""
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        shard, i = self.shards[k], index - int(self.offsets[k])
        n = shard.steps if shard.lengths is None else int(shard.lengths[i])
        mask = np.ones(n, np.float32) if shard.mask is None else (np.asarray(shard.mask[i, :n]) == 1).astype(np.float32)
        return np.asarray(shard.inputs[i, :n], np.float32), np.asarray(shard.targets[i, :n]), mask


class Split:
    """Some sequences of a data set: a fixed set (evaluated whole, in order) and a sampler (uniform draws)."""

    def __init__(self, data: SequenceData, indices: np.ndarray) -> None:
        self.data, self.indices = data, indices
        self.size = len(indices)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for a in range(0, self.size, batch_size):
            yield self.data.batch(self.indices[a : a + batch_size])

    def __call__(self, gen: torch.Generator, batch: int) -> Batch:
        positions = torch.randint(0, self.size, (batch,), generator=gen).numpy()
        return self.data.batch(self.indices[positions])

    def subset(self, count: int) -> Split:
        """`count` of these sequences (all if fewer), picked once with a fixed seed, in file order."""
        if count >= self.size:
            return self
        picked = np.random.default_rng(SPLIT_SEED + 1).permutation(self.size)[:count]
        return Split(self.data, self.indices[np.sort(picked)])


def load(path: str | Path, classes: int = 0) -> SequenceData:
    shards = open_data(path)
    return assemble(shards, classes)


def assemble(shards: list[Shard], classes: int = 0) -> SequenceData:
    kinds = {s.kind for s in shards}
    kind = "classes" if kinds == {"classes"} else ("bits" if kinds == {"bits"} else "reals")
    if kind == "classes":
        declared = shards[0].meta.get("classes")
        classes = declared or max(classes, 1 + max(s.largest_class for s in shards))
    return SequenceData(shards, kind, classes if kind == "classes" else 0)


def splits(path: str | Path, validation: float | str) -> tuple[SequenceData, Split, Split]:
    """The data set and its training and validation splits (a fraction of it, or the data set at `validation`)."""
    data = load(path)
    if isinstance(validation, str):
        held = load(validation)
        _same_shape(data, held, str(path), validation)
        if data.kind == "classes" and held.classes != data.classes:  # ids seen in one file only: count them all
            classes = max(data.classes, held.classes)
            data, held = assemble(data.shards, classes), assemble(held.shards, classes)
        if data.kind != held.kind:  # 0/1 floats in one, reals in the other: reals
            data.kind = held.kind = "reals"
        return data, Split(data, np.arange(data.size)), Split(held, np.arange(held.size))
    if isinstance(validation, bool) or not 0.0 < float(validation) < 1.0:
        raise DataError(f"validation must be a fraction in (0, 1) or a data set path, got {validation!r}")
    count = round(float(validation) * data.size)
    if count == 0 or count == data.size:
        which = "validation" if count == 0 else "training"
        raise DataError(f"{path}: the {which} split is empty ({validation:g} of {data.size} sequences to "
                        f"validation); give a fraction that leaves both splits a sequence, or --validation FILE")
    order = np.random.default_rng(SPLIT_SEED).permutation(data.size)
    return data, Split(data, np.sort(order[count:])), Split(data, np.sort(order[:count]))


def _same_shape(data: SequenceData, held: SequenceData, path: str, other: str) -> None:
    family = {"classes": "class ids", "bits": "floats", "reals": "floats"}
    for what, want, got in (("input channels I", data.input_size, held.input_size),
                            ("target kind", family[data.kind], family[held.kind])):
        if want != got:
            raise DataError(f"{other}: {what} is {got!r}, but the training data {path} has {want!r}")
    if data.kind != "classes" and data.output_size != held.output_size:
        raise DataError(f"{other}: targets have O = {held.output_size} channels, the training data {path} has "
                        f"{data.output_size}")


def dataset_task(path: str, validation: float | str = 0.1) -> TaskSpec:
    """The task of the data set at `path` (options: `validation`, a fraction or a second data set's path)."""
    data, train, held = splits(path, validation)
    loss, errors, activation = _KINDS[data.kind]
    meta = data.shards[0].meta
    name = meta.get("name") or Path(path).stem
    seen = train.subset(max(TRAINING_POINT, held.size))
    seen_name = f"training split ({seen.size} of {train.size})" if seen.size < train.size else "training split"
    return TaskSpec(
        name=name, input_size=data.input_size, output_size=data.output_size, sample=train,
        eval_points=((seen_name, seen), ("validation split", held)),
        encoding=meta.get("encoding") or _describe(data, name),
        loss=loss, errors=errors, output_activation=activation,
        metric=data.kind, heldout=held,
    )


def _describe(data: SequenceData, name: str) -> str:
    targets = {"bits": f"{data.output_size} bits per step (sigmoid probabilities)",
               "classes": f"one of {data.classes} class ids per step (softmax probabilities)",
               "reals": f"{data.output_size} real values per step (the outputs as they are)"}[data.kind]
    return (f"Data set {name}: {data.size} sequences of up to {data.longest} steps, {data.input_size} input "
            f"channels per step. Outputs: {targets}.")


__all__ = ["DataError", "SequenceData", "Split", "dataset_task", "load", "splits"]
