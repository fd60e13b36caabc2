"""``MUSICCALLBACK_DISPATCH = "thread"``: answered at once, receivers run in a bounded pool."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, current_app, has_app_context, has_request_context

from flask_musiccallback import (
    CallbackEvent,
    ConfigurationError,
    MusicCallback,
    all_tracks_generated,
    callback_duplicate,
    receiver_failed,
)
from flask_musiccallback.config import MAX_RETRY_DELAY, Settings
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import build_callback

from .conftest import URL, AppFactory, thread_apps
from .servers import serve
from .test_dispatch import post_json

ThreadAppFactory = Callable[..., Flask]


@pytest.fixture
def thread_app(make_app: AppFactory) -> Iterator[ThreadAppFactory]:
    """Apps with thread dispatch and a short back-off; their pools are shut down afterwards."""
    with thread_apps(make_app) as factory:
        yield factory


def wait_idle(app: Flask) -> None:
    assert get_state(app).dispatcher.wait_idle(timeout=10), "the pool did not settle in time"


def post(app: Flask, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer = app.test_client().post(URL, json=payload)
    return answer.status_code, answer.get_json()


def test_answers_received_before_the_receivers_finish(thread_app: ThreadAppFactory) -> None:
    app = thread_app()
    started, go_on, finished = threading.Event(), threading.Event(), threading.Event()

    def slow(sender: Flask, event: CallbackEvent) -> None:
        started.set()
        go_on.wait(10)
        finished.set()

    with all_tracks_generated.connected_to(slow, sender=app):
        assert post(app, build_callback("complete")) == (200, {"status": "received"})
        assert started.wait(5)
        assert not finished.is_set()
        go_on.set()
        wait_idle(app)
    assert finished.is_set()


def test_receivers_run_in_an_app_context_of_their_app_without_a_request(
    thread_app: ThreadAppFactory,
) -> None:
    app = thread_app()
    seen: dict[str, Any] = {}

    def look(sender: Flask, event: CallbackEvent) -> None:
        seen.update(
            app_context=has_app_context(),
            app=current_app._get_current_object(),  # type: ignore[attr-defined]
            request_context=has_request_context(),
            thread=threading.current_thread().name,
            task_id=event.task_id,
        )

    with all_tracks_generated.connected_to(look, sender=app):
        post(app, build_callback("complete", task_id="ctx"))
        wait_idle(app)
    assert seen["app_context"] is True
    assert seen["app"] is app
    assert seen["request_context"] is False
    assert seen["thread"].startswith("musiccallback-")
    assert seen["task_id"] == "ctx"


def test_redelivery_while_running_is_in_progress_and_after_it_a_duplicate(
    thread_app: ThreadAppFactory,
) -> None:
    app = thread_app()
    started, go_on = threading.Event(), threading.Event()
    reasons: list[str] = []
    calls: list[str] = []

    def slow(sender: Flask, event: CallbackEvent) -> None:
        calls.append(event.task_id)
        started.set()
        go_on.wait(10)

    payload = build_callback("complete", task_id="again")
    with (
        all_tracks_generated.connected_to(slow, sender=app),
        callback_duplicate.connected_to(lambda s, event, reason: reasons.append(reason), app),
    ):
        post(app, payload)
        assert started.wait(5)
        assert post(app, payload) == (200, {"status": "duplicate"})
        go_on.set()
        wait_idle(app)
        assert post(app, payload) == (200, {"status": "duplicate"})
    assert reasons == ["in_progress", "duplicate"]
    assert calls == ["again"]


def test_a_full_queue_answers_503_and_gives_the_delivery_back(
    thread_app: ThreadAppFactory,
) -> None:
    app = thread_app(THREAD_POOL_SIZE=1, THREAD_QUEUE_SIZE=1)
    started, go_on = threading.Event(), threading.Event()
    calls: list[str] = []

    def blocking(sender: Flask, event: CallbackEvent) -> None:
        calls.append(event.task_id)
        started.set()
        go_on.wait(10)

    overflow = build_callback("complete", task_id="overflow")
    with all_tracks_generated.connected_to(blocking, sender=app):
        assert post(app, build_callback("complete", task_id="running"))[0] == 200
        assert started.wait(5)  # the only thread is busy
        assert post(app, build_callback("complete", task_id="waiting"))[0] == 200
        assert post(app, overflow) == (503, {"status": "retry"})
        # Released, not held: the provider's retry is refused again, not taken as a duplicate.
        assert post(app, overflow) == (503, {"status": "retry"})
        go_on.set()
        wait_idle(app)
        assert post(app, overflow) == (200, {"status": "received"})
        wait_idle(app)
    assert calls == ["running", "waiting", "overflow"]


def test_a_full_queue_is_logged_once_while_it_stays_full_and_again_after_it_drained(
    thread_app: ThreadAppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = thread_app(THREAD_POOL_SIZE=1, THREAD_QUEUE_SIZE=1)
    started, go_on = threading.Event(), threading.Event()

    def blocking(sender: Flask, event: CallbackEvent) -> None:
        started.set()
        go_on.wait(10)

    def fill(spell: int) -> None:
        started.clear()
        assert post(app, build_callback("complete", task_id=f"running-{spell}"))[0] == 200
        assert started.wait(5)
        assert post(app, build_callback("complete", task_id=f"waiting-{spell}"))[0] == 200
        for _ in range(3):
            assert post(app, build_callback("complete", task_id=f"over-{spell}"))[0] == 503

    with (
        all_tracks_generated.connected_to(blocking, sender=app),
        caplog.at_level(logging.WARNING, "flask_musiccallback"),
    ):
        fill(1)
        go_on.set()
        wait_idle(app)
        assert post(app, build_callback("complete", task_id="room"))[0] == 200
        wait_idle(app)
        go_on.clear()
        fill(2)
        go_on.set()
        wait_idle(app)
    full = [record for record in caplog.records if "queue is full" in record.getMessage()]
    assert len(full) == 2


def test_a_failing_receiver_is_retried_with_exponential_back_off(
    thread_app: ThreadAppFactory,
) -> None:
    app = thread_app(RETRY_ATTEMPTS=4, RETRY_BACKOFF=0.1)
    runs: list[float] = []
    failures: list[str] = []

    def flaky(sender: Flask, event: CallbackEvent) -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError("downstream is down")

    payload = build_callback("complete", task_id="flaky")
    with (
        all_tracks_generated.connected_to(flaky, sender=app),
        receiver_failed.connected_to(
            lambda s, event, receiver, exception: failures.append(str(exception)), app
        ),
    ):
        assert post(app, payload) == (200, {"status": "received"})
        wait_idle(app)
        assert post(app, payload) == (200, {"status": "duplicate"})
    assert len(runs) == 3
    gaps = [later - earlier for earlier, later in pairwise(runs)]
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2
    assert failures == ["downstream is down", "downstream is down"]


def test_a_delivery_waiting_for_a_retry_is_in_progress(thread_app: ThreadAppFactory) -> None:
    # A back-off far longer than the next line takes, even on a machine that is slow today.
    app = thread_app(RETRY_BACKOFF=2)
    runs: list[int] = []
    reasons: list[str] = []
    failed = threading.Event()

    def fails_once(sender: Flask, event: CallbackEvent) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first attempt fails")

    payload = build_callback("complete", task_id="backing-off")
    with (
        all_tracks_generated.connected_to(fails_once, sender=app),
        receiver_failed.connected_to(lambda s, **kw: failed.set(), app),
        callback_duplicate.connected_to(lambda s, event, reason: reasons.append(reason), app),
    ):
        post(app, payload)
        assert failed.wait(5)
        assert post(app, payload) == (200, {"status": "duplicate"})
        wait_idle(app)
    assert reasons == ["in_progress"]
    assert len(runs) == 2


def test_after_the_last_attempt_the_delivery_is_kept_as_failed(
    thread_app: ThreadAppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = thread_app(RETRY_ATTEMPTS=3)
    runs: list[int] = []

    def broken(sender: Flask, event: CallbackEvent) -> None:
        runs.append(1)
        raise RuntimeError("always broken")

    payload = build_callback("complete", task_id="broken")
    with all_tracks_generated.connected_to(broken, sender=app):
        post(app, payload)
        wait_idle(app)
        # Settled as failed: a redelivery does not run it again (replay does, from a store).
        assert post(app, payload) == (200, {"status": "duplicate"})
        wait_idle(app)
    assert len(runs) == 3
    assert "Giving up on task broken stage complete after 3 attempts" in caplog.text


def test_a_retry_waiting_for_its_back_off_holds_no_thread(thread_app: ThreadAppFactory) -> None:
    app = thread_app(THREAD_POOL_SIZE=1, RETRY_BACKOFF=0.4)
    order: list[str] = []
    first_failed = threading.Event()

    def receiver(sender: Flask, event: CallbackEvent) -> None:
        order.append(event.task_id)
        if event.task_id == "a" and order.count("a") == 1:
            first_failed.set()
            raise RuntimeError("a fails once")

    with all_tracks_generated.connected_to(receiver, sender=app):
        post(app, build_callback("complete", task_id="a"))
        assert first_failed.wait(5)
        post(app, build_callback("complete", task_id="b"))
        wait_idle(app)
    assert order == ["a", "b", "a"]


def test_wait_idle_times_out_while_a_receiver_runs(thread_app: ThreadAppFactory) -> None:
    app = thread_app()
    go_on = threading.Event()
    with all_tracks_generated.connected_to(lambda s, event: go_on.wait(10), sender=app):
        post(app, build_callback("complete"))
        assert get_state(app).dispatcher.wait_idle(timeout=0.1) is False
        go_on.set()
        wait_idle(app)


def test_a_closed_dispatcher_answers_503(thread_app: ThreadAppFactory) -> None:
    app = thread_app()
    assert get_state(app).dispatcher.close(timeout=5) is True
    assert post(app, build_callback("complete")) == (503, {"status": "retry"})


def test_the_pool_never_grows_past_its_size(thread_app: ThreadAppFactory) -> None:
    app = thread_app(THREAD_POOL_SIZE=2, THREAD_QUEUE_SIZE=50)
    threads: set[str] = set()

    def note(sender: Flask, event: CallbackEvent) -> None:
        threads.add(threading.current_thread().name)
        time.sleep(0.02)

    with (
        serve(app) as port,
        all_tracks_generated.connected_to(note, sender=app),
        ThreadPoolExecutor(max_workers=10) as clients,
    ):
        answers = list(
            clients.map(lambda _: post_json(port, build_callback("complete")), range(30))
        )
        wait_idle(app)
    assert {status for status, _ in answers} == {200}
    assert len(threads) == 2


def test_over_a_socket_the_answer_does_not_wait_for_slow_receivers(
    thread_app: ThreadAppFactory,
) -> None:
    app = thread_app(THREAD_POOL_SIZE=2)
    go_on = threading.Event()
    with (
        serve(app) as port,
        all_tracks_generated.connected_to(lambda s, event: go_on.wait(10), sender=app),
        ThreadPoolExecutor(max_workers=8) as clients,
    ):

        def timed(_: int) -> tuple[float, int]:
            start = time.perf_counter()
            status, _body = post_json(port, build_callback("complete"))
            return time.perf_counter() - start, status

        answers = list(clients.map(timed, range(8)))
        go_on.set()
        wait_idle(app)
    assert {status for _, status in answers} == {200}
    # The receivers are still blocked when every answer has come back.
    assert max(seconds for seconds, _ in answers) < 2


def test_accepted_deliveries_finish_when_the_interpreter_exits(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    script = textwrap.dedent(
        f"""
        import time
        from flask import Flask
        from flask_musiccallback import MusicCallback, all_tracks_generated
        from flask_musiccallback.testing import build_callback

        app = Flask("exiting")
        app.testing = True
        app.config.update(MUSICCALLBACK_DISPATCH="thread", MUSICCALLBACK_TOKEN="t")
        MusicCallback(app)

        @all_tracks_generated.connect_via(app)
        def slow(sender, event, **extra):
            time.sleep(0.5)
            with open({str(out)!r}, "a") as f:
                f.write(event.task_id + "\\n")

        client = app.test_client()
        for task_id in ("one", "two", "three"):
            answer = client.post("/music-callback?token=t", json=build_callback(task_id=task_id))
            print(answer.get_json()["status"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["received"] * 3
    assert sorted(out.read_text().split()) == ["one", "three", "two"]


# Configuration


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MUSICCALLBACK_THREAD_POOL_SIZE", 0),
        ("MUSICCALLBACK_THREAD_QUEUE_SIZE", "many"),
        ("MUSICCALLBACK_RETRY_ATTEMPTS", 0),
        ("MUSICCALLBACK_RETRY_BACKOFF", -1),
        ("MUSICCALLBACK_RETRY_BACKOFF", "2s"),
        ("MUSICCALLBACK_CELERY_APP", 42),
    ],
)
def test_bad_dispatch_configuration_fails_at_start_up_naming_the_key(
    key: str, value: Any
) -> None:
    app = Flask(__name__)
    app.testing = True
    app.config[key] = value
    with pytest.raises(ConfigurationError, match=key):
        MusicCallback(app)


def test_retry_delays_double_from_the_back_off_and_are_capped() -> None:
    settings = Settings.from_config({"MUSICCALLBACK_RETRY_BACKOFF": 2})
    assert [settings.retry_delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert settings.retry_delay(30) == MAX_RETRY_DELAY


def test_thread_dispatch_starts_no_thread_before_the_first_delivery(
    thread_app: ThreadAppFactory,
) -> None:
    before = {t.ident for t in threading.enumerate()}
    thread_app()
    assert {t.ident for t in threading.enumerate()} == before
