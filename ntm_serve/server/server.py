"""Assembling and running the server: models (versions loaded and unloaded at run time), batchers, sessions,
gRPC (with health and reflection), metrics, the TTL reaper, and a graceful stop (health NOT_SERVING,
in-flight calls finish, queues drain).

`run(config)` is `python -m ntm_serve.server`; `ServerThread` runs the same server in a background thread for
tests and benchmarks (a real server on a real port, in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tls import TLSConfigError, server_credentials
from ntm_serve.api.wire import add_ntm_servicer
from ntm_serve.runtime.engine import ModelLoadError
from ntm_serve.server.admin import ModelAdminServicer
from ntm_serve.server.auth import AuthInterceptor, TokenAuth
from ntm_serve.server.config import ServiceConfig
from ntm_serve.server.lifecycle import Lifecycle
from ntm_serve.server.logs import setup_logging
from ntm_serve.server.metrics import Metrics
from ntm_serve.server.ports import BindError, bind_error, remove_port_file, write_port_file
from ntm_serve.server.registry import ModelSet
from ntm_serve.server.servicer import LoopInbox, NTMServicer
from ntm_serve.server.sessions import SessionRegistry
from ntm_serve.server.state.choice import keeping_for
from ntm_serve.server.state.keeping import SessionKeeping
from ntm_serve.server.state.snapshots import StateDirError
from ntm_serve.server.state.store import SessionStore, StoreError
from ntm_serve.server.watch_hub import WatchHub
from ntm_serve.ui import GrpcTarget, UIError, start_ui

log = logging.getLogger(__name__)

NTM_SERVICE = ntm_pb2.DESCRIPTOR.services_by_name["NTM"].full_name  # "ntm.v1.NTM"
ADMIN_SERVICE = ntm_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].full_name  # "ntm.v1.ModelAdmin"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# reported in one line, exit status 2
STARTUP_ERRORS = (ModelLoadError, StateDirError, TLSConfigError, StoreError, BindError, UIError)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


async def loop_run(function: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function)


def bound(what: str, host: str, port: int, bind: Any) -> Any:
    """bind(): add a listener on host:port; its failure as a BindError that names the port and says why (e.g.
    "Address already in use", which is how a launcher knows to try again: ntm_serve.cluster.launcher)."""
    try:
        return bind()
    except (RuntimeError, OSError) as err:
        raise BindError(f"cannot bind the {what} port {host}:{port}: {bind_error(host, port) or err}") from None


class Server:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.models = ModelSet()  # as a Mapping: the newest version of each model name
        self.lifecycle = Lifecycle(config, self.metrics, self.models)
        self.registry: SessionRegistry | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health_grpc: grpc.aio.Server | None = None
        self._health: Any = None
        self._metrics_http: Any = None
        self._reaper: asyncio.Task[None] | None = None
        self._batchers_started = False
        self.servicer: NTMServicer | None = None
        self.watch: WatchHub | None = None  # the open session watches (WatchSession, the inspector page)
        self.ui: Any = None  # the inspector page (ntm_serve.ui), with --ui-port
        self.ui_port: int | None = None
        self.keeping: SessionKeeping | None = None  # memory, snapshots or the shared store: one, from the flags
        self._inbox: LoopInbox | None = None
        self._session_store: SessionStore | None = None

    async def start(self) -> None:
        """Models and sessions first (restored ones included), then the batchers, then the ports; health says
        SERVING only when everything answers."""
        c = self.config
        credentials = server_credentials(c.tls_cert, c.tls_key, c.tls_client_ca) if c.tls_cert and c.tls_key else None
        auth, admin = TokenAuth(c.auth_tokens), TokenAuth(c.admin_tokens)
        if c.store_url:  # fail fast, before loading models, when the store is not there
            self._session_store = SessionStore(c.store_url, min_replicas=c.store_min_replicas,
                                               wait_ms=c.store_wait_ms)
            await loop_run(self._session_store.check)
        self._inbox = LoopInbox(asyncio.get_running_loop())
        self._load_models_and_sessions()
        self._start_batchers()
        assert self.keeping is not None
        self.keeping.start()
        await self._start_grpc(auth, admin, credentials)
        await self._start_health_port()
        if c.metrics_port >= 0:
            self._metrics_http, self.metrics_port = bound("metrics", c.metrics_host, c.metrics_port,
                                                          lambda: self.metrics.serve(c.metrics_host, c.metrics_port))
        if c.ui_port >= 0:
            assert self.watch is not None
            self.ui = await start_ui(c.ui_host, c.ui_port, self.watch, self.models, self._grpc_target())
            self.ui_port = self.ui.port
        for service in ("", NTM_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if c.port_file is not None:  # last: a supervisor that reads it finds every port bound and serving
            write_port_file(c.port_file, {"port": self.port, "metrics_port": self.metrics_port,
                                          "health_port": self.health_port, "ui_port": self.ui_port})
        self._reaper = asyncio.create_task(self._reap())
        self._log_serving(auth, admin, credentials is not None)

    def _load_models_and_sessions(self) -> None:
        """Every version's engine and batcher (not started), the session registry, how sessions are kept (chosen
        here, once, from the flags), and the restored sessions."""
        c = self.config
        self.lifecycle.load_all()
        self.registry = SessionRegistry(
            self.models.batchers, self.metrics, max_sessions=c.max_sessions,
            max_sessions_per_owner=c.max_sessions_per_owner, default_ttl_s=c.default_ttl_s, max_ttl_s=c.max_ttl_s)
        assert self._inbox is not None
        self.keeping = keeping_for(c, registry=self.registry, models=self.models, metrics=self.metrics,
                                   inbox=self._inbox, store=self._session_store)
        self.keeping.restore()  # before the batchers run: the engines are used directly
        self.lifecycle.attach(self.registry, self.keeping)

    def _start_batchers(self) -> None:
        self.lifecycle.start()  # the batchers, then polling
        self._batchers_started = True

    async def _start_grpc(self, auth: TokenAuth, admin: TokenAuth, credentials: grpc.ServerCredentials | None) -> None:
        """The main port: the NTM and admin services, health checking and reflection, plaintext or TLS."""
        c = self.config
        assert self.registry is not None and self.keeping is not None and self._inbox is not None
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
            # No BDP probing: a stream's receive window stays at HTTP/2's 64 KiB instead of growing to MBs, so a
            # stream the server has stopped reading (--stream-window) buffers at most that much in the transport.
            ("grpc.http2.bdp_probe", 0),
        ]
        interceptors = [AuthInterceptor(auth, admin)] if auth.enabled or admin.enabled else []
        self._grpc = grpc.aio.server(interceptors=interceptors, options=options,
                                     maximum_concurrent_rpcs=c.max_concurrent_rpcs)
        self.servicer = servicer = NTMServicer(self.models, self.registry, c, self.metrics, auth, self._inbox,
                                               self.keeping)
        self.watch = servicer.watch = WatchHub(self.models, self.registry, self.metrics, auth, admin,
                                               asyncio.get_running_loop(), self.keeping)
        add_ntm_servicer(servicer, self._grpc)
        add_ntm_servicer(ModelAdminServicer(self.lifecycle, self.metrics, c.model_control_on), self._grpc,
                         "ModelAdmin")
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection((NTM_SERVICE, ADMIN_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME),
                                            self._grpc)
        address, grpc_server = f"{c.host}:{c.port}", self._grpc
        if credentials is not None:
            self.port = bound("gRPC", c.host, c.port, lambda: grpc_server.add_secure_port(address, credentials))
        else:
            self.port = bound("gRPC", c.host, c.port, lambda: grpc_server.add_insecure_port(address))
        await self._grpc.start()

    def _grpc_target(self) -> GrpcTarget:
        """How the inspector's try-it panel reaches the gRPC port as a client: on loopback, plaintext or TLS."""
        c = self.config
        host = c.host.strip("[]")
        host = "127.0.0.1" if host in ("", "::", "0.0.0.0") else host
        target = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        if c.tls_client_ca is not None:
            return GrpcTarget(target, refusal="the gRPC port asks for client certificates (--tls-client-ca): run "
                              "`ntm-demo` with yours")
        if c.tls_cert is not None:  # trusting the server's own certificate, by the name localhost
            return GrpcTarget(target, tls_ca=str(c.tls_cert), tls_server_name="localhost")
        return GrpcTarget(target)

    async def _start_health_port(self) -> None:
        """Plaintext, health only: for probes that cannot speak (m)TLS (off unless --health-port is set)."""
        c = self.config
        if c.health_port >= 0:
            self._health_grpc = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_grpc)
            health_server = self._health_grpc
            self.health_port = bound("health", c.health_host, c.health_port,
                                     lambda: health_server.add_insecure_port(f"{c.health_host}:{c.health_port}"))
            await self._health_grpc.start()

    def _log_serving(self, auth: TokenAuth, admin: TokenAuth, tls: bool) -> None:
        c = self.config
        assert self.registry is not None and self.keeping is not None
        if (auth.enabled or admin.enabled) and not tls and c.host not in LOOPBACK:
            log.warning("bearer tokens travel in plaintext: serve with --tls-cert/--tls-key off loopback")
        log.info("serving", extra={"port": self.port, "metrics_port": self.metrics_port, "models": sorted(self.models),
                                   "versions": [f"{m.spec.name}/{m.version}" for m in self.models.every()],
                                   "provider": self.lifecycle.provider, "batching": c.batching,
                                   "cuda_graph_buckets": list(c.buckets()) if self.lifecycle.cuda_graph else None,
                                   "max_batch": c.max_batch, "auth": auth.enabled, "tls": tls,
                                   "mtls": c.tls_client_ca is not None, "health_port": self.health_port,
                                   "state_dir": str(c.state_dir) if c.state_dir else None,
                                   "sessions": self.registry.count(), "poll_s": c.model_poll_interval_s,
                                   "admin_auth": admin.enabled, "model_control": c.model_control_on,
                                   "store": c.store_url or None,
                                   "replica": self.keeping.replica_name, "ui_port": self.ui_port})

    async def _reap(self) -> None:
        assert self.registry is not None
        while True:
            await asyncio.sleep(self.config.reap_interval_s)
            try:
                self.registry.reap()
            except Exception:  # the reaper must outlive any one bad pass
                log.exception("reaping sessions failed")

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, open streams answer what they read and end (UNAVAILABLE), refuse new calls, let
        in-flight ones finish (up to `grace`), drain queues, and (with a state dir) snapshot every session changed
        since the last pass."""
        grace = self.config.grace_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace})
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._grpc is not None and self.servicer is not None:
            await asyncio.sleep(self.config.drain_delay_s)  # still serving while a proxy notices NOT_SERVING
            self.servicer.drain()  # open streams answer what they read and end UNAVAILABLE
        if self.watch is not None:
            self.watch.drain()  # open watches end UNAVAILABLE
        if self.ui is not None:
            await self.ui.close()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._health_grpc is not None:
            await self._health_grpc.stop(0)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.lifecycle.stop)  # no loads or unloads from here on
        if self.keeping is not None:  # periodic snapshots read through the batchers: end them first
            await loop.run_in_executor(None, self.keeping.stop_background)
        if self._batchers_started:
            for model in self.models.every():
                await loop.run_in_executor(None, model.batcher.stop)
        if self.keeping is not None:  # the final snapshot pass, or the last commits; then its files or store
            await self.keeping.close(self._batchers_started)
        elif self._session_store is not None:  # start failed before the keeping was built
            self._session_store.close()
            await self._session_store.aclose()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self.config.port_file is not None:
            remove_port_file(self.config.port_file)
        log.info("stopped")


async def _serve(config: ServiceConfig) -> int:
    server = Server(config)
    try:
        await server.start()
    except STARTUP_ERRORS as err:
        log.error("cannot start: %s", err)
        await server.stop(0)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0


def run(config: ServiceConfig) -> int:
    """`python -m ntm_serve.server`: serve until SIGTERM or SIGINT."""
    setup_logging(config.log_level, config.log_format)
    return asyncio.run(_serve(config))


class ServerThread:
    """The server on its own event loop in a background thread: `with ServerThread(config) as server:`."""

    def __init__(self, config: ServiceConfig) -> None:
        self.server = Server(config)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ntm-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as err:
            self._error = err
            self._ready.set()
            await self.server.stop(0)
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(self._grace)

    def start(self, timeout: float = 120.0) -> ServerThread:
        self._grace = self.server.config.grace_s
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, grace: float | None = None, timeout: float = 60.0) -> None:
        if self._loop is None or self._stop is None or not self._thread.is_alive():
            return
        if grace is not None:
            self._grace = grace
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
