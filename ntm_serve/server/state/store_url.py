"""The store URL (`--store-url`), spelled once: one server, or a replicated store found through its Sentinels.

    redis://host:port[/db]  rediss://...  unix://path       one store server (the `redis` client's own URLs)
    redis+sentinel://[:password@]host:port[,host:port...]/service[/db]
                                                             a Valkey/Redis primary with replicas, watched by
                                                             Sentinels; the client asks them for the current
                                                             primary and follows a failover by itself

Pure parsing (no client imported), so the configuration can refuse a bad URL before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel://"
PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")
FORMS = ("redis://host:port[/db], rediss://..., unix://path, or "
         "redis+sentinel://host:port[,host:port...]/service[/db]")


@dataclass(frozen=True)
class SentinelTarget:
    """A replicated store: the Sentinels to ask, the name they monitor the primary under, the database."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None  # of the data nodes (the Sentinels are asked without one)


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"store_url {url!r}: sentinel address {text!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_sentinel(url: str) -> SentinelTarget:
    """`redis+sentinel://...` taken apart; ValueError saying what is wrong otherwise."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"store_url {url!r} is not a {SENTINEL_SCHEME} URL")
    rest = url[len(SENTINEL_SCHEME):]
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        password = unquote(auth.partition(":")[2]) or None
    if not netloc:
        raise ValueError(f"store_url {url!r}: no sentinel address (redis+sentinel://host:port,.../service)")
    sentinels = tuple(_host_port(part, url) for part in netloc.split(","))
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError(f"store_url {url!r}: no service name (the name the Sentinels monitor the primary under: "
                         "redis+sentinel://host:port,.../service)")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"store_url {url!r}: the path is /service[/db] with db a number")
    return SentinelTarget(sentinels, parts[0], int(parts[1]) if len(parts) == 2 else 0, password)


def check_store_url(url: str) -> None:
    """ValueError unless `url` is one of the FORMS."""
    if url.startswith(SENTINEL_SCHEME):
        parse_sentinel(url)
    elif not url.startswith(PLAIN_SCHEMES):
        raise ValueError(f"store_url must be {FORMS}, got {url!r}")
