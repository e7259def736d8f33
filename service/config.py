"""Every server setting, by flag and by environment variable (flag wins), with its default and meaning.

`SETTINGS` is the single list the argument parser, `ServiceConfig` and the settings table in
docs/service.md (checked by a test) are built from.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class Setting:
    name: str  # ServiceConfig field; flag --name-with-dashes; env NTM_NAME
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "NTM_" + self.name.upper()


@dataclass(frozen=True)
class ServiceConfig:
    models: Path = Path("models")
    host: str = "[::]"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    provider: str = "auto"
    device_id: int = 0
    intra_op_threads: int = 1
    batching: bool = True
    max_batch: int = 64
    max_wait_ms: float = 1.0
    max_sessions: int = 10_000
    max_sessions_per_owner: int = 0
    default_ttl_s: float = 3600.0
    max_ttl_s: float = 86_400.0
    max_steps: int = 1000
    max_message_bytes: int = 4 * 1024 * 1024
    max_queue: int = 10_000
    stream_window: int = 256
    reap_interval_s: float = 1.0
    grace_s: float = 10.0
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    log_level: str = "INFO"
    log_format: str = "json"

    def __post_init__(self) -> None:
        positive = ("intra_op_threads", "max_batch", "max_sessions", "max_steps", "max_message_bytes",
                    "max_queue", "stream_window")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "max_sessions_per_owner", "grace_s", "device_id"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("default_ttl_s", "max_ttl_s", "reap_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535 or not -1 <= self.metrics_port <= 65535:
            raise ValueError("ports must be in 0..65535 (metrics_port -1 turns metrics off)")
        if self.provider not in ("auto", "cuda", "cpu"):
            raise ValueError(f"provider must be auto, cuda or cpu, got {self.provider!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be json or text, got {self.log_format!r}")


SETTINGS: tuple[Setting, ...] = (
    Setting("models", Path, "directory whose subfolders each hold step.onnx, sequence.onnx, initial_state.onnx"),
    Setting("host", str, "gRPC bind address"),
    Setting("port", int, "gRPC port (0 picks a free one, logged)"),
    Setting("metrics_host", str, "Prometheus metrics bind address"),
    Setting("metrics_port", int, "Prometheus metrics HTTP port (0 picks a free one, -1 turns metrics off)"),
    Setting("provider", str, "execution provider: auto (CUDA when it really loads, else CPU), cuda (fail "
            "unless CUDA loads), cpu", choices=("auto", "cuda", "cpu")),
    Setting("device_id", int, "CUDA device ordinal"),
    Setting("intra_op_threads", int, "onnxruntime intra-op threads per model"),
    Setting("batching", _bool, "continuous batching of many sessions' steps into one onnxruntime call "
            "(false: each request runs alone, for measurement)"),
    Setting("max_batch", int, "most sessions stepped in one onnxruntime call"),
    Setting("max_wait_ms", float, "longest a new batch waits for more sessions to join"),
    Setting("max_sessions", int, "most live sessions (RESOURCE_EXHAUSTED past it)"),
    Setting("max_sessions_per_owner", int, "most live sessions per auth token (0: no per-token limit)"),
    Setting("default_ttl_s", float, "idle time before a session is evicted, when the client asks for none"),
    Setting("max_ttl_s", float, "cap on the idle TTL a client may ask for"),
    Setting("max_steps", int, "most time steps in one request"),
    Setting("max_message_bytes", int, "largest gRPC message received or sent"),
    Setting("max_queue", int, "most requests waiting per model (RESOURCE_EXHAUSTED past it)"),
    Setting("stream_window", int, "most unanswered requests per stream before the server stops reading it"),
    Setting("reap_interval_s", float, "how often expired sessions are evicted"),
    Setting("grace_s", float, "on SIGTERM, how long in-flight calls may take to finish"),
    Setting("auth_tokens", _tokens, "comma-separated bearer tokens; when set, every call needs one "
            "(UNAUTHENTICATED) and a session belongs to the token that made it (PERMISSION_DENIED)"),
    Setting("log_level", str, "DEBUG, INFO, WARNING or ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Setting("log_format", str, "json (one JSON object per line) or text", choices=("json", "text")),
)

_DEFAULTS = {f.name: f.default for f in fields(ServiceConfig)}
assert [s.name for s in SETTINGS] == list(_DEFAULTS), "SETTINGS and ServiceConfig must list the same fields"


def default_text(setting: Setting) -> str:
    value = _DEFAULTS[setting.name]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value) or "(none)"
    return str(value)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The `python -m service` parser; each default comes from the environment when set there."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve NTM models (ONNX graphs) over gRPC with per-session memory.",
    )
    for s in SETTINGS:
        default = s.parse(env[s.env]) if s.env in env else _DEFAULTS[s.name]
        parser.add_argument(s.flag, dest=s.name, type=s.parse, default=default, choices=s.choices,
                            help=f"{s.help} [env {s.env}; default {default_text(s)}]")
    return parser


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Flags over environment over defaults."""
    args = build_parser(env).parse_args(argv)
    return ServiceConfig(**vars(args))
