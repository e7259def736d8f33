"""TLS credentials for the server (optionally requiring client certificates: mutual TLS) and for clients.

Certificates and keys are PEM files (or PEM bytes). The server reads them once at start-up: rotating a
certificate means a restart, which with `--state-dir` loses no session.
"""

from __future__ import annotations

from pathlib import Path

import grpc


class TLSConfigError(RuntimeError):
    """A certificate, key or CA file that cannot be read."""


def read_pem(source: str | Path | bytes | None, what: str) -> bytes | None:
    """PEM bytes from a path or bytes; None stays None."""
    if source is None or isinstance(source, bytes):
        return source
    try:
        data = Path(source).read_bytes()
    except OSError as err:
        raise TLSConfigError(f"{what}: cannot read {source}: {err}") from err
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{what}: {source} is not a PEM file")
    return data


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `client_ca`, clients must present a certificate it signed."""
    pair = (read_pem(key, "tls_key"), read_pem(cert, "tls_cert"))
    ca = read_pem(client_ca, "tls_client_ca")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(ca: str | Path | bytes | None = None, cert: str | Path | bytes | None = None,
                        key: str | Path | bytes | None = None) -> grpc.ChannelCredentials:
    """Client TLS: trust `ca` (default: the system's roots); `cert` and `key` present a client certificate."""
    if (cert is None) != (key is None):
        raise TLSConfigError("a client certificate needs its key (give both or neither)")
    return grpc.ssl_channel_credentials(read_pem(ca, "tls_ca"), read_pem(key, "tls_key"), read_pem(cert, "tls_cert"))
