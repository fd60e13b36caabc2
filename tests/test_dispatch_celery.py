"""``MUSICCALLBACK_DISPATCH = "celery"``, against a real Redis broker and a real Celery worker.

The worker is a separate process (``celery -A tests.celery_host:celery_app worker``, prefork) that
builds the host app of :mod:`tests.celery_host`; the tests post to the same app built here, as a
web process would, and read in Redis what the worker's receivers recorded. Web and worker share a
Redis store (database 2 of the broker's server), as docs/dispatch.md tells hosts to.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from flask import Flask

from flask_musiccallback.testing import build_callback

from .celery_host import URL, create_app, host_env, kept, records
from .conftest import URL as PLAIN_URL
from .conftest import AppFactory
from .karaoke_family import karaoke_payload
from .servers import free_port
from .servers_redis import celery_worker


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One worker for the module; yields its log."""
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    with celery_worker("tests.celery_host:celery_app", host_env(broker), log=log):
        yield log


@pytest.fixture
def web(broker: str, worker: Path) -> Iterator[Flask]:
    """The host app on the web side: it publishes, the worker runs the receivers."""
    app = create_app(f"{broker}/0", f"{broker}/1", MUSICCALLBACK_STORE=f"{broker}/2")
    yield app
    app.extensions["celery"].close()


def post(app: Flask, payload: dict[str, Any], url: str = URL) -> tuple[int, dict[str, Any]]:
    answer = app.test_client().post(url, json=payload)
    return answer.status_code, answer.get_json()


