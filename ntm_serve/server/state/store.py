"""The shared session store of a cluster (Redis-compatible, e.g. Valkey): the last committed state of every
session, and the fencing that makes one replica at a time its only writer.

One hash per session, `<prefix>s:{<id>}`:

    model, version, digest   the weights the state belongs to (ntm.checkpoint_sha256; version: issue 14)
    owner, ttl_s, created    as in a snapshot; the key expires after ttl_s without a commit or takeover
    epoch                    raised by every takeover; a commit must name the current one (fencing)
    steps                    steps committed; a commit must name it as its starting point
    state                    the state tensors, in the snapshot format (ntm_serve/server/state/snapshot_format.py,
    checksummed)
    seq                      commits that recorded an answer (the answer slots below are a ring over it)
    rid:j, to:j, t:j, out:j  the answers of the last REPLAY_DEPTH committed requests (j = seq mod REPLAY_DEPTH):
                             request id, steps after it, its step count and outputs (float32), so a request
                             whose answer was lost (up to REPLAY_DEPTH back) is answered again instead of refused
    holder                   the replica that took it over last (for people reading the store)

A deleted session leaves `<prefix>gone:{<id>}` = "deleted" for a day (NOT_FOUND says why). The limits hold
across the cluster: `<prefix>live` and `<prefix>owned:<owner>` hold the ids of the live sessions (see `_LIVE`), so
every replica gives an owner the same answer. Every write is a Lua script, atomic in the store: `create` (only if
new, and within the limits), `claim` (a takeover: check owner and weights, raise
the epoch, return the record), `commit` (compare-and-set on epoch and steps; idempotent, so a commit retried
after a lost reply is recognised), the commits of a packed message's entries (all checked, then all written, or
none), `delete`.

A replicated store (`redis+sentinel://...`, ntm_serve/server/state/store_url.py): the client asks the Sentinels for
the primary and follows a failover by itself. With `min_replicas` M > 0 every write (create, claim, commit, delete)
is followed on its own connection by `WAIT M wait_ms`: it counts as done only when M replicas have it, else
StoreUnavailable (the caller answers UNAVAILABLE and acknowledges nothing). So an acknowledged step, and every
take-over a replica acted on, is on M + 1 store nodes: a failover to the most up-to-date replica keeps them, and
fencing holds across it (a claim that raised the epoch is on the new primary before its taker serves anything).
A stale primary (cut off, then back) has no replica to confirm a write: it can apply one but never acknowledge it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AioSentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import MasterDownError
from redis.retry import Retry
from redis.sentinel import Sentinel

from ntm_serve.api.replay import REPLAY_DEPTH
from ntm_serve.server.state.snapshot_format import SessionSnapshot, decode, encode
from ntm_serve.server.state.store_url import SENTINEL_SCHEME, check_store_url, parse_sentinel

TOMBSTONE_S = 86_400  # how long a deleted id answers "deleted" rather than "unknown"


class StoreUnavailable(redis.ConnectionError):
    """The store answered, but a write cannot be acknowledged now: it is not on `min_replicas` replicas within
    `wait_ms` (WAIT), or the primary refuses writes (NOREPLICAS: too few replicas; READONLY: it was demoted).
    Retryable like a lost connection; nothing it concerned counts as done."""


STORE_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)  # StoreUnavailable is a ConnectionError
_REFUSALS = ("NOREPLICAS",)  # a store's refusals to write that redis-py leaves as a plain ResponseError

# The limits (--max-sessions, --max-sessions-per-owner) hold across the cluster: `<prefix>live` and
# `<prefix>owned:<owner>` are sorted sets of session ids, each scored by a time (ms, the store's clock) before which
# its session cannot have expired (its TTL as last seen). A session key is the truth: an id whose time has come is
# looked at (PTTL of its key) and dropped when the key is gone (expired, deleted, never committed past a crash) or
# scored again when it lives on. A create looks at 8 such ids per set, and at all of them when the set is at its
# limit, so the count it refuses on is exact and nothing leaks (a replica that dies holds no count of its own).
_LIVE = """
local function prune(set, count, now, prefix)
  local due = redis.call('ZRANGE', set, '-inf', now, 'BYSCORE', 'LIMIT', 0, count)
  for _, id in ipairs(due) do
    local left = redis.call('PTTL', prefix .. '{' .. id .. '}')
    if left == -2 then redis.call('ZREM', set, id)
    elseif left < 0 then redis.call('ZADD', set, now + 86400000, id)
    else redis.call('ZADD', set, now + left, id) end
  end
