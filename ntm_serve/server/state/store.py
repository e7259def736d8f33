"""The shared session store of a cluster (Redis-compatible, e.g. Valkey): the last committed state of every
session, and the fencing that makes one replica at a time its only writer.

One hash per session, `<prefix>s:{<id>}`:

    model, version, digest   the weights the state belongs to (ntm.checkpoint_sha256; version: issue 14)
    owner, ttl_s, created    as in a snapshot; the key expires after ttl_s without a commit or takeover
    epoch                    raised by every takeover; a commit must name the current one (fencing)
    steps                    steps committed; a commit must name it as its starting point
    state                    the state tensors, in the snapshot format (ntm_serve/server/state/snapshot_format.py,
    checksummed)
    rid, t, out              the last committed request: id, step count and outputs (float32), so a retry of
                             a request whose answer was lost is answered again instead of refused
    holder                   the replica that took it over last (for people reading the store)

A deleted session leaves `<prefix>gone:{<id>}` = "deleted" for a day (NOT_FOUND says why). Every write is a
Lua script, atomic in the store: `create` (only if new), `claim` (a takeover: check owner and weights, raise
the epoch, return the record), `commit` (compare-and-set on epoch and steps; idempotent, so a commit retried
after a lost reply is recognised), `delete`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ntm_serve.server.state.snapshot_format import SessionSnapshot, decode, encode

TOMBSTONE_S = 86_400  # how long a deleted id answers "deleted" rather than "unknown"
STORE_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)

# KEYS[1] session, KEYS[2] tombstone. ARGV: field/value pairs..., ttl_ms last. 1 if written, 0 if the id exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 1, #ARGV - 1))
redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV])
return 1
"""

# KEYS[1] session. ARGV: owner, digests served here (space-separated), holder.
# {'missing'} | {'owner'} | {'digest', digest, model, version} | {'ok', field, value, ...} (after the epoch rise)
_CLAIM = """
local h = redis.call('HMGET', KEYS[1], 'owner', 'digest', 'model', 'version', 'ttl_s')
if not h[1] then return {'missing'} end
if h[1] ~= ARGV[1] then return {'owner'} end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. h[2] .. ' ', 1, true) then
  return {'digest', h[2], h[3], h[4] or ''}
end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(h[5]) * 1000))
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 'ok')
return out
"""

# KEYS[1] session. ARGV: epoch, from_steps, to_steps, state, rid, t, out, ttl_ms.
# {'ok'} | {'missing'} | {'fenced', epoch} | {'steps', steps}
_COMMIT = """
local h = redis.call('HMGET', KEYS[1], 'epoch', 'steps')
if not h[1] then return {'missing'} end
if h[1] ~= ARGV[1] then return {'fenced', h[1]} end
if h[2] == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  return {'ok'}
end
if h[2] ~= ARGV[2] then return {'steps', h[2]} end
redis.call('HSET', KEYS[1], 'steps', ARGV[3], 'state', ARGV[4], 'rid', ARGV[5], 't', ARGV[6], 'out', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return {'ok'}
"""

