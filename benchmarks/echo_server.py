"""The floor under any Python gRPC server of this contract: StreamSteps answered without a model.

`python -m benchmarks.echo_server --port P --metrics-port Q` serves the NTM service's CreateSession,
DeleteSession, ListModels, StreamSteps and StreamPackedSteps, where each step request is answered at once with
zeros of the right shape (T x 8; E x T x 8 for a packed message): the same grpc.aio machinery, protobuf
messages and load as the real server, and no model, batcher or validation. What it costs per message is what
gRPC and the event loop cost per message in Python; benchmarks/overhead.py measures it beside the real server
(docs/performance.md). Its metrics endpoint serves the two batch metrics the load cells read, as zeros.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from prometheus_client import Histogram, start_http_server

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from ntm_serve.api.tensors import to_tensor

OUTPUT_SIZE = 8  # the copy model's output width


class EchoNTM(ntm_pb2_grpc.NTMServicer):
    """Answers every step request with zeros; sessions exist only as ids."""

    def __init__(self) -> None:
        self._steps: dict[str, int] = {}
        self._zeros: dict[tuple[int, ...], ntm_pb2.Tensor] = {}

    async def ListModels(self, request: Any, context: Any) -> ntm_pb2.ListModelsResponse:
        return ntm_pb2.ListModelsResponse(models=[ntm_pb2.ModelInfo(name="copy")])

    async def CreateSession(self, request: Any, context: Any) -> ntm_pb2.Session:
        session_id = uuid.uuid4().hex
        self._steps[session_id] = 0
        return ntm_pb2.Session(session_id=session_id, model=request.model)

    async def DeleteSession(self, request: Any, context: Any) -> ntm_pb2.DeleteSessionResponse:
        self._steps.pop(request.session_id, None)
        return ntm_pb2.DeleteSessionResponse()

    def _answer(self, request: ntm_pb2.StepRequest) -> ntm_pb2.StepResponse:
        steps = request.inputs.shape[0]
        zeros = self._zeros_of((steps,))
        self._steps[request.session_id] = self._steps.get(request.session_id, 0) + steps
        return ntm_pb2.StepResponse(session_id=request.session_id, request_id=request.request_id,
                                    steps=self._steps[request.session_id], outputs=zeros)

    def _zeros_of(self, shape: tuple[int, ...]) -> ntm_pb2.Tensor:
        zeros = self._zeros.get(shape)
        if zeros is None:
            zeros = self._zeros[shape] = to_tensor(np.zeros((*shape, OUTPUT_SIZE), np.float32))
        return zeros

    def _answer_packed(self, request: ntm_pb2.PackedStepRequest) -> ntm_pb2.PackedStepResponse:
        entries, steps = request.inputs.shape[0], request.inputs.shape[1]
        totals = []
        for entry in request.entries:
            totals.append(self._steps.get(entry.session_id, 0) + steps)
            self._steps[entry.session_id] = totals[-1]
        return ntm_pb2.PackedStepResponse(request_id=request.request_id, outputs=self._zeros_of((entries, steps)),
                                          steps=totals)

    async def StreamSteps(self, request_iterator: AsyncIterator[ntm_pb2.StepRequest], context: Any) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            await context.write(self._answer(request))

    async def StreamPackedSteps(self, request_iterator: AsyncIterator[ntm_pb2.PackedStepRequest],
                                context: Any) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            await context.write(self._answer_packed(request))


class IteratorEchoNTM(EchoNTM):
    """The same with the request iterator and an async generator (what StreamSteps used before): for the
    comparison in docs/performance.md."""

    async def StreamSteps(self, request_iterator: AsyncIterator[ntm_pb2.StepRequest],  # type: ignore[override]
                          context: Any) -> AsyncIterator[ntm_pb2.StepResponse]:
        async for request in request_iterator:
            yield self._answer(request)


async def serve(host: str, port: int, iterator: bool) -> None:
    server = grpc.aio.server()
    ntm_pb2_grpc.add_NTMServicer_to_server(IteratorEchoNTM() if iterator else EchoNTM(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--echo-iterator", action="store_true",
                        help="StreamSteps through the request iterator and an async generator, not read()/write()")
    args, _ = parser.parse_known_args()  # the real server's other flags are accepted and ignored
    Histogram("ntm_batch_size", "always empty here", ["model"])
    start_http_server(args.metrics_port, args.metrics_host)
    asyncio.run(serve(args.host, args.port, args.echo_iterator))


if __name__ == "__main__":
    main()
