"""Defense in depth where the provider's signature is weak (API.md section 10, docs/security.md):
one signature to one body, expected tasks only, and callbacks confirmed by the provider's record.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import ConfigurationError
from flask_musiccallback.testing import build_callback, record_signals, signature_headers

from .backends import StoreApp
from .conftest import URL, AppFactory
from .fake_provider import Answer, FakeProvider, camel_tracks, record
from .family_kit import record_answer
from .servers import free_port

KEY = "hmac-key-for-the-defense-tests"
API_KEY = "provider-key-for-the-defense-tests"

RECEIVED = (200, {"status": "received"})
DUPLICATE = (200, {"status": "duplicate"})
KEPT = (200, {"status": "kept"})
RETRY = (503, {"status": "retry"})
UNAUTHORIZED = (401, {"status": "rejected", "reason": "unauthorized"})
UNEXPECTED = (403, {"status": "rejected", "reason": "unexpected_task"})
UNVERIFIED = (409, {"status": "rejected", "reason": "unverified"})

def post(app: Flask, body: dict[str, Any], **kwargs: Any) -> tuple[int, Any]:
    answer = app.test_client().post(kwargs.pop("url", URL), json=body, **kwargs)
    return answer.status_code, answer.get_json()


def stage_events(recorded: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    return [kwargs["event"] for name, kwargs in recorded if name == "callback_received"]


def names(recorded: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in recorded]


# One signature, one body


def test_a_signature_replayed_with_another_body_is_refused_and_the_same_body_is_a_duplicate(
    store_app: StoreApp,
) -> None:
    """The probe of issue 15: the headers of the genuine ``first`` callback, seen by a stranger,
    carry the stranger's ``complete`` (their audio links) inside the timestamp window."""
    app = store_app(TOKEN=None, HMAC_KEY=KEY)
    headers = signature_headers("probe-task", KEY)
    genuine = build_callback("first", task_id="probe-task")
    forged = build_callback("complete", task_id="probe-task")
    forged["data"]["data"][0]["audio_url"] = "https://attacker.example/a.mp3"
    with record_signals(app) as recorded:
        assert post(app, genuine, headers=headers) == RECEIVED
        assert post(app, forged, headers=headers) == UNAUTHORIZED
        assert post(app, genuine, headers=headers) == DUPLICATE
        # The genuine ``complete`` comes later, with a signature of its own.
        later = signature_headers("probe-task", KEY, timestamp=int(time.time()) + 1)
        complete = build_callback("complete", task_id="probe-task")
        assert post(app, complete, headers=later) == RECEIVED
    assert [event.stage for event in stage_events(recorded)] == ["first", "complete"]
    assert stage_events(recorded)[1].tracks[0].audio_url != "https://attacker.example/a.mp3"
    assert ("callback_rejected", {"reason": "unauthorized", "errors": {}, "status": 401}) in (
        recorded
    )


def test_a_forged_failure_under_a_seen_signature_is_refused(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None, HMAC_KEY=KEY)
    headers = signature_headers("task-f", KEY)
    assert post(app, build_callback("text", task_id="task-f"), headers=headers) == RECEIVED
    with record_signals(app) as recorded:
        forged = build_callback("failed", task_id="task-f")
        assert post(app, forged, headers=headers) == UNAUTHORIZED
    assert "generation_failed" not in names(recorded)


def test_the_same_body_with_other_bytes_is_another_body(make_app: AppFactory) -> None:
    """The raw bytes are what is signed to: a redelivery sends the very bytes it sent."""
    app = make_app(TOKEN=None, HMAC_KEY=KEY)
    headers = {**signature_headers("task-b", KEY), "Content-Type": "application/json"}
    body = build_callback("complete", task_id="task-b")
    client = app.test_client()
    assert client.post("/music-callback", data=json.dumps(body), headers=headers).status_code == 200
    spaced = json.dumps(body, indent=2)
    assert client.post("/music-callback", data=spaced, headers=headers).status_code == 401


