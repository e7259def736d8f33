"""Optional bearer-token authentication and the identity ("owner") a session belongs to.

With no tokens configured every caller is `ANONYMOUS` and owns every session. With tokens, every call
except health checks needs `authorization: Bearer <token>` (UNAUTHENTICATED otherwise), and the owner
is a digest of the token, so a session can only be used by the token that created it.

The ModelAdmin service (loading and unloading model versions) has its own tokens (`--admin-tokens`):
with them set, its calls need one (and session tokens do not do); with session tokens set and no admin
tokens, it is refused (PERMISSION_DENIED); with no tokens at all it answers anyone only when the server was
started with `--model-control`, and is refused otherwise (ntm_serve/server/admin.py). An admin token
may also watch any session (WatchSession, the inspector page).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

ANONYMOUS = "anonymous"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
ADMIN_PREFIX = "/ntm.v1.ModelAdmin/"
ADMIN_TOO = ("/ntm.v1.NTM/WatchSession",)  # NTM calls an admin token may make too: watching any session


def owner_of(token: str) -> str:
    """A stable, non-secret name for a token (logged and compared; the token itself never is)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenAuth:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def owner(self, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
        """The caller's owner name, `ANONYMOUS` when auth is off, None when the token is missing or wrong."""
        if not self._tokens:
            return ANONYMOUS
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                given = value[len("Bearer "):].strip().encode()
                matches = [hmac.compare_digest(given, t) for t in self._tokens]  # no early exit: constant time
                if any(matches):
                    return owner_of(given.decode())
        return None


def _deny(code: grpc.StatusCode, message: str) -> Callable[..., Awaitable[Any]]:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return deny


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer token before they reach a handler."""

    def __init__(self, auth: TokenAuth, admin: TokenAuth | None = None) -> None:
        self._auth = auth
        self._admin = admin or TokenAuth(())

    def _refusal(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> tuple[grpc.StatusCode, str] | None:
        """Why this call is refused, or None."""
        if method.startswith(EXEMPT_PREFIXES):
            return None
        if method.startswith(ADMIN_PREFIX):
            if self._admin.enabled:
                if self._admin.owner(metadata) is None:
                    return grpc.StatusCode.UNAUTHENTICATED, "ModelAdmin needs an admin bearer token (--admin-tokens)"
                return None
            if self._auth.enabled:
                return grpc.StatusCode.PERMISSION_DENIED, "ModelAdmin is off: the server has no --admin-tokens"
            return None
        if self._auth.owner(metadata) is not None:
            return None
        if method in ADMIN_TOO and self._admin.enabled and self._admin.owner(metadata) is not None:
            return None
        return (grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token (metadata 'authorization: Bearer <token>')")

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        refusal = None if handler is None else self._refusal(details.method, details.invocation_metadata)
        if refusal is None:
            return handler
        deny = _deny(*refusal)
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
