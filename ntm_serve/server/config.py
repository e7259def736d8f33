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

from ntm_serve.runtime.buckets import check_buckets, default_buckets, parse_buckets
from ntm_serve.server.state.store_url import check_store_url


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _optional_path(text: str) -> Path | None:
    return Path(text) if text.strip() else None


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
    port_file: Path | None = None
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    provider: str = "auto"
    device_id: int = 0
    intra_op_threads: int = 1
    batching: bool = True
    max_batch: int = 64
    max_batch_kib: int = 3072
    max_wait_ms: float = 1.0
    inline_rows: int = 16
    max_sessions: int = 10_000
    max_sessions_per_owner: int = 0
    default_ttl_s: float = 3600.0
    max_ttl_s: float = 86_400.0
    max_steps: int = 1000
    max_memory_rows: int = 8192
    max_message_bytes: int = 4 * 1024 * 1024
    max_queue: int = 10_000
    stream_window: int = 256
    reap_interval_s: float = 1.0
    grace_s: float = 10.0
    max_concurrent_rpcs: int = 1000
    state_dir: Path | None = None
    snapshot_interval_s: float = 5.0
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    health_host: str = "127.0.0.1"
    health_port: int = -1
    log_level: str = "INFO"
    log_format: str = "json"
    model_poll_interval_s: float = 10.0
    admin_tokens: tuple[str, ...] = field(default=(), repr=False)
    model_control: bool = False
    store_url: str = ""
    replica_name: str = ""
    store_min_replicas: int = 0
    store_wait_ms: int = 1000
    commit_every: int = 1
    drain_delay_s: float = 0.0
    cuda_graph: bool = False
    batch_buckets: tuple[int, ...] = ()
    ui_host: str = "127.0.0.1"
    ui_port: int = -1

    def __post_init__(self) -> None:
        positive = ("intra_op_threads", "max_batch", "max_sessions", "max_steps", "max_memory_rows",
                    "max_message_bytes", "max_queue", "stream_window", "max_concurrent_rpcs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "inline_rows", "max_batch_kib", "max_sessions_per_owner", "grace_s", "device_id",
                     "model_poll_interval_s", "drain_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("default_ttl_s", "max_ttl_s", "reap_interval_s", "snapshot_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535 or not all(-1 <= p <= 65535 for p in (self.metrics_port, self.health_port,
                                                                             self.ui_port)):
            raise ValueError("ports must be in 0..65535 (metrics_port, health_port and ui_port -1 turn them off)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both (TLS) or neither (plaintext)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (client certificates) needs TLS: give tls_cert and tls_key too")
        if self.provider not in ("auto", "cuda", "cpu"):
            raise ValueError(f"provider must be auto, cuda or cpu, got {self.provider!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be json or text, got {self.log_format!r}")
        if self.commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {self.commit_every}")
        if self.store_url and self.state_dir is not None:
            raise ValueError("store_url (replica mode: sessions in the shared store) and state_dir (snapshots on this "
                             "machine) exclude each other: give one")
        if self.store_url:
            check_store_url(self.store_url)
        if self.store_min_replicas and not self.store_url:
            raise ValueError("store_min_replicas needs store_url (replica mode): without a store there is nothing "
                             "to replicate")
        if self.store_min_replicas < 0 or self.store_wait_ms < 1:
            raise ValueError(f"store_min_replicas must be >= 0 and store_wait_ms >= 1, got {self.store_min_replicas} "
                             f"and {self.store_wait_ms}")
        if self.model_control and self.auth_tokens and not self.admin_tokens:
            raise ValueError("model_control with auth_tokens needs admin_tokens: a session token does not manage "
                             "models (give admin_tokens; they alone turn ModelAdmin on)")
        if self.cuda_graph and self.provider == "cpu":
            raise ValueError("cuda_graph needs the CUDA provider: it cannot be used with provider cpu "
                             "(use provider cuda, or auto to have it only where CUDA loads)")
        if self.batch_buckets:
            check_buckets(self.batch_buckets, self.max_batch)

    @property
    def model_control_on(self) -> bool:
        """Whether ModelAdmin answers: asked for with --model-control, or admin tokens given (who holds one may)."""
        return self.model_control or bool(self.admin_tokens)

    def buckets(self) -> tuple[int, ...]:
        """The batch sizes CUDA graphs are captured for: batch_buckets (sorted), else the default from max_batch."""
        return check_buckets(self.batch_buckets, self.max_batch) if self.batch_buckets else default_buckets(
            self.max_batch)


SETTINGS: tuple[Setting, ...] = (
    Setting("models", Path, "model folders: <name>/ (the three ONNX graphs: version 1) or <name>/<version>/ "
            "(several versions side by side)"),
    Setting("host", str, "gRPC bind address"),
    Setting("port", int, "gRPC port (0 picks a free one, logged)"),
    Setting("port_file", _optional_path, "once every port is bound and health says SERVING, write "
            "{\"pid\", \"port\", \"metrics_port\", \"health_port\"} here as JSON (null: port off), removed on a clean "
            "exit: with port 0, how a supervisor learns the port without racing for it (empty: no file)"),
    Setting("metrics_host", str, "Prometheus metrics bind address"),
    Setting("metrics_port", int, "Prometheus metrics HTTP port (0 picks a free one, -1 turns metrics off)"),
    Setting("provider", str, "execution provider: auto (CUDA when it really loads, else CPU), cuda (fail "
            "unless CUDA loads), cpu", choices=("auto", "cuda", "cpu")),
    Setting("device_id", int, "CUDA device ordinal"),
    Setting("intra_op_threads", int, "onnxruntime intra-op threads per model"),
    Setting("batching", _bool, "continuous batching of many sessions' steps into one onnxruntime call "
            "(false: each request runs alone, for measurement)"),
    Setting("max_batch", int, "most sessions stepped in one onnxruntime call"),
    Setting("max_batch_kib", int, "most session state (KiB, float32) in one step call on the CPU: sessions of a "
            "large memory N are batched fewer at a time (at least one), so that a call's state stays in the cache; "
            "0: max_batch whatever N (the CUDA provider is never limited)"),
    Setting("max_wait_ms", float, "longest a new batch waits for more sessions to join"),
    Setting("inline_rows", int, "a packed one-step message of at most this many sessions runs on the event "
            "loop's thread when the model's thread is idle, saving two thread switches per step call (CPU only; "
            "0: never)"),
    Setting("max_sessions", int, "most live sessions (RESOURCE_EXHAUSTED past it); with --store-url, in the whole "
            "cluster (counted in the store)"),
    Setting("max_sessions_per_owner", int, "most live sessions per auth token (0: no per-token limit); with "
            "--store-url, in the whole cluster"),
    Setting("default_ttl_s", float, "idle time before a session is evicted, when the client asks for none"),
    Setting("max_ttl_s", float, "cap on the idle TTL a client may ask for"),
    Setting("max_steps", int, "most time steps in one request"),
    Setting("max_memory_rows", int, "most memory rows N a session may ask for (CreateSession memory_rows, "
            "ImportSession): a session's state grows with N (N x M floats of memory), this bounds one session's RAM; "
            "never below a model's trained N, which is always served"),
    Setting("max_message_bytes", int, "largest gRPC message received or sent"),
    Setting("max_queue", int, "most requests waiting per model (RESOURCE_EXHAUSTED past it)"),
    Setting("stream_window", int, "most unanswered requests per stream before the server stops reading it"),
    Setting("reap_interval_s", float, "how often expired sessions are evicted"),
    Setting("grace_s", float, "on SIGTERM, how long in-flight calls may take to finish"),
    Setting("max_concurrent_rpcs", int, "most calls (a stream counts as one) served at once; "
            "RESOURCE_EXHAUSTED past it"),
    Setting("state_dir", _optional_path, "directory for session snapshots (one file per session): sessions "
            "are saved every snapshot_interval_s and on shutdown, and restored at start (empty: no persistence)"),
    Setting("snapshot_interval_s", float, "seconds between snapshots of changed sessions to state_dir: what "
            "a kill -9 or power loss can lose"),
    Setting("auth_tokens", _tokens, "comma-separated bearer tokens; when set, every call needs one "
            "(UNAUTHENTICATED) and a session belongs to the token that made it (PERMISSION_DENIED)"),
    Setting("tls_cert", _optional_path, "PEM server certificate (chain); with tls_key the gRPC port speaks "
            "TLS only (empty: plaintext)"),
    Setting("tls_key", _optional_path, "PEM private key of tls_cert"),
    Setting("tls_client_ca", _optional_path, "PEM CA bundle; when set, clients must present a certificate "
            "it signed (mutual TLS)"),
    Setting("health_host", str, "bind address of the plaintext health-only port"),
    Setting("health_port", int, "plaintext port serving only grpc.health.v1, for probes when TLS is on "
            "(-1: off; health is always on the main port too)"),
    Setting("log_level", str, "DEBUG, INFO, WARNING or ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Setting("log_format", str, "json (one JSON object per line) or text", choices=("json", "text")),
    Setting("model_poll_interval_s", float, "seconds between looks at the models directory: new version folders "
            "are loaded, removed ones unloaded once their sessions end (0: no polling; ModelAdmin calls only)"),
    Setting("admin_tokens", _tokens, "comma-separated bearer tokens for the ModelAdmin service (load and unload "
            "model versions); with auth_tokens set and this empty, ModelAdmin is refused (PERMISSION_DENIED)"),
    Setting("model_control", _bool, "turn on the ModelAdmin service (load, unload, status of model versions) for "
            "every caller; off by default: refused PERMISSION_DENIED unless this or admin_tokens is set"),
    Setting("store_url", str, "replica mode: URL of the shared Redis-compatible session store (redis://host:port, or "
            "redis+sentinel://host:port,host:port/service for a replicated one found through its Sentinels); "
            "sessions live there and any replica can take one over (empty: single process, sessions in memory)"),
    Setting("replica_name", str, "this replica's name in the store and logs (empty: host:pid)"),
    Setting("store_min_replicas", int, "replica mode: a write to the store (a step's commit, a take-over, a create, "
            "a delete) counts only once this many store replicas have it (WAIT); else the call is answered "
            "UNAVAILABLE and nothing is acknowledged (0: the primary's word suffices)"),
    Setting("store_wait_ms", int, "replica mode, with store_min_replicas: how long a write waits for its store "
            "replicas before it is refused"),
    Setting("commit_every", int, "replica mode: commit a session's state every N-th request (1: every request, "
            "before its response; N > 1 answers at once and a crash loses up to N-1 answered requests per session)"),
    Setting("drain_delay_s", float, "on SIGTERM, how long to keep serving while health says NOT_SERVING, so a "
            "proxy stops routing here before calls are refused"),
    Setting("cuda_graph", _bool, "CUDA provider only: run each step call as a captured CUDA graph at a fixed batch "
            "size (the smallest of batch_buckets that holds the batch; one graph per bucket and ping-pong direction, "
            "captured at load); refused with provider cpu, logged and off when auto finds no CUDA"),
    Setting("batch_buckets", parse_buckets, "with cuda_graph: the batch sizes graphs are captured for, "
            "comma-separated multiples of 4, the largest >= max_batch (empty: 4, 8, 16, ... up to the first that "
            "holds max_batch)"),
    Setting("ui_host", str, "bind address of the inspector web page"),
    Setting("ui_port", int, "HTTP port of the inspector web page: models, live sessions, a session's memory and "
            "attention drawn live, a try-it panel (0 picks a free one, -1: off; needs the [ui] extra; the same "
            "bearer tokens as gRPC)"),
)

_DEFAULTS = {f.name: f.default for f in fields(ServiceConfig)}
assert [s.name for s in SETTINGS] == list(_DEFAULTS), "SETTINGS and ServiceConfig must list the same fields"


def default_text(setting: Setting) -> str:
    value = _DEFAULTS[setting.name]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value) or "(none)"
    if value is None or value == "":
        return "(none)"
    return str(value)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The `python -m ntm_serve.server` parser; each default comes from the environment when set there."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m ntm_serve.server",
        description="Serve NTM models (ONNX graphs) over gRPC with per-session memory.",
    )
    for s in SETTINGS:
        default = s.parse(env[s.env]) if s.env in env else _DEFAULTS[s.name]
        alone = {"nargs": "?", "const": True} if isinstance(_DEFAULTS[s.name], bool) else {}  # `--flag` = true
        parser.add_argument(s.flag, dest=s.name, type=s.parse, default=default, choices=s.choices,
                            help=f"{s.help} [env {s.env}; default {default_text(s)}]", **alone)
    return parser


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Flags over environment over defaults."""
    args = build_parser(env).parse_args(argv)
    return ServiceConfig(**vars(args))


def settings_table() -> str:
    """Every setting as the markdown table of docs/settings.md; a test keeps the two equal."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{s.flag}` | `{s.env}` | `{default_text(s)}` | {s.help} |" for s in SETTINGS]
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m ntm_serve.server.config`: the table for docs/settings.md
    print(settings_table())
