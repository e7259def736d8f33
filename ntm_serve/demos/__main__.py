"""The command-line demo: one task example (or a one-shot episode) through a running server.

`ntm-demo copy --length 12 [--plot out.png]` (= `python -m ntm_serve.demos`) runs one example of a task through
the server and prints inputs, targets and outputs as bit rows side by side, with the bit-error count.
`ntm-demo one_shot [--plot out.png] [--later-s 60]`: a session learns held-out classes from one episode, then
recognises new samples of them from a new stream (ntm_serve/demos/one_shot.py). `--plot` needs the [demo] extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from ntm_serve.api.tls import TLSConfigError
from ntm_serve.client.sdk import NTMClient, SessionInfo, StepError, StepOutput
from ntm_serve.demos import tasks_np
from ntm_serve.demos.one_shot import add_arguments
from ntm_serve.demos.one_shot import run as run_one_shot

ONE_SHOT_TASKS = ("one_shot", "one_shot_synthetic", "one_shot_glyphs", "one_shot_glyphs15")  # demos/one_shot.py


def _cell(value: float) -> str:
    return str(int(value)) if value in (0.0, 1.0) else f"[{value:+.2f}]"


def bit_row(row: np.ndarray) -> str:
    return "".join(_cell(float(v)) for v in row)


def render(example: tasks_np.Example, outputs: np.ndarray) -> tuple[str, int]:
    """Inputs, targets and thresholded outputs per time step, side by side; and the bit errors."""
    steps, out_steps = len(example.inputs), len(example.targets)
    first = steps - out_steps
    predicted = (outputs > 0.5).astype(np.float32)  # (T, O)
    wrong = np.abs(predicted[first:] - example.targets)  # (T_out, O)
    in_width = max(len(bit_row(r)) for r in example.inputs)
    out_width = example.targets.shape[1]
    lines = [f"{'t':>4}  {'input':<{in_width}}  {'target':<{out_width}}  {'output':<{out_width}}  errors"]
    for t in range(steps):
        target = bit_row(example.targets[t - first]) if t >= first else ""
        output = bit_row(predicted[t]) if t >= first else "·" * out_width
        errors = int(wrong[t - first].sum()) if t >= first else 0
        mark = f"  {errors}" if errors else ""
        row = bit_row(example.inputs[t])
        lines.append(f"{t:>4}  {row:<{in_width}}  {target:<{out_width}}  {output:<{out_width}}{mark}")
    return "\n".join(lines), int(wrong.sum())


def demo_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ntm-demo", description="Run one task example through "
                                "the NTM server and show inputs, targets and outputs.")
    p.add_argument("task", choices=sorted([*tasks_np.TASKS, *ONE_SHOT_TASKS]),
                   help="the task to run one example of (the served model of the same name unless --model)")
    p.add_argument("--target", default=os.environ.get("NTM_TARGET", "localhost:50051"), help="server host:port")
    p.add_argument("--model", help="model name (default: the task name)")
    p.add_argument("--length", type=int, help="copy / repeat_copy: sequence length L")
    p.add_argument("--repeats", type=int, help="repeat_copy: repeat count R")
    p.add_argument("--items", type=int, help="associative_recall: item count K")
    p.add_argument("--seed", type=int, default=0, help="random seed of the example (default 0)")
    p.add_argument("--memory-rows", type=int, default=0, metavar="N",
                   help="the session's memory size N (default 0: the model's trained N; ListModels gives "
                        "its range): e.g. copy --length 400 --memory-rows 1024, longer than the trained N holds")
    p.add_argument("--token", default=os.environ.get("NTM_TOKEN"), help="bearer token (env NTM_TOKEN)")
    p.add_argument("--tls", action="store_true", default=bool(os.environ.get("NTM_CLIENT_TLS")),
                   help="speak TLS (implied by --tls-ca/--tls-cert; env NTM_CLIENT_TLS)")
    p.add_argument("--tls-ca", default=os.environ.get("NTM_CLIENT_TLS_CA"),
                   help="PEM CA that signed the server's certificate (default: system roots; env NTM_CLIENT_TLS_CA)")
    p.add_argument("--tls-cert", default=os.environ.get("NTM_CLIENT_TLS_CERT"),
                   help="PEM client certificate, for mutual TLS (env NTM_CLIENT_TLS_CERT)")
    p.add_argument("--tls-key", default=os.environ.get("NTM_CLIENT_TLS_KEY"),
                   help="PEM key of --tls-cert (env NTM_CLIENT_TLS_KEY)")
    p.add_argument("--tls-server-name", help="name to check in the server's certificate instead of the host")
    p.add_argument("--plot", type=Path, help="write a PNG of inputs, outputs, attention and memory")
    add_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = demo_args(argv)
    if args.task in ONE_SHOT_TASKS:
        return _one_shot(args)
    params = {k: v for k, v in (("length", args.length), ("repeats", args.repeats), ("items", args.items))
              if v is not None}
    try:
        example = tasks_np.TASKS[args.task](np.random.default_rng(args.seed), **params)
    except TypeError:
        print(f"error: task {args.task} takes none of {sorted(params)}", file=sys.stderr)
        return 2
    model = args.model or args.task
    try:
        client = NTMClient(args.target, token=args.token, timeout=30, tls=args.tls, tls_ca=args.tls_ca,
                           tls_cert=args.tls_cert, tls_key=args.tls_key, tls_server_name=args.tls_server_name)
    except TLSConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with client:
        try:
            session = client.create_session(model, ttl_seconds=60, memory_rows=args.memory_rows)
            values = _answer_values(client, model, session) if args.plot else 0
            out = _run(client, session.session_id, example.inputs, bool(args.plot), values)
            final = client.get_session(session.session_id, include_state=True).state if args.plot else None
            client.delete_session(session.session_id)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    table, errors = render(example, out.outputs)  # type: ignore[arg-type]
    described = ", ".join(f"{k}={v}" for k, v in example.params.items())
    print(f"task {args.task} ({described}): {len(example.inputs)} steps through model {model!r} at {args.target}, "
          f"memory of {session.memory_rows} rows")
    print(table)
    print(f"bit errors: {errors} of {example.targets.size}")
    if args.plot:
        from ntm_serve.plots import attention_figure, used_rows  # matplotlib only (no torch); the [demo] extra

        memory = final.tensors["memory"] if final else None
        heads = [w for w in (out.read_weights, out.write_weights) if w is not None]  # (T, R|W, N) each
        rows = used_rows(np.concatenate(heads, axis=1)) if heads else None  # the heads' path, not all N rows
        attention_figure(example.inputs, example.targets, out.outputs, out.read_weights, out.write_weights,  # type: ignore[arg-type]
                         memory, args.plot, f"{args.task} via the NTM service ({errors} bit errors)", rows)
        print(f"wrote {args.plot}")
    return 0


STEP_LIMIT = 1000  # the server's default --max-steps: longer examples go in several requests
ANSWER_BYTES = 3 << 20  # an answer with the heads' weightings stays under the default --max-message-bytes (4 MiB)


def _answer_values(client: NTMClient, model: str, session: SessionInfo) -> int:
    """Floats per step of an answer with the heads' weightings: O + R N + W N at the session's N (0: unknown)."""
    info = next((m for m in client.list_models() if m.name == model and m.version == session.version), None)
    return info.output_size + (info.read_heads + info.write_heads) * session.memory_rows if info else 0


def _run(client: NTMClient, session_id: str, inputs: np.ndarray, attention: bool, values: int) -> StepOutput:
    """Every step of `inputs` (T, I), in requests of at most STEP_LIMIT steps; with the heads' weightings, of few
    enough that each answer fits a message (`values` a step: O + R N + W N floats). One StepOutput of them all."""
    chunk = max(1, min(STEP_LIMIT, ANSWER_BYTES // (4 * values))) if attention and values else STEP_LIMIT
    parts = [client.step(session_id, inputs[t:t + chunk], return_attention=attention)
             for t in range(0, len(inputs), chunk)]
    if len(parts) == 1:
        return parts[0]
    joined = {name: np.concatenate([getattr(p, name) for p in parts]) if attention or name == "outputs" else None
              for name in ("outputs", "read_weights", "write_weights")}
    return StepOutput(session_id, joined["outputs"], parts[-1].steps, read_weights=joined["read_weights"],
                      write_weights=joined["write_weights"])


def _one_shot(args: argparse.Namespace) -> int:
    try:
        with NTMClient(args.target, token=args.token, timeout=30, tls=args.tls, tls_ca=args.tls_ca,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, tls_server_name=args.tls_server_name) as client:
            return run_one_shot(client, args.model or args.task, args.task, args.seed, args.later_s, args.later_samples,
                       args.plot)
    except (TLSConfigError, grpc.RpcError, StepError) as err:
        detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else str(err)  # type: ignore[attr-defined]
        print(f"error: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
