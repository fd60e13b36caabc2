"""What is particular to the Redis store: its keys, their expiry, and its URL options."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import redis

from flask_musiccallback.contract import unreadable_delivery
from flask_musiccallback.stores.base import ClaimResult, Delivery, DeliveryState
from flask_musiccallback.stores.redis import RedisStore, delivery_id
from flask_musiccallback.stores.registry import store_from_url
from flask_musiccallback.stores.tasks import TaskState
from flask_musiccallback.testing import build_callback

from .conftest import URL, AppFactory
from .servers import RedisServer

COMPLETE, FAILED = TaskState.COMPLETE, TaskState.FAILED
HOUR = timedelta(hours=1)


def delivery(task_id: str, stage: str = "complete") -> Delivery:
    return Delivery(task_id, stage, {"task": task_id}, datetime.now(timezone.utc))


def test_deliveries_expire_with_the_ttl(redis_url: str) -> None:
    store = store_from_url(redis_url, ttl=120)
    assert isinstance(store, RedisStore)
    claimed = delivery("t1")
    store.claim(claimed)
    store.complete(claimed)
    client = redis.Redis.from_url(redis_url)
    for key in client.keys("musiccallback:*:t1/complete"):
        assert 0 < client.ttl(key) <= 120
    assert client.ttl("musiccallback:index") == -1, "the index is trimmed, not expired"


def test_a_claim_expires_after_its_lease(redis_url: str) -> None:
    store = store_from_url(redis_url + "?lease=30", ttl=600)
    store.claim(delivery("t1"))
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl("musiccallback:claim:t1/complete") <= 30_000


def test_stores_with_other_prefixes_share_nothing(redis_url: str) -> None:
    first = store_from_url(redis_url + "?prefix=shop:", ttl=60)
    second = store_from_url(redis_url + "?prefix=blog:", ttl=60)
    assert first.claim(delivery("t1")) is ClaimResult.CLAIMED
    assert second.claim(delivery("t1")) is ClaimResult.CLAIMED
    assert first.claim(delivery("t1")) is ClaimResult.IN_PROGRESS


def test_odd_task_ids_make_ids_that_cannot_collide(redis_url: str) -> None:
    store = store_from_url(redis_url, ttl=60)
    assert isinstance(store, RedisStore)
    assert store.claim(delivery("a/b", "c")) is ClaimResult.CLAIMED
    assert store.claim(delivery("a", "b/c")) is ClaimResult.CLAIMED
    kept = {k.id: (k.task_id, k.stage) for k in store.list()}
    assert kept == {"a%2Fb/c": ("a/b", "c"), "a/b%2Fc": ("a", "b/c")}
    found = store.get("a%2Fb/c")
    assert found is not None
    assert found.state is DeliveryState.PROCESSING


def test_redis_py_options_in_the_url_still_reach_the_client(
    redis_url: str, make_app: AppFactory
) -> None:
    app = make_app(STORE=redis_url + "?prefix=x:&lease=60&health_check_interval=10")
    store = app.extensions["musiccallback"].store
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.lease) == ("x:", 60)
    assert store.client.connection_pool.connection_kwargs["health_check_interval"] == 10
    assert app.test_client().post(URL, json=build_callback("text")).status_code == 200


def test_only_deliveries_in_flight_are_in_the_in_flight_index(redis_url: str) -> None:
    store = store_from_url(redis_url + "?prefix=flight:", ttl=600)
    assert isinstance(store, RedisStore)
    for index in range(5):
        done = delivery(f"done-{index}")
        store.claim(done)
        store.complete(done)
    failed = delivery("failed")
    store.claim(failed)
    store.fail(failed, "receiver raised")
    running = delivery("running")
    store.claim(running)
    store.claim(delivery("waiting"), queued=True)
    client = redis.Redis.from_url(redis_url)
    in_flight = {member.decode() for member in client.zrange("flight:index:inflight", 0, -1)}
    assert in_flight == {"running/complete", "waiting/complete"}
    assert client.zcard("flight:index") == 8
    pending = store.list(status="pending", limit=None)
    assert {kept.task_id for kept in pending} == {"running", "waiting"}
    store.complete(running)
    assert [kept.task_id for kept in store.list(status="pending")] == ["waiting"]


def test_an_unreadable_body_has_an_index_of_its_own_and_no_claim(redis_url: str) -> None:
    store = store_from_url(redis_url + "?prefix=unread:", ttl=600)
    assert isinstance(store, RedisStore)
    done = delivery("done")
    store.claim(done)
    store.complete(done)
    body = unreadable_delivery(task_id="mystery")
    store.keep_unreadable(body, "no family reads it")
    key_id = delivery_id(body.task_id, body.stage)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.zrange("unread:index:unreadable", 0, -1) == [key_id]
    assert client.zcard("unread:index:inflight") == 0
    assert client.zcard("unread:index") == 2
    assert not client.exists(f"unread:claim:{key_id}")
    assert 0 < client.ttl(f"unread:delivery:{key_id}") <= 600

    assert store.delete(key_id)
    assert client.zcard("unread:index:unreadable") == 0
    assert client.zrange("unread:index", 0, -1) == ["done/complete"]


def test_a_delivery_is_in_the_failed_index_from_its_failure_until_it_is_in_flight_again(
    redis_url: str,
) -> None:
    store = store_from_url(redis_url + "?prefix=failing:", ttl=600)
    assert isinstance(store, RedisStore)
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def failed_index() -> set[str]:
        return set(client.zrange("failing:index:failed", 0, -1))

    kept = {name: delivery(name) for name in ("failed", "released", "replayed", "deleted", "ok")}
    for name, each in kept.items():
        store.claim(each)
        if name == "released":
            store.release(each, "store the receiver needs is down")
        elif name == "ok":
            store.complete(each)
        else:
            store.fail(each, "receiver raised")
    assert failed_index() == {f"{name}/complete" for name in kept if name != "ok"}
    listed = {each.task_id for each in store.list(status="failed", limit=None)}
    assert listed == {"failed", "released", "replayed", "deleted"}

    # The provider's retry takes the released one over; a replay takes a failed one.
    assert store.claim(kept["released"]) is ClaimResult.CLAIMED
    assert store.reclaim("replayed/complete") is not None
    assert store.delete("deleted/complete")
    assert failed_index() == {"failed/complete"}
    assert [each.task_id for each in store.list(status="failed")] == ["failed"]

    # Failing again puts it back, newest first.
    store.fail(kept["released"], "receiver raised again")
    assert [each.task_id for each in store.list(status="failed")] == ["released", "failed"]
    assert store.prune(timedelta(seconds=0)) == 3  # the replayed one is held
    assert failed_index() == set()


def test_a_task_is_a_hash_expiring_with_the_ttl_from_when_it_was_last_expected(
    redis_url: str,
) -> None:
    store = store_from_url(redis_url + "?prefix=tasks:", ttl=600)
    store.expect("t1", "lyrics")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget("tasks:task:t1", "family") == "lyrics"
    assert 0 < client.ttl("tasks:task:t1") <= 600
    client.expire("tasks:task:t1", 5)
    store.expect("t1", "music")
    assert client.ttl("tasks:task:t1") > 5


def test_the_stages_of_a_task_are_fields_of_its_hash(redis_url: str) -> None:
    """The form reconciliation writes them in: ``HSETNX stage:<name> <µs>``, the first time."""
    store = store_from_url(redis_url + "?prefix=stages:", ttl=600)
    store.expect("t1", "music")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset("stages:task:t1", "stage:complete", "1748773323000001")
    task = store.task("t1")
    assert task is not None
    assert dict(task.stages) == {"complete": datetime(2025, 6, 1, 10, 22, 3, 1, timezone.utc)}


def test_tasks_are_indexed_by_state_and_by_when_they_were_last_heard_of(redis_url: str) -> None:
    store = store_from_url(redis_url + "?prefix=idx:", ttl=600)
    for task_id in ("open-1", "open-2", "done", "failed"):
        store.expect(task_id, "music")
    now = datetime.now(timezone.utc)
    store.record_stage("done", "music", "complete", at=now, via="callback", final=COMPLETE)
    store.record_stage("failed", "music", "failed", at=now, via="poll", final=FAILED)
    store.record_stage("heard", "music", "text", at=now, via="callback", final=None)
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    assert client.zrange("idx:tasks:open", 0, -1) == ["open-1", "open-2", "heard"]
    assert client.zrange("idx:tasks:complete", 0, -1) == ["done"]
    assert client.zrange("idx:tasks:failed", 0, -1) == ["failed"]
    assert client.zrange("idx:tasks", 0, -1) == ["open-1", "open-2", "done", "failed", "heard"]
    assert client.hget("idx:task:heard", "via:text") == "callback"
    assert 0 < client.ttl("idx:task:heard") <= 600


def test_overdue_and_the_task_list_by_state_read_their_index_and_not_every_task(
    redis_url: str,
) -> None:
    store = store_from_url(redis_url + "?prefix=read:", ttl=600)
    now = datetime.now(timezone.utc)
    for n in range(30):
        store.record_stage(f"done-{n}", "music", "complete", at=now, via="poll", final=COMPLETE)
    store.expect("open", "music")

    def listing() -> None:
        assert [task.task_id for task in store.overdue(now + HOUR, now=now)] == ["open"]
        assert [task.task_id for task in store.tasks(state="open")] == ["open"]

    read = read_whole(redis_url, listing)
    assert len(read) == 2, read


def read_whole(redis_url: str, call: Callable[[], object]) -> list[str]:
    """The hashes ``call`` read whole (``HGETALL``), as the server saw them."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    read: list[str] = []
    marker = f"end-{time.monotonic_ns()}"
    with client.monitor() as monitor:
        call()
        client.echo(marker)
        for command in monitor.listen():
            if marker in command["command"]:
                break
            if command["command"].startswith("HGETALL"):
                read.append(command["command"])
    return read


