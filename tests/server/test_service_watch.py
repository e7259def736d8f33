"""WatchSession through a real server on loopback: a frame after every step that shows the session exactly, every
k-th step, heads only, a slow watcher that gets frames dropped and counted (never blocking the steps), who may watch,
and how a watch ends (deleted, expired, the server stopping, moved to another replica)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import Offline, bits, service_config

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tensors import to_array
from ntm_serve.client.sdk import NTMClient, step_request
from ntm_serve.server.server import ServerThread

FULL = ("memory", "read_vectors", "read_weights", "write_weights")


class Watch:
    """A WatchSession call read on a thread of its own: frames in a queue, then how it ended."""

    def __init__(self, client: NTMClient, session_id: str, **options: object) -> None:
        self.call = client.watch_session(session_id, **options)  # type: ignore[arg-type]
        self.frames: queue.Queue[ntm_pb2.WatchFrame | None] = queue.Queue()
        self.end: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for frame in self.call:
                self.frames.put(frame)
        except grpc.RpcError as err:
            self.end = err
        finally:
            self.frames.put(None)

    def next(self, timeout: float = 20) -> ntm_pb2.WatchFrame:
        frame = self.frames.get(timeout=timeout)
        assert frame is not None, f"the watch ended: {self.end}"
        return frame

    def until(self, steps: int) -> ntm_pb2.WatchFrame:
        """The frame of step `steps` (earlier ones skipped)."""
        while (frame := self.next()).steps < steps:
            pass
        return frame

    def rest(self, timeout: float = 20) -> list[ntm_pb2.WatchFrame]:
        """Every frame until the watch ends."""
        out = []
        while (frame := self.frames.get(timeout=timeout)) is not None:
            out.append(frame)
        return out

    def ended(self, code: grpc.StatusCode, words: str) -> None:
        assert self.end is not None and self.end.code() == code, self.end
        assert words in (self.end.details() or ""), self.end.details()


def _metric(server: ServerThread, name: str, model: str = "copy") -> float:
    return server.server.metrics.registry.get_sample_value(name, {"model": model}) or 0.0


def _eventually(check: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    return bool(check())  # type: ignore[operator]


def _accounted(frames: list[ntm_pb2.WatchFrame], start: int) -> None:
    """Each frame's `dropped` is exactly the steps between it and the one before (every step counted once)."""
    steps = start
    for frame in frames:
        assert frame.steps - steps == frame.dropped + 1, (frame.steps, steps, frame.dropped)
        steps = frame.steps


def test_a_frame_after_every_step_shows_the_session_exactly(client: NTMClient, offline: Offline,
                                                            rng: np.random.Generator) -> None:
    sid = client.create_session("copy").session_id
    watch = Watch(client, sid)
    first = watch.next()
    assert first.snapshot and first.steps == 0 and not first.HasField("inputs") and first.session_id == sid
    assert np.array_equal(to_array(first.memory, "memory"), offline.initial["memory"][0])
    x = bits(rng, 6)
    for t in range(6):
        out = client.step(sid, x[t:t + 1]).outputs
        frame = watch.next()  # the frame is made before the answer leaves: waiting for it means none is dropped
        assert (frame.steps, frame.dropped, frame.snapshot) == (t + 1, 0, False)
        assert np.array_equal(to_array(frame.inputs, "inputs"), x[t])
        assert np.array_equal(to_array(frame.outputs, "outputs"), out[0])
        reference = offline.run(x[:t + 1])["state"]
        for name in FULL:
            np.testing.assert_allclose(to_array(getattr(frame, name), name), reference[name], atol=1e-6, err_msg=name)
    client.delete_session(sid)
    assert watch.rest() == []
    watch.ended(grpc.StatusCode.NOT_FOUND, "deleted")


