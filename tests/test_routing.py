"""Which family reads a callback: the callback URL's ``family=``, the body's keys, the family the
task was registered with, and music for a failure nothing else places (docs/families.md)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_musiccallback import MusicCallback
from flask_musiccallback.families import BUILT_IN, MUSIC, Families, Family
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import CallbackClient, build_callback, record_signals

from .conftest import URL, AppFactory
from .family_kit import signal_name

#: A failure that names no family: the shape lyrics, MIDI and music failures share.
BARE_FAILURE = {"code": 500, "msg": "Internal Error", "data": {"task_id": "bare-1"}}

#: Every shape of a failure that names no family, each with the task id ``bare-1``.
BARE_FAILURES = {
    "data.task_id": BARE_FAILURE,
    "data.taskId": {"code": 400, "msg": "Task failed", "data": {"taskId": "bare-1"}},
    "data null": {"code": 400, "msg": "Unsupported format", "task_id": "bare-1", "data": None},
}

OTHER_FAMILIES = [family for family in BUILT_IN if family is not MUSIC]

SUCCESS_STAGES = {
    family.name: [stage for stage in family.stages if stage != "failed"] for family in BUILT_IN
}


def names(recorded: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in recorded]


def extension(app: Flask) -> MusicCallback:
    return get_state(app).extension


@pytest.mark.parametrize("reseller", ["sunoapi", "kie"])
@pytest.mark.parametrize(
    ("family", "stage"),
    [(family.name, stage) for family in BUILT_IN for stage in SUCCESS_STAGES[family.name]],
)
def test_each_success_is_placed_by_its_keys_alone(family: str, stage: str, reseller: str) -> None:
    body = build_callback(stage, family=family, reseller=reseller)
    routed = Families(*BUILT_IN).route(body)
    assert routed is not None
    assert routed.name == family


def test_every_family_has_examples_a_poll_reader_and_signals_for_failure() -> None:
    for family in BUILT_IN:
        assert family.example is not None
        assert family.record_path is not None
        assert family.read_record is not None
        assert "failed" in family.signals


def test_a_failure_that_names_no_family_is_music_when_nothing_else_says(
    app: Flask, client: FlaskClient
) -> None:
    with record_signals(app) as recorded:
        assert client.post(URL, json=BARE_FAILURE).get_json() == {"status": "received"}
    assert names(recorded) == ["callback_received", "task_failed"]


@pytest.mark.parametrize("body", BARE_FAILURES.values(), ids=BARE_FAILURES.keys())
@pytest.mark.parametrize("family", OTHER_FAMILIES, ids=lambda family: family.name)
def test_the_callback_url_family_reads_a_failure_that_names_none(
    app: Flask, client: FlaskClient, family: Family, body: dict[str, Any]
) -> None:
    assert Families(*BUILT_IN).route(body) is MUSIC  # no family's keys: music but for the URL
    with record_signals(app) as recorded:
        answer = client.post(f"{URL}&family={family.name}", json=body)
    assert answer.get_json() == {"status": "received"}
    assert names(recorded) == ["callback_received", signal_name(family, "failed")]
    event = recorded[-1][1]["event"]
    assert (event.family, event.task_id, event.stage, event.ok, event.code) == (
        family.name,
        "bare-1",
        "failed",
        False,
        body["code"],
    )


def test_the_callback_url_family_wins_over_the_body_keys(app: Flask, client: FlaskClient) -> None:
    body = build_callback("complete", family="wav", task_id="url-wins")
    with record_signals(app) as recorded:
        answer = client.post(f"{URL}&family=music", json=body)
    # Music's schema reads no callbackType in a WAV body: not a music callback, so it is kept.
    assert answer.get_json() == {"status": "kept"}
    assert names(recorded) == ["callback_unreadable"]
    assert recorded[0][1]["family"] == "music"


@pytest.mark.parametrize("body", BARE_FAILURES.values(), ids=BARE_FAILURES.keys())
@pytest.mark.parametrize("family", OTHER_FAMILIES, ids=lambda family: family.name)
def test_a_registered_task_places_a_failure_that_names_no_family(
    app: Flask, client: FlaskClient, family: Family, body: dict[str, Any]
) -> None:
    with app.app_context():
        extension(app).expect("bare-1", family=family.name)
    with record_signals(app) as recorded:
        client.post(URL, json=body)
    assert names(recorded) == ["callback_received", signal_name(family, "failed")]
    assert recorded[-1][1]["event"].family == family.name


def test_the_body_keys_place_a_callback_whatever_its_task_was_registered_as(
    app: Flask, client: FlaskClient
) -> None:
    with app.app_context():
        extension(app).expect("keys-win", family="music")
    with record_signals(app) as recorded:
        client.post(URL, json=build_callback("complete", family="wav", task_id="keys-win"))
    assert names(recorded) == ["callback_received", "wav_converted"]


def test_expect_is_idempotent_and_takes_the_family_given_last(app: Flask) -> None:
    music = extension(app)
    with app.app_context():
        music.expect("again", family="wav")
        first = get_state(app).store.task("again")
        music.expect("again", family="wav")
        music.expect("again", family="music")
        record = get_state(app).store.task("again")
    assert first is not None
    assert record is not None
    assert record.family == "music"
    assert record.expected_at == first.expected_at


def test_expect_refuses_a_family_that_is_not_registered(app: Flask) -> None:
    with app.app_context(), pytest.raises(LookupError, match="nope"):
        extension(app).expect("t", family="nope")


def test_the_callback_url_names_the_family(make_app: AppFactory) -> None:
    app = make_app(EXTERNAL_URL="https://example.com")
    music = extension(app)
    assert "family=wav" in music.callback_url(family="wav")
    with pytest.raises(LookupError, match="nope"):
        music.callback_url(family="nope")


def test_a_family_name_no_family_has_is_kept_behind_a_token(
    app: Flask, client: FlaskClient
) -> None:
    with record_signals(app) as recorded:
        answer = client.post(f"{URL}&family=nope", json=build_callback("complete"))
    assert answer.get_json() == {"status": "kept"}
    [(name, kwargs)] = recorded
    assert name == "callback_unreadable"
    assert kwargs["family"] is None
    assert "nope" in kwargs["errors"]["family"][0]


def test_a_family_name_no_family_has_is_refused_on_an_open_endpoint(
    make_app: AppFactory,
) -> None:
    app = make_app(TOKEN=None)
    answer = app.test_client().post("/music-callback?family=nope", json=build_callback())
    assert answer.status_code == 422
    assert answer.get_json()["reason"] == "invalid_payload"


def test_the_test_client_posts_to_a_family_url(app: Flask) -> None:
    with record_signals(app) as recorded:
        CallbackClient(app).deliver(
            {"code": 500, "msg": "x", "data": {"taskId": "c1"}}, family="wav", family_in_url=True
        )
    assert names(recorded) == ["callback_received", "wav_failed"]


def test_a_host_family_without_detect_is_reached_by_url_only(
    make_app: AppFactory,
) -> None:
    app = make_app()
    plain = Family(
        name="plain",
        schema=MUSIC.schema,
        load=MUSIC.load,
        signals=MUSIC.signals,
    )
    extension(app).families.register(plain)
    body = build_callback("complete", task_id="plain-1")
    routed = extension(app).families.route(body)
    assert routed is not None
    assert routed.name == "music"
    assert extension(app).families.route(body, named="plain") is plain


def test_music_receivers_see_no_other_family(app: Flask, client: FlaskClient) -> None:
    seen: list[str] = []
    music = extension(app)
    for stage in ("text", "first", "complete", "failed"):
        music.on(stage)(lambda event: seen.append(event.family))
    for family in BUILT_IN:
        if family.name == "music":
            continue
        for stage in family.stages:
            body = build_callback(stage, family=family.name, task_id=f"{family.name}-{stage}")
            client.post(f"{URL}&family={family.name}", json=body)
    assert seen == []
