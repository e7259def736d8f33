"""Parity of the ONNX graphs with torch: op by op, and whole models over long inputs.

`python -m ntm_serve.export.parity FOLDER [--provider cpu|cuda] [--steps N] [--memory-rows N,...]` checks the ONNX
files in FOLDER against its checkpoint, prints one table row per op and per output/state tensor (at the trained
memory size, then at other sizes N), and exits 1 past tolerance (2 when the provider or the files cannot be used).
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ntm_serve.contract import (
    ATTENTION,
    ATTENTION_OF,
    GRAPH_FILES,
    MEMORY_ROWS,
    META_CHECKPOINT,
    STATE_NAMES,
    STEP_INPUTS,
)
from ntm_serve.export.compare import DRIFT_TOLERANCE, FLOOR_FACTOR, OP_TOLERANCE, Row, errors, markdown, row
from ntm_serve.export.graphs import probabilities
from ntm_serve.export.metadata import read_metadata
from ntm_serve.export.model_files import Checkpoint, load_checkpoint
from ntm_serve.export.ops import PURE_OPS, OpSpec, edge_cases, export_controller, export_pure_op, random_inputs
from ntm_serve.export.runtime import ProviderUnavailable, session
from ntm_serve.training import tasks
from ntm_serve.training.model import NTM
from ntm_serve.training.state import NTMState

CHUNKS = (7, 13, 1)  # sequence calls cycle through these lengths in the chunked check
OTHER_ROWS = (64, 512, 2048)  # memory sizes N checked besides the trained one (the graphs take N as a dimension)
EPISODE_STEPS = 37  # whole-model steps at each of them: one task episode, as test_parity_model.py checks


@dataclass
class Sessions:
    """onnxruntime sessions of a model's three graphs."""

    step: ort.InferenceSession
    sequence: ort.InferenceSession
    initial_state: ort.InferenceSession


def sessions(graphs: dict[str, onnx.ModelProto | bytes | str], provider: str, threads: int = 0) -> Sessions:
    return Sessions(*(session(graphs[name], provider, threads=threads) for name in GRAPH_FILES))


# ---------------------------------------------------------------------------------------------- inputs


def long_inputs(task: str, input_size: int, steps: int, batch: int, seed: int = 0) -> np.ndarray:
    """(steps, B, I) task inputs: one long copy / repeat-copy sequence, else task sequences back to back; random
    bits for a task that is not built in (a data set's or task file's: the checkpoint alone is at hand)."""
    gen = torch.Generator().manual_seed(seed)
    if task not in tasks.BUILTIN:
        return torch.randint(0, 2, (steps, batch, input_size), generator=gen).float().numpy()
    if task == "copy":
        inputs = tasks.copy_batch(gen, batch, math.ceil(steps / 2)).inputs
    elif task == "repeat_copy":
        inputs = tasks.repeat_copy_batch(gen, batch, 10, max(1, math.ceil((steps - 13) / 10))).inputs
    else:
        parts, total = [], 0
        while total < steps:
            part = tasks.get_task(task).sample(gen, batch).inputs
            parts.append(part)
            total += part.shape[0]
        inputs = torch.cat(parts)
    if inputs.shape[-1] != input_size:
        raise ValueError(f"task {task} has input size {inputs.shape[-1]}, the model {input_size}")
    return inputs[:steps].numpy().astype(np.float32)


def onnx_initial_state(sess: ort.InferenceSession, batch: int, rows: int | None = None) -> dict[str, np.ndarray]:
    """The initial_state graph's batch-1 state with `rows` memory rows (None: the graph's default, the trained N),
    repeated to `batch` (what the service does)."""
    state = sess.run(None, {} if rows is None else {MEMORY_ROWS: np.array(rows, dtype=np.int64)})
    return {name: np.repeat(value, batch, axis=0) for name, value in zip(STATE_NAMES, state, strict=True)}


# ------------------------------------------------------------------------------------------ rollouts


