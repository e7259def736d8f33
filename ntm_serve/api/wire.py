"""Registering the NTM service with request decoding that never fails.

gRPC's generated registration decodes each request with `FromString`; a malformed message then ends the
call with UNKNOWN ("Unexpected DecodeError"), and ends a whole stream. Here a message that does not
parse becomes a `Malformed` value instead: unary calls answer it with INVALID_ARGUMENT, and a stream
answers it with an error response and goes on (its earlier and later requests are unaffected).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2

SERVICE = ntm_pb2.DESCRIPTOR.services_by_name["NTM"]


@dataclass(frozen=True)
class Malformed:
    """A request message that did not parse."""

    type_name: str
    error: str

    @property
    def message(self) -> str:
        return f"request is not a valid {self.type_name} message: {self.error}"


def tolerant(message_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as err:  # DecodeError; odd payloads raise others
            return Malformed(message_type.DESCRIPTOR.full_name, str(err) or type(err).__name__)

    return parse


def add_ntm_servicer(servicer: Any, server: grpc.aio.Server, name: str = "NTM") -> None:
    """Like `ntm_pb2_grpc.add_NTMServicer_to_server` (or of service `name` of the proto, e.g. ModelAdmin),
    with tolerant request decoding."""
    service = ntm_pb2.DESCRIPTOR.services_by_name[name]
    handlers = {}
    for method in service.methods:
        request = getattr(ntm_pb2, method.input_type.name)
        response = getattr(ntm_pb2, method.output_type.name)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(getattr(servicer, method.name), request_deserializer=tolerant(request),
                                     response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
