"""Signals per stage, exactly once per (task, stage), and what receiver errors mean."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_musiccallback import (
    CallbackEvent,
    MusicCallback,
    Stage,
    all_tracks_generated,
    callback_duplicate,
    callback_received,
    first_track_generated,
    receiver_failed,
    task_failed,
    text_generated,
)
from flask_musiccallback.testing import build_callback, record_signals

from .conftest import URL, AppFactory
from .servers import serve


@pytest.mark.parametrize(
    ("stage", "signal_name"),
    [
        ("text", "text_generated"),
        ("first", "first_track_generated"),
        ("complete", "all_tracks_generated"),
        ("failed", "task_failed"),
    ],
)
def test_each_stage_sends_callback_received_then_its_signal(
    app: Flask, client: FlaskClient, stage: str, signal_name: str
) -> None:
    with record_signals(app) as recorded:
        client.post(URL, json=build_callback(stage, task_id="t"))
    assert [name for name, _ in recorded] == ["callback_received", signal_name]
    event = recorded[1][1]["event"]
    assert isinstance(event, CallbackEvent)
    assert event.task_id == "t"
    assert recorded[0][1]["event"] is event


def test_signals_are_sent_with_the_app_as_sender(app: Flask, client: FlaskClient) -> None:
    senders: list[Any] = []
    with all_tracks_generated.connected_to(lambda sender, **kw: senders.append(sender)):
        client.post(URL, json=build_callback("complete"))
    assert senders == [app]


def test_failure_with_code_not_200_fires_task_failed(app: Flask, client: FlaskClient) -> None:
    payload = build_callback("complete", code=531, msg="credits refunded")
    with record_signals(app) as recorded:
        client.post(URL, json=payload)
    assert [name for name, _ in recorded] == ["callback_received", "task_failed"]
    event = recorded[1][1]["event"]
    assert (event.code, event.msg, event.stage) == (531, "credits refunded", Stage.FAILED)


def test_duplicate_delivery_is_signalled_and_not_dispatched(
    app: Flask, client: FlaskClient
) -> None:
    payload = build_callback("first", task_id="t")
    client.post(URL, json=payload)
    with record_signals(app) as recorded:
        answer = client.post(URL, json=payload)
    assert answer.get_json() == {"status": "duplicate"}
    assert [(name, kw["reason"]) for name, kw in recorded] == [("callback_duplicate", "duplicate")]


def test_each_stage_of_a_task_is_dispatched_once(app: Flask, client: FlaskClient) -> None:
    with record_signals(app) as recorded:
        for stage in ("text", "first", "complete", "text", "first", "complete"):
            client.post(URL, json=build_callback(stage, task_id="t"))
    names = [name for name, _ in recorded if name != "callback_received"]
    assert names.count("text_generated") == 1
    assert names.count("first_track_generated") == 1
    assert names.count("all_tracks_generated") == 1


def test_text_or_first_after_complete_is_stale(app: Flask, client: FlaskClient) -> None:
    client.post(URL, json=build_callback("complete", task_id="t"))
    with record_signals(app) as recorded:
        for stage in ("text", "first"):
            answer = client.post(URL, json=build_callback(stage, task_id="t"))
            assert answer.get_json() == {"status": "duplicate"}
    assert [kw["reason"] for _, kw in recorded] == ["stale", "stale"]


def test_complete_without_text_or_first_is_dispatched(app: Flask, client: FlaskClient) -> None:
    with record_signals(app) as recorded:
        client.post(URL, json=build_callback("complete", task_id="skips"))
    assert [name for name, _ in recorded] == ["callback_received", "all_tracks_generated"]


def test_same_task_id_different_stages_are_independent(client: FlaskClient) -> None:
    answers = [
        client.post(URL, json=build_callback(stage, task_id="t")).get_json()["status"]
        for stage in ("text", "first", "complete", "failed")
    ]
    assert answers == ["received"] * 4


def test_every_receiver_runs_when_an_earlier_one_raises(app: Flask, client: FlaskClient) -> None:
    ran: list[str] = []

    def first(sender: Flask, event: CallbackEvent) -> None:
        ran.append("first")
        raise ValueError("first receiver broke")

    def second(sender: Flask, event: CallbackEvent) -> None:
        ran.append("second")
        raise KeyError("second receiver broke")

    def third(sender: Flask, event: CallbackEvent) -> None:
        ran.append("third")

    failures: list[dict[str, Any]] = []
    with (
        all_tracks_generated.connected_to(first, sender=app),
        all_tracks_generated.connected_to(second, sender=app),
        all_tracks_generated.connected_to(third, sender=app),
        receiver_failed.connected_to(lambda sender, **kw: failures.append(kw), sender=app),
    ):
        client.post(URL, json=build_callback("complete", task_id="t"))
    assert sorted(ran) == ["first", "second", "third"]
    assert sorted(f["receiver"].rsplit(".", 1)[-1] for f in failures) == ["first", "second"]
    assert all(f["event"].task_id == "t" for f in failures)
    assert {type(f["exception"]) for f in failures} == {ValueError, KeyError}
    assert failures[0]["receiver"].startswith("tests.test_dispatch.")


def test_retry_policy_answers_503_and_a_redelivery_runs_again(
    app: Flask, client: FlaskClient
) -> None:
    calls: list[str] = []

    def flaky(sender: Flask, event: CallbackEvent) -> None:
        calls.append(event.task_id)
        if len(calls) == 1:
            raise RuntimeError("database hiccup")

    payload = build_callback("complete", task_id="t")
    with all_tracks_generated.connected_to(flaky, sender=app):
        first = client.post(URL, json=payload)
        second = client.post(URL, json=payload)
        third = client.post(URL, json=payload)
    assert (first.status_code, first.get_json()) == (503, {"status": "retry"})
    assert second.get_json() == {"status": "received"}
    assert third.get_json() == {"status": "duplicate"}
    assert calls == ["t", "t"]


def test_ack_policy_answers_200_and_does_not_run_again(make_app: AppFactory) -> None:
    app = make_app(RECEIVER_ERRORS="ack")
    client = app.test_client()
    calls: list[str] = []
    failures: list[Any] = []

    def broken(sender: Flask, event: CallbackEvent) -> None:
        calls.append(event.task_id)
        raise RuntimeError("bug")

    payload = build_callback("complete", task_id="t")
    with (
        all_tracks_generated.connected_to(broken, sender=app),
        receiver_failed.connected_to(lambda sender, **kw: failures.append(kw), sender=app),
    ):
        first = client.post(URL, json=payload)
        second = client.post(URL, json=payload)
    assert first.get_json() == {"status": "received"}
    assert second.get_json() == {"status": "duplicate"}
    assert calls == ["t"]
    assert len(failures) == 1


def test_failing_callback_received_receiver_counts_as_a_receiver_error(
    app: Flask, client: FlaskClient
) -> None:
    def broken(sender: Flask, event: CallbackEvent) -> None:
        raise RuntimeError("audit log down")

    stage_calls: list[Any] = []
    with (
        callback_received.connected_to(broken, sender=app),
        first_track_generated.connected_to(lambda s, event: stage_calls.append(event), sender=app),
    ):
        answer = client.post(URL, json=build_callback("first"))
    assert answer.status_code == 503
    assert len(stage_calls) == 1


def test_broken_receiver_failed_receiver_does_not_break_the_answer(
    app: Flask, client: FlaskClient
) -> None:
    def broken(sender: Flask, **kwargs: Any) -> None:
        raise RuntimeError("bug")

    with (
        task_failed.connected_to(broken, sender=app),
        receiver_failed.connected_to(broken, sender=app),
    ):
        answer = client.post(URL, json=build_callback("failed"))
    assert answer.status_code == 503


def test_receiver_error_is_logged_with_its_name(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    def exploding_receiver(sender: Flask, event: CallbackEvent) -> None:
        raise RuntimeError("kaboom")

    with text_generated.connected_to(exploding_receiver, sender=app):
        client.post(URL, json=build_callback("text", task_id="logged"))
    assert "exploding_receiver" in caplog.text
    assert "logged" in caplog.text
    assert "kaboom" in caplog.text


def test_async_receivers_are_run(app: Flask, client: FlaskClient) -> None:
    seen: list[str] = []

    async def receiver(sender: Flask, event: CallbackEvent) -> None:
        seen.append(event.task_id)

    with all_tracks_generated.connected_to(receiver, sender=app):
        client.post(URL, json=build_callback("complete", task_id="async"))
    assert seen == ["async"]


def test_receivers_of_another_app_are_not_called(make_app: AppFactory) -> None:
    one, other = make_app(), make_app()
    calls: list[Any] = []
    with all_tracks_generated.connected_to(lambda s, event: calls.append(s), sender=other):
        one.test_client().post(URL, json=build_callback("complete"))
    assert calls == []


# Concurrency, over a real socket


def post_json(port: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{URL}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_twenty_identical_deliveries_at_once_dispatch_exactly_once(app: Flask) -> None:
    calls: list[str] = []
    duplicates: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20, timeout=10)
    others_answered = threading.Event()

    def slow_receiver(sender: Flask, event: CallbackEvent) -> None:
        with lock:
            calls.append(event.task_id)
        others_answered.wait(10)  # hold the claim until the 19 others have been refused

    def refused(sender: Flask, event: CallbackEvent, reason: str) -> None:
        with lock:
            duplicates.append(reason)
            if len(duplicates) == 19:
                others_answered.set()

    payload = build_callback("complete", task_id="concurrent")

    def deliver(_: int) -> tuple[int, dict[str, Any]]:
        barrier.wait()
        return post_json(port, payload)

    with (
        serve(app) as port,
        all_tracks_generated.connected_to(slow_receiver, sender=app),
        callback_duplicate.connected_to(refused, sender=app),
        ThreadPoolExecutor(max_workers=20) as pool,
    ):
        answers = list(pool.map(deliver, range(20)))
    assert calls == ["concurrent"]
    assert all(status == 200 for status, _ in answers)
    bodies = [body["status"] for _, body in answers]
    assert bodies.count("received") == 1
    assert bodies.count("duplicate") == 19
    assert duplicates == ["in_progress"] * 19


def test_concurrent_retry_after_a_failure_runs_once_more(app: Flask) -> None:
    attempts: list[int] = []
    lock = threading.Lock()

    def fails_first(sender: Flask, event: CallbackEvent) -> None:
        with lock:
            attempts.append(1)
            failing = len(attempts) == 1
        if failing:
            raise RuntimeError("first attempt fails")

    payload = build_callback("first", task_id="retry-me")
    with serve(app) as port, first_track_generated.connected_to(fails_first, sender=app):
        assert post_json(port, payload)[0] == 503
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(lambda _: post_json(port, payload), range(10)))
    assert len(attempts) == 2
    assert [body["status"] for _, body in answers].count("received") == 1


def test_on_decorator_receives_the_event_only(make_app: AppFactory) -> None:
    music = MusicCallback()
    seen: list[CallbackEvent] = []

    @music.on(Stage.FAILED)
    def report(event: CallbackEvent) -> None:
        seen.append(event)

    app = Flask(__name__)
    app.testing = True
    music.init_app(app)
    app.test_client().post("/music-callback", json=build_callback("failed", task_id="f"))
    assert [event.task_id for event in seen] == ["f"]
