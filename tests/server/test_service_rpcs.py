"""Every RPC against a live server, and the served numbers against offline runs of the same model.

Exactness (≤ 1e-6; in fact bit for bit) is against onnxruntime running the same graph files offline in
the server's row layout (helpers.Offline). Against a plain batch-1 run and against the PyTorch checkpoint
the graphs came from (other kernels, other rounding) the bound is 1e-5, on task inputs: on random inputs a
trained NTM amplifies rounding differences (see docs/service.md, "Batch invariance")."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import Offline, bits

from ntm_serve.client.sdk import NTMClient, SessionStateData, step_request
from ntm_serve.demos import tasks_np
from ntm_serve.server.server import ServerThread

EXACT = 1e-6


def test_list_models_describes_each_served_model(client: NTMClient, models_dir: Path) -> None:
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {p.name for p in models_dir.iterdir() if (p / "step.onnx").is_file()}
    copy = models["copy"]
    assert (copy.task, copy.input_size, copy.output_size) == ("copy", 9, 8)
    assert copy.memory_rows > 0 and copy.memory_width > 0 and copy.read_heads >= 1 and copy.write_heads >= 1
    assert copy.provider == "CPUExecutionProvider"  # what the test server asked for, and really runs
    shapes = {s.name: tuple(s.shape) for s in copy.state}
    assert shapes["memory"] == (copy.memory_rows, copy.memory_width)
    assert shapes["read_weights"] == (copy.read_heads, copy.memory_rows)


def test_create_get_delete(client: NTMClient) -> None:
    before = time.time()
    session = client.create_session("copy", ttl_seconds=120)
    assert len(session.session_id) >= 21 and session.model == "copy" and session.steps == 0
    assert session.ttl_seconds == 120
    assert before + 110 < session.expires_at.timestamp() < time.time() + 130
    got = client.get_session(session.session_id)
    assert (got.session_id, got.steps, got.state) == (session.session_id, 0, None)
    client.delete_session(session.session_id)
    with pytest.raises(grpc.RpcError) as err:
        client.get_session(session.session_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "deleted" in err.value.details()


def test_session_ids_are_unique_and_random(client: NTMClient) -> None:
    ids = [client.create_session("copy").session_id for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(len(i) == 22 for i in ids)  # token_urlsafe(16): 128 random bits
    for i in ids:
        client.delete_session(i)


def test_step_equals_offline_onnxruntime_and_torch(client: NTMClient, offline: Offline,
                                                   rng: np.random.Generator) -> None:
    inputs = bits(rng, 40)
    session = client.create_session("copy")
    out = client.step(session.session_id, inputs, return_attention=True, request_id="r1")
    ref = offline.run(inputs)
    assert out.steps == 40 and out.request_id == "r1"
    np.testing.assert_allclose(out.outputs, ref["outputs"], rtol=0, atol=EXACT)
    np.testing.assert_allclose(out.read_weights, ref["read_weights"], rtol=0, atol=EXACT)
    np.testing.assert_allclose(out.write_weights, ref["write_weights"], rtol=0, atol=EXACT)
    state = client.get_session(session.session_id, include_state=True).state
    assert state is not None and state.steps == 40
    for name, value in ref["state"].items():
        np.testing.assert_allclose(state.tensors[name], value, rtol=0, atol=EXACT, err_msg=name)
    client.delete_session(session.session_id)


def test_task_example_matches_batch_one_and_torch(client: NTMClient, offline: Offline) -> None:
    example = tasks_np.copy(np.random.default_rng(11), length=20)
    session = client.create_session("copy")
    got = client.step(session.session_id, example.inputs).outputs
    np.testing.assert_allclose(got, offline.run(example.inputs, batch=1)["outputs"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, offline.torch_outputs(example.inputs), rtol=0, atol=1e-5)
    client.delete_session(session.session_id)


def test_outputs_do_not_depend_on_how_the_sequence_is_cut(client: NTMClient, offline: Offline,
                                                          rng: np.random.Generator) -> None:
    inputs = bits(rng, 37)
    ref = offline.run(inputs)["outputs"]
    cuts = [[37], [1] * 37, [5, 1, 20, 11], [2, 3, 5, 7, 11, 9]]
    for sizes in cuts:
        session = client.create_session("copy")
        chunks = np.split(inputs, np.cumsum(sizes)[:-1])
        half = len(chunks) // 2
        unary = [client.step(session.session_id, c).outputs for c in chunks[:half]]  # some as unary calls
        streamed = [o.outputs for o in client.stream_session(session.session_id, chunks[half:])]  # the rest streamed
        got = np.concatenate(unary + streamed)
        np.testing.assert_allclose(got, ref, rtol=0, atol=EXACT, err_msg=f"cut {sizes}")
        assert client.get_session(session.session_id).steps == 37
        client.delete_session(session.session_id)


def test_a_session_outlives_its_streams(client: NTMClient, server: ServerThread, offline: Offline,
                                        rng: np.random.Generator) -> None:
    inputs = bits(rng, 30)
    session = client.create_session("copy")
    first = [o.outputs for o in client.stream_session(session.session_id, np.split(inputs[:12], 4))]
    # a new channel, as a reconnecting client would have
    with NTMClient(server.target, timeout=60) as again:
        second = [o.outputs for o in again.stream_session(session.session_id, np.split(inputs[12:], 3))]
        assert again.get_session(session.session_id).steps == 30
    np.testing.assert_allclose(np.concatenate(first + second), offline.run(inputs)["outputs"], rtol=0, atol=EXACT)
    client.delete_session(session.session_id)


def test_one_stream_drives_many_sessions_in_order(client: NTMClient, offline: Offline,
                                                  rng: np.random.Generator) -> None:
    sessions = [client.create_session("copy").session_id for _ in range(6)]
    inputs = {s: bits(rng, 12) for s in sessions}
    requests = []
    for t in range(0, 12, 3):  # interleaved: s0 t0-2, s1 t0-2, ..., s0 t3-5, ...
        requests += [step_request(s, inputs[s][t:t + 3], request_id=f"{s}/{t}") for s in sessions]
    got: dict[str, list] = {s: [] for s in sessions}
    for out in client.stream(requests):
        got[out.session_id].append(out.check())
    for s in sessions:
        assert [o.request_id for o in got[s]] == [f"{s}/{t}" for t in range(0, 12, 3)]  # per-session order
        assert [o.steps for o in got[s]] == [3, 6, 9, 12]
        np.testing.assert_allclose(np.concatenate([o.outputs for o in got[s]]), offline.run(inputs[s])["outputs"],
                                   rtol=0, atol=EXACT)
        client.delete_session(s)


def test_export_then_import_continues_identically(client: NTMClient, offline: Offline,
                                                  rng: np.random.Generator) -> None:
    inputs = bits(rng, 30)
    original = client.create_session("copy")
    client.step(original.session_id, inputs[:18])
    exported = client.export_session(original.session_id)
    assert exported.model == "copy" and exported.steps == 18 and len(exported.checkpoint_sha256) == 64
    np.testing.assert_allclose(exported.tensors["memory"], offline.run(inputs[:18])["state"]["memory"],
                               rtol=0, atol=EXACT)
    copy = client.import_session(exported, ttl_seconds=60)
    assert copy.session_id != original.session_id and copy.steps == 18
    a = client.step(original.session_id, inputs[18:])
    b = client.step(copy.session_id, inputs[18:])
    np.testing.assert_array_equal(a.outputs, b.outputs)  # bit for bit: the same state, the same graph
    assert a.steps == b.steps == 30
    np.testing.assert_allclose(b.outputs, offline.run(inputs)["outputs"][18:], rtol=0, atol=EXACT)
    # the state round-trips exactly, through numpy, too
    again = client.import_session(SessionStateData(exported.model, exported.steps,
                                                   {k: v.copy() for k, v in exported.tensors.items()}))
    np.testing.assert_array_equal(client.step(again.session_id, inputs[18:]).outputs, a.outputs)
    for s in (original.session_id, copy.session_id, again.session_id):
        client.delete_session(s)


def test_every_served_model_steps_like_its_graph(client: NTMClient, models_dir: Path, rng: np.random.Generator) -> None:

    for model in client.list_models():
        inputs = bits(rng, 9, model.input_size)
        session = client.create_session(model.name)
        got = client.step(session.session_id, inputs).outputs
        np.testing.assert_allclose(got, Offline(models_dir / model.name).run(inputs)["outputs"], rtol=0,
                                   atol=EXACT, err_msg=model.name)
        client.delete_session(session.session_id)
