"""gRPC metadata keys that the client, the server and the proxy share, and how a session id names its placement
group (what the proxy routes on)."""

from __future__ import annotations

import re

SESSION_HEADER = "x-ntm-session"  # the one definition: the SDK sets it, the proxy hashes on it
GROUP_HEADER = "x-ntm-group"  # a session's placement group: when present the proxy hashes on it instead
GROUP_SEPARATOR = "."  # "<group>.<random>": never in a group or in the random part (URL-safe base64)
MAX_GROUP_CHARS = 64
_GROUP = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_GROUP_CHARS}}}")


def group_problem(group: str) -> str | None:
    """Why `group` cannot name a placement group, or None when it can ("" is no group)."""
    if group == "" or _GROUP.fullmatch(group):
        return None
    return (f"group must be 1 to {MAX_GROUP_CHARS} characters of A-Z a-z 0-9 _ - (or empty for none), got "
            f"{group[:MAX_GROUP_CHARS + 8]!r}")


def group_of(session_id: str) -> str:
    """The placement group a session id names ("" for none): the part before its last separator."""
    group, separator, _ = session_id.rpartition(GROUP_SEPARATOR)
    return group if separator else ""


def routing(session_id: str | None) -> tuple[tuple[str, str], ...]:
    """The headers that place a call on a session's replica: the session's id, and its group when it has one (the
    proxy hashes on the group first, so every session of a group lands on one replica)."""
    if not session_id:
        return ()
    group = group_of(session_id)
    return ((SESSION_HEADER, session_id), (GROUP_HEADER, group)) if group else ((SESSION_HEADER, session_id),)
