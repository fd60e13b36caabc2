"""The Redis store: ``redis://host:6379/0`` (``rediss://`` for TLS, ``unix:///path/redis.sock?db=0``
for a server on this machine).

Options in the URL's query, beside redis-py's own: ``prefix`` (of every key, default
``musiccallback:``), ``lease`` and ``timeout`` (seconds).

Per delivery, with ``ID`` = ``<task id>/<stage>`` (URL-quoted):

``<prefix>claim:ID``
    The claim, taken with ``SET NX PX <lease>`` and holding its owner (``hostname:pid/token``,
    :func:`~.owners.claim_owner`) while the delivery is
    pending or processing, so a dead process's claim expires by itself after the lease. Once
    settled it holds ``done`` or ``failed`` for the TTL; a release deletes it, so that the next
    redelivery's ``SET NX`` succeeds.
``<prefix>delivery:ID``
    A hash with the payload, headers, state, attempts, last error and timestamps, expiring ``ttl``
    seconds after its last change.
``<prefix>index``
    A sorted set of IDs scored by their last change, for listing newest first and pruning;
    ``<prefix>index:inflight``, ``<prefix>index:failed`` and ``<prefix>index:unreadable`` hold
    those pending or processing (for the sweep), those that failed (for ``list --status failed``)
    and the unreadable bodies kept (for reading them again), so that none of these reads every
    delivery kept for the TTL.

An unreadable body (:meth:`RedisStore.keep_unreadable`) has a hash and no claim: nothing claims it.

Per task, ``<prefix>task:<task id>`` is a hash of its family, state, polls and times, with a field
``stage:<stage>`` per stage heard of (the time it was first received, so a later one is an
``HSETNX``), expiring ``ttl`` seconds after the task was last expected.

Every transition is one Lua script, atomic in Redis, timed by the Redis server's clock; the claim
takes a single round trip. All keys of one store live on one server: Redis Cluster is not
supported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from .base import (
    DEFAULT_LEASE,
    MAX_ERROR_LENGTH,
    STATUS_STATES,
    ClaimResult,
    Delivery,
    DeliveryState,
    KeptDelivery,
    PersistentStore,
    StoreHealth,
    lease_from_url,
    paced,
    timeout_from_url,
    unusable_url,
)
from .owners import claim_owner
from .tasks import TaskChange, TaskRecord, TaskState

DEFAULT_PREFIX = "musiccallback:"

_Kept = TypeVar("_Kept")

# Redis time in microseconds, shared by every script below: fine enough that two changes never
# share a time, so listing by last change keeps their order. ``stamp`` formats a time exactly.
_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function stamp(moment) return string.format('%.0f', moment) end
local nowstamp = stamp(now)
"""

# ``inflight`` indexes the deliveries pending or processing, ``failed`` those that failed,
# ``unreadable`` the unreadable bodies, beside the index of all of them (KEYS[3]); each is derived
# from that key, which keeps every key of a store under one prefix. A delivery leaves ``failed``
# when it is in flight again: taken over by a claim, or by a replay.
_INDEXES = """
local inflight = KEYS[3] .. ':inflight'
local failed = KEYS[3] .. ':failed'
local unreadable = KEYS[3] .. ':unreadable'
"""

_NOW = _CLOCK + _INDEXES

# KEYS: claim, delivery, index, claim of the superseding stage (or the claim again)
# ARGV: owner, lease ms, ttl s, state, id, task id, stage, payload, headers, received µs, stale?
# A first claim writes the whole hash in one HSET; a takeover keeps created_at and counts up.
_CLAIM = (
    _NOW
    + """
if ARGV[11] == '1' and redis.call('GET', KEYS[4]) == 'done' then return 'stale' end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local held = redis.call('GET', KEYS[1])
  if held == ARGV[1] then return 'claimed' end
  if held == 'done' or held == 'failed' then return 'duplicate' end
  return 'in_progress'
end
local fields = {'id', ARGV[5], 'task_id', ARGV[6], 'stage', ARGV[7], 'state', ARGV[4],
  'released', '0', 'owner', ARGV[1], 'lease_expires_at', stamp(now + ARGV[2] * 1000),
  'payload', ARGV[8], 'headers', ARGV[9], 'received_at', ARGV[10], 'updated_at', nowstamp}
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'created_at', nowstamp, 'attempts', '1', unpack(fields))
else
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('ZREM', failed, ARGV[5])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
local forgotten = stamp(now - ARGV[3] * 1000000)
redis.call('ZADD', KEYS[3], nowstamp, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', forgotten)
redis.call('ZADD', inflight, nowstamp, ARGV[5])
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', forgotten)
return 'claimed'
"""
)

