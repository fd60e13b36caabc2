"""A store holding a TTL's worth of deliveries: the request path and the operator's queries then.

    python -m benchmarks.store_scale --store sqlite:////tmp/scale.db --kept 1000000
    python -m benchmarks.store_scale --explain --kept 1000000 \\
        --store "postgresql+psycopg://bench:bench@127.0.0.1:5432/bench"
    python -m benchmarks.store_scale --store redis://127.0.0.1:6390/0 --kept 1000000

Fills a store of its own (a table, or a key prefix, of its own in the given database) with
``--kept`` deliveries and their tasks, in the shapes the store itself writes: callbacks of every
family (music tasks send ``text``, ``first`` and ``complete``), mostly done, about 1 % failed,
0.1 % in flight, a few unreadable bodies kept, some tasks still open; their times spread over the
TTL, oldest first, so that 40 % (``--expired-share``) are older than the prune's cutoff. SQL
tables are created by the store (its schema, its indexes) and filled by bulk ``INSERT``
(PostgreSQL: ``COPY``), then analysed on PostgreSQL as autovacuum would; Redis gets, pipelined,
exactly the hashes, claims and sorted-set entries the store's scripts keep.

Then, in one run: the delivery path (a claim and a completion of new task ids, one thread)
against a second store of its own in the same database, left empty, in alternate rounds; the
sweep's query, ``list --status failed``, ``list``, ``show``, ``tasks --state open`` and
reconciliation's query on the full store, median of ``--runs``; the prune of the expired part,
while a thread claims new deliveries, against the same thread's claims with the store idle. With
``--explain``, each SQL query the store ran is explained (PostgreSQL: ``EXPLAIN (ANALYZE,
BUFFERS)``, SQLite: ``EXPLAIN QUERY PLAN``), as captured from the store's own engine.

The last line is ``scale ratio full/empty: X.XX``, the delivery path's throughput full over empty.
Both stores are removed at the end, unless ``--keep``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import random
import re
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask

from flask_musiccallback.families import MUSIC, built_in
from flask_musiccallback.simulate import build_callback
from flask_musiccallback.stores.base import (
    Delivery,
    PersistentStore,
    StoreUnavailable,
    require_persistent,
    unreadable_stage,
)
from flask_musiccallback.stores.registry import store_from_url, url_scheme
from flask_musiccallback.stores.sqlalchemy import SQLAlchemyStore

from .store_cpu import store_work

#: Rows written per ``INSERT``, ``COPY`` or pipeline.
CHUNK = 10_000

#: Of the deliveries, those whose receivers failed, and those still in flight.
FAILED_SHARE = 0.01
IN_FLIGHT_SHARE = 0.001
#: Of the tasks, bodies no family could read kept beside them, and tasks never finished.
UNREADABLE_SHARE = 0.001
OPEN_SHARE = 0.02
#: Of the kept deliveries, those older than the prune's cutoff, unless ``--expired-share``.
EXPIRED_SHARE = 0.4

#: What each kind of task sends, and how often a task is of that kind: ``(family, stages,
#: weight)``. Music tasks send their three stages; a failed task sends ``failed`` alone.
TASK_KINDS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("music", ("text", "first", "complete"), 0.44),
    ("music", ("failed",), 0.03),
    ("lyrics", ("complete",), 0.12),
    ("lyrics", ("failed",), 0.01),
    ("wav", ("complete",), 0.08),
    ("stems", ("complete",), 0.06),
    ("midi", ("complete",), 0.04),
    ("video", ("complete",), 0.06),
    ("cover", ("complete",), 0.08),
    ("cover", ("failed",), 0.01),
    ("voice", ("complete",), 0.04),
)

#: Seconds after a task's first callback that each stage arrives.
STAGE_DELAY = {"text": 0.0, "first": 25.0, "complete": 70.0, "failed": 40.0}

HEADERS = json.dumps(
    {
        "Content-Type": "application/json",
        "User-Agent": "Go-http-client/2.0",
        "X-Forwarded-For": "203.0.113.7",
        "Remote-Addr": "10.0.0.5",
    },
    separators=(",", ":"),
)

PLACEHOLDER = "TASKIDPLACEHOLDER"

#: The sweep's age and batch (``MUSICCALLBACK_PENDING_SWEEP_AGE``, ``SWEEP_BATCH``) and
#: reconciliation's (``MUSICCALLBACK_RECONCILE_AFTER``, ``RECONCILE_BATCH``).
SWEEP_AGE = timedelta(seconds=300)
SWEEP_BATCH = 100
RECONCILE_AFTER = timedelta(seconds=1800)
RECONCILE_BATCH = 20

OWNER = "worker-3:4121/0f3c9a"


# -- what is kept ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Kept:
    """One kept delivery, as a store's row or hash holds it (times in UTC)."""

    task_id: str
    stage: str
    state: str
    payload: str
    received_at: datetime
    updated_at: datetime
    released: bool = False
    attempts: int = 1
    last_error: str | None = None
    owner: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(slots=True)
class Task:
    """One kept task (times in UTC)."""

    task_id: str
    family: str
    state: str
    stages: dict[str, datetime]
    expected_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sources: dict[str, str] = field(default_factory=dict)


