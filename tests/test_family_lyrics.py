"""The lyrics family: its callbacks in both resellers' spellings reach ``lyrics_generated`` and
``lyrics_failed`` only, deduplicated apart from music, and its record reads as its callback."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from marshmallow import ValidationError

from flask_musiccallback import Lyrics, LyricsEvent
from flask_musiccallback.families import LYRICS
from flask_musiccallback.testing import build_callback

from .conftest import AppFactory
from .family_kit import (
    OPEN_URL,
    RECORD_TIMES,
    assert_never_a_server_error,
    assert_refused,
    loads_or_refuses,
    post,
    record_answer,
)
from .payloads import mutated

RESELLERS = ("sunoapi", "kie")


def lyrics_body(code: int = 200, **data: Any) -> dict[str, Any]:
    return {"code": code, "msg": "All generated successfully.", "data": data}


ITEM = {"text": "[Verse]\nCity lights", "title": "Neon Rain", "status": "complete"}


@pytest.mark.parametrize("reseller", RESELLERS)
def test_a_success_fires_lyrics_generated_once_with_the_lyrics(app: Flask, reseller: str) -> None:
    body = build_callback("complete", family="lyrics", reseller=reseller, task_id="l1", tracks=2)
    posted = post(app, body)
    assert posted.answer == {"status": "received"}
    assert posted.names == ["callback_received", "lyrics_generated"]
    [event] = posted.events("lyrics_generated")
    assert isinstance(event, LyricsEvent)
    assert (event.family, event.task_id, event.stage, event.code, event.ok) == (
        "lyrics",
        "l1",
        "complete",
        200,
        True,
    )
    assert len(event.lyrics) == 2
    assert all(isinstance(item, Lyrics) for item in event.lyrics)
    assert event.lyrics[0].text.startswith("[Verse]")
    assert event.lyrics[0].status == "complete"
    assert event.lyrics[0].error is None  # a blank error message is no error
    assert event.raw == body


@pytest.mark.parametrize("key", ["taskId", "task_id"])
def test_the_task_id_is_read_under_either_spelling(app: Flask, key: str) -> None:
    posted = post(app, lyrics_body(callbackType="complete", data=[ITEM], **{key: "l2"}))
    assert [event.task_id for event in posted.events("lyrics_generated")] == ["l2"]


@pytest.mark.parametrize("key", ["errorMessage", "error_message"])
def test_a_variants_error_is_read_under_either_spelling(app: Flask, key: str) -> None:
    items = [ITEM, {"text": "", "title": "", "status": "failed", key: "Sensitive words"}]
    posted = post(app, lyrics_body(callbackType="complete", taskId="l3", data=items))
    [event] = posted.events("lyrics_generated")
    assert event.lyrics[1] == Lyrics(
        text=None, title=None, status="failed", error="Sensitive words"
    )


@pytest.mark.parametrize("reseller", RESELLERS)
def test_a_failure_sent_to_the_lyrics_url_fires_lyrics_failed_only(
    app: Flask, reseller: str
) -> None:
    body = build_callback("failed", family="lyrics", reseller=reseller, task_id="l4")
    posted = post(app, body, family="lyrics")
    assert posted.names == ["callback_received", "lyrics_failed"]
    [event] = posted.events("lyrics_failed")
    assert (event.stage, event.code, event.ok, event.lyrics) == ("failed", 400, False, ())
    assert event.msg == "Lyrics generation failed"


def test_a_failure_without_lyrics_names_no_family() -> None:
    """It looks like a music failure: only its URL or its registered task can place it."""
    body = lyrics_body(400, callbackType="error", taskId="l5", data=None)
    assert not LYRICS.detect(body)


def test_kie_complete_with_a_failure_code_is_a_failure(app: Flask) -> None:
    body = lyrics_body(400, callbackType="complete", task_id="l6", data=[ITEM])
    posted = post(app, body)
    assert posted.names == ["callback_received", "lyrics_failed"]
    assert posted.events("lyrics_failed")[0].lyrics[0].title == "Neon Rain"


def test_callback_type_error_with_code_200_is_a_failure(app: Flask) -> None:
    posted = post(app, lyrics_body(callbackType="error", taskId="l7", data=[ITEM]))
    assert posted.names == ["callback_received", "lyrics_failed"]


@pytest.mark.parametrize(
    ("item", "field"),
    [({**ITEM, "text": 5}, "text"), ({**ITEM, "errorMessage": ["x"]}, "errorMessage")],
)
def test_a_value_of_the_wrong_type_is_refused_with_422(
    make_app: AppFactory, item: dict[str, Any], field: str
) -> None:
    app = make_app(TOKEN=None)
    posted = post(app, lyrics_body(callbackType="complete", taskId="l9", data=[item]), url=OPEN_URL)
    assert_refused(posted, "data", "data", "0", field)


@pytest.mark.parametrize("items", [None, []])
def test_a_success_without_lyrics_is_refused(make_app: AppFactory, items: Any) -> None:
    app = make_app(TOKEN=None)
    body = lyrics_body(callbackType="complete", taskId="l10", data=items)
    assert_refused(post(app, body, family="lyrics", url=OPEN_URL))


# --- polling: /api/v1/lyrics/record-info ---------------------------------------------------------

RECORD_LYRICS = {"taskId": "r1", "data": [{**ITEM, "errorMessage": ""}]}


@pytest.mark.parametrize("time", RECORD_TIMES.values(), ids=RECORD_TIMES.keys())
def test_a_success_record_reads_as_the_lyrics_callback(time: Any) -> None:
    answer = record_answer(
        "r1", "SUCCESS", status_key="status", response=RECORD_LYRICS, time=time, type="LYRICS"
    )
    record = LYRICS.read_record(answer)
    assert (record.task_id, record.status, record.final) == ("r1", "SUCCESS", True)
    event = LYRICS.load(record.body)
    assert (event.task_id, event.stage) == ("r1", "complete")
    assert event.lyrics == (Lyrics("[Verse]\nCity lights", "Neon Rain", "complete", None),)


def test_a_pending_record_stands_for_no_callback() -> None:
    record = LYRICS.read_record(record_answer("r2", "PENDING", status_key="status"))
    assert (record.body, record.final) == (None, False)


@pytest.mark.parametrize(
    "status", ["CREATE_TASK_FAILED", "GENERATE_LYRICS_FAILED", "SENSITIVE_WORD_ERROR"]
)
def test_a_failed_record_reads_as_a_failure(status: str) -> None:
    answer = record_answer(
        "r3", status, status_key="status", error_code=400, error_message="Prohibited words"
    )
    record = LYRICS.read_record(answer)
    assert record.final
    event = LYRICS.load(record.body)
    assert (event.stage, event.code, event.msg) == ("failed", 400, "Prohibited words")


@pytest.mark.parametrize(("response", "stage"), [(RECORD_LYRICS, "complete"), (None, "failed")])
def test_a_callback_exception_record_is_read_by_its_content(response: Any, stage: str) -> None:
    answer = record_answer("r4", "CALLBACK_EXCEPTION", status_key="status", response=response)
    assert LYRICS.load(LYRICS.read_record(answer).body).stage == stage


def test_a_success_record_without_lyrics_is_no_record() -> None:
    answer = record_answer("r5", "SUCCESS", status_key="status", response={"data": []})
    with pytest.raises(ValidationError):
        LYRICS.read_record(answer)


# --- properties --------------------------------------------------------------------------------

BODIES = [
    build_callback(stage, family="lyrics", reseller=reseller, task_id="p1")
    for stage in ("complete", "failed")
    for reseller in RESELLERS
] + [lyrics_body(400, callbackType="complete", task_id="p2", data=[ITEM])]


@given(mutated(BODIES))
def test_any_value_anywhere_loads_an_event_or_is_refused(payload: dict[str, Any]) -> None:
    event = loads_or_refuses(LYRICS, payload)
    assert event is None or isinstance(event, LyricsEvent)


@given(mutated(BODIES))
def test_posting_any_value_anywhere_is_never_a_server_error(
    open_app: Flask, guarded_app: Flask, payload: dict[str, Any]
) -> None:
    assert_never_a_server_error(open_app, guarded_app, payload, LYRICS)
