"""The inspector's HTTP side (aiohttp, on the server's event loop): the page and its assets, and a small JSON API.

    GET  /                          the page (static/index.html); its script and style under /static/
    GET  /api/whoami                who the bearer token is: {"owner", "admin", "auth"}
    GET  /api/models                the models served: tasks, encodings, versions, sizes
    GET  /api/sessions              the live sessions the caller may watch (its own; all for an admin)
    GET  /api/sessions/{id}/watch   server-sent events: a "frame" per step (?every=k), then "end" with the reason
    POST /api/try                   {"model", "seed", "delay_ms"}: one example of the model's task, run as a client
    GET  /api/try/{id}              how that run stands, and its score once done

Every /api/ call needs `Authorization: Bearer <token>` when the server has tokens (401 otherwise): the same session
and admin tokens as the gRPC port. The page itself and its assets are public (they hold no data).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import grpc
import numpy as np
from aiohttp import web

from ntm_serve.api.errors import ServiceError
from ntm_serve.client.sdk import NTMClient
from ntm_serve.server.ports import BindError, bind_error
from ntm_serve.server.registry import ModelSet
from ntm_serve.server.watch import Frame
from ntm_serve.server.watch_hub import Caller, WatchHub
from ntm_serve.ui import GrpcTarget
from ntm_serve.ui.tryit import TryRun, example_for

log = logging.getLogger(__name__)

STATIC = ("index.html", "inspector.js", "inspector.css", "favicon.svg")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# Everything from this origin, nothing inline, nothing from a CDN.
SECURITY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
               grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ABORTED: 409,
               grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
               grpc.StatusCode.UNAVAILABLE: 503}
KEPT_RUNS = 64  # try-it runs remembered for their reports
DIGITS = 4  # decimals of the values sent to the page


def _error(status: int, message: str, code: str = "") -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status, headers=SECURITY)


def _refusal(err: ServiceError) -> web.Response:
    return _error(HTTP_STATUS.get(err.code, 500), err.message, err.code.name)


def _values(array: np.ndarray) -> Any:
    return np.round(array.astype(np.float64), DIGITS).tolist()


def frame_json(frame: Frame, dropped: int) -> dict[str, Any]:
    """A watch frame for the page: its arrays as nested lists (per-session shapes)."""
    out: dict[str, Any] = {"steps": frame.steps, "snapshot": frame.snapshot, "dropped": dropped}
    for name, array in frame.state.items():
        out[name] = _values(array)
    if frame.inputs is not None and frame.outputs is not None:
        out["inputs"], out["outputs"] = _values(frame.inputs), _values(frame.outputs)
    return out


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class UIServer:
    def __init__(self, hub: WatchHub, models: ModelSet, grpc_target: GrpcTarget) -> None:
        self.hub = hub
        self.models = models
        self.grpc_target = grpc_target
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._runs: OrderedDict[str, TryRun] = OrderedDict()
        self._runs_lock = threading.Lock()
        self._stopping = asyncio.Event()
        self.app = web.Application(middlewares=[self._auth])
        self.app.add_routes([
            web.get("/", self._index),
            web.get("/static/{name}", self._static),
            web.get("/api/whoami", self._whoami),
            web.get("/api/models", self._models),
            web.get("/api/sessions", self._sessions),
            web.get("/api/sessions/{session_id}/watch", self._watch),
            web.post("/api/try", self._try),
            web.get("/api/try/{session_id}", self._try_report),
        ])

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            raise BindError(f"cannot bind the ui port {host}:{port}: {bind_error(host, port) or err}") from None
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """After the hub's drain (open watches end): stop the try-it runs and the HTTP server."""
        self._stopping.set()
        with self._runs_lock:
            for run in self._runs.values():
                run.stop.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- auth -----------------------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            caller = self.hub.caller([("authorization", request.headers.get("Authorization", ""))])
            if caller is None:
                return _error(401, "missing or invalid bearer token (header 'Authorization: Bearer <token>')",
                              "UNAUTHENTICATED")
            request["caller"] = caller
        return await handler(request)

    @staticmethod
    def _caller(request: web.Request) -> Caller:
        caller: Caller = request["caller"]
        return caller

    # --- the page -------------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return self._asset("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            return _error(404, f"no asset {name!r}")
        return self._asset(name)

    @staticmethod
    def _asset(name: str) -> web.Response:
        body = (resources.files("ntm_serve.ui") / "static" / name).read_bytes()
        kind = TYPES[name[name.rindex("."):]]
        return web.Response(body=body, content_type=kind, charset="utf-8",
                            headers={**SECURITY, "Cache-Control": "no-cache"})

    # --- the API --------------------------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        return web.json_response({"owner": caller.owner, "admin": caller.admin,
                                  "try_it": self.grpc_target.refusal or None}, headers=SECURITY)

    async def _models(self, request: web.Request) -> web.Response:
        rows = []
        for m in self.models.every():
            c = m.spec.config
            rows.append({"name": m.spec.name, "version": m.version, "task": m.spec.task, "encoding": m.spec.encoding,
                         "input_size": m.spec.input_size, "output_size": m.spec.output_size,
                         "memory_rows": c.get("memory_rows"), "memory_width": c.get("memory_width"),
                         "read_heads": c.get("read_heads"), "write_heads": c.get("write_heads"),
                         "controller": c.get("controller", ""), "provider": m.provider,
                         "output_activation": m.spec.output_activation, "unloading": self.models.unloading(m.key),
                         "checkpoint_sha256": m.spec.checkpoint_sha256})
        return web.json_response(rows, headers=SECURITY)

    async def _sessions(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        rows = []
        for s in sorted(self.hub.sessions(caller), key=lambda s: -s.created_wall):
            model = self.models.get_key(s.key)
            rows.append({"session_id": s.id, "model": s.model, "version": model.version if model else None,
                         "steps": s.steps, "created": s.created_wall, "ttl_s": s.ttl_s,
                         "memory_rows": s.memory_rows or (model.spec.config.get("memory_rows") if model else None),
                         "yours": s.owner == caller.owner, "owner": s.owner if caller.admin else None,
                         "watchers": self.hub.watchers(s.id)})
        return web.json_response(rows, headers=SECURITY)

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        try:
            every = int(request.query.get("every", "1"))
        except ValueError:
            return _error(400, "every must be an integer", "INVALID_ARGUMENT")
        try:
            watcher = await self.hub.open(request.match_info["session_id"], self._caller(request), every)
        except ServiceError as err:
            return _refusal(err)
        response = web.StreamResponse(headers={**SECURITY, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        sent = self.hub.sent_counter(watcher)
        try:
            await response.prepare(request)
            while True:
                item = await watcher.next()
                if isinstance(item, ServiceError):
                    await response.write(_event("end", {"code": item.code.name, "message": item.message}))
                    break
                frame, dropped = item
                await response.write(_event("frame", frame_json(frame, dropped)))
                sent.inc()
        except (ConnectionResetError, ConnectionError):  # the page went away
            pass
        finally:
            self.hub.close(watcher)
        return response

    async def _try(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if self.grpc_target.refusal:
            return _error(503, f"try-it is off: {self.grpc_target.refusal}", "UNAVAILABLE")
        try:
            body = await request.json()
            name, seed = str(body["model"]), int(body.get("seed", 0))
            delay_s = float(body.get("delay_ms", 60)) / 1000.0
        except (ValueError, KeyError, TypeError) as err:
            return _error(400, f"a JSON body {{\"model\", \"seed\", \"delay_ms\"}} is needed: {err}",
                          "INVALID_ARGUMENT")
        served = self.models.get(name)
        if served is None:
            return _error(404, f"unknown model {name!r}", "NOT_FOUND")
        try:
            example = example_for(served.spec.task, served.spec.task_metadata, seed)
        except ValueError as err:
            return _error(400, str(err), "INVALID_ARGUMENT")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        target = self.grpc_target

        def client() -> NTMClient:
            return NTMClient(target.target, token=token, timeout=30, tls_ca=target.tls_ca,
                             tls_server_name=target.tls_server_name)

        run = TryRun(client, name, example, caller.owner, delay_s, lambda sid: self.hub.watchers(sid) > 0)
        try:
            session_id = await asyncio.to_thread(run.create)
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            return _error(HTTP_STATUS.get(code, 500), err.details() or code.name, code.name)  # type: ignore[attr-defined]
        with self._runs_lock:
            self._runs[session_id] = run
            while len(self._runs) > KEPT_RUNS:
                self._runs.popitem(last=False)
        threading.Thread(target=run.run, name=f"try-{session_id[:6]}", daemon=True).start()
        return web.json_response({**run.report(), "inputs": _values(example.inputs),
                                  "targets": _values(example.targets), "first": example.first, "kind": example.kind,
                                  "params": example.params}, headers=SECURITY)

    async def _try_report(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        with self._runs_lock:
            run = self._runs.get(request.match_info["session_id"])
        if run is None or not (caller.admin or run.owner == caller.owner):
            return _error(404, "no try-it run of yours with this session id", "NOT_FOUND")
        return web.json_response(run.report(), headers=SECURITY)
