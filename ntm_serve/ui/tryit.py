"""The inspector's "try it" panel: one example of a model's task, run through the gRPC service as any client would
(ntm_serve.client.NTMClient with the caller's token), one step per call, slowly enough to watch.

The examples are the demo client's (ntm_serve/demos/tasks_np.py, one_shot_np.py); the score is the demo's too:
bit errors over the outputs of the last T_out steps, or for one-shot episodes the labels predicted right.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ntm_serve.client.sdk import NTMClient
from ntm_serve.demos import one_shot_np, tasks_np

TRY_TTL_S = 900.0  # a tried session stays this long after its last step, to be looked at
WAIT_FOR_WATCHER_S = 3.0  # the page watches the new session before its first step; a plain client does not wait
MAX_DELAY_S = 2.0


@dataclass(frozen=True)
class TryExample:
    task: str
    inputs: np.ndarray  # (T, I)
    targets: np.ndarray  # (T_out, O): compared with the outputs of the last T_out steps
    kind: str  # "bits" (sigmoid outputs, thresholded at 0.5) or "labels" (softmax over classes)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def first(self) -> int:
        """The step whose output is compared with targets[0]."""
        return len(self.inputs) - len(self.targets)


TASKS = (*tasks_np.TASKS, "one_shot", "one_shot_synthetic")


def example_for(task: str, task_metadata: str, seed: int) -> TryExample:
    """One example of `task` (a model's ModelInfo.task; one_shot draws its classes from the model's held-out ones)."""
    rng = np.random.default_rng(seed)
    if task in tasks_np.TASKS:
        example = tasks_np.TASKS[task](rng)
        return TryExample(task, example.inputs, example.targets, "bits", example.params)
    if task == "one_shot":
        classes = one_shot_np.test_classes(task_metadata)
        episode = one_shot_np.digit_episode(rng, classes)
    elif task == "one_shot_synthetic":
        episode = one_shot_np.synthetic_episode(rng)
    else:
        raise ValueError(f"no try-it example for task {task!r} (known: {', '.join(TASKS)})")
    return TryExample(task, episode.inputs, episode.targets, "labels", {"classes": list(episode.classes)})


def score(example: TryExample, outputs: np.ndarray) -> dict[str, Any]:
    """outputs (T, O) -> the demo's score: bit errors, or right labels (and those after a class's first sight)."""
    compared = outputs[example.first:]  # (T_out, O)
    if example.kind == "bits":
        wrong = int(np.abs((compared > 0.5).astype(np.float32) - example.targets).sum())
        return {"bit_errors": wrong, "bits": int(example.targets.size)}
    labels = example.targets.argmax(-1)  # (T,)
    right = compared.argmax(-1) == labels
    later = one_shot_np.instance_index(labels) > 1  # seen before: what one-shot learning is about
    return {"correct": int(right.sum()), "total": len(labels), "correct_after_first": int(right[later].sum()),
            "after_first": int(later.sum())}


class TryRun:
    """One example through the service: `create` (the session), then `run` on a thread of its own, one step per
    call with `delay_s` between them. `status` and `result` are read by the page while it runs."""

    def __init__(self, client: Callable[[], NTMClient], model: str, example: TryExample, owner: str | None,
                 delay_s: float, watched: Callable[[str], bool]) -> None:
        self._client_factory = client
        self.model = model
        self.example = example
        self.owner = owner
        self.delay_s = min(max(delay_s, 0.0), MAX_DELAY_S)
        self._watched = watched
        self.session_id = ""
        self.status = "created"
        self.steps = 0
        self.result: dict[str, Any] = {}
        self.error = ""
        self.stop = threading.Event()
        self._client: NTMClient | None = None

    def create(self) -> str:
        """The new session (raises grpc.RpcError as a client would see it)."""
        self._client = self._client_factory()
        try:
            self.session_id = self._client.create_session(self.model, ttl_seconds=TRY_TTL_S).session_id
        except BaseException:
            self._client.close()
            raise
        return self.session_id

    def run(self) -> None:
        """Step the example through, one step per call; then score it."""
        assert self._client is not None
        self.status = "running"
        deadline = time.monotonic() + WAIT_FOR_WATCHER_S
        while not self._watched(self.session_id) and time.monotonic() < deadline and not self.stop.is_set():
            time.sleep(0.02)
        outputs = []
        try:
            with self._client as client:
                for x in self.example.inputs:
                    if self.stop.wait(self.delay_s):
                        self.status, self.error = "failed", "stopped: the server is stopping"
                        return
                    outputs.append(client.step(self.session_id, x[None]).outputs[0])
                    self.steps += 1
        except Exception as err:  # grpc.RpcError and the like: shown on the page
            self.status = "failed"
            self.error = f"{err.code().name}: {err.details()}" if hasattr(err, "code") else str(err)
            return
        self.result = score(self.example, np.stack(outputs))
        self.status = "done"

    def report(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "model": self.model, "task": self.example.task, "status": self.status,
                "steps": self.steps, "total": len(self.example.inputs), "result": self.result, "error": self.error}
