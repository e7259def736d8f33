"""The native front end (`--native-port`, native/front.cc + service/native_front.py): StreamPackedSteps through
libntmfront (C++ gRPC in the server's process) on loopback. Its answers equal the main port's bit for bit;
refusals, malformed messages, tokens and TLS behave as on the main port and change no session; responses leave in
request order with many in flight; a stop answers what was read and ends the stream UNAVAILABLE; start-up errors
are one clear line."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import Offline, Pki, bits, service_config

from service.client import NTMClient, packed_request
from service.config import ServiceConfig
from service.native_front import REPO_LIBRARY, Kind, NativeFrontError
from service.proto_gen.ntm.v1 import ntm_pb2
from service.server import ServerThread

TOKEN, OTHER = "native-token-" + "n" * 24, "other-token-" + "o" * 24
METHOD = "/ntm.v1.NTM/StreamPackedSteps"


def _inputs(rng: np.random.Generator, sessions: int, steps: int) -> np.ndarray:
    return np.stack([bits(rng, steps) for _ in range(sessions)])  # (E, T, I)


def _native(server: ServerThread) -> str:
    assert server.server.native_port is not None
    return f"127.0.0.1:{server.server.native_port}"


@pytest.fixture(scope="module")
def native_server(copy_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(copy_dir, native_port=0, stream_window=8)) as server:
        yield server


def test_the_event_kinds_are_the_ones_front_cc_sends() -> None:
    source = (REPO_LIBRARY.parent.parent / "front.cc").read_text()
    for kind in Kind:  # the C++ side mirrors every number
        assert f"= {kind.value}," in source, kind


def test_native_answers_equal_the_main_ports_bit_for_bit(native_server: ServerThread, offline: Offline,
                                                         rng: np.random.Generator) -> None:
    """Two sets of four sessions take the same inputs, one through each port, over messages of 1, 5 and 3 steps
    (one with attention): outputs, attention, step counts and exported state agree exactly, and with the offline
    graph."""
    inputs = _inputs(rng, 4, 9)
    with NTMClient(native_server.target, timeout=60) as main, \
            NTMClient(native_server.target, packed_target=_native(native_server), timeout=60) as native:
        ids = {port: [main.create_session("copy").session_id for _ in range(4)] for port in ("main", "native")}
        at = 0
        for steps, attention in ((1, False), (5, True), (3, False)):
            x = inputs[:, at:at + steps]
            a = main.step_packed(ids["main"], x, return_attention=attention)
            b = native.step_packed(ids["native"], x, return_attention=attention)
            assert b.steps == a.steps
            np.testing.assert_array_equal(b.outputs, a.outputs)
            if attention:
                np.testing.assert_array_equal(b.read_weights, a.read_weights)
                np.testing.assert_array_equal(b.write_weights, a.write_weights)
            at += steps
        for e in range(4):
            np.testing.assert_array_equal(b.outputs[e], offline.run(inputs[e])["outputs"][-3:])
            left, right = main.export_session(ids["main"][e]), main.export_session(ids["native"][e])
            assert left.steps == right.steps == 9
            for name, value in left.tensors.items():
                np.testing.assert_array_equal(right.tensors[name], value)
        for sid in ids["main"] + ids["native"]:
            main.delete_session(sid)


def test_many_in_flight_are_answered_in_request_order(native_server: ServerThread, rng: np.random.Generator) -> None:
    """60 messages written at once (the window is 8), two session sets taking turns: answers in request order,
    each equal to the same message's answer on the main port."""
    with NTMClient(native_server.target, timeout=60) as main, \
            NTMClient(native_server.target, packed_target=_native(native_server), timeout=60) as native:
        sets = [[main.create_session("copy").session_id for _ in range(3)] for _ in range(4)]
        xs = [_inputs(rng, 3, 1 + i % 3) for i in range(60)]
        requests = [packed_request(sets[i % 2], x, request_id=f"m{i}") for i, x in enumerate(xs)]
        answers = list(native.stream_packed(requests))
        assert [a.request_id for a in answers] == [f"m{i}" for i in range(60)]
        for i, (answer, x) in enumerate(zip(answers, xs, strict=True)):
            expected = main.step_packed(sets[2 + i % 2], x)
            np.testing.assert_array_equal(answer.check().outputs, expected.outputs)


