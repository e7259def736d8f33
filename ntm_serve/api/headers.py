"""gRPC metadata keys that the client, the server and the proxy share."""

from __future__ import annotations

SESSION_HEADER = "x-ntm-session"  # the one definition: the SDK sets it, the proxy hashes on it