# KEYS: claim, delivery, index
# ARGV: outcome (done | failed | released), owner, ttl s, error, id
# Only the claim's owner settles it: sent again after a lost answer, or by an owner whose claim
# was taken over meanwhile, it changes nothing.
_SETTLE = (
    _NOW
    + """
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[2] and redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if ARGV[1] == 'released' then
  if redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local state = ARGV[1] == 'done' and 'done' or 'failed'
redis.call('HSET', KEYS[2], 'state', state, 'released', ARGV[1] == 'released' and '1' or '0',
  'owner', '', 'lease_expires_at', '', 'updated_at', nowstamp)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[4]) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], nowstamp, ARGV[5])
redis.call('ZREM', inflight, ARGV[5])
if state == 'failed' then
  redis.call('ZADD', failed, nowstamp, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', failed, '-inf', stamp(now - ARGV[3] * 1000000))
end
return 1
"""
)

# KEYS: claim, delivery, index
# ARGV: owner, lease ms, ttl s, id, force ('1' | '0'), dead owner (or ''), state
# Takes the claim for this owner, counting an attempt: a replay. Taken by this owner already,
# it was this take, sent again after a lost answer. An unreadable body is never taken.
_TAKE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
if redis.call('HGET', KEYS[2], 'state') == 'unreadable' then return false end
if redis.call('HGET', KEYS[2], 'owner') == ARGV[1] then return redis.call('HGETALL', KEYS[2]) end
if ARGV[5] ~= '1' then
  local held = redis.call('GET', KEYS[1])
  local live = held and held ~= 'done' and held ~= 'failed' and held ~= ARGV[6]
  if live or redis.call('HGET', KEYS[2], 'state') == 'done' then return false end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'state', ARGV[7], 'released', '0', 'owner', ARGV[1],
  'lease_expires_at', stamp(now + ARGV[2] * 1000), 'updated_at', nowstamp)
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], nowstamp, ARGV[4])
redis.call('ZADD', inflight, nowstamp, ARGV[4])
redis.call('ZREM', failed, ARGV[4])
return redis.call('HGETALL', KEYS[2])
"""
)

# KEYS: claim, delivery, index
# ARGV: new owner, lease ms, ttl s, id, owner of the claim
# A queued delivery starts: only while it is in flight under the claim the job was given (pending,
# or still processing under the job's previous attempt whose deferral is not written yet), so that
# two jobs never both run it; held by the new owner already, it was this start, sent again.
_START = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[2], 'state')
local held = redis.call('HGET', KEYS[2], 'owner')
if state ~= 'pending' and state ~= 'processing' then return 0 end
if held ~= ARGV[1] and held ~= ARGV[5] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'processing', 'owner', ARGV[1],
  'lease_expires_at', stamp(now + ARGV[2] * 1000), 'updated_at', nowstamp)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], nowstamp, ARGV[4])
redis.call('ZADD', inflight, nowstamp, ARGV[4])
return 1
"""
)

# KEYS: claim, delivery, index
# ARGV: owner, hold ms (the back-off and a lease), ttl s, id, error
# A failed attempt whose retry waits: counted, pending again, the claim held through the wait; only
# by the owner processing it (sent again after a lost answer, it is pending already).
_DEFER = (
    _NOW
    + """
if redis.call('HGET', KEYS[2], 'state') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'pending', 'released', '0', 'owner', ARGV[1],
  'lease_expires_at', stamp(now + ARGV[2] * 1000), 'last_error', ARGV[5],
  'updated_at', nowstamp)
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], nowstamp, ARGV[4])
redis.call('ZADD', inflight, nowstamp, ARGV[4])
return 1
"""
)

# KEYS: claim, delivery, index
# ARGV: id, ttl s, task id, stage, payload, headers, received µs, error
# An unreadable body, kept unless its key is: held by nobody, and in no index a claim reads.
_KEEP = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'task_id', ARGV[3], 'stage', ARGV[4],
  'state', 'unreadable', 'released', '0', 'owner', '', 'lease_expires_at', '', 'attempts', '1',
  'last_error', ARGV[8], 'payload', ARGV[5], 'headers', ARGV[6], 'received_at', ARGV[7],
  'created_at', nowstamp, 'updated_at', nowstamp)
