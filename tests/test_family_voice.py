"""The Suno voice family (PROVIDER.md sections 4 and 6, API.md section 9): the validation phrase,
the custom voice and their failures as both resellers send them, through the real endpoint, and
the two record endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from hypothesis import example, given
from marshmallow import ValidationError

from flask_musiccallback import VoiceEvent
from flask_musiccallback.families import VOICE
from flask_musiccallback.families.voice import VALIDATE_INFO_PATH
from flask_musiccallback.testing import build_callback

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

TASK = "0b9a****d3f4"
PHRASE = "Please record this validation phrase clearly."


def _body(code: Any, data: Any, **top: Any) -> dict[str, Any]:
    return {
        "code": code,
        "msg": "success" if code == 200 else "Voice generation failed",
        **top,
        "data": data,
    }


def _data(status: Any, *, error_code: Any = 0, message: Any = "", **result: Any) -> dict[str, Any]:
    return {
        "taskId": TASK,
        **result,
        "status": status,
        "errorCode": error_code,
        "errorMessage": message,
    }


PHRASES = {
    "sunoapi": build_callback("phrase", family="voice", task_id=TASK, reseller="sunoapi"),
    "kie": build_callback("phrase", family="voice", task_id=TASK, reseller="kie"),
    "documented": _body(200, _data("wait_validating", validateInfo=PHRASE)),
    "errorCode null": _body(200, _data("wait_validating", error_code=None, validateInfo=PHRASE)),
    "upper-case status": _body(200, _data("WAIT_VALIDATING", validateInfo=PHRASE)),
    "task_id": _body(200, {"task_id": TASK, "validateInfo": PHRASE, "status": "wait_validating"}),
    "top-level taskId": _body(
        200, {"validateInfo": PHRASE, "status": "wait_validating"}, taskId=TASK
    ),
}

VOICES = {
    "sunoapi": build_callback("complete", family="voice", task_id=TASK, reseller="sunoapi"),
    "kie": build_callback("complete", family="voice", task_id=TASK, reseller="kie"),
    "documented": _body(200, _data("success", voiceId="voice_5k2j")),
    "errorCode null": _body(200, _data("success", error_code=None, voiceId="voice_5k2j")),
    "errorCode as text": _body(200, _data("success", error_code="0", voiceId="voice_5k2j")),
    "top-level task_id": _body(200, {"voiceId": "voice_5k2j", "status": "success"}, task_id=TASK),
}

FAILURES = {
    "sunoapi": build_callback("failed", family="voice", task_id=TASK, reseller="sunoapi"),
    "kie": build_callback("failed", family="voice", task_id=TASK, reseller="kie"),
    "voice failed": _body(
        400, _data("fail", error_code=500, message="Verification audio did not match", voiceId="")
    ),
    "phrase failed": _body(
        400,
        _data("processing_validate_fail", error_code=500, message="No phrase", validateInfo=""),
    ),
    "no ids": _body(400, _data("fail", error_code=500, message="Task failed")),
    "code 200, status fail": _body(200, _data("fail", error_code=500, message="x", voiceId="")),
    "code 200, phrase failed": _body(
        200, _data("processing_validate_fail", error_code=500, message="x", validateInfo="")
    ),
    "code 200, a new status ending in failed": _body(
        200, _data("upload_failed", error_code=500, message="x", voiceId="")
    ),
    "code 500, status success": _body(500, _data("success", voiceId="voice_5k2j")),
}


@pytest.mark.parametrize("body", PHRASES.values(), ids=PHRASES.keys())
def test_a_phrase_sends_voice_phrase_ready_once_with_the_phrase(
    app: Flask, body: dict[str, Any]
) -> None:
    event = assert_received_once(post(app, body), VOICE, "phrase")
    assert isinstance(event, VoiceEvent)
    assert (event.task_id, event.code, event.ok) == (TASK, 200, True)
    assert isinstance(event.validate_info, str)
    assert event.validate_info
    assert event.voice_id is None
    assert event.status == body["data"]["status"]
    assert event.error is None
    assert dict(event.raw) == body


@pytest.mark.parametrize("body", VOICES.values(), ids=VOICES.keys())
def test_a_voice_sends_voice_generated_once_with_its_id(app: Flask, body: dict[str, Any]) -> None:
    event = assert_received_once(post(app, body), VOICE, "complete")
    assert isinstance(event, VoiceEvent)
    assert (event.task_id, event.code, event.ok, event.status) == (TASK, 200, True, "success")
    assert isinstance(event.voice_id, str)
    assert event.voice_id.startswith("voice_")
    assert event.error_code in (0, None)
    assert event.error is None


@pytest.mark.parametrize("body", FAILURES.values(), ids=FAILURES.keys())
def test_a_failure_sends_voice_failed_once_with_its_status_and_error(
    app: Flask, body: dict[str, Any]
) -> None:
    event = assert_received_once(post(app, body), VOICE, "failed")
    assert isinstance(event, VoiceEvent)
    assert (event.task_id, event.code, event.ok) == (TASK, body["code"], False)
    assert event.status == body["data"]["status"]
    assert event.error_code == body["data"]["errorCode"]
    assert event.error == (body["data"]["errorMessage"] or None)
    assert event.voice_id == (body["data"].get("voiceId") or None)


@pytest.mark.parametrize(
    "status", ["processing_validate", "wait_processing", "queued", None], ids=str
)
def test_a_success_code_with_a_status_of_no_step_is_no_callback(status: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        VOICE.load(_body(200, _data(status, voiceId="voice_5k2j")))
    assert "status" in raised.value.messages["data"]


def test_a_status_of_no_step_is_refused_when_no_source_check_is_configured(
    make_app: AppFactory,
) -> None:
    body = _body(200, _data("queued", voiceId="v"))
    assert_refused(post(make_app(TOKEN=None), body, url=OPEN_URL), "data", "status")


def test_a_status_of_no_step_is_kept_behind_a_token(app: Flask) -> None:
    assert_kept(post(app, _body(200, _data("queued", voiceId="v"))), VOICE)


@pytest.mark.parametrize(
    "data",
    [
        _data("wait_validating", validateInfo=""),
        _data("wait_validating"),
        _data("success", voiceId=""),
        _data("success"),
    ],
    ids=["blank phrase", "no phrase", "blank voice id", "no voice id"],
)
def test_a_step_done_without_its_result_is_no_callback(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        VOICE.load(_body(200, data))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("voiceId", 42),
        ("validateInfo", ["a"]),
        ("status", 1),
        ("errorCode", "x"),
        ("errorCode", 0.5),
        ("errorMessage", {}),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_when_no_source_check_is_configured(
    make_app: AppFactory, field: str, value: Any
) -> None:
    data = {**_data("success", voiceId="voice_5k2j"), field: value}
    assert_refused(post(make_app(TOKEN=None), _body(200, data), url=OPEN_URL), "data", field)


def test_the_phrase_and_then_the_voice_of_one_task_are_each_sent_once(app: Flask) -> None:
    assert_received_once(post(app, PHRASES["documented"]), VOICE, "phrase")
    assert_received_once(post(app, VOICES["documented"]), VOICE, "complete")


def test_a_phrase_arriving_after_the_voice_is_stale(app: Flask) -> None:
    assert_received_once(post(app, VOICES["documented"]), VOICE, "complete")
    late = post(app, PHRASES["documented"])
    assert (late.status, late.answer) == (200, {"status": "duplicate"})
    assert late.names == ["callback_duplicate"]
    assert [kwargs["reason"] for kwargs in late.sent("callback_duplicate")] == ["stale"]


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        ({"taskId": TASK, "voiceId": ""}, True),
        ({"taskId": TASK, "validateInfo": None}, True),
        ({"taskId": TASK, "status": "fail", "errorCode": None}, True),
        ({"taskId": TASK, "status": "fail"}, False),
        ({"taskId": TASK, "errorCode": 500}, False),
        ({"taskId": TASK, "status": 3, "errorCode": 500}, False),
        ({"taskId": TASK}, False),
        (None, False),
    ],
    ids=[
        "voiceId",
        "validateInfo",
        "status and errorCode",
        "status alone",
        "errorCode alone",
        "status no string",
        "task id alone",
        "no data",
    ],
)
def test_the_body_names_the_family_only_by_its_keys(data: Any, detected: bool) -> None:
    assert VOICE.detect(_body(400, data)) is detected


def test_the_examples_have_the_familys_stages_only() -> None:
    for stage in VOICE.stages:
        for reseller in ("sunoapi", "kie"):
            assert (
                VOICE.load(build_callback(stage, family="voice", reseller=reseller)).stage == stage
            )
    with pytest.raises(ValueError, match="no stage"):
        build_callback("text", family="voice")


# --- polling: /api/v1/voice/record-info and /api/v1/voice/validate-info --------------------------


def _record(status: Any, **fields: Any) -> dict[str, Any]:
    """A record answer of either endpoint, shaped as sunoapi.org documents them."""
    return record_answer(TASK, status, status_key="status", **fields)


def test_the_family_polls_the_voice_record_and_reads_the_phrase_record_too() -> None:
    assert VOICE.record_path == "/api/v1/voice/record-info"
    assert VALIDATE_INFO_PATH == "/api/v1/voice/validate-info"


@pytest.mark.parametrize("moment", RECORD_TIMES.values(), ids=RECORD_TIMES.keys())
def test_a_voice_record_reads_as_the_voice_callback(moment: Any) -> None:
    answer = _record("success", voiceId="voice_5k2j", error_code=0, time=moment)
    record = VOICE.read_record(answer)
    assert (record.task_id, record.status, record.final) == (TASK, "SUCCESS", True)
    assert record.body is not None
    event = VOICE.load(record.body)
    assert isinstance(event, VoiceEvent)
    assert (event.stage, event.voice_id, event.status, event.error_code) == (
        "complete",
        "voice_5k2j",
        "success",
        0,
    )


@pytest.mark.parametrize("moment", RECORD_TIMES.values(), ids=RECORD_TIMES.keys())
def test_a_phrase_record_reads_as_the_phrase_callback_and_is_not_final(moment: Any) -> None:
    phrase = "Harmonies fill the air with joyful melodies tonight"
    record = VOICE.read_record(_record("wait_validating", validateInfo=phrase, time=moment))
    assert (record.status, record.final) == ("WAIT_VALIDATING", False)
    assert record.body is not None
    event = VOICE.load(record.body)
    assert isinstance(event, VoiceEvent)
    assert (event.stage, event.validate_info, event.ok) == ("phrase", phrase, True)


@pytest.mark.parametrize("status", ["wait_processing", "processing_validate", "queued"])
def test_a_record_not_finished_has_no_body_yet(status: str) -> None:
    record = VOICE.read_record(_record(status))
    assert (record.body, record.final) == (None, False)


@pytest.mark.parametrize(
    ("status", "error_code", "code"),
    [("fail", 500, 500), ("processing_validate_fail", 400, 400), ("upload_failed", None, 500)],
)
def test_a_failed_record_reads_as_a_failure_with_its_status_as_sent(
    status: str, error_code: Any, code: int
) -> None:
    answer = _record(status, error_code=error_code, error_message="Verification failed", voiceId="")
    record = VOICE.read_record(answer)
    assert record.final is True
    assert record.body is not None
    event = VOICE.load(record.body)
    assert isinstance(event, VoiceEvent)
    assert (event.stage, event.ok, event.code) == ("failed", False, code)
    assert (event.status, event.error_code, event.error) == (
        status,
        error_code,
        "Verification failed",
    )


# --- properties ----------------------------------------------------------------------------------

BODIES = [*PHRASES.values(), *VOICES.values(), *FAILURES.values()]


@given(mutated(BODIES))
def test_any_value_anywhere_loads_a_typed_event_or_is_a_validation_error(
    body: dict[str, Any],
) -> None:
    event = loads_or_refuses(VOICE, body)
    if event is not None:
        assert isinstance(event, VoiceEvent)
        for text in (event.voice_id, event.validate_info, event.status, event.error):
            assert text is None or (isinstance(text, str) and text)
        assert event.error_code is None or (
            isinstance(event.error_code, int) and -(2**31) <= event.error_code < 2**31
        )
        if event.stage == "phrase":
            assert event.validate_info is not None
        if event.stage == "complete":
            assert event.voice_id is not None


@given(mutated(BODIES))
@example(_body(400, None, taskId=TASK))
def test_any_value_anywhere_is_answered_without_a_server_error(
    open_app: Flask, guarded_app: Flask, body: dict[str, Any]
) -> None:
    assert_never_a_server_error(open_app, guarded_app, body, VOICE)