end
local function live(set, limit, now, prefix)
  prune(set, 8, now, prefix)
  local n = redis.call('ZCARD', set)
  if limit > 0 and n >= limit then
    prune(set, n, now, prefix)
    n = redis.call('ZCARD', set)
  end
  return n
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS[1] session, KEYS[2] tombstone, KEYS[3] every live session (set), KEYS[4] the owner's (set). ARGV: id, ttl_ms,
# most live sessions (0: no limit), most per owner (0: no limit), the session keys' prefix, field/value pairs...
# 1 if written, 0 if the id exists, {'full', live} or {'owner', live} when a limit refuses it.
_CREATE = _LIVE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = now_ms()
local most, per_owner = tonumber(ARGV[3]), tonumber(ARGV[4])
local total = live(KEYS[3], most, now, ARGV[5])
if most > 0 and total >= most then return {'full', total} end
local own = live(KEYS[4], per_owner, now, ARGV[5])
if per_owner > 0 and own >= per_owner then return {'owner', own} end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[1])
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

# A commit's answer goes to slot seq mod DEPTH of the session's ring. A commit is recognised as applied already (a
# retry after a lost reply, maybe behind later commits of the same holder) when the session stands at its to_steps,
# or when its request is in the ring with that to_steps.
_ANSWERS = """
local DEPTH = REPLAY_DEPTH
local function applied(key, steps, to, rid)
  if steps == to then return true end
  if rid == '' then return false end
  for j = 0, DEPTH - 1 do
    local r = redis.call('HMGET', key, 'rid:' .. j, 'to:' .. j)
    if r[1] == rid and r[2] == to then return true end
  end
  return false
end
local function write(key, seq, to, state, rid, t, out)
  if rid == '' then
    redis.call('HSET', key, 'steps', to, 'state', state)
    return
  end
  local n = (tonumber(seq) or 0) + 1
  local j = n % DEPTH
  redis.call('HSET', key, 'steps', to, 'state', state, 'seq', n, 'rid:' .. j, rid, 'to:' .. j, to, 't:' .. j, t,
             'out:' .. j, out)
end
""".replace("REPLAY_DEPTH", str(REPLAY_DEPTH))

# KEYS[1] session. ARGV: epoch, from_steps, to_steps, state, rid, t, out, ttl_ms.
# {'ok'} | {'missing'} | {'fenced', epoch} | {'steps', steps}
_COMMIT = _ANSWERS + """
local h = redis.call('HMGET', KEYS[1], 'epoch', 'steps', 'seq')
if not h[1] then return {'missing'} end
if h[1] ~= ARGV[1] then return {'fenced', h[1]} end
if h[2] ~= ARGV[2] or ARGV[2] == ARGV[3] then
  if applied(KEYS[1], h[2], ARGV[3], ARGV[5]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[8])
    return {'ok'}
  end
  return {'steps', h[2]}
end
write(KEYS[1], h[3], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return {'ok'}
"""

# A packed message's commits, all or none (a message is applied whole or not at all, in the store too). KEYS: its
# E sessions; ARGV: _COMMIT's eight per entry, entry after entry. Every entry is checked as _COMMIT checks it before
# any is written. {'ok'} | {reason, detail, entry (from 0)}: the first entry that refused, nothing written.
_COMMIT_PACK = _ANSWERS + """
local todo = {}
for i = 1, #KEYS do
  local a = (i - 1) * 8
  local h = redis.call('HMGET', KEYS[i], 'epoch', 'steps', 'seq')
  if not h[1] then return {'missing', '', i - 1} end
  if h[1] ~= ARGV[a + 1] then return {'fenced', h[1], i - 1} end
  if h[2] ~= ARGV[a + 2] or ARGV[a + 2] == ARGV[a + 3] then
    if not applied(KEYS[i], h[2], ARGV[a + 3], ARGV[a + 5]) then return {'steps', h[2], i - 1} end
  else
    todo[i] = h[3] or '0'
  end
end
for i = 1, #KEYS do
  local a = (i - 1) * 8
  if todo[i] then
    write(KEYS[i], todo[i], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 8])
end
return {'ok'}
"""

