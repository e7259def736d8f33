"""Opening and checking a sequence data set on disk, before any training: every problem named by file, key and index.

A data set is one `.npz` file, a folder of `.npz` files (shards, concatenated), or a folder with one `.npy` file per
key (memory-mapped: a data set larger than memory). The keys:

- `inputs` float [S, T, I] (ints and bools are read as floats);
- `targets` float [S, T, O] (bits: every counted value 0 or 1; else reals), or int class ids [S, T];
- `mask` [S, T], optional: 1 where a target counts, 0 where not (absent: every step counts);
- `lengths` int [S], optional: steps at and past a sequence's length are padding, never fed and never scored;
- `name`, `encoding` (strings) and `classes` (the number of class ids), optional metadata.

Padding and uncounted positions may hold anything (NaN, -1): nothing there is checked, fed or scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ARRAY_KEYS = ("inputs", "targets", "mask", "lengths")
META_KEYS = ("name", "encoding", "classes")
CHUNK = 1024  # sequences checked at a time: a memory-mapped data set is never read whole


class DataError(ValueError):
    """The data set cannot be trained on as it is; the message names the file, the key and the index."""


@dataclass
class Shard:
    """One file's (or one .npy folder's) arrays, checked; `inputs` and `targets` may be memory-mapped."""

    source: str
    inputs: np.ndarray  # [S, T, I]
    targets: np.ndarray  # [S, T, O] floats, or [S, T] class ids
    mask: np.ndarray | None  # [S, T]
    lengths: np.ndarray | None  # [S]
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = ""  # "bits", "classes" or "reals" (filled in by `check_values`)
    largest_class: int = -1  # the largest counted class id (class targets)

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def steps(self) -> int:
        return int(self.inputs.shape[1])


def open_data(path: str | Path) -> list[Shard]:
    """The shards of the data set at `path`, each with its keys, shapes and values checked."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".npz":
            raise DataError(f"{p}: a data set is an .npz file or a folder (of .npz files, or of one .npy per key)")
        shards = [_npz(p)]
    elif p.is_dir():
        if (p / "inputs.npy").is_file():
            shards = [_npy_folder(p)]
        else:
            files = sorted(p.glob("*.npz"))
            if not files:
                raise DataError(f"{p}: holds neither inputs.npy (one .npy per key) nor any .npz file")
            shards = [_npz(f) for f in files]
    else:
        raise DataError(f"{p}: no such file or folder")
    for shard in shards:
        check_values(shard)
    agree(shards)
    return shards


def _npz(path: Path) -> Shard:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as .npz ({err})") from err
    return shard_of(str(path), arrays)


def _npy_folder(path: Path) -> Shard:
    arrays = {}
    for file in sorted(path.glob("*.npy")):
        try:
            arrays[file.stem] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{file}: cannot read as .npy ({err})") from err
    return shard_of(str(path), arrays)


def shard_of(source: str, arrays: dict[str, np.ndarray]) -> Shard:
    """Check the keys, dtypes and shapes (not the values) of one file's arrays."""
    unknown = sorted(set(arrays) - set(ARRAY_KEYS) - set(META_KEYS))
    if unknown:
        raise DataError(f"{source}: unknown key(s) {unknown}; a data set has {list(ARRAY_KEYS)} "
                        f"and optional metadata {list(META_KEYS)}")
    for key in ("inputs", "targets"):
        if key not in arrays:
            raise DataError(f"{source}: no {key!r} key (keys: {sorted(arrays)})")
    inputs, targets = arrays["inputs"], arrays["targets"]
    if inputs.ndim != 3 or not _numeric(inputs):
        raise DataError(f"{source}: inputs has shape {inputs.shape} and dtype {inputs.dtype}; want numbers [S, T, I]")
    s, t, _ = inputs.shape
    if s == 0 or t == 0 or inputs.shape[2] == 0:
        raise DataError(f"{source}: inputs has shape {inputs.shape}: no sequences, steps or channels")
    if np.issubdtype(targets.dtype, np.integer):
        if targets.shape != (s, t):
            raise DataError(f"{source}: targets are class ids (dtype {targets.dtype}) of shape {targets.shape}; "
                            f"want [S, T] = {(s, t)}, as inputs {inputs.shape}")
    elif _numeric(targets):
        if targets.ndim != 3 or targets.shape[:2] != (s, t) or targets.shape[2] == 0:
            raise DataError(f"{source}: targets has shape {targets.shape}; want [S, T, O] with [S, T] = {(s, t)}, "
                            f"as inputs {inputs.shape} (class ids: an integer array [S, T])")
    else:
        raise DataError(f"{source}: targets has dtype {targets.dtype}; want floats [S, T, O] or int class ids [S, T]")
    mask, lengths = arrays.get("mask"), arrays.get("lengths")
    if mask is not None and (mask.shape != (s, t) or not _numeric(mask)):
        raise DataError(f"{source}: mask has shape {mask.shape} and dtype {mask.dtype}; want [S, T] = {(s, t)}")
    if lengths is not None and (lengths.shape != (s,) or not np.issubdtype(lengths.dtype, np.integer)):
        raise DataError(f"{source}: lengths has shape {lengths.shape} and dtype {lengths.dtype}; "
                        f"want integers [S] = ({s},)")
    return Shard(source, inputs, targets, mask, lengths, _metadata(source, arrays))