redis.call('EXPIRE', KEYS[2], ARGV[2])
local forgotten = stamp(now - ARGV[2] * 1000000)
for _, index in ipairs({KEYS[3], unreadable}) do
  redis.call('ZADD', index, nowstamp, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', index, '-inf', forgotten)
end
return 1
"""
)

# KEYS: claim, delivery, index
# ARGV: id
# Forgets a delivery: its claim, its hash, its place in every index; 1 if it was kept.
_FORGOTTEN = (
    _INDEXES
    + """
redis.call('DEL', KEYS[1])
for _, index in ipairs({KEYS[3], inflight, failed, unreadable}) do
  redis.call('ZREM', index, ARGV[1])
end
local removed = redis.call('DEL', KEYS[2])
"""
)

_FORGET = _FORGOTTEN + "return removed\n"

# KEYS: claim, delivery, index
# ARGV: id, cutoff µs
# Forgets a delivery unchanged since the cutoff, unless a claim holds it: 1 when it was kept, 0
# when a claim holds it (it stays in the index, at its place), -1 when it has left the range of
# expired entries otherwise (changed since the cutoff, or its hash had expired by itself: the
# index forgets it).
_PRUNE = (
    """
local updated = tonumber(redis.call('HGET', KEYS[2], 'updated_at'))
if updated and updated >= tonumber(ARGV[2]) then return -1 end
local held = redis.call('GET', KEYS[1])
if held and held ~= 'done' and held ~= 'failed' then return 0 end
"""
    + _FORGOTTEN
    + """
if removed == 0 then return -1 end
return 1
"""
)

# Every script that changes a task (KEYS[1]) keeps the task indexes (KEYS[2], and KEYS[2] ..
# ':' .. state) in step: ``heard`` moves the task to ``state`` (from ``old``, its state before)
# as heard of now, for as long as the hash lives, and forgets the ids of hashes that expired.
_TASK_INDEXES = """
local function heard(id, old, state, ttl)
  redis.call('HSET', KEYS[1], 'state', state, 'updated_at', nowstamp)
  redis.call('EXPIRE', KEYS[1], ttl)
  if old and old ~= state then redis.call('ZREM', KEYS[2] .. ':' .. old, id) end
  local forgotten = stamp(now - ttl * 1000000)
  for _, index in ipairs({KEYS[2], KEYS[2] .. ':' .. state}) do
    redis.call('ZADD', index, nowstamp, id)
    redis.call('ZREMRANGEBYSCORE', index, '-inf', forgotten)
  end
end
"""

# KEYS: task, tasks index
# ARGV: task id, family, ttl s
# A task expected: created open, expected now; expected again, its family and time of change
# only, so that a retried submission keeps when it was first expected, its state and stages.
_EXPECT = (
    _CLOCK
    + _TASK_INDEXES
    + """
local old = redis.call('HGET', KEYS[1], 'state')
local new = {created_at = nowstamp, expected_at = nowstamp, polls = '0'}
for field, value in pairs(new) do redis.call('HSETNX', KEYS[1], field, value) end
redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'family', ARGV[2])
heard(ARGV[1], old, old or 'open', ARGV[3])
return 1
"""
)

# KEYS: task, tasks index
# ARGV: task id, family, stage, at µs, via, final state (or ''), ttl s
# A stage heard of: an unknown task is created open, never expected; each stage keeps the time
# and the way it first came (HSETNX); a final stage settles the state, whatever it was.
_HEARD = (
    _CLOCK
    + _TASK_INDEXES
    + """
local old = redis.call('HGET', KEYS[1], 'state')
if not old then
  redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'family', ARGV[2], 'polls', '0',
    'created_at', nowstamp)