# KEYS[1] session, KEYS[2] tombstone, KEYS[3] every live session, KEYS[4] the owner's. ARGV: owner, tombstone
# seconds, id. 'ok' | 'missing' | 'owner'
_DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 'missing' end
if owner ~= ARGV[1] then return 'owner' end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 'deleted', 'EX', ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[3])
return 'ok'
"""


class StoreError(RuntimeError):
    """The store cannot be used (unreachable at start, or a record that does not decode)."""


class StoreLimit(Exception):
    """A create refused by a limit that holds across the cluster: `which` is "full" (the live sessions) or "owner"
    (the owner's), `live` the count it found (after dropping the ids whose sessions are gone)."""

    def __init__(self, which: str, live: int) -> None:
        super().__init__(f"{which}: {live} live sessions")
        self.which = which
        self.live = live


@dataclass(frozen=True)
class Answer:
    """The recorded answer of a committed request: its id, the session's steps after it, its step count and outputs
    (float32 (t, O), little-endian). It started at to_steps - t."""

    rid: str
    to_steps: int
    t: int
    out: bytes


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
    answers: tuple[Answer, ...]  # of its last committed requests, oldest first (at most REPLAY_DEPTH)


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


@dataclass(frozen=True)
class PackCommit:
    """The commits of one packed message's entries: written all together or not at all (_COMMIT_PACK)."""

    items: tuple[CommitItem, ...]


def _commit_args(c: CommitItem) -> tuple[Any, ...]:
    return c.epoch, c.from_steps, c.to_steps, c.state_blob, c.rid, c.t, c.out, int(c.ttl_s * 1000)


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
        snapshot.state, _answers(fields, steps)))


def _answers(fields: dict[str, Any], steps: int) -> tuple[Answer, ...]:
    """The ring of recorded answers, oldest first; a record written before the ring (one `rid`, `t`, `out`: the
    last request, ending at `steps`) is read as a ring of one."""
    if "seq" not in fields and "rid" in fields:
        return (Answer(_text(fields["rid"]), steps, int(fields.get("t", 0)), bytes(fields.get("out", b""))),)
    seq = int(fields.get("seq", 0))
    answers = []
    for n in range(max(1, seq - REPLAY_DEPTH + 1), seq + 1):
        j = n % REPLAY_DEPTH
        if f"rid:{j}" in fields:
            answers.append(Answer(_text(fields[f"rid:{j}"]), int(fields[f"to:{j}"]), int(fields[f"t:{j}"]),
                                  bytes(fields[f"out:{j}"])))
    return tuple(answers)


def _refusal(err: Exception) -> Exception:
    """A store's refusal to write (NOREPLICAS, READONLY, ...) as StoreUnavailable; anything else as it is."""
    if isinstance(err, redis.ResponseError) and str(err).split(" ", 1)[0].upper() in _REFUSALS:
        return StoreUnavailable(f"the store refused the write: {err}")
    if isinstance(err, (redis.ReadOnlyError, MasterDownError)):  # redis-py strips the prefixes it maps
        return StoreUnavailable(f"the store refused the write ({type(err).__name__}): {err}")
    return err


