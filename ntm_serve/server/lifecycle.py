"""Loading and unloading model versions while the server runs: at start, by polling the models directory,
and by admin calls (ntm_serve/server/admin.py).

- **Load**: a version folder (ntm_serve/server/repository.py) becomes an `Engine` and a `Batcher` and joins the
  `ModelSet`; with `--state-dir`, sessions snapshotted on exactly its weights come back with it. A folder
  that cannot be served (a graph missing, a corrupt file, a graph that breaks the ONNX contract, a version
  number or weights already served under that name, CUDA graphs asked for and refused by onnxruntime) is
  refused: one ERROR log line "model version refused"
  with the reason, `ntm_model_load_failures_total{model, reason}`, and everything else keeps serving.
- **Poll** (every `--model-poll-interval-s`; 0: off): a version folder that is new, or changed since the last
  look (its graph files' sizes and times), is loaded; a loaded version whose folder disappeared is unloaded.
  Folders are compared with the last look, not with what is loaded, so a version an admin unloaded stays
  unloaded while its folder is unchanged. A loaded version's weights never change in place: a changed folder
  of a loaded version is logged and ignored (ship a new version number instead).
- **Unload**: the version takes no new sessions at once; it is removed (batcher stopped, memory released)
  when its last session ends (deleted or expired); `force` ends its sessions now (later calls: NOT_FOUND
  saying why). Removal is checked whenever a session of an unloading version ends and on every poll.

One lock serialises loads, unloads and polls; they run on the lifecycle thread or an admin call's executor
thread, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from ntm_serve.api.errors import ServiceError, not_found
from ntm_serve.runtime.cuda_graphs import CudaGraphError
from ntm_serve.runtime.engine import GRAPH_FILES, Engine, ModelLoadError, resolve_provider
from ntm_serve.server.batcher import Batcher
from ntm_serve.server.registry import Key, ModelSet, ServedModel, short
from ntm_serve.server.repository import VersionFolder, scan

if TYPE_CHECKING:
    from ntm_serve.server.config import ServiceConfig
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.sessions import SessionRecord, SessionRegistry
    from ntm_serve.server.state.keeping import SessionKeeping

log = logging.getLogger(__name__)


class LoadRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # missing, contract, corrupt, conflict, cuda_graph
        self.message = message


@dataclass(frozen=True)
class Status:
    """One version as ModelAdmin reports it."""

    model: str
    version: int
    checkpoint_sha256: str
    state: str  # LOADED, UNLOADING, UNLOADED, FAILED
    live_sessions: int = 0
    message: str = ""


class Lifecycle:
    def __init__(self, config: ServiceConfig, metrics: Metrics, models: ModelSet) -> None:
        self.config = config
        self.metrics = metrics
        self.models = models
        self.provider = ""
        self.cuda_graph = False  # config.cuda_graph where the provider resolved to CUDA
        self._lock = threading.RLock()
        self._seen: dict[tuple[str, int], tuple[object, ...]] = {}  # folder -> fingerprint at the last look
        self._failed: dict[tuple[str, int], str] = {}  # refused folders -> why
        self._forced: set[Key] = set()  # versions being unloaded by force (for the metric)
        self._registry: SessionRegistry | None = None
        self._keeping: SessionKeeping | None = None
        self._running = False  # batchers of new versions start at once
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-lifecycle", daemon=True)

    # --- start and stop -------------------------------------------------------------------------------

    def load_all(self) -> None:
        """At start-up: every version folder (broken ones refused and logged); fails when none loads."""
        root = self.config.models
        if not root.is_dir():
            raise ModelLoadError(f"models directory {root} does not exist")
        folders = scan(root)
        probe = next((f.path / GRAPH_FILES["step"] for f in folders if (f.path / GRAPH_FILES["step"]).is_file()), None)
        if probe is None:
            raise ModelLoadError(f"no models under {root}: expected {root}/<name>/step.onnx or "
                                 f"{root}/<name>/<version>/step.onnx (run `make export`)")
        self.provider = resolve_provider(self.config.provider, self.config.device_id, probe)
        self.cuda_graph = self.config.cuda_graph and self.provider == "cuda"
        if self.config.cuda_graph and not self.cuda_graph:  # auto chose CPU: serve, without graphs, and say so
            log.warning("cuda_graph asked for, but the provider is %s: CUDA graphs are off", self.provider)
        with self._lock:
            for folder in folders:
                self._try_load(folder)
        if not self.models.every():
            raise ModelLoadError(f"no model under {root} could be loaded: " +
                                 "; ".join(f"{n} version {v}: {why}" for (n, v), why in sorted(self._failed.items())))

    def attach(self, registry: SessionRegistry, keeping: SessionKeeping) -> None:
        """The sessions (counted before an unload completes) and how they are kept (snapshots restored on a load)."""
        self._registry = registry
        self._keeping = keeping
        previous = registry.on_end

        def on_end(session: SessionRecord) -> None:
            if previous is not None:
                previous(session)
            if self.models.unloading(session.key):
                self._wake.set()  # maybe its version's last session: the lifecycle thread checks

        registry.on_end = on_end

    def start(self) -> None:
        """Start every version's batcher, then the lifecycle thread."""
        with self._lock:
            for model in self.models.every():
                model.batcher.start()
            self._running = True
        self._thread.start()

    def stop(self) -> None:
        """End polling and unloading (the batchers are the server's to stop, after the calls in flight)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        interval = self.config.model_poll_interval_s
        next_poll = time.monotonic() + interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_poll - time.monotonic()) if interval > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if interval > 0 and time.monotonic() >= next_poll:
                    self.poll()
                    next_poll = time.monotonic() + interval
                self.collect()
            except Exception:  # the loop must outlive any one bad pass
                log.exception("model lifecycle pass failed")

    # --- loading --------------------------------------------------------------------------------------

    def _refuse(self, folder: VersionFolder, reason: str, message: str) -> LoadRefused:
        self._failed[(folder.name, folder.version)] = message
        self.metrics.model_load_failures.labels(folder.name, reason).inc()
        log.error("model version refused", extra={"model": folder.name, "version": folder.version,
                                                  "folder": str(folder.path), "reason": reason, "detail": message})
        return LoadRefused(reason, message)

    def _load(self, folder: VersionFolder) -> ServedModel:
        """Under the lock: serve this folder, or raise LoadRefused (logged and counted)."""
        self._seen[(folder.name, folder.version)] = folder.fingerprint
        missing = [f for f in GRAPH_FILES.values() if not (folder.path / f).is_file()]
        if missing:
            raise self._refuse(folder, "missing", f"{folder.path}: {', '.join(missing)} missing")
        c = self.config
        try:
            engine = Engine(folder.path, self.provider, c.device_id, c.intra_op_threads,
                            initial_capacity=c.max_batch, lanes=c.max_batch, name=folder.name,
                            buckets=c.buckets() if self.cuda_graph else (), cuda_graph=self.cuda_graph)
        except CudaGraphError as err:
            raise self._refuse(folder, "cuda_graph", f"{folder.path}: {err}") from err
        except ModelLoadError as err:
            raise self._refuse(folder, "contract", str(err)) from err
        except Exception as err:  # onnxruntime cannot read it: a corrupt or truncated file
            raise self._refuse(folder, "corrupt", f"{folder.path}: {type(err).__name__}: {err}") from err
        problem = self.models.conflict(folder.name, folder.version, engine.spec.checkpoint_sha256)
        if problem is not None:
            raise self._refuse(folder, "conflict", f"{folder.path}: {problem}")
        batcher = Batcher(engine, self.metrics, batching=c.batching, max_batch=c.max_batch,
                          max_wait_s=c.max_wait_ms / 1000, max_queue=c.max_queue,
                          inline_rows=c.inline_rows, batch_kib=c.max_batch_kib)
        model = ServedModel(engine.spec, engine.execution_provider, batcher, folder.version)
        self.models.stage(model)
        if self._keeping is not None:  # its kept sessions are back before it is listed (jobs queue until it runs)
            self._keeping.restore(only=model.key)  # before the batcher runs: the engine is used directly
        self.models.publish(model)
        if self._running:
            batcher.start()
        self._failed.pop((folder.name, folder.version), None)
        self.metrics.model_loads.labels(folder.name).inc()
        self.metrics.model_versions.labels(folder.name).inc()
        log.info("model loaded", extra={"model": folder.name, "version": folder.version, "task": engine.spec.task,
                                        "provider": engine.execution_provider, "folder": str(folder.path),
                                        "checkpoint": engine.spec.checkpoint_sha256})
        return model

    def _try_load(self, folder: VersionFolder) -> ServedModel | None:
        """`_load`, with a refusal already logged and counted: None."""
        try:
            return self._load(folder)
        except LoadRefused:
            return None

    def poll(self) -> None:
        """One look at the models directory: load new or changed folders, unload removed ones."""
        with self._lock:
            try:
                present = {(f.name, f.version): f for f in scan(self.config.models)}
            except OSError as err:  # unreadable now (e.g. a mount hiccup): change nothing, look again later
                log.warning("models directory not readable; poll skipped", extra={"error": str(err)})
                return
            for (name, version), folder in present.items():
                if self._seen.get((name, version)) == folder.fingerprint:
                    continue
                loaded = self.models.version(name, version)
                if loaded is not None:
                    self._seen[(name, version)] = folder.fingerprint
                    log.warning("a loaded version's folder changed; the version keeps its weights (ship a new "
                                "version number)",
                                extra={"model": name, "version": version, "folder": str(folder.path)})
                    continue
                self._try_load(folder)
            for key in [k for k in self._seen if k not in present]:
                del self._seen[key]
                self._failed.pop(key, None)
                model = self.models.version(*key)
                if model is not None and not self.models.unloading(model.key):
                    self._begin_unload(model, force=False, why="its folder was removed")
            self.collect()

    def load(self, name: str, version: int | None) -> list[Status]:
        """Admin: load one version folder of `name`, or every one not loaded yet; a version being unloaded
        that is asked for again takes sessions again."""
        with self._lock:
            try:
                folders = [f for f in scan(self.config.models)
                           if f.name == name and (version is None or f.version == version)]
            except OSError as err:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                                   f"models directory not readable: {err}") from err
            if not folders:
                where = f"{self.config.models}/{name}" + (f"/{version}" if version is not None else "")
                raise not_found(f"no model version folder {where} (with step.onnx, sequence.onnx, initial_state.onnx)")
            for folder in folders:
                loaded = self.models.version(name, folder.version)
                if loaded is not None:
                    if self.models.cancel_unload(loaded.key):
                        self._forced.discard(loaded.key)
                        log.info("model unload cancelled", extra={"model": name, "version": folder.version})
                    continue
                try:
                    self._load(folder)
                except LoadRefused as refused:
                    if version is not None:
                        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                           f"{folder.label} refused ({refused.reason}): {refused.message}") from None
            return self.status(name)

    # --- unloading ------------------------------------------------------------------------------------

    def _sessions_of(self, key: Key) -> list[SessionRecord]:
        return [s for s in self._registry.sessions() if s.key == key] if self._registry is not None else []

    def _begin_unload(self, model: ServedModel, force: bool, why: str) -> None:
        self.models.begin_unload(model.key)
        sessions = self._sessions_of(model.key)
        log.info("model unloading", extra={"model": model.spec.name, "version": model.version, "why": why,
                                           "force": force, "live_sessions": len(sessions),
                                           "checkpoint": model.spec.checkpoint_sha256})
        if force and sessions and self._registry is not None:
            gone = not_found(f"the session was ended: {model.label} (checkpoint_sha256 "
                             f"{short(model.spec.checkpoint_sha256)}) was unloaded by force ({why})")
            ended = self._registry.end(sessions, gone)
            log.info("sessions ended by a forced unload", extra={"model": model.spec.name, "version": model.version,
                                                                 "sessions": len(ended)})
        if force:
            self._forced.add(model.key)

    def unload(self, name: str, version: int, force: bool) -> list[Status]:
        """Admin: stop `name` `version` taking sessions; remove it once its sessions end (now, with force)."""
        with self._lock:
            model = self.models.version(name, version)
            if model is None:
                served = sorted(m.version for m in self.models.every() if m.spec.name == name)
                raise not_found(f"model {name!r} has no loaded version {version}; loaded versions: {served}")
            if force or not self.models.unloading(model.key):
                self._begin_unload(model, force, why="ModelAdmin.UnloadModel")
            removed = self.collect()
            if model.key in removed:
                return [Status(name, version, model.spec.checkpoint_sha256, "UNLOADED")]
            return [s for s in self.status(name) if s.version == version]

    def collect(self) -> set[Key]:
        """Remove every unloading version that has no live session left; the keys removed."""
        removed: set[Key] = set()
        with self._lock:
            for model in self.models.every():
                if not self.models.unloading(model.key) or self._sessions_of(model.key):
                    continue
                self.models.remove(model.key)
                if self._sessions_of(model.key):  # a session opened just before the removal: keep serving it
                    self.models.put_back(model, unloading=True)
                    continue
                model.batcher.stop()  # runs the jobs already queued (rows being freed), then ends its thread
                forced = model.key in self._forced
                self._forced.discard(model.key)
                self.metrics.model_unloads.labels(model.spec.name, "forced" if forced else "drained").inc()
                self.metrics.model_versions.labels(model.spec.name).dec()
                log.info("model unloaded", extra={"model": model.spec.name, "version": model.version,
                                                  "checkpoint": model.spec.checkpoint_sha256})
                removed.add(model.key)
        return removed

    # --- status ---------------------------------------------------------------------------------------

    def status(self, name: str = "") -> list[Status]:
        live = Counter(s.key for s in self._registry.sessions()) if self._registry is not None else Counter()
        found = []
        with self._lock:
            for model in self.models.every():
                if name and model.spec.name != name:
                    continue
                unloading = self.models.unloading(model.key)
                found.append(Status(model.spec.name, model.version, model.spec.checkpoint_sha256,
                                    "UNLOADING" if unloading else "LOADED", live[model.key],
                                    f"waiting for {live[model.key]} live sessions to end" if unloading else ""))
            for (model_name, version), why in sorted(self._failed.items()):
                if (not name or model_name == name) and self.models.version(model_name, version) is None:
                    found.append(Status(model_name, version, "", "FAILED", 0, why))
        return sorted(found, key=lambda s: (s.model, s.version))
