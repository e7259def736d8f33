"""`python -m service --models models --port 50051 --metrics-port 9090` (every flag also as NTM_* env)."""

from __future__ import annotations

import sys

from service.config import load_config
from service.server import run


def main(argv: list[str] | None = None) -> int:
    return run(load_config(argv))


if __name__ == "__main__":
    sys.exit(main())