class Shapes:
    """Bodies of every family and stage, built once, and a task id put into each copy."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str], str] = {}
        self.stages: dict[tuple[str, str], str] = {}
        for family_name, stages, _ in TASK_KINDS:
            family = built_in(family_name)
            for stage in stages:
                payload = build_callback(stage, family=family_name, task_id=PLACEHOLDER)
                self.bodies[family_name, stage] = json.dumps(payload, separators=(",", ":"))
                self.stages[family_name, stage] = family.store_stage(stage)

    def body(self, family: str, stage: str, task_id: str) -> str:
        return self.bodies[family, stage].replace(PLACEHOLDER, task_id)


def generate(
    kept: int, span: timedelta, now: datetime, lease: int, seed: int
) -> Iterator[tuple[list[Kept], list[Task]]]:
    """``kept`` deliveries and their tasks, oldest first, ``span`` from the oldest to now, in
    chunks of about :data:`CHUNK`."""
    rng = random.Random(seed)  # noqa: S311 - shapes, not secrets
    shapes = Shapes()
    kinds = [(family, stages) for family, stages, _ in TASK_KINDS]
    weights = [weight for _, _, weight in TASK_KINDS]
    oldest = now - span
    made = 0
    deliveries: list[Kept] = []
    tasks: list[Task] = []
    while made < kept:
        start = oldest + span * (made / kept) + timedelta(seconds=rng.random())
        task_id = f"{rng.getrandbits(128):032x}"
        if rng.random() < UNREADABLE_SHARE:
            body = shapes.body("music", "complete", task_id).replace('"callbackType"', '"cbType"')
            deliveries.append(
                Kept(task_id, unreadable_stage(body.encode()), "unreadable", body, start, start,
                     last_error="{'data': {'callbackType': ['Missing data for required field.']}}")
            )  # fmt: skip
            made += 1
            continue
        family, stages = rng.choices(kinds, weights)[0]
        if family == "music" and stages[-1] == "complete" and rng.random() < OPEN_SHARE:
            stages = stages[:-1]  # still waiting for its last stage
        stages = stages[: kept - made]  # the last task may be cut short
        heard: dict[str, datetime] = {}
        for stage in stages:
            received = start + timedelta(seconds=STAGE_DELAY[stage])
            updated = received + timedelta(milliseconds=rng.uniform(5, 400))
            row = Kept(task_id, shapes.stages[family, stage], "done",
                       shapes.body(family, stage, task_id), received, updated)  # fmt: skip
            luck = rng.random()
            if luck < FAILED_SHARE:
                row.state, row.released = "failed", rng.random() < 0.5
                row.attempts = rng.randint(1, 4)
                row.last_error = "TimeoutError: the media host did not answer within 30 s"
            elif luck < FAILED_SHARE + IN_FLIGHT_SHARE:
                row.state = rng.choice(("pending", "processing"))
                row.owner, row.lease_expires_at = OWNER, updated + timedelta(seconds=lease)
            deliveries.append(row)
            heard[stage] = received
            made += 1
        final = stages[-1] if stages[-1] in ("complete", "failed") else None
        expected = start - timedelta(seconds=30) if rng.random() < 0.8 else None
        last = max(heard.values())
        tasks.append(
            Task(task_id, family, final or "open", heard, expected, expected or start, last,
                 dict.fromkeys(heard, "callback"))
        )  # fmt: skip
        if len(deliveries) >= CHUNK:
            yield deliveries, tasks
            deliveries, tasks = [], []
    if deliveries or tasks:
        yield deliveries, tasks


# -- filling a SQL store ------------------------------------------------------------------------


def _naive(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(timezone.utc).replace(tzinfo=None)


def sql_rows(
    deliveries: Sequence[Kept], tasks: Sequence[Task]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of both tables, as the store writes them (naive UTC, JSON as text)."""
    rows = [
        {"task_id": d.task_id, "stage": d.stage, "state": d.state, "released": d.released,
         "attempts": d.attempts, "last_error": d.last_error, "owner": d.owner,
         "lease_expires_at": _naive(d.lease_expires_at), "payload": d.payload, "headers": HEADERS,
         "received_at": _naive(d.received_at), "created_at": _naive(d.received_at),
         "updated_at": _naive(d.updated_at)}
        for d in deliveries
    ]  # fmt: skip
    task_rows = [
        {"task_id": t.task_id, "family": t.family, "state": t.state,
         "stages": json.dumps({s: at.isoformat() for s, at in t.stages.items()}),
         "sources": json.dumps(t.sources), "expected_at": _naive(t.expected_at), "polls": 0,
         "overdue_at": None, "next_poll_at": None, "owner": None, "lease_expires_at": None,
         "created_at": _naive(t.created_at), "updated_at": _naive(t.updated_at)}
        for t in tasks
    ]  # fmt: skip
    return rows, task_rows


