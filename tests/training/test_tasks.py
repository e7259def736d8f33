"""Each generator produces exactly the encoding of issue 2, section 3 (every channel, every step)."""

from __future__ import annotations

import pytest
import torch

from ntm_serve.training.tasks import (
    TASKS,
    associative_recall_batch,
    copy_batch,
    get_task,
    priority_sort_batch,
    repeat_copy_batch,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def only(channel: int, width: int, value: float = 1.0) -> torch.Tensor:
    """A step whose only non-zero is `channel` = value."""
    v = torch.zeros(width)
    v[channel] = value
    return v


def is_bits(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def assert_random_bits(x: torch.Tensor) -> None:
    assert is_bits(x)
    assert 0.35 < float(x.mean()) < 0.65  # random bits, not a constant pattern


# ---------------------------------------------------------------- copy


@pytest.mark.parametrize("length", [1, 7, 20])
def test_copy_encoding(length: int) -> None:
    b = 64
    inputs, targets, _ = copy_batch(gen(length), b, length)
    assert inputs.shape == (2 * length + 1, b, 9)
    assert targets.shape == (length, b, 8)
    assert_random_bits(targets)
    assert torch.equal(inputs[:length, :, :8], targets)  # the L vectors...
    assert torch.equal(inputs[:length, :, 8], torch.zeros(length, b))  # ...with channel 8 = 0
    assert torch.equal(inputs[length], only(8, 9).expand(b, 9))  # delimiter
    assert torch.equal(inputs[length + 1 :], torch.zeros(length, b, 9))  # L zero steps


# ---------------------------------------------------------------- repeat copy


@pytest.mark.parametrize(("length", "repeats"), [(1, 1), (3, 4), (10, 10), (2, 15)])
def test_repeat_copy_encoding(length: int, repeats: int) -> None:
    b = 32
    inputs, targets, _ = repeat_copy_batch(gen(length * repeats), b, length, repeats)
    out_steps = repeats * length + 1
    assert inputs.shape == (length + 2 + out_steps, b, 10)
    assert targets.shape == (out_steps, b, 9)
    seq = inputs[:length, :, :8]
    assert_random_bits(seq)
    assert torch.equal(inputs[:length, :, 8:], torch.zeros(length, b, 2))
    assert torch.equal(inputs[length], only(8, 10).expand(b, 10))  # delimiter
    assert torch.equal(inputs[length + 1], only(9, 10, repeats / 10).expand(b, 10))  # repeat count R/10
    assert torch.equal(inputs[length + 2 :], torch.zeros(out_steps, b, 10))  # R*L+1 zero steps
    for r in range(repeats):  # the L vectors R times, channel 8 = 0
        assert torch.equal(targets[r * length : (r + 1) * length, :, :8], seq)
    assert torch.equal(targets[:-1, :, 8], torch.zeros(out_steps - 1, b))
    assert torch.equal(targets[-1], only(8, 9).expand(b, 9))  # end marker


# ---------------------------------------------------------------- associative recall


def query_positions(items: torch.Tensor, query: torch.Tensor) -> list[list[int]]:
    """For each sequence, the item indices equal to the query. items (K, 3, B, 6), query (3, B, 6)."""
    equal = (items == query.unsqueeze(0)).all(dim=-1).all(dim=1)  # (K, B)
    return [torch.nonzero(equal[:, b]).flatten().tolist() for b in range(query.shape[1])]


def check_recall(items_count: int, b: int, seed: int, wrap: bool) -> list[int]:
    """Check the encoding of one batch and return the query index of each unambiguous sequence."""
    k = items_count
    inputs, targets, _ = associative_recall_batch(gen(seed), b, k, wrap=wrap)
    assert inputs.shape == (4 * k + 8, b, 8)  # K (delimiter + 3) + delimiter + 3 + delimiter + 3
    assert targets.shape == (3, b, 6)
    items = torch.stack([inputs[4 * i + 1 : 4 * i + 4, :, :6] for i in range(k)])  # (K, 3, B, 6)
    assert_random_bits(items)
    for i in range(k):
        assert torch.equal(inputs[4 * i], only(6, 8).expand(b, 8))  # item delimiter
        assert torch.equal(inputs[4 * i + 1 : 4 * i + 4, :, 6:], torch.zeros(3, b, 2))
    assert torch.equal(inputs[4 * k], only(7, 8).expand(b, 8))  # query delimiter
    query = inputs[4 * k + 1 : 4 * k + 4]
    assert torch.equal(query[:, :, 6:], torch.zeros(3, b, 2))
    assert torch.equal(inputs[4 * k + 4], only(7, 8).expand(b, 8))  # query delimiter again
    assert torch.equal(inputs[4 * k + 5 :], torch.zeros(3, b, 8))  # 3 zero steps
    found = []
    for seq, matches in enumerate(query_positions(items, query[:, :, :6])):
        assert matches, "the query must be a copy of one of the items"
        answers = [(q + 1) % k for q in matches]
        assert any(torch.equal(targets[:, seq], items[a, :, seq]) for a in answers), "target = item q + 1"
        if len(matches) == 1:
            found.append(matches[0])
    return found


@pytest.mark.parametrize("items", [2, 3, 6, 12])
def test_associative_recall_encoding_query_in_first_k_minus_1(items: int) -> None:
    found = check_recall(items, 400, items, wrap=False)
    assert set(found) == set(range(items - 1))  # every one of the first K-1 items, never the last


def test_associative_recall_wrap_flag_allows_the_last_item() -> None:
    k = 3
    inputs, targets, _ = associative_recall_batch(gen(5), 400, k, wrap=True)
    found = check_recall(k, 400, 5, wrap=True)
    assert set(found) == set(range(k))
    last = [seq for seq, q in enumerate(query_positions(
        torch.stack([inputs[4 * i + 1 : 4 * i + 4, :, :6] for i in range(k)]), inputs[4 * k + 1 : 4 * k + 4, :, :6]
    )) if q == [k - 1]]
    assert last
    for seq in last:  # the answer to the last item wraps around to item 1
        assert torch.equal(targets[:, seq], inputs[1:4, seq, :6])


# ---------------------------------------------------------------- priority sort


def test_priority_sort_encoding() -> None:
    b = 50
    inputs, targets, _ = priority_sort_batch(gen(3), b)
    assert inputs.shape == (37, b, 10)  # 20 + delimiter + 16
    assert targets.shape == (16, b, 8)
    seq, priority = inputs[:20, :, :8], inputs[:20, :, 8]
    assert_random_bits(seq)
    assert bool((priority >= -1).all() and (priority <= 1).all())
    assert float(priority.min()) < -0.9 and float(priority.max()) > 0.9  # uniform over [-1, 1]
    assert torch.equal(inputs[:20, :, 9], torch.zeros(20, b))
    assert torch.equal(inputs[20], only(9, 10).expand(b, 10))  # delimiter
    assert torch.equal(inputs[21:], torch.zeros(16, b, 10))  # 16 zero steps
    for s in range(b):
        by_priority = sorted(range(20), key=lambda i: -float(priority[i, s]))[:16]  # highest first
        assert torch.equal(targets[:, s], seq[by_priority, s])


# ---------------------------------------------------------------- training samplers and specs


def test_training_ranges() -> None:
    g = gen(7)
    copy_lengths = {TASKS["copy"].sample(g, 1).targets.shape[0] for _ in range(300)}
    assert copy_lengths == set(range(1, 21))
    recall_items = {(TASKS["associative_recall"].sample(g, 1).inputs.shape[0] - 8) // 4 for _ in range(200)}
    assert recall_items == set(range(2, 7))
    pairs = set()
    for _ in range(1500):
        inputs, _targets, _ = TASKS["repeat_copy"].sample(g, 1)
        length = int(torch.nonzero(inputs[:, 0, 8]).item())
        repeats = round(float(inputs[length + 1, 0, 9]) * 10)
        assert inputs.shape[0] == length + 2 + repeats * length + 1
        pairs.add((length, repeats))
    assert {p[0] for p in pairs} == set(range(1, 11)) and {p[1] for p in pairs} == set(range(1, 11))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_specs_sizes_seeding_and_eval_points(name: str) -> None:
    task = get_task(name)
    a, b = task.sample(gen(11), 4), task.sample(gen(11), 4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)  # seeded
    assert not torch.equal(a.targets, task.sample(gen(12), 4).targets)
    assert a.inputs.shape[-1] == task.input_size and a.targets.shape[-1] == task.output_size
    assert task.eval_points[0][1] is task.sample  # the first point is the training range
    for _, sample in task.eval_points:
        batch = sample(gen(0), 2)
        assert batch.inputs.shape[1:] == (2, task.input_size) and batch.targets.shape[1:] == (2, task.output_size)


def test_eval_points_are_the_issue_lengths() -> None:
    names = {n: [p for p, _ in spec.eval_points] for n, spec in TASKS.items()}
    assert names["copy"] == ["L in [1,20]", "L=20", "L=40", "L=80", "L=120"]
    assert names["associative_recall"] == ["K in [2,6]", "K=6", "K=8", "K=10", "K=12", "K=15"]
    assert names["repeat_copy"] == ["L,R in [1,10]", "L=10,R=10", "L=10,R=15", "L=15,R=10"]
    copy120 = TASKS["copy"].eval_points[4][1](gen(0), 1)
    assert copy120.inputs.shape[0] == 241 and copy120.targets.shape[0] == 120
    k15 = TASKS["associative_recall"].eval_points[5][1](gen(0), 1)
    assert k15.inputs.shape[0] == 4 * 15 + 8
    rc = TASKS["repeat_copy"].eval_points[3][1](gen(0), 1)
    assert rc.inputs.shape[0] == 15 + 2 + 151 and float(rc.inputs[16, 0, 9]) == 1.0


def test_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown task 'sort'"):
        get_task("sort")


def test_wrap_flag_selects_the_seed_variant_for_training_and_evaluation() -> None:
    """The wrap option ([task] wrap = true) samples queries from all K items; other tasks refuse the option."""
    from ntm_serve.training.tasks import get_task

    spec = get_task("associative_recall", wrap=True)
    assert spec.eval_points[0][0].endswith("wrap")
    gen = torch.Generator().manual_seed(3)
    batch = spec.sample(gen, 512)
    items = (batch.inputs.shape[0] - 8) // 4
    query = batch.inputs[4 * items + 1 : 4 * items + 4]  # (3, B, 6)
    last_item = batch.inputs[4 * (items - 1) + 1 : 4 * items, :, :6]  # (3, B, 6)
    first_item = batch.inputs[1:4, :, :6]
    asks_last = (query[..., :6] == last_item).all(dim=(0, 2))  # (B,)
    assert asks_last.any()
    assert torch.equal(batch.targets[:, asks_last], first_item[:, asks_last])
    with pytest.raises(ValueError, match="no option 'wrap' \\(wrap is an option of associative_recall\\)"):
        get_task("copy", wrap=True)
