"""The music video family (PROVIDER.md sections 4 and 6, API.md section 9): its bodies as both
resellers send them, through the real endpoint, and its task record."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from hypothesis import example, given
from marshmallow import ValidationError

from flask_musiccallback import VideoEvent
from flask_musiccallback.families import VIDEO
from flask_musiccallback.testing import SIMULATED_MEDIA_HOST, build_callback

from .conftest import AppFactory
from .family_kit import (
    OPEN_URL,
    RECORD_TIMES,
    assert_kept,
    assert_never_a_server_error,
    assert_received_once,
    assert_refused,
    loads_or_refuses,
    post,
    record_answer,
)
from .payloads import mutated

TASK = "88aa****1f02"
LINK = "https://files.example/v.mp4"


def _body(code: Any, data: Any, **top: Any) -> dict[str, Any]:
    return {
        "code": code,
        "msg": "MP4 generated successfully." if code == 200 else "x",
        **top,
        "data": data,
    }


SUCCESSES = {
    "sunoapi": build_callback("complete", family="video", task_id=TASK, reseller="sunoapi"),
    "kie": build_callback("complete", family="video", task_id=TASK, reseller="kie"),
    "documented": _body(200, {"task_id": TASK, "video_url": LINK}),
    "taskId": _body(200, {"taskId": TASK, "video_url": LINK}),
    "top-level task_id": _body(200, {"video_url": LINK}, task_id=TASK),
    "top-level taskId": _body(200, {"video_url": LINK}, taskId=TASK),
    "camelCase link": _body(200, {"task_id": TASK, "videoUrl": LINK}),
    "unknown keys kept": _body(200, {"task_id": TASK, "video_url": LINK, "x_new": [1]}, x_top=1),
}

FAILURES = {
    "sunoapi": build_callback("failed", family="video", task_id=TASK, reseller="sunoapi"),
    "kie": build_callback("failed", family="video", task_id=TASK, reseller="kie"),
    "documented 400": _body(400, {"task_id": TASK, "video_url": None}),
    "500, camelCase": _body(500, {"taskId": TASK, "videoUrl": None}),
    "451 as text": _body("451", {"task_id": TASK, "video_url": None}),
    "top-level task id": _body(500, {"video_url": None}, task_id=TASK),
    "a link, but code 500": _body(500, {"task_id": TASK, "video_url": LINK}),
}


@pytest.mark.parametrize("body", SUCCESSES.values(), ids=SUCCESSES.keys())
def test_a_success_sends_video_generated_once_with_its_link(
    app: Flask, body: dict[str, Any]
) -> None:
    event = assert_received_once(post(app, body), VIDEO, "complete")
    assert isinstance(event, VideoEvent)
    assert (event.task_id, event.code, event.ok) == (TASK, 200, True)
    assert event.video_url is not None
    assert event.video_url.startswith("https://")
    assert dict(event.raw) == body


@pytest.mark.parametrize("body", FAILURES.values(), ids=FAILURES.keys())
def test_a_failure_sends_video_failed_once(app: Flask, body: dict[str, Any]) -> None:
    event = assert_received_once(post(app, body), VIDEO, "failed")
    assert isinstance(event, VideoEvent)
    assert event.task_id == TASK
    assert event.code == int(body["code"])
    assert event.ok is False
    assert event.msg == body["msg"]


def test_a_placeholder_that_is_no_url_is_the_link_as_sent(app: Flask) -> None:
    body = _body(200, {"task_id": TASK, "video_url": "video_url_placeholder"})
    event = assert_received_once(post(app, body), VIDEO, "complete")
    assert isinstance(event, VideoEvent)
    assert event.video_url == "video_url_placeholder"


def test_a_success_with_a_blank_link_is_no_callback() -> None:
    with pytest.raises(ValidationError) as raised:
        VIDEO.load(_body(200, {"task_id": TASK, "video_url": ""}))
    assert "video_url" in raised.value.messages["data"]


def test_a_number_as_the_link_is_refused_when_no_source_check_is_configured(
    make_app: AppFactory,
) -> None:
    body = _body(200, {"task_id": TASK, "video_url": 42})
    assert_refused(post(make_app(TOKEN=None), body, url=OPEN_URL), "data", "video_url")


def test_a_number_as_the_link_is_kept_behind_a_token(app: Flask) -> None:
    assert_kept(post(app, _body(200, {"task_id": TASK, "video_url": 42})), VIDEO)


def test_a_failure_without_the_link_key_is_not_placed_by_its_shape() -> None:
    assert VIDEO.detect(_body(500, {"task_id": TASK})) is False
    assert VIDEO.detect(_body(500, None, task_id=TASK)) is False
    assert VIDEO.detect(_body(400, {"task_id": TASK, "video_url": None})) is True
    assert VIDEO.detect(_body(400, {"task_id": TASK, "videoUrl": None})) is True


def test_the_examples_link_to_the_simulated_media_host() -> None:
    for reseller in ("sunoapi", "kie"):
        body = build_callback("complete", family="video", reseller=reseller)
        assert urlsplit(body["data"]["video_url"]).hostname == SIMULATED_MEDIA_HOST


# --- polling: /api/v1/mp4/record-info ------------------------------------------------------------


def _record(flag: Any, response: Any = None, **fields: Any) -> dict[str, Any]:
    """A record answer shaped as sunoapi.org documents it."""
    return record_answer(
        TASK,
        flag,
        response=response,
        musicId="audioId_0295980ec02e",
        callbackUrl="https://api.example.com/callback",
        audioId="e231****-****-****-****-****8cadc7dc",
        **fields,
    )


@pytest.mark.parametrize("moment", RECORD_TIMES.values(), ids=RECORD_TIMES.keys())
def test_a_successful_record_reads_as_the_success_callback(moment: Any) -> None:
    answer = _record("SUCCESS", {"videoUrl": LINK}, time=moment)
    record = VIDEO.read_record(answer)
    assert (record.task_id, record.status, record.final) == (TASK, "SUCCESS", True)
    assert record.body is not None
    event = VIDEO.load(record.body)
    assert isinstance(event, VideoEvent)
    assert (event.stage, event.video_url, event.task_id) == ("complete", LINK, TASK)


def test_the_record_endpoint_is_the_mp4_one() -> None:
    assert VIDEO.record_path == "/api/v1/mp4/record-info"


def test_a_pending_record_has_no_body_yet() -> None:
    record = VIDEO.read_record(_record("PENDING"))
    assert (record.body, record.final) == (None, False)


@pytest.mark.parametrize(
    ("flag", "error_code"),
    [("GENERATE_MP4_FAILED", 500), ("CREATE_TASK_FAILED", 400), ("GENERATE_MP4_FAILED", None)],
)
def test_a_failed_record_reads_as_a_failure(flag: str, error_code: int | None) -> None:
    answer = _record(flag, error_code=error_code, error_message="MP4 generation failed")
    record = VIDEO.read_record(answer)
    assert record.final is True
    assert record.body is not None
    event = VIDEO.load(record.body)
    assert (event.stage, event.ok, event.video_url) == ("failed", False, None)
    assert event.code == (error_code or 500)
    assert event.msg == "MP4 generation failed"


def test_a_callback_exception_is_read_by_the_records_content() -> None:
    delivered = VIDEO.read_record(_record("CALLBACK_EXCEPTION", {"videoUrl": LINK}))
    lost = VIDEO.read_record(_record("CALLBACK_EXCEPTION", {}))
    assert delivered.body is not None
    assert lost.body is not None
    assert VIDEO.load(delivered.body).stage == "complete"
    assert VIDEO.load(lost.body).stage == "failed"


# --- properties ----------------------------------------------------------------------------------

BODIES = [*SUCCESSES.values(), *FAILURES.values()]


@given(mutated(BODIES))
def test_any_value_anywhere_loads_a_typed_event_or_is_a_validation_error(
    body: dict[str, Any],
) -> None:
    event = loads_or_refuses(VIDEO, body)
    if event is not None:
        assert isinstance(event, VideoEvent)
        assert event.video_url is None or (isinstance(event.video_url, str) and event.video_url)
        if event.stage == "complete":
            assert event.video_url is not None


@given(mutated(BODIES))
@example(_body(500, None, task_id=TASK))
def test_any_value_anywhere_is_answered_without_a_server_error(
    open_app: Flask, guarded_app: Flask, body: dict[str, Any]
) -> None:
    assert_never_a_server_error(open_app, guarded_app, body, VIDEO)
