"""The inspector web page (`ntm-serve --ui-port 8080`): the models served, the live sessions, a session's memory and
the heads' weightings drawn live as it steps, and a "try it" panel. Served by aiohttp on the server's own event loop,
every asset from this package (no CDN); frames come straight from the server's watch hub
(ntm_serve/server/watch_hub.py). Needs the [ui] extra; the page is off unless --ui-port is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ntm_serve.server.registry import ModelSet
    from ntm_serve.server.watch_hub import WatchHub


class UIError(RuntimeError):
    """The page cannot be served (the [ui] extra is missing)."""


@dataclass(frozen=True)
class GrpcTarget:
    """How the try-it panel reaches the gRPC port, as a client: `target` on loopback, TLS when `tls_ca` is given;
    `refusal` says why it cannot (e.g. client certificates required), and then the panel says so."""

    target: str
    tls_ca: str | None = None
    tls_server_name: str | None = None
    refusal: str = ""


async def start_ui(host: str, port: int, hub: WatchHub, models: ModelSet, grpc_target: GrpcTarget) -> Any:
    """Serve the page on host:port; returns the running `ntm_serve.ui.app.UIServer` (its `port`, `close()`)."""
    try:
        from ntm_serve.ui.app import UIServer
    except ImportError as err:
        raise UIError(f"--ui-port needs the inspector's web stack: pip install 'ntm-serve[ui]' ({err})") from err
    server = UIServer(hub, models, grpc_target)
    await server.start(host, port)
    return server
