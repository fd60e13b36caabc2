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


@pytest.mark.parametrize(
    "images", [[42], FIRST, {"url": FIRST}], ids=["a number", "a bare string", "an object"]
)
def test_images_of_the_wrong_type_are_refused_when_no_source_check_is_configured(
    make_app: AppFactory, images: Any
) -> None:
    body = _body(200, {"taskId": TASK, "images": images})
    assert_refused(post(make_app(TOKEN=None), body, url=OPEN_URL), "data", "images")


def test_images_of_the_wrong_type_are_kept_behind_a_token(app: Flask) -> None:
    assert_kept(post(app, _body(200, {"taskId": TASK, "images": [42]})), COVER)


def test_a_failure_without_the_images_key_is_not_placed_by_its_shape() -> None:
    assert COVER.detect(_body(501, {"taskId": TASK})) is False
    assert COVER.detect(_body(501, None, taskId=TASK)) is False
    assert COVER.detect(_body(501, {"taskId": TASK, "images": None})) is True


def test_the_examples_carry_as_many_images_as_asked_on_the_simulated_host() -> None:
    for reseller in ("sunoapi", "kie"):
        body = build_callback("complete", family="cover", reseller=reseller, tracks=3)
        images = body["data"]["images"]
        assert len(set(images)) == 3
        assert {urlsplit(image).hostname for image in images} == {SIMULATED_MEDIA_HOST}


# --- polling: /api/v1/suno/cover/record-info -----------------------------------------------------


def _record(
    flag: Any,
    images: Any = None,
    *,
    error_code: Any = 200,
    error_message: str = "",
    **fields: Any,
) -> dict[str, Any]:
    """A record answer shaped as both resellers document it: ``errorCode`` 200 unless failed."""
    return record_answer(
        TASK,
        flag,
        response=None if images is None else {"images": images},
        error_code=error_code,
        error_message=error_message,
        parentTaskId="73d6128b3523a0079df10da9471017c8",
        callbackUrl="https://api.example.com/callback",
        **fields,
    )


@pytest.mark.parametrize("moment", RECORD_TIMES.values(), ids=RECORD_TIMES.keys())
@pytest.mark.parametrize("flag", [1, "1", "SUCCESS"], ids=["integer", "text", "spelled"])
def test_a_successful_record_reads_as_the_success_callback(flag: Any, moment: Any) -> None:
    answer = _record(flag, [FIRST, SECOND], time=moment)
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
    answer = _record(flag, error_code=error_code, error_message="Cover generation failed")
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


@given(mutated(BODIES))
def test_any_value_anywhere_loads_a_typed_event_or_is_a_validation_error(
    body: dict[str, Any],
) -> None:
    event = loads_or_refuses(COVER, body)
    if event is not None:
        assert isinstance(event, CoverEvent)
        assert isinstance(event.images, tuple)
        assert all(isinstance(image, str) and image for image in event.images)
        if event.stage == "complete":
            assert event.images


@given(mutated(BODIES))
@example(_body(501, None, taskId=TASK))
def test_any_value_anywhere_is_answered_without_a_server_error(
    open_app: Flask, guarded_app: Flask, body: dict[str, Any]
) -> None:
    assert_never_a_server_error(open_app, guarded_app, body, COVER)
