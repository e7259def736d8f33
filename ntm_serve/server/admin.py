"""The `ntm.v1.ModelAdmin` gRPC service: load and unload model versions at run time (ntm_serve/server/lifecycle.py).

Loading reads graphs and builds onnxruntime sessions (hundreds of milliseconds), and completing an unload
joins a batcher thread, so every call runs on an executor thread, never on the event loop.

Closed unless asked for (as Triton's model control): a server started with neither `--model-control` nor
`--admin-tokens` refuses every call PERMISSION_DENIED, so nobody on the port can unload a model and end its
sessions. Who may call it when it is on is the auth interceptor's business (ntm_serve/server/auth.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import grpc

from ntm_serve.api.errors import ServiceError, invalid
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from ntm_serve.server.lifecycle import Lifecycle, Status
from ntm_serve.server.metrics import Metrics
from ntm_serve.server.servicer import unary

log = logging.getLogger(__name__)

OFF = ("ModelAdmin is off (the default): start the server with --model-control (env NTM_MODEL_CONTROL=1) to let "
       "callers load and unload models, or with --admin-tokens to let only holders of an admin token do it")


def status_message(statuses: list[Status]) -> ntm_pb2.ModelStatusResponse:
    return ntm_pb2.ModelStatusResponse(versions=[
        ntm_pb2.VersionStatus(model=s.model, version=s.version, checkpoint_sha256=s.checkpoint_sha256,
                              state=ntm_pb2.VersionStatus.State.Value(s.state), live_sessions=s.live_sessions,
                              message=s.message)
        for s in statuses])


class ModelAdminServicer(ntm_pb2_grpc.ModelAdminServicer):
    def __init__(self, lifecycle: Lifecycle, metrics: Metrics, enabled: bool = False) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.enabled = enabled  # ServiceConfig.model_control_on: --model-control or --admin-tokens

    def _check_on(self) -> None:
        if not self.enabled:
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, OFF)

    def _count_error(self, method: str, err: ServiceError) -> None:
        self.metrics.errors.labels(method, err.code.name).inc()
        log.info("admin call refused", extra={"method": method, "code": err.code.name, "detail": err.message})

    async def _run(self, function: Any, *args: Any) -> ntm_pb2.ModelStatusResponse:
        loop = asyncio.get_running_loop()
        return status_message(await loop.run_in_executor(None, functools.partial(function, *args)))

    @unary
    async def LoadModel(self, request: ntm_pb2.LoadModelRequest, context: Any) -> ntm_pb2.ModelStatusResponse:
        self._check_on()
        if not request.model:
            raise invalid("model is required")
        version = request.version if request.HasField("version") else None
        if version is not None and version < 1:
            raise invalid(f"version must be >= 1 (or absent: every version folder), got {version}")
        log.info("admin: load", extra={"model": request.model, "version": version})
        return await self._run(self.lifecycle.load, request.model, version)

    @unary
    async def UnloadModel(self, request: ntm_pb2.UnloadModelRequest, context: Any) -> ntm_pb2.ModelStatusResponse:
        self._check_on()
        if not request.model:
            raise invalid("model is required")
        if request.version < 1:
            raise invalid(f"version is required (>= 1), got {request.version}")
        log.info("admin: unload", extra={"model": request.model, "version": request.version, "force": request.force})
        return await self._run(self.lifecycle.unload, request.model, request.version, request.force)

    @unary
    async def ModelStatus(self, request: ntm_pb2.ModelStatusRequest, context: Any) -> ntm_pb2.ModelStatusResponse:
        self._check_on()
        return await self._run(self.lifecycle.status, request.model)