class SessionStore:
    """The store through the `redis` client: an asyncio client for the gRPC handlers (create, claim, delete)
    and a blocking one for the commit thread (pipelined commits). `url`: ntm_serve/server/state/store_url.py.
    `min_replicas` > 0: a write counts only once that many store replicas have it (WAIT, `wait_ms`)."""

    def __init__(self, url: str, prefix: str = "ntm:", timeout_s: float = 2.0, *, min_replicas: int = 0,
                 wait_ms: int = 1000) -> None:
        check_store_url(url)
        if min_replicas < 0 or wait_ms < 1:
            raise ValueError(f"min_replicas must be >= 0 and wait_ms >= 1, got {min_replicas} and {wait_ms}")
        self.url = url
        self.prefix = prefix
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms
        # A WAIT blocks in the store for up to wait_ms: the socket must outlast it.
        socket_s = max(timeout_s, wait_ms / 1000 + 1.0) if min_replicas else timeout_s
        kwargs: dict[str, Any] = {"socket_timeout": socket_s, "socket_connect_timeout": min(timeout_s, 1.0),
                                  "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                                  "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
        if url.startswith(SENTINEL_SCHEME):
            target = parse_sentinel(url)
            asked = {"socket_timeout": min(timeout_s, 1.0), "socket_connect_timeout": min(timeout_s, 1.0)}
            kwargs.update(db=target.db, password=target.password)
            sentinels = list(target.sentinels)
            self.sync = Sentinel(sentinels, sentinel_kwargs=asked).master_for(target.service, **kwargs)
            self.aio = AioSentinel(sentinels, sentinel_kwargs=asked).master_for(target.service, **kwargs)
        else:
            self.sync = redis.Redis.from_url(url, **kwargs)
            self.aio = aioredis.Redis.from_url(url, **kwargs)

    # The id in braces is a hash tag: a session's two keys land in one slot of a sharded store (Valkey Cluster),
    # so every script touches one shard.
    def key(self, session_id: str) -> str:
        return f"{self.prefix}s:{{{session_id}}}"

    def gone_key(self, session_id: str) -> str:
        return f"{self.prefix}gone:{{{session_id}}}"

    def live_key(self) -> str:
        """Every live session's id (the limits; see _LIVE)."""
        return f"{self.prefix}live"

    def owned_key(self, owner: str) -> str:
        """The ids of one owner's live sessions."""
        return f"{self.prefix}owned:{owner}"

    def check(self) -> None:
        """Fail fast at start-up: the store answers (through its Sentinels: they name a primary), and runs Lua
        scripts."""
        try:
            self.sync.ping()
            self.sync.eval("return 1", 0)
        except (*STORE_ERRORS, redis.RedisError) as err:
            raise StoreError(f"session store {self.url} is not usable: {err}") from err

    def _short(self, acked: int) -> StoreUnavailable:
        return StoreUnavailable(f"written on {acked} of the {self.min_replicas} store replicas required within "
                                f"{self.wait_ms} ms: not acknowledged")

    async def _write(self, script: str, numkeys: int, *args: Any) -> Any:
        """Run a write script; with min_replicas, WAIT on the same connection (a pipeline) for its replicas."""
        if not self.min_replicas:
            try:
                return await self.aio.eval(script, numkeys, *args)
            except redis.ResponseError as err:
                raise await self._refused(_refusal(err)) from err
        pipe = self.aio.pipeline(transaction=False)
        pipe.eval(script, numkeys, *args)
        pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
        reply, acked = await pipe.execute(raise_on_error=False)
        for part in (reply, acked):
            if isinstance(part, Exception):
                raise await self._refused(_refusal(part))
        if int(acked) < self.min_replicas:
            raise await self._refused(self._short(int(acked)))
        return reply

    async def _refused(self, err: Exception) -> Exception:
        """After a refusal, drop the idle connections: they may lead to a stale primary (cut off, not demoted yet),
        and a new connection asks the Sentinels where the primary is now. Returns `err`."""
        if isinstance(err, StoreUnavailable):
            await self.aio.connection_pool.disconnect(inuse_connections=False)
        return err

    async def create(self, session_id: str, *, model: str, version: str, digest: str, owner: str, ttl_s: float,
                     created_wall: float, steps: int, blob: bytes, max_sessions: int = 0,
                     max_per_owner: int = 0) -> bool:
        """Write a new session (False: the id exists). `max_sessions`, `max_per_owner` (0: none): refuse it with
        StoreLimit when that many sessions, or that many of `owner`'s, live in the store."""
        fields = {"model": model, "version": version, "digest": digest, "owner": owner, "ttl_s": repr(ttl_s),
                  "created": repr(created_wall), "epoch": "0", "steps": str(steps), "state": blob, "holder": ""}
        key_prefix = self.key("").removesuffix("{}")  # the script makes an id's key as key_prefix{<id>}
        args = [session_id, int(ttl_s * 1000), max_sessions, max_per_owner, key_prefix,
                *(x for kv in fields.items() for x in kv)]
        reply = await self._write(_CREATE, 4, self.key(session_id), self.gone_key(session_id), self.live_key(),
                                  self.owned_key(owner), *args)
        if isinstance(reply, list):
            raise StoreLimit(_text(reply[0]), int(reply[1]))
        return bool(reply)

    async def live_count(self, owner: str | None = None) -> int:
        """The ids counted against the limits (all, or `owner`'s), as they stand: ids of sessions gone since are
        dropped by the next create that looks at them."""
        return int(await self.aio.zcard(self.live_key() if owner is None else self.owned_key(owner)))

    async def claim(self, session_id: str, owner: str, digests: list[str], holder: str) -> Claim:
        """Take a session over: raise its epoch (fencing out its previous holder) and return it. With
        min_replicas, the raised epoch is on that many replicas before the caller may serve the session."""
        reply = await self._write(_CLAIM, 1, self.key(session_id), owner, " ".join(digests), holder)
        return _parse_claim(session_id, reply)

    async def epoch(self, session_id: str) -> int | None:
        """The session's epoch in the primary. With min_replicas, also WAIT: a stale primary (cut off from its
        replicas, about to be demoted) cannot confirm, so a read never trusts it."""
        if not self.min_replicas:
            value = await self.aio.hget(self.key(session_id), "epoch")
        else:
            pipe = self.aio.pipeline(transaction=False)
            pipe.hget(self.key(session_id), "epoch")
            pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
            value, acked = await pipe.execute()
            if int(acked) < self.min_replicas:
                raise await self._refused(self._short(int(acked)))
        return int(value) if value is not None else None

    def answers(self, session_id: str) -> tuple[Answer, ...]:
        """The answers the store keeps of the session's last committed requests, oldest first (for people and tests
        reading the store; a replica gets them with its claim)."""
        fields = {_text(k): v for k, v in self.sync.hgetall(self.key(session_id)).items() if k != b"state"}
        return _answers(fields, int(fields.get("steps", 0)))

    async def gone(self, session_id: str) -> str | None:
        value = await self.aio.get(self.gone_key(session_id))
        return _text(value) if value is not None else None

    async def delete(self, session_id: str, owner: str) -> str:
        return _text(await self._write(_DELETE, 4, self.key(session_id), self.gone_key(session_id), self.live_key(),
                                       self.owned_key(owner), owner, TOMBSTONE_S, session_id))

    def commit_many(self, items: list[CommitItem | PackCommit]) -> list[tuple[str, str] | Exception]:
        """Commit a batch in one pipeline (one round trip): per item ("ok", "") or (reason, detail), or the
        exception when the store could not be reached or refused (the outcome is then unknown; a retried commit
        of the same item is recognised as already applied). A PackCommit is one item, all its entries or none; its
        refusal's detail is "<entry>:<detail>". With min_replicas the pipeline ends with one WAIT: an "ok" counts
        only when that many replicas have every commit of the batch, else it is StoreUnavailable."""
        pipe = self.sync.pipeline(transaction=False)
        for c in items:
            if isinstance(c, PackCommit):
                pipe.eval(_COMMIT_PACK, len(c.items), *(self.key(i.session_id) for i in c.items),
                          *(arg for i in c.items for arg in _commit_args(i)))
            else:
                pipe.eval(_COMMIT, 1, self.key(c.session_id), *_commit_args(c))
        if self.min_replicas:
            pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (*STORE_ERRORS, redis.RedisError) as err:
            return [_refusal(err)] * len(items)
        short: StoreUnavailable | None = None
        if self.min_replicas:
            acked = replies.pop()
            if isinstance(acked, Exception) or int(acked) < self.min_replicas:
                short = self._short(-1 if isinstance(acked, Exception) else int(acked))
        results: list[tuple[str, str] | Exception] = []
        for reply in replies:
            if isinstance(reply, Exception):
                results.append(_refusal(reply))
            elif short is not None and _text(reply[0]) == "ok":
                results.append(short)
            elif len(reply) > 2:  # a PackCommit refused by one of its entries
                results.append((_text(reply[0]), f"{int(reply[2])}:{_text(reply[1])}"))
            else:
                results.append((_text(reply[0]), _text(reply[1]) if len(reply) > 1 else ""))
        if any(isinstance(r, StoreUnavailable) for r in results):
            self.sync.connection_pool.disconnect()  # maybe a stale primary: the next round asks the Sentinels again
        return results

    def close(self) -> None:
        self.sync.close()

    async def aclose(self) -> None:
        await self.aio.aclose()