def torch_step(model: NTM, x: np.ndarray, state: dict[str, np.ndarray], activation: str = "sigmoid"
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One `NTM.step` in torch, probabilities out (as the step graph)."""
    with torch.no_grad():
        logits, nxt = model.step(torch.from_numpy(x), NTMState(*(torch.from_numpy(state[n]) for n in STATE_NAMES)))
    return probabilities(logits, activation).numpy(), {n: t.numpy() for n, t in zip(STATE_NAMES, nxt, strict=True)}


def onnx_step(sess: ort.InferenceSession, x: np.ndarray, state: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    out = sess.run(None, {"input": x, **state})
    return out[0], dict(zip(STATE_NAMES, out[1:], strict=True))


def onnx_sequence(sess: ort.InferenceSession, inputs: np.ndarray, state: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One sequence call -> ({outputs, read_attention, write_attention}, final state)."""
    out = sess.run(None, {"inputs": inputs, **state})
    return dict(zip(("outputs", *ATTENTION), out[:3], strict=True)), dict(zip(STATE_NAMES, out[3:], strict=True))


def onnx_sequence_chunked(sess: ort.InferenceSession, inputs: np.ndarray, state: dict[str, np.ndarray],
                          chunks: Iterable[int] = CHUNKS) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The same as one call, in calls of 7, 13, 1, 7, ... steps, each starting from the last one's state."""
    pieces: dict[str, list[np.ndarray]] = {"outputs": [], **{k: [] for k in ATTENTION}}
    start = 0
    for length in itertools.cycle(chunks):
        if start >= len(inputs):
            break
        seq, state = onnx_sequence(sess, inputs[start : start + length], state)
        for key, value in seq.items():
            pieces[key].append(value)
        start += length
    return {k: np.concatenate(v) for k, v in pieces.items()}, state


# ------------------------------------------------------------------------------------- model parity


def model_rows(model: NTM, sess: Sessions, task: str, steps: int = 1000, batch: int = 2, seed: int = 0,
               activation: str | None = None, rows: int | None = None) -> list[Row]:
    """Whole model over `steps` steps from the initial state with `rows` memory rows (None: the trained N, the
    graph's default): step graph looped and sequence graph vs torch.

    The ONNX step loop feeds back its own state (so drift accumulates honestly). Rows: every output
    and state tensor (the step loop at every step, the sequence's final state and per-step attention),
    identical rounded output bits (arg-max labels for softmax outputs), the initial state, and chunked
    sequence calls vs one call. The same model in float64 runs alongside, to show the float32 floor of each
    row (see `Row`).
    """
    inputs = long_inputs(task, model.config.input_size, steps, batch, seed)  # (T, B, I)
    activation = activation or tasks.get_task(task).output_activation  # the checkpoint's, when the caller has it
    start = onnx_initial_state(sess.initial_state, batch, rows)
    out = _initial_state_rows(model, start, rows)
    trace = _step_loop(model, sess.step, inputs, start, f"{steps} steps, B={batch}", activation)
    out += trace.rows()
    seq, final = onnx_sequence(sess.sequence, inputs, start)
    out += _sequence_rows(trace, seq, final, steps)
    out += _chunked_rows(sess.sequence, inputs, start, seq, final)
    return out


def exact_path_rows(model: NTM, sess: Sessions, task: str, steps: int = 1000, batch: int = 2, seed: int = 0,
                    activation: str | None = None) -> list[Row]:
    """The export's own error per step, free of the recurrence: along the float64 trajectory of the same inputs as
    `model_rows`, each step is taken once more by the step graph and by torch float32 from the same state (the
    float64 one, rounded to float32). A chaotic model (one whose 1000-step rows drift apart because rounding flips
    a pick) is held to this instead. Each step of each tensor passes within OP_TOLERANCE of the tensor's scale
    (max |value|, at least 1; for the output, that of the read vectors it is computed from), or, at an
    ill-conditioned step, when onnx is no further from float64 than
    FLOOR_FACTOR x torch f32 is at that same step, or itself within the tolerance of float64 (then it is torch f32
    that is off). An op that computes anything else fails however the recurrence behaves."""
    inputs = long_inputs(task, model.config.input_size, steps, batch, seed)  # (T, B, I)
    activation = activation or tasks.get_task(task).output_activation
    exact_model = copy.deepcopy(model).double()
    state = {n: v.astype(np.float64) for n, v in onnx_initial_state(sess.initial_state, batch).items()}
    seen: dict[str, list[tuple[float, float, float, float, float]]] = {n: [] for n in ("output", *STATE_NAMES)}
    for x in inputs:
        rounded = {n: v.astype(np.float32) for n, v in state.items()}
        p_exact, nxt = torch_step(exact_model, x.astype(np.float64), state, activation)
        p_torch, by_torch = torch_step(model, x, rounded, activation)
        p_onnx, by_onnx = onnx_step(sess.step, x, rounded)
        for name, (o, t, e) in {"output": (p_onnx, p_torch, p_exact),
                                **{n: (by_onnx[n], by_torch[n], nxt[n]) for n in STATE_NAMES}}.items():
            # onnx vs torch f32 (abs, rel), torch f32 vs f64, onnx vs f64, the tensor's scale
            seen[name].append((*errors(o, t), errors(t, e)[0], errors(o, e)[0], float(np.abs(e).max(initial=0.0))))
        state = nxt
    table = {name: np.array(values) for name, values in seen.items()}
    # The output layer reads the read vectors (and h): its probabilities carry rounding relative to their scale.
    table["output"][:, 4] = np.maximum(table["output"][:, 4], table["read_vectors"][:, 4])
    return [_exact_path_row(name, values, f"{steps} steps, B={batch}") for name, values in table.items()]


def _exact_path_row(name: str, values: np.ndarray, note: str) -> Row:
    """values (T, 5): per step onnx vs torch (abs, rel), torch vs f64, onnx vs f64, scale."""
    diff, rel, floor, exact, scale = values.T  # (T,) each
    tolerance = OP_TOLERANCE * max(1.0, float(scale.max()))
    bad = int(np.sum((diff > tolerance) & (exact > np.maximum(FLOOR_FACTOR * floor, tolerance))))
    return Row(f"one step from float64: {name}", float(diff.max()), float(rel.max()), tolerance,
               f"{note}, scale {scale.max():.3g}" + (f", {bad} steps past both" if bad else ""), float(floor.max()),
               float(exact.max()), bad_steps=bad)


def rows_rows(model: NTM, sess: Sessions, task: str, memory_rows: Iterable[int], steps: int, batch: int = 2,
              activation: str | None = None) -> list[Row]:
    """`model_rows` at other memory sizes N (each check named "N=512: ..."): the same graphs, a dimension apart."""
    out = []
    for n in memory_rows:
        for r in model_rows(model, sess, task, steps, batch, activation=activation, rows=n):
            r.check = f"N={n}: {r.check}"
            out.append(r)
    return out


def _initial_state_rows(model: NTM, start: dict[str, np.ndarray], rows: int | None = None) -> list[Row]:
    """initial_state.onnx holds exactly the model's initial state (at N = `rows`)."""
    with torch.no_grad():
        initial = {n: t.detach().numpy() for n, t in zip(STATE_NAMES, model.initial_state(1, rows), strict=True)}
    return [row(f"initial_state: {name}", start[name][:1], initial[name], 0.0) for name in STATE_NAMES]


@dataclass
class _Trace:
    """The step loop run three ways side by side: torch float32, torch float64 (`exact`) and the ONNX step graph."""

    torch_out: list[np.ndarray]  # per step (B, O)
    exact_out: list[np.ndarray]
    loop_out: list[np.ndarray]
    torch_attention: dict[str, list[np.ndarray]]  # ATTENTION name -> per step (B, R|W, N)
    exact_attention: dict[str, list[np.ndarray]]
    torch_state: dict[str, np.ndarray]  # after the last step
    exact_state: dict[str, np.ndarray]
    worst: dict[str, Row]  # output and state names -> the worst step's row
    activation: str  # "sigmoid" (bits) or "softmax" (labels): what a client decides from the outputs

    def rows(self) -> list[Row]:
        """The worst step of every output and state tensor, then the rounded bits or arg-max labels."""
        expected = np.stack(self.torch_out)  # (T, B, O)
        return [*self.worst.values(),
                *_decision_row("step loop vs torch", np.stack(self.loop_out), expected, self.activation)]


def _step_loop(model: NTM, step: ort.InferenceSession, inputs: np.ndarray, start: dict[str, np.ndarray],
               label: str, activation: str) -> _Trace:
    exact_model = copy.deepcopy(model).double()
    trace = _Trace([], [], [], {k: [] for k in ATTENTION}, {k: [] for k in ATTENTION}, dict(start),
                   {n: v.astype(np.float64) for n, v in start.items()}, {}, activation)
    onnx_state = dict(start)
    for x in inputs:
        p_torch, trace.torch_state = torch_step(model, x, trace.torch_state, activation)
        p_exact, trace.exact_state = torch_step(exact_model, x.astype(np.float64), trace.exact_state, activation)
        p_onnx, onnx_state = onnx_step(step, x, onnx_state)
        trace.torch_out.append(p_torch)
        trace.loop_out.append(p_onnx)
        trace.exact_out.append(p_exact)
        for key, state_name in ATTENTION_OF.items():
            trace.torch_attention[key].append(trace.torch_state[state_name])
            trace.exact_attention[key].append(trace.exact_state[state_name])
        compared = {"output": (p_onnx, p_torch, p_exact)}
        compared.update({n: (onnx_state[n], trace.torch_state[n], trace.exact_state[n]) for n in STATE_NAMES})
        for name, (actual, expected, exact) in compared.items():
            r = row(f"step loop vs torch: {name}", actual, expected, DRIFT_TOLERANCE, label, exact)
            trace.worst[name] = trace.worst[name].merge(r) if name in trace.worst else r
    return trace


def _sequence_rows(trace: _Trace, seq: dict[str, np.ndarray], final: dict[str, np.ndarray], steps: int) -> list[Row]:
    """The sequence graph against torch: outputs, per-step attention, final state, rounded output bits."""
    expected_out = np.stack(trace.torch_out)  # (T, B, O)
    rows = [row("sequence vs torch: outputs", seq["outputs"], expected_out, DRIFT_TOLERANCE, f"T={steps}",
                np.stack(trace.exact_out))]
    for key in ATTENTION:
        rows.append(row(f"sequence vs torch: {key}", seq[key], np.stack(trace.torch_attention[key]), DRIFT_TOLERANCE,
                        exact=np.stack(trace.exact_attention[key])))
    for name in STATE_NAMES:
        rows.append(row(f"sequence vs torch: final {name}", final[name], trace.torch_state[name], DRIFT_TOLERANCE,
                        exact=trace.exact_state[name]))
    rows += _decision_row("sequence vs torch", seq["outputs"], expected_out, trace.activation)
    return rows


def _chunked_rows(sequence: ort.InferenceSession, inputs: np.ndarray, start: dict[str, np.ndarray],
                  seq: dict[str, np.ndarray], final: dict[str, np.ndarray]) -> list[Row]:
    """Chunked sequence calls, each from the state the last one ended in, equal one call exactly."""
    chunked, chunked_final = onnx_sequence_chunked(sequence, inputs, start)
    label = "+".join(map(str, CHUNKS)) + "+…"
    rows = [row(f"sequence chunked {label} vs one call: {key}", chunked[key], seq[key], 0.0) for key in seq]
    rows += [row(f"sequence chunked {label} vs one call: final {name}", chunked_final[name], final[name], 0.0)
             for name in STATE_NAMES]
    return rows


def _decision_row(check: str, actual: np.ndarray, expected: np.ndarray, activation: str) -> list[Row]:
    """What a client decides from the outputs must agree exactly: rounded bits (sigmoid) or arg-max labels (softmax).
    Real outputs (identity) are values, not decisions: their rows above are the whole check. actual, expected
    (T, B, O)"""
    if activation == "identity":
        return []
    if activation == "softmax":
        name, unit, differ = "arg-max label", "labels", actual.argmax(-1) != expected.argmax(-1)  # (T, B)
    else:
        name, unit, differ = "rounded output bits", "bits", (actual > 0.5) != (expected > 0.5)  # (T, B, O)
    differing, total = int(np.count_nonzero(differ)), differ.size
    return [Row(f"{check}: {name}", float(differing), differing / max(total, 1), 0.0, f"differing {unit} of {total}")]


# ---------------------------------------------------------------------------------------- op parity


def pure_op_graph(name: str, shift_range: int = 3) -> onnx.ModelProto:
    """The op's graph, every axis dynamic but the shift's S (the shift and address ops have one graph per S):
    exported once per process, shared by every shape and test."""
    return _pure_op_graph(name, shift_range if "S" in PURE_OPS[name].static else 0)


@functools.cache
def _pure_op_graph(name: str, shift_range: int) -> onnx.ModelProto:
    return export_pure_op(PURE_OPS[name], {"S": shift_range} if shift_range else None)


def pure_op_row(spec: OpSpec, sess: ort.InferenceSession, sizes: dict[str, int], seed: int = 0) -> Row:
    """One op at the given sizes: random inputs at B=1 and B=64 plus every edge case (at B=3)."""
    cases: list[tuple[str, dict[str, np.ndarray]]] = []
    for b in (1, 64):
        cases.append((f"B={b}", random_inputs(spec, np.random.default_rng(seed + b), {**sizes, "B": b})))
    edges = edge_cases(spec, {**sizes, "B": 3})
    cases += list(edges.items())
    result: Row | None = None
    for label, arrays in cases:
        r = row(f"op: {spec.name}", sess.run(None, spec.feeds(arrays))[0], spec.call_torch(arrays), OP_TOLERANCE)
        if not r.passed:
            r.note = f"fails on {label}"
        result = r if result is None else result.merge(r)
    assert result is not None
    if result.passed:
        result.note = f"B=1,64 random + {len(edges)} edge cases"
    return result


def controller_row(model: NTM, sess: ort.InferenceSession, seed: int = 0) -> Row:
    c = model.config
    result: Row | None = None
    for b in (1, 64):
        rng = np.random.default_rng(seed + b)
        x = rng.normal(size=(b, c.features + c.read_heads * c.memory_width)).astype(np.float32)
        h, cell = (rng.normal(size=(b, c.controller_size)).astype(np.float32) for _ in range(2))
        with torch.no_grad():
            expected = model.controller(torch.from_numpy(x), torch.from_numpy(h), torch.from_numpy(cell))
        actual = sess.run(None, {"x": x, "h": h, "c": cell})
        for a, e in zip(actual, expected, strict=True):
            r = row(f"op: controller ({c.controller})", a, e.numpy(), OP_TOLERANCE, "B=1,64 random")
            result = r if result is None else result.merge(r)
    assert result is not None
    return result


def step_row(model: NTM, step: ort.InferenceSession, seed: int = 0, warmup: int = 20, activation: str = "sigmoid"
             ) -> Row:
    """The whole step graph vs `NTM.step`, one step from a state reached by `warmup` steps of random bits."""
    c = model.config
    exact_model = copy.deepcopy(model).double()
    result: Row | None = None
    for b in (1, 64):
        rng = np.random.default_rng(seed + b)
        with torch.no_grad():
            state = {n: t.detach().numpy().copy() for n, t in zip(STATE_NAMES, model.initial_state(b), strict=True)}
        for _ in range(warmup):
            _, state = torch_step(model, (rng.random((b, c.input_size)) < 0.5).astype(np.float32), state, activation)
        x = rng.normal(size=(b, c.input_size)).astype(np.float32)
        p_torch, s_torch = torch_step(model, x, state, activation)
        p_exact, s_exact = torch_step(exact_model, x.astype(np.float64),
                                      {n: v.astype(np.float64) for n, v in state.items()}, activation)
        p_onnx, s_onnx = onnx_step(step, x, state)
        for name in ("output", *STATE_NAMES):
            a, e, x64 = (p_onnx, p_torch, p_exact) if name == "output" else (s_onnx[name], s_torch[name],
                                                                               s_exact[name])
            r = row("op: whole step", a, e, OP_TOLERANCE, f"B=1,64, all {len(STEP_INPUTS)} outputs", x64)
            result = r if result is None else result.merge(r)
    assert result is not None
    return result


def op_rows(model: NTM, step: ort.InferenceSession, provider: str, seed: int = 0, activation: str = "sigmoid",
            memory_rows: Iterable[int] = ()) -> list[Row]:
    """Every op of the step at this model's sizes (M, S, R and W; N the trained one and each of `memory_rows`),
    then the controller and whole step."""
    c = model.config
    rows = []
    sizes_n = sorted({c.memory_rows, *memory_rows})
    for name, spec in PURE_OPS.items():
        sess = session(pure_op_graph(name, c.shift_range), provider)
        heads = sorted({c.read_heads, c.write_heads})
        result = None
        for h, n in itertools.product(heads, sizes_n):
            sizes = {"H": h, "N": n, "M": c.memory_width, "S": c.shift_range}
            r = pure_op_row(spec, sess, sizes, seed)
            result = r if result is None else result.merge(r)
        assert result is not None
        if len(sizes_n) > 1 and result.passed:
            result.note += f", N={','.join(map(str, sizes_n))}"
        rows.append(result)
    rows.append(controller_row(model, session(export_controller(model), provider), seed))
    rows.append(step_row(model, step, seed, activation=activation))
    return rows


# -------------------------------------------------------------------------------------------- CLI


def check_folder(folder: Path, provider: str, steps: int, batch: int, ops: bool = True,
                 memory_rows: Iterable[int] = (), episode_steps: int = EPISODE_STEPS) -> tuple[list[Row], Checkpoint]:
    """All parity rows for a shipped model folder (its ONNX files against its checkpoint): at the trained N, then
    at each of `memory_rows` within the model's range (the ops, and `episode_steps` steps of the whole model)."""
    ckpt = load_checkpoint(folder)
    paths = {name: folder / file for name, file in GRAPH_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing ONNX files {missing}: run `python -m ntm_serve.export {folder}`")
    for path in paths.values():
        recorded = read_metadata(onnx.load(str(path), load_external_data=False)).get(META_CHECKPOINT)
        if recorded != ckpt.sha256:
            raise ValueError(f"{path} was exported from checkpoint {recorded}, but {folder}/checkpoint.pt is "
                             f"{ckpt.sha256}: re-export with `python -m ntm_serve.export {folder}`")
    sess = sessions({name: str(p) for name, p in paths.items()}, provider)
    low, high = ckpt.model.config.rows_range
    other = [n for n in memory_rows if low <= n <= high and n != ckpt.model.config.memory_rows]
    rows = op_rows(ckpt.model, sess.step, provider, activation=ckpt.output_activation, memory_rows=other) if ops else []
    rows += model_rows(ckpt.model, sess, ckpt.task, steps, batch, activation=ckpt.output_activation)
    rows += exact_path_rows(ckpt.model, sess, ckpt.task, steps, batch, activation=ckpt.output_activation)
    rows += rows_rows(ckpt.model, sess, ckpt.task, other, episode_steps, batch, activation=ckpt.output_activation)
    return rows, ckpt


def main(argv: list[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the module docstring's first paragraph
    parser = argparse.ArgumentParser(prog="python -m ntm_serve.export.parity", description=summary)
    parser.add_argument("folder", type=Path, metavar="FOLDER")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=1000, help="whole-model steps (default 1000)")
    parser.add_argument("--batch", type=int, default=2, help="whole-model batch size (default 2)")
    parser.add_argument("--no-ops", action="store_true", help="skip the op-by-op rows (no op exports)")
    parser.add_argument("--memory-rows", default=",".join(map(str, OTHER_ROWS)), metavar="N[,N...]",
                        help="other memory sizes to check (the ops, and one episode of the whole model each; sizes "
                             f"outside the model's range are skipped; '' for none; default {OTHER_ROWS})")
    parser.add_argument("--episode-steps", type=int, default=EPISODE_STEPS,
                        help=f"whole-model steps at each other memory size (default {EPISODE_STEPS})")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.episode_steps < 1:
        parser.error("--steps, --batch and --episode-steps must be >= 1")
    try:
        memory_rows = [int(n) for n in args.memory_rows.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--memory-rows takes whole numbers separated by commas, got {args.memory_rows!r}")
    torch.set_num_threads(1)  # the torch reference: one thread is faster for these tiny ops than contended many
    try:
        rows, ckpt = check_folder(args.folder, args.provider, args.steps, args.batch, ops=not args.no_ops,
                                  memory_rows=memory_rows, episode_steps=args.episode_steps)
    except (ProviderUnavailable, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"## Parity: {args.folder} (task {ckpt.task}, checkpoint {ckpt.sha256[:12]}, "
          f"provider {args.provider}, onnxruntime {ort.__version__})\n")
    print(markdown(rows))
    failed = [r.check for r in rows if not r.passed]
    floor = [r.check for r in rows if r.passed and not r.strict]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks pass"
          + (f" ({len(floor)} only within the float32 floor: {', '.join(floor)})" if floor else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