end
redis.call('HSETNX', KEYS[1], 'stage:' .. ARGV[3], ARGV[4])
redis.call('HSETNX', KEYS[1], 'via:' .. ARGV[3], ARGV[5])
heard(ARGV[1], old, ARGV[6] ~= '' and ARGV[6] or old or 'open', ARGV[7])
return 1
"""
)

# KEYS: task
# ARGV: owner, now µs, lease until µs (both on the caller's clock, which reconciliation keeps)
# An open task taken for reconciliation unless another owner's lease still runs.
_CLAIM_TASK = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return false end
local owner = redis.call('HGET', KEYS[1], 'owner')
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_expires_at') or '')
if owner and owner ~= '' and owner ~= ARGV[1] and lease and lease > tonumber(ARGV[2]) then
  return false
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_expires_at', ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: task, tasks index
# ARGV: owner, polled ('1' | '0'), next poll µs (or ''), overdue ('1' | '0'), lost ('1' | '0'),
#       ttl s, task id
# Gives back the owner's claim with what reconciliation did; says {overdue now, lost now}.
_RELEASE_TASK = (
    _CLOCK
    + _TASK_INDEXES
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {0, 0} end
redis.call('HSET', KEYS[1], 'owner', '', 'lease_expires_at', '', 'next_poll_at', ARGV[3])
local overdue, lost = 0, 0
if ARGV[4] == '1' and (redis.call('HGET', KEYS[1], 'overdue_at') or '') == '' then
  redis.call('HSET', KEYS[1], 'overdue_at', nowstamp)
  overdue = 1
end
local old = redis.call('HGET', KEYS[1], 'state')
if ARGV[5] == '1' and old == 'open' then lost = 1 end
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'polls', 1) end
if ARGV[2] == '1' or lost == 1 then heard(ARGV[7], old, lost == 1 and 'lost' or old, ARGV[6]) end
return {overdue, lost}
"""
)

