"""The cover image family (PROVIDER.md sections 4 and 6, API.md section 9): its bodies as both
resellers send them, through the real endpoint, and its task record."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from hypothesis import example, given
from marshmallow import ValidationError

from flask_musiccallback import CoverEvent
from flask_musiccallback.families import COVER
from flask_musiccallback.testing import SIMULATED_MEDIA_HOST, build_callback

from .conftest import URL, AppFactory, build_app
from .family_kit import (
    MUSIC_SIGNALS,
    OPEN_URL,
    assert_common,
    assert_received_once,
    names,
    post,
    sent,
    substituted,
)

TASK = "21aee3c3c2a01fa5e030b3799fa4dd56"
FIRST = "https://tempfile.aiquickdraw.com/s/1753958521_6c1b3015141849d1a9bf17b738ce9347.png"
SECOND = "https://tempfile.aiquickdraw.com/s/1753958524_c153143acc6340908431cf0e90cbce9e.png"


def _body(code: Any, data: Any, **top: Any) -> dict[str, Any]:
    msg = "success" if code == 200 else "Cover generation failed"
    return {"code": code, "msg": msg, **top, "data": data}


SUCCESSES = {
    "sunoapi": build_callback("complete", family="cover", task_id=TASK, reseller="sunoapi"),
    "kie": build_callback("complete", family="cover", task_id=TASK, reseller="kie"),
    "documented": _body(200, {"images": [FIRST, SECOND], "taskId": TASK}),
    "task_id": _body(200, {"task_id": TASK, "images": [FIRST, SECOND]}),
    "top-level taskId": _body(200, {"images": [FIRST, SECOND]}, taskId=TASK),
    "top-level task_id": _body(200, {"images": [FIRST, SECOND]}, task_id=TASK),
    "unknown keys kept": _body(200, {"taskId": TASK, "images": [FIRST, SECOND], "x_new": {}}),
}

FAILURES = {
    "sunoapi": build_callback("failed", family="cover", task_id=TASK, reseller="sunoapi"),
    "kie": build_callback("failed", family="cover", task_id=TASK, reseller="kie"),
    "documented 501": _body(501, {"taskId": TASK, "images": None}),
    "400, empty list": _body(400, {"taskId": TASK, "images": []}),
    "531 as text": _body("531", {"task_id": TASK, "images": None}),
    "top-level task id": _body(500, {"images": None}, task_id=TASK),
}


@pytest.mark.parametrize("body", SUCCESSES.values(), ids=SUCCESSES.keys())
def test_a_success_sends_cover_generated_once_with_its_images(
    app: Flask, body: dict[str, Any]
) -> None:
    event = assert_received_once(post(app, body), COVER, "complete")
    assert isinstance(event, CoverEvent)
    assert (event.task_id, event.code, event.ok) == (TASK, 200, True)
    assert isinstance(event.images, tuple)
    assert len(event.images) == 2
    assert all(image.startswith("https://") for image in event.images)
    assert dict(event.raw) == body


def test_the_documented_success_keeps_the_images_in_order(app: Flask) -> None:
    event = assert_received_once(post(app, SUCCESSES["documented"]), COVER, "complete")
    assert isinstance(event, CoverEvent)
    assert event.images == (FIRST, SECOND)


@pytest.mark.parametrize("body", FAILURES.values(), ids=FAILURES.keys())
def test_a_failure_sends_cover_failed_once_with_no_images(app: Flask, body: dict[str, Any]) -> None:
    event = assert_received_once(post(app, body), COVER, "failed")
    assert isinstance(event, CoverEvent)
    assert (event.task_id, event.code, event.ok, event.images) == (
        TASK,
        int(body["code"]),
        False,
        (),
    )


def test_blank_entries_are_left_out(app: Flask) -> None:
    body = _body(200, {"taskId": TASK, "images": ["", FIRST, None]})
    event = assert_received_once(post(app, body), COVER, "complete")
    assert isinstance(event, CoverEvent)
    assert event.images == (FIRST,)


@pytest.mark.parametrize("images", [None, [], ["", None]], ids=["null", "empty", "blanks"])
def test_a_success_without_images_is_no_callback(images: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        COVER.load(_body(200, {"taskId": TASK, "images": images}))
    assert "images" in raised.value.messages["data"]


def test_a_redelivery_is_a_duplicate(app: Flask) -> None:
    body = SUCCESSES["documented"]
    assert_received_once(post(app, body), COVER, "complete")
    status, answer, recorded = post(app, body)
    assert (status, answer) == (200, {"status": "duplicate"})
    assert [kwargs["reason"] for name, kwargs in recorded if name == "callback_duplicate"] == [
        "duplicate"
    ]
    assert not sent(recorded, "cover_generated")


def test_the_music_complete_of_the_same_task_id_is_another_delivery(app: Flask) -> None:
    music = post(app, build_callback("complete", task_id=TASK))
    cover = post(app, SUCCESSES["documented"])
    again = post(app, SUCCESSES["documented"])
    assert len(sent(music[2], "all_tracks_generated")) == 1
    assert_received_once(cover, COVER, "complete")
    assert again[1] == {"status": "duplicate"}


@pytest.mark.parametrize(
    "images", [[42], FIRST, {"url": FIRST}], ids=["a number", "a bare string", "an object"]
)
def test_images_of_the_wrong_type_are_refused_when_no_source_check_is_configured(
    make_app: AppFactory, images: Any
) -> None:
    app = make_app(TOKEN=None)
    status, answer, recorded = post(app, _body(200, {"taskId": TASK, "images": images}), OPEN_URL)
    assert status == 422
    assert answer["reason"] == "invalid_payload"
    assert "images" in answer["errors"]["data"]
    assert names(recorded) == {"callback_rejected"}


def test_images_of_the_wrong_type_are_kept_behind_a_token(app: Flask) -> None:
    status, answer, recorded = post(app, _body(200, {"taskId": TASK, "images": [42]}))
    assert (status, answer) == (200, {"status": "kept"})
    assert [kwargs["family"] for name, kwargs in recorded if name == "callback_unreadable"] == [
        "cover"
    ]


def test_a_failure_without_the_images_key_is_not_placed_by_its_shape() -> None:
    assert COVER.detect(_body(501, {"taskId": TASK})) is False
    assert COVER.detect(_body(501, None, taskId=TASK)) is False
    assert COVER.detect(_body(501, {"taskId": TASK, "images": None})) is True


def test_a_failure_without_the_images_key_is_read_by_the_family_its_url_names(
    app: Flask,
) -> None:
    status, answer, recorded = post(app, _body(501, {"taskId": TASK}), f"{URL}&family=cover")
    assert (status, answer) == (200, {"status": "received"})
    assert len(sent(recorded, "cover_failed")) == 1
    assert not names(recorded) & MUSIC_SIGNALS


def test_the_examples_carry_as_many_images_as_asked_on_the_simulated_host() -> None:
    for reseller in ("sunoapi", "kie"):
        body = build_callback("complete", family="cover", reseller=reseller, tracks=3)
        images = body["data"]["images"]
        assert len(set(images)) == 3
        assert {urlsplit(image).hostname for image in images} == {SIMULATED_MEDIA_HOST}


# --- polling: /api/v1/suno/cover/record-info -----------------------------------------------------


def _record(flag: Any, images: Any = None, **data: Any) -> dict[str, Any]:
    """A record answer shaped as both resellers document it."""
    return {
        "code": 200,
        "msg": "success",
        "data": {
            "taskId": TASK,
            "parentTaskId": "73d6128b3523a0079df10da9471017c8",
            "callbackUrl": "https://api.example.com/callback",
            "completeTime": "2025-01-15T10:35:27.000Z",
            "response": None if images is None else {"images": images},
            "successFlag": flag,
            "createTime": "2025-01-15T10:33:01.000Z",
            "errorCode": 200,
            "errorMessage": "",
            **data,
        },
    }


TIMES = {
    "epoch ms": 1736937327000,
    "ISO 8601": "2025-01-15T10:35:27.000Z",
    "date and time": "2025-01-15 10:35:27",
}


@pytest.mark.parametrize("moment", TIMES.values(), ids=TIMES.keys())
@pytest.mark.parametrize("flag", [1, "1", "SUCCESS"], ids=["integer", "text", "spelled"])
def test_a_successful_record_reads_as_the_success_callback(flag: Any, moment: Any) -> None:
    answer = _record(flag, [FIRST, SECOND], createTime=moment, completeTime=moment)
    record = COVER.read_record(answer)
    assert (record.task_id, record.final) == (TASK, True)
    assert record.body is not None
    event = COVER.load(record.body)
    assert isinstance(event, CoverEvent)
    assert (event.stage, event.images, event.code) == ("complete", (FIRST, SECOND), 200)


def test_the_record_endpoint_is_the_cover_one() -> None:
    assert COVER.record_path == "/api/v1/suno/cover/record-info"


@pytest.mark.parametrize("flag", [0, "0", 2, "PENDING"], ids=["0", "0 as text", "2", "PENDING"])
def test_a_record_not_finished_has_no_body_yet(flag: Any) -> None:
    """``2`` is "generating" in sunoapi.org's documentation of this record."""
    record = COVER.read_record(_record(flag))
    assert (record.body, record.final) == (None, False)


