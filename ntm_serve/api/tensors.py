"""`ntm.v1.Tensor` <-> numpy, and the checks every tensor from a client passes (pure functions).

Every check raises INVALID_ARGUMENT with a message naming the field and what is wrong, before anything
is queued: a refused request never changes a session.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np

from ntm_serve.api.errors import ServiceError, invalid
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.contract import ATTENTION_OF, STATE_NAMES

# `values` travels as packed little-endian float32 (proto3 packs repeated scalars): the bytes of a numpy array.
# Building a Tensor from its wire form moves them in one copy; extending `values` goes float by float through
# Python objects: 4x slower for a 20-step message's outputs, 15-70x for attention or a state (measured,
# docs/performance.md). Reading a freshly parsed request's values from the wire form takes half the time.
_FLOAT32 = np.dtype("<f4")
# Shapes numpy can describe even when empty (it refuses [0, 2**30, 2**30, 2**30] as "too big"); no gRPC message
# can carry more values than this anyway.
MAX_RANK = 32
MAX_ELEMENTS = 2**31 - 1
# An imported read/write weighting must be a distribution: finite, >= 0, each head's row summing to 1 within this.
# The served step graphs rely on it (ntm_serve/export/passes/premises.py: the sharpening's 1e-30 floors are dropped,
# exact
# whenever a row's peak is >= 2**-75, which any such row keeps). The model's own rows miss 1 by at most N float32
# roundings (N * 2**-24 = 7.6e-6 for N = 128; measured <= 1.1e-6 on every shipped model), so 1e-3 refuses nothing the
# server exported, leaves room for a client's own rounding, and is far from any row that could break the premise.
WEIGHTING_SUM_TOLERANCE = 1e-3
WEIGHTINGS = tuple(ATTENTION_OF.values())  # the state tensors that hold attention weightings, (H, N) per session
_VALUES_TAG = 0x12  # field 2, length-delimited
_SHAPE_TAG = 0x0A  # field 1, length-delimited (packed)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, index after it) of the base-128 varint at buf[i]."""
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


@functools.lru_cache(maxsize=1024)
def _shape_field(shape: tuple[int, ...]) -> bytes:
    """Wire bytes of `Tensor.shape` (field 1, packed varints); none for a scalar."""
    body = b"".join(_varint(d) for d in shape)
    return bytes((_SHAPE_TAG,)) + _varint(len(body)) + body if shape else b""


def to_tensor(array: np.ndarray) -> ntm_pb2.Tensor:
    """A float32 copy of `array` as an `ntm.v1.Tensor` (built from its wire form: one copy of the data)."""
    array = np.asarray(array, dtype=_FLOAT32)
    data = array.tobytes()  # C order, whatever the array's layout
    values = bytes((_VALUES_TAG,)) + _varint(len(data)) + data if data else b""
    return ntm_pb2.Tensor.FromString(_shape_field(array.shape) + values)


