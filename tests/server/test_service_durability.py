"""Durability (`--state-dir`): sessions survive a graceful restart and a kill -9 (losing at most the steps since
the last snapshot), continue bit for bit, keep their owners and TTLs; corrupt, truncated or foreign snapshot
files are reported and never loaded; the snapshot file format detects every corruption of a byte."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import ROOT, Offline, bits, service_config
from hypothesis import given, settings
from hypothesis import strategies as st

from ntm_serve.client.sdk import NTMClient, packed_request, step_request
from ntm_serve.server.ports import wait_port_file
from ntm_serve.server.server import ServerThread
from ntm_serve.server.state.snapshot_format import VERSION, SessionSnapshot, SnapshotError, decode, encode
from ntm_serve.server.state.snapshots import StateDirError, file_name

STATE = {"controller_h": (3,), "memory": (4, 2)}


def _snapshot(**changes: object) -> SessionSnapshot:
    state = {name: np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 7 for name, shape in STATE.items()}
    fields = {"session_id": "abc", "model": "copy", "owner": "token:0123", "ttl_s": 60.0, "created_wall": 1.5e9,
              "idle_wall": 1.5e9 + 3, "steps": 12, "checkpoint_sha256": "f" * 64, "state": state, **changes}
    return SessionSnapshot(**fields)  # type: ignore[arg-type]


# --- the file format ------------------------------------------------------------------------------------


def test_format_round_trips_exactly() -> None:
    original = _snapshot(state={"x": np.array([[np.float32(1) / 3, -0.0, 1e-45]], np.float32)})
    back = decode(encode(original))
    assert (back.session_id, back.owner, back.steps, back.ttl_s) == ("abc", "token:0123", 12, 60.0)
    assert back.state["x"].tobytes() == original.state["x"].tobytes()  # bit for bit


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_format_detects_every_corrupted_or_truncated_file(data: st.DataObject) -> None:
    blob = encode(_snapshot())
    if data.draw(st.booleans(), label="truncate"):
        bad = blob[:data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        where = data.draw(st.integers(0, len(blob) - 1), label="byte")
        bad = bytearray(blob)
        bad[where] ^= data.draw(st.integers(1, 255), label="xor")
        bad = bytes(bad)
    with pytest.raises(SnapshotError) as err:
        decode(bad)
    assert err.value.reason in ("truncated", "magic", "version", "checksum", "format")


def test_format_errors_say_what_is_wrong() -> None:
    blob = encode(_snapshot())
    future = blob[:8] + (VERSION + 1).to_bytes(4, "little") + blob[12:]
    cases = [(blob[:30], "truncated"), (blob[:-1], "truncated"), (blob + b"x", "format"),
             (b"PK\x03\x04" + blob[4:], "magic"), (future, "version"), (blob[:-3] + bytes(3), "checksum"),
             (b"", "truncated")]
    for bad, reason in cases:
        with pytest.raises(SnapshotError) as err:
            decode(bad)
        assert err.value.reason == reason, (reason, err.value)


# --- restarts of a live server --------------------------------------------------------------------------


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _restored(server: ServerThread) -> float:
    return server.server.metrics.registry.get_sample_value(
        "ntm_sessions_created_total", {"model": "copy", "how": "restore"}) or 0.0


def test_graceful_restart_restores_sessions_with_owners_and_ttls(copy_dir: Path, tmp_path: Path, offline: Offline,
                                                                 rng: np.random.Generator) -> None:
    tokens = ("alpha-token", "beta-token")
    config = service_config(copy_dir, state_dir=tmp_path / "state", snapshot_interval_s=3600.0, reap_interval_s=3600.0,
                            auth_tokens=tokens)
    a_inputs, b_inputs = bits(rng, 30), bits(rng, 25)
    with ServerThread(config) as server, NTMClient(server.target, token=tokens[0]) as alpha, \
            NTMClient(server.target, token=tokens[1]) as beta:
        s_a = alpha.create_session("copy", ttl_seconds=300)
        alpha.step(s_a.session_id, a_inputs[:6])
        alpha.step(s_a.session_id, a_inputs[6:13])
        s_b = beta.create_session("copy", ttl_seconds=120)
        list(beta.stream_session(s_b.session_id, [b_inputs[:3], b_inputs[3:7]]))
        fresh = alpha.create_session("copy").session_id
        deleted = alpha.create_session("copy").session_id
        alpha.step(deleted, a_inputs[:4])
        alpha.delete_session(deleted)
        short = beta.create_session("copy", ttl_seconds=1.5).session_id
        short_used = time.monotonic()
        before = {s: (alpha if s != s_b.session_id else beta).export_session(s) for s in (s_a.session_id,
                                                                                          s_b.session_id, fresh)}
        expires = {s: (alpha if s != s_b.session_id else beta).get_session(s).expires_at for s in before}
    assert not (tmp_path / "state" / file_name(deleted)).exists()  # a deleted session's file goes at once
    time.sleep(max(0.0, short_used + 1.6 - time.monotonic()))  # `short` expires while the server is down

    with ServerThread(config) as server, NTMClient(server.target, token=tokens[0]) as alpha, \
            NTMClient(server.target, token=tokens[1]) as beta:
        assert _restored(server) == 3
        for session_id, owner in ((s_a.session_id, alpha), (s_b.session_id, beta), (fresh, alpha)):
            info = owner.get_session(session_id)
            assert info.steps == before[session_id].steps
            assert abs((info.expires_at - expires[session_id]).total_seconds()) < 30  # the TTL clock is kept
            _same_state(owner.export_session(session_id).tensors, before[session_id].tensors)
        assert alpha.get_session(s_a.session_id).ttl_seconds == 300
        with pytest.raises(grpc.RpcError) as err:  # still alpha's
            beta.step(s_a.session_id, a_inputs[13:14])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for session_id, words in ((deleted, "unknown session"), (short, "expired")):
            with pytest.raises(grpc.RpcError) as err:
                beta.get_session(session_id)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and words in err.value.details()
        # each continues exactly as an uninterrupted run would
        a_rest = alpha.step(s_a.session_id, a_inputs[13:]).outputs
        b_rest = np.concatenate([o.outputs for o in beta.stream_session(s_b.session_id, [b_inputs[7:12],
                                                                                          b_inputs[12:]])])
        assert alpha.get_session(s_a.session_id).steps == 30
    np.testing.assert_array_equal(a_rest, offline.run(a_inputs)["outputs"][13:])
    np.testing.assert_array_equal(b_rest, offline.run(b_inputs)["outputs"][7:])


@pytest.mark.parametrize("rpc", ["StreamSteps", "StreamPackedSteps"])
def test_a_stop_mid_stream_answers_what_it_read_and_applies_nothing_else(copy_dir: Path, tmp_path: Path,
                                                                        offline: Offline, rng: np.random.Generator,
                                                                        rpc: str) -> None:
    """SIGTERM while a client streams 1-step requests without pause: the stream stops being read, answers every
    request it read and ends UNAVAILABLE at once (not after --grace-s); the final snapshot holds exactly the
    answered steps, so the client knows what was applied and resends the rest to the restarted server."""
    state = tmp_path / "state"
    config = service_config(copy_dir, state_dir=state, snapshot_interval_s=3600.0, grace_s=30.0)
    server = ServerThread(config).start()
    inputs = bits(rng, 100_000)
    try:
        with NTMClient(server.target, timeout=60) as client:
            ids = [client.create_session("copy").session_id for _ in range(2 if rpc == "StreamPackedSteps" else 1)]

        def requests():
            for t in range(len(inputs)):
                if t == 20:
                    threading.Thread(target=server.stop).start()
                x = inputs[t:t + 1]
                yield (packed_request(ids, np.stack([x] * len(ids)), request_id=str(t)) if rpc == "StreamPackedSteps"
                       else step_request(ids[0], x, request_id=str(t)))

        answered: list[np.ndarray] = []
        began = time.monotonic()
        with NTMClient(server.target, timeout=60) as client, pytest.raises(grpc.RpcError) as err:
            for answer in (client.stream_packed(requests()) if rpc == "StreamPackedSteps"
                           else client.stream(requests())):
                answered.append(answer.check().outputs[0] if rpc == "StreamPackedSteps" else answer.check().outputs)
        # The drain's own message, unless the client was writing its next request as the server closed the
        # connection: then the client's transport reports the closed stream (seen once in 20 runs here).
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "server stopping" in err.value.details() or "Stream removed" in err.value.details(), err.value
        assert time.monotonic() - began < 20  # ended by the drain, not by the 30 s grace period
    finally:
        server.stop()
    steps = len(answered)
    # A drained stream answers exactly what it applied. When the client was writing as the server closed the
    # connection, its transport reports "Stream removed" and drops the answers it had not yet handed over: then more
    # steps are applied than answered, and the client learns where its sessions stand from GetSession (or retries
    # with expect_steps). Either way nothing is applied that was not sent.
    lost_on_wire = "Stream removed" in err.value.details()
    # (Fewer than the 20 sent before the stop is possible, none included: requests run ahead of their answers, and
    # a drain that comes before the first is read answers none. What was answered is then exactly what was applied.)
    with ServerThread(service_config(copy_dir, state_dir=state)) as restarted, \
            NTMClient(restarted.target, timeout=60) as client:
        applied = [client.get_session(sid).steps for sid in ids]
        assert applied == [steps] * len(ids) or (lost_on_wire and applied == [applied[0]] * len(ids) >= [steps]), \
            (applied, steps, err.value.details())
        steps = applied[0]
        rest = client.step(ids[0], inputs[steps:steps + 5]).outputs  # the client resends from where it was applied
    expected = offline.run(inputs[:steps + 5])["outputs"]
    got = np.concatenate(answered) if answered else expected[:0]  # (none, when the drain came before the first read)
    np.testing.assert_array_equal(got, expected[:len(answered)])
    np.testing.assert_array_equal(rest, expected[steps:])


@pytest.mark.parametrize("call", ["step", "step_packed"])
def test_a_client_with_expect_steps_rides_out_a_restart(copy_dir: Path, tmp_path: Path, offline: Offline,
                                                        rng: np.random.Generator, call: str) -> None:
    """A client stepping two sessions one step at a time with `expect_steps` (`step` on each, or one `step_packed`
    for both) while the server is stopped and started again on its port (--state-dir): its calls are retried until
    the server is back, whatever status the stop ended them with (UNAVAILABLE, or CANCELLED when the closing
    transport reset them: one restart in three here); every step is applied exactly once, and every output is the
    uninterrupted run's."""
    state = tmp_path / "state"
    first = ServerThread(service_config(copy_dir, state_dir=state, snapshot_interval_s=3600.0)).start()
    port = first.port
    inputs = np.stack([bits(rng, 30), bits(rng, 30)])  # (E, T, I)
    outputs: list[np.ndarray] = []  # (E, 1, O) per tick
    with NTMClient(first.target, timeout=60) as client:
        ids = [client.create_session("copy").session_id for _ in range(2)]

        def ticks() -> None:
            for t in range(inputs.shape[1]):
                if call == "step_packed":
                    outputs.append(client.step_packed(ids, inputs[:, t], expect_steps=[t, t]).outputs)
                else:
                    outputs.append(np.stack([client.step(sid, inputs[e, t:t + 1], expect_steps=t).outputs
                                             for e, sid in enumerate(ids)]))

        ticking = threading.Thread(target=ticks)
        ticking.start()
        while len(outputs) < 10:
            time.sleep(0.005)
        first.stop()
        with ServerThread(service_config(copy_dir, state_dir=state, port=port)):
            ticking.join(120)
            assert not ticking.is_alive() and len(outputs) == 30  # it did not die on a status it should retry
            assert [client.get_session(sid).steps for sid in ids] == [30, 30]
        assert client.stats.retries > 0  # the restart was lived through, not missed
    got = np.concatenate(outputs, axis=1)  # (E, T, O)
    for e in range(2):
        np.testing.assert_array_equal(got[e], offline.run(inputs[e])["outputs"])


