"""How many rows a step call runs on: the batch padded to `ROW_MULTIPLE`, and under CUDA graphs the smallest of a
fixed list of batch sizes (buckets) that holds it. Pure functions: the engine asks them, the tests check them.

Why fixed sizes: a captured CUDA graph replays the very kernels it recorded, on the very addresses, for one shape.
So the server captures one graph per bucket (and per ping-pong direction, ntm_serve/runtime/cuda_graphs.py) and runs
a batch
of B sessions in the smallest bucket >= B, the extra rows padding that steps blank (docs/service.md, "CUDA graphs").
"""

from __future__ import annotations

from collections.abc import Sequence

# Every onnxruntime call runs on a multiple of this many rows: onnxruntime's CPU Softplus and Log kernels round
# an element differently in the vector body and the scalar tail, so padding keeps a session's numbers
# independent of how many sessions share its call (docs/service.md, "Batch invariance").
ROW_MULTIPLE = 4


def padded(sessions: int) -> int:
    """sessions -> rows: up to the next multiple of ROW_MULTIPLE."""
    return sessions + (-sessions % ROW_MULTIPLE)


def default_buckets(max_batch: int) -> tuple[int, ...]:
    """ROW_MULTIPLE, twice that, ... up to the first that holds `max_batch` sessions: 4, 8, ..., 64 for 64.
    Doubling keeps the padding under half a call and the graphs few (log2 of the largest batch)."""
    buckets = [ROW_MULTIPLE]
    while buckets[-1] < max_batch:
        buckets.append(2 * buckets[-1])
    return tuple(buckets)


def check_buckets(buckets: Sequence[int], max_batch: int) -> tuple[int, ...]:
    """`buckets` as served (sorted, distinct), or ValueError saying what is wrong with them."""
    out = tuple(sorted(set(buckets)))
    if not out:
        raise ValueError("batch_buckets is empty")
    bad = [b for b in out if b < 1 or b % ROW_MULTIPLE]
    if bad:
        raise ValueError(f"batch_buckets must be positive multiples of {ROW_MULTIPLE} (every call runs on a multiple "
                         f"of {ROW_MULTIPLE} rows), got {bad}")
    if out[-1] < max_batch:
        raise ValueError(f"the largest of batch_buckets ({out[-1]}) must hold max_batch ({max_batch}) sessions")
    return out


def parse_buckets(text: str) -> tuple[int, ...]:
    """'4, 8,16' -> (4, 8, 16); '' -> () (the default list, from max_batch)."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"batch_buckets must be comma-separated integers, got {text!r}") from None


def bucket_rows(rows: int, buckets: Sequence[int]) -> int:
    """The rows a call of `rows` padded rows runs on: `rows` itself without buckets, else the smallest bucket that
    holds them (ValueError when none does: the configuration promises max_batch fits)."""
    if not buckets:
        return rows
    for bucket in buckets:  # sorted ascending (check_buckets)
        if bucket >= rows:
            return bucket
    raise ValueError(f"a batch of {rows} rows fits no bucket of {tuple(buckets)}")


def keeps(size: int, rows: int, buckets: Sequence[int]) -> bool:
    """Whether a resident batch of `size` rows keeps serving a call of `rows` padded rows (else it is rebuilt at
    `bucket_rows(rows)`). It must hold them. Without buckets it shrinks once under 3/4 full; with buckets it
    shrinks once the rows fill at most 3/4 of the next bucket down, so a batch hovering at a bucket's edge does not
    switch buffers (and graphs) every call."""
    if rows > size:
        return False
    if not buckets:
        return 4 * rows >= 3 * size
    below = [b for b in buckets if b < size]
    return not below or 4 * rows > 3 * below[-1]
