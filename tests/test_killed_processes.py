"""A process killed with SIGKILL after answering 200 loses nothing (persistent stores).

The app runs in a real process behind a real HTTP server (``thread`` dispatch), or in a real Celery
worker (``celery`` dispatch). Its receiver hangs; the test posts callbacks, gets
``{"status": "received"}``, kills the process with SIGKILL, finds the deliveries pending in the
store, and recovers them: by ``flask musiccallback replay --pending``, or by the sweep of the
process started in its place. Each delivery's receiver then runs to its end exactly once.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import CallbackEvent, all_tracks_generated
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import DeliveryState, KeptDelivery
from flask_musiccallback.stores.owners import owner_is_dead
from flask_musiccallback.testing import build_callback

from .backends import child_env, persistent_store
from .conftest import TOKEN, URL, AppFactory

SERVER = """
import os, sys, time
from flask import Flask
from werkzeug.serving import make_server
from flask_musiccallback import MusicCallback, all_tracks_generated

store_url, log, sweep_age = sys.argv[1], sys.argv[2], float(sys.argv[3])
app = Flask("killed")
app.config.update(
    MUSICCALLBACK_TOKEN=os.environ["TOKEN"],
    MUSICCALLBACK_STORE=store_url,
    MUSICCALLBACK_DISPATCH="thread",
    MUSICCALLBACK_THREAD_POOL_SIZE=1,
    MUSICCALLBACK_PENDING_SWEEP_AGE=sweep_age or None,
)
MusicCallback(app)

def note(line):
    with open(log, "a") as f:
        f.write(line + "\\n")

@all_tracks_generated.connect_via(app)
def receiver(sender, event, **extra):
    note(f"start {event.task_id}")
    if os.environ.get("HANG"):
        time.sleep(600)
    note(f"done {event.task_id}")