def test_a_many_step_request_accounts_for_every_step(server: ServerThread, client: NTMClient,
                                                     rng: np.random.Generator) -> None:
    """Steps of one request follow each other without a pause: frames the watcher had no time for are dropped,
    and the next frame says how many; the last step's frame always arrives."""
    dropped_before = _metric(server, "ntm_watch_frames_dropped_total")
    sid = client.create_session("copy").session_id
    client.step(sid, bits(rng, 3))
    watch = Watch(client, sid)
    assert watch.next().steps == 3
    client.step(sid, bits(rng, 40))
    client.delete_session(sid)
    frames = watch.rest()
    assert frames and frames[-1].steps == 43
    _accounted(frames, 3)
    assert _metric(server, "ntm_watch_frames_dropped_total") - dropped_before == sum(f.dropped for f in frames)
    watch.ended(grpc.StatusCode.NOT_FOUND, "deleted")


def test_every_kth_step(client: NTMClient, rng: np.random.Generator) -> None:
    sid = client.create_session("copy").session_id
    watch = Watch(client, sid, every=3)
    assert watch.next().snapshot
    x = bits(rng, 10)
    got = []
    for t in range(10):
        client.step(sid, x[t:t + 1])
        if (t + 1) % 3 == 0:
            got.append(watch.next())
    client.delete_session(sid)
    assert watch.rest() == []
    assert [(f.steps, f.dropped) for f in got] == [(3, 0), (6, 0), (9, 0)]
    assert np.array_equal(to_array(got[1].inputs, "inputs"), x[5])


def test_heads_only(client: NTMClient, offline: Offline, rng: np.random.Generator) -> None:
    sid = client.create_session("copy").session_id
    watch = Watch(client, sid, heads_only=True)
    snapshot = watch.next()
    assert snapshot.HasField("read_weights") and not snapshot.HasField("memory")
    x = bits(rng, 2)
    client.step(sid, x[:1])
    frame = watch.next()
    assert frame.HasField("read_weights") and frame.HasField("write_weights")
    assert not any(frame.HasField(name) for name in ("memory", "read_vectors", "inputs", "outputs"))
    reference = offline.run(x[:1])["state"]
    for name in ("read_weights", "write_weights"):
        np.testing.assert_allclose(to_array(getattr(frame, name), name), reference[name], atol=1e-6)
    client.delete_session(sid)


def test_a_watcher_that_does_not_read_never_holds_up_the_steps(server: ServerThread,
                                                                rng: np.random.Generator) -> None:
    """The watcher's transport window is small (no BDP probing) and it reads nothing while 300 steps stream
    through: they all run at once, its frames are dropped and counted, and it gets the newest one in the end."""
    channel = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
    with NTMClient(server.target, timeout=60, channel=channel) as slow, NTMClient(server.target, timeout=60) as fast:
        sid = fast.create_session("copy").session_id
        call = slow.watch_session(sid)
        assert next(call).snapshot
        x = bits(rng, 300)
        began = time.monotonic()
        answers = list(fast.stream(step_request(sid, x[t:t + 1]) for t in range(300)))
        assert len(answers) == 300 and time.monotonic() - began < 30
        fast.delete_session(sid)
        frames = []
        with pytest.raises(grpc.RpcError) as ended:
            for frame in call:
                frames.append(frame)
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND
    assert frames[-1].steps == 300
    _accounted(frames, 0)
    assert sum(f.dropped for f in frames) > 200  # a 64 KiB window holds a few 10 KB frames, not 300


@pytest.fixture(scope="module")
def guarded(copy_dir: Path) -> Iterator[ServerThread]:
    config = service_config(copy_dir, auth_tokens=("alice", "bob"), admin_tokens=("root",))
    with ServerThread(config) as running:
        yield running