def test_listing_failed_deliveries_reads_whole_only_those_it_lists(redis_url: str) -> None:
    """The failed ones are read from their own index; one task's, which no index serves, are
    found on the task id alone, the others not read with their payloads."""
    store = store_from_url(redis_url + "?prefix=failed:", ttl=600)
    failed = [delivery(f"failed-{n}") for n in range(2)]
    for kept in failed:
        store.claim(kept)
        store.fail(kept, "boom")
    for n in range(250):
        done = delivery(f"done-{n}")
        store.claim(done)
        store.complete(done)
    listed: list[str] = []

    def listing() -> None:
        listed.extend(kept.task_id for kept in store.list(status="failed"))
        listed.extend(kept.task_id for kept in store.list(task_id="done-7"))

    read = read_whole(redis_url, listing)

    assert listed == ["failed-1", "failed-0", "done-7"]
    assert len(read) == 3, read


def test_a_prune_forgets_entries_whose_hash_expired_and_misses_none_after_them(
    redis_url: str,
) -> None:
    """Hashes expire by themselves with the TTL, before a prune at the TTL comes: their index
    entries are forgotten, and the batches after them still reach every delivery to delete."""
    store = store_from_url(redis_url + "?prefix=expired:", ttl=600)
    store.prune_batch = 3
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for n in range(7):  # the oldest: their hashes expired
        old = delivery(f"expired-{n}")
        store.claim(old)
        store.complete(old)
        client.delete(f"expired:delivery:{delivery_id(old.task_id, old.stage)}")
    held = delivery("held")
    store.claim(held)
    for n in range(5):
        done = delivery(f"done-{n}")
        store.claim(done)
        store.complete(done)
    time.sleep(0.01)

    assert store.prune(timedelta(0)) == 5
    assert client.zrange("expired:index", 0, -1) == [delivery_id("held", "complete")]


