"""Prometheus metrics of one server, in its own registry (several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.live_sessions = Gauge("ntm_live_sessions", "Live sessions.", ["model"], registry=r)
        self.sessions_created = Counter("ntm_sessions_created", "Sessions created (how: create or import).",
                                        ["model", "how"], registry=r)
        self.evictions = Counter("ntm_evictions", "Sessions evicted (reason: ttl).", ["model", "reason"], registry=r)
        self.steps = Counter("ntm_steps", "Session time steps applied.", ["model"], registry=r)
        self.requests = Counter("ntm_step_requests", "Step requests answered (rpc: Step or StreamSteps).",
                                ["model", "rpc"], registry=r)
        self.batch_size = Histogram("ntm_batch_size", "Sessions per onnxruntime step call.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.engine_seconds = Histogram("ntm_engine_call_seconds", "Time of one batched onnxruntime step call "
                                        "(the step; rows joining or leaving).", ["model"], buckets=LATENCY_BUCKETS,
                                        registry=r)
        self.step_latency = Histogram("ntm_step_latency_seconds", "Time from accepting a step request to its "
                                      "result.", ["model", "rpc"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("ntm_queue_depth", "Requests waiting or running per model.", ["model"], registry=r)
        self.errors = Counter("ntm_errors", "Refused requests by method and gRPC status code.", ["method", "code"],
                              registry=r)
        self.snapshot_passes = Counter("ntm_snapshot_passes", "Completed snapshot passes (periodic and final).",
                                       registry=r)
        self.snapshot_writes = Counter("ntm_snapshot_writes", "Session snapshot files written.", registry=r)
        self.snapshot_seconds = Histogram("ntm_snapshot_seconds", "Time of one snapshot pass.", buckets=LATENCY_BUCKETS,
                                          registry=r)
        self.snapshot_last_success = Gauge("ntm_snapshot_last_success_timestamp_seconds",
                                           "Wall-clock time when the last snapshot pass completed.", registry=r)
        self.snapshot_errors = Counter("ntm_snapshot_errors", "Snapshot files not loaded or not written, by reason "
                                       "(truncated, magic, version, checksum, format, model, checkpoint, state, "
                                       "unreadable, write).", ["reason"], registry=r)
        self.model_loads = Counter("ntm_model_loads", "Model versions loaded (at start, by the poller or by an admin "
                                   "call).", ["model"], registry=r)
        self.model_load_failures = Counter("ntm_model_load_failures", "Model version folders refused, by reason "
                                           "(missing, contract, corrupt, conflict, cuda_graph).", ["model", "reason"],
                                           registry=r)
        self.model_unloads = Counter("ntm_model_unloads", "Model versions unloaded (how: drained or forced).",
                                     ["model", "how"], registry=r)
        self.model_versions = Gauge("ntm_model_versions", "Model versions served (also those being unloaded).",
                                    ["model"], registry=r)
        self.watchers = Gauge("ntm_watchers", "Open session watches (WatchSession calls and inspector pages).",
                              ["model"], registry=r)
        self.watch_frames = Counter("ntm_watch_frames", "Watch frames sent to watchers.", ["model"], registry=r)
        self.watch_frames_dropped = Counter("ntm_watch_frames_dropped", "Watch frames a watcher never got: it read "
                                            "slower than its session stepped, and a newer frame took the slot.",
                                            ["model"], registry=r)

    def serve(self, host: str, port: int) -> tuple[object, int]:
        """Start the /metrics HTTP endpoint; returns the server (for shutdown) and its port."""
        server, _thread = start_http_server(port, host, registry=self.registry)
        return server, server.server_address[1]