# MUSICCALLBACK_EXPECTED_ONLY


def test_a_task_never_expected_is_refused_and_nothing_dispatched(make_app: AppFactory) -> None:
    app = make_app(EXPECTED_ONLY=True)
    with record_signals(app) as recorded:
        assert post(app, build_callback("complete", task_id="stranger")) == UNEXPECTED
    assert recorded == [
        ("callback_rejected", {"reason": "unexpected_task", "errors": {}, "status": 403})
    ]
    music = app.extensions["musiccallback"].extension
    with app.app_context():
        music.expect("stranger")
    with record_signals(app) as recorded:
        assert post(app, build_callback("complete", task_id="stranger")) == RECEIVED
    assert "all_tracks_generated" in names(recorded)


def test_a_task_created_by_a_callback_is_not_expected(make_app: AppFactory) -> None:
    """Only ``music.expect`` makes a task expected: the first callback of a stranger's task,
    accepted before the option was on, creates the task but does not vouch for it."""
    app = make_app()
    assert post(app, build_callback("first", task_id="made-up")) == RECEIVED
    strict = make_app(EXPECTED_ONLY=True, _store=app.extensions["musiccallback"].store)
    assert post(strict, build_callback("complete", task_id="made-up")) == UNEXPECTED


def test_a_body_no_family_reads_is_kept_only_for_an_expected_task(make_app: AppFactory) -> None:
    """Behind a source check such a body is kept, not refused (API.md section 9); under
    expected-only a stranger may not fill the store with them."""
    app = make_app(EXPECTED_ONLY=True)
    music = app.extensions["musiccallback"].extension
    with app.app_context():
        music.expect("submitted")
    assert post(app, {"code": 200, "data": {"task_id": "submitted", "what": 1}}) == KEPT
    assert post(app, {"code": 200, "data": {"task_id": "stranger", "what": 1}}) == UNEXPECTED
    assert post(app, {"code": 200, "data": {"what": 1}}) == UNEXPECTED


# MUSICCALLBACK_VERIFY_BY_FETCH


@pytest.fixture
def fetching_app(make_app: AppFactory, provider: FakeProvider) -> Flask:
    return make_app(VERIFY_BY_FETCH=True, API_KEY=API_KEY, API_BASE_URL=provider.url)