def test_only_the_owner_or_an_admin_may_watch(guarded: ServerThread, rng: np.random.Generator) -> None:
    with NTMClient(guarded.target, token="alice", timeout=30) as alice, \
            NTMClient(guarded.target, token="bob", timeout=30) as bob, \
            NTMClient(guarded.target, token="root", timeout=30) as root, \
            NTMClient(guarded.target, token="mallory", timeout=30) as stranger:
        sid = alice.create_session("copy").session_id
        for other, code in ((bob, grpc.StatusCode.PERMISSION_DENIED), (stranger, grpc.StatusCode.UNAUTHENTICATED)):
            with pytest.raises(grpc.RpcError) as refused:
                next(other.watch_session(sid))
            assert refused.value.code() == code, refused.value
        with pytest.raises(grpc.RpcError) as no_admin_elsewhere:
            root.create_session("copy")  # an admin token watches; it is no session token
        assert no_admin_elsewhere.value.code() == grpc.StatusCode.UNAUTHENTICATED
        watching = Watch(root, sid)
        own = Watch(alice, sid)
        assert watching.next().snapshot and own.next().snapshot
        assert _metric(guarded, "ntm_watchers") == 2
        alice.step(sid, bits(rng, 1))
        assert watching.next().steps == own.next().steps == 1
        own.call.cancel()
        assert own.rest() == []
        assert _eventually(lambda: _metric(guarded, "ntm_watchers") == 1)  # the cancelled one is gone
        alice.delete_session(sid)
        assert watching.rest() == []
        watching.ended(grpc.StatusCode.NOT_FOUND, "deleted")
        assert _eventually(lambda: _metric(guarded, "ntm_watchers") == 0)
        with pytest.raises(grpc.RpcError) as gone:
            next(alice.watch_session(sid))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND and "deleted" in (gone.value.details() or "")


def test_bad_requests_are_refused(client: NTMClient) -> None:
    for request, code in ((ntm_pb2.WatchSessionRequest(session_id=""), grpc.StatusCode.INVALID_ARGUMENT),
                          (ntm_pb2.WatchSessionRequest(session_id="nope"), grpc.StatusCode.NOT_FOUND),
                          (ntm_pb2.WatchSessionRequest(session_id="x", every=-2), grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as refused:
            next(client.stub.WatchSession(request, timeout=10))
        assert refused.value.code() == code, (request, refused.value)


def test_a_watch_ends_when_its_session_expires_and_when_the_server_stops(copy_dir: Path) -> None:
    with ServerThread(service_config(copy_dir, reap_interval_s=0.1)) as running, \
            NTMClient(running.target, timeout=30) as client:
        short = client.create_session("copy", ttl_seconds=0.5).session_id
        expiring = Watch(client, short)
        assert expiring.next().snapshot
        assert expiring.rest(timeout=10) == []  # watching does not keep it alive
        expiring.ended(grpc.StatusCode.NOT_FOUND, "expired")
        kept = client.create_session("copy").session_id
        stopping = Watch(client, kept)
        assert stopping.next().snapshot
        running.stop(grace=5)
        assert stopping.rest(timeout=10) == []
        stopping.ended(grpc.StatusCode.UNAVAILABLE, "stopping")


def test_a_watch_ends_aborted_when_the_session_moves_to_another_replica(copy_dir: Path, store_url: str,
                                                                         rng: np.random.Generator) -> None:
    def replica(name: str) -> ServerThread:
        return ServerThread(service_config(copy_dir, store_url=store_url, replica_name=name, metrics_port=-1))

    with replica("a") as a, replica("b") as b, NTMClient(a.target, timeout=30, retry=None) as ca, \
            NTMClient(b.target, timeout=30, retry=None) as cb:
        sid = ca.create_session("copy").session_id
        watch = Watch(ca, sid)  # a takes it over to watch it
        assert watch.next().steps == 0
        ca.step(sid, bits(rng, 2), expect_steps=0)
        assert watch.until(2).steps == 2
        cb.step(sid, bits(rng, 1), expect_steps=2)  # b takes it over
        assert ca.get_session(sid).steps == 3  # a finds its copy stale: lets it go, and takes it back afresh
        assert watch.rest() == []
        watch.ended(grpc.StatusCode.ABORTED, "moved")
        again = Watch(cb, sid)  # watched where it is now
        assert again.next().steps == 3
        cb.delete_session(sid)
        assert again.rest() == []
        again.ended(grpc.StatusCode.NOT_FOUND, "deleted")
