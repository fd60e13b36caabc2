"""Another callback family plugs in as a module (schema, event, signals), the pipeline unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from blinker import Namespace
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import EXCLUDE, Schema, fields, post_load

from flask_musiccallback import all_tracks_generated
from flask_musiccallback.families import Family, register_family, unregister_family
from flask_musiccallback.testing import build_callback, record_signals

from .conftest import URL

# What a module adding the WAV conversion family would hold.

wav_signals = Namespace()
wav_ready = wav_signals.signal("wav-ready")
wav_failed = wav_signals.signal("wav-failed")


@dataclass(frozen=True)
class WavEvent:
    task_id: str
    stage: str
    code: int
    wav_url: str | None
    received_at: datetime


class WavDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    task_id = fields.String(required=True)
    audioWavUrl = fields.String(allow_none=True, load_default=None)  # noqa: N815


class WavSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    code = fields.Integer(required=True)
    data = fields.Nested(WavDataSchema, required=True)

    @post_load
    def make_event(self, loaded: dict[str, Any], **kwargs: Any) -> WavEvent:
        ok = loaded["code"] == 200 and loaded["data"]["audioWavUrl"]
        return WavEvent(
            task_id=loaded["data"]["task_id"],
            stage="complete" if ok else "failed",
            code=loaded["code"],
            wav_url=loaded["data"]["audioWavUrl"],
            received_at=datetime.now(timezone.utc),
        )


def is_wav(payload: Mapping[str, Any]) -> bool:
    data = payload.get("data")
    return isinstance(data, dict) and "audioWavUrl" in data


wav_schema = WavSchema()
WAV = Family(
    name="wav",
    schema=wav_schema,
    load=wav_schema.load,
    signals={"complete": wav_ready, "failed": wav_failed},
    detect=is_wav,
)


@pytest.fixture(autouse=True)
def wav_family() -> Iterator[Family]:
    register_family(WAV)
    yield WAV
    unregister_family(WAV)


def wav_payload(task_id: str, url: str | None = "https://x/a.wav") -> dict[str, Any]:
    return {
        "code": 200 if url else 400,
        "msg": "ok",
        "data": {"task_id": task_id, "audioWavUrl": url},
    }


def test_a_registered_family_gets_its_own_signal(app: Flask, client: FlaskClient) -> None:
    received: list[WavEvent] = []
    with wav_ready.connected_to(lambda sender, event: received.append(event), sender=app):
        answer = client.post(URL, json=wav_payload("w1"))
    assert answer.get_json() == {"status": "received"}
    assert [event.wav_url for event in received] == ["https://x/a.wav"]


def test_a_family_is_deduplicated_by_the_same_store(client: FlaskClient) -> None:
    assert client.post(URL, json=wav_payload("w2")).get_json() == {"status": "received"}
    assert client.post(URL, json=wav_payload("w2")).get_json() == {"status": "duplicate"}


def test_families_do_not_deduplicate_each_other(app: Flask, client: FlaskClient) -> None:
    with record_signals(app) as recorded:
        client.post(URL, json=wav_payload("shared-id"))
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


def test_a_family_payload_that_is_wrong_is_a_422(client: FlaskClient) -> None:
    answer = client.post(URL, json={"code": 200, "data": {"audioWavUrl": 5}})
    assert answer.status_code == 422
    assert "task_id" in answer.get_json()["errors"]["data"]
