"""The `metadata_props` every exported graph carries (keys fixed by docs/onnx-contract.md)."""

from __future__ import annotations

import json
from typing import Any

import onnx

from ntm_serve.contract import (
    BATCH_DIM,
    JSON_KEYS,
    META_CHECKPOINT,
    META_CONFIG,
    META_ENCODING,
    META_GRAPH,
    META_INPUTS,
    META_MEMORY_ROWS_MAX,
    META_MEMORY_ROWS_MIN,
    META_OUTPUT_ACTIVATION,
    META_OUTPUTS,
    META_STATE,
    META_TASK,
    META_TASK_METADATA,
    STATE_NAMES,
)
from ntm_serve.training.config import NTMConfig

Shape = list[int | str]  # "B" (batch), "T" (time) and "N" (memory rows) are the symbolic dimensions


def state_shapes(config: NTMConfig, rows: int | str | None = None) -> dict[str, Shape]:
    """Name -> shape of every state tensor, batch first, in STATE_NAMES order, with `rows` memory rows (None: the
    trained N; ROWS_DIM: the graphs' symbolic N)."""
    c = config
    n = c.memory_rows if rows is None else rows
    shapes: dict[str, Shape] = {
        "controller_h": [BATCH_DIM, c.controller_size],
        "controller_c": [BATCH_DIM, c.controller_size],
        "read_vectors": [BATCH_DIM, c.read_heads, c.memory_width],
        "memory": [BATCH_DIM, n, c.memory_columns],  # LRU heads: + 1 usage column
        "read_weights": [BATCH_DIM, c.read_heads, n],
        "write_weights": [BATCH_DIM, c.write_heads, n],
    }
    assert tuple(shapes) == STATE_NAMES
    return shapes


def _spec(pairs: list[tuple[str, Shape]]) -> str:
    return json.dumps([{"name": name, "shape": shape} for name, shape in pairs])


def graph_metadata(
    graph: str,
    task: str,
    config: NTMConfig,
    encoding: str,
    checkpoint_sha256: str,
    inputs: list[tuple[str, Shape]],
    outputs: list[tuple[str, Shape]],
    output_activation: str = "sigmoid",
    task_metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """All contract keys, JSON with sorted keys so the bytes are stable. The optional keys appear only when they
    differ from the default (sigmoid outputs, no task metadata), so the bit tasks' graphs keep their bytes.
    `ntm.state` is the state at the trained N (what initial_state.onnx gives when N is not fed); the graphs' own
    inputs and outputs (`inputs`, `outputs`) carry the symbolic N, and the range is `config.rows_range`."""
    optional = {}
    if output_activation != "sigmoid":
        optional[META_OUTPUT_ACTIVATION] = output_activation
    if task_metadata:
        optional[META_TASK_METADATA] = json.dumps(task_metadata, sort_keys=True)
    return {
        META_TASK: task,
        META_GRAPH: graph,
        META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
        META_STATE: _spec(list(state_shapes(config).items())),
        META_INPUTS: _spec(inputs),
        META_OUTPUTS: _spec(outputs),
        META_ENCODING: encoding,
        META_CHECKPOINT: checkpoint_sha256,
        META_MEMORY_ROWS_MIN: str(config.rows_range[0]),
        META_MEMORY_ROWS_MAX: str(config.rows_range[1]),
        **optional,
    }


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """metadata_props as a dict, JSON values decoded."""
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        key, value = prop.key, prop.value
        out[key] = json.loads(value) if key in JSON_KEYS else value
    return out