def _numeric(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_)


def _metadata(source: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in ("name", "encoding"):
        if key in arrays:
            value = arrays[key]
            if value.ndim != 0 or value.dtype.kind != "U":
                raise DataError(f"{source}: {key} must be one string (np.array('...')), got dtype {value.dtype} "
                                f"shape {value.shape}")
            meta[key] = str(value)
    if "classes" in arrays:
        value = arrays["classes"]
        if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer) or int(value) < 1:
            raise DataError(f"{source}: classes must be one integer >= 1, got {value!r}")
        meta["classes"] = int(value)
    return meta


def check_values(shard: Shard) -> None:
    """Lengths, non-finite values, mask values, sequences with nothing counted and class ids below zero (or at or
    past `classes`), chunk by chunk; sets the shard's target kind and largest class id."""
    src = shard.source
    classes = shard.meta.get("classes")
    is_class = np.issubdtype(shard.targets.dtype, np.integer)
    all_bits = True
    for a, b in _chunks(shard.size):
        valid = step_mask(shard, a, b)  # (n, T) steps before each sequence's length
        inputs = np.asarray(shard.inputs[a:b])
        _first_bad(src, "inputs", a, ~np.isfinite(inputs) & valid[..., None], inputs, "is not finite")
        counted = valid
        if shard.mask is not None:
            mask = np.asarray(shard.mask[a:b])
            _first_bad(src, "mask", a, valid & (mask != 0) & (mask != 1), mask, "is not 0 or 1")
            counted = valid & (mask == 1)
        empty = np.flatnonzero(~counted.any(axis=1))
        if empty.size:
            i = a + int(empty[0])
            raise DataError(f"{src}: mask[{i}] counts no step (within the sequence's length "
                            f"{int(valid[empty[0]].sum())}): every sequence needs a counted step")
        targets = np.asarray(shard.targets[a:b])
        if is_class:
            _first_bad(src, "targets", a, counted & (targets < 0), targets, "is a negative class id")
            if classes is not None:
                _first_bad(src, "targets", a, counted & (targets >= classes), targets,
                           f"is outside the class ids 0..{classes - 1} (classes = {classes})")
            shard.largest_class = max(shard.largest_class, int(targets[counted].max()))
        else:
            _first_bad(src, "targets", a, ~np.isfinite(targets) & counted[..., None], targets, "is not finite")
            values = targets[counted]  # (counted steps, O)
            all_bits = all_bits and bool(((values == 0) | (values == 1)).all())
    shard.kind = "classes" if is_class else ("bits" if all_bits else "reals")


def step_mask(shard: Shard, a: int, b: int) -> np.ndarray:
    """(b - a, T) bool: the steps before each sequence's length (every step without `lengths`); checks lengths."""
    steps = shard.steps
    if shard.lengths is None:
        return np.ones((b - a, steps), dtype=bool)
    lengths = np.asarray(shard.lengths[a:b]).astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > steps))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{shard.source}: lengths[{a + i}] = {int(lengths[i])}: a length must be in [1, T = {steps}]")
    return np.arange(steps)[None, :] < lengths[:, None]


def _first_bad(source: str, key: str, offset: int, bad: np.ndarray, values: np.ndarray, what: str) -> None:
    hits = np.argwhere(bad)
    if hits.size:
        index = (offset + int(hits[0][0]), *(int(i) for i in hits[0][1:]))
        raise DataError(f"{source}: {key}[{', '.join(map(str, index))}] = {values[tuple(hits[0])].item()!r} {what}")


def _chunks(size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, size, CHUNK):
        yield a, min(size, a + CHUNK)


def _family(kind: str) -> str:
    return "class ids" if kind == "classes" else "floats"  # bits and reals mix: the set is reals then


def agree(shards: list[Shard]) -> None:
    """Every shard has the first one's input channels, target kind and output channels, and the same metadata."""
    first = shards[0]
    for shard in shards[1:]:
        checks = (("input channels I", first.inputs.shape[2], shard.inputs.shape[2]),
                  ("target kind", _family(first.kind), _family(shard.kind)),
                  ("target shape past [S, T]", first.targets.shape[2:], shard.targets.shape[2:]))
        for what, want, got in checks:
            if want != got:
                raise DataError(f"{shard.source}: {what} is {got!r}, but {first.source} has {want!r}: "
                                "every file of a data set must agree")
        for key in META_KEYS:
            if key in shard.meta and key in first.meta and shard.meta[key] != first.meta[key]:
                raise DataError(f"{shard.source}: {key} = {shard.meta[key]!r}, but {first.source} has "
                                f"{first.meta[key]!r}")