def fill_sql(engine: sa.Engine, tables: Sequence[sa.Table], chunks: Iterator[Any]) -> None:
    """Bulk-write ``chunks`` into the store's deliveries and tasks tables: ``COPY`` on
    PostgreSQL, an ``INSERT`` run for many rows at once elsewhere.

    Then the database is left as a store that filled over weeks would be: vacuumed and its
    statistics gathered (PostgreSQL's ``VACUUM (ANALYZE)``, as autovacuum would have done by
    then) and the fill's writes checkpointed. Left to the server, autovacuum's first pass over a
    table loaded in a minute, and the checkpoints of the WAL it writes, ran while the claims were
    timed."""
    deliveries, tasks = tables
    if engine.dialect.name == "postgresql":
        import psycopg

        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            for chunk in chunks:
                for table, rows in zip((deliveries, tasks), sql_rows(*chunk), strict=True):
                    if not rows:
                        continue
                    names = list(rows[0])
                    with (
                        driver.cursor() as cursor,
                        cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy,
                    ):
                        for row in rows:
                            copy.write_row([row[name] for name in names])
                driver.commit()
            with driver.cursor() as cursor:
                driver.autocommit = True
                for table in tables:
                    cursor.execute(f"VACUUM (ANALYZE) {table.name}")
                try:
                    cursor.execute("CHECKPOINT")
                except psycopg.errors.InsufficientPrivilege:
                    print("No CHECKPOINT (the role may not): the server's own may fall in the run.",
                          file=sys.stderr)  # fmt: skip
        finally:
            raw.close()
        return
    from flask_musiccallback.stores.sqlalchemy.table import JSONText

    def insert(table: sa.Table) -> sa.Insert:
        values = {
            column.name: sa.bindparam(
                column.name, type_=JSONText() if isinstance(column.type, sa.JSON) else column.type
            )
            for column in table.columns
            if column.name != "id"
        }
        return sa.insert(table).values(values)

    statements = insert(deliveries), insert(tasks)
    with engine.connect() as connection:
        for chunk in chunks:
            for statement, rows in zip(statements, sql_rows(*chunk), strict=True):
                if rows:
                    connection.execute(statement, rows)
            connection.commit()
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