def test_a_task_whose_hash_expired_leaves_the_indexes_when_they_are_read(redis_url: str) -> None:
    store = store_from_url(redis_url + "?prefix=gone:", ttl=600)
    store.expect("gone", "music")
    store.expect("kept", "music")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete("gone:task:gone")
    now = datetime.now(timezone.utc)
    assert [task.task_id for task in store.overdue(now + HOUR, now=now)] == ["kept"]
    assert client.zrange("gone:tasks:open", 0, -1) == ["kept"]
    assert [task.task_id for task in store.tasks()] == ["kept"]
    assert client.zrange("gone:tasks", 0, -1) == ["kept"]


def test_a_signature_is_a_key_expiring_with_its_window(redis_url: str) -> None:
    store = store_from_url(redis_url + "?prefix=sig:", ttl=600)
    assert store.remember_signature("abc=", "digest", ttl=300)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.get("sig:signature:abc=") == "digest"
    assert 0 < client.pttl("sig:signature:abc=") <= 300_000


def test_a_server_that_lost_the_scripts_is_sent_them_again(redis_url: str) -> None:
    store = store_from_url(redis_url + "?prefix=flush:", ttl=60)
    assert store.claim(delivery("before")) is ClaimResult.CLAIMED
    redis.Redis.from_url(redis_url).script_flush()
    after = delivery("after")
    assert store.claim(after) is ClaimResult.CLAIMED
    store.complete(after)
    assert store.claim(delivery("after")) is ClaimResult.DUPLICATE


