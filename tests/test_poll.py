"""Polling the provider's record-info endpoint (``music.poll``): the same events, the same dedup
path as callbacks, and clear errors. The provider is a fake served over real HTTP on 127.0.0.1."""

from __future__ import annotations

from datetime import timezone
from typing import Any

import pytest
from flask import Flask, current_app

from flask_musiccallback import ConfigurationError, Stage, all_tracks_generated
from flask_musiccallback.dispatch import Outcome
from flask_musiccallback.poll import PollResult, watch_task
from flask_musiccallback.provider import PollError
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import CallbackClient

from .backends import StoreApp
from .fake_provider import Answer, FakeProvider, camel_tracks, record

API_KEY = "provider-api-key"

Recorded = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def musiccallback_app(store_app: StoreApp, provider: FakeProvider) -> Flask:
    """On every store: a polled event is kept and deduplicated as a callback is."""
    return store_app(API_KEY=API_KEY, API_BASE_URL=provider.url)


def poll(app: Flask, task_id: str) -> PollResult:
    return get_state(app).extension.poll(task_id)


def stage_signals(recorded: Recorded) -> list[str]:
    names = ("text_generated", "first_track_generated", "all_tracks_generated", "task_failed")
    return [name for name, _ in recorded if name in names]


def test_poll_asks_record_info_with_the_api_key(
    musiccallback_app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("t1", "PENDING")

    poll(musiccallback_app, "t1")

    assert provider.requests == [{"task_id": "t1", "authorization": f"Bearer {API_KEY}"}]


def test_success_fires_complete_with_the_tracks_read_from_camel_case(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded
) -> None:
    provider.statuses("t1", "SUCCESS")

    result = poll(musiccallback_app, "t1")

    assert (result.status, result.final, result.outcome) == ("SUCCESS", True, Outcome.RECEIVED)
    assert stage_signals(musiccallback_signals) == ["all_tracks_generated"]
    event = musiccallback_signals[-1][1]["event"]
    assert event is result.event
    assert (event.task_id, event.stage, event.code, event.ok) == ("t1", Stage.COMPLETE, 200, True)
    track = event.tracks[0]
    assert track.audio_url
    assert track.stream_audio_url
    assert track.image_url
    assert track.model_name
    assert track.created_at is not None
    assert track.created_at.tzinfo is timezone.utc
    assert isinstance(track.duration, float)


def test_success_without_earlier_stages_fires_complete_only(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded
) -> None:
    provider.statuses("t1", "SUCCESS")

    poll(musiccallback_app, "t1")
    poll(musiccallback_app, "t1")

    assert stage_signals(musiccallback_signals) == ["all_tracks_generated"]


def test_polls_follow_the_task_through_its_stages(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded
) -> None:
    provider.statuses("t1", "PENDING", "TEXT_SUCCESS", "FIRST_SUCCESS", "SUCCESS")

    statuses = [poll(musiccallback_app, "t1").status for _ in range(4)]

    assert statuses == ["PENDING", "TEXT_SUCCESS", "FIRST_SUCCESS", "SUCCESS"]
    assert stage_signals(musiccallback_signals) == [
        "text_generated",
        "first_track_generated",
        "all_tracks_generated",
    ]


def test_pending_dispatches_nothing(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded
) -> None:
    provider.statuses("t1", "PENDING")

    result = poll(musiccallback_app, "t1")

    assert (result.event, result.outcome, result.final) == (None, None, False)
    assert musiccallback_signals == []


def test_poll_after_the_callback_is_a_duplicate(
    musiccallback_app: Flask,
    musiccallback_client: CallbackClient,
    provider: FakeProvider,
    musiccallback_signals: Recorded,
) -> None:
    musiccallback_client.deliver("complete", task_id="t1")
    provider.statuses("t1", "SUCCESS")

    result = poll(musiccallback_app, "t1")

    assert result.outcome is Outcome.DUPLICATE
    assert stage_signals(musiccallback_signals) == ["all_tracks_generated"]
    assert musiccallback_signals[-1][0] == "callback_duplicate"


def test_callback_after_the_poll_is_a_duplicate(
    musiccallback_app: Flask,
    musiccallback_client: CallbackClient,
    provider: FakeProvider,
    musiccallback_signals: Recorded,
) -> None:
    provider.statuses("t1", "FIRST_SUCCESS")
    poll(musiccallback_app, "t1")

    response = musiccallback_client.deliver("first", task_id="t1")

    assert response.json == {"status": "duplicate"}
    assert stage_signals(musiccallback_signals) == ["first_track_generated"]


def test_earlier_stage_polled_after_complete_is_stale(
    musiccallback_app: Flask,
    musiccallback_client: CallbackClient,
    provider: FakeProvider,
    musiccallback_signals: Recorded,
) -> None:
    musiccallback_client.deliver("complete", task_id="t1")
    provider.statuses("t1", "TEXT_SUCCESS")

    result = poll(musiccallback_app, "t1")

    assert result.outcome is Outcome.DUPLICATE
    assert musiccallback_signals[-1][1]["reason"] == "stale"


@pytest.mark.parametrize(
    ("status", "code"),
    [("CREATE_TASK_FAILED", 400), ("GENERATE_AUDIO_FAILED", 501), ("SENSITIVE_WORD_ERROR", 400)],
)
def test_failed_status_fires_task_failed(
    musiccallback_app: Flask,
    provider: FakeProvider,
    musiccallback_signals: Recorded,
    status: str,
    code: int,
) -> None:
    provider.script("t1", record("t1", status, error_message="It went wrong"))

    result = poll(musiccallback_app, "t1")

    assert result.final
    assert stage_signals(musiccallback_signals) == ["task_failed"]
    event = result.event
    assert event is not None
    assert (event.stage, event.code, event.msg, event.error) == (
        Stage.FAILED,
        code,
        "It went wrong",
        "It went wrong",
    )
    assert not event.ok


def test_failed_status_keeps_the_provider_error_code(
    musiccallback_app: Flask, provider: FakeProvider
) -> None:
    provider.script("t1", record("t1", "GENERATE_AUDIO_FAILED", error_code="531"))

    event = poll(musiccallback_app, "t1").event

    assert event is not None
    assert (event.code, event.msg, event.error) == (531, "GENERATE_AUDIO_FAILED", None)


@pytest.mark.parametrize(
    ("tracks_stage", "expected"),
    [("complete", Stage.COMPLETE), ("first", Stage.FIRST), ("text", Stage.TEXT)],
)
def test_callback_exception_is_read_by_its_content(
    musiccallback_app: Flask, provider: FakeProvider, tracks_stage: str, expected: Stage
) -> None:
    tracks = camel_tracks("first" if tracks_stage == "text" else tracks_stage, "t1")
    if tracks_stage == "text":
        tracks = [{**track, "audioUrl": ""} for track in tracks]
    provider.script("t1", record("t1", "CALLBACK_EXCEPTION", tracks=tracks))

    result = poll(musiccallback_app, "t1")

    assert result.event is not None
    assert result.event.stage is expected
    assert result.final is (expected is Stage.COMPLETE)


def test_callback_exception_without_tracks_is_a_failure(
    musiccallback_app: Flask, provider: FakeProvider
) -> None:
    provider.script("t1", record("t1", "CALLBACK_EXCEPTION", error_message="callback failed"))

    result = poll(musiccallback_app, "t1")

    assert result.final
    assert result.event is not None
    assert (result.event.stage, result.event.code) == (Stage.FAILED, 500)


def test_polled_event_body_is_a_callback_with_the_record_kept(
    musiccallback_app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("t1", "SUCCESS")

    event = poll(musiccallback_app, "t1").event

    assert event is not None
    assert event.callback_type == "complete"
    assert event.raw["data"]["status"] == "SUCCESS"
    assert event.raw["data"]["operationType"] == "generate"
    assert "response" not in event.raw["data"]


def test_poll_without_api_key_says_which_key_to_set(make_app: Any) -> None:
    app = make_app()

    with pytest.raises(ConfigurationError, match="MUSICCALLBACK_API_KEY"):
        get_state(app).extension.poll("t1")


@pytest.mark.parametrize(
    ("answer", "code", "retryable", "words"),
    [
        (Answer(401, {"code": 401, "msg": "Unauthorized"}), 401, False, "MUSICCALLBACK_API_KEY"),
        (Answer(200, {"code": 401, "msg": "Unauthorized"}), 401, False, "API key"),
        (Answer(429, {"code": 429, "msg": "Insufficient credits"}), 429, True, "credits"),
        (Answer(200, {"code": 430, "msg": "Too frequent"}), 430, True, "too frequent"),
        (Answer(200, {"code": 455, "msg": "Maintenance"}), 455, True, "maintenance"),
        (Answer(502, "<html>Bad gateway</html>"), 502, True, "server error"),
        (Answer(200, {"code": 500, "msg": "Server error"}), 500, True, "server error"),
        (Answer(200, {"code": 400, "msg": "task not found"}), 400, False, "task not found"),
    ],
)
def test_provider_errors_are_explained(
    musiccallback_app: Flask,
    provider: FakeProvider,
    musiccallback_signals: Recorded,
    answer: Answer,
    code: int,
    retryable: bool,
    words: str,
) -> None:
    provider.script("t1", answer)

    with pytest.raises(PollError, match=words) as caught:
        poll(musiccallback_app, "t1")

    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    assert musiccallback_signals == []


def test_retry_after_is_read(musiccallback_app: Flask, provider: FakeProvider) -> None:
    provider.script("t1", Answer(429, {"code": 429}, {"Retry-After": "7"}))

    with pytest.raises(PollError) as caught:
        poll(musiccallback_app, "t1")

    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        {"code": 200, "msg": "success", "data": None},
        {"code": 200, "data": {"taskId": "t1"}},
        record("t1", "SUCCESS", tracks=[{"id": "a", "duration": "long"}]),
        record("t2", "SUCCESS"),
    ],
    ids=["not-json", "no-data", "no-status", "bad-track", "other-task"],
)
def test_unusable_answers_are_errors_not_events(
    musiccallback_app: Flask,
    provider: FakeProvider,
    musiccallback_signals: Recorded,
    body: Any,
) -> None:
    provider.script("t1", Answer(200, body))

    with pytest.raises(PollError) as caught:
        poll(musiccallback_app, "t1")

    assert not caught.value.retryable
    assert musiccallback_signals == []


