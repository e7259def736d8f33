"""The four algorithmic tasks, with the exact encodings the service and outside evaluations rely on (the one-shot
tasks live in ntm_serve/training/one_shot.py and are registered here), and the task interface they share with data
sets and task files.

Every generator takes a `torch.Generator` (seeded by the caller) and a batch size, and returns a
`Batch`: inputs (T, B, I) and targets (T_out, B, O). Targets are compared with the model's outputs
of the *last* T_out steps. Within one batch all sequences share their length parameters (L, R, K);
the values that vary per sequence (bits, query index, priorities) are drawn per sequence.

A task is a function of its own options returning a `TaskSpec` (`BUILTIN` holds the built-in ones); the trainer
reaches every task through ntm_serve/training/task_source.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ntm_serve.training import one_shot, one_shot_glyphs
from ntm_serve.training.batch import Batch
from ntm_serve.training.metrics import bit_errors, sequence_loss

Sampler = Callable[[torch.Generator, int], Batch]  # (generator, batch size) -> a batch
Errors = Callable[..., Tensor]  # (logits (T, B, O), targets[, mask]) -> errors per sequence (B,)


def _bits(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen).float()


def _uniform_int(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high], inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def copy_batch(gen: torch.Generator, batch: int, length: int) -> Batch:
    """L 8-bit vectors, a delimiter (channel 8), L blank steps; target the L vectors."""
    seq = _bits(gen, length, batch, 8)  # (L, B, 8)
    inputs = torch.zeros(2 * length + 1, batch, 9)  # (2L+1, B, 9)
    inputs[:length, :, :8] = seq
    inputs[length, :, 8] = 1.0
    return Batch(inputs, seq)


def repeat_copy_batch(gen: torch.Generator, batch: int, length: int, repeats: int) -> Batch:
    """L vectors, delimiter (ch 8), repeat count R/10 on ch 9, R*L+1 blanks; target R copies + end marker."""
    seq = _bits(gen, length, batch, 8)  # (L, B, 8)
    out_steps = repeats * length + 1
    inputs = torch.zeros(length + 2 + out_steps, batch, 10)  # (L+2+R*L+1, B, 10)
    inputs[:length, :, :8] = seq
    inputs[length, :, 8] = 1.0
    inputs[length + 1, :, 9] = repeats / 10.0
    targets = torch.zeros(out_steps, batch, 9)  # (R*L+1, B, 9)
    targets[:-1, :, :8] = seq.repeat(repeats, 1, 1)
    targets[-1, :, 8] = 1.0
    return Batch(inputs, targets)


def associative_recall_batch(gen: torch.Generator, batch: int, items: int, wrap: bool = False) -> Batch:
    """K items of 3 6-bit vectors, each after a delimiter (ch 6); query delimiter (ch 7), the query
    item, query delimiter, 3 blanks; target the item after the query (wrapping to item 1 if `wrap`).

    Without `wrap` the query is one of the first K-1 items (Graves et al.)."""
    item_len = 3
    data = _bits(gen, items, item_len, batch, 6)  # (K, 3, B, 6)
    query = torch.randint(0, items if wrap else items - 1, (batch,), generator=gen)  # (B,)
    answer = (query + 1) % items  # (B,)
    cols = torch.arange(batch)
    steps = (item_len + 1) * items
    inputs = torch.zeros(steps + 1 + item_len + 1 + item_len, batch, 8)  # (4K+8, B, 8)
    for k in range(items):  # loop over item slots (a length parameter), never over the batch
        inputs[k * (item_len + 1), :, 6] = 1.0
        inputs[k * (item_len + 1) + 1 : (k + 1) * (item_len + 1), :, :6] = data[k]
    inputs[steps, :, 7] = 1.0
    inputs[steps + 1 : steps + 1 + item_len, :, :6] = data[query, :, cols].transpose(0, 1)  # (3, B, 6)
    inputs[steps + 1 + item_len, :, 7] = 1.0
    targets = data[answer, :, cols].transpose(0, 1)  # (3, B, 6)
    return Batch(inputs, targets)


SORT_ITEMS, SORT_KEEP = 20, 16  # the issue-2 encoding: 20 prioritised vectors in, the 16 highest out
NARROW_SPREAD = 0.02  # the narrowest priority half-range a `narrow` training batch draws (log-uniform up to 1)


def priority_sort_batch(gen: torch.Generator, batch: int, count: int = SORT_ITEMS, keep: int = SORT_KEEP,
                        centre: float = 0.0, spread: float = 1.0) -> Batch:
    """20 vectors with a priority in [-1, 1] on ch 8, a delimiter (ch 9), 16 blanks; target the
    16 highest-priority vectors, highest first."""
    seq = _bits(gen, count, batch, 8)  # (20, B, 8)
    priority = torch.rand(count, batch, generator=gen) * 2.0 - 1.0  # (20, B)
    if spread != 1.0 or centre != 0.0:  # training only: priorities in [centre - spread, centre + spread]
        priority = centre + spread * priority
    inputs = torch.zeros(count + 1 + keep, batch, 10)  # (37, B, 10)
    inputs[:count, :, :8] = seq
    inputs[:count, :, 8] = priority
    inputs[count, :, 9] = 1.0
    order = torch.argsort(priority, dim=0, descending=True)[:keep]  # (16, B)
    targets = seq[order, torch.arange(batch)]  # (16, B, 8)
    return Batch(inputs, targets)


@runtime_checkable
class SequenceSet(Protocol):
    """A fixed set of sequences (a data set's split): evaluated whole, in order, instead of drawn."""

    size: int

    def batches(self, batch_size: int) -> Iterator[Batch]: ...


EvalSource = Sampler | SequenceSet  # an eval point: fresh draws from a sampler, or every sequence of a fixed set


@dataclass(frozen=True)
class TaskSpec:
    """What the trainer, evaluator and exporter need to know about a task: the one interface of the built-in tasks,
    data sets (ntm_serve/training/dataset.py) and task files (ntm_serve/training/task_file.py)."""

    name: str
    input_size: int
    output_size: int
    sample: Sampler  # a training batch with random length parameters
    eval_points: tuple[tuple[str, EvalSource], ...]  # the training range first, then points beyond it
    encoding: str
    # Classification tasks swap these; the defaults are the bit tasks' (BCE, bit errors, sigmoid outputs). With a
    # batch mask, loss and errors are called as (logits, targets, mask).
    loss: Callable[..., Tensor] = sequence_loss
    errors: Callable[..., Tensor] = bit_errors  # per sequence (B,): the trainer's held-out figure (lower is better)
    output_activation: str = "sigmoid"  # what turns logits into the served outputs: sigmoid, softmax or identity
    metadata: dict[str, Any] = field(default_factory=dict)  # more task facts for config.json and the ONNX metadata
    # The report's figure: "bits" (bit errors per sequence), "classes" (accuracy), "reals" (mean squared error) or
    # "episodes" (one-shot accuracy by instance).
    metric: str = "bits"
    heldout: EvalSource | None = None  # what the trainer evaluates; None: fresh draws of `sample` (its own seed)
    select_on: str = ""  # the eval point that picks the checkpoint unless the run names one ("": `heldout`)

    @property
    def figure(self) -> str:
        """The trainer's held-out figure in words (logs, learning curves)."""
        return {"bits": "bit errors / sequence", "classes": "wrong steps / sequence", "reals": "mean squared error",
                "episodes": "wrong labels / episode"}.get(self.metric, "errors / sequence")


def batch_loss(task: TaskSpec, logits: Tensor, batch: Batch) -> Tensor:
    """The task's loss on one batch (masked when the batch has a mask). logits (T, B, O) -> scalar."""
    if batch.mask is None:
        return task.loss(logits, batch.targets)
    return task.loss(logits, batch.targets, batch.mask)


def batch_errors(task: TaskSpec, logits: Tensor, batch: Batch) -> Tensor:
    """The task's errors per sequence on one batch. logits (T, B, O) -> (B,)"""
    if batch.mask is None:
        return task.errors(logits, batch.targets)
    return task.errors(logits, batch.targets, batch.mask)


def heldout_batches(source: EvalSource, sequences: int, seed: int, batch_size: int) -> Iterator[Batch]:
    """The batches of one eval point: a fixed set whole (`sequences` does not apply), else `sequences` fresh draws
    from a generator seeded with `seed`."""
    if isinstance(source, SequenceSet):
        yield from source.batches(batch_size)
        return
    gen = torch.Generator().manual_seed(seed)
    count = 0
    while count < sequences:
        batch = source(gen, min(batch_size, sequences - count))
        count += batch.inputs.shape[1]
        yield batch


def _copy_train(gen: torch.Generator, batch: int) -> Batch:
    return copy_batch(gen, batch, _uniform_int(gen, 1, 20))


def _repeat_train(gen: torch.Generator, batch: int) -> Batch:
    return repeat_copy_batch(gen, batch, _uniform_int(gen, 1, 10), _uniform_int(gen, 1, 10))


def _recall_train(gen: torch.Generator, batch: int, wrap: bool = False) -> Batch:
    return associative_recall_batch(gen, batch, _uniform_int(gen, 2, 6), wrap)


def _sort_train(gen: torch.Generator, batch: int) -> Batch:
    return priority_sort_batch(gen, batch)


def _fixed(fn: Callable[..., Batch], *args: Any) -> Sampler:
    return lambda gen, batch: fn(gen, batch, *args)


# ------------------------------------------------------------------------------------------- the built-in tasks
# Each is a function of its own options (a config's [task] section) returning its TaskSpec; a task file provides
# the same (ntm_serve/training/task_file.py).


def copy_task(max_length: int = 0) -> TaskSpec:
    """Copy. `max_length`: train on L in [1, max_length] (0: 1..20), still reporting the usual points."""
    spec = TaskSpec(
        "copy", 9, 8, _copy_train,
        (("L in [1,20]", _copy_train), *((f"L={n}", _fixed(copy_batch, n)) for n in (20, 40, 80, 120))),
        "L random 8-bit vectors (ch 8 = 0); delimiter (only ch 8 = 1); L zero steps. "
        "Target: the L vectors, on the outputs of the last L steps.",
    )
    return _longer_copy(spec, max_length) if max_length else spec


def repeat_copy_task() -> TaskSpec:
    return TaskSpec(
        "repeat_copy", 10, 9, _repeat_train,
        (
            ("L,R in [1,10]", _repeat_train),
            *((f"L={n},R={r}", _fixed(repeat_copy_batch, n, r)) for n, r in ((10, 10), (10, 15), (15, 10))),
        ),
        "L random 8-bit vectors; delimiter (only ch 8 = 1); a step with only ch 9 = R/10; R*L+1 zero steps. "
        "Target over the last R*L+1 steps: the L vectors repeated R times (ch 8 = 0), then an end marker "
        "(only ch 8 = 1).",
    )


def associative_recall_task(wrap: bool = False) -> TaskSpec:
    """Associative recall. `wrap`: the seed's variant, where the query may be the last item (its answer wraps
    around to item 1)."""
    spec = TaskSpec(
        "associative_recall", 8, 6, _recall_train,
        (("K in [2,6]", _recall_train), *((f"K={k}", _fixed(associative_recall_batch, k)) for k in (6, 8, 10, 12, 15))),
        "K items of 3 random 6-bit vectors, each preceded by a delimiter (only ch 6 = 1); a query delimiter "
        "(only ch 7 = 1); the query item (3 steps, a copy of item q); a query delimiter; 3 zero steps. "
        "Target over the last 3 steps: item q + 1.",
    )
    return _wrapped_recall(spec) if wrap else spec


def priority_sort_task(min_items: int = 0, narrow: float = 0.0) -> TaskSpec:
    """Priority sort. `min_items`: train on n in [min_items, 20] items, keeping the ceil(4n/5) highest (0: always
    20 -> 16); `narrow`: the fraction of those training batches whose priorities are squeezed into a random
    sub-interval of [-1, 1] (near-ties: what a trained sorter still gets wrong). Either way the run is evaluated,
    and its checkpoint picked, on 20 -> 16."""
    spec = TaskSpec(
        "priority_sort", 10, 8, _sort_train,
        (("20 -> 16", _sort_train),),
        "20 random 8-bit vectors, each step with its priority (uniform in [-1, 1]) on ch 8; a delimiter "
        "(only ch 9 = 1); 16 zero steps. Target over those 16 steps: the 16 highest-priority vectors, "
        "highest first.",
    )
    if min_items or narrow:
        spec = _fewer_items_sort(spec, min_items or SORT_ITEMS, narrow)
    return spec


def one_shot_task(permute: float = 0.0) -> TaskSpec:
    """One-shot digits. `permute`: the fraction of training episodes whose pixels are permuted (per episode; the
    evaluation points are the plain task's)."""
    train = _ONE_SHOT_TRAIN
    if permute:
        if not 0.0 <= permute <= 1.0:
            raise ValueError(f"permute must be in [0, 1], got {permute}")
        train = _fixed(one_shot.digit_episodes, "train", one_shot.EPISODE_STEPS, permute)
    return TaskSpec(
        "one_shot", one_shot.INPUT_SIZE, one_shot.CLASSES, train,
        (("training classes", _ONE_SHOT_TRAIN), ("held-out classes", _ONE_SHOT_TEST)),
        one_shot.ENCODING + " Classes: scikit-learn 8x8 digits turned by quarter turns; see class_split.",
        one_shot.classification_loss, one_shot.misclassified, "softmax", {"class_split": one_shot.split_description()},
        metric="episodes",
    )


def one_shot_synthetic_task() -> TaskSpec:
    return TaskSpec(
        "one_shot_synthetic", one_shot.INPUT_SIZE, one_shot.CLASSES, one_shot.synthetic_episodes,
        (("new classes", one_shot.synthetic_episodes),),
        one_shot.ENCODING + f" Classes: a fresh random 64-bit prototype per class per episode, each sample with "
        f"every bit flipped with probability {one_shot.SYNTHETIC_FLIP}.",
        one_shot.classification_loss, one_shot.misclassified, "softmax", metric="episodes",
    )


def _glyph_task(name: str, ways: int, turns: bool, flips: bool, shift: int, extra_scripts: bool,
                strokes: float) -> TaskSpec:
    """One-shot glyphs, `ways` characters per episode: trained on background scripts (augmented as
    `one_shot_glyphs.glyph_episodes` says), evaluated and selected on the held-out evaluation scripts."""
    one_shot_glyphs.check_shift(shift)
    one_shot_glyphs.check_strokes(strokes)
    train = _fixed(one_shot_glyphs.glyph_episodes, "background", ways, one_shot_glyphs.PER_CLASS, turns, flips, shift,
                   extra_scripts, strokes)
    heldout = _fixed(one_shot_glyphs.glyph_episodes, "evaluation", ways)
    augmented = [w for w, on in (("turned", turns), ("mirrored", flips), (f"shifted up to {shift} px", shift),
                                 (f"strokes thickened or thinned up to {strokes:g}", strokes)) if on]
    background = "background and extra scripts" if extra_scripts else "background scripts"
    return TaskSpec(
        name, one_shot_glyphs.PIXELS + ways, ways, train,
        ((", ".join([background, *augmented]), train), ("held-out scripts", heldout)),
        one_shot_glyphs.encoding(ways),
        one_shot.classification_loss, one_shot.misclassified, "softmax",
        {"class_split": one_shot_glyphs.split_description(extra_scripts)}, metric="episodes", heldout=heldout,
    )


def one_shot_glyphs_task(turns: bool = True, flips: bool = False, shift: int = 0,
                         extra_scripts: bool = False, strokes: float = 0.0) -> TaskSpec:
    """5-way one-shot glyphs (50-step episodes). Augmentation of training episodes: `turns` random quarter turns
    and `flips` random mirroring of each character (new classes), `shift` moves each rendering by up to that many
    pixels, `strokes` thickens or thins each rendering's strokes; `extra_scripts` trains on the background scripts
    of glyphs_extra.npz too."""
    return _glyph_task("one_shot_glyphs", 5, turns, flips, shift, extra_scripts, strokes)


def one_shot_glyphs15_task(turns: bool = True, flips: bool = False, shift: int = 0,
                           extra_scripts: bool = False, strokes: float = 0.0) -> TaskSpec:
    """15-way one-shot glyphs (150-step episodes, one-hot labels). Options as for one_shot_glyphs."""
    return _glyph_task("one_shot_glyphs15", 15, turns, flips, shift, extra_scripts, strokes)


_ONE_SHOT_TRAIN = _fixed(one_shot.digit_episodes, "train")
_ONE_SHOT_TEST = _fixed(one_shot.digit_episodes, "test")

BUILTIN: dict[str, Callable[..., TaskSpec]] = {
    "copy": copy_task,
    "repeat_copy": repeat_copy_task,
    "associative_recall": associative_recall_task,
    "priority_sort": priority_sort_task,
    "one_shot": one_shot_task,
    "one_shot_synthetic": one_shot_synthetic_task,
    "one_shot_glyphs": one_shot_glyphs_task,
    "one_shot_glyphs15": one_shot_glyphs15_task,
}
TASKS: dict[str, TaskSpec] = {name: make() for name, make in BUILTIN.items()}  # each task with default options
# Options that were TrainConfig fields before tasks had their own: read from older checkpoints and resume files.
LEGACY_OPTIONS: dict[str, Any] = {"wrap": False, "max_length": 0, "permute": 0.0, "min_items": 0, "narrow": 0.0}


def task_options(factory: Callable[..., TaskSpec]) -> dict[str, Any]:
    """A task factory's options and their defaults."""
    return {name: p.default for name, p in inspect.signature(factory).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_task(factory: Callable[..., TaskSpec], label: str, options: dict[str, Any]) -> TaskSpec:
    """`factory(**options)`, an unknown option named (and the task that has it, for a built-in's)."""
    known = task_options(factory)
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    for key in options:
        if key not in known and not accepts_any:
            owners = [n for n, f in BUILTIN.items() if key in task_options(f)]
            where = f" ({key} is an option of {', '.join(owners)})" if owners else ""
            raise ValueError(f"task {label!r} has no option {key!r}{where}; its options: "
                             f"{', '.join(sorted(known)) or 'none'}")
    return factory(**options)


def get_task(name: str, **options: Any) -> TaskSpec:
    """A built-in task by name, with its own options (e.g. get_task("copy", max_length=40))."""
    try:
        factory = BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(BUILTIN)}") from None
    return build_task(factory, name, options)


def legacy_options(train_config: dict[str, Any]) -> dict[str, Any]:
    """A recorded training config's task options: its `task_options`, or the flat fields older runs recorded."""
    if "task_options" in train_config:
        return dict(train_config["task_options"])
    return {k: train_config[k] for k, default in LEGACY_OPTIONS.items() if train_config.get(k, default) != default}


def _wrapped_recall(spec: TaskSpec) -> TaskSpec:
    def sample(gen: torch.Generator, batch: int) -> Batch:
        return _recall_train(gen, batch, wrap=True)

    points = tuple((f"K={k}, wrap", _fixed(associative_recall_batch, k, True)) for k in (6, 8, 10, 12, 15))
    return replace(spec, sample=sample, eval_points=(("K in [2,6], wrap", sample), *points))


def _longer_copy(spec: TaskSpec, max_length: int) -> TaskSpec:
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")

    def sample(gen: torch.Generator, batch: int) -> Batch:
        return copy_batch(gen, batch, _uniform_int(gen, 1, max_length))

    return replace(spec, sample=sample, eval_points=((f"L in [1,{max_length}]", sample), *spec.eval_points))


def _fewer_items_sort(spec: TaskSpec, min_items: int, narrow: float = 0.0) -> TaskSpec:
    """Priority sort over n in [min_items, 20] items per batch (a curriculum mixed into every stage, like copy's
    random L): a few items need little precision in the priority comparison, so the mechanism is found early.
    With `narrow`, that fraction of batches draws its priorities from [c - s, c + s] with s log-uniform in
    [NARROW_SPREAD, 1]: closer priorities, so the comparison has to get sharper."""
    if not 1 <= min_items <= SORT_ITEMS:
        raise ValueError(f"min_items must be in [1, {SORT_ITEMS}], got {min_items}")
    if not 0.0 <= narrow <= 1.0:
        raise ValueError(f"narrow must be in [0, 1], got {narrow}")

    def sample(gen: torch.Generator, batch: int) -> Batch:
        n = _uniform_int(gen, min_items, SORT_ITEMS)
        keep = -(-SORT_KEEP * n // SORT_ITEMS)  # ceil(4n/5): 20 -> 16 keeps its 16
        if narrow and float(torch.rand((), generator=gen)) < narrow:
            spread = NARROW_SPREAD ** float(torch.rand((), generator=gen))  # log-uniform in [NARROW_SPREAD, 1]
            centre = (1.0 - spread) * (2.0 * float(torch.rand((), generator=gen)) - 1.0)
            return priority_sort_batch(gen, batch, n, keep, centre, spread)
        return priority_sort_batch(gen, batch, n, keep)

    # evaluated, selected and plotted on 20 -> 16 only
    return replace(spec, sample=sample, select_on=spec.eval_points[0][0])
