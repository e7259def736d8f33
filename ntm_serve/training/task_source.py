"""Where a run's task comes from: a built-in task by name, a data set on disk, or a task file; one way in for the
trainer, the evaluator and the exporter."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ntm_serve.training.tasks import BUILTIN, TaskSpec, build_task, get_task, legacy_options


def resolve_task(task: str = "", data: str = "", task_file: str = "", options: dict[str, Any] | None = None
                 ) -> TaskSpec:
    """The TaskSpec of exactly one of a built-in `task`, a `data` set or a `task_file`, with its options; its first
    batch checked against its sizes (so a broken task fails before anything is written)."""
    options = dict(options or {})
    given = [name for name, value in (("task", task), ("data", data), ("task_file", task_file)) if value]
    if len(given) != 1:
        raise ValueError(f"name exactly one of a built-in task ({', '.join(sorted(BUILTIN))}), --data PATH or "
                         f"--task-file FILE; got {', '.join(given) or 'none'}")
    if data:
        from ntm_serve.training.dataset import dataset_task  # numpy file handling only when a data set is named

        spec = build_task(functools.partial(dataset_task, data), data, options)
    elif task_file:
        from ntm_serve.training.task_file import task_from_file

        spec = task_from_file(task_file, options)
    else:
        spec = get_task(task, **options)
    check_spec(spec)
    return spec


def check_spec(spec: TaskSpec) -> None:
    """A batch of two from the spec's sampler has the shapes the spec declares."""
    batch = spec.sample(torch.Generator().manual_seed(0), 2)
    inputs, targets = batch.inputs, batch.targets
    problems = []
    if inputs.dim() != 3 or inputs.shape[1:] != (2, spec.input_size):
        problems.append(f"inputs {tuple(inputs.shape)}, want (T, 2, {spec.input_size})")
    if targets.dim() != 3 or targets.shape[1:] != (2, spec.output_size) or targets.shape[0] > inputs.shape[0]:
        problems.append(f"targets {tuple(targets.shape)}, want (T_out <= T, 2, {spec.output_size})")
    if batch.mask is not None and batch.mask.shape != targets.shape[:2]:
        problems.append(f"mask {tuple(batch.mask.shape)}, want (T_out, 2)")
    if problems:
        raise ValueError(f"task {spec.name}: its sampler's batch of 2 has " + "; ".join(problems))


def task_of(meta: dict[str, Any]) -> TaskSpec:
    """The task a checkpoint was trained on, options included (its metadata's task and training config). A data
    set or task file must still be where the run found it."""
    train_config = meta.get("train_config", {})
    options = legacy_options(train_config)
    if train_config.get("data") or train_config.get("task_file"):
        return resolve_task(data=train_config.get("data", ""), task_file=train_config.get("task_file", ""),
                            options=options)
    return get_task(meta["task"], **options)


def task_facts(meta: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """(encoding, output activation, task metadata) of a checkpoint, for its graphs: from the checkpoint itself when
    it records them (data sets, task files, models built with ntm_serve.training.api), else the built-in task's."""
    if "output_activation" in meta:
        return meta.get("encoding", ""), meta["output_activation"], meta.get("task_metadata") or None
    spec = get_task(meta["task"])
    encoding = meta.get("encoding") or spec.encoding
    return encoding, spec.output_activation, {k: meta.get(k, v) for k, v in spec.metadata.items()} or None
