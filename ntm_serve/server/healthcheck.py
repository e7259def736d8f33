"""`python -m ntm_serve.server.healthcheck [--target HOST:PORT]`: exit 0 when the server's gRPC health says SERVING.

The container's health check (docker-compose.yml); uses the standard grpc.health.v1 service, in plaintext: with
TLS on the main port, give the server `--health-port` (NTM_HEALTH_PORT) and this probe uses that port.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout: float = 3.0) -> str:
    """The health status name of `service` ("" = the whole server), or the RPC error's code name."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return err.code().name  # type: ignore[attr-defined]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def default_target(env: Mapping[str, str]) -> str:
    """The server's plaintext health-only port when it has one (`NTM_HEALTH_PORT`, e.g. with TLS on), else
    its main port (`NTM_PORT`): the container's own settings tell the probe where to look."""
    health_port = env.get("NTM_HEALTH_PORT", "-1").strip()
    if health_port not in ("", "-1"):
        return f"localhost:{health_port}"
    return f"localhost:{env.get('NTM_PORT', '50051')}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ntm_serve.server.healthcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=default_target(os.environ),
                   help="host:port to ask (default localhost:NTM_HEALTH_PORT when set, else localhost:NTM_PORT)")
    p.add_argument("--service", default="ntm.v1.NTM", help='service name ("" for the whole server)')
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    args = p.parse_args(argv)
    status = check(args.target, args.service, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
