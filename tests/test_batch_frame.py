"""The batcher's frame (service/batch_frame.py): each request's inputs in order, its outputs in its own rows,
finished requests found, and partial results carried into a rebuilt frame."""

from __future__ import annotations

import numpy as np

from service.batch_frame import BatchFrame
from service.jobs import Progress, StepJob
from service.sessions import SessionRecord

SHAPES = {"read_weights": (1, 4), "write_weights": (1, 4)}


def _progress(slot: int, steps: int, attention: bool = False) -> Progress:
    session = SessionRecord(f"s{slot}", "m", "o", 60.0, 0.0, 0.0, slot=slot)
    inputs = np.arange(steps * 2, dtype=np.float32).reshape(steps, 2) + 100 * slot  # (T, I=2)
    return Progress.start(StepJob(session, inputs, attention, lambda result: None), 3, SHAPES)


def _outputs(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, :1], 3, axis=1)  # (B, O=3): a stand-in "model" whose output names its input


def test_steps_gather_inputs_scatter_outputs_and_find_the_finished() -> None:
    progress = [_progress(0, 1), _progress(1, 3), _progress(2, 2)]
    frame = BatchFrame(progress, 3)
    assert frame.slots.tolist() == [0, 1, 2] and not frame.slots.flags.writeable
    x = frame.inputs_now()
    np.testing.assert_array_equal(x, [p.job.inputs[0] for p in progress])
    assert frame.record(_outputs(x), None, None).tolist() == [0]
    frame.sync()
    assert [p.t for p in progress] == [1, 1, 1] and progress[0].finished
    np.testing.assert_array_equal(progress[0].outputs, [[0.0] * 3])

    # Request 0 leaves and request 3 joins: a new frame carries 1 and 2 where they stand.
    rest = [progress[1], progress[2], _progress(3, 2)]
    frame = BatchFrame(rest, 3)
    assert not frame.holds([p.job for p in progress])
    assert frame.holds([p.job for p in rest])
    x = frame.inputs_now()
    np.testing.assert_array_equal(x, [rest[0].job.inputs[1], rest[1].job.inputs[1], rest[2].job.inputs[0]])
    assert frame.record(_outputs(x), None, None).tolist() == [1]
    frame.sync()
    frame = BatchFrame([rest[0], rest[2]], 3)  # request 2 has finished and leaves
    x = frame.inputs_now()
    assert frame.record(_outputs(x), None, None).tolist() == [0, 1]
    frame.sync()
    for p in rest:
        assert p.finished
        np.testing.assert_array_equal(p.outputs, _outputs(p.job.inputs))  # every step's output, in order


def test_attention_is_kept_for_the_requests_that_asked() -> None:
    asked, plain = _progress(0, 2, attention=True), _progress(1, 2)
    frame = BatchFrame([asked, plain], 3)
    for step in range(2):
        reads = np.full((2, 1, 4), step, np.float32)  # (B, R, N)
        frame.record(_outputs(frame.inputs_now()), reads, reads + 10)
    frame.sync()
    assert asked.read_weights is not None and asked.write_weights is not None
    np.testing.assert_array_equal(asked.read_weights[:, 0, 0], [0, 1])
    np.testing.assert_array_equal(asked.write_weights[:, 0, 0], [10, 11])
    assert plain.read_weights is None and plain.write_weights is None