def test_a_connection_the_server_dropped_is_replaced_without_an_error(redis_url: str) -> None:
    name = f"dropped-{time.monotonic_ns()}"
    store = store_from_url(f"{redis_url}?prefix=drop:&client_name={name}", ttl=60)
    assert store.claim(delivery("before")) is ClaimResult.CLAIMED
    client = redis.Redis.from_url(redis_url)
    (held,) = [c for c in client.client_list() if c["name"] == name]
    client.client_kill_filter(_id=held["id"])
    after = delivery("after")
    assert store.claim(after) is ClaimResult.CLAIMED
    store.complete(after)
    assert store.claim(delivery("after")) is ClaimResult.DUPLICATE


def test_a_client_with_a_single_connection_of_its_own_works_too(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    store = RedisStore(client, ttl=60, prefix="single:")
    claimed = delivery("t1")
    assert store.claim(claimed) is ClaimResult.CLAIMED
    store.complete(claimed)
    assert store.claim(delivery("t1")) is ClaimResult.DUPLICATE


def test_the_body_is_kept_as_it_was_received(redis_url: str, make_app: AppFactory) -> None:
    app = make_app(STORE=redis_url + "?prefix=body:")
    payload = build_callback("complete", task_id="kept-as-sent")
    payload["data"]["data"][0]["title"] = "Ünïcode ☃ 🎵"
    body = json.dumps(payload, indent=2, ensure_ascii=False)
    answer = app.test_client().post(URL, data=body.encode(), content_type="application/json")
    assert answer.status_code == 200
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget("body:delivery:kept-as-sent/complete", "payload") == body
    store = app.extensions["musiccallback"].store
    kept = store.get("kept-as-sent/complete")
    assert kept is not None
    assert kept.payload == payload


def test_a_server_on_this_machine_is_reached_through_its_unix_socket(
    redis_server: RedisServer, make_app: AppFactory
) -> None:
    redis_server.flush(9)
    url = redis_server.socket_url(9) + "&prefix=socket:&lease=60"
    app = make_app(STORE=url)
    store = app.extensions["musiccallback"].store
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.lease) == ("socket:", 60)
    assert store.describe() == f"Redis at {redis_server.directory / 'redis.sock'}/9"
    payload = build_callback("complete", task_id="over-the-socket")
    client = app.test_client()
    assert client.post(URL, json=payload).get_json() == {"status": "received"}
    assert client.post(URL, json=payload).get_json() == {"status": "duplicate"}
    over_tcp = redis.Redis.from_url(redis_server.url(9), decode_responses=True)
    assert over_tcp.get("socket:claim:over-the-socket/complete") == "done"
