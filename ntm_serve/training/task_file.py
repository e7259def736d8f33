"""A task as a file of Python: `--task-file mytask.py` (or a module path, `--task-file mypackage.tasks`).

The file defines `make_task(**options) -> TaskSpec`, exactly as the built-in tasks do (ntm_serve/training/tasks.py):
its keyword arguments are the task's options (the config's [task] section), and the spec's `sample(generator,
batch)` returns a `Batch` of inputs (T, B, I) and targets (T_out, B, O), compared with the last T_out outputs.
For batches better drawn fresh than stored; see docs/training.md for an example.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ntm_serve.training.tasks import TaskSpec, build_task

ENTRY = "make_task"


def load_module(source: str) -> ModuleType:
    """The task's module: a .py file (by path) or an importable module (by dotted name)."""
    if source.endswith(".py") or "/" in source or "\\" in source:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"task file {source}: no such file")
        name = f"ntm_task_{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"task file {source}: cannot be loaded as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(source)
    except ImportError as err:
        raise ValueError(f"task module {source}: cannot import it ({err})") from err


def task_from_file(source: str, options: dict[str, Any]) -> TaskSpec:
    """The file's `make_task(**options)`, checked to be a TaskSpec."""
    module = load_module(source)
    factory = getattr(module, ENTRY, None)
    if not callable(factory):
        raise ValueError(f"task file {source}: defines no {ENTRY}(**options) -> TaskSpec")
    spec = build_task(factory, source, options)
    if not isinstance(spec, TaskSpec):
        raise ValueError(f"task file {source}: {ENTRY}() returned {type(spec).__name__}, not a TaskSpec")
    return spec
