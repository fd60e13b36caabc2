"""Bodies no family reads: kept and answered 200 behind a source check, refused on an open
endpoint, listed, shown, and read again by ``replay --unreadable`` once a family reads them."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback.dispatch.replay import Replayed, replay
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import build_callback, record_signals, signature_headers

from .backends import StoreApp, persistent_store
from .conftest import URL, AppFactory
from .karaoke_family import KARAOKE, karaoke_payload

#: What a family the provider adds next might send: no installed family's keys, code 200.
NEW_SHAPE = {"code": 200, "msg": "success", "data": {"taskId": "new-1", "karaokeUrl": "https://x/k"}}


def names(recorded: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in recorded]


def test_a_body_no_family_reads_is_kept_and_answered_200(app: Flask) -> None:
    with record_signals(app) as recorded:
        answer = app.test_client().post(URL, json=NEW_SHAPE)
    assert (answer.status_code, answer.get_json()) == (200, {"status": "kept"})
    [(name, kwargs)] = recorded
    assert name == "callback_unreadable"
    assert kwargs["payload"] == NEW_SHAPE
    assert kwargs["family"] is None
    assert kwargs["errors"] == {"_schema": ["No callback family reads this body."]}


def test_a_body_its_family_refuses_is_kept_with_that_familys_errors(app: Flask) -> None:
    body = build_callback("complete", task_id="bad-duration")
    body["data"]["data"][0]["duration"] = "long"
    with record_signals(app) as recorded:
        answer = app.test_client().post(URL, json=body)
    assert answer.get_json() == {"status": "kept"}
    [(_, kwargs)] = recorded
    assert kwargs["family"] == "music"
    assert "duration" in kwargs["errors"]["data"]["data"][0]


@pytest.mark.parametrize(
    "config",
    [{"TOKEN": None, "HMAC_KEY": "k"}, {"TOKEN": None, "ALLOWED_IPS": ["127.0.0.1"]}],
    ids=["hmac", "ip-list"],
)
def test_every_source_check_keeps_what_it_let_through(
    make_app: AppFactory, config: dict[str, Any]
) -> None:
    app = make_app(**config)
    headers = signature_headers("new-1", "k") if "HMAC_KEY" in config else {}
    answer = app.test_client().post("/music-callback", json=NEW_SHAPE, headers=headers)
    assert answer.get_json() == {"status": "kept"}


def test_an_open_endpoint_still_refuses_it(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None)
    with record_signals(app) as recorded:
        answer = app.test_client().post("/music-callback", json=NEW_SHAPE)
    assert answer.status_code == 422
    assert answer.get_json()["reason"] == "invalid_payload"
    assert names(recorded) == ["callback_rejected"]


def test_a_request_that_fails_the_token_learns_nothing_and_nothing_is_kept(app: Flask) -> None:
    with record_signals(app) as recorded:
        answer = app.test_client().post("/music-callback?token=wrong", json=NEW_SHAPE)
    assert answer.status_code == 401
    assert names(recorded) == ["callback_rejected"]


def test_each_distinct_body_is_logged_once(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    client = app.test_client()
    other = {**NEW_SHAPE, "msg": "another"}
    with caplog.at_level(logging.WARNING, logger="flask_musiccallback"):
        for body in (NEW_SHAPE, NEW_SHAPE, other, NEW_SHAPE):
            assert client.post(URL, json=body).get_json() == {"status": "kept"}
    kept_lines = [r for r in caplog.records if "no family reads" in r.getMessage()]
    assert len(kept_lines) == 2


def test_the_memory_store_keeps_nothing_but_still_answers_kept(app: Flask) -> None:
    assert not get_state(app).store.persistent
    assert app.test_client().post(URL, json=NEW_SHAPE).get_json() == {"status": "kept"}
    result = app.test_cli_runner().invoke(args=["musiccallback", "list", "--status", "unreadable"])
    assert result.exit_code == 1
    assert "persistent store" in result.output


def test_a_persistent_store_keeps_a_body_once_lists_and_shows_it(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app()
    client = app.test_client()
    for _ in range(3):
        assert client.post(URL, json=NEW_SHAPE).get_json() == {"status": "kept"}
    store = persistent_store(app)
    [kept] = store.list(status="unreadable")
    assert kept.task_id == "new-1"
    assert kept.payload == NEW_SHAPE
    assert kept.stage.startswith("unreadable:")
    assert store.pending(older_than=timedelta(0)) == []
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["musiccallback", "list", "--status", "unreadable"])
    assert listed.exit_code == 0, listed.output
    assert kept.id in listed.output
    shown = runner.invoke(args=["musiccallback", "show", kept.id])
    assert shown.exit_code == 0, shown.output
    assert "unreadable" in shown.output
    assert "karaokeUrl" in shown.output


def test_replay_reads_kept_bodies_again_once_their_family_is_installed(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app()
    client = app.test_client()
    assert client.post(URL, json=karaoke_payload("k-1")).get_json() == {"status": "kept"}
    runner = app.test_cli_runner()
    still = runner.invoke(args=["musiccallback", "replay", "--unreadable"])
    assert still.exit_code == 0, still.output
    assert "unreadable (still no family reads it" in still.output
    assert len(persistent_store(app).list(status="unreadable")) == 1

    get_state(app).extension.families.register(KARAOKE)  # the upgrade
    with record_signals(app) as recorded:
        result = runner.invoke(args=["musiccallback", "replay", "--unreadable"])
    assert result.exit_code == 0, result.output
    assert "read as karaoke complete" in result.output
    assert names(recorded) == ["callback_received"]  # karaoke_ready is the host's own signal
    store = persistent_store(app)
    assert store.list(status="unreadable") == []
    [done] = store.list(task_id="k-1")
    assert (done.stage, done.state) == ("karaoke:complete", "done")
    # The provider's redelivery of the same body is now a duplicate of what the replay delivered.
    assert client.post(URL, json=karaoke_payload("k-1")).get_json() == {"status": "duplicate"}


def test_a_kept_body_remembers_the_family_its_url_named(persistent_app: StoreApp) -> None:
    app = persistent_app()
    body = {"code": 500, "msg": "down", "data": {"task_id": "routed-1"}}
    answer = app.test_client().post(f"{URL}&family=karaoke", json=body)
    assert answer.get_json() == {"status": "kept"}
    get_state(app).extension.families.register(KARAOKE)
    [result] = replay(app, unreadable=True)
    assert result.result is Replayed.DONE, result.detail
    assert result.detail == "read as karaoke failed"


def test_replay_of_an_unreadable_body_by_its_id(persistent_app: StoreApp) -> None:
    app = persistent_app()
    app.test_client().post(URL, json=karaoke_payload("by-id"))
    [kept] = persistent_store(app).list(status="unreadable")
    get_state(app).extension.families.register(KARAOKE)
    [result] = replay(app, [kept.id])
    assert result.result is Replayed.DONE