# -- filling a Redis store ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _micros(moment: datetime | None) -> str:
    return "" if moment is None else str((moment - _EPOCH) // timedelta(microseconds=1))


def fill_redis(client: Any, prefix: str, ttl: int, now: datetime, chunks: Iterator[Any]) -> None:
    """The keys the store's scripts keep for each delivery and task, pipelined per chunk.

    Per delivery: its hash, expiring ``ttl`` after its last change; its claim (``done`` or
    ``failed`` for the TTL once settled, the owner for the lease while held, none after a release
    or for an unreadable body); its place in ``index``, and in ``index:inflight``,
    ``index:failed`` or ``index:unreadable``. Per task: its hash, with a ``stage:`` and a
    ``via:`` field per stage, and its place in ``tasks`` and ``tasks:<state>``.
    """
    from flask_musiccallback.stores.redis import delivery_id

    for deliveries, tasks in chunks:
        pipeline = client.pipeline(transaction=False)
        indexes: dict[str, dict[str, int]] = {}
        for d in deliveries:
            key_id = delivery_id(d.task_id, d.stage)
            left = ttl - int((now - d.updated_at).total_seconds())
            fields = {"id": key_id, "task_id": d.task_id, "stage": d.stage, "state": d.state,
                      "released": "1" if d.released else "0", "owner": d.owner or "",
                      "lease_expires_at": _micros(d.lease_expires_at), "payload": d.payload,
                      "headers": HEADERS, "received_at": _micros(d.received_at),
                      "created_at": _micros(d.received_at), "updated_at": _micros(d.updated_at),
                      "attempts": str(d.attempts)}  # fmt: skip
            if d.last_error is not None:
                fields["last_error"] = d.last_error
            pipeline.hset(f"{prefix}delivery:{key_id}", mapping=fields)
            pipeline.expire(f"{prefix}delivery:{key_id}", left)
            claim = f"{prefix}claim:{key_id}"
            score = int(_micros(d.updated_at))
            indexes.setdefault(f"{prefix}index", {})[key_id] = score
            if d.state in ("done", "failed") and not d.released:
                pipeline.set(claim, d.state, ex=left)
            elif d.lease_expires_at is not None and d.lease_expires_at > now:
                pipeline.set(claim, d.owner or "", px=int((d.lease_expires_at - now) / _MS))
            if d.state in ("pending", "processing"):
                indexes.setdefault(f"{prefix}index:inflight", {})[key_id] = score
            elif d.state in ("failed", "unreadable"):
                indexes.setdefault(f"{prefix}index:{d.state}", {})[key_id] = score
        for t in tasks:
            key = f"{prefix}task:{t.task_id}"
            fields = {
                "task_id": t.task_id,
                "family": t.family,
                "state": t.state,
                "polls": "0",
                "created_at": _micros(t.created_at),
                "updated_at": _micros(t.updated_at),
            }
            if t.expected_at is not None:
                fields["expected_at"] = _micros(t.expected_at)
            for stage, at in t.stages.items():
                fields[f"stage:{stage}"] = _micros(at)
                fields[f"via:{stage}"] = t.sources[stage]
            pipeline.hset(key, mapping=fields)
            pipeline.expire(key, ttl - int((now - t.updated_at).total_seconds()))
            score = int(_micros(t.updated_at))
            indexes.setdefault(f"{prefix}tasks", {})[t.task_id] = score
            indexes.setdefault(f"{prefix}tasks:{t.state}", {})[t.task_id] = score
        for index, members in indexes.items():
            pipeline.zadd(index, members)
        pipeline.execute()


# -- the two stores -------------------------------------------------------------------------------


def own_url(url: str, tag: str) -> str:
    """``url`` naming a table (SQL) or key prefix (Redis) of this run's own."""
    joiner = "&" if "?" in url else "?"
    if url_scheme(url) in ("redis", "rediss", "unix"):
        return f"{url}{joiner}prefix=store-scale-{tag}:"
    return f"{url}{joiner}table=store_scale_{tag}_deliveries"


def open_store(url: str, ttl: int) -> PersistentStore:
    store = require_persistent(store_from_url(url, ttl=ttl))
    store.init_app(Flask(__name__))
    store.list(limit=1)  # connects, and creates a SQL store's tables
    return store


def sql_engine(url: str) -> sa.Engine:
    """An engine of this benchmark's own on the store's database."""
    from flask_musiccallback.stores.sqlalchemy.engine import database_url

    return sa.create_engine(
        database_url(url).difference_update_query(["table", "lease", "timeout"])
    )


def remove(store: PersistentStore, url: str) -> None:
    """Drop a SQL store's tables, or unlink a Redis store's keys."""
    from flask_musiccallback.stores.redis import RedisStore

    if isinstance(store, RedisStore):
        batch: list[str] = []
        for key in store.client.scan_iter(match=f"{store.prefix}*", count=10_000):
            batch.append(key)
            if len(batch) >= CHUNK:
                store.client.unlink(*batch)
                batch = []
        if batch:
            store.client.unlink(*batch)
    elif isinstance(store, SQLAlchemyStore):
        store.close()
        engine = sql_engine(url)
        with engine.begin() as connection:
            for table in store.tables:
                table.drop(connection, checkfirst=True)
        engine.dispose()
    store.close()


# -- measuring ------------------------------------------------------------------------------------


def throughput(store: PersistentStore, count: int) -> float:
    """Deliveries per second through a claim and a completion each, new task ids, one thread."""
    run = store_work(store)(count)
    gc.collect()
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def median_ms(call: Callable[[], object], runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


@dataclass
class Claims:
    """What a process claiming new deliveries in a loop saw: each claim's milliseconds, and the
    claims refused with :class:`StoreUnavailable` (a 503 to the provider); and when each claim
    was due, on the clock every process shares (``perf_counter``), for the profile."""

    latencies: list[float]
    failures: int
    dues: list[float] = field(default_factory=list)

    def stalls(self, slower_than: float = 100.0) -> list[tuple[float, float, float]]:
        """Runs of claims each slower than ``slower_than`` ms, longest first: when the first was
        due, how long from then until the last was answered, in seconds, and the slowest claim
        of the run, in ms. A slow sync makes a queue, not one slow claim: the run says how long
        callbacks were answered late, the slowest claim how late."""
        runs: list[tuple[float, float, float]] = []
        begun = end = None
        worst = 0.0
        for due, latency in zip(self.dues, self.latencies, strict=True):
            if latency < slower_than:
                if begun is not None and end is not None:
                    runs.append((begun, end - begun, worst))
                begun, worst = None, 0.0
                continue
            begun = due if begun is None else begun
            end, worst = due + latency / 1000, max(worst, latency)
        if begun is not None and end is not None:
            runs.append((begun, end - begun, worst))
        return sorted(runs, key=lambda run: -run[1])

    def spans(self, slower_than: float = 0.0) -> list[tuple[float, float]]:
        """When each claim of at least ``slower_than`` ms was due and answered, in seconds: from
        the p99 up, the claims that make the p99, whose waits the profile tells apart from the
        rest."""
        return [
            (due, due + latency / 1000)
            for due, latency in zip(self.dues, self.latencies, strict=True)
            if latency >= slower_than
        ]

    def percentiles(self) -> tuple[float, float, float]:
        """p50, p99 and the longest, in milliseconds."""
        if len(self.latencies) < 2:
            return (float("nan"),) * 3
        cuts = statistics.quantiles(self.latencies, n=100)
        return statistics.median(self.latencies), cuts[98], max(self.latencies)


def claiming(url: str, ttl: int, rate: float, ready: Any, stop: Any, answer: Any) -> None:
    """Claim, then complete, new deliveries arriving ``rate`` a second until ``stop`` is set,
    timing each claim; runs in a process of its own, as a web worker would, so that the prune's
    own Python work (and its hold on the interpreter's lock) is no part of the figure.

    The deliveries arrive on a schedule, as callbacks do, and each claim is timed from when its
    delivery was due: one that had to wait for the one before it counts that wait. A loop that
    claimed as fast as it could would meet each step of a prune once, however long the step,
    and its percentiles would hide what a callback arriving at any moment meets."""
    store = require_persistent(store_from_url(url, ttl=ttl))
    store.init_app(Flask(__name__))
    prefix = uuid.uuid4().hex
    template = json.dumps(build_callback("complete", task_id=PLACEHOLDER))
    latencies: list[float] = []
    dues: list[float] = []
    failures = 0
    serial = 0
    due = time.perf_counter()
    while True:
        serial += 1
        body = template.replace(PLACEHOLDER, f"{prefix}-{serial}")
        payload = json.loads(body)
        delivery = MUSIC.delivery(MUSIC.load(payload), payload, {}, body=body)
        if serial == 20:  # connected and warm
            latencies.clear()
            dues.clear()
            ready.set()
        if stop.is_set():
            break
        due += 1 / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        try:
            store.claim(delivery)
            latencies.append((time.perf_counter() - due) * 1000)
            dues.append(due)
            store.complete(delivery)
        except StoreUnavailable:
            failures += 1
    store.close()
    answer.send((latencies, failures, dues))


def claims_meanwhile(
    url: str, ttl: int, rate: float, work: Callable[[], object] | None, seconds: float
) -> tuple[Claims, float, object]:
    """Claims by another process, ``rate`` a second, while ``work`` runs (or for ``seconds``
    when there is none); how long ``work`` took, and what it returned."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=claiming, args=(url, ttl, rate, ready, stop, sending))
    process.start()
    if not ready.wait(120):
        process.kill()
        raise RuntimeError("the claiming process did not start")
    started = time.perf_counter()
    result: object = None
    if work is None:
        time.sleep(seconds)
    else:
        result = work()
    took = time.perf_counter() - started
    stop.set()
    latencies, failures, dues = receiving.recv()
    process.join()
    return Claims(latencies, failures, dues), took, result


# -- where a PostgreSQL server's time went --------------------------------------------------------


#: The ``application_name`` of the claiming process's connections, by which the profile finds them.
CLAIMS_APPLICATION = "store_scale_claims"
#: Seconds between two readings of ``pg_stat_activity``.
SAMPLE_EVERY = 0.005
#: The checkpointer's work as the profile names it: anything but waiting for the next one.
CHECKPOINTING = "checkpoint"

#: What the server wrote, as counters that only grow: the WAL's bytes and full-page images, and
#: the checkpoints with the pages they wrote (from PostgreSQL 17 on, in a view of the
#: checkpointer's own).
_WAL = "SELECT wal_bytes, wal_fpi FROM pg_stat_wal"
_CHECKPOINTS = (
    "SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter"
)
_CHECKPOINTS_17 = "SELECT num_timed + num_requested, buffers_written FROM pg_stat_checkpointer"
_ACTIVITY = (
    "SELECT backend_type, application_name, state, wait_event_type, wait_event, query "
    "FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
)


@dataclass
class ServerWork:
    """What a PostgreSQL server did while claims were timed: where the claiming process's
    statements spent their time (sampled, by wait event), what autovacuum worked on, and what
    was written. A p99 made by the server's own writes shows here, which the claims' timings
    alone cannot tell from a lock of the prune's."""

    started: float = 0.0
    seconds: float = 0.0
    samples: int = 0
    #: The longest time between two readings, and when it began: a server (or machine) that
    #: answered nobody meanwhile, the profile included, leaves its stall unsampled but here.
    gap: tuple[float, float] = (0.0, 0.0)
    claims: list[tuple[float, str]] = field(default_factory=list)
    autovacuum: Counter[str] = field(default_factory=Counter)
    #: When the server's own work was first and last seen: each autovacuum, and the checkpoint.
    busy: dict[str, tuple[float, float]] = field(default_factory=dict)
    written: dict[str, float] = field(default_factory=dict)
    pressure: dict[str, float] = field(default_factory=dict)

    @property
    def every(self) -> float:
        """Seconds a reading stands for: the readings come as fast as the server answers them,
        at most every :data:`SAMPLE_EVERY`."""
        return self.seconds / max(self.samples, 1)

    def waits(self, claims: Sequence[tuple[float, float]]) -> str:
        """The claiming process's statements sampled within ``claims`` (begin, end), by wait
        event, each a share and milliseconds a claim."""
        every = self.every
        spans = iter(sorted(claims))
        span = next(spans, None)
        waits: Counter[str] = Counter()
        for moment, wait in self.claims:  # in time order
            while span is not None and span[1] < moment:
                span = next(spans, None)
            if span is not None and span[0] <= moment:
                waits[wait] += 1
        sampled = sum(waits.values())
        if not sampled:
            return "none sampled"
        covered, reach = 0.0, 0.0  # the time some claim of these was waiting for its answer
        for begun, end in sorted(claims):
            covered += max(0.0, end - max(begun, reach))
            reach = max(reach, end)
        return f"in a statement {sampled * every / covered:.0%} of the time: " + ", ".join(
            f"{wait} {count / sampled:.0%} ({count * every * 1000 / len(claims):.2f} ms)"
            for wait, count in waits.most_common(4)
        )

    def seen(self, work: str) -> str:
        """When ``work`` was seen, in seconds into the window."""
        if work not in self.busy:
            return "never"
        first, last = self.busy[work]
        return f"{first - self.started:.1f} to {last - self.started:.1f} s in"

    def saw(self, work: str, moment: float) -> None:
        """Note ``work`` seen at ``moment``: its first and last sightings bound it, for
        setting beside the claims' stalls."""
        self.busy[work] = (self.busy.get(work, (moment, moment))[0], moment)

    def rows(self, window: str, claims: Claims) -> Rows:
        """The window's rows of the table, in milliseconds a claim where windows of different
        lengths are to be compared."""
        stalls = ", ".join(
            f"{begun - self.started:.1f} s in: {length * 1000:,.0f} ms (slowest {worst:,.0f} ms)"
            for begun, length, worst in claims.stalls()[:3]
        )
        gap = ("no reading" if not self.samples else
               f"{self.gap[0] - self.started:.1f} s in: {self.gap[1] * 1000:,.0f} ms")  # fmt: skip
        pressure = ", ".join(f"{name} {share:.0%}" for name, share in self.pressure.items())
        vacuumed = ", ".join(
            f"{query} {count * self.every:.1f} s ({self.seen(query)})"
            for query, count in self.autovacuum.most_common(3)
        )
        written = self.written
        return [
            (f"server, claims {window}: the claiming process's statements (claims and "
             "completions) while any claim was pending, by wait (ms a claim)",
             self.waits(claims.spans())),
            (f"server, claims {window}: the same while one of the slowest 1 % was pending",
             self.waits(claims.spans(claims.percentiles()[1]))),
            (f"server, claims {window}: the longest runs of claims over 100 ms; the longest "
             "gap between readings", f"{stalls or 'none'}; {gap}"),
            (f"server, claims {window}: this machine's time stalled, some tasks or all (PSI)",
             pressure or "not readable"),
            (f"server, claims {window}: autovacuum", vacuumed or "none"),
            (f"server, claims {window}: WAL written; full-page images; checkpoints (pages)",
             f"{written['wal'] / 2**20 / self.seconds:.1f} MiB/s; {written['fpi']:,.0f}; "
             f"{written['checkpoints']:,.0f} ({written['pages']:,.0f}), the checkpointer "
             f"at work {self.seen(CHECKPOINTING)}"),
        ]  # fmt: skip


def stalled_microseconds() -> dict[str, float]:
    """How long, since boot, some tasks of this machine waited on I/O and the CPU, and all of
    them on I/O (Linux's pressure stall information; nothing where it is not readable)."""
    totals = {}
    for resource, kinds in (("io", ("some", "full")), ("cpu", ("some",))):
        try:
            lines = Path(f"/proc/pressure/{resource}").read_text().splitlines()
        except OSError:
            return {}
        for line in lines:
            kind, *fields = line.split()
            if kind in kinds:
                totals[f"{resource} {kind}"] = float(fields[-1].removeprefix("total="))
    return totals


class Profiler:
    """Samples ``pg_stat_activity`` on a thread of its own, and reads the server's write
    counters, over each window of claims (:meth:`window`): on a connection of its own, so that
    its readings go on, and show it, when the claims' connections wait."""

    def __init__(self, url: str) -> None:
        self.engine = sql_engine(url)
        with self.engine.connect():  # the dialect reads the server's version
            version = self.engine.dialect.server_version_info or (0,)
        if version < (14,):
            self.engine.dispose()
            raise SystemExit("--profile reads pg_stat_wal: PostgreSQL 14 or later")
        self.checkpoints = _CHECKPOINTS_17 if version >= (17,) else _CHECKPOINTS

    def counters(self) -> dict[str, float]:
        """The server's write counters, which only grow: a window's are the difference."""
        with self.engine.connect() as connection:
            wal, fpi = connection.exec_driver_sql(_WAL).one()
            checkpoints, pages = connection.exec_driver_sql(self.checkpoints).one()
        return {"wal": float(wal), "fpi": fpi, "checkpoints": checkpoints, "pages": pages}

    @contextmanager
    def window(self) -> Iterator[ServerWork]:
        work = ServerWork()
        done = threading.Event()

        failed: list[BaseException] = []

        def sample() -> None:
            try:
                read()
            except BaseException as exc:  # told after the window: a silent gap would skew it
                failed.append(exc)

        def read() -> None:
            # Each reading its own transaction: a transaction reads the activity once.
            with self.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                last = work.started
                while not done.wait(SAMPLE_EVERY):
                    moment = time.perf_counter()  # the activity is read as of its query's start
                    activity = connection.exec_driver_sql(_ACTIVITY).all()
                    work.samples += 1
                    if moment - last > work.gap[1]:
                        work.gap = (last, moment - last)
                    last = moment
                    for kind, application, state, wait_kind, wait, query in activity:
                        if application == CLAIMS_APPLICATION and state == "active":
                            work.claims.append((moment, f"{wait_kind}:{wait}" if wait else "CPU"))
                        elif kind == "autovacuum worker" and query:
                            vacuum = shortened(query)
                            work.autovacuum[vacuum] += 1
                            work.saw(vacuum, moment)
                        elif kind == "checkpointer" and wait != "CheckpointerMain":
                            work.saw(CHECKPOINTING, moment)

        before, stalled = self.counters(), stalled_microseconds()
        sampler = threading.Thread(target=sample, daemon=True)
        work.started = time.perf_counter()
        sampler.start()
        try:
            yield work
        finally:
            done.set()
            sampler.join()
            if failed:
                raise RuntimeError("the profile's readings stopped") from failed[0]
            work.seconds = time.perf_counter() - work.started
            after = self.counters()
            work.written = {name: after[name] - before[name] for name in after}
            work.pressure = {
                name: (total - stalled[name]) / 1e6 / work.seconds
                for name, total in stalled_microseconds().items()
            }

    def close(self) -> None:
        self.engine.dispose()


def claims_url(url: str) -> str:
    """``url`` with the claiming process's connections named, on PostgreSQL, for the profile."""
    if not url_scheme(url).startswith("postgresql"):
        return url
    return f"{url}&application_name={CLAIMS_APPLICATION}"


# -- EXPLAIN ------------------------------------------------------------------------------------


class Captured:
    """The SQL statements the store's engines run, with their parameters, while listening."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                 context: Any, executemany: bool) -> None:  # fmt: skip
        if statement.lstrip().upper().startswith("SELECT"):
            self.statements.append((statement, parameters))

    def during(self, call: Callable[[], object]) -> list[tuple[str, Any]]:
        self.statements = []
        sa.event.listen(sa.Engine, "before_cursor_execute", self)
        try:
            call()
        finally:
            sa.event.remove(sa.Engine, "before_cursor_execute", self)
        return self.statements


def shortened(statement: str) -> str:
    """The statement on one line, its column list and table qualifiers left out."""
    text = " ".join(statement.split())
    text = re.sub(r"^SELECT .*? FROM ", "SELECT ... FROM ", text)
    return re.sub(r"\b\w+\.(\w+)", r"\1", text)


def explain(engine: sa.Engine, statement: str, parameters: Any) -> list[str]:
    """The plan of ``statement``: executed and timed on PostgreSQL, planned only on SQLite."""
    postgresql = engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgresql else "EXPLAIN QUERY PLAN "
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(prefix + statement, parameters)
        rows = cursor.fetchall()
        cursor.close()
    finally:
        connection.close()
    if postgresql:
        return [row[0] for row in rows]
    return [str(row[-1]) for row in rows]


# -- the run ------------------------------------------------------------------------------------


Rows = list[tuple[str, str]]


def fill(store: PersistentStore, url: str, kept: int, span: timedelta, seed: int) -> Rows:
    """Fill ``store`` with ``kept`` deliveries and their tasks; what it took."""
    from flask_musiccallback.stores.redis import RedisStore

    now = datetime.now(timezone.utc)
    tasks = 0

    def counted() -> Iterator[tuple[list[Kept], list[Task]]]:
        nonlocal tasks
        for chunk in generate(kept, span, now, store.lease, seed):
            tasks += len(chunk[1])
            yield chunk

    started = time.perf_counter()
    used = None
    if isinstance(store, SQLAlchemyStore):
        engine = sql_engine(url)
        fill_sql(engine, (store.table, store.tasks_table), counted())
        engine.dispose()
    else:
        assert isinstance(store, RedisStore)
        before = int(store.client.info("memory")["used_memory"])
        fill_redis(store.client, store.prefix, store.ttl, now, counted())
        used = int(store.client.info("memory")["used_memory"]) - before
    filled = time.perf_counter() - started
    rows = [("kept deliveries (tasks)", f"{kept:,} ({tasks:,})"),
            ("fill", f"{filled:.1f} s ({kept / filled:,.0f} deliveries/s)")]  # fmt: skip
    if used is not None:
        rows.append(("Redis memory per kept delivery (its task's share included)",
                     f"{used / kept:,.0f} bytes ({used / 2**20:,.0f} MiB)"))  # fmt: skip

    # The store reads what was written as its own: a kept delivery is a duplicate.
    done = store.list(status="done", limit=1)[0]
    again = Delivery(done.task_id, done.stage, done.payload, done.received_at)
    task = store.task(done.task_id)
    assert task is not None, "a kept delivery's task is not found"
    rows.append(("a kept delivery claimed again; its task",
                 f"{store.claim(again).value}; {task.state.value}, "
                 f"stages {', '.join(task.stages)}"))  # fmt: skip
    return rows


def delivery_path(empty: PersistentStore, full: PersistentStore, count: int,
                  rounds: int) -> tuple[Rows, float]:  # fmt: skip
    """Both stores' throughput, in alternate rounds after a warm-up; the ratio full/empty."""
    throughput(empty, 200)
    throughput(full, 200)
    per_round = max(count // rounds, 1)
    stores = {"empty": empty, "full": full}
    rates: dict[str, list[float]] = {"empty": [], "full": []}
    for round_ in range(rounds):
        for name in ("empty", "full") if round_ % 2 == 0 else ("full", "empty"):
            rates[name].append(throughput(stores[name], per_round))
    medians = {name: statistics.median(rates[name]) for name in rates}
    rows = [
        (f"delivery path, {name} store",
         f"{medians[name]:,.0f} deliveries/s (rounds: "
         f"{', '.join(f'{each:,.0f}' for each in rates[name])})")
        for name in ("empty", "full")
    ]  # fmt: skip
    return rows, medians["full"] / medians["empty"]


def operator_queries(store: PersistentStore) -> dict[str, Callable[[], object]]:
    """The queries of the sweep, reconciliation and the command line, as they call them."""
    shown = (store.list(status="failed", limit=1) or store.list(limit=1))[0].id

    def overdue() -> object:
        now = datetime.now(timezone.utc)
        return store.overdue(now - RECONCILE_AFTER, now=now, limit=RECONCILE_BATCH)

    return {
        f"sweep: `pending({SWEEP_AGE.seconds} s, limit={SWEEP_BATCH})`":
            lambda: store.pending(SWEEP_AGE, SWEEP_BATCH),
        "`list(status=\"failed\", limit=50)`": lambda: store.list(status="failed", limit=50),
        "`list(limit=50)`": lambda: store.list(limit=50),
        "show: `get(id)`": lambda: store.get(shown),
        "`tasks(state=\"open\", limit=50)`": lambda: store.tasks(state="open", limit=50),
        f"reconciliation: `overdue(now - {RECONCILE_AFTER.seconds} s, limit={RECONCILE_BATCH})`":
            overdue,
    }  # fmt: skip


def timed_queries(queries: dict[str, Callable[[], object]], runs: int) -> Rows:
    rows = []
    for name, query in queries.items():
        answer = query()
        found = len(answer) if isinstance(answer, Sequence) else int(answer is not None)
        rows.append((name, f"{median_ms(query, runs):.2f} ms ({found} found)"))
    return rows


def plans(url: str, queries: dict[str, Callable[[], object]]) -> list[str]:
    """Each query's SQL, as the store ran it, and its plan, in markdown."""
    engine = sql_engine(url)
    capture = Captured()
    text = []
    for name, query in queries.items():
        for statement, parameters in capture.during(query):
            text.append(f"### {name}\n\n```\n{shortened(statement)}\n")
            text.append("\n".join(explain(engine, statement, parameters)) + "\n```\n")
    engine.dispose()
    return text


def prune_under_claims(store: PersistentStore, url: str, cutoff: timedelta, idle_seconds: float,
                       rate: float, profiler: Profiler | None = None) -> Rows:  # fmt: skip
    """The prune of what is older than ``cutoff`` while another process claims, ``rate`` a
    second, against that process's claims with the store idle before it; and the claims for as
    long again after it, apart: a server may still be catching up with the prune's writes then
    (PostgreSQL's checkpoint of its WAL, autovacuum of the rows it deleted), which is the
    prune's doing, not the idle store's. With a ``profiler``, what the server did in each."""
    ttl = store.ttl
    url = claims_url(url)
    profiles: list[tuple[str, Claims, ServerWork]] = []

    def measure(name: str, work: Callable[[], object] | None) -> tuple[Claims, float, object]:
        if profiler is None:
            return claims_meanwhile(url, ttl, rate, work, idle_seconds)
        with profiler.window() as server:
            measured = claims_meanwhile(url, ttl, rate, work, idle_seconds)
        profiles.append((name, measured[0], server))
        return measured

    idle, _, _ = measure("idle", None)
    during, took, pruned = measure("during the prune", lambda: store.prune(cutoff))
    assert isinstance(pruned, int)
    after, _, _ = measure("after the prune", None)
    idle_p99 = idle.percentiles()[1]

    def seen(claims: Claims) -> str:
        p50, p99, longest = claims.percentiles()
        return (f"{p50:.2f} / {p99:.2f} / {longest:.0f} ms ({len(claims.latencies)} claims, "
                f"{claims.failures} failed)")  # fmt: skip

    rows = [
        (f"prune of the part older than {cutoff.days} days, {store.prune_batch:,} a step"
         + ("" if store.prune_rate is None else f", {store.prune_rate:,g} a second at most"),
         f"{took:.1f} s, {pruned:,} deliveries ({pruned / took:,.0f}/s)"),
        (f"claims ({rate:g} a second), idle: p50 / p99 / longest", seen(idle)),
        ("claims during the prune: p50 / p99 / longest", seen(during)),
        ("claims after the prune: p50 / p99 / longest", seen(after)),
        ("claims' p99 during the prune / idle", f"{during.percentiles()[1] / idle_p99:.2f}"),
        ("claims' p99 after the prune / idle", f"{after.percentiles()[1] / idle_p99:.2f}"),
    ]  # fmt: skip
    for window, claimed, server in profiles:
        rows += server.rows(window, claimed)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a store URL: SQLite, PostgreSQL, Redis")
    parser.add_argument("--kept", type=int, default=100_000, help="deliveries kept in the store")
    parser.add_argument("--ttl-days", type=float, default=30.0, help="the store's TTL")
    parser.add_argument("--operations", type=int, default=3000,
                        help="deliveries through the delivery path, per store")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="alternate rounds of those")
    parser.add_argument("--runs", type=int, default=5, help="runs of each query (median)")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="claims before the prune, and again after it")  # fmt: skip
    parser.add_argument("--claim-rate", type=float, default=200.0,
                        help="deliveries a second claimed during the prune, and idle")  # fmt: skip
    parser.add_argument("--explain", action="store_true", help="the plan of each SQL query")
    parser.add_argument(
        "--profile", action="store_true",
        help="PostgreSQL: where the claims waited in the server, and what it wrote, meanwhile",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="leave both stores in place")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument(
        "--prune-batch", type=int, default=None, help="deliveries per step of the prune"
    )
    parser.add_argument(
        "--expired-share", type=float, default=EXPIRED_SHARE,
        help="of the kept deliveries, those the prune deletes (a day's of a 30-day TTL: 0.033)",
    )  # fmt: skip
    parser.add_argument(
        "--prune-rate", type=float, default=None,
        help="deliveries a second the prune deletes at most (0: no limit)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.claim_rate <= 0:
        parser.error("--claim-rate must be above 0")
    if not 0 < args.expired_share < 1:
        parser.error("--expired-share must be above 0 and below 1")
    if args.prune_rate is not None and args.prune_rate < 0:
        parser.error("--prune-rate must be 0 (no limit) or above")
    if args.profile and not url_scheme(args.store).startswith("postgresql"):
        parser.error("--profile reads PostgreSQL's statistics: a postgresql:// store only")

    ttl = int(args.ttl_days * 86400)
    span = timedelta(seconds=ttl) - timedelta(hours=1)  # nothing expires during the run
    tag = uuid.uuid4().hex[:8]
    full_url, empty_url = own_url(args.store, f"{tag}_full"), own_url(args.store, f"{tag}_empty")
    full, empty = open_store(full_url, ttl), open_store(empty_url, ttl)
    if args.prune_batch is not None:
        full.prune_batch = args.prune_batch
    if args.prune_rate is not None:
        full.prune_rate = args.prune_rate or None
    explained: list[str] = []
    try:
        rows = fill(full, full_url, args.kept, span, args.seed)
        path, ratio = delivery_path(empty, full, args.operations, args.rounds)
        queries = operator_queries(full)
        rows += path + timed_queries(queries, args.runs)
        if args.explain and isinstance(full, SQLAlchemyStore):
            explained = plans(full_url, queries)
        cutoff = span * (1 - args.expired_share)
        profiler = Profiler(full_url) if args.profile else None
        try:
            rows += prune_under_claims(full, full_url, cutoff, args.idle_seconds,
                                       args.claim_rate, profiler)  # fmt: skip
        finally:
            if profiler is not None:
                profiler.close()
    finally:
        if not args.keep:
            remove(full, full_url)
            remove(empty, empty_url)

    label = args.store.split("@")[-1]
    print(f"`{label}`, {args.kept:,} kept, TTL {args.ttl_days:g} days\n")
    print("| what | figure |")
    print("|---|---|")
    for name, figure in rows:
        print(f"| {name} | {figure} |")
    if explained:
        print()
        print("\n".join(explained))
    print()
    print(f"scale ratio full/empty: {ratio:.2f}")


if __name__ == "__main__":
    main()
