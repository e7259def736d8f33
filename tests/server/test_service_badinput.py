"""Bad input, beyond tests/test_service_errors.py: messages that do not parse, oversized messages, garbage in a
stream after good steps, every malformed state tensor on import, over-long ids, expired sessions on every RPC;
and three property-based fuzz tests (hypothesis) that throw arbitrary StepRequest, PackedStepRequest and
SessionState values at a live server: it never fails with UNKNOWN or INTERNAL, refused requests change nothing,
accepted ones are exact, and a bystander session's outputs stay bit for bit right."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from helpers import Offline, bits, service_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tensors import WEIGHTING_SUM_TOLERANCE, WEIGHTINGS, to_tensor
from ntm_serve.client.sdk import NTMClient, SessionStateData, packed_request, step_request
from ntm_serve.contract import STATE_NAMES
from ntm_serve.server.server import ServerThread

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
GARBAGE = b"\xff\xff\xff\xff not a protobuf"
UNARY = {"ListModels": ntm_pb2.ListModelsResponse, "CreateSession": ntm_pb2.Session, "GetSession": ntm_pb2.Session,
         "DeleteSession": ntm_pb2.DeleteSessionResponse, "Step": ntm_pb2.StepResponse,
         "ExportSession": ntm_pb2.SessionState, "ImportSession": ntm_pb2.Session}
REQUEST_TYPES = {"ListModels": "ListModelsRequest", "CreateSession": "CreateSessionRequest",
                 "GetSession": "GetSessionRequest", "DeleteSession": "DeleteSessionRequest", "Step": "StepRequest",
                 "ExportSession": "ExportSessionRequest", "ImportSession": "ImportSessionRequest"}


def _raw_unary(channel: grpc.Channel, method: str) -> Callable[..., object]:
    """A call that sends bytes as they are (no serializer)."""
    return channel.unary_unary(f"/ntm.v1.NTM/{method}", request_serializer=None,
                               response_deserializer=UNARY[method].FromString)


def _raw_stream(channel: grpc.Channel) -> Callable[..., object]:
    return channel.stream_stream("/ntm.v1.NTM/StreamSteps", request_serializer=None,
                                 response_deserializer=ntm_pb2.StepResponse.FromString)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _settled_steps(client: NTMClient, session_id: str, quiet_s: float = 0.3, limit_s: float = 30) -> int:
    """The session's step count once it stops changing (requests accepted before a failure still finish)."""
    deadline = time.monotonic() + limit_s
    last = client.get_session(session_id).steps
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = client.get_session(session_id).steps
        if now == last:
            return now
        last = now
    raise AssertionError("the session never settled")


# --- messages that do not parse -------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(UNARY))
def test_a_message_that_does_not_parse_is_invalid_argument(server: ServerThread, method: str) -> None:
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as err:
        _raw_unary(channel, method)(GARBAGE, timeout=30)
    assert err.value.code() == INVALID
    assert f"not a valid ntm.v1.{REQUEST_TYPES[method]} message" in err.value.details()


def test_garbage_in_a_stream_after_good_steps(server: ServerThread, client: NTMClient, offline: Offline,
                                              rng: np.random.Generator) -> None:
    """Good steps, then bytes that are no message, a refused request and an unknown session: each gets its error
    response and the stream goes on; the good steps before and after are exact."""
    session = client.create_session("copy").session_id
    inputs = bits(rng, 10)
    good = [step_request(session, inputs[i:i + 2], request_id=f"good{i}").SerializeToString() for i in range(0, 10, 2)]
    bad_width = step_request(session, np.zeros((1, 8), np.float32), request_id="width").SerializeToString()
    unknown = step_request("no-such-session", inputs[:1], request_id="unknown").SerializeToString()
    sent = [*good[:3], GARBAGE, bad_width, GARBAGE + GARBAGE, unknown, *good[3:]]
    with grpc.insecure_channel(server.target) as channel:
        responses = list(_raw_stream(channel)(iter(sent), timeout=60))
    assert len(responses) == len(sent)
    errors = [r.error for r in responses if r.error.code]
    assert len(errors) == 4
    garbage = [e for e in errors if "not a valid ntm.v1.StepRequest message" in e.message]
    assert len(garbage) == 2 and all(e.code == INVALID.value[0] for e in garbage)
    assert next(r for r in responses if r.request_id == "width").error.message.startswith("inputs must have width 9")
    assert next(r for r in responses if r.request_id == "unknown").error.code == NOT_FOUND.value[0]
    ok = [r for r in responses if not r.error.code]
    assert [r.request_id for r in ok] == [f"good{i}" for i in range(0, 10, 2)]
    got = np.concatenate([np.asarray(r.outputs.values, np.float32).reshape(2, 8) for r in ok])
    np.testing.assert_array_equal(got, offline.run(inputs)["outputs"])
    assert client.get_session(session).steps == 10
    client.delete_session(session)