def test_refused_and_malformed_messages_change_nothing(native_server: ServerThread,
                                                       rng: np.random.Generator) -> None:
    """An unknown session refuses the whole message with each entry's status; bytes that are not a message are
    INVALID_ARGUMENT; a call other than StreamPackedSteps is UNIMPLEMENTED; the stream goes on and no session moved."""
    with NTMClient(native_server.target, timeout=60) as main, \
            NTMClient(native_server.target, packed_target=_native(native_server), timeout=60) as native:
        ids = [main.create_session("copy").session_id for _ in range(2)]
        before = [main.export_session(s) for s in ids]
        bad = packed_request([*ids, "no-such-session"], _inputs(rng, 3, 2), request_id="bad")
        nan = _inputs(rng, 2, 2)
        nan[1, 1, 0] = np.nan
        wrong_shape = packed_request(ids, _inputs(rng, 2, 2)[:, :, :5], request_id="shape")
        refused = list(native.stream_packed([bad, packed_request(ids, nan, request_id="nan"), wrong_shape]))
        assert [r.request_id for r in refused] == ["bad", "nan", "shape"]
        assert refused[0].error is not None and refused[0].error.code == grpc.StatusCode.NOT_FOUND
        assert [e.code for e in refused[0].error.entries] == [grpc.StatusCode.ABORTED, grpc.StatusCode.ABORTED,
                                                              grpc.StatusCode.NOT_FOUND]
        assert refused[1].error is not None and refused[1].error.entries[1].code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused[2].error is not None and refused[2].error.code == grpc.StatusCode.INVALID_ARGUMENT
        with grpc.insecure_channel(_native(native_server)) as channel:
            raw = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)
            good = packed_request(ids, _inputs(rng, 2, 1), request_id="after").SerializeToString()
            first, second = list(raw(iter([b"\xff\xff\xff", good]), timeout=30))
            malformed = ntm_pb2.PackedStepResponse.FromString(first)
            assert malformed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "not a valid ntm.v1.PackedStepRequest" in malformed.error.message
            assert ntm_pb2.PackedStepResponse.FromString(second).request_id == "after"  # the stream went on
            other = channel.unary_unary("/ntm.v1.NTM/ListModels", request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as err:
                other(b"", timeout=30)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "main port" in err.value.details()
        for sid, old in zip(ids, before, strict=True):
            now = main.export_session(sid)
            assert now.steps == old.steps + 1  # only "after" was applied
        for sid in ids:
            main.delete_session(sid)


def test_tokens_and_tls_hold_on_the_native_port(copy_dir: Path, pki: Pki, rng: np.random.Generator) -> None:
    """With TLS and tokens the native port speaks TLS only, needs a valid token (UNAUTHENTICATED), and serves a
    session only to the token that made it (PERMISSION_DENIED for that entry, nothing applied)."""
    config = service_config(copy_dir, native_port=0, tls_cert=pki.server_cert, tls_key=pki.server_key,
                            auth_tokens=(TOKEN, OTHER))
    with ServerThread(config) as server:
        target = _native(server)
        with NTMClient(server.target, token=TOKEN, tls_ca=pki.ca, packed_target=target, timeout=30) as mine, \
                NTMClient(server.target, token=OTHER, tls_ca=pki.ca, packed_target=target, timeout=30) as theirs:
            sid = mine.create_session("copy").session_id
            x = _inputs(rng, 1, 3)
            mine.step_packed([sid], x)
            (denied,) = list(theirs.stream_packed([packed_request([sid], x)]))
            assert denied.error is not None and denied.error.entries[0].code == grpc.StatusCode.PERMISSION_DENIED
            assert mine.get_session(sid).steps == 3
        with NTMClient(server.target, tls_ca=pki.ca, packed_target=target, timeout=30) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                list(anonymous.stream_packed([packed_request([sid], x)]))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in err.value.details()
        with NTMClient(target, token=TOKEN, timeout=5) as plaintext:  # plaintext to a TLS port
            with pytest.raises(grpc.RpcError) as err:
                list(plaintext.stream_packed([packed_request([sid], x)]))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_stop_answers_what_was_read_then_ends_the_stream(copy_dir: Path, tmp_path: Path,
                                                            rng: np.random.Generator) -> None:
    """A server stopping while a client streams: the stream ends UNAVAILABLE,
    and the sessions' final snapshot holds exactly the steps the client got answers for (nothing unanswered was
    applied, nothing answered was lost)."""
    state = tmp_path / "state"
    server = ServerThread(service_config(copy_dir, native_port=0, state_dir=state)).start()
    try:
        with NTMClient(server.target, timeout=60) as main:
            ids = [main.create_session("copy").session_id for _ in range(2)]
        answered = 0

        def ticks() -> Iterator[ntm_pb2.PackedStepRequest]:
            for i in range(100_000):
                if i == 20:
                    server.stop(grace=5)
                yield packed_request(ids, _inputs(rng, 2, 1), request_id=str(i))

        with NTMClient(server.target, packed_target=_native(server), timeout=60) as native, \
                pytest.raises(grpc.RpcError) as err:
            for answer in native.stream_packed(ticks()):
                answer.check()
                answered += 1
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert answered >= 20
    finally:
        server.stop()
    with ServerThread(service_config(copy_dir, state_dir=state)) as restarted, \
            NTMClient(restarted.target, timeout=60) as main:
        assert [main.get_session(sid).steps for sid in ids] == [answered, answered]


def test_start_up_errors_name_the_cause(copy_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NativeFrontError, match="make native"):
        ServerThread(service_config(copy_dir, native_port=0, native_library=tmp_path / "missing")).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(NativeFrontError, match=f"cannot bind 127.0.0.1:{port}"):
            ServerThread(service_config(copy_dir, native_port=port)).start()
        assert time.monotonic() - began < 30
    with pytest.raises(ValueError, match="replica mode"):
        ServiceConfig(native_port=0, store_url="redis://127.0.0.1:1")
    with pytest.raises(ValueError, match="ports must be"):
        ServiceConfig(native_port=70_000)
