"""The ONNX contract between export/ and service/: every fixed name, in one place, with no torch.

docs/onnx-contract.md explains what each name means; this module is the only place they are spelled.
Training, export, the service, the benchmarks and the tests all import them from here (the serving
install has no torch, so this module imports nothing but the standard library).
"""

from __future__ import annotations

# The recurrent state, in the order of the graphs' state inputs and outputs (and of
# `ntm_serve.training.state.NTMState`).
STATE_NAMES: tuple[str, ...] = (
    "controller_h",
    "controller_c",
    "read_vectors",
    "memory",
    "read_weights",
    "write_weights",
)

# Rank of each state tensor with its batch (or pool-row) dimension.
STATE_RANKS: dict[str, int] = {
    "controller_h": 2,
    "controller_c": 2,
    "read_vectors": 3,
    "memory": 3,
    "read_weights": 3,
    "write_weights": 3,
}


def next_name(state: str) -> str:
    """The graph output that carries `state` after a step: `memory` -> `next_memory`."""
    return f"next_{state}"


NEXT_STATE: tuple[str, ...] = tuple(next_name(name) for name in STATE_NAMES)

# The three graph files of a model folder.
GRAPH_FILES: dict[str, str] = {"step": "step.onnx", "sequence": "sequence.onnx", "initial_state": "initial_state.onnx"}

# Graph inputs and outputs, in order.
STEP_INPUTS: tuple[str, ...] = ("input", *STATE_NAMES)  # input (B, I), then the state
STEP_OUTPUTS: tuple[str, ...] = ("output", *NEXT_STATE)  # output (B, O) probabilities, then the next state
ATTENTION: tuple[str, ...] = ("read_attention", "write_attention")  # (T, B, R|W, N): the heads' weightings per step
ATTENTION_OF: dict[str, str] = dict(zip(ATTENTION, ("read_weights", "write_weights"), strict=True))  # -> its state
SEQUENCE_INPUTS: tuple[str, ...] = ("inputs", *STATE_NAMES)  # inputs (T, B, I), then the state before step 1
SEQUENCE_OUTPUTS: tuple[str, ...] = ("outputs", *ATTENTION, *NEXT_STATE)  # outputs (T, B, O), attention, last state
INITIAL_STATE_OUTPUTS: tuple[str, ...] = STATE_NAMES  # batch 1, N memory rows
# The memory size N is a dimension of the graphs (issue 24), not a constant: the step and sequence graphs run on any
# N, and initial_state.onnx takes it as its one input, optional (an initializer of the same name holds the trained
# N, so a caller that feeds nothing gets the trained size; onnxruntime lists it among the overridable initializers,
# not the inputs). int64, shape (): a scalar.
MEMORY_ROWS = "memory_rows"
INITIAL_STATE_INPUTS: tuple[str, ...] = (MEMORY_ROWS,)
# The graphs' symbolic dimensions: batch, time (sequence graph) and memory rows.
BATCH_DIM, TIME_DIM, ROWS_DIM = "B", "T", "N"

# metadata_props keys, on all three graphs.
META_TASK = "ntm.task"
META_GRAPH = "ntm.graph"  # step, sequence or initial_state
META_CONFIG = "ntm.config"  # JSON of NTMConfig
META_STATE = "ntm.state"  # JSON list of {name, shape}
META_INPUTS = "ntm.inputs"  # JSON list of {name, shape} of this graph's inputs
META_OUTPUTS = "ntm.outputs"  # JSON list of {name, shape} of this graph's outputs
META_ENCODING = "ntm.encoding"  # the task's encoding, in words
META_CHECKPOINT = "ntm.checkpoint_sha256"  # sha256 of the checkpoint.pt the graph was exported from
# The memory sizes the model runs on, N in [min, max] (decimal integers); ntm.config's memory_rows is the trained N,
# the default. Absent (graphs exported before issue 24): the trained N only.
META_MEMORY_ROWS_MIN = "ntm.memory_rows_min"
META_MEMORY_ROWS_MAX = "ntm.memory_rows_max"
METADATA_KEYS: tuple[str, ...] = (META_TASK, META_GRAPH, META_CONFIG, META_STATE, META_INPUTS, META_OUTPUTS,
                                  META_ENCODING, META_CHECKPOINT, META_MEMORY_ROWS_MIN, META_MEMORY_ROWS_MAX)

# Optional keys, present only where they differ from the default (so older graphs stay byte-identical):
# "softmax" for classifiers, "identity" for real-valued outputs (a regression data set); absent means "sigmoid"
META_OUTPUT_ACTIVATION = "ntm.output_activation"
META_TASK_METADATA = "ntm.task_metadata"  # JSON: more task facts (e.g. one_shot's class split)
JSON_KEYS: frozenset[str] = frozenset({META_CONFIG, META_STATE, META_INPUTS, META_OUTPUTS, META_TASK_METADATA})
SERVED_KEYS: tuple[str, ...] = (META_TASK, META_CONFIG, META_STATE, META_GRAPH, META_CHECKPOINT)  # the service needs