def test_corrupt_truncated_and_foreign_snapshots_are_skipped(copy_dir: Path, tmp_path: Path, offline: Offline,
                                                             rng: np.random.Generator,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    state_dir = tmp_path / "state"
    config = service_config(copy_dir, state_dir=state_dir, snapshot_interval_s=3600.0)
    inputs = bits(rng, 12)
    with ServerThread(config) as server, NTMClient(server.target) as client:
        ids = [client.create_session("copy").session_id for _ in range(6)]
        for i, session_id in enumerate(ids):
            client.step(session_id, inputs[:i + 2])
        exported = client.export_session(ids[5])
    files = [state_dir / file_name(s) for s in ids]
    data = [f.read_bytes() for f in files]
    files[0].write_bytes(data[0][:-100] + bytes([data[0][-100] ^ 1]) + data[0][-99:])  # one bit flipped
    files[1].write_bytes(data[1][: len(data[1]) // 2])  # truncated
    files[2].write_bytes(b"GARBAGE!" + data[2][8:])  # not our magic
    files[3].write_bytes(data[3][:8] + (VERSION + 7).to_bytes(4, "little") + data[3][12:])  # a future version
    os.replace(files[4], state_dir / file_name("someone-else"))  # a file under another session's name
    (state_dir / "leftover.snap.tmp").write_bytes(data[5][:40])  # a write a crash interrupted
    foreign = decode(data[5])  # intact files that this server cannot continue: left in place, not loaded
    for session_id, changes in (("other-model", {"model": "no-such-model"}),
                                ("other-weights", {"checkpoint_sha256": "0" * 64})):
        snap = SessionSnapshot(**{**vars(foreign), "session_id": session_id, **changes})
        (state_dir / file_name(session_id)).write_bytes(encode(snap))

    caplog.set_level(logging.WARNING, logger="ntm_serve.server.state.snapshots")
    with ServerThread(config) as server, NTMClient(server.target) as client:
        errors = {reason: server.server.metrics.registry.get_sample_value(
            "ntm_snapshot_errors_total", {"reason": reason}) for reason in
            ("checksum", "truncated", "magic", "version", "format", "model", "checkpoint")}
        assert errors == {"checksum": 1, "truncated": 1, "magic": 1, "version": 1, "format": 1, "model": 1,
                          "checkpoint": 1}
        assert _restored(server) == 1
        for session_id in ids[:5]:
            with pytest.raises(grpc.RpcError) as err:
                client.get_session(session_id)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.get_session(ids[5]).steps == 7
        _same_state(client.export_session(ids[5]).tensors, exported.tensors)
        rest = client.step(ids[5], inputs[7:]).outputs
    np.testing.assert_array_equal(rest, offline.run(inputs)["outputs"][7:])
    reported = [r for r in caplog.records if r.getMessage() == "snapshot not loaded"]
    assert sorted(r.reason for r in reported) == sorted(errors)  # type: ignore[attr-defined]
    assert all(r.detail for r in reported)  # type: ignore[attr-defined]
    names = {p.name for p in state_dir.iterdir()}
    assert {f.name + ".corrupt" for f in files[:4]} <= names  # moved aside, never read again
    assert file_name("other-model") in names and file_name("other-weights") in names  # kept for when they fit
    assert "leftover.snap.tmp" not in names


def test_state_dir_has_one_server_and_write_failures_do_not_stop_serving(copy_dir: Path, tmp_path: Path,
                                                                         rng: np.random.Generator) -> None:
    config = service_config(copy_dir, state_dir=tmp_path / "state", snapshot_interval_s=3600.0)
    with ServerThread(config) as server, NTMClient(server.target) as client:
        with pytest.raises(StateDirError, match="in use by another server"):
            ServerThread(service_config(copy_dir, state_dir=tmp_path / "state")).start()
        session = client.create_session("copy").session_id
        snapshotter = server.server.keeping.snapshotter
        real_write = snapshotter.store.write

        def full_disk(items):
            raise OSError(28, "No space left on device")

        snapshotter.store.write = full_disk
        try:
            assert snapshotter.run_pass() == 0
        finally:
            snapshotter.store.write = real_write
        errors = server.server.metrics.registry.get_sample_value("ntm_snapshot_errors_total", {"reason": "write"})
        assert errors == 1
        assert client.step(session, bits(rng, 3)).steps == 3  # still serving
        assert snapshotter.run_pass() == 1  # the session stayed dirty and is written now
        assert snapshotter.run_pass() == 0  # and then it is clean


# --- kill -9 of a real server process -------------------------------------------------------------------


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _start(copy_dir: Path, state_dir: Path, log_path: Path) -> tuple[subprocess.Popen, int, int]:
    port_file = log_path.with_suffix(".ports")
    argv = [sys.executable, "-m", "ntm_serve.server", "--models", str(copy_dir), "--host", "127.0.0.1", "--port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--port-file", str(port_file), "--provider", "cpu",
            "--state-dir", str(state_dir), "--snapshot-interval-s", "0.3", "--log-level", "INFO"]
    with open(log_path, "a") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    ports = wait_port_file(port_file, process, log_path, 90)
    return process, ports["port"], ports["metrics_port"]


def test_kill_9_loses_at_most_the_steps_since_the_last_snapshot(copy_dir: Path, tmp_path: Path, offline: Offline,
                                                               rng: np.random.Generator) -> None:
    state_dir, log_path = tmp_path / "state", tmp_path / "server.log"
    inputs = [bits(rng, 60) for _ in range(3)]
    saved, sent = 25, 45  # steps certainly snapshotted; steps sent before the kill
    process, port, metrics_port = _start(copy_dir, state_dir, log_path)
    try:
        with NTMClient(f"127.0.0.1:{port}", timeout=60) as client:
            ids = [client.create_session("copy").session_id for _ in inputs]
            for session_id, x in zip(ids, inputs, strict=True):
                for first in range(0, saved, 5):
                    client.step(session_id, x[first:first + 5])
            passes = _metric(metrics_port, "ntm_snapshot_passes_total")
            deadline = time.monotonic() + 30
            while _metric(metrics_port, "ntm_snapshot_passes_total") < passes + 2:  # a whole pass after the steps
                assert time.monotonic() < deadline, "no snapshot pass:\n" + log_path.read_text()
                time.sleep(0.05)
            for session_id, x in zip(ids, inputs, strict=True):
                for first in range(saved, sent, 5):
                    client.step(session_id, x[first:first + 5])
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    process, port, _ = _start(copy_dir, state_dir, log_path)  # the kernel freed the dead server's lock
    try:
        with NTMClient(f"127.0.0.1:{port}", timeout=60) as client:
            for session_id, x in zip(ids, inputs, strict=True):
                steps = client.get_session(session_id).steps
                assert saved <= steps <= sent and steps % 5 == 0, steps  # whole requests, none before the snapshot
                _same_state(client.export_session(session_id).tensors, offline.run(x[:steps])["state"])
                rest = client.step(session_id, x[steps:]).outputs
                np.testing.assert_array_equal(rest, offline.run(x)["outputs"][steps:])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