@pytest.mark.parametrize(
    ("flag", "error_code", "code"),
    [(3, 501, 501), ("3", 400, 400), ("GENERATE_COVER_FAILED", None, 500), (3, 200, 500)],
    ids=["3", "3 as text", "spelled", "errorCode 200 is no failure code"],
)
def test_a_failed_record_reads_as_a_failure(flag: Any, error_code: Any, code: int) -> None:
    answer = _record(flag, errorCode=error_code, errorMessage="Cover generation failed")
    record = COVER.read_record(answer)
    assert record.final is True
    assert record.body is not None
    event = COVER.load(record.body)
    assert isinstance(event, CoverEvent)
    assert (event.stage, event.ok, event.images, event.code) == ("failed", False, (), code)
    assert event.msg == "Cover generation failed"


def test_a_success_flag_without_images_is_no_usable_record() -> None:
    with pytest.raises(ValidationError):
        COVER.read_record(_record(1, []))


# --- properties ----------------------------------------------------------------------------------

BODIES = [*SUCCESSES.values(), *FAILURES.values()]


@given(substituted(BODIES))
def test_any_value_anywhere_loads_a_typed_event_or_is_a_validation_error(
    body: dict[str, Any],
) -> None:
    try:
        event = COVER.load(body)
    except ValidationError as exc:
        messages = exc.messages
    else:
        assert_common(event, COVER)
        assert isinstance(event.images, tuple)
        assert all(isinstance(image, str) and image for image in event.images)
        if event.stage == "complete":
            assert event.images
        return
    assert isinstance(messages, dict)


@pytest.fixture(scope="module")
def open_app() -> Flask:
    return build_app(TOKEN=None)


@pytest.fixture(scope="module")
def guarded_app() -> Flask:
    return build_app()


@given(substituted(BODIES))
@example(_body(501, None, taskId=TASK))
def test_any_value_anywhere_is_answered_without_a_server_error(
    open_app: Flask, guarded_app: Flask, body: dict[str, Any]
) -> None:
    status, answer, recorded = post(open_app, body, OPEN_URL)
    assert status in (200, 422)
    if status == 422:
        assert names(recorded) == {"callback_rejected"}
    status, answer, _ = post(guarded_app, body)
    assert status == 200
    assert answer["status"] in ("received", "duplicate", "kept")
