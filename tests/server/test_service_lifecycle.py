"""Model lifecycle on a real server (issue 14): versions side by side, loaded and unloaded at run time (polling
and ModelAdmin), every session pinned to the weights it started with.

Version 1 is the shipped copy model (its graphs, symlinked); version 2 is the same model with perturbed
weights, really exported (same ONNX contract, another checkpoint digest). Folders appear and disappear
by renames, as an operator is told to ship them. Outputs are compared bit for bit with offline
onnxruntime runs of each version's own graph files.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import helpers
import numpy as np
import pytest
from helpers import Offline, bits, service_config

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.client.admin import ModelAdminClient
from ntm_serve.client.admin import main as admin_main
from ntm_serve.client.sdk import NTMClient, packed_request
from ntm_serve.contract import GRAPH_FILES
from ntm_serve.server.config import load_config
from ntm_serve.server.registry import weights_missing
from ntm_serve.server.repository import scan, version_number
from ntm_serve.server.server import ServerThread

POLL_S = 0.05  # the test servers look at their models directory 20 times a second
DEADLINE_S = 120.0  # generous: a model load on the busy 2-core box


# --- fixtures -------------------------------------------------------------------------------------------


def _link_graphs(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in GRAPH_FILES.values():
        (target / name).symlink_to(source / name)
    return target


def _digest(folder: Path) -> str:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "step.onnx"), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map["ntm.checkpoint_sha256"]


@pytest.fixture(scope="module")
def v1(models_dir: Path) -> Path:
    return models_dir / "copy"


@pytest.fixture(scope="module")
def v2(v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The copy model with every weight nudged: real, different weights under the same contract."""
    import torch

    from ntm_serve.export.exporter import export_folder
    from ntm_serve.training.checkpoint import load_model, save_model

    model, meta = load_model(v1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("copy_v2")
    save_model(model, folder, meta)
    export_folder(folder)
    return folder


@pytest.fixture(scope="module")
def offline_v2(v2: Path) -> Offline:
    return Offline(v2)


def until(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> object:
    return helpers.until(condition, what, timeout)


def versions(client: NTMClient, name: str = "copy") -> dict[int, ntm_pb2.ModelInfo]:
    return {m.version: m for m in client.list_models() if m.name == name}


def metric(server: ServerThread, name: str, labels: dict[str, str]) -> float:
    return server.server.metrics.registry.get_sample_value(name, labels) or 0.0


def stream_chunks(client: NTMClient, session_id: str, chunks: Iterator[np.ndarray]) -> list[np.ndarray]:
    return [out.outputs for out in client.stream_session(session_id, chunks)]


def paused(chunks: list[np.ndarray], at: int, gate: threading.Event, reached: threading.Event) -> Iterator[np.ndarray]:
    """The chunks, stopping after `at` of them until `gate` opens (so the stream spans a change of versions)."""
    for i, chunk in enumerate(chunks):
        if i == at:
            reached.set()
            assert gate.wait(DEADLINE_S)
        yield chunk


# --- the layout -----------------------------------------------------------------------------------------


def test_version_numbers() -> None:
    assert [version_number(t) for t in ("1", "12", "0", "01", "+3", ".tmp-2", "x", "١")] == \
        [1, 12, None, None, None, None, None, None]


def test_scan_flat_versioned_mixed_and_ignored(v1: Path, tmp_path: Path) -> None:
    _link_graphs(v1, tmp_path / "flat")  # the original layout: version 1
    _link_graphs(v1, tmp_path / "mixed")  # flat graphs (version 1) plus a 2/ beside them
    _link_graphs(v1, tmp_path / "mixed" / "2")
    _link_graphs(v1, tmp_path / "both" / "1")  # 1/ wins over flat graphs
    for name in GRAPH_FILES.values():
        (tmp_path / "both" / name).symlink_to(v1 / name)
    _link_graphs(v1, tmp_path / "staged" / ".tmp-3")  # dot folders are never versions
    (tmp_path / "staged" / "3").mkdir()  # an integer folder is a version even when empty (refused later)
    (tmp_path / "baseline").mkdir()  # no graphs, no versions: not a model
    (tmp_path / "baseline" / "checkpoint.pt").write_bytes(b"x")
    found = [(f.name, f.version, f.path.relative_to(tmp_path).as_posix()) for f in scan(tmp_path)]
    assert found == [("both", 1, "both/1"), ("flat", 1, "flat"), ("mixed", 1, "mixed"), ("mixed", 2, "mixed/2"),
                     ("staged", 3, "staged/3")]


# --- item 4: versions side by side, v1 unloaded after its sessions end ----------------------------------


def test_v1_streams_on_while_v2_arrives_and_v1_goes_when_its_sessions_end(
        v1: Path, v2: Path, offline: Offline, offline_v2: Offline, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    for name in GRAPH_FILES.values():  # version 1 in the original flat layout: upgrading a flat model in place
        (repo / "copy").mkdir(parents=True, exist_ok=True)
        (repo / "copy" / name).symlink_to(v1 / name)
    digest1, digest2 = _digest(v1), _digest(v2)
    assert digest1 != digest2
    rng = np.random.default_rng(14)
    with ServerThread(service_config(repo, model_poll_interval_s=POLL_S)) as server, \
            NTMClient(server.target, timeout=DEADLINE_S) as client:
        assert {v: m.checkpoint_sha256 for v, m in versions(client).items()} == {1: digest1}
        old = [client.create_session("copy") for _ in range(3)]
        assert {(s.version, s.checkpoint_sha256) for s in old} == {(1, digest1)}
        inputs = [bits(rng, 40) for _ in old]
        chunks = [[x[i:i + 4] for i in range(0, 40, 4)] for x in inputs]
        gate, reached = threading.Event(), [threading.Event() for _ in old]
        results: dict[int, list[np.ndarray]] = {}

        def run(i: int) -> None:
            results[i] = stream_chunks(client, old[i].session_id, paused(chunks[i], 5, gate, reached[i]))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(old))]
        for thread in threads:
            thread.start()
        assert all(r.wait(DEADLINE_S) for r in reached)  # every v1 stream is half way
        _link_graphs(v2, repo / "copy" / ".staging")
        (repo / "copy" / ".staging").rename(repo / "copy" / "2")  # what an operator does (README)
        until(lambda: 2 in versions(client), "the poller to load version 2")
        new = client.create_session("copy")  # the newest from now on
        assert (new.version, new.checkpoint_sha256) == (2, digest2)
        x_new = bits(rng, 30)
        got_new = client.step(new.session_id, x_new).outputs
        gate.set()  # the v1 streams go on, across the arrival of v2
        for thread in threads:
            thread.join(DEADLINE_S)
        for i in range(len(old)):  # bit for bit an offline run of version 1's own graphs
            np.testing.assert_array_equal(np.concatenate(results[i]), offline.run(inputs[i])["outputs"])
        np.testing.assert_array_equal(got_new, offline_v2.run(x_new)["outputs"])
        assert not np.array_equal(offline.run(x_new)["outputs"], got_new)  # the weights really differ
        pinned = client.create_session("copy", version=1)  # an explicit version while both are served
        assert pinned.version == 1

        # Version 1's graphs go away (flat files removed): no new sessions on it, its sessions go on.
        for name in GRAPH_FILES.values():
            (repo / "copy" / name).unlink()
        until(lambda: versions(client)[1].unloading, "version 1 to be unloading")
        with pytest.raises(grpc.RpcError) as err:
            client.create_session("copy", version=1)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "being unloaded" in err.value.details()
        more = bits(rng, 6)
        out = client.step(old[0].session_id, more).outputs
        state = offline.run(inputs[0])["state"]
        np.testing.assert_array_equal(out, offline.run(more, state)["outputs"])
        for session in [*old, pinned]:
            assert 1 in versions(client)  # still there while one of its sessions lives
            client.delete_session(session.session_id)
        until(lambda: 1 not in versions(client), "version 1 to be unloaded after its last session ended")
        assert set(versions(client)) == {2}
        # Counted once its batcher has stopped, which is after the version left the registry (ListModels).
        until(lambda: metric(server, "ntm_model_unloads_total", {"model": "copy", "how": "drained"}) == 1,
              "the drained unload to be counted")
        assert metric(server, "ntm_model_loads_total", {"model": "copy"}) == 2
        np.testing.assert_array_equal(client.step(new.session_id, x_new).outputs,
                                      offline_v2.run(x_new, offline_v2.run(x_new)["state"])["outputs"])


# --- item 4: a bad v3 is refused while v1 and v2 keep serving ------------------------------------------


def test_broken_versions_are_refused_while_the_others_keep_serving(
        v1: Path, v2: Path, offline: Offline, offline_v2: Offline, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "models"
    _link_graphs(v1, repo / "copy" / "1")
    _link_graphs(v2, repo / "copy" / "2")
    rng = np.random.default_rng(3)
    caplog.set_level(logging.ERROR, logger="ntm_serve.server.lifecycle")
    with ServerThread(service_config(repo, model_control=True, model_poll_interval_s=POLL_S)) as server, \
            NTMClient(server.target, timeout=DEADLINE_S) as client, \
            ModelAdminClient(server.target, timeout=DEADLINE_S) as admin:
        s1, s2 = client.create_session("copy", version=1), client.create_session("copy")
        assert (s1.version, s2.version) == (1, 2)
        x1, x2 = bits(rng, 12), bits(rng, 12)
        out1, out2 = [client.step(s1.session_id, x1[:6]).outputs], [client.step(s2.session_id, x2[:6]).outputs]

        def stage(version: int, make: Callable[[Path], None]) -> None:
            staging = repo / "copy" / f".tmp-{version}"
            staging.mkdir()
            make(staging)
            staging.rename(repo / "copy" / str(version))

        def missing(folder: Path) -> None:  # sequence.onnx and initial_state.onnx never arrived
            (folder / "step.onnx").symlink_to(v2 / "step.onnx")

        def corrupt(folder: Path) -> None:  # a graph cut short: not a readable ONNX file
            for name in GRAPH_FILES.values():
                (folder / name).write_bytes((v2 / name).read_bytes()[: 1000 if name == "step.onnx" else None])

        def contract(folder: Path) -> None:  # readable graphs that break the contract (step <-> sequence)
            (folder / "step.onnx").symlink_to(v2 / "sequence.onnx")
            (folder / "sequence.onnx").symlink_to(v2 / "step.onnx")
            (folder / "initial_state.onnx").symlink_to(v2 / "initial_state.onnx")

        def duplicate(folder: Path) -> None:  # version 1's weights again under another number
            for name in GRAPH_FILES.values():
                (folder / name).symlink_to(v1 / name)

        cases = {3: (missing, "missing"), 4: (corrupt, "corrupt"), 5: (contract, "contract"),
                 6: (duplicate, "conflict")}
        for version, (make, _) in cases.items():
            stage(version, make)
        failed = until(lambda: {s.version: s for s in admin.status("copy") if s.state == ntm_pb2.VersionStatus.FAILED}
                       if len([s for s in admin.status("copy") if s.state == ntm_pb2.VersionStatus.FAILED]) == 4
                       else None, "four refusals")
        for version, (_, reason) in cases.items():
            assert metric(server, "ntm_model_load_failures_total", {"model": "copy", "reason": reason}) == 1, reason
            record = next(r for r in caplog.records if r.getMessage() == "model version refused"
                          and getattr(r, "version", None) == version)
            assert record.reason == reason and failed[version].message  # type: ignore[attr-defined]
        assert "missing" in failed[3].message and "sequence.onnx" in failed[3].message
        assert "served already as copy version 1" in failed[6].message
        assert sorted(versions(client)) == [1, 2]  # nothing else changed
        with pytest.raises(grpc.RpcError) as err:  # asking for it by hand says why
            admin.load("copy", 3)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "missing" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            admin.load("copy", 9)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        out1.append(client.step(s1.session_id, x1[6:]).outputs)
        out2.append(client.step(s2.session_id, x2[6:]).outputs)
        np.testing.assert_array_equal(np.concatenate(out1), offline.run(x1)["outputs"])
        np.testing.assert_array_equal(np.concatenate(out2), offline_v2.run(x2)["outputs"])
        assert client.create_session("copy").version == 2  # the newest that loaded

        # A fixed folder (its files change) is looked at again and loads.
        for name in GRAPH_FILES.values():
            (repo / "copy" / "3" / name).unlink(missing_ok=True)
            (repo / "copy" / "3" / name).symlink_to(v2 / name)
        (repo / "copy" / "3" / "step.onnx").unlink()  # the step graph last, as a copy would finish
        (repo / "copy" / "3" / "step.onnx").symlink_to(v1 / "step.onnx")
        until(lambda: any(s.version == 3 and s.state == ntm_pb2.VersionStatus.FAILED and "different checkpoints"
                          in s.message for s in admin.status("copy")), "version 3 re-examined")


# --- admin: forced unload, ownership of the admin API ----------------------------------------------------


def test_admin_unload_waits_for_sessions_or_ends_them_when_forced(v1: Path, v2: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    _link_graphs(v1, repo / "copy" / "1")
    _link_graphs(v2, repo / "copy" / "2")
    with ServerThread(service_config(repo, model_control=True, model_poll_interval_s=0)) as server, \
            NTMClient(server.target, timeout=DEADLINE_S) as client, \
            ModelAdminClient(server.target, timeout=DEADLINE_S) as admin:
        session = client.create_session("copy", version=1)
        client.step(session.session_id, bits(np.random.default_rng(0), 3))
        (status,) = admin.unload("copy", 1)
        assert (status.state, status.live_sessions) == (ntm_pb2.VersionStatus.UNLOADING, 1)
        assert client.get_session(session.session_id).steps == 3  # still served
        (status,) = admin.load("copy", 1)[:1]  # changed my mind: it takes sessions again
        assert status.state == ntm_pb2.VersionStatus.LOADED
        (status,) = admin.unload("copy", 1, force=True)
        assert status.state == ntm_pb2.VersionStatus.UNLOADED
        for call in (lambda: client.get_session(session.session_id),
                     lambda: client.step(session.session_id, bits(np.random.default_rng(0), 1))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "unloaded by force" in err.value.details() and "copy version 1" in err.value.details()
        assert sorted(versions(client)) == [2]
        assert metric(server, "ntm_model_unloads_total", {"model": "copy", "how": "forced"}) == 1
        with pytest.raises(grpc.RpcError) as err:
            admin.unload("copy", 1)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        (status,) = admin.load("copy", 1)[:1]  # polling is off: the admin call loads it back
        assert (status.version, status.state) == (1, ntm_pb2.VersionStatus.LOADED)
        assert client.create_session("copy", version=1).version == 1


def test_a_packed_stream_lives_through_a_forced_unload_of_its_version(v1: Path, v2: Path, offline: Offline,
                                                                      tmp_path: Path) -> None:
    """One client ticks four v1 sessions on a StreamPackedSteps stream without pause while an admin unloads v1 by
    force: every tick before is exact, every tick after is refused whole with each entry NOT_FOUND "unloaded by
    force" (never INTERNAL, never a broken stream), and the stream goes on serving v2 sessions."""
    repo = tmp_path / "models"
    _link_graphs(v1, repo / "copy" / "1")
    _link_graphs(v2, repo / "copy" / "2")
    rng = np.random.default_rng(5)
    inputs = np.stack([bits(rng, 4000) for _ in range(4)])  # (E, T, I)
    with ServerThread(service_config(repo, model_control=True, model_poll_interval_s=0)) as server, \
            NTMClient(server.target, timeout=DEADLINE_S) as client, \
            ModelAdminClient(server.target, timeout=DEADLINE_S) as admin:
        old = [client.create_session("copy", version=1).session_id for _ in range(4)]
        new = [client.create_session("copy", version=2).session_id for _ in range(4)]
        unloaded = threading.Event()

        def ticks() -> Iterator[ntm_pb2.PackedStepRequest]:
            for t in range(inputs.shape[1]):
                if t == 30:
                    threading.Thread(target=lambda: (admin.unload("copy", 1, force=True), unloaded.set())).start()
                if unloaded.is_set() and t % 10 == 0:  # keep going a while after the unload, then stop
                    yield packed_request(new, inputs[:, t:t + 1], request_id=f"new{t}")
                    if t > 200:
                        return
                yield packed_request(old, inputs[:, t:t + 1], request_id=str(t))

        answers = list(client.stream_packed(ticks()))
        mine = [a for a in answers if not a.request_id.startswith("new")]
        served = [a for a in mine if a.error is None]
        refused = [a for a in mine if a.error is not None]
        assert served and refused and [a.request_id for a in mine] == [str(t) for t in range(len(mine))]
        assert all(a.error.code == grpc.StatusCode.NOT_FOUND for a in refused), refused[0].error
        assert all("unloaded by force" in e.message for a in refused for e in a.error.entries)
        assert all(a.error is None for a in mine[:len(served)])  # served ticks, then refused ones: none after
        got = np.concatenate([a.outputs for a in served], axis=1)  # (E, served, O)
        for e in range(4):
            np.testing.assert_array_equal(got[e], offline.run(inputs[e, :len(served)])["outputs"])
        on_v2 = [a for a in answers if a.request_id.startswith("new")]
        assert on_v2 and all(a.error is None for a in on_v2)


def test_admin_tokens(v1: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    _link_graphs(v1, repo / "copy" / "1")
    with ServerThread(service_config(repo, auth_tokens=("user",), admin_tokens=("root",))) as server:
        for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), ("user", grpc.StatusCode.UNAUTHENTICATED)):
            with ModelAdminClient(server.target, token=token) as admin, pytest.raises(grpc.RpcError) as err:
                admin.status()
            assert err.value.code() == code
        with ModelAdminClient(server.target, token="root") as admin:
            assert [s.version for s in admin.status()] == [1]
        with NTMClient(server.target, token="root") as client, pytest.raises(grpc.RpcError) as err:
            client.list_models()  # an admin token is not a session token
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with ServerThread(service_config(repo, auth_tokens=("user",))) as server, \
            ModelAdminClient(server.target, token="user") as admin, pytest.raises(grpc.RpcError) as err:
        admin.status()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "--admin-tokens" in err.value.details()


def test_model_control_is_off_by_default_and_a_refused_forced_unload_ends_nothing(
        v1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A default server (no tokens, no --model-control) refuses every ModelAdmin call PERMISSION_DENIED, saying
    how to turn it on; a caller's `unload --force` leaves the live session stepping."""
    repo = tmp_path / "models"
    _link_graphs(v1, repo / "copy" / "1")
    rng = np.random.default_rng(3)
    with ServerThread(service_config(repo, model_poll_interval_s=0)) as server, \
            NTMClient(server.target, timeout=DEADLINE_S) as client, \
            ModelAdminClient(server.target, timeout=DEADLINE_S) as admin:
        session = client.create_session("copy").session_id
        client.step(session, bits(rng, 3))
        for call in (admin.status, lambda: admin.load("copy", 1), lambda: admin.unload("copy", 1, force=True)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--model-control" in err.value.details() and "NTM_MODEL_CONTROL=1" in err.value.details()
        assert admin_main(["--target", server.target, "unload", "copy", "--version", "1", "--force"]) == 1
        assert capsys.readouterr().err.startswith("PERMISSION_DENIED: ModelAdmin is off")
        assert client.step(session, bits(rng, 2)).steps == 5  # the session lives on, on version 1
        assert [m.version for m in client.list_models()] == [1]
        assert metric(server, "ntm_errors_total", {"method": "UnloadModel", "code": "PERMISSION_DENIED"}) == 2


@pytest.mark.parametrize(("argv", "env"), [(["--model-control"], {}), ([], {"NTM_MODEL_CONTROL": "1"})])
def test_model_control_by_flag_or_environment(v1: Path, tmp_path: Path, argv: list[str], env: dict[str, str]) -> None:
    """--model-control or NTM_MODEL_CONTROL=1 turns ModelAdmin on for every caller (admin tokens are the other
    way: test_admin_tokens); with session tokens it needs admin tokens, or a session token would manage models."""
    repo = tmp_path / "models"
    _link_graphs(v1, repo / "copy" / "1")
    base = ["--models", str(repo), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--provider", "cpu",
            "--model-poll-interval-s", "0"]
    assert not load_config(base, env={}).model_control_on
    config = load_config(base + argv, env=env)
    assert config.model_control and config.model_control_on
    with ServerThread(config) as server, ModelAdminClient(server.target, timeout=DEADLINE_S) as admin:
        assert [(s.version, s.state) for s in admin.status()] == [(1, ntm_pb2.VersionStatus.LOADED)]
        (status,) = admin.unload("copy", 1)
        assert status.state == ntm_pb2.VersionStatus.UNLOADED
    with pytest.raises(ValueError, match="model_control with auth_tokens needs admin_tokens"):
        load_config(base + argv + ["--auth-tokens", "user"], env=env)
    assert load_config(base + argv + ["--auth-tokens", "user", "--admin-tokens", "root"], env=env).model_control_on


# --- item 3: no silent change of weights: imports and restarts -----------------------------------------


def test_missing_weights_are_refused_by_digest_retryably_in_a_cluster() -> None:
    digest = "c0ffee" * 10 + "abcd"
    alone, replica = weights_missing("copy", digest), weights_missing("copy", digest, retryable=True)
    assert alone.code == grpc.StatusCode.FAILED_PRECONDITION and digest in alone.message
    assert replica.code == grpc.StatusCode.UNAVAILABLE and digest in replica.message and "retry" in replica.message


def test_import_runs_only_on_its_own_weights(v1: Path, v2: Path, offline: Offline, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    _link_graphs(v1, repo / "copy" / "7")  # the same weights under another version number
    _link_graphs(v2, repo / "copy" / "8")
    rng = np.random.default_rng(5)
    x = bits(rng, 10)
    with ServerThread(service_config(repo, model_poll_interval_s=0)) as server, \
            NTMClient(server.target, timeout=DEADLINE_S) as client:
        source = client.create_session("copy", version=7)
        first = client.step(source.session_id, x[:4]).outputs
        saved = client.export_session(source.session_id)
        assert (saved.version, saved.checkpoint_sha256) == (7, _digest(v1))
        moved = client.import_session(saved)  # lands on version 7, not on the newest (8)
        assert (moved.version, moved.checkpoint_sha256, moved.steps) == (7, _digest(v1), 4)
        rest = client.step(moved.session_id, x[4:]).outputs
        np.testing.assert_array_equal(np.concatenate([first, rest]), offline.run(x)["outputs"])
        info = client.get_session(moved.session_id, include_state=True)
        assert info.state is not None and info.state.checkpoint_sha256 == _digest(v1) and info.version == 7
        foreign = type(saved)(saved.model, saved.steps, saved.tensors, "ab" * 32, saved.version)
        with pytest.raises(grpc.RpcError) as err:
            client.import_session(foreign)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ab" * 32 in err.value.details()


def test_restart_after_a_version_was_removed(v1: Path, v2: Path, offline: Offline, offline_v2: Offline,
                                             tmp_path: Path) -> None:
    repo, state = tmp_path / "models", tmp_path / "state"
    _link_graphs(v1, repo / "copy" / "1")
    _link_graphs(v2, repo / "copy" / "2")
    digest1 = _digest(v1)
    rng = np.random.default_rng(9)
    x1, x2 = bits(rng, 10), bits(rng, 10)
    config = service_config(repo, state_dir=state, model_poll_interval_s=POLL_S)
    with ServerThread(config) as server, NTMClient(server.target, timeout=DEADLINE_S) as client:
        s1, s2 = client.create_session("copy", version=1), client.create_session("copy")
        first1, first2 = client.step(s1.session_id, x1[:5]).outputs, client.step(s2.session_id, x2[:5]).outputs
        saved1 = client.export_session(s1.session_id)
    (repo / "copy" / "1").rename(tmp_path / "v1-aside")  # version 1 is gone while the server is down
    with ServerThread(config) as server, NTMClient(server.target, timeout=DEADLINE_S) as client:
        assert sorted(versions(client)) == [2]
        for call in (lambda: client.get_session(s1.session_id), lambda: client.step(s1.session_id, x1[5:]),
                     lambda: client.import_session(saved1)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
            assert digest1 in err.value.details()  # it names the weights it needs
        np.testing.assert_array_equal(np.concatenate([first2, client.step(s2.session_id, x2[5:]).outputs]),
                                      offline_v2.run(x2)["outputs"])
        assert metric(server, "ntm_snapshot_errors_total", {"reason": "checkpoint"}) == 1
        # Its weights come back (the folder, under any number): so does the session, exactly where it was.
        (tmp_path / "v1-aside").rename(repo / "copy" / "5")
        until(lambda: 5 in versions(client), "the poller to load the old weights as version 5")
        info = client.get_session(s1.session_id)
        assert (info.version, info.checkpoint_sha256, info.steps) == (5, digest1, 5)
        rest = client.step(s1.session_id, x1[5:]).outputs
        np.testing.assert_array_equal(np.concatenate([first1, rest]), offline.run(x1)["outputs"])
