"""The client: its demo (table and bit-error count, against an offline run of the same example) and its retry policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import Offline

from ntm_serve.client.retry import RetryPolicy
from ntm_serve.client.sdk import NTMClient
from ntm_serve.demos import tasks_np
from ntm_serve.demos.__main__ import main, render
from ntm_serve.plots import used_rows
from ntm_serve.server.server import ServerThread


def test_render_counts_bit_errors() -> None:
    example = tasks_np.copy(np.random.default_rng(0), length=3)  # 7 steps, targets on the last 3
    outputs = np.zeros((7, 8), np.float32)
    outputs[4:] = example.targets
    outputs[5, 2] = 1.0 - outputs[5, 2]  # one wrong bit
    outputs[6] = np.where(example.targets[2] > 0.5, 0.51, 0.49)  # right, barely
    table, errors = render(example, outputs)
    assert errors == 1
    lines = table.splitlines()
    assert len(lines) == 1 + 7 and lines[0].split()[:4] == ["t", "input", "target", "output"]
    assert lines[6].endswith("  1") and not lines[7].endswith("  1")


@pytest.mark.parametrize(("task", "args"), [("copy", ["--length", "6"]), ("priority_sort", [])])
def test_demo_against_the_server(server: ServerThread, offline: Offline, capsys: pytest.CaptureFixture[str],
                                 task: str, args: list[str]) -> None:
    models = {"copy": "copy", "priority_sort": "priority_sort"}
    if task != "copy" and not (offline.folder.parent / task / "step.onnx").is_file():
        pytest.skip(f"no {task} model among the test models")
    assert main([task, "--target", server.target, "--model", models[task], "--seed", "3", *args]) == 0
    printed = capsys.readouterr().out
    example = tasks_np.TASKS[task](np.random.default_rng(3), **({"length": 6} if task == "copy" else {}))
    if task == "copy":
        _, expected = render(example, offline.run(example.inputs)["outputs"])
        assert f"bit errors: {expected} of {example.targets.size}" in printed
    assert len(printed.splitlines()) == 2 + len(example.inputs) + 1


def test_demo_reports_server_errors(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["copy", "--target", server.target, "--model", "no-such-model"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_plot_rows_are_the_heads_path() -> None:
    """--plot crops the memory to the rows the heads visited, as one piece even across the wrap from N-1 to 0."""
    weights = np.zeros((5, 2, 128), np.float32)  # (T, H, N)
    weights[0, 0, 40], weights[3, 1, 44], weights[4, 0, 41] = 1.0, 0.6, 0.3
    np.testing.assert_array_equal(used_rows(weights, margin=2), np.arange(38, 47))
    weights[:] = 0.0
    weights[1, 0, 126], weights[2, 1, 1] = 1.0, 0.9  # a path over 126, 127, 0, 1
    np.testing.assert_array_equal(used_rows(weights, margin=0), [126, 127, 0, 1])
    np.testing.assert_array_equal(used_rows(np.zeros((2, 1, 8)), margin=1), np.arange(8))  # none visited: all rows
    np.testing.assert_array_equal(used_rows(np.full((1, 1, 8), 0.125), margin=1), np.arange(8))  # never wider than N


def test_demo_plot_draws_the_used_rows(server: ServerThread, tmp_path: Path) -> None:
    out = tmp_path / "copy.png"
    assert main(["copy", "--target", server.target, "--length", "5", "--seed", "1", "--plot", str(out)]) == 0
    assert out.stat().st_size > 0


class _Failed(grpc.RpcError):
    """A call's failure with a given status, as grpc raises it (code() and details())."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"failed with {self._code.name}"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED])
def test_a_call_with_expect_steps_is_retried_after_what_a_stop_or_a_move_ends_it_with(code: grpc.StatusCode) -> None:
    """The retry policy of `step`/`step_packed` with expect_steps: UNAVAILABLE and ABORTED (draining, down, moved)
    and CANCELLED (a stopping server's transport resets calls as it closes) are retried, with the outage counted."""
    outcomes: list[object] = [_Failed(code), _Failed(code), "answer"]

    def call() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with NTMClient("127.0.0.1:1", retry=RetryPolicy(attempts=3, initial_s=0.0, max_s=0.0)) as client:
        assert client._retrying(call, "session") == "answer"
        assert client.stats.retries == 2 and len(client.stats.outages) == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED])
def test_a_refusal_a_retry_cannot_fix_is_raised_at_once(code: grpc.StatusCode) -> None:
    calls = []

    def call() -> object:
        calls.append(1)
        raise _Failed(code)

    with NTMClient("127.0.0.1:1", retry=RetryPolicy(attempts=3, initial_s=0.0, max_s=0.0)) as client, \
            pytest.raises(grpc.RpcError) as err:
        client._retrying(call, "session")
    assert err.value.code() == code and len(calls) == 1 and client.stats.retries == 0



def test_a_resumable_stream_keeps_at_most_replay_depth_requests_unanswered(server: ServerThread,
                                                                           offline: Offline) -> None:
    """A cluster keeps the answers of a session's last REPLAY_DEPTH requests; the client's resumable stream reads no
    more chunks than that ahead of its answers, so any request it has to send again is on record. Seen from outside:
    a slow reader of the answers, and the chunks the client has taken."""
    import time

    from ntm_serve.api.replay import REPLAY_DEPTH

    x = np.random.default_rng(3).integers(0, 2, (3 * REPLAY_DEPTH, 2, 9)).astype(np.float32)
    taken = 0

    def chunks() -> Iterator[np.ndarray]:
        nonlocal taken
        for chunk in x:
            taken += 1
            yield chunk

    ahead, outputs = [], []
    with NTMClient(server.target, timeout=30) as client:
        sid = client.create_session("copy").session_id
        for k, output in enumerate(client.stream_session(sid, chunks(), start_steps=0), start=1):
            time.sleep(0.02)  # the sender runs ahead as far as it may
            ahead.append(taken - k)
            outputs.append(output.outputs)
    assert max(ahead) == REPLAY_DEPTH and len(outputs) == len(x)  # once answered, 8 more are out, never 9
    np.testing.assert_array_equal(np.concatenate(outputs), offline.run(x.reshape(-1, 9))["outputs"])