def test_unreachable_provider_is_a_retryable_error(make_app: Any) -> None:
    with FakeProvider().running() as gone:
        url = gone.url
    app = make_app(API_KEY=API_KEY, API_BASE_URL=url)

    with pytest.raises(PollError, match="cannot reach") as caught:
        get_state(app).extension.poll("t1")

    assert caught.value.retryable


def test_receiver_error_under_retry_is_dispatched_again_by_the_next_poll(
    musiccallback_app: Flask, provider: FakeProvider
) -> None:
    calls: list[str] = []

    def flaky(sender: Flask, event: Any, **extra: Any) -> None:
        calls.append(event.task_id)
        if len(calls) == 1:
            raise RuntimeError("disk full")

    provider.statuses("t1", "SUCCESS")
    with all_tracks_generated.connected_to(flaky, sender=musiccallback_app):
        first = poll(musiccallback_app, "t1")
        second = poll(musiccallback_app, "t1")

    assert (first.outcome, second.outcome) == (Outcome.RETRY, Outcome.RECEIVED)
    assert calls == ["t1", "t1"]


def test_poll_works_outside_an_app_context(
    musiccallback_app: Flask, provider: FakeProvider
) -> None:
    seen: list[str] = []

    def receiver(sender: Flask, event: Any, **extra: Any) -> None:
        seen.append(current_app.name)

    provider.statuses("t1", "SUCCESS")
    with all_tracks_generated.connected_to(receiver, sender=musiccallback_app):
        poll(musiccallback_app, "t1")

    assert seen == [musiccallback_app.name]


def test_watch_backs_off_doubling_the_interval_after_each_error_in_a_row(
    musiccallback_app: Flask, provider: FakeProvider
) -> None:
    busy = Answer(455, {"code": 455, "msg": "maintenance"})
    provider.script("t1", busy, busy, busy, record("t1", "SUCCESS"))
    delays: list[float] = []

    result = watch_task(
        musiccallback_app, "t1", interval=0.01, on_retry=lambda exc, delay: delays.append(delay)
    )

    assert result.status == "SUCCESS"
    assert delays == [0.01, 0.02, 0.04]