def test_overlong_ids_and_step_counts_are_refused(client: NTMClient, offline: Offline,
                                                  rng: np.random.Generator) -> None:
    session = client.create_session("copy").session_id
    with pytest.raises(grpc.RpcError) as err:
        client.step(session, bits(rng, 1), request_id="r" * 257)
    assert err.value.code() == INVALID and "request_id has 257 characters" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.get_session("s" * 5000)
    assert err.value.code() == INVALID and "session_id has 5000 characters" in err.value.details()
    state = client.export_session(session)
    with pytest.raises(grpc.RpcError) as err:
        client.import_session(SessionStateData(state.model, 2**62 + 1, state.tensors, state.checkpoint_sha256))
    assert err.value.code() == INVALID and "steps must be >= 0 and <= 2**62" in err.value.details()
    assert client.get_session(session).steps == 0
    client.delete_session(session)


# --- oversized messages ---------------------------------------------------------------------------------


def test_oversized_messages(copy_dir: Path, offline: Offline, rng: np.random.Generator) -> None:
    """Over --max-message-bytes: a unary call or an import gets RESOURCE_EXHAUSTED and changes nothing; in a stream
    (after good steps) it ends the stream, and the steps already accepted are applied whole."""
    config = service_config(copy_dir, max_steps=3000, max_message_bytes=64 * 1024)
    inputs = bits(rng, 40)
    with ServerThread(config) as server, NTMClient(server.target, max_message_bytes=1 << 22, timeout=60) as client:
        session = client.create_session("copy").session_id
        client.step(session, inputs[:4])
        state = client.export_session(session)
        huge = SessionStateData(state.model, state.steps, {**state.tensors, "memory": np.zeros((128, 200), np.float32)},
                                state.checkpoint_sha256)
        live = server.server.registry.count()
        with pytest.raises(grpc.RpcError) as err:
            client.import_session(huge)  # 100 kB
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.server.registry.count() == live
        with pytest.raises(grpc.RpcError) as err:
            client.step(session, bits(rng, 2500))  # 90 kB
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        _same(client.export_session(session).tensors, state.tensors)

        requests = [step_request(session, inputs[t:t + 6]) for t in range(4, 34, 6)]
        requests.append(step_request(session, bits(rng, 2500)))
        with pytest.raises(grpc.RpcError) as err:
            list(client.stream(requests))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        steps = _settled_steps(client, session)
        assert steps in range(4, 35, 6), steps  # whole requests only
        _same(client.export_session(session).tensors, offline.run(inputs[:steps])["state"])
        rest = client.step(session, inputs[steps:]).outputs  # and the session goes on
    np.testing.assert_array_equal(rest, offline.run(inputs)["outputs"][steps:])


def test_a_request_whose_answer_would_be_too_large_is_refused_before_it_runs(copy_dir: Path, offline: Offline,
                                                                             rng: np.random.Generator) -> None:
    """A request that fits --max-message-bytes but whose answer would not (attention is 264 values a step for the
    copy model) is refused with INVALID_ARGUMENT before anything runs: no step applied, the stream goes on. Before,
    it ran, and gRPC then ended the call (RESOURCE_EXHAUSTED "Sent message larger than max") with the steps applied
    and the answer lost. The bound is tight: with attention, 62 steps would not fit (4 x 62 x 264 bytes of values
    and ~130 of the rest: 65,602 > 65,536) and are refused; 61 fit and are answered."""
    config = service_config(copy_dir, max_steps=3000, max_message_bytes=64 * 1024)
    inputs = bits(rng, 200)
    with ServerThread(config) as server, NTMClient(server.target, max_message_bytes=1 << 22, timeout=60) as client:
        session, other = (client.create_session("copy").session_id for _ in range(2))
        with pytest.raises(grpc.RpcError) as err:
            client.step(session, inputs[:62], return_attention=True)
        assert err.value.code() == INVALID and "the answer could take" in err.value.details()
        assert "--max-message-bytes" in err.value.details() and client.get_session(session).steps == 0
        edge = client.step(session, inputs[:61], return_attention=True)  # the longest it admits: answered
        assert edge.read_weights is not None and edge.read_weights.shape == (61, 1, 128)
        answers = list(client.stream([step_request(session, inputs[61:63]),
                                      step_request(session, inputs[63:140], return_attention=True),
                                      step_request(session, inputs[63:120])]))
        assert [a.error.code if a.error else None for a in answers] == [None, INVALID, None]
        packed = packed_request([session, other], np.stack([inputs[120:160], inputs[:40]]), return_attention=True)
        (refused,) = list(client.stream_packed([packed]))
        assert refused.error is not None and refused.error.code == INVALID and not refused.error.entries
        assert "or sessions per message" in refused.error.message
        assert [client.get_session(s).steps for s in (session, other)] == [120, 0]
        rest = client.step(session, inputs[120:]).outputs
    np.testing.assert_array_equal(np.concatenate([edge.outputs, answers[0].outputs, answers[2].outputs, rest]),
                                  offline.run(inputs)["outputs"])


# --- malformed states -----------------------------------------------------------------------------------


