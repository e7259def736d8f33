"""The on-disk format of one session's snapshot (pure functions: bytes in, bytes out).

    offset  size  field
    0       8     magic b"NTMSNAP\\n"
    8       4     format version, uint32 little-endian (VERSION)
    12      8     payload length in bytes, uint64 little-endian
    20      32    sha256 of the payload
    52      ...   payload: uint32 LE header length, the header (UTF-8 JSON), then the state tensors as
                  float32 little-endian, row-major, in the header's order

The header holds the session's id, model, owner, TTL, creation time, last use (wall clock), step count,
the checkpoint its state was made with, and each tensor's name and shape (the shapes carry the session's memory
size N: memory [N, M], the weightings [H, N]; it is restored at that N). Decoding checks everything
(magic, version, length, checksum, header, sizes) and raises `SnapshotError` with a machine-readable
`reason`, so a corrupt, truncated or foreign file is reported and never loaded. Float32 bytes are kept
exactly: a restored session continues bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"NTMSNAP\n"
VERSION = 1
PREAMBLE = struct.Struct("<8sIQ32s")  # magic, version, payload length, sha256(payload)
HEADER_LENGTH = struct.Struct("<I")
FLOAT = np.dtype("<f4")
REQUIRED = {"session_id": str, "model": str, "owner": str, "ttl_s": (int, float), "created_wall": (int, float),
            "idle_wall": (int, float), "steps": int, "checkpoint_sha256": str, "tensors": list}


class SnapshotError(Exception):
    """A snapshot that must not be loaded; `reason` is one of truncated, magic, version, checksum, format."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SessionSnapshot:
    session_id: str
    model: str
    owner: str
    ttl_s: float
    created_wall: float  # wall clock (seconds since the epoch)
    idle_wall: float  # wall clock of the session's last use when the snapshot was taken
    steps: int
    checkpoint_sha256: str
    state: dict[str, np.ndarray]  # per-session shapes (no batch dimension), in the model's state order


def encode(snapshot: SessionSnapshot) -> bytes:
    arrays = [np.ascontiguousarray(a, dtype=FLOAT) for a in snapshot.state.values()]
    header = {
        "session_id": snapshot.session_id, "model": snapshot.model, "owner": snapshot.owner,
        "ttl_s": snapshot.ttl_s, "created_wall": snapshot.created_wall, "idle_wall": snapshot.idle_wall,
        "steps": snapshot.steps, "checkpoint_sha256": snapshot.checkpoint_sha256,
        "tensors": [{"name": name, "shape": list(a.shape)} for name, a in zip(snapshot.state, arrays, strict=True)],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    payload = b"".join([HEADER_LENGTH.pack(len(head)), head, *(a.tobytes() for a in arrays)])
    return PREAMBLE.pack(MAGIC, VERSION, len(payload), hashlib.sha256(payload).digest()) + payload


def _header(payload: bytes) -> tuple[dict[str, Any], int]:
    if len(payload) < HEADER_LENGTH.size:
        raise SnapshotError("format", "payload shorter than its header length field")
    (length,) = HEADER_LENGTH.unpack_from(payload)
    end = HEADER_LENGTH.size + length
    if end > len(payload):
        raise SnapshotError("format", f"header of {length} bytes runs past the payload ({len(payload)} bytes)")
    try:
        header = json.loads(payload[HEADER_LENGTH.size:end])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SnapshotError("format", f"header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise SnapshotError("format", "header is not a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise SnapshotError("format", f"header field {key!r} missing or of the wrong type")
    return header, end


def _tensors(header: dict[str, Any], data: bytes) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    offset = 0
    for entry in header["tensors"]:
        name, shape = (entry.get("name"), entry.get("shape")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or name in state or not isinstance(shape, list) or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise SnapshotError("format", f"bad tensor entry {entry!r}")
        size = math.prod(shape) * FLOAT.itemsize
        if offset + size > len(data):
            raise SnapshotError("format", f"tensor {name} {shape} runs past the payload")
        state[name] = np.frombuffer(data, FLOAT, math.prod(shape), offset).reshape(shape).astype(np.float32)
        offset += size
    if offset != len(data):
        raise SnapshotError("format", f"{len(data) - offset} bytes after the last tensor")
    return state


def decode(data: bytes) -> SessionSnapshot:
    """The snapshot in `data`, or SnapshotError saying why it cannot be trusted."""
    if len(data) < PREAMBLE.size:
        raise SnapshotError("truncated" if data.startswith(MAGIC[:len(data)]) else "magic",
                            f"{len(data)} bytes, shorter than the {PREAMBLE.size}-byte preamble")
    magic, version, length, digest = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("magic", f"not a session snapshot (starts with {magic!r})")
    if version != VERSION:
        raise SnapshotError("version", f"format version {version}, this server reads version {VERSION}")
    payload = data[PREAMBLE.size:]
    if len(payload) < length:
        raise SnapshotError("truncated", f"payload has {len(payload)} of its {length} bytes")
    if len(payload) > length:
        raise SnapshotError("format", f"{len(payload) - length} unexpected bytes after the payload")
    if hashlib.sha256(payload).digest() != digest:
        raise SnapshotError("checksum", "sha256 of the payload does not match: the file is corrupt")
    header, end = _header(payload)
    state = _tensors(header, payload[end:])
    return SessionSnapshot(header["session_id"], header["model"], header["owner"], float(header["ttl_s"]),
                           float(header["created_wall"]), float(header["idle_wall"]), header["steps"],
                           header["checkpoint_sha256"], state)