def test_a_callback_the_record_confirms_is_received(
    fetching_app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("task-ok", "SUCCESS")
    with record_signals(fetching_app) as recorded:
        assert post(fetching_app, build_callback("complete", task_id="task-ok")) == RECEIVED
    assert "all_tracks_generated" in names(recorded)
    assert provider.requests == [{"task_id": "task-ok", "authorization": f"Bearer {API_KEY}"}]


def test_links_the_record_lacks_are_refused_and_logged(
    fetching_app: Flask, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.statuses("task-forged", "SUCCESS")
    forged = build_callback("complete", task_id="task-forged")
    forged["data"]["data"][1]["audio_url"] = "https://attacker.example/a.mp3"
    with caplog.at_level(logging.WARNING), record_signals(fetching_app) as recorded:
        assert post(fetching_app, forged) == UNVERIFIED
    assert names(recorded) == ["callback_rejected"]
    assert "task-forged" in caplog.text
    assert "attacker.example" in caplog.text


def test_a_track_the_record_lacks_is_refused(fetching_app: Flask, provider: FakeProvider) -> None:
    provider.script("task-ids", record("task-ids", "SUCCESS", tracks=camel_tracks("complete", "x")))
    assert post(fetching_app, build_callback("complete", task_id="task-ids")) == UNVERIFIED


@pytest.mark.parametrize(
    ("claimed", "status"),
    [
        ("complete", "GENERATE_AUDIO_FAILED"),
        ("complete", "FIRST_SUCCESS"),  # an earlier record confirms no later stage
        ("complete", "PENDING"),  # the provider has not recorded what the callback claims
    ],
)
def test_a_stage_the_record_contradicts_is_refused(
    fetching_app: Flask, provider: FakeProvider, claimed: str, status: str
) -> None:
    provider.statuses("task-x", status)
    with record_signals(fetching_app) as recorded:
        assert post(fetching_app, build_callback(claimed, task_id="task-x")) == UNVERIFIED
    assert names(recorded) == ["callback_rejected"]


def test_a_record_confirms_its_stage_and_the_earlier_ones(
    fetching_app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("task-first", "FIRST_SUCCESS")
    assert post(fetching_app, build_callback("text", task_id="task-first")) == RECEIVED
    assert post(fetching_app, build_callback("first", task_id="task-first")) == RECEIVED
    assert post(fetching_app, build_callback("complete", task_id="task-first")) == UNVERIFIED


def test_a_failure_is_confirmed_by_a_failed_record_only(
    fetching_app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("task-ok", "SUCCESS")
    assert post(fetching_app, build_callback("failed", task_id="task-ok")) == UNVERIFIED
    provider.statuses("task-failed", "GENERATE_AUDIO_FAILED")
    assert post(fetching_app, build_callback("failed", task_id="task-failed")) == RECEIVED


def test_a_provider_erroring_answers_retry_and_claims_nothing(
    fetching_app: Flask, provider: FakeProvider
) -> None:
    body = build_callback("complete", task_id="task-down")
    provider.script(
        "task-down", Answer(500, {"code": 500, "msg": "boom"}), record("task-down", "SUCCESS")
    )
    with record_signals(fetching_app) as recorded:
        assert post(fetching_app, body) == RETRY
    assert recorded == []
    assert post(fetching_app, body) == RECEIVED  # the provider's redelivery


def test_a_provider_out_of_reach_answers_retry(make_app: AppFactory) -> None:
    app = make_app(
        VERIFY_BY_FETCH=True, API_KEY=API_KEY, API_BASE_URL=f"http://127.0.0.1:{free_port()}"
    )
    assert post(app, build_callback("complete", task_id="task-gone")) == RETRY


def test_another_family_is_confirmed_at_its_own_record_endpoint(
    fetching_app: Flask, provider: FakeProvider
) -> None:
    body = build_callback("complete", family="wav", task_id="task-wav")
    link = body["data"]["audioWavUrl"]
    provider.script(
        "task-wav", record_answer("task-wav", "SUCCESS", response={"audioWavUrl": link})
    )
    assert post(fetching_app, body) == RECEIVED
    provider.script(
        "task-wav2",
        record_answer("task-wav2", "SUCCESS", response={"audioWavUrl": "https://cdn/other.wav"}),
    )
    body["data"]["task_id"] = "task-wav2"
    assert post(fetching_app, body) == UNVERIFIED
    assert provider.paths == ["/api/v1/wav/record-info"] * 2


def test_verify_by_fetch_needs_the_api_key(make_app: AppFactory) -> None:
    with pytest.raises(ConfigurationError, match="MUSICCALLBACK_API_KEY"):
        make_app(VERIFY_BY_FETCH=True)


@pytest.mark.parametrize("key", ["EXPECTED_ONLY", "VERIFY_BY_FETCH"])
def test_the_options_are_true_or_false(make_app: AppFactory, key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"MUSICCALLBACK_{key}"):
        make_app(**{key: "yes"}, API_KEY=API_KEY)


# The OpenAPI document


def test_the_document_lists_the_answers_of_the_options_on(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    app = make_app(
        EXPECTED_ONLY=True,
        VERIFY_BY_FETCH=True,
        API_KEY=API_KEY,
        ALLOWED_IPS=["127.0.0.1"],
    )
    responses = app.extensions["musiccallback"].extension.openapi()["paths"]["/music-callback"][
        "post"
    ]["responses"]
    reason = responses["403"]["content"]["application/json"]["schema"]["allOf"][1]
    assert reason == {"properties": {"reason": {"enum": ["forbidden", "unexpected_task"]}}}
    assert responses["409"]["content"]["application/json"]["example"] == UNVERIFIED[1]