server = make_server("127.0.0.1", 0, app, threaded=True)
print(server.server_port, flush=True)
server.serve_forever()
"""


@contextmanager
def app_process(
    store_url: str, log: Path, *, hang: bool, sweep_age: float = 0
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The app in a process of its own, serving HTTP; yields the process and its port."""
    env = child_env(TOKEN=TOKEN, **({"HANG": "1"} if hang else {}))
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, store_url, str(log), str(sweep_age)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def request(port: int, method: str, url: str, payload: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = None if payload is None else json.dumps(payload)
        connection.request(method, url, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def deliver(port: int, task_id: str) -> Any:
    status, body = request(port, "POST", URL, build_callback("complete", task_id=task_id))
    return status, json.loads(body)


def wait_for(log: Path, *lines: str, timeout: float = 15) -> list[str]:
    """The log's lines, once it holds every one of ``lines``."""
    deadline = time.monotonic() + timeout
    while True:
        found = log.read_text().splitlines() if log.exists() else []
        if all(line in found for line in lines):
            return found
        assert time.monotonic() < deadline, f"missing {lines} in {found}"
        time.sleep(0.02)


def sigkill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def answered_then_killed(store_url: str, log: Path) -> None:
    """Two callbacks answered 200, one running and one queued, when the process is killed."""
    with app_process(store_url, log, hang=True) as (process, port):
        assert deliver(port, "running") == (200, {"status": "received"})
        wait_for(log, "start running")
        assert deliver(port, "queued") == (200, {"status": "received"})
        sigkill(process)


def by_task(app: Flask) -> dict[str, KeptDelivery]:
    return {kept.task_id: kept for kept in persistent_store(app).list()}


def test_after_a_sigkill_replay_pending_runs_each_answered_delivery_once(
    make_app: AppFactory, shared_store_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "receiver.log"
    answered_then_killed(shared_store_url, log)

    app = make_app(STORE=shared_store_url, DISPATCH="thread")
    left = by_task(app)
    assert left["running"].state is DeliveryState.PROCESSING
    assert left["queued"].state is DeliveryState.PENDING
    assert all(owner_is_dead(kept.owner) for kept in left.values())
    listed = app.test_cli_runner().invoke(args=["musiccallback", "list", "--status", "pending"])
    assert "running" in listed.output
    assert "queued" in listed.output

    ran: list[str] = []

    def receiver(sender: Flask, event: CallbackEvent) -> None:
        ran.append(event.task_id)

    with all_tracks_generated.connected_to(receiver, sender=app):
        result = app.test_cli_runner().invoke(args=["musiccallback", "replay", "--pending"])
    get_state(app).dispatcher.close(timeout=5)
    assert result.exit_code == 0, result.output
    assert result.output.count(": done (attempt 2)") == 2
    assert sorted(ran) == ["queued", "running"]
    assert {kept.state for kept in by_task(app).values()} == {DeliveryState.DONE}
    # The killed process started one receiver and finished none.
    assert log.read_text().splitlines() == ["start running"]


def test_after_a_sigkill_the_process_started_in_its_place_sweeps_them(
    make_app: AppFactory, shared_store_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "receiver.log"
    answered_then_killed(shared_store_url, log)

    app = make_app(STORE=shared_store_url)
    with app_process(shared_store_url, log, hang=False, sweep_age=0.01) as (_, port):
        assert request(port, "GET", "/health")[0] == 404  # any first request starts the sweep
        deadline = time.monotonic() + 15
        while {kept.state for kept in by_task(app).values()} != {DeliveryState.DONE}:
            assert time.monotonic() < deadline, f"not recovered: {by_task(app)}"
            time.sleep(0.02)
    # The killed process started "running"; its successor ran both to their end, once each.
    assert sorted(log.read_text().splitlines()) == sorted(
        ["start running", "start running", "done running", "start queued", "done queued"]
    )


# Celery: the worker killed mid-task.


def test_a_celery_worker_killed_mid_task_is_recovered_by_the_next_workers_sweep(
    tmp_path: Path,
) -> None:
    from .celery_host import URL as HOST_URL
    from .celery_host import create_app, host_env, kept, records
    from .servers_redis import celery_worker, redis_server

    with redis_server() as broker:
        env = host_env(broker, MUSICCALLBACK_PENDING_SWEEP_AGE=0.01)
        web = create_app(f"{broker}/0", f"{broker}/1", MUSICCALLBACK_STORE=f"{broker}/2")
        task_id = f"stuck-{uuid.uuid4().hex}"
        try:
            first_log = tmp_path / "first.log"
            with celery_worker(
                "tests.celery_host:celery_app", env, concurrency=1, log=first_log
            ) as worker:
                answer = web.test_client().post(HOST_URL, json=build_callback(task_id=task_id))
                assert answer.get_json() == {"status": "received"}
                deadline = time.monotonic() + 20
                while not records(web).llen(f"attempts:{task_id}"):
                    assert time.monotonic() < deadline, first_log.read_text()
                    time.sleep(0.05)
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)

            stuck = kept(web, task_id, "processing")
            deadline = time.monotonic() + 5
            while not owner_is_dead(stuck.owner):  # SIGKILL is delivered asynchronously
                assert time.monotonic() < deadline, f"{stuck.owner} still runs"
                time.sleep(0.02)

            second_log = tmp_path / "second.log"
            with celery_worker("tests.celery_host:celery_app", env, log=second_log):
                done = kept(web, task_id, "done")
            assert done.attempts == 2
            assert records(web).llen(f"attempts:{task_id}") == 2
            assert records(web).llen(f"finished:{task_id}") == 1
            assert "Dispatched 1 pending deliveries again" in second_log.read_text()
        finally:
            web.extensions["celery"].close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are seen in /proc")
def test_a_killed_process_not_reaped_yet_counts_as_dead() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = f"{socket.gethostname()}:{process.pid}"
    try:
        assert not owner_is_dead(owner)
        os.kill(process.pid, signal.SIGKILL)
        stat = Path(f"/proc/{process.pid}/stat")
        deadline = time.monotonic() + 5
        while b") Z " not in stat.read_bytes():  # not reaped: nobody has waited for it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert owner_is_dead(owner)
    finally:
        process.kill()
        process.wait()