# KEYS[1] session, KEYS[2] tombstone. ARGV: owner, tombstone seconds. 'ok' | 'missing' | 'owner'
_DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 'missing' end
if owner ~= ARGV[1] then return 'owner' end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 'deleted', 'EX', ARGV[2])
return 'ok'
"""


class StoreError(RuntimeError):
    """The store cannot be used (unreachable at start, or a record that does not decode)."""


@dataclass(frozen=True)
class StoredSession:
    """A session as the store holds it (after a claim)."""

    session_id: str
    model: str
    version: str
    digest: str
    owner: str
    ttl_s: float
    created_wall: float
    epoch: int
    steps: int
    state: dict[str, np.ndarray]
    last_rid: str
    last_t: int
    last_out: bytes  # float32 (last_t, O), little-endian


@dataclass(frozen=True)
class Claim:
    """What a takeover found: `session` when it is ours now; else why not (missing, owner, digest)."""

    outcome: str
    session: StoredSession | None = None
    digest: str = ""
    model: str = ""
    version: str = ""


@dataclass(frozen=True)
class CommitItem:
    session_id: str
    epoch: int
    from_steps: int
    to_steps: int
    state_blob: bytes  # snapshot_format bytes of the state after to_steps
    rid: str
    t: int
    out: bytes  # float32 outputs of the committed request
    ttl_s: float


def state_blob(session_id: str, model: str, owner: str, ttl_s: float, created_wall: float, steps: int,
               digest: str, state: dict[str, np.ndarray]) -> bytes:
    """The state in the snapshot format: the same checksummed bytes as a `--state-dir` file."""
    return encode(SessionSnapshot(session_id, model, owner, ttl_s, created_wall, time.time(), steps, digest, state))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_claim(session_id: str, reply: list[Any]) -> Claim:
    outcome = _text(reply[0])
    if outcome == "digest":
        return Claim("digest", digest=_text(reply[1]), model=_text(reply[2]), version=_text(reply[3]))
    if outcome != "ok":
        return Claim(outcome)
    fields = {_text(k): v for k, v in zip(reply[1::2], reply[2::2], strict=True)}
    try:
        snapshot = decode(fields["state"])
    except Exception as err:
        raise StoreError(f"session {session_id}: stored state does not decode ({err})") from err
    steps = int(fields["steps"])
    if snapshot.steps != steps or snapshot.checkpoint_sha256 != _text(fields["digest"]):
        raise StoreError(f"session {session_id}: stored state disagrees with its record (steps or weights)")
    return Claim("ok", StoredSession(
        session_id, _text(fields["model"]), _text(fields.get("version", b"")), _text(fields["digest"]),
        _text(fields["owner"]), float(fields["ttl_s"]), float(fields["created"]), int(fields["epoch"]), steps,
        snapshot.state, _text(fields.get("rid", b"")), int(fields.get("t", 0)), bytes(fields.get("out", b""))))


class SessionStore:
    """The store through the `redis` client: an asyncio client for the gRPC handlers (create, claim, delete)
    and a blocking one for the commit thread (pipelined commits)."""

    def __init__(self, url: str, prefix: str = "ntm:", timeout_s: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": min(timeout_s, 1.0),
                                  "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                                  "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
        self.sync = redis.Redis.from_url(url, **kwargs)
        self.aio = aioredis.Redis.from_url(url, **kwargs)

    # The id in braces is a hash tag: a session's two keys land in one slot of a sharded store (Valkey Cluster),
    # so every script touches one shard.
    def key(self, session_id: str) -> str:
        return f"{self.prefix}s:{{{session_id}}}"

    def gone_key(self, session_id: str) -> str:
        return f"{self.prefix}gone:{{{session_id}}}"

    def check(self) -> None:
        """Fail fast at start-up: the store answers, and runs Lua scripts."""
        try:
            self.sync.ping()
            self.sync.eval("return 1", 0)
        except (*STORE_ERRORS, redis.RedisError) as err:
            raise StoreError(f"session store {self.url} is not usable: {err}") from err

    async def create(self, session_id: str, *, model: str, version: str, digest: str, owner: str, ttl_s: float,
                     created_wall: float, steps: int, blob: bytes) -> bool:
        fields = {"model": model, "version": version, "digest": digest, "owner": owner, "ttl_s": repr(ttl_s),
                  "created": repr(created_wall), "epoch": "0", "steps": str(steps), "state": blob, "holder": ""}
        args = [x for kv in fields.items() for x in kv] + [int(ttl_s * 1000)]
        return bool(await self.aio.eval(_CREATE, 2, self.key(session_id), self.gone_key(session_id), *args))

    async def claim(self, session_id: str, owner: str, digests: list[str], holder: str) -> Claim:
        """Take a session over: raise its epoch (fencing out its previous holder) and return it."""
        reply = await self.aio.eval(_CLAIM, 1, self.key(session_id), owner, " ".join(digests), holder)
        return _parse_claim(session_id, reply)

    async def epoch(self, session_id: str) -> int | None:
        value = await self.aio.hget(self.key(session_id), "epoch")
        return int(value) if value is not None else None

    async def gone(self, session_id: str) -> str | None:
        value = await self.aio.get(self.gone_key(session_id))
        return _text(value) if value is not None else None

    async def delete(self, session_id: str, owner: str) -> str:
        return _text(await self.aio.eval(_DELETE, 2, self.key(session_id), self.gone_key(session_id), owner,
                                         TOMBSTONE_S))

    def commit_many(self, items: list[CommitItem]) -> list[tuple[str, str] | Exception]:
        """Commit a batch in one pipeline (one round trip): per item ("ok", "") or (reason, detail), or the
        exception when the store could not be reached (the outcome is then unknown; a retried commit of the
        same item is recognised as already applied)."""
        pipe = self.sync.pipeline(transaction=False)
        for c in items:
            pipe.eval(_COMMIT, 1, self.key(c.session_id), c.epoch, c.from_steps, c.to_steps, c.state_blob, c.rid,
                      c.t, c.out, int(c.ttl_s * 1000))
        try:
            replies = pipe.execute(raise_on_error=False)
        except (*STORE_ERRORS, redis.RedisError) as err:
            return [err] * len(items)
        results: list[tuple[str, str] | Exception] = []
        for reply in replies:
            if isinstance(reply, Exception):
                results.append(reply)
            else:
                results.append((_text(reply[0]), _text(reply[1]) if len(reply) > 1 else ""))
        return results

    def close(self) -> None:
        self.sync.close()

    async def aclose(self) -> None:
        await self.aio.aclose()
