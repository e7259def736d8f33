"""Python client of the NTM service (numpy in, numpy out) and the command-line demo.

    with NTMClient("localhost:50051") as client:
        session = client.create_session("copy")
        out = client.step(session.session_id, inputs)  # inputs (T, I) -> out.outputs (T, O)

Over TLS, with a bearer token (and a client certificate, for mutual TLS):

    NTMClient("ntm.example:50051", token="...", tls_ca="ca.pem", tls_cert="client.pem", tls_key="client.key")

Demo: `python -m service.client copy --length 12 [--plot out.png]` runs one example of a task through
the server and prints inputs, targets and outputs as bit rows side by side, with the bit-error count.
`python -m service.client one_shot [--plot out.png] [--later-s 60]`: a session learns held-out classes from one
episode, then recognises new samples of them from a new stream (service/one_shot_demo.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np

from service import tasks_np
from service.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from service.tensors import to_array, to_tensor
from service.tls import TLSConfigError, channel_credentials


class StepError(Exception):
    """A streamed request the server refused (its response carried `error`)."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    steps: int
    expires_at: datetime
    ttl_seconds: float
    state: SessionStateData | None = None


@dataclass(frozen=True)
class SessionStateData:
    """A session's complete state (ExportSession / ImportSession), per-session shapes."""

    model: str
    steps: int
    tensors: dict[str, np.ndarray]
    checkpoint_sha256: str = ""


@dataclass(frozen=True)
class StepOutput:
    session_id: str
    outputs: np.ndarray | None  # (T, O); None when the request was refused
    steps: int
    request_id: str = ""
    read_weights: np.ndarray | None = None  # (T, R, N) when asked
    write_weights: np.ndarray | None = None  # (T, W, N) when asked
    error: StepError | None = field(default=None)

    def check(self) -> StepOutput:
        """Raise the error this response carries, if any."""
        if self.error is not None:
            raise self.error
        return self


_CODES = {code.value[0]: code for code in grpc.StatusCode}
ONE_SHOT_TASKS = ("one_shot", "one_shot_synthetic")  # the demo in service/one_shot_demo.py


def _state_data(message: ntm_pb2.SessionState) -> SessionStateData:
    return SessionStateData(message.model, message.steps,
                            {name: to_array(t, name) for name, t in message.tensors.items()},
                            message.checkpoint_sha256)


def _state_message(state: SessionStateData) -> ntm_pb2.SessionState:
    message = ntm_pb2.SessionState(model=state.model, steps=state.steps, checkpoint_sha256=state.checkpoint_sha256)
    for name, array in state.tensors.items():
        message.tensors[name].CopyFrom(to_tensor(array))
    return message


def _session_info(message: ntm_pb2.Session) -> SessionInfo:
    state = _state_data(message.state) if message.HasField("state") else None
    return SessionInfo(message.session_id, message.model, message.steps, message.expires_at.ToDatetime(tzinfo=UTC),
                       message.ttl_seconds, state)


def _step_output(response: ntm_pb2.StepResponse) -> StepOutput:
    if response.HasField("error") and response.error.code != 0:
        code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
        error = StepError(code, response.error.message, response.request_id)
        return StepOutput(response.session_id, None, response.steps, response.request_id, error=error)
    attention = response.HasField("attention")
    return StepOutput(
        response.session_id, to_array(response.outputs, "outputs"), response.steps, response.request_id,
        to_array(response.attention.read_weights, "read_weights") if attention else None,
        to_array(response.attention.write_weights, "write_weights") if attention else None,
    )


def step_request(session_id: str, inputs: np.ndarray, return_attention: bool = False,
                 request_id: str = "", expect_steps: int | None = None) -> ntm_pb2.StepRequest:
    """`expect_steps`: apply only if the session stands at exactly this many steps (safe retries; see the proto)."""
    return ntm_pb2.StepRequest(session_id=session_id, inputs=to_tensor(np.atleast_2d(inputs)),
                               return_attention=return_attention, request_id=request_id, expect_steps=expect_steps)


Pem = str | Path | bytes


