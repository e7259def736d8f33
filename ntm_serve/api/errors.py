"""The one exception type the service raises for a refused request: a gRPC status code and a message.

Raised anywhere below the servicer (validation, sessions, batcher) and turned into a status (unary
calls) or a `StepResponse.error` (streams) at the edge.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServiceError({self.code.name}, {self.message!r})"


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def exhausted(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


def internal(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INTERNAL, message)


class PackError(ServiceError):
    """A refused packed message (StreamPackedSteps): the refused entries' own errors by entry index, out of
    `count` entries. Nothing was applied to any entry. Its code is the first refused entry's."""

    SHOWN = 5  # entries named in the summary message; every one has its own status in the response

    def __init__(self, entries: dict[int, ServiceError], count: int) -> None:
        order = sorted(entries)
        shown = "; ".join(f"entry {e}: {entries[e].message}" for e in order[: self.SHOWN])
        more = f"; and {len(order) - self.SHOWN} more" if len(order) > self.SHOWN else ""
        super().__init__(entries[order[0]].code, f"{len(order)} of {count} entries refused, nothing was applied: "
                                                 f"{shown}{more}")
        self.entries = entries
        self.count = count
