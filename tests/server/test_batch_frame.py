"""The batcher's frame (ntm_serve/server/batch_frame.py): each request's inputs in order, its outputs in its own rows,
finished requests found and taken out, joiners appended, and results kept when the arena is renewed."""

from __future__ import annotations

import numpy as np

from ntm_serve.server.batch_frame import BatchFrame
from ntm_serve.server.jobs import Progress, StepJob
from ntm_serve.server.sessions import SessionRecord

SHAPES = {"read_weights": (1, 4), "write_weights": (1, 4)}


def _progress(slot: int, steps: int, attention: bool = False) -> Progress:
    session = SessionRecord(f"s{slot}", "m", "o", 60.0, 0.0, 0.0, slot=slot)
    inputs = np.arange(steps * 2, dtype=np.float32).reshape(steps, 2) + 100 * slot  # (T, I=2)
    return Progress.start(StepJob(session, inputs, attention, lambda result: None), 3, SHAPES)


def _model(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, :1], 3, axis=1)  # (B, O=3): a stand-in "model" whose output names its input


def _step(frame: BatchFrame) -> list[int]:
    """One step of the stand-in model; the finished requests leave. Returns their slots."""
    finished = frame.record(_model(frame.inputs_now()), None, None)
    return [p.job.session.slot for p in frame.remove(finished)] if len(finished) else []


def test_requests_join_step_and_leave_with_every_output_in_order() -> None:
    frame = BatchFrame(2, 3, rows=8)  # a small arena: it is renewed on the way
    first = [_progress(0, 1), _progress(1, 3), _progress(2, 2)]
    frame.add(first)
    assert frame.slots.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(frame.inputs_now(), [p.job.inputs[0] for p in first])
    assert _step(frame) == [0] and first[0].finished
    assert frame.holds([p.job for p in first[1:]] + [_progress(9, 1).job])  # the rest, then any joiners
    assert not frame.holds([p.job for p in first])

    late = _progress(3, 4)  # 8 + 4 rows: the arena is renewed, partial outputs carried over
    frame.add([late])
    assert frame.slots.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(frame.inputs_now(), [first[1].job.inputs[1], first[2].job.inputs[1],
                                                       late.job.inputs[0]])
    assert _step(frame) == [2]
    assert _step(frame) == [1]
    assert _step(frame) == []
    assert _step(frame) == [3] and len(frame) == 0
    for p in [*first, late]:
        assert p.finished
        np.testing.assert_array_equal(p.outputs, _model(p.job.inputs))  # every step's output, in order


def test_attention_is_kept_for_the_requests_that_asked() -> None:
    asked, plain = _progress(0, 2, attention=True), _progress(1, 2)
    frame = BatchFrame(2, 3)
    frame.add([asked, plain])
    assert frame.attention
    for step in range(2):
        reads = np.full((2, 1, 4), step, np.float32)  # (B, R, N)
        finished = frame.record(_model(frame.inputs_now()), reads, reads + 10)
    frame.remove(finished)
    assert asked.read_weights is not None and asked.write_weights is not None
    np.testing.assert_array_equal(asked.read_weights[:, 0, 0], [0, 1])
    np.testing.assert_array_equal(asked.write_weights[:, 0, 0], [10, 11])
    assert plain.read_weights is None and plain.write_weights is None and not frame.attention


def test_clear_after_a_failure_leaves_each_request_where_it_stood() -> None:
    a, b = _progress(0, 3), _progress(1, 3)
    frame = BatchFrame(2, 3)
    frame.add([a, b])
    _step(frame)
    frame.clear()
    assert (a.t, b.t, len(frame)) == (1, 1, 0)