class NTMClient:
    """`tls=True` (or any `tls_*`) speaks TLS, trusting `tls_ca` (default: the system's roots); `tls_cert` and
    `tls_key` present a client certificate (mutual TLS); `tls_server_name` overrides the name checked in the
    server's certificate. `token` is sent as `authorization: Bearer <token>` on every call."""

    def __init__(self, target: str = "localhost:50051", *, token: str | None = None, timeout: float | None = None,
                 max_message_bytes: int = 4 * 1024 * 1024, channel: grpc.Channel | None = None,
                 tls: bool = False, tls_ca: Pem | None = None, tls_cert: Pem | None = None,
                 tls_key: Pem | None = None, tls_server_name: str | None = None) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if channel is not None:
            self.channel = channel
        elif tls or tls_ca is not None or tls_cert is not None:
            self.channel = grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = ntm_pb2_grpc.NTMStub(self.channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> NTMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: object) -> object:
        return getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)

    def list_models(self) -> list[ntm_pb2.ModelInfo]:
        return list(self._call("ListModels", ntm_pb2.ListModelsRequest()).models)  # type: ignore[attr-defined]

    def create_session(self, model: str, ttl_seconds: float = 0.0) -> SessionInfo:
        return _session_info(self._call("CreateSession", ntm_pb2.CreateSessionRequest(model=model,
                                                                                    ttl_seconds=ttl_seconds)))

    def get_session(self, session_id: str, include_state: bool = False) -> SessionInfo:
        request = ntm_pb2.GetSessionRequest(session_id=session_id, include_state=include_state)
        return _session_info(self._call("GetSession", request))

    def delete_session(self, session_id: str) -> None:
        self._call("DeleteSession", ntm_pb2.DeleteSessionRequest(session_id=session_id))

    def step(self, session_id: str, inputs: np.ndarray, return_attention: bool = False,
             request_id: str = "", expect_steps: int | None = None) -> StepOutput:
        """Apply inputs (T, I) (or one step (I,)) to a session; raises grpc.RpcError when refused. With
        `expect_steps`, only if the session stands at that many steps (FAILED_PRECONDITION otherwise)."""
        response = self._call("Step", step_request(session_id, inputs, return_attention, request_id, expect_steps))
        return _step_output(response)  # type: ignore[arg-type]

    def stream(self, requests: Iterable[ntm_pb2.StepRequest]) -> Iterator[StepOutput]:
        """One bidirectional stream: requests may name any sessions; refused ones come back with `.error`."""
        for response in self.stub.StreamSteps(iter(requests), timeout=self.timeout, metadata=self.metadata):
            yield _step_output(response)

    def stream_session(self, session_id: str, chunks: Iterable[np.ndarray],
                       return_attention: bool = False) -> Iterator[StepOutput]:
        """Stream chunks (T_i, I) of one session; raises StepError on the first refused chunk."""
        requests = (step_request(session_id, c, return_attention, str(i)) for i, c in enumerate(chunks))
        for output in self.stream(requests):
            yield output.check()

    def export_session(self, session_id: str) -> SessionStateData:
        return _state_data(self._call("ExportSession", ntm_pb2.ExportSessionRequest(session_id=session_id)))

    def import_session(self, state: SessionStateData, ttl_seconds: float = 0.0) -> SessionInfo:
        request = ntm_pb2.ImportSessionRequest(state=_state_message(state), ttl_seconds=ttl_seconds)
        return _session_info(self._call("ImportSession", request))


# --- the demo ---------------------------------------------------------------------------------------------


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
    p = argparse.ArgumentParser(prog="python -m service.client", description="Run one task example through "
                                "the NTM server and show inputs, targets and outputs.")
    p.add_argument("task", choices=sorted([*tasks_np.TASKS, *ONE_SHOT_TASKS]))
    p.add_argument("--target", default=os.environ.get("NTM_TARGET", "localhost:50051"), help="server host:port")
    p.add_argument("--model", help="model name (default: the task name)")
    p.add_argument("--length", type=int, help="copy / repeat_copy: sequence length L")
    p.add_argument("--repeats", type=int, help="repeat_copy: repeat count R")
    p.add_argument("--items", type=int, help="associative_recall: item count K")
    p.add_argument("--seed", type=int, default=0)
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
    from service.one_shot_demo import add_arguments

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
            session = client.create_session(model, ttl_seconds=60)
            out = client.step(session.session_id, example.inputs, return_attention=True)
            final = client.get_session(session.session_id, include_state=True).state if args.plot else None
            client.delete_session(session.session_id)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    table, errors = render(example, out.outputs)  # type: ignore[arg-type]
    described = ", ".join(f"{k}={v}" for k, v in example.params.items())
    print(f"task {args.task} ({described}): {len(example.inputs)} steps through model {model!r} at {args.target}")
    print(table)
    print(f"bit errors: {errors} of {example.targets.size}")
    if args.plot:
        from training.plots import attention_figure  # matplotlib only (no torch); the [train] extra

        memory = final.tensors["memory"] if final else None
        attention_figure(example.inputs, example.targets, out.outputs, out.read_weights, out.write_weights,  # type: ignore[arg-type]
                         memory, args.plot, f"{args.task} via the NTM service ({errors} bit errors)")
        print(f"wrote {args.plot}")
    return 0


def _one_shot(args: argparse.Namespace) -> int:
    from service.one_shot_demo import run

    try:
        with NTMClient(args.target, token=args.token, timeout=30, tls=args.tls, tls_ca=args.tls_ca,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, tls_server_name=args.tls_server_name) as client:
            return run(client, args.model or args.task, args.task, args.seed, args.later_s, args.later_samples,
                       args.plot)
    except (TLSConfigError, grpc.RpcError, StepError) as err:
        detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else str(err)  # type: ignore[attr-defined]
        print(f"error: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