# KEYS: signature
# ARGV: digest, ttl ms
# A new signature is remembered with its body's digest; one seen says whether the digest is its.
_SIGNATURE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return redis.call('GET', KEYS[1]) == ARGV[1] and 1 or 0
"""

#: How a task's hash names the field of each stage heard of, and of the way it came.
_STAGE_FIELD = "stage:"
_VIA_FIELD = "via:"

#: The index of its own each ``--status`` lists from (the scripts keep them), beside ``index``.
_STATUS_INDEXES = {"pending": ":inflight", "failed": ":failed", "unreadable": ":unreadable"}

# KEYS: index
# ARGV: prefix of the hashes, start, count, state wanted (or ''), second state (or ''), task id
# (or '')
# A page of the index, newest first, sifted in the server on each hash's state and task id: how
# many ids the page held, those that pass, and those whose hash expired. A listing no index serves
# (one task's deliveries, the done ones) then costs a round trip per page of the index rather than
# each hash's payload.
_SIFT = """
local ids = redis.call('ZREVRANGE', KEYS[1], ARGV[2], ARGV[2] + ARGV[3] - 1)
local passed, gone = {}, {}
for _, id in ipairs(ids) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'state', 'task_id')
  if not fields[1] and not fields[2] then
    gone[#gone + 1] = id
  elseif (ARGV[4] == '' or fields[1] == ARGV[4] or fields[1] == ARGV[5])
      and (ARGV[6] == '' or fields[2] == ARGV[6]) then
    passed[#passed + 1] = id
  end
end
return {#ids, passed, gone}
"""

#: Index entries a sifted listing reads per round trip.
SIFT_PAGE = 2000

#: Deliveries a prune forgets per pipeline. The server runs a pipeline's scripts one after the
#: other on its one thread, and a claim arriving meanwhile waits for all of them: a few dozen
#: take about as long as a claim itself, so the prune's share of the thread is all it delays.
PRUNE_PIPELINE = 25


def delivery_id(task_id: str, stage: str) -> str:
    """``task/stage``, quoted so that no task id can collide with another task's stage."""
    return f"{quote(task_id, safe='')}/{quote(stage, safe=':')}"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _instant(value: str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _moment(value: str | None) -> datetime | None:
    return _instant(value) if value else None


class RedisStore(PersistentStore):
    """Deliveries kept in Redis, each claimed with ``SET NX`` and a lease, expiring with the TTL.

    Deliveries, failed ones included, live ``ttl`` seconds after their last change: replay failed
    deliveries within that window, or keep them in a SQL store.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl: int,
        lease: int = DEFAULT_LEASE,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__(ttl=ttl, lease=lease)
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)
        self._take = client.register_script(_TAKE)
        self._start = client.register_script(_START)
        self._defer = client.register_script(_DEFER)
        self._prune = client.register_script(_PRUNE)
        self._keep = client.register_script(_KEEP)
        self._forget = client.register_script(_FORGET)
        self._expect = client.register_script(_EXPECT)
        self._heard = client.register_script(_HEARD)
        self._claim_task = client.register_script(_CLAIM_TASK)
        self._release_task = client.register_script(_RELEASE_TASK)
        self._signature = client.register_script(_SIGNATURE)
        self._sift = client.register_script(_SIFT)

    @classmethod
    def from_url(cls, url: str, *, ttl: int) -> RedisStore:
        """The store of ``url``, on a client that never waits longer than ``?timeout=``.

        Each wait (to connect, the connection's greeting, each answer) gives up after the
        timeout, and only a refused or dropped connection is tried again, at once: a server that
        does not answer would make a second try wait as long again.
        """
        lease = lease_from_url(url)
        timeout = timeout_from_url(url)
        base, _, query_text = url.partition("?")
        query = parse_qsl(query_text, keep_blank_values=True)
        prefix = dict(query).get("prefix", DEFAULT_PREFIX)
        rest = [(key, value) for key, value in query if key not in ("prefix", "lease", "timeout")]
        # Rebuilt by hand: urlunsplit would drop the empty host of unix:///path/to/redis.sock.
        client_url = f"{base}?{urlencode(rest)}" if rest else base
        try:
            client = redis.Redis.from_url(
                client_url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                decode_responses=True,
            )
        except (ValueError, TypeError) as exc:
            raise unusable_url(url, exc, kind="Redis") from exc
        return cls(client, ttl=ttl, lease=lease, prefix=prefix)

    def describe(self) -> str:
        """The server, for messages; never its password."""
        kwargs = self.client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"Redis at {where}/{kwargs.get('db', 0)}"

    def close(self) -> None:
        self.client.close()

    def check(self) -> StoreHealth:
        """``PING`` timed, the store's keyspace looked for, and the server's settings that would
        lose claims.

        Redis makes keys as they are written, so an empty keyspace is a store not used yet, not
        one missing. A server that evicts keys when full may drop a claim, and the provider's
        next retry of that callback is then received again; Redis Cluster spreads the keys one
        script needs over several servers, which the store does not support.
        """
        client = self.client
        client.ping()  # a connection opened outside the timing
        started = time.perf_counter()
        client.ping()
        round_trip = time.perf_counter() - started
        info = client.info()
        used = client.exists(f"{self.prefix}index", f"{self.prefix}tasks")
        found = f"keyspace {self.prefix}* " + (
            "in use" if used else "empty (nothing received yet)"
        )
        missing: tuple[str, ...] = ()
        if str(info.get("cluster_enabled", 0)) == "1":
            missing = ("a server without Redis Cluster, which the store does not support",)
        warnings: list[str] = []
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if int(info.get("maxmemory", 0) or 0) and policy != "noeviction":
            warnings.append(
                f"maxmemory-policy is {policy}: a claim evicted is received again; "
                "use noeviction"
            )
        return StoreHealth(
            round_trip=round_trip, found=found, missing=missing, warnings=tuple(warnings)
        )

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        return (RedisError,)

    def _keys(self, key_id: str) -> list[str]:
        return [
            f"{self.prefix}claim:{key_id}",
            f"{self.prefix}delivery:{key_id}",
            f"{self.prefix}index",
        ]

    def _call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run one of the store's scripts in one round trip, through the client.

        A connection that breaks during the call is tried once more on another by the client's
        retry (:meth:`from_url` sets it): the server may have run the script before the answer was
        lost, and every script knows its owner's own work when it sees it again, so nothing is done
        twice. A server that lost the scripts (restarted, ``SCRIPT FLUSH``) is sent them again.
        Sending ``EVALSHA`` on a pooled connection of the store's own, past the client's command
        path, bought less than a tenth of the endpoint's throughput (docs/benchmarks.md), so the
        client's path it is.
        """
        return script(keys=keys, args=args)

    # -- the claim and its settling ------------------------------------------------------------

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        key_id = delivery_id(delivery.task_id, delivery.stage)
        keys = self._keys(key_id)
        later = delivery.superseded_by
        # The stale check reads the superseding stage's claim; without one, any key will do.
        later_id = None if later is None else delivery_id(delivery.task_id, later)
        keys.append(keys[0] if later_id is None else f"{self.prefix}claim:{later_id}")
        answer = self._call(
            self._claim,
            keys,
            [
                delivery.owner,
                self.lease * 1000,
                self.ttl,
                (DeliveryState.PENDING if queued else DeliveryState.PROCESSING).value,
                key_id,
                delivery.task_id,
                delivery.stage,
                delivery.payload_json(),
                json.dumps(dict(delivery.headers), separators=(",", ":")),
                _micros(delivery.received_at),
                "0" if later is None else "1",
            ],
        )
        return ClaimResult(_text(answer))

    def start(self, delivery: Delivery, owner: str) -> bool:
        key_id = delivery_id(delivery.task_id, delivery.stage)
        started = self._call(
            self._start,
            self._keys(key_id),
            [owner, self.lease * 1000, self.ttl, key_id, delivery.owner],
        )
        return bool(int(started))

    def defer(self, delivery: Delivery, error: str, delay: float) -> None:
        key_id = delivery_id(delivery.task_id, delivery.stage)
        hold = round((delay + self.lease) * 1000)
        self._call(
            self._defer,
            self._keys(key_id),
            [delivery.owner, hold, self.ttl, key_id, error[:MAX_ERROR_LENGTH]],
        )

    def complete(self, delivery: Delivery) -> None:
        self._settle_as("done", delivery, "")

    def release(self, delivery: Delivery, error: str) -> None:
        self._settle_as("released", delivery, error)

    def fail(self, delivery: Delivery, error: str) -> None:
        self._settle_as("failed", delivery, error)

    def _settle_as(self, outcome: str, delivery: Delivery, error: str) -> None:
        key_id = delivery_id(delivery.task_id, delivery.stage)
        self._call(
            self._settle,
            self._keys(key_id),
            [outcome, delivery.owner, self.ttl, error[:MAX_ERROR_LENGTH], key_id],
        )

    def keep_unreadable(self, delivery: Delivery, error: str) -> bool:
        key_id = delivery_id(delivery.task_id, delivery.stage)
        kept = self._call(
            self._keep,
            self._keys(key_id),
            [
                key_id,
                self.ttl,
                delivery.task_id,
                delivery.stage,
                delivery.payload_json(),
                json.dumps(dict(delivery.headers), separators=(",", ":")),
                _micros(delivery.received_at),
                error[:MAX_ERROR_LENGTH],
            ],
        )
        return bool(int(kept))

    # -- tasks ---------------------------------------------------------------------------------

    def _task_keys(self, task_id: str) -> list[str]:
        return [f"{self.prefix}task:{task_id}", f"{self.prefix}tasks"]

    def expect(self, task_id: str, family: str) -> None:
        self._call(self._expect, self._task_keys(task_id), [task_id, family, self.ttl])

    def task(self, task_id: str) -> TaskRecord | None:
        kept = self.client.hgetall(self._task_keys(task_id)[0])
        return _task(_fields(kept)) if kept else None

    def record_stage(
        self,
        task_id: str,
        family: str,
        stage: str,
        *,
        at: datetime,
        via: str,
        final: TaskState | None,
    ) -> None:
        """One script, one round trip."""
        self._call(
            self._heard,
            self._task_keys(task_id),
            [task_id, family, stage, _micros(at), via, final or "", self.ttl],
        )

    def tasks(
        self, *, state: TaskState | str | None = None, limit: int | None = 50
    ) -> Sequence[TaskRecord]:
        """Read from the index of every task, or of those in ``state``, newest first."""
        index = f"{self.prefix}tasks"
        if state is not None:
            state = TaskState(state)
            index += f":{state.value}"

        def listed(fields: dict[str, str]) -> TaskRecord | None:
            task = _task(fields)
            return task if state is None or task.state is state else None

        return self._scan(
            index,
            lambda start, count: self.client.zrevrange(index, start, start + count - 1),
            f"{self.prefix}task:",
            listed,
            limit,
        )

    def overdue(
        self, heard_before: datetime, *, now: datetime, limit: int | None = None
    ) -> Sequence[TaskRecord]:
        """Read from the index of open tasks, from the longest silent up to ``heard_before``."""
        index = f"{self.prefix}tasks:{TaskState.OPEN.value}"
        cutoff = _micros(heard_before)

        def due(fields: dict[str, str]) -> TaskRecord | None:
            task = _task(fields)
            lease = _moment(fields.get("lease_expires_at"))
            next_poll = task.next_poll_at
            if task.state is not TaskState.OPEN or (lease is not None and lease > now):
                return None
            return task if next_poll is None or next_poll <= now else None

        return self._scan(
            index,
            lambda start, count: self.client.zrangebyscore(
                index, "-inf", cutoff, start=start, num=count
            ),
            f"{self.prefix}task:",
            due,
            limit,
        )

    def claim_task(
        self, task_id: str, owner: str, *, lease: float, now: datetime
    ) -> TaskRecord | None:
        until = now + timedelta(seconds=lease)
        fields = self._call(
            self._claim_task,
            self._task_keys(task_id)[:1],
            [owner, _micros(now), _micros(until)],
        )
        if not fields:
            return None
        return _task(_pairs(fields))

    def release_task(
        self,
        task_id: str,
        owner: str,
        *,
        polled: bool = False,
        next_poll_at: datetime | None = None,
        overdue: bool = False,
        lost: bool = False,
    ) -> TaskChange:
        became_overdue, became_lost = self._call(
            self._release_task,
            self._task_keys(task_id),
            [
                owner,
                _flag(polled),
                "" if next_poll_at is None else _micros(next_poll_at),
                _flag(overdue),
                _flag(lost),
                self.ttl,
                task_id,
            ],
        )
        return TaskChange(overdue=bool(int(became_overdue)), lost=bool(int(became_lost)))

    def remember_signature(self, signature: str, digest: str, *, ttl: float) -> bool:
        """``SET NX PX`` and, for a signature seen, the comparison, in one script."""
        remembered = self._call(
            self._signature,
            [f"{self.prefix}signature:{signature}"],
            [digest, max(1, round(ttl * 1000))],
        )
        return bool(int(remembered))

    # -- what the command line and replay use --------------------------------------------------

    def list(
        self, *, status: str | None = None, task_id: str | None = None, limit: int | None = 50
    ) -> Sequence[KeptDelivery]:
        states = None if status is None else STATUS_STATES[status]
        # Pending, failed and unreadable deliveries have indexes of their own, kept by the
        # scripts, so that listing them reads those, not every delivery kept for the TTL.
        index = f"{self.prefix}index" + _STATUS_INDEXES.get(status or "", "")

        def wanted(fields: dict[str, str]) -> KeptDelivery | None:
            kept = _kept(fields)
            in_state = states is None or kept.state in states
            return kept if in_state and task_id in (None, kept.task_id) else None

        prefix = f"{self.prefix}delivery:"
        named = sorted(state.value for state in states or ())
        if task_id is None and (status is None or status in _STATUS_INDEXES):
            return self._scan(
                index,
                lambda start, count: self.client.zrevrange(index, start, start + count - 1),
                prefix,
                wanted,
                limit,
            )
        first, second = [*named, "", ""][:2]

        def sifted(start: int, count: int) -> tuple[list[Any], bool, list[str]]:
            """A page of the index sifted in the server: no index serves this filter."""
            size, passed, expired = self._sift(
                keys=[index], args=[prefix, start, count, first, second, task_id or ""]
            )
            return passed, size > 0, [_text(item) for item in expired]

        return self._scan(index, sifted, prefix, wanted, limit, page=SIFT_PAGE)

    def pending(self, older_than: timedelta, limit: int | None = None) -> Sequence[KeptDelivery]:
        """The in-flight index read from its oldest change up to ``older_than`` ago, on the
        server's clock, which timed every change."""
        index = f"{self.prefix}index:inflight"
        cutoff = self._server_micros() - older_than // timedelta(microseconds=1)
        return self._scan(
            index,
            lambda start, count: self.client.zrangebyscore(
                index, "-inf", cutoff, start=start, num=count
            ),
            f"{self.prefix}delivery:",
            lambda fields: _in_flight(_kept(fields)),
            limit,
        )

    def _scan(
        self,
        index: str,
        window: Callable[[int, int], Any],
        prefix: str,
        read: Callable[[dict[str, str]], _Kept | None],
        limit: int | None,
        *,
        page: int = 200,
    ) -> Sequence[_Kept]:
        """What ``read`` makes of the hashes (``prefix`` and the id) of the ids that
        ``window(start, count)`` reads from ``index``, page by page, up to ``limit``; ``None``
        from ``read`` is a hash not wanted, and ids whose hash expired leave the index.

        ``window`` may return ``(ids, more, expired)`` rather than the ids alone: the page's ids
        sifted already (:data:`_SIFT`), whether the page held any, and the ids found expired.
        """
        found: list[_Kept] = []
        gone: list[str] = []
        start = 0
        while limit is None or len(found) < limit:
            answer = window(start, page)
            if isinstance(answer, tuple):
                listed, more, expired = answer
                gone += expired
            else:
                listed, more = answer, bool(answer)
            if not more:
                break
            start += page
            ids = [_text(item) for item in listed]
            pipeline = self.client.pipeline(transaction=False)
            for key_id in ids:
                pipeline.hgetall(prefix + key_id)
            for key_id, fields in zip(ids, pipeline.execute(), strict=True):
                if not fields:
                    gone.append(key_id)
                    continue
                kept = read(_fields(fields))
                if kept is not None:
                    found.append(kept)
                    if limit is not None and len(found) >= limit:
                        break
        if gone:
            self.client.zrem(index, *gone)
        return found

    def _server_micros(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1_000_000 + int(micros)

    def get(self, delivery_id: str) -> KeptDelivery | None:
        fields = self.client.hgetall(f"{self.prefix}delivery:{delivery_id}")
        if not fields:
            return None
        return _kept(_fields(fields))

    def delete(self, delivery_id: str) -> bool:
        deleted = self._call(self._forget, self._keys(delivery_id), [delivery_id])
        return bool(int(deleted))

    #: Deliveries a prune forgets per pipeline (:data:`PRUNE_PIPELINE`).
    prune_batch = PRUNE_PIPELINE

    def prune(self, older_than: timedelta) -> int:
        """The expired deliveries, :attr:`prune_batch` per pipeline: a year's ids are never held
        in memory at once, nor their scripts' answers. Each delivery's script checks again that
        it may go; a claim still held stays in the index, where the next batch's offset steps
        over it, and every other entry read leaves the range (:data:`_PRUNE`). The pipelines are
        :func:`~.base.paced`: the server's one thread serves claims between them."""
        index = f"{self.prefix}index"
        cutoff = self._server_micros() - older_than // timedelta(microseconds=1)
        kept = 0

        def step() -> tuple[int, bool]:
            nonlocal kept
            found = self.client.zrangebyscore(
                index, "-inf", cutoff, start=kept, num=self.prune_batch
            )
            if not found:
                return 0, False
            pipeline = self.client.pipeline(transaction=False)
            for key_id in (_text(item) for item in found):
                self._prune(keys=self._keys(key_id), args=[key_id, cutoff], client=pipeline)
            answers = [int(answer) for answer in pipeline.execute()]
            kept += answers.count(0)
            return answers.count(1), len(found) == self.prune_batch

        return paced(step, self.prune_rate)

    def reclaim(
        self,
        delivery_id: str,
        *,
        force: bool = False,
        abandoned_by: str | None = None,
        queued: bool = False,
    ) -> KeptDelivery | None:
        state = DeliveryState.PENDING if queued else DeliveryState.PROCESSING
        fields = self._call(
            self._take,
            self._keys(delivery_id),
            [
                claim_owner(),
                self.lease * 1000,
                self.ttl,
                delivery_id,
                "1" if force else "0",
                abandoned_by or "",
                state.value,
            ],
        )
        if not fields:
            return None
        return _kept(_pairs(fields))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(kept: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in kept.items()}


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A hash as a script returns it (``HGETALL``: field, value, field, value...)."""
    texts = [_text(item) for item in flat]
    return dict(zip(texts[::2], texts[1::2], strict=True))


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _in_flight(kept: KeptDelivery) -> KeptDelivery | None:
    return kept if kept.in_flight else None


def _task(fields: dict[str, str]) -> TaskRecord:
    """A task's hash as the contract reports it."""
    return TaskRecord(
        task_id=fields["task_id"],
        family=fields["family"],
        state=TaskState(fields["state"]),
        stages={
            name.removeprefix(_STAGE_FIELD): _instant(value)
            for name, value in fields.items()
            if name.startswith(_STAGE_FIELD)
        },
        expected_at=_moment(fields.get("expected_at")),
        updated_at=_instant(fields["updated_at"]),
        polls=int(fields.get("polls") or 0),
        sources={
            name.removeprefix(_VIA_FIELD): value
            for name, value in fields.items()
            if name.startswith(_VIA_FIELD)
        },
        overdue_at=_moment(fields.get("overdue_at")),
        next_poll_at=_moment(fields.get("next_poll_at")),
    )


def _kept(fields: dict[str, str]) -> KeptDelivery:
    created = _moment(fields.get("created_at"))
    updated = _moment(fields.get("updated_at")) or created
    assert created is not None
    assert updated is not None
    return KeptDelivery(
        id=fields["id"],
        task_id=fields["task_id"],
        stage=fields["stage"],
        state=DeliveryState(fields["state"]),
        payload=json.loads(fields.get("payload") or "{}"),
        headers=json.loads(fields.get("headers") or "{}"),
        attempts=int(fields.get("attempts") or 0),
        last_error=fields.get("last_error") or None,
        released=fields.get("released") == "1",
        owner=fields.get("owner") or None,
        lease_expires_at=_moment(fields.get("lease_expires_at")),
        received_at=_moment(fields.get("received_at")) or created,
        created_at=created,
        updated_at=updated,
    )
