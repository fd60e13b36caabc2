"""The stems family: vocal separations and stem splits in both resellers' spellings reach
``stems_separated`` and ``stems_failed`` only, with every stem under one snake-case name, and
their record reads as their callback."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from marshmallow import ValidationError

from flask_musiccallback import StemAudio, StemPart, StemsEvent
from flask_musiccallback.families import STEMS
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
INFO_KEYS = ("vocal_removal_info", "vocal_separation_info")
CDN = "https://file.example"


def stems_body(info: Any, *, code: int = 200, key: str = INFO_KEYS[0]) -> dict[str, Any]:
    return {
        "code": code,
        "msg": "vocal separation generated successfully.",
        "data": {"task_id": "s1", key: info},
    }


SEPARATION = {
    "instrumental_url": f"{CDN}/i.mp3",
    "origin_url": "",
    "vocal_url": f"{CDN}/v.mp3",
}

#: kie.ai's advanced split, as PROVIDER.md shows it: spaces inside the links.
ADVANCED = {
    "origin_url": f"{CDN}/o.mp3",
    "origin_data": [
        {
            "extract": {
                "id": "e1",
                "audio_url": f"{CDN}/split/Lead Vocals.mp3",
                "duration": 183.4,
                "stem_type_group_name": "Vocals",
            },
            "remove": {
                "id": "r1",
                "audio_url": f"{CDN}/split/Lead Vocals removed.mp3",
                "duration": "183.4",
                "stem_type_group_name": "Vocals",
            },
        }
    ],
}


@pytest.mark.parametrize("reseller", RESELLERS)
def test_a_separation_fires_stems_separated_once_with_its_stems(app: Flask, reseller: str) -> None:
    body = build_callback("complete", family="stems", reseller=reseller, task_id="s1")
    posted = post(app, body)
    assert posted.answer == {"status": "received"}
    assert posted.names == ["callback_received", "stems_separated"]
    [event] = posted.events("stems_separated")
    assert isinstance(event, StemsEvent)
    assert (event.family, event.task_id, event.stage, event.code, event.ok) == (
        "stems",
        "s1",
        "complete",
        200,
        True,
    )
    assert sorted(event.stems) == ["instrumental", "vocal"]  # the blank origin is left out
    assert event.stems["vocal"] == body["data"][INFO_KEYS[reseller == "kie"]]["vocal_url"]
    assert event.parts == ()


@pytest.mark.parametrize("key", INFO_KEYS)
def test_the_info_is_read_under_either_name(app: Flask, key: str) -> None:
    posted = post(app, stems_body(SEPARATION, key=key))
    [event] = posted.events("stems_separated")
    assert dict(event.stems) == {"instrumental": f"{CDN}/i.mp3", "vocal": f"{CDN}/v.mp3"}


def test_a_stem_split_names_every_stem_without_url(app: Flask) -> None:
    body = build_callback("complete", family="stems", task_id="s2", tracks=13)
    [event] = post(app, body).events("stems_separated")
    assert sorted(event.stems) == sorted(
        [
            "vocal",
            "backing_vocals",
            "drums",
            "bass",
            "guitar",
            "keyboard",
            "piano",
            "percussion",
            "strings",
            "synth",
            "fx",
            "brass",
            "woodwinds",
        ]
    )


def test_camel_case_keys_are_the_same_stems() -> None:
    info = {"pianoUrl": f"{CDN}/p.mp3", "backingVocalsUrl": f"{CDN}/b.mp3", "vocal_url": ""}
    event = STEMS.load(stems_body(info))
    assert dict(event.stems) == {"piano": f"{CDN}/p.mp3", "backing_vocals": f"{CDN}/b.mp3"}


def test_a_blank_spelling_does_not_hide_a_link() -> None:
    info = {"vocal_url": f"{CDN}/v.mp3", "vocalUrl": ""}
    assert dict(STEMS.load(stems_body(info)).stems) == {"vocal": f"{CDN}/v.mp3"}


def test_a_stem_the_schema_does_not_list_yet_is_a_stem_too() -> None:
    info = {"vocal_url": f"{CDN}/v.mp3", "harp_url": f"{CDN}/h.mp3", "harpUrlCount": 3}
    event = STEMS.load(stems_body(info))
    assert dict(event.stems) == {"vocal": f"{CDN}/v.mp3", "harp": f"{CDN}/h.mp3"}


def test_an_unknown_key_of_another_type_is_ignored_not_refused() -> None:
    event = STEMS.load(stems_body({**SEPARATION, "harp_url": 5, "model": {"v": 1}}))
    assert "harp" not in event.stems


def test_the_advanced_split_gives_its_parts_with_spaces_percent_encoded(app: Flask) -> None:
    posted = post(app, stems_body(ADVANCED))
    [event] = posted.events("stems_separated")
    assert dict(event.stems) == {"origin": f"{CDN}/o.mp3"}
    assert event.parts == (
        StemPart(
            extract=StemAudio("e1", f"{CDN}/split/Lead%20Vocals.mp3", 183.4, "Vocals"),
            remove=StemAudio("r1", f"{CDN}/split/Lead%20Vocals%20removed.mp3", 183.4, "Vocals"),
        ),
    )
    raw_link = event.raw["data"]["vocal_removal_info"]["origin_data"][0]["extract"]["audio_url"]
    assert raw_link == f"{CDN}/split/Lead Vocals.mp3"  # kept as sent


def test_a_stem_link_with_spaces_is_percent_encoded() -> None:
    event = STEMS.load(stems_body({"drums_url": f"{CDN}/My Song Drums.mp3"}))
    assert event.stems["drums"] == f"{CDN}/My%20Song%20Drums.mp3"


@pytest.mark.parametrize("reseller", RESELLERS)
def test_a_failure_is_placed_by_its_null_info_and_fires_stems_failed_only(
    app: Flask, reseller: str
) -> None:
    body = build_callback("failed", family="stems", reseller=reseller, task_id="s3")
    assert STEMS.detect(body)
    posted = post(app, body)  # no family= in the URL: its keys place it
    assert posted.names == ["callback_received", "stems_failed"]
    [event] = posted.events("stems_failed")
    assert (event.stage, event.code, event.ok, dict(event.stems), event.parts) == (
        "failed",
        500,
        False,
        {},
        (),
    )


@pytest.mark.parametrize(
    ("info", "path"),
    [
        ({"vocal_url": 5}, ("vocal_url",)),
        ({"pianoUrl": ["x"]}, ("piano_url",)),
        ({"origin_data": [{"extract": {"audio_url": 5}}]}, ("origin_data", "0", "extract")),
        ({"origin_data": [{"extract": {"duration": "long"}}]}, ("origin_data", "0", "extract")),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_with_422(
    make_app: AppFactory, info: dict[str, Any], path: tuple[str, ...]
) -> None:
    posted = post(make_app(TOKEN=None), stems_body(info), url=OPEN_URL)
    assert_refused(posted, "data", "vocal_removal_info", *path)


@pytest.mark.parametrize("info", [None, {}, {"origin_url": "", "vocal_url": None}])
def test_a_success_without_any_stem_is_refused(make_app: AppFactory, info: Any) -> None:
    assert_refused(post(make_app(TOKEN=None), stems_body(info), url=OPEN_URL))


# --- polling: /api/v1/vocal-removal/record-info ---------------------------------------------------

RECORD_STEMS = {
    "originUrl": None,
    "instrumentalUrl": f"{CDN}/i.mp3",
    "vocalUrl": f"{CDN}/v.mp3",
    "backingVocalsUrl": None,
    "drumsUrl": None,
    "pianoUrl": f"{CDN}/p.mp3",
}


@pytest.mark.parametrize("time", RECORD_TIMES.values(), ids=RECORD_TIMES.keys())
def test_a_success_record_reads_as_the_stems_callback(time: Any) -> None:
    answer = record_answer(
        "r1",
        "SUCCESS",
        response=RECORD_STEMS,
        time=time,
        musicId="m1",
        callbackUrl="https://host.example/cb",
    )
    record = STEMS.read_record(answer)
    assert (record.task_id, record.status, record.final) == ("r1", "SUCCESS", True)
    event = STEMS.load(record.body)
    assert (event.task_id, event.stage) == ("r1", "complete")
    assert dict(event.stems) == {
        "instrumental": f"{CDN}/i.mp3",
        "vocal": f"{CDN}/v.mp3",
        "piano": f"{CDN}/p.mp3",
    }


def test_a_records_origin_data_gives_the_parts() -> None:
    parts = [{"extract": {"id": "e1", "audioUrl": f"{CDN}/a b.mp3", "stemTypeGroupName": "Drums"}}]
    answer = record_answer("r2", "SUCCESS", response={"originUrl": "", "originData": parts})
    event = STEMS.load(STEMS.read_record(answer).body)
    assert event.parts == (StemPart(StemAudio("e1", f"{CDN}/a%20b.mp3", None, "Drums"), None),)


def test_a_pending_record_stands_for_no_callback() -> None:
    record = STEMS.read_record(record_answer("r3", "PENDING"))
    assert (record.body, record.final) == (None, False)


@pytest.mark.parametrize("status", ["CREATE_TASK_FAILED", "GENERATE_AUDIO_FAILED"])
def test_a_failed_record_reads_as_a_failure(status: str) -> None:
    answer = record_answer("r4", status, error_code=451, error_message="Download failed")
    record = STEMS.read_record(answer)
    assert record.final
    assert STEMS.detect(record.body)
    event = STEMS.load(record.body)
    assert (event.stage, event.code, event.msg) == ("failed", 451, "Download failed")


@pytest.mark.parametrize(("response", "stage"), [(RECORD_STEMS, "complete"), (None, "failed")])
def test_a_callback_exception_record_is_read_by_its_content(response: Any, stage: str) -> None:
    answer = record_answer("r5", "CALLBACK_EXCEPTION", response=response)
    assert STEMS.load(STEMS.read_record(answer).body).stage == stage


def test_a_success_record_without_any_stem_is_no_record() -> None:
    answer = record_answer("r6", "SUCCESS", response={"originUrl": None, "vocalUrl": ""})
    with pytest.raises(ValidationError):
        STEMS.read_record(answer)


# --- properties --------------------------------------------------------------------------------

BODIES = [
    *(
        build_callback(stage, family="stems", reseller=reseller, task_id="p1", tracks=count)
        for stage in ("complete", "failed")
        for reseller in RESELLERS
        for count in (2, 5)
    ),
    stems_body(ADVANCED),
    stems_body({"pianoUrl": f"{CDN}/p.mp3"}, key=INFO_KEYS[1]),
]


@given(mutated(BODIES))
def test_any_value_anywhere_loads_an_event_or_is_refused(payload: dict[str, Any]) -> None:
    event = loads_or_refuses(STEMS, payload)
    if event is not None:
        assert isinstance(event, StemsEvent)
        assert all(isinstance(url, str) and url and " " not in url for url in event.stems.values())


@given(mutated(BODIES))
def test_posting_any_value_anywhere_is_never_a_server_error(
    open_app: Flask, guarded_app: Flask, payload: dict[str, Any]
) -> None:
    assert_never_a_server_error(open_app, guarded_app, payload, STEMS)
