"""`python -m ntm_serve.server --models models --port 50051 --metrics-port 9090` (every flag also as NTM_* env)."""

from __future__ import annotations

import os
import sys

# gRPC's tuning for this server, read when gRPC starts, so set before anything imports grpc; a GRPC_EXPERIMENTS of
# the caller's own wins. "-event_engine_listener": accepted connections are polled by the thread that runs the
# completion queue instead of handed between EventEngine threads, half the context switches per message
# (docs/performance.md, section 3, "gRPC's thread hops").
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener")

from ntm_serve.server.config import load_config
from ntm_serve.server.server import run


def main(argv: list[str] | None = None) -> int:
    return run(load_config(argv))


if __name__ == "__main__":
    sys.exit(main())
