"""Model configuration: one frozen dataclass, serialisable to JSON for checkpoints and ONNX metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

ControllerKind = Literal["lstm", "feedforward"]
MemoryInit = Literal["constant", "learned"]
Heads = Literal["ntm", "lru"]
# Options added later: left out of to_dict() at their defaults, so older models' config (and graph metadata) bytes
# stay the same.
MAX_MEMORY_ROWS = 8192  # the largest memory a model runs on unless trained larger (benchmarks/memory_rows.py)
_LATER_DEFAULTS: dict[str, Any] = {"heads": "ntm", "usage_decay": 0.95, "lru_rows": 0, "heads_see_input": False,
                                   "write_follows": False, "input_layer": 0, "read_skips_new": False}


@dataclass(frozen=True)
class NTMConfig:
    """Sizes and options of one NTM. Defaults follow the issue: 128x20 memory, 1 read and 1 write head, S = 3."""

    input_size: int
    output_size: int
    controller: ControllerKind = "lstm"
    controller_size: int = 100
    memory_rows: int = 128  # N
    memory_width: int = 20  # M
    read_heads: int = 1  # R
    write_heads: int = 1  # W
    shift_range: int = 3  # S, odd, 1 < S <= N
    memory_init: MemoryInit = "constant"
    memory_init_value: float = 1e-6
    logit_clip: float = 20.0
    heads: Heads = "ntm"  # "lru": Santoro et al.'s least-recently-used access (ntm_serve/training/lru.py)
    usage_decay: float = 0.95  # LRU usage decay gamma
    lru_rows: int = 0  # LRU: least-used rows erased and written per step (0: read_heads, Santoro et al.'s rule)
    # The head projections also see the step's raw input (a linear skip past the controller, zero at init), so a
    # key can be a plain projection of the image: comparing samples need not go through the LSTM.
    heads_see_input: bool = False
    # LRU: write heads after the first write to the rows the first one wrote at the previous step. A one-shot
    # sample's label arrives one step after the sample, so a second head can add the label to the sample's row.
    write_follows: bool = False
    # A ReLU layer of this many units over the step's input (0: none). The controller, and the heads' input skip,
    # see its features beside the raw input: one more non-linear stage between an image and its key. Its features
    # start unread (zero columns), so a model warm-started from one without it begins as its source.
    input_layer: int = 0
    # LRU: the read heads skip the rows renewed this step (erased, then written by head 1: the step's own sample,
    # not yet labelled). Read after the write, that row is the best match for a key made from the sample itself, and
    # it holds no label; without it a key can look for the sample's look-alikes directly.
    read_skips_new: bool = False

    @property
    def features(self) -> int:
        """Width of what the controller and the heads' skip see of a step's input: the input, then the input layer."""
        return self.input_size + self.input_layer

    @property
    def write_rows(self) -> int:
        """Least-used rows an LRU write takes per step."""
        return self.lru_rows or self.read_heads

    @property
    def rows_range(self) -> tuple[int, int]:
        """The memory sizes N this model runs on: from the smallest this config allows (S <= N, and the LRU heads'
        rows) to MAX_MEMORY_ROWS; a learned initial memory only at its trained N. The graphs take N as a
        dimension (docs/onnx-contract.md); how well a model does away from its trained N is its eval report's."""
        if self.memory_init == "learned":
            return self.memory_rows, self.memory_rows
        low = max(self.shift_range, self.read_heads if self.heads == "lru" else 1, self.lru_rows,
                  self.write_rows + 1 if self.read_skips_new else 1)
        return low, max(MAX_MEMORY_ROWS, self.memory_rows)

    @property
    def memory_columns(self) -> int:
        """Columns of the memory state: M, plus each row's usage for LRU heads."""
        return self.memory_width + (self.heads == "lru")

    def __post_init__(self) -> None:
        if self.controller not in ("lstm", "feedforward"):
            raise ValueError(f"controller must be 'lstm' or 'feedforward', got {self.controller!r}")
        if self.memory_init not in ("constant", "learned"):
            raise ValueError(f"memory_init must be 'constant' or 'learned', got {self.memory_init!r}")
        if self.shift_range % 2 != 1 or not 1 < self.shift_range <= self.memory_rows:
            raise ValueError(
                f"shift_range must be odd with 1 < S <= N={self.memory_rows}, got {self.shift_range}"
            )
        for name in ("input_size", "output_size", "controller_size", "memory_rows", "memory_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.read_heads < 1 or self.write_heads < 1:
            raise ValueError("read_heads and write_heads must be >= 1")
        if self.heads not in ("ntm", "lru"):
            raise ValueError(f"heads must be 'ntm' or 'lru', got {self.heads!r}")
        if self.heads == "lru" and self.read_heads > self.memory_rows:
            raise ValueError("lru heads need read_heads <= memory_rows")
        if self.write_follows and (self.heads != "lru" or self.write_heads < 2):
            raise ValueError("write_follows needs heads='lru' and write_heads >= 2")
        if self.read_skips_new and (self.heads != "lru" or self.memory_rows <= self.write_rows):
            raise ValueError("read_skips_new needs heads='lru' and more memory rows than each write renews")
        if self.input_layer < 0:
            raise ValueError(f"input_layer must be >= 0, got {self.input_layer}")
        if not 0 <= self.lru_rows <= self.memory_rows:
            raise ValueError(f"lru_rows must be in [0, memory_rows={self.memory_rows}], got {self.lru_rows}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if _LATER_DEFAULTS.get(k, object()) != v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NTMConfig:
        return cls(**data)
