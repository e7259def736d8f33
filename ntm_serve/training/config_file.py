"""Training configs as TOML files (`python -m ntm_serve.training --config configs/copy.toml`), and overrides.

A config names one run whole. Its layout (every key optional but the task; configs/*.toml spell out the rest):

    model = "ntm"            # or "lstm_baseline"
    seed = 0
    out = "runs/copy"        # default: runs/<task>
    init_from = ""           # warm start from a trained model folder

    [task]
    name = "copy"            # a built-in task; or data = "PATH" (a data set), or file = "mytask.py" (a task file)
    max_length = 0           # ... and the task's own options (a data set's: validation = 0.1 or "PATH")

    [ntm]                    # the NTM's shape (NTMConfig; input and output sizes come from the task)
    [baseline]               # the LSTM baseline's (model = "lstm_baseline")
    [optimizer]              # name ("adam" | "rmsprop"), lr, momentum (RMSprop), clip (gradient norm)
    [budget]                 # sequences, batch_size, eval_every, eval_sequences, stop_below, select_on
    [run]                    # device, threads, compile: how it runs, not what it learns

`apply_override(doc, "optimizer.lr", "3e-4")` sets one key (the command line's `--set KEY=VALUE` and its named
flags); `train_config(doc)` turns the document into a TrainConfig, refusing unknown sections and keys.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ntm_serve.training.train import TrainConfig

# TrainConfig field -> (section, key); "" is the top level. [ntm], [baseline] and the task's options are whole
# sections of their own.
FIELDS: dict[str, tuple[str, str]] = {
    "model": ("", "model"), "seed": ("", "seed"), "out": ("", "out"), "init_from": ("", "init_from"),
    "task": ("task", "name"), "data": ("task", "data"), "task_file": ("task", "file"),
    "optimizer": ("optimizer", "name"), "lr": ("optimizer", "lr"), "momentum": ("optimizer", "momentum"),
    "clip": ("optimizer", "clip"),
    "sequences": ("budget", "sequences"), "batch_size": ("budget", "batch_size"),
    "eval_every": ("budget", "eval_every"), "eval_sequences": ("budget", "eval_sequences"),
    "stop_below": ("budget", "stop_below"), "select_on": ("budget", "select_on"),
    "device": ("run", "device"), "threads": ("run", "threads"), "compile": ("run", "compile"),
    "memory_rows": ("", "memory_rows"),
}
SECTIONS = ("task", "ntm", "baseline", "optimizer", "budget", "run")
TASK_SOURCES = ("name", "data", "file")  # the [task] keys that say where the task comes from


class ConfigError(ValueError):
    """A config file or override that does not describe a run; the message names the key."""


def read(path: str | Path) -> dict[str, Any]:
    """A config file as a document (nested dicts)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"config {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path}: not valid TOML ({err})") from err


def parse_value(text: str) -> Any:
    """A command-line value as TOML (3e-4, true, "x", [1, 2]); anything that is not TOML is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set `section.key` (or a top-level key) in the document."""
    parts = key.split(".")
    if len(parts) > 2 or not all(parts):
        raise ConfigError(f"override {key!r}: want KEY or SECTION.KEY, e.g. optimizer.lr")
    if len(parts) == 2:
        if parts[0] not in SECTIONS:
            raise ConfigError(f"override {key!r}: no section {parts[0]!r}; sections: {', '.join(SECTIONS)}")
        section = doc.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]} is a value in this config, not a section")
        section[parts[1]] = value
    else:
        doc[parts[0]] = value


def set_task_source(doc: dict[str, Any], key: str, value: str) -> None:
    """Name the task's source (a built-in name, a data set or a task file), replacing the config's."""
    task = doc.setdefault("task", {})
    for other in TASK_SOURCES:
        task.pop(other, None)
    task[key] = value


def train_config(doc: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a document describes; unknown sections and keys, and values of the wrong type, are errors.
    Without `out`, the run goes to runs/<task> (runs/<task>_lstm_baseline for the baseline)."""
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    defaults = asdict(TrainConfig())
    values: dict[str, Any] = {}
    for name, (section, key) in FIELDS.items():
        where = doc if not section else doc.get(section, {})
        if not isinstance(where, dict):
            raise ConfigError(f"{section} must be a section ([{section}]), got {where!r}")
        if key in where:
            values[name] = _typed(f"{section + '.' if section else ''}{key}", where.pop(key), defaults[name])
    task = doc.pop("task", {})
    values["task_options"] = task
    for name in ("ntm", "baseline"):
        section = doc.pop(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{name} must be a section ([{name}]), got {section!r}")
        values[name] = section
    for section in ("optimizer", "budget", "run"):
        left = doc.pop(section, {})
        if left:
            known = sorted(k for s, k in FIELDS.values() if s == section)
            raise ConfigError(f"[{section}] has unknown key(s) {sorted(left)}; known: {', '.join(known)}")
    if doc:
        top = sorted(k for s, k in FIELDS.values() if not s)
        raise ConfigError(f"unknown top-level key(s) or section(s) {sorted(doc)}; top-level keys: {', '.join(top)}; "
                          f"sections: {', '.join(SECTIONS)}")
    cfg = TrainConfig(**values)
    if not cfg.out:
        cfg.out = default_out(cfg)
    return cfg


def default_out(cfg: TrainConfig) -> str:
    """runs/<task> (never a shipped models/ folder): the built-in's name, or the data set's or task file's stem."""
    name = cfg.task or Path(cfg.data.rstrip("/")).stem or Path(cfg.task_file).stem or cfg.task_file
    return f"runs/{name}{'_lstm_baseline' if cfg.model == 'lstm_baseline' else ''}"


def _typed(key: str, value: Any, default: Any) -> Any:
    """`value` as the type of the field's default (an int is a float where a float is wanted)."""
    want = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key} must be {want.__name__}, got {value!r} ({type(value).__name__})")


def to_toml(cfg: TrainConfig) -> str:
    """The config as a TOML document that `train_config` reads back to an equal TrainConfig."""
    top: list[str] = []
    sections: dict[str, list[str]] = {s: [] for s in SECTIONS}
    data = asdict(cfg)
    for name, (section, key) in FIELDS.items():
        if section == "task" and not data[name]:
            continue  # only the task's one source
        (sections[section] if section else top).append(f"{key} = {_value(data[name])}")
    sections["task"] += [f"{k} = {_value(v)}" for k, v in cfg.task_options.items()]
    sections["ntm"] = [f"{k} = {_value(v)}" for k, v in cfg.ntm.items()]
    sections["baseline"] = [f"{k} = {_value(v)}" for k, v in cfg.baseline.items()]
    parts = ["\n".join(top)]
    parts += [f"[{name}]\n" + "\n".join(lines) for name, lines in sections.items()
              if lines or name not in ("ntm", "baseline")]
    return "\n\n".join(parts) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return ("-" if v < 0 else "") + ("inf" if math.isinf(v) else "nan")
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(item) for item in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")


__all__ = ["ConfigError", "apply_override", "default_out", "parse_value", "read", "set_task_source", "to_toml",
           "train_config"]