def test_every_malformed_state_tensor_is_refused(client: NTMClient, server: ServerThread,
                                                 rng: np.random.Generator) -> None:
    session = client.create_session("copy").session_id
    client.step(session, bits(rng, 5))
    good = client.export_session(session)
    live = server.server.registry.count()
    for name in STATE_NAMES:
        value = good.tensors[name]
        nan, inf = value.copy(), value.copy()
        nan.flat[-1], inf.flat[0] = np.nan, -np.inf
        cases = [
            (to_tensor(value[None]), f"state tensor {name} must have shape"),  # an extra (batch) dimension
            (to_tensor(value.ravel() if value.ndim > 1 else value.reshape(value.size // 4, 4)),  # another rank
             f"state tensor {name} must have shape"),
            (to_tensor(np.zeros((*value.shape[:-1], value.shape[-1] + 1), np.float32)), "must have shape"),
            (ntm_pb2.Tensor(shape=value.shape, values=value.ravel()[:-1]), f"state tensor {name}: shape"),
            (ntm_pb2.Tensor(shape=[-1, *value.shape[1:]], values=[]), f"state tensor {name}: negative dimension"),
            (to_tensor(nan), f"state tensor {name}: values must be finite"),
            (to_tensor(inf), f"state tensor {name}: values must be finite"),
        ]
        for tensor, words in cases:
            message = ntm_pb2.SessionState(model="copy", steps=5, checkpoint_sha256=good.checkpoint_sha256)
            for other, array in good.tensors.items():
                message.tensors[other].CopyFrom(tensor if other == name else to_tensor(array))
            with pytest.raises(grpc.RpcError) as err:
                client.stub.ImportSession(ntm_pb2.ImportSessionRequest(state=message), timeout=30)
            assert err.value.code() == INVALID and words in err.value.details(), (name, err.value.details())
    assert server.server.registry.count() == live
    client.delete_session(session)


def test_a_state_from_another_model_is_refused(client: NTMClient, server: ServerThread) -> None:
    others = [m.name for m in client.list_models() if m.name != "copy"]
    if not others:
        pytest.skip("only the copy model is served here; test_service_errors checks foreign weights by checksum")
    session = client.create_session("copy").session_id
    state = client.export_session(session)
    live = server.server.registry.count()
    for other in others:
        with pytest.raises(grpc.RpcError) as err:
            client.import_session(SessionStateData(other, state.steps, state.tensors, state.checkpoint_sha256))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "other weights" in err.value.details()
    assert server.server.registry.count() == live
    client.delete_session(session)


def test_expired_sessions_say_so_on_every_rpc(copy_dir: Path, rng: np.random.Generator) -> None:
    with ServerThread(service_config(copy_dir, reap_interval_s=0.05)) as server, NTMClient(server.target) as client:
        session = client.create_session("copy", ttl_seconds=0.2).session_id
        time.sleep(0.6)
        calls = [lambda: client.step(session, bits(rng, 1)), lambda: client.get_session(session),
                 lambda: client.export_session(session), lambda: client.delete_session(session)]
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == NOT_FOUND and "expired (idle longer than its TTL)" in err.value.details()
        (out,) = client.stream([step_request(session, bits(rng, 1))])
        assert out.error is not None and out.error.code == NOT_FOUND and "expired" in out.error.message


# --- fuzzing a live server ------------------------------------------------------------------------------

ALLOWED = {grpc.StatusCode.OK, INVALID, NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
CODES = {code.value[0]: code for code in grpc.StatusCode}
ANY_FLOAT = st.floats(width=32)  # NaN and ±Inf included


def _dims(good: tuple[int, ...]) -> st.SearchStrategy[list[int]]:
    """Shapes around a good one: itself, one dimension off, another rank, absurd sizes."""
    off = st.lists(st.integers(-3, 12) | st.sampled_from([2**31, 2**40, -(2**62)]), max_size=4)
    return st.just(list(good)) | off


def _finite(shape: tuple[int, ...], seed: int) -> ntm_pb2.Tensor:
    """Values from numpy (hypothesis's buffer is too small for thousands of floats)."""
    return to_tensor(np.random.default_rng(seed).uniform(-4, 4, shape).astype(np.float32))


def _weighting(shape: tuple[int, ...], seed: int) -> ntm_pb2.Tensor:
    """A valid read/write weighting: each head's row a distribution (sharp or flat, zeros included)."""
    rng = np.random.default_rng(seed)
    x = np.exp(rng.uniform(0, 40) * rng.standard_normal(shape))
    return to_tensor((x / x.sum(-1, keepdims=True)).astype(np.float32))


def _state_tensor(name: str, shape: tuple[int, ...], seed: int) -> ntm_pb2.Tensor:
    return (_weighting if name in WEIGHTINGS else _finite)(shape, seed)


@st.composite
def tensors(draw: st.DrawFn, good: tuple[int, ...]) -> ntm_pb2.Tensor:
    """Anything near `good`: a shape around it, with values that fit it or any list of float32s."""
    shape = draw(_dims(good))
    size = math.prod(shape) if all(0 <= d <= 10_000 for d in shape) else -1
    if 0 <= size <= 4096 and draw(st.booleans()):
        return ntm_pb2.Tensor(shape=shape, values=_finite((size,), draw(st.integers(0, 2**32 - 1))).values)
    return ntm_pb2.Tensor(shape=shape, values=draw(st.lists(ANY_FLOAT, max_size=40)))


TENSOR_FAULTS = ("nan", "inf", "-inf", "extra dim", "fewer dims", "dim + 1", "dim - 1", "one value short",
                 "one value more", "negative dim", "no shape", "any tensor")


def _spoil(draw: st.DrawFn, good: tuple[int, ...], fault: str, name: str = "inputs") -> ntm_pb2.Tensor:
    """A tensor of shape `good` with exactly this one thing wrong ("any tensor": anything, maybe even right)."""
    tensor = _state_tensor(name, good, draw(st.integers(0, 2**32 - 1)))
    size, shape = len(tensor.values), list(good)
    if fault in ("nan", "inf", "-inf"):
        tensor.values[draw(st.integers(0, size - 1))] = float(fault)
    elif fault == "extra dim":
        tensor.shape.insert(draw(st.integers(0, len(shape))), 1)
    elif fault == "fewer dims":
        del tensor.shape[:]
        tensor.shape.extend([size] if len(shape) > 1 else [size // 4, 4])
    elif fault in ("dim + 1", "dim - 1"):
        tensor.shape[draw(st.integers(0, len(shape) - 1))] += 1 if fault == "dim + 1" else -1
        del tensor.values[:]
        tensor.values.extend(np.zeros(math.prod(tensor.shape), np.float32))
    elif fault == "one value short":
        del tensor.values[-1]
    elif fault == "one value more":
        tensor.values.append(0.5)
    elif fault == "negative dim":
        tensor.shape[0] = -tensor.shape[0]
    elif fault == "no shape":
        del tensor.shape[:]
    else:
        tensor = draw(tensors(good))
    return tensor


EXPECT_RIGHT, EXPECT_WRONG = -1, -2  # expect_steps markers, replaced by the session's count when sent
STEP_FAULTS = ("valid", "valid", "bytes", "wild", "other session", "long session_id", "long request_id", "no inputs",
               "expect right", "expect wrong", "expect negative",
               "T = 0", "T over the limit", *TENSOR_FAULTS)


@st.composite
def step_requests(draw: st.DrawFn, ids: list[str]) -> ntm_pb2.StepRequest | bytes:
    """A valid request for ids[0], one with exactly one thing wrong, anything at all, or raw bytes."""
    fault = draw(st.sampled_from(STEP_FAULTS))
    if fault == "bytes":
        return draw(st.binary(max_size=64))  # sometimes a message, mostly not
    steps = draw(st.integers(1, 3))
    request = ntm_pb2.StepRequest(session_id=ids[0], return_attention=draw(st.booleans()),
                                  request_id=draw(st.text(max_size=10)),
                                  inputs=_finite((steps, 9), draw(st.integers(0, 2**32 - 1))))
    if fault == "wild":
        request.session_id = draw(st.sampled_from(ids) | st.text(max_size=30))
        request.request_id = draw(st.text(max_size=10) | st.text(min_size=250, max_size=260))
        request.inputs.CopyFrom(draw(tensors((steps, 9))))
    elif fault == "other session":
        request.session_id = draw(st.sampled_from(ids[1:]))
    elif fault == "long session_id":
        request.session_id = draw(st.text(min_size=129, max_size=140))
    elif fault == "long request_id":
        request.request_id = draw(st.text(min_size=257, max_size=300))
    elif fault == "expect right":
        request.expect_steps = EXPECT_RIGHT
    elif fault == "expect wrong":
        request.expect_steps = EXPECT_WRONG
    elif fault == "expect negative":
        request.expect_steps = draw(st.integers(-(2**63), -1000))
    elif fault == "no inputs":
        request.ClearField("inputs")
    elif fault in ("T = 0", "T over the limit"):
        request.inputs.CopyFrom(_finite((0 if fault == "T = 0" else 1001, 9), 0))
    elif fault != "valid":
        request.inputs.CopyFrom(_spoil(draw, (steps, 9), fault))
    return request


def _valid_tensor(tensor: ntm_pb2.Tensor, shape: tuple[int, ...], weighting: bool = False) -> bool:
    if not (tuple(tensor.shape) == shape and len(tensor.values) == math.prod(shape) and
            bool(np.isfinite(np.asarray(tensor.values, np.float32)).all())):
        return False
    rows = np.asarray(tensor.values, np.float64).reshape(shape)
    return not weighting or bool((rows >= 0).all() and (np.abs(rows.sum(-1) - 1) <= WEIGHTING_SUM_TOLERANCE).all())


def expected_step_code(request: ntm_pb2.StepRequest, live: set[str], steps: int = 0) -> grpc.StatusCode:
    """What the server must answer, worked out independently of it (`steps`: where the session stands)."""
    if len(request.request_id) > 256 or not request.session_id or len(request.session_id) > 128:
        return INVALID
    if request.session_id not in live:
        return NOT_FOUND
    shape = tuple(request.inputs.shape)
    ok = request.HasField("inputs") and len(shape) == 2 and 1 <= shape[0] <= 1000 and \
        _valid_tensor(request.inputs, (shape[0], 9))
    if not ok or (request.HasField("expect_steps") and request.expect_steps < 0):
        return INVALID
    if request.HasField("expect_steps") and request.expect_steps != steps:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.OK


def _resolve(requests: list[ntm_pb2.StepRequest | bytes], target: str, live: set[str], steps: int,
             rng: np.random.Generator) -> list[grpc.StatusCode | None]:
    """Fill in the expect_steps markers with right or wrong counts for `target` (standing at `steps`, its requests
    applied in order) and say what each request must get (None for raw bytes)."""
    codes: list[grpc.StatusCode | None] = []
    for request in requests:
        if isinstance(request, bytes):
            codes.append(None)
            continue
        if request.HasField("expect_steps") and request.expect_steps in (EXPECT_RIGHT, EXPECT_WRONG):
            wrong = int(rng.integers(1, 5)) * (1 if steps < 4 or rng.random() < 0.5 else -1)
            request.expect_steps = steps + (wrong if request.expect_steps == EXPECT_WRONG else 0)
        code = expected_step_code(request, live, steps)
        if code == grpc.StatusCode.OK and request.session_id == target:
            steps += request.inputs.shape[0]
        codes.append(code)
    return codes


def expected_import_code(request: ntm_pb2.ImportSessionRequest, shapes: dict[str, tuple[int, ...]],
                         checkpoint: str) -> grpc.StatusCode:
    state = request.state
    if not state.model:
        return INVALID
    if state.model != "copy":
        return NOT_FOUND
    if state.checkpoint_sha256 not in ("", checkpoint):
        return grpc.StatusCode.FAILED_PRECONDITION
    if not 0 <= state.steps <= 2**62 or set(state.tensors) != set(shapes) or \
            not all(_valid_tensor(state.tensors[name], shape, name in WEIGHTINGS) for name, shape in shapes.items()):
        return INVALID
    ttl = request.ttl_seconds
    return INVALID if math.isnan(ttl) or ttl < 0 else grpc.StatusCode.OK


def _accepted_inputs(request: ntm_pb2.StepRequest) -> np.ndarray:
    return np.asarray(request.inputs.values, np.float32).reshape(tuple(request.inputs.shape))


@pytest.fixture
def fuzz_sessions(client: NTMClient) -> dict[str, str]:
    ids = {"target": client.create_session("copy").session_id, "bystander": client.create_session("copy").session_id,
           "deleted": client.create_session("copy").session_id}
    client.delete_session(ids["deleted"])
    yield ids
    for key in ("target", "bystander"):
        client.delete_session(ids[key])


def test_fuzzed_step_requests(server: ServerThread, client: NTMClient, offline: Offline, fuzz_sessions: dict[str,
                              str]) -> None:
    target, bystander = fuzz_sessions["target"], fuzz_sessions["bystander"]
    ids = [target, "", "no-such-session", fuzz_sessions["deleted"], bystander.swapcase()]
    live = {target, bystander}
    accepted: list[np.ndarray] = []
    bystander_in: list[np.ndarray] = []
    bystander_out: list[np.ndarray] = []
    rng = np.random.default_rng(7)
    with grpc.insecure_channel(server.target) as channel:
        raw_step, raw_stream = _raw_unary(channel, "Step"), _raw_stream(channel)

        @settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(requests=st.lists(step_requests(ids), min_size=1, max_size=5), streamed=st.booleans())
        def run(requests: list[ntm_pb2.StepRequest | bytes], streamed: bool) -> None:
            x = bits(rng, int(rng.integers(1, 3)))
            bystander_in.append(x)
            honest = step_request(bystander, x, request_id="bystander")
            codes = _resolve(requests, target, live, sum(len(a) for a in accepted), rng)
            wire = [r if isinstance(r, bytes) else r.SerializeToString() for r in requests]
            if streamed:  # one stream: the bystander's request in the middle of the fuzz
                half = len(wire) // 2
                responses = list(raw_stream(iter([*wire[:half], honest.SerializeToString(), *wire[half:]]),
                                            timeout=60))
                assert len(responses) == len(wire) + 1
                mine = [r for r in responses if r.request_id == "bystander" and r.session_id == bystander]
                assert len(mine) == 1 and not mine[0].error.code
                bystander_out.append(np.asarray(mine[0].outputs.values, np.float32).reshape(len(x), 8))
                for r in responses:
                    assert CODES[r.error.code] in ALLOWED, r.error
                # one session's answers come in its request order: pair them up
                answers = [r for r in responses if r.session_id == target]
                asked = [(r, c) for r, c in zip(requests, codes, strict=True)
                         if not isinstance(r, bytes) and r.session_id == target]
                assert len(answers) == len(asked)
                for (q, code), a in zip(asked, answers, strict=True):
                    assert CODES[a.error.code] == code, (q, a.error)
                    if not a.error.code:
                        accepted.append(_accepted_inputs(q))
                return
            for r, data, code in zip(requests, wire, codes, strict=True):
                try:
                    parsed = ntm_pb2.StepRequest.FromString(data)
                except DecodeError:
                    parsed = None
                expected = code or (INVALID if parsed is None else expected_step_code(parsed, live))
                try:
                    raw_step(data, timeout=30)
                except grpc.RpcError as err:
                    assert err.code() == expected, (r, err.code(), err.details())
                    continue
                assert expected == grpc.StatusCode.OK, r
                if parsed.session_id == target:
                    accepted.append(_accepted_inputs(parsed))
            bystander_out.append(client.step(bystander, x).outputs)

        run()
    assert accepted  # the strategy reaches the accepting path too
    # refused requests changed nothing; accepted ones were applied exactly, in order
    steps = sum(len(a) for a in accepted)
    state = client.export_session(target)
    assert state.steps == steps
    expected = offline.run(np.concatenate(accepted))["state"] if accepted else {
        k: v[0] for k, v in offline.initial.items()}
    _same(state.tensors, expected)
    np.testing.assert_array_equal(np.concatenate(bystander_out), offline.run(np.concatenate(bystander_in))["outputs"])


PACK_FAULTS = ("valid", "valid", "valid", "bytes", "wild", "unknown session", "session twice", "no entries",
               "too many entries", "long request_id", "no inputs", "expect right", "expect wrong", "expect negative",
               "T = 0", "T over the limit", "E off by one", *TENSOR_FAULTS)
MAX_BATCH = 64  # the shared server's --max-batch (service_config's default)


@st.composite
def packed_requests(draw: st.DrawFn, live: list[str], dead: list[str]) -> ntm_pb2.PackedStepRequest | bytes:
    """A valid packed message over some of the `live` sessions, one with exactly one thing wrong, anything at all,
    or raw bytes."""
    fault = draw(st.sampled_from(PACK_FAULTS))
    if fault == "bytes":
        return draw(st.binary(max_size=64))
    sessions = draw(st.lists(st.sampled_from(live), min_size=1, max_size=len(live), unique=True))
    steps = draw(st.integers(1, 3))
    request = ntm_pb2.PackedStepRequest(request_id=draw(st.text(max_size=10)), return_attention=draw(st.booleans()),
                                        inputs=_finite((len(sessions), steps, 9), draw(st.integers(0, 2**32 - 1))))
    request.entries.extend(ntm_pb2.PackedEntry(session_id=sid) for sid in sessions)
    entry = draw(st.integers(0, len(sessions) - 1))
    if fault == "wild":
        del request.entries[:]
        for sid in draw(st.lists(st.sampled_from(live + dead) | st.text(max_size=30), max_size=5)):
            request.entries.add(session_id=sid)
        request.inputs.CopyFrom(draw(tensors((len(request.entries), steps, 9))))
    elif fault == "unknown session":
        request.entries[entry].session_id = draw(st.sampled_from(dead) | st.text(max_size=140))
    elif fault == "session twice":
        request.entries.add(session_id=sessions[entry])
        request.inputs.CopyFrom(_finite((len(sessions) + 1, steps, 9), draw(st.integers(0, 2**32 - 1))))
    elif fault == "no entries":
        del request.entries[:]
        request.inputs.CopyFrom(_finite((0, steps, 9), 0))
    elif fault == "too many entries":
        request.entries.extend(ntm_pb2.PackedEntry(session_id=f"s{i}") for i in range(MAX_BATCH))
    elif fault == "long request_id":
        request.request_id = draw(st.text(min_size=257, max_size=300))
    elif fault == "no inputs":
        request.ClearField("inputs")
    elif fault in ("expect right", "expect wrong"):
        request.entries[entry].expect_steps = EXPECT_RIGHT if fault == "expect right" else EXPECT_WRONG
    elif fault == "expect negative":
        request.entries[entry].expect_steps = draw(st.integers(-(2**63), -1))
    elif fault in ("T = 0", "T over the limit"):
        request.inputs.CopyFrom(_finite((len(sessions), 0 if fault == "T = 0" else 1001, 9), 0))
    elif fault == "E off by one":
        request.inputs.CopyFrom(_finite((len(sessions) + draw(st.sampled_from([-1, 1])), steps, 9), 0))
    elif fault != "valid":
        request.inputs.CopyFrom(_spoil(draw, (len(sessions), steps, 9), fault))
    return request


def pack_verdict(request: ntm_pb2.PackedStepRequest, steps: dict[str, int]) -> tuple[bool, dict[int, bool]]:
    """Worked out independently of the server: (the message is applied, entry -> the entry itself is at fault).
    `steps`: where each live session stands. An entry is at fault for an unknown session, a session named in an
    earlier entry, non-finite inputs of its own, or an expect_steps that is negative or not its session's count."""
    ids = [e.session_id for e in request.entries]
    shape = tuple(request.inputs.shape)
    message_ok = (1 <= len(ids) <= MAX_BATCH and len(request.request_id) <= 256 and request.HasField("inputs")
                  and len(shape) == 3 and shape[0] == len(ids) and 1 <= shape[1] <= 1000 and shape[2] == 9
                  and len(request.inputs.values) == math.prod(shape))
    values = np.asarray(request.inputs.values, np.float32).reshape(shape) if message_ok else None
    faulty = {}
    for e, entry in enumerate(request.entries):
        bad = entry.session_id not in steps or entry.session_id in ids[:e]
        if values is not None:
            bad |= not bool(np.isfinite(values[e]).all())
        if entry.HasField("expect_steps"):
            bad |= entry.expect_steps < 0 or entry.expect_steps != steps.get(entry.session_id)
        faulty[e] = bad
    return message_ok and not any(faulty.values()), faulty


def test_fuzzed_packed_requests(server: ServerThread, client: NTMClient, offline: Offline) -> None:
    """Arbitrary packed messages on one StreamPackedSteps stream, with an honest message for a bystander among them:
    every answer is allowed (never UNKNOWN or INTERNAL); a message is applied exactly when it is valid by the rules
    of docs/service.md ("Packed steps"), worked out here independently; a refused message names each entry's fault
    (ABORTED for the entries that were fine) or none; and every session ends bit for bit where the accepted
    messages, and only they, take it."""
    live = [client.create_session("copy").session_id for _ in range(3)]
    bystander = client.create_session("copy").session_id
    deleted = client.create_session("copy").session_id
    client.delete_session(deleted)
    dead = ["", "no-such-session", deleted, live[0].swapcase(), "x" * 200]
    accepted: dict[str, list[np.ndarray]] = {sid: [] for sid in live}
    bystander_in: list[np.ndarray] = []
    bystander_out: list[np.ndarray] = []
    rng = np.random.default_rng(11)
    counts = {"applied": 0, "entry errors": 0}
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream("/ntm.v1.NTM/StreamPackedSteps", request_serializer=None,
                                       response_deserializer=ntm_pb2.PackedStepResponse.FromString)

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(requests=st.lists(packed_requests(live, dead), min_size=1, max_size=4))
        def run(requests: list[ntm_pb2.PackedStepRequest | bytes]) -> None:
            steps = {sid: sum(len(x) for x in xs) for sid, xs in accepted.items()}
            verdicts: list[tuple[bool, dict[int, bool]] | None] = []
            for request in requests:  # messages run in request order: each one's expect_steps sees the ones before
                if isinstance(request, bytes):
                    try:
                        parsed = ntm_pb2.PackedStepRequest.FromString(request)
                    except DecodeError:
                        verdicts.append(None)
                        continue
                    verdict = pack_verdict(parsed, steps)
                    verdicts.append(verdict)
                    request = parsed
                else:
                    for e in request.entries:
                        if e.HasField("expect_steps") and e.expect_steps in (EXPECT_RIGHT, EXPECT_WRONG):
                            now = steps.get(e.session_id, 0)
                            e.expect_steps = now + (0 if e.expect_steps == EXPECT_RIGHT else int(rng.integers(1, 4)))
                    verdict = pack_verdict(request, steps)
                    verdicts.append(verdict)
                if verdict[0]:
                    for e in request.entries:
                        steps[e.session_id] += request.inputs.shape[1]
            x = bits(rng, int(rng.integers(1, 3)))
            bystander_in.append(x)
            honest = packed_request([bystander], x[None], request_id="bystander").SerializeToString()
            wire = [r if isinstance(r, bytes) else r.SerializeToString() for r in requests]
            half = len(wire) // 2
            responses = list(stream(iter([*wire[:half], honest, *wire[half:]]), timeout=60))
            assert len(responses) == len(wire) + 1
            mine = responses.pop(half)
            assert mine.request_id == "bystander" and not mine.error.code, mine.error
            bystander_out.append(np.asarray(mine.outputs.values, np.float32).reshape(len(x), 8))
            for request, verdict, response in zip(requests, verdicts, responses, strict=True):
                code = CODES[response.error.code]
                assert code in ALLOWED | {grpc.StatusCode.ABORTED}, response.error
                if verdict is None:  # bytes that do not parse: a fault of the message itself
                    assert code == INVALID and not response.entry_errors
                    continue
                message = ntm_pb2.PackedStepRequest.FromString(request) if isinstance(request, bytes) else request
                applied, faulty = verdict
                assert (code == grpc.StatusCode.OK) == applied, (message, response.error)
                if applied:
                    counts["applied"] += 1
                    outputs = np.asarray(response.outputs.values, np.float32)
                    assert tuple(response.outputs.shape) == (*message.inputs.shape[:2], 8) and outputs.size
                    inputs = np.asarray(message.inputs.values, np.float32).reshape(tuple(message.inputs.shape))
                    for e, entry in enumerate(message.entries):
                        accepted[entry.session_id].append(inputs[e])
                elif response.entry_errors:  # refused entry by entry: exactly the faulty entries are blamed
                    counts["entry errors"] += 1
                    assert len(response.entry_errors) == len(message.entries)
                    for e, status in enumerate(response.entry_errors):
                        blamed = CODES[status.code] != grpc.StatusCode.ABORTED
                        assert blamed == faulty[e], (e, message, response)

        run()
    assert counts["applied"] and counts["entry errors"]  # the strategy reaches both paths
    for sid, xs in accepted.items():  # refused messages changed nothing; accepted ones were applied exactly
        state = client.export_session(sid)
        assert state.steps == sum(len(x) for x in xs)
        _same(state.tensors, offline.run(np.concatenate(xs))["state"] if xs else
              {k: v[0] for k, v in offline.initial.items()})
    np.testing.assert_array_equal(np.concatenate(bystander_out), offline.run(np.concatenate(bystander_in))["outputs"])
    for sid in (*live, bystander):
        client.delete_session(sid)


STATE_FAULTS = ("valid", "valid", "wild", "model", "steps", "checkpoint", "missing tensor", "extra tensor",
                "not a distribution", *TENSOR_FAULTS)


@st.composite
def session_states(draw: st.DrawFn, shapes: dict[str, tuple[int, ...]], checkpoint: str) -> ntm_pb2.SessionState:
    """A valid state, a valid state with exactly one thing wrong, or anything at all."""
    fault = draw(st.sampled_from(STATE_FAULTS))
    if fault == "wild":
        state = ntm_pb2.SessionState(
            model=draw(st.sampled_from(["copy", "", "no-such-model"]) | st.text(max_size=12)),
            steps=draw(st.integers(-(2**63), 2**63 - 1)),
            checkpoint_sha256=draw(st.sampled_from([checkpoint, ""]) | st.text(max_size=70)))
        for name in draw(st.lists(st.sampled_from(STATE_NAMES) | st.text(max_size=15), max_size=7, unique=True)):
            state.tensors[name].CopyFrom(draw(tensors(shapes.get(name, (2,)))))
        return state
    state = ntm_pb2.SessionState(model="copy", steps=draw(st.integers(0, 10**6)),
                                 checkpoint_sha256=draw(st.sampled_from([checkpoint, ""])))
    for name, shape in shapes.items():
        state.tensors[name].CopyFrom(_state_tensor(name, shape, draw(st.integers(0, 2**32 - 1))))
    name = draw(st.sampled_from(STATE_NAMES))
    if fault == "model":
        state.model = draw(st.sampled_from(["", "no-such-model", "Copy", "copy "]))
    elif fault == "steps":
        state.steps = draw(st.integers(-(2**63), -1) | st.integers(2**62 + 1, 2**63 - 1))
    elif fault == "checkpoint":
        state.checkpoint_sha256 = draw(st.sampled_from(["0" * 64, checkpoint[:-1], checkpoint.upper()]))
    elif fault == "missing tensor":
        del state.tensors[name]
    elif fault == "extra tensor":
        state.tensors[draw(st.text(max_size=15).filter(lambda n: n not in shapes))].CopyFrom(_finite((2,), 0))
    elif fault == "not a distribution":  # a weighting with one entry negative, or one head's row scaled
        name = draw(st.sampled_from(WEIGHTINGS))
        rows = np.asarray(state.tensors[name].values, np.float32).reshape(shapes[name])
        head, row = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, rows.shape[-1] - 1))
        if draw(st.booleans()):
            rows[head, row] = -draw(st.floats(2.0**-100, 1.0, width=32))
        else:
            rows[head] *= draw(st.sampled_from([0.0, 0.5, 0.99, 1.01, 2.0]))
        state.tensors[name].CopyFrom(to_tensor(rows))
    elif fault != "valid":
        state.tensors[name].CopyFrom(_spoil(draw, shapes[name], fault, name))
    return state


def test_fuzzed_session_states(server: ServerThread, client: NTMClient, offline: Offline, fuzz_sessions: dict[str,
                               str]) -> None:
    bystander = fuzz_sessions["bystander"]
    spec = next(m for m in client.list_models() if m.name == "copy")
    shapes = {s.name: tuple(s.shape) for s in spec.state}
    rng = np.random.default_rng(11)
    bystander_in: list[np.ndarray] = []
    bystander_out: list[np.ndarray] = []
    imported = 0
    live = server.server.registry.count()
    with grpc.insecure_channel(server.target) as channel:
        raw_import = _raw_unary(channel, "ImportSession")

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(state=session_states(shapes, spec.checkpoint_sha256) | st.binary(max_size=64),
               # No TTL in (0, 60) s: a session accepted with a tiny TTL can be evicted by the reaper before it is
               # read back (expiry is tested elsewhere); negative, NaN and infinite TTLs stay in.
               ttl=(st.just(0.0) | st.floats(60, 1e6) | st.floats()).filter(lambda t: not 0 < t < 60))
        def run(state: ntm_pb2.SessionState | bytes, ttl: float) -> None:
            nonlocal imported
            data = state if isinstance(state, bytes) else \
                ntm_pb2.ImportSessionRequest(state=state, ttl_seconds=ttl).SerializeToString()
            try:
                expected = expected_import_code(ntm_pb2.ImportSessionRequest.FromString(data), shapes,
                                                spec.checkpoint_sha256)
            except DecodeError:
                expected = INVALID
            try:
                session = raw_import(data, timeout=30)
            except grpc.RpcError as err:
                assert err.code() == expected, (err.code(), err.details())
                assert server.server.registry.count() == live  # refused: nothing created
            else:  # accepted: it holds exactly what was sent, and steps on from there like the graph
                try:
                    assert expected == grpc.StatusCode.OK
                    imported += 1
                    assert not isinstance(state, bytes)
                    sent = {name: np.asarray(t.values, np.float32).reshape(tuple(t.shape)) for name, t in
                            state.tensors.items()}
                    back = client.export_session(session.session_id)
                    assert back.steps == state.steps == session.steps
                    _same(back.tensors, sent)
                    x = bits(rng, 2)
                    np.testing.assert_array_equal(client.step(session.session_id, x).outputs,
                                                  offline.run(x, state=sent)["outputs"])
                finally:
                    client.delete_session(session.session_id)
            x = bits(rng, 1)
            bystander_in.append(x)
            bystander_out.append(client.step(bystander, x).outputs)

        run()
    assert imported > 0  # the strategy reaches the accepting path too
    np.testing.assert_array_equal(np.concatenate(bystander_out), offline.run(np.concatenate(bystander_in))["outputs"])
