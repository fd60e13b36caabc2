"""CPU per delivery of a store alone, on both sides of the wire, beside the least it could cost.

    python -m benchmarks.store_cpu --store "postgresql+psycopg://bench:bench@127.0.0.1/bench"
    python -m benchmarks.store_cpu --store redis://127.0.0.1:6379/0

Claims and completes distinct deliveries (the endpoint's two store calls, no Flask) and reads the
CPU time of this process and of the store's server processes (every ``postgres`` or
``redis-server`` of the machine, from ``/proc``) around them. Beside the store, for reference:

PostgreSQL
    two ``SELECT 1`` (the round trips alone); and the store's own two statements run by bare
    psycopg on one connection, against a table with only its keys: what a delivery costs with no
    SQLAlchemy, no pool and no secondary index, the floor of any store keeping the same row.
Redis
    two ``PING``; and the claim script with a 2 KB payload next to a script that does nothing
    with the same arguments, the server's side of a script call.

Run it on a quiet machine: the server's share counts every process of that name.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Flask

from flask_musiccallback.families import MUSIC
from flask_musiccallback.simulate import build_callback
from flask_musiccallback.stores.base import Store
from flask_musiccallback.stores.registry import store_from_url, url_scheme

from .http_ratio import SERVER_PROCESSES, cpu_seconds, processes

HEADERS = {"Content-Type": "application/json", "User-Agent": "wrk", "Remote-Addr": "127.0.0.1"}


#: Prepares ``n`` deliveries' worth of work, untimed, and returns what runs them, timed.
Work = Callable[[int], Callable[[], None]]


def measure(work: Work, count: int, server: str | None) -> tuple[float, float]:
    """Microseconds of CPU per delivery of ``work``: this process's, the server's processes'."""
    work(max(count // 10, 20))()  # connect, prepare, warm up
    servers = [] if server is None else processes(named=server)  # connected ones included
    run = work(count)
    mine, theirs = _own_cpu(), cpu_seconds(servers)
    run()
    return (_own_cpu() - mine) / count * 1e6, (cpu_seconds(servers) - theirs) / count * 1e6


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def store_work(store: Store) -> Work:
    """Claim and complete new deliveries, as the endpoint does for each callback it accepts."""
    prefix = uuid.uuid4().hex
    template = json.dumps(build_callback("complete", task_id="TASK-ID"))
    serial = iter(range(10**9))

    def work(n: int) -> Callable[[], None]:
        deliveries = []
        for _ in range(n):
            body = template.replace("TASK-ID", f"{prefix}-{next(serial)}")
            payload = json.loads(body)
            deliveries.append(MUSIC.delivery(MUSIC.load(payload), payload, HEADERS, body=body))

        def run() -> None:
            for delivery in deliveries:
                store.claim(delivery)
                store.complete(delivery)

        return run

    return work


def postgresql_references(url: str) -> dict[str, Work]:
    """Two ``SELECT 1``; the store's statements on bare psycopg and a table of keys only."""
    import psycopg
    import sqlalchemy as sa

    from flask_musiccallback.stores.sqlalchemy import SQLAlchemyStore

    table = f"store_cpu_floor_{uuid.uuid4().hex[:8]}"
    store = SQLAlchemyStore(url, ttl=86400, table_name=table)
    store.init_app(Flask(__name__))
    engine = store._connectable()  # creates the table, with the store's indexes
    with engine.connect() as connection:  # keep its keys only
        for index in store.table.indexes:
            connection.execute(sa.text(f"DROP INDEX {index.name}"))
    statements = store._statements(engine.dialect)
    assert statements.claim is not None
    assert statements.claim.driver is not None
    claim, complete = statements.claim.driver, statements.settle.driver
    assert complete is not None
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    driver = psycopg.connect(dsn, autocommit=True)
    body = MUSIC.delivery(MUSIC.load(build_callback("complete")), {}).payload_json()
    prefix = uuid.uuid4().hex
    serial = iter(range(10**9))

    def select_one(n: int) -> Callable[[], None]:
        def run() -> None:
            with driver.cursor() as cursor:
                for _ in range(2 * n):
                    cursor.execute("SELECT 1")
                    cursor.fetchall()

        return run

    def floor(n: int) -> Callable[[], None]:
        return lambda: floor_run(n)

    def floor_run(n: int) -> None:
        with driver.cursor() as cursor:
            for _ in range(n):
                now = datetime.now(timezone.utc).replace(tzinfo=None)
                task_id = f"{prefix}-{next(serial)}"
                values: dict[str, Any] = {
                    "task_id": task_id, "stage": "complete", "state": "processing",
                    "released": False, "attempts": 1, "last_error": None, "owner": "bench:1",
                    "lease_expires_at": now + timedelta(minutes=5), "payload": body,
                    "headers": "{}", "received_at": now, "created_at": now, "updated_at": now,
                    "superseded_by": None, "now": now,
                    "forgotten_before": now - timedelta(days=1),
                }  # fmt: skip
                cursor.execute(claim.sql, claim.parameters(values))
                cursor.fetchall()
                done = {"key_task_id": task_id, "key_stage": "complete", "key_owner": "bench:1",
                        "state": "done", "released": False, "last_error": None,
                        "updated_at": now}  # fmt: skip
                cursor.execute(complete.sql, complete.parameters(done))

    return {"two SELECT 1": select_one, "bare psycopg, keys only": floor}


def redis_references(url: str) -> dict[str, Work]:
    """Two ``PING``; the claim script, and a script doing nothing, with the same arguments."""
    from flask_musiccallback.stores.redis import _CLAIM, RedisStore

    store = RedisStore.from_url(url, ttl=600)
    client = store.client
    body = MUSIC.delivery(MUSIC.load(build_callback("complete")), {}).payload_json()
    scripts = {"claim script": client.register_script(_CLAIM),
               "script doing nothing": client.register_script("return 'claimed'")}  # fmt: skip
    prefix = f"store-cpu:{uuid.uuid4().hex[:8]}:"
    serial = iter(range(10**9))

    def ping(n: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(2 * n):
                client.ping()

        return run

    def calling(script: Any) -> Work:
        def work(n: int) -> Callable[[], None]:
            return lambda: run(n)

        def run(n: int) -> None:
            for _ in range(n):
                key = f"{prefix}{next(serial)}"
                keys = [f"{key}:claim", f"{key}:delivery", f"{prefix}index", f"{key}:claim"]
                arguments = ["bench:1", 300_000, 600, "processing", key, key, "complete", body,
                             "{}", 0, "0"]  # fmt: skip
                store._call(script, keys, arguments)

        return work

    return {"two PING": ping, **{name: calling(script) for name, script in scripts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", required=True, help="a store URL (repeatable)")
    parser.add_argument("--deliveries", type=int, default=3000)
    args = parser.parse_args()
    print("| store | what | client CPU µs | server CPU µs | total µs |")
    print("|---|---|---|---|---|")
    for url in args.store:
        scheme = url_scheme(url)
        command = SERVER_PROCESSES.get(scheme)
        store = store_from_url(url, ttl=86400)
        store.init_app(Flask(__name__))
        rows = {"the store: claim + complete": store_work(store)}
        if scheme == "postgresql":
            rows.update(postgresql_references(url))
        elif command == "redis-server":
            rows.update(redis_references(url))
        label = url.split("@")[-1]
        for name, work in rows.items():
            client, server = measure(work, args.deliveries, command)
            print(f"| `{label}` | {name} | {client:.0f} | {server:.0f} | {client + server:.0f} |")
        store.close()


if __name__ == "__main__":
    main()
