"""`ntm-demo one_shot`: a session learns classes it never saw (5 or 15), from one streamed episode.

The episode (held-out digit classes from the model's class split, characters of the held-out scripts for a glyph
model such as one_shot_glyphs, or fresh random prototypes for one_shot_synthetic) is streamed into a fresh session
one step at a time; each step's prediction is printed before its label arrives (the label comes one step late).
Then, after `--later-s` seconds, a new stream of new samples of the same classes goes into the same session: the
memory kept what it learned, no weights changed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ntm_serve.client.sdk import NTMClient, StepOutput
from ntm_serve.demos import one_shot_np


def accuracy_table(probabilities: np.ndarray, labels: np.ndarray) -> str:
    """Accuracy at the 1st, 2nd, 3rd, 5th and 10th sight of a class (counts in brackets)."""
    hits, seen = one_shot_np.accuracy_by_instance(probabilities, labels)
    cells = [f"{n}: {100 * hits[n - 1] / seen[n - 1]:.0f}% ({int(seen[n - 1])})" if seen[n - 1] else f"{n}: -"
             for n in one_shot_np.INSTANCES]
    overall = 100 * np.mean(probabilities.argmax(-1) == labels)
    return "accuracy by instance: " + ", ".join(cells) + f"; all steps {overall:.0f}%"


def stream_steps(client: NTMClient, session_id: str, inputs: np.ndarray) -> list[StepOutput]:
    """One stream, one request per step (what a live client does), attention included."""
    return list(client.stream_session(session_id, (row[None] for row in inputs), return_attention=True))


def print_steps(episode: one_shot_np.Episode, probabilities: np.ndarray) -> None:
    instance = one_shot_np.instance_index(episode.labels)
    print(f"{'t':>3}  {'seen':>4}  {'label':>5}  {'predicted':>9}  {'p':>5}")
    for t, (y, p) in enumerate(zip(episode.labels, probabilities, strict=True)):
        mark = "ok" if p.argmax() == y else "WRONG"
        print(f"{t:>3}  {instance[t]:>4}  {y:>5}  {p.argmax():>9}  {p.max():5.2f}  {mark}")


def run(client: NTMClient, model: str, task: str, seed: int, later_s: float, later_samples: int,
        plot: Path | None) -> int:
    info = {m.name: m for m in client.list_models()}.get(model)
    if info is None:
        print(f"error: the server has no model {model!r}")
        return 1
    if info.output_activation != "softmax":
        print(f"error: model {model!r} does not output label probabilities (output_activation "
              f"{info.output_activation or 'sigmoid'!r})")
        return 1
    rng = np.random.default_rng(seed)
    split = json.loads(info.task_metadata).get("class_split", {}) if info.task_metadata else {}
    if task == "one_shot_synthetic":
        episode = one_shot_np.synthetic_episode(rng)
    elif "test_scripts" in split:  # a glyph model: characters of the scripts it never saw
        images, names = one_shot_np.glyph_test_characters(info.task_metadata)
        episode = one_shot_np.glyph_episode(rng, images, names, info.output_size)
        print(f"held-out scripts of {model}: {len(split['test_scripts'])} ({', '.join(split['test_scripts'])}), "
              f"{len(names)} characters")
    else:
        classes = one_shot_np.test_classes(info.task_metadata)
        episode = one_shot_np.digit_episode(rng, classes)
        print(f"held-out classes of {model}: {len(classes)} (digits {sorted({d for d, _ in classes})}, all turns)")
    if episode.inputs.shape[1] != info.input_size:
        print(f"error: model {model!r} takes {info.input_size} inputs per step, this episode has "
              f"{episode.inputs.shape[1]} (task {info.task!r}: pick the demo task of the model)")
        return 1
    print("this episode's labels: " + ", ".join(f"{y} = {name}" for y, name in enumerate(episode.classes)))
    session = client.create_session(model, ttl_seconds=max(600.0, 2 * later_s))
    outputs = stream_steps(client, session.session_id, episode.inputs)
    probabilities = np.concatenate([o.outputs for o in outputs])  # (T, C)
    print_steps(episode, probabilities)
    print(accuracy_table(probabilities, episode.labels))
    if plot is not None:
        from ntm_serve.plots import episode_figure  # matplotlib only (no torch)

        read = np.concatenate([o.read_weights for o in outputs])  # (T, R, N)
        write = np.concatenate([o.write_weights for o in outputs])  # (T, W, N)
        correct = int((probabilities.argmax(-1) == episode.labels).sum())
        episode_figure(episode.inputs[:, : episode.features], episode.labels, probabilities, read, write, plot,
                       f"{model} via the NTM service: {correct}/{len(episode.labels)} correct")
        print(f"wrote {plot}")

    print(f"\nwaiting {later_s:g} s; the session keeps its memory on the server ...")
    time.sleep(later_s)
    later = one_shot_np.more_samples(rng, episode, later_samples)
    outputs = stream_steps(client, session.session_id, later.inputs)  # a new stream, the same session
    probabilities = np.concatenate([o.outputs for o in outputs])
    correct = probabilities.argmax(-1) == later.labels
    print(f"{later_samples} new samples of the same classes, new stream, same session "
          f"(now at {outputs[-1].steps} steps):")
    print("  true:      " + " ".join(str(y) for y in later.labels))
    print("  predicted: " + " ".join(str(p) for p in probabilities.argmax(-1)))
    print(f"  {int(correct.sum())}/{later_samples} correct ({100 * correct.mean():.0f}%); "
          f"chance is {100 / episode.classes_count:.0f}%")
    client.delete_session(session.session_id)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--later-s", type=float, default=5.0,
                   help="one_shot: seconds before the second stream of new samples (60 for 'a minute later')")
    p.add_argument("--later-samples", type=int, default=20, help="one_shot: new samples in the second stream")
