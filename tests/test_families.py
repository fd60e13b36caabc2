"""Another callback family plugs in as a module (schema, event, signals), the pipeline unchanged,
registered on one extension and read by that extension only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_musiccallback import all_tracks_generated
from flask_musiccallback.dispatch.replay import Replayed, replay
from flask_musiccallback.families import MUSIC, Families, Family
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import PersistentStore
from flask_musiccallback.testing import build_callback, record_signals

from .backends import sqlite_url
from .conftest import URL, AppFactory
from .karaoke_family import KARAOKE, KaraokeEvent, karaoke_payload, karaoke_ready


def with_karaoke(app: Flask) -> Flask:
    get_state(app).extension.families.register(KARAOKE)
    return app


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return with_karaoke(make_app())


def test_a_registered_family_gets_its_own_signal(app: Flask, client: FlaskClient) -> None:
    received: list[KaraokeEvent] = []
    with karaoke_ready.connected_to(lambda sender, event: received.append(event), sender=app):
        answer = client.post(URL, json=karaoke_payload("w1"))
    assert answer.get_json() == {"status": "received"}
    assert [event.karaoke_url for event in received] == ["https://x/karaoke.mp4"]


def test_a_family_is_deduplicated_by_the_same_store(client: FlaskClient) -> None:
    assert client.post(URL, json=karaoke_payload("w2")).get_json() == {"status": "received"}
    assert client.post(URL, json=karaoke_payload("w2")).get_json() == {"status": "duplicate"}


def test_families_do_not_deduplicate_each_other(app: Flask, client: FlaskClient) -> None:
    with record_signals(app) as recorded:
        client.post(URL, json=karaoke_payload("shared-id"))
        client.post(URL, json=build_callback("complete", task_id="shared-id"))
    assert [name for name, _ in recorded] == [
        "callback_received",
        "callback_received",
        "all_tracks_generated",
    ]


def test_music_callbacks_are_unaffected(app: Flask, client: FlaskClient) -> None:
    calls: list[Any] = []
    with all_tracks_generated.connected_to(lambda s, event: calls.append(event), sender=app):
        client.post(URL, json=build_callback("complete"))
    assert len(calls) == 1


def test_a_family_payload_that_is_wrong_is_a_422(make_app: AppFactory) -> None:
    client = with_karaoke(make_app(TOKEN=None)).test_client()
    answer = client.post(URL, json={"code": 200, "data": {"karaokeUrl": 5}})
    assert answer.status_code == 422
    assert "task_id" in answer.get_json()["errors"]["data"]


def test_a_family_registered_on_one_extension_is_not_read_by_another(
    app: Flask, make_app: AppFactory
) -> None:
    other = make_app()
    received: list[KaraokeEvent] = []
    with karaoke_ready.connected_to(lambda sender, event: received.append(event)):
        answer = other.test_client().post(URL, json=karaoke_payload("w3"))
        assert answer.get_json() == {"status": "kept"}  # no family of that extension reads it
        assert app.test_client().post(URL, json=karaoke_payload("w3")).status_code == 200
    assert [event.task_id for event in received] == ["w3"]


def test_on_connects_a_receiver_to_a_registered_familys_stage(
    app: Flask, client: FlaskClient
) -> None:
    seen: list[str] = []
    get_state(app).extension.on("complete", family="karaoke")(
        lambda event: seen.append(event.karaoke_url)
    )
    client.post(URL, json=karaoke_payload("w4"))
    assert seen == ["https://x/karaoke.mp4"]


def test_on_refuses_a_family_the_extension_does_not_read(make_app: AppFactory) -> None:
    with pytest.raises(LookupError, match="karaoke"):
        get_state(make_app()).extension.on("complete", family="karaoke")


def test_a_family_name_is_registered_once(app: Flask) -> None:
    with pytest.raises(ValueError, match="karaoke"):
        get_state(app).extension.families.register(KARAOKE)


def test_only_one_family_keys_its_stages_bare() -> None:
    bare = Family("bare", KARAOKE.schema, KARAOKE.load, KARAOKE.signals, bare_keys=True)
    with pytest.raises(ValueError, match="bare"):
        Families(MUSIC, bare)


def test_a_payload_no_registered_family_reads_is_placed_nowhere() -> None:
    assert Families(KARAOKE).route(build_callback("complete")) is None


def test_music_stages_stay_keyed_bare_in_the_store(make_app: AppFactory, tmp_path: Path) -> None:
    app = with_karaoke(make_app(STORE=sqlite_url(tmp_path)))
    client = app.test_client()
    client.post(URL, json=build_callback("complete", task_id="k1"))
    client.post(URL, json=karaoke_payload("k1"))
    store = get_state(app).store
    assert isinstance(store, PersistentStore)
    assert sorted(kept.stage for kept in store.list(task_id="k1")) == [
        "complete",
        "karaoke:complete",
    ]


def test_replay_reads_a_kept_delivery_with_the_extensions_family(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = with_karaoke(make_app(STORE=sqlite_url(tmp_path), RECEIVER_ERRORS="ack"))
    received: list[str] = []

    def broken(sender: Flask, event: KaraokeEvent) -> None:
        raise RuntimeError("down")

    with karaoke_ready.connected_to(broken, sender=app):
        assert app.test_client().post(URL, json=karaoke_payload("w5")).status_code == 200
    with karaoke_ready.connected_to(
        lambda sender, event: received.append(event.task_id), sender=app
    ):
        [result] = replay(app, failed=True)
    assert result.result is Replayed.DONE
    assert received == ["w5"]
