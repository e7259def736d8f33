"""Every refused request gets its status code and a message saying what is wrong, and changes nothing;
limits (session count, TTL, steps per request, message size, tokens) hold."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import Offline, bits, service_config

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.client.sdk import NTMClient, SessionStateData, step_request
from ntm_serve.server.server import ServerThread

EXACT = 1e-6
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _tensor(shape: list[int], values: list[float]) -> ntm_pb2.Tensor:
    return ntm_pb2.Tensor(shape=shape, values=values)


def _ok(steps: int = 1) -> ntm_pb2.Tensor:
    return _tensor([steps, 9], [0.0] * (9 * steps))


# (name, request fields apart from session_id, code, words the message must contain)
BAD_INPUTS = [
    ("wrong width", {"inputs": _tensor([2, 8], [0.0] * 16)}, INVALID, "width 9"),
    ("rank 1", {"inputs": _tensor([9], [0.0] * 9)}, INVALID, "rank 1"),
    ("rank 3", {"inputs": _tensor([1, 1, 9], [0.0] * 9)}, INVALID, "rank 3"),
    ("shape does not match values", {"inputs": _tensor([2, 9], [0.0] * 17)}, INVALID, "needs 18 values, got 17"),
    ("no steps", {"inputs": _tensor([0, 9], [])}, INVALID, "T = 0"),
    ("too many steps", {"inputs": _ok(1001)}, INVALID, "limit of 1000"),
    ("negative dimension", {"inputs": _tensor([-1, 9], [])}, INVALID, "T = -1"),
    ("NaN", {"inputs": _tensor([2, 9], [0.0] * 12 + [float("nan")] + [0.0] * 5)}, INVALID, "finite"),
    ("+Inf", {"inputs": _tensor([1, 9], [float("inf")] + [0.0] * 8)}, INVALID, "finite"),
    ("-Inf", {"inputs": _tensor([1, 9], [0.0] * 8 + [float("-inf")])}, INVALID, "finite"),
    ("inputs missing", {}, INVALID, "inputs is required"),
]


@pytest.fixture
def session(client: NTMClient, rng: np.random.Generator) -> str:
    """A session with some history, so 'unchanged' means something."""
    session_id = client.create_session("copy").session_id
    client.step(session_id, bits(rng, 7))
    yield session_id
    client.delete_session(session_id)


def _snapshot(client: NTMClient, session_id: str) -> SessionStateData:
    return client.export_session(session_id)


def _assert_same(a: SessionStateData, b: SessionStateData) -> None:
    assert a.steps == b.steps
    for name in a.tensors:
        np.testing.assert_array_equal(a.tensors[name], b.tensors[name], err_msg=name)


@pytest.mark.parametrize(("name", "fields", "code", "words"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_step_is_refused_and_changes_nothing(client: NTMClient, session: str, name, fields, code, words) -> None:
    before = _snapshot(client, session)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Step(ntm_pb2.StepRequest(session_id=session, **fields), timeout=30)
    assert err.value.code() == code, err.value.details()
    assert words in err.value.details()
    _assert_same(before, _snapshot(client, session))


def test_bad_session_ids(client: NTMClient) -> None:
    gone = client.create_session("copy").session_id
    client.delete_session(gone)
    cases = [("", INVALID, "session_id is required"), ("no-such-session", NOT_FOUND, "unknown session"),
             (gone, NOT_FOUND, "was deleted")]
    for session_id, code, words in cases:
        calls = {
            "Step": lambda s=session_id: client.stub.Step(ntm_pb2.StepRequest(session_id=s, inputs=_ok())),
            "GetSession": lambda s=session_id: client.stub.GetSession(ntm_pb2.GetSessionRequest(session_id=s)),
            "DeleteSession": lambda s=session_id: client.stub.DeleteSession(ntm_pb2.DeleteSessionRequest(session_id=s)),
            "ExportSession": lambda s=session_id: client.stub.ExportSession(ntm_pb2.ExportSessionRequest(session_id=s)),
        }
        for rpc, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == code, (rpc, session_id, err.value.details())
            assert words in err.value.details(), (rpc, err.value.details())


def test_bad_create_requests(client: NTMClient, server: ServerThread) -> None:
    live = server.server.registry.count()
    cases = [({"model": "no-such-model"}, NOT_FOUND, "unknown model"), ({"model": ""}, INVALID, "model is required"),
             ({"model": "copy", "ttl_seconds": -1}, INVALID, "ttl_seconds"),
             ({"model": "copy", "ttl_seconds": float("nan")}, INVALID, "ttl_seconds")]
    for fields, code, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            client.stub.CreateSession(ntm_pb2.CreateSessionRequest(**fields))
        assert err.value.code() == code and words in err.value.details(), err.value.details()
    assert server.server.registry.count() == live


def test_malformed_imports_are_refused(client: NTMClient, server: ServerThread, session: str) -> None:
    good = client.export_session(session)
    live = server.server.registry.count()

    def variant(**changes) -> SessionStateData:
        tensors = {k: v.copy() for k, v in good.tensors.items()}
        for name, value in changes.pop("tensors", {}).items():
            if value is None:
                del tensors[name]
            else:
                tensors[name] = value
        fields = {"model": good.model, "steps": good.steps, "tensors": tensors,
                  "checkpoint_sha256": good.checkpoint_sha256, **changes}
        return SessionStateData(**fields)

    nan_memory = good.tensors["memory"].copy()
    nan_memory[3, 4] = np.nan
    negative, zeros = good.tensors["read_weights"].copy(), np.zeros_like(good.tensors["write_weights"])
    negative[0, :2] = [-0.25, negative[0, 0] + negative[0, 1] + 0.25]  # still sums to 1: the sign alone is wrong
    half = good.tensors["read_weights"] * np.float32(0.5)
    cases = [
        # weightings that are not distributions (the served graphs rely on it: docs/performance.md "Fourth round")
        (variant(tensors={"read_weights": negative}), INVALID, "read_weights must hold attention weightings"),
        (variant(tensors={"write_weights": zeros}), INVALID, "write_weights must hold attention weightings"),
        (variant(tensors={"read_weights": half}), INVALID, "row [0] sums to 0.5, not 1"),
        (variant(model="no-such-model"), NOT_FOUND, "unknown model"),
        (variant(model=""), INVALID, "model is required"),
        (variant(tensors={"memory": None}), INVALID, "missing ['memory']"),
        (variant(tensors={"extra": np.zeros(3, np.float32)}), INVALID, "unexpected ['extra']"),
        # the memory's rows are the state's N: weightings of another N do not fit it
        (variant(tensors={"memory": good.tensors["memory"][:-1]}), INVALID,
         "read_weights must have shape [1, 127], got [1, 128] (the state's memory has 127 rows: N = 127)"),
        (variant(tensors={"memory": good.tensors["memory"][:, :-1]}), INVALID, "state tensor memory must have shape"),
        (variant(tensors={"memory": nan_memory}), INVALID, "finite"),
        (variant(steps=-5), INVALID, "steps must be >= 0"),
        (variant(checkpoint_sha256="0" * 64), grpc.StatusCode.FAILED_PRECONDITION, "other weights"),
    ]
    for state, code, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            client.import_session(state)
        assert err.value.code() == code and words in err.value.details(), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.stub.ImportSession(ntm_pb2.ImportSessionRequest())
    assert err.value.code() == INVALID
    assert server.server.registry.count() == live  # nothing was created


def test_stream_answers_bad_requests_and_goes_on(client: NTMClient, session: str, offline: Offline,
                                                 rng: np.random.Generator) -> None:
    """Bad requests between good ones: each gets its error response; the good ones are exact."""
    before = _snapshot(client, session)
    other = client.create_session("copy").session_id
    inputs = bits(rng, 8)
    requests = []
    for t in range(8):
        requests.append(step_request(other, inputs[t:t + 1], request_id=f"good{t}"))
        fields = BAD_INPUTS[t % len(BAD_INPUTS)][1]
        requests.append(ntm_pb2.StepRequest(session_id=session, request_id=f"bad{t}", **fields))
    requests.append(ntm_pb2.StepRequest(session_id="no-such-session", inputs=_ok(), request_id="unknown"))
    outs = list(client.stream(requests))
    assert len(outs) == len(requests)
    bad = {o.request_id: o for o in outs if o.request_id.startswith("bad")}
    for t in range(8):
        assert bad[f"bad{t}"].error is not None and bad[f"bad{t}"].error.code == BAD_INPUTS[t % len(BAD_INPUTS)][2]
    assert next(o for o in outs if o.request_id == "unknown").error.code == NOT_FOUND
    good = [o.check() for o in outs if o.request_id.startswith("good")]
    np.testing.assert_allclose(np.concatenate([o.outputs for o in good]), offline.run(inputs)["outputs"],
                               rtol=0, atol=EXACT)
    _assert_same(before, _snapshot(client, session))
    client.delete_session(other)


# --- limits, on servers with small settings -------------------------------------------------------------


def test_session_limit(copy_dir: Path) -> None:
    with ServerThread(service_config(copy_dir, max_sessions=3)) as server, NTMClient(server.target) as client:
        ids = [client.create_session("copy").session_id for _ in range(3)]
        with pytest.raises(grpc.RpcError) as err:
            client.create_session("copy")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "session limit" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.import_session(client.export_session(ids[0]))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        client.delete_session(ids[0])
        client.create_session("copy")  # room again


def test_idle_sessions_expire_and_say_so(copy_dir: Path, rng: np.random.Generator) -> None:
    config = service_config(copy_dir, reap_interval_s=0.05)
    with ServerThread(config) as server, NTMClient(server.target) as client:
        idle = client.create_session("copy", ttl_seconds=0.3).session_id
        busy = client.create_session("copy", ttl_seconds=0.3).session_id
        for _ in range(8):  # 0.8 s of use, each use well within the TTL
            client.step(busy, bits(rng, 1))
            time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as err:
            client.step(idle, bits(rng, 1))
        assert err.value.code() == NOT_FOUND and "expired" in err.value.details()
        assert client.get_session(busy).steps == 8
        evictions = server.server.metrics.registry.get_sample_value(
            "ntm_evictions_total", {"model": "copy", "reason": "ttl"})
        assert evictions == 1


def test_steps_per_request_and_message_size_limits(copy_dir: Path, rng: np.random.Generator) -> None:
    config = service_config(copy_dir, max_steps=3000, max_message_bytes=64 * 1024)
    with ServerThread(config) as server, NTMClient(server.target, max_message_bytes=1 << 22) as client:
        session = client.create_session("copy").session_id
        client.step(session, bits(rng, 3))
        before = client.export_session(session)
        with pytest.raises(grpc.RpcError) as err:
            client.step(session, bits(rng, 2500))  # 90 kB > 64 kB
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:
            client.step(session, bits(rng, 3001))
        assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, INVALID)
        _assert_same(before, client.export_session(session))
        assert client.step(session, bits(rng, 1000)).steps == 1003  # 36 kB is fine


def test_tokens_and_ownership(copy_dir: Path, rng: np.random.Generator) -> None:
    config = service_config(copy_dir, auth_tokens=("alpha-token", "beta-token"), max_sessions_per_owner=2)
    with ServerThread(config) as server:
        with NTMClient(server.target) as anonymous, pytest.raises(grpc.RpcError) as err:
            anonymous.list_models()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with NTMClient(server.target, token="wrong") as wrong, pytest.raises(grpc.RpcError) as err:
            wrong.create_session("copy")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with NTMClient(server.target, token="alpha-token") as alpha, \
                NTMClient(server.target, token="beta-token") as beta:
            mine = alpha.create_session("copy").session_id
            alpha.step(mine, bits(rng, 2))
            for call in (lambda: beta.step(mine, bits(rng, 1)), lambda: beta.export_session(mine),
                         lambda: beta.delete_session(mine), lambda: beta.get_session(mine)):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert alpha.get_session(mine).steps == 2
            alpha.create_session("copy")
            with pytest.raises(grpc.RpcError) as err:
                alpha.create_session("copy")  # per-token quota: 2
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            beta.create_session("copy")  # another token still has room