def _values(tensor: ntm_pb2.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """`tensor.values` as float32. A Tensor without unknown fields serializes as its shape field, then its
    values field: the floats are read from there in one copy (on a freshly parsed request, half the time of
    the runtime's own conversion); anything else goes through the runtime."""
    buf = tensor.SerializeToString()
    at = len(_shape_field(shape))
    if at < len(buf) and buf[at] == _VALUES_TAG and buf.startswith(_shape_field(shape)):
        length, start = _read_varint(buf, at + 1)
        if start + length == len(buf):
            return np.frombuffer(buf, dtype=_FLOAT32, count=length // 4, offset=start).astype(np.float32)
    return np.asarray(tensor.values, dtype=np.float32)


def to_array(tensor: ntm_pb2.Tensor, what: str) -> np.ndarray:
    """The tensor as float32 of its declared shape; the shape must match the number of values."""
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise invalid(f"{what}: negative dimension in shape {list(shape)}")
    if len(shape) > MAX_RANK or math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy cannot describe it
        raise invalid(f"{what}: shape {list(shape)} is too large (at most {MAX_RANK} dimensions, and the "
                      f"non-zero ones may span at most {MAX_ELEMENTS} values)")
    size = math.prod(shape)
    values = _values(tensor, shape)
    if size != values.size:
        raise invalid(f"{what}: shape {list(shape)} needs {size} values, got {values.size}")
    return values.reshape(shape)


def _finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[0].tolist()
        raise invalid(f"{what}: values must be finite, found {array[tuple(where)]} at index {where}")


def _check_steps(steps: int, width: int, input_size: int, max_steps: int) -> None:
    if steps < 1:
        raise invalid(f"inputs must hold at least one step (T >= 1), got T = {steps}")
    if steps > max_steps:
        raise invalid(f"inputs has T = {steps} steps, more than the server's limit of {max_steps} per request")
    if width != input_size:
        raise invalid(f"inputs must have width {input_size} (the model's input size), got {width}")


def step_inputs(tensor: ntm_pb2.Tensor, input_size: int, max_steps: int) -> np.ndarray:
    """A request's inputs as (T, I) float32: rank 2, 1 <= T <= max_steps, I = the model's input size, finite."""
    shape = list(tensor.shape)
    if len(shape) != 2:
        raise invalid(f"inputs must have shape [T, {input_size}], got rank {len(shape)} shape {shape}")
    _check_steps(shape[0], shape[1], input_size, max_steps)
    array = to_array(tensor, "inputs")
    _finite(array, "inputs")
    return np.ascontiguousarray(array)


def packed_inputs(tensor: ntm_pb2.Tensor, entries: int, input_size: int, max_steps: int) -> np.ndarray:
    """A packed message's inputs as (E, T, I) float32: rank 3, E = its number of entries, 1 <= T <= max_steps,
    I = the model's input size. Finiteness is checked per entry (`nonfinite_entries`)."""
    shape = list(tensor.shape)
    if len(shape) != 3:
        raise invalid(f"inputs must have shape [E, T, {input_size}] (E = {entries} entries), got rank {len(shape)} "
                      f"shape {shape}")
    if shape[0] != entries:
        raise invalid(f"inputs has {shape[0]} rows of steps (its first dimension) for {entries} entries")
    _check_steps(shape[1], shape[2], input_size, max_steps)
    return np.ascontiguousarray(to_array(tensor, "inputs"))


ANSWER_FIELD_BYTES = 256  # an answer's tags, lengths, shapes and step count: about 110 bytes at most, with room
STEP_COUNT_BYTES = 10  # per entry of a packed answer: its step count, a varint


def check_answer_size(session_steps: int, values_per_step: int, limit: int, echoed_chars: int = 0,
                      entries: int = 0) -> None:
    """Refuse a request whose answer could not be sent: `session_steps` (steps x sessions) of `values_per_step`
    float32 values each (4 bytes apiece on the wire), the ids it echoes (`echoed_chars`, at most 4 bytes a
    character) and a packed answer's step counts (`entries`) would make a message over `limit` (--max-message-bytes).
    Checked before anything is queued: otherwise the steps would be applied and the answer lost, with gRPC ending
    the call (RESOURCE_EXHAUSTED "Sent message larger than max") and the client unable to tell what happened."""
    size = (4 * session_steps * values_per_step + 4 * echoed_chars + STEP_COUNT_BYTES * entries
            + ANSWER_FIELD_BYTES)
    if size > limit:
        raise invalid(f"the answer could take {size:,} bytes, more than the server's --max-message-bytes "
                      f"({limit:,}): send fewer steps{' or sessions' if entries else ''} per message, or leave "
                      "return_attention off")


def nonfinite_entries(inputs: np.ndarray) -> dict[int, ServiceError]:
    """Entry -> why, for the entries of inputs (E, T, I) holding a value that is not finite (one pass over all)."""
    finite = np.isfinite(inputs)  # (E, T, I)
    if finite.all():  # the usual case: one pass and one reduction
        return {}
    bad = ~finite
    refused = {}
    for e in np.flatnonzero(bad.reshape(len(inputs), -1).any(axis=1)).tolist():
        step, channel = np.argwhere(bad[e])[0].tolist()
        refused[e] = invalid(f"inputs of entry {e} must be finite, found {inputs[e, step, channel]} at step {step}, "
                             f"channel {channel}")
    return refused


def state_tensors(tensors: Mapping[str, ntm_pb2.Tensor],
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """An imported state: exactly the six state tensors, each of the model's per-session shape, finite; the read and
    write weightings distributions (`weighting_rows`)."""
    names = set(tensors)
    missing = [s for s in STATE_NAMES if s not in names]
    extra = sorted(names - set(STATE_NAMES))
    if missing or extra:
        raise invalid(f"state tensors must be exactly {list(STATE_NAMES)}; missing {missing}, unexpected {extra}")
    state = {}
    for name in STATE_NAMES:
        array = to_array(tensors[name], f"state tensor {name}")
        if array.shape != tuple(shapes[name]):
            raise invalid(f"state tensor {name} must have shape {list(shapes[name])}, got {list(array.shape)}")
        _finite(array, f"state tensor {name}")
        if name in WEIGHTINGS:
            weighting_rows(array, name)
        state[name] = array
    return state


def weighting_rows(array: np.ndarray, name: str) -> None:
    """Each head's row of a finite weighting (..., H, N) must be a distribution: entries >= 0, sum within
    WEIGHTING_SUM_TOLERANCE of 1. Anything else is INVALID_ARGUMENT naming the tensor, the head and why."""
    negative = np.argwhere(array < 0)
    if negative.size:
        where = negative[0].tolist()
        raise invalid(f"state tensor {name} must hold attention weightings (each head's row a distribution over the "
                      f"memory rows): entry {where} is {array[tuple(where)]}, below 0")
    sums = array.astype(np.float64).sum(axis=-1)  # (..., H)
    off = np.argwhere(np.abs(sums - 1.0) > WEIGHTING_SUM_TOLERANCE)
    if off.size:
        head = off[0].tolist()
        raise invalid(f"state tensor {name} must hold attention weightings (each head's row a distribution over the "
                      f"memory rows): row {head} sums to {sums[tuple(head)]:.6g}, not 1 (within "
                      f"{WEIGHTING_SUM_TOLERANCE:g})")