def attempts(app: Flask, task_id: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    """The first ``count`` attempts the worker made on ``task_id``, waiting for them."""
    key = f"attempts:{task_id}"
    deadline = time.monotonic() + timeout
    while records(app).llen(key) < count:
        assert time.monotonic() < deadline, f"the worker made fewer than {count} attempts"
        time.sleep(0.05)
    return [json.loads(item) for item in records(app).lrange(key, 0, -1)]


def task(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def test_answers_at_once_and_a_worker_runs_the_receivers_in_an_app_context(web: Flask) -> None:
    task_id = task("held")
    assert post(web, build_callback("complete", task_id=task_id)) == (200, {"status": "received"})
    [seen] = attempts(web, task_id, 1)
    # The receiver started in a worker and waits for this test: the answer did not wait for it.
    assert records(web).llen(f"finished:{task_id}") == 0
    records(web).rpush(f"release:{task_id}", 1)
    assert records(web).blpop([f"finished:{task_id}"], timeout=20) is not None
    assert seen["pid"] != os.getpid()
    assert seen["app"] == "celery_host"
    assert seen["request_context"] is False
    assert (seen["task_id"], seen["stage"], seen["tracks"]) == (task_id, "complete", 2)


def test_the_failure_stage_reaches_its_signal_in_the_worker(web: Flask) -> None:
    task_id = task("ok")
    post(web, build_callback("failed", task_id=task_id))
    [seen] = attempts(web, task_id, 1)
    assert seen["stage"] == "failed"


def test_the_worker_reads_a_family_registered_on_the_hosts_extension(web: Flask) -> None:
    task_id = task("ok")
    assert post(web, karaoke_payload(task_id)) == (200, {"status": "received"})
    [seen] = attempts(web, task_id, 1)
    assert seen["stage"] == "complete"
    assert kept(web, task_id, "done").stage == "karaoke:complete"


def test_a_redelivery_is_a_duplicate_and_runs_nothing(web: Flask) -> None:
    task_id = task("ok")
    payload = build_callback("complete", task_id=task_id)
    assert post(web, payload)[1] == {"status": "received"}
    assert post(web, payload)[1] == {"status": "duplicate"}
    attempts(web, task_id, 1)
    time.sleep(0.5)
    assert len(attempts(web, task_id, 1)) == 1


def test_a_failing_receiver_is_retried_by_the_worker_with_back_off(web: Flask) -> None:
    task_id = task("flaky-2")
    before = datetime.now().astimezone()
    post(web, build_callback("complete", task_id=task_id))
    answered = datetime.now().astimezone()
    runs = attempts(web, task_id, 3)
    gaps = [later["at"] - earlier["at"] for earlier, later in pairwise(runs)]
    assert gaps[0] >= 0.25  # RETRY_BACKOFF is 0.3 s, doubled for the next
    assert gaps[1] >= 0.5
    # Every attempt sees the event as it arrived, not as the worker loaded it again.
    received = {datetime.fromisoformat(run["received_at"]) for run in runs}
    assert len(received) == 1
    assert before <= received.pop() <= answered


def test_after_the_last_attempt_the_worker_keeps_it_as_failed(web: Flask, worker: Path) -> None:
    task_id = task("broken")
    post(web, build_callback("complete", task_id=task_id))
    assert len(attempts(web, task_id, 3)) == 3
    deadline = time.monotonic() + 10
    while f"Giving up on task {task_id}" not in worker.read_text():
        assert time.monotonic() < deadline, worker.read_text()
        time.sleep(0.05)
    time.sleep(1.5)  # past the back-off a fourth attempt would have had
    assert len(attempts(web, task_id, 3)) == 3


def test_the_worker_settles_the_delivery_in_the_shared_store(web: Flask) -> None:
    task_id = task("ok")
    post(web, build_callback("complete", task_id=task_id))
    done = kept(web, task_id, "done")
    assert (done.attempts, done.last_error, done.owner) == (1, None, None)


def test_the_worker_records_every_failed_attempt_and_keeps_the_last_as_failed(
    web: Flask,
) -> None:
    task_id = task("broken")
    post(web, build_callback("complete", task_id=task_id))
    failed = kept(web, task_id, "failed")
    assert (failed.attempts, failed.last_error) == (3, "RuntimeError: broken receiver")
    assert not failed.released


def test_replay_publishes_to_the_workers_again(web: Flask) -> None:
    task_id = task("flaky-3")
    post(web, build_callback("complete", task_id=task_id))
    failed = kept(web, task_id, "failed")
    result = web.test_cli_runner().invoke(args=["musiccallback", "replay", failed.id])
    assert result.exit_code == 0, result.output
    # Reported as the store sees it just after publishing: a quick worker may have run it already.
    assert result.output in (
        f"{failed.id}: queued (attempt 4)\n",
        f"{failed.id}: done (attempt 4)\n",
    )
    done = kept(web, task_id, "done")
    assert done.attempts == 4
    assert len(attempts(web, task_id, 4)) == 4


def test_celery_app_setting_names_the_app_to_publish_with(broker: str, worker: Path) -> None:
    celery = Celery("elsewhere", broker=f"{broker}/0")
    app = create_app(
        f"{broker}/0",
        f"{broker}/1",
        MUSICCALLBACK_CELERY_APP=celery,
        MUSICCALLBACK_STORE=f"{broker}/2",
    )
    del app.extensions["celery"]
    task_id = task("ok")
    try:
        assert post(app, build_callback("complete", task_id=task_id))[0] == 200
        assert len(attempts(app, task_id, 1)) == 1
    finally:
        celery.close()


# When deliveries cannot be queued: no worker needed.


def test_a_broker_that_is_down_answers_503_and_gives_the_delivery_back() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(nowhere, nowhere)
    payload = build_callback("complete")
    try:
        start = time.perf_counter()
        assert post(app, payload) == (503, {"status": "retry"})
        assert time.perf_counter() - start < 5  # well inside the provider's 15 s
        # Released, not held: the provider's retry is tried again, not taken as a duplicate.
        assert post(app, payload) == (503, {"status": "retry"})
    finally:
        app.extensions["celery"].close()


def test_without_a_celery_app_the_endpoint_answers_503_and_says_why(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(DISPATCH="celery")
    answer = app.test_client().post(PLAIN_URL, json=build_callback("complete"))
    assert (answer.status_code, answer.get_json()) == (503, {"status": "retry"})
    assert "MUSICCALLBACK_CELERY_APP" in caplog.text
