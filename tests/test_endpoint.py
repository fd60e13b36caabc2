"""The endpoint answers exactly as the public contract says, and never with a 500."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_musiccallback import all_tracks_generated, callback_received, callback_rejected
from flask_musiccallback.testing import build_callback, record_signals
from flask_musiccallback.verify import Refusal

from .conftest import URL, AppFactory
from .fake_provider import FakeProvider
from .servers import serve


def test_new_delivery_is_received(client: FlaskClient) -> None:
    answer = client.post(URL, json=build_callback("complete"))
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "received"}
    assert answer.mimetype == "application/json"


def test_repeated_delivery_is_answered_duplicate(client: FlaskClient) -> None:
    payload = build_callback("complete")
    client.post(URL, json=payload)
    answer = client.post(URL, json=payload)
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "duplicate"}


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b"[1, 2]", b'"text"', b"null", b"42", b"\xff\xfe\xfa",
     b"[" * 100_000 + b"]" * 100_000],
)
def test_body_that_is_not_a_json_object_is_invalid_json(client: FlaskClient, body: bytes) -> None:
    answer = client.post(URL, data=body, content_type="application/json")
    assert answer.status_code == 400
    assert answer.get_json() == {"status": "rejected", "reason": "invalid_json"}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_has_not_are_invalid_json(client: FlaskClient, constant: str) -> None:
    """Python's parser reads them; no JSON column would keep them, so no store could."""
    body = json.dumps(build_callback("complete"))
    body = body.replace('"duration": ', f'"bpm": {constant}, "duration": ', 1)
    answer = client.post(URL, data=body.encode(), content_type="application/json")
    assert answer.status_code == 400
    assert answer.get_json() == {"status": "rejected", "reason": "invalid_json"}


@pytest.fixture
def open_client(make_app: AppFactory) -> FlaskClient:
    """A client of an app with no source check: there a body no family reads is refused (422),
    where behind a token it would be kept (tests/test_unreadable.py)."""
    return make_app(TOKEN=None).test_client()


OPEN_URL = "/music-callback"


def test_json_that_is_not_a_callback_is_invalid_payload_with_errors(
    open_client: FlaskClient,
) -> None:
    answer = open_client.post(OPEN_URL, json={"code": 200, "data": {"callbackType": "complete"}})
    assert answer.status_code == 422
    body = answer.get_json()
    assert body["status"] == "rejected"
    assert body["reason"] == "invalid_payload"
    assert body["errors"] == {"data": {"task_id": ["Missing task id."]}}


def test_wrong_field_type_is_invalid_payload(open_client: FlaskClient) -> None:
    payload = build_callback("complete")
    payload["data"]["data"][0]["duration"] = "long"
    answer = open_client.post(OPEN_URL, json=payload)
    assert answer.status_code == 422
    assert answer.get_json()["errors"]["data"]["data"]["0"]["duration"]


def test_huge_numbers_are_refused_not_crashed(client: FlaskClient) -> None:
    body = b'{"code": ' + b"9" * 5000 + b', "data": {"task_id": "t", "callbackType": "text"}}'
    answer = client.post(URL, data=body, content_type="application/json")
    assert answer.status_code in (400, 422)


def test_content_type_is_not_required(client: FlaskClient) -> None:
    body = json.dumps(build_callback("text")).encode()
    answer = client.post(URL, data=body, content_type="text/plain")
    assert answer.status_code == 200


def test_only_post_is_allowed(client: FlaskClient) -> None:
    assert client.get(URL).status_code == 405


def test_declared_length_over_the_limit_is_too_large(make_app: AppFactory) -> None:
    client = make_app(MAX_CONTENT_LENGTH=1024).test_client()
    payload = build_callback("complete", tracks=20)
    answer = client.post(URL, json=payload)
    assert answer.status_code == 413
    assert answer.get_json() == {"status": "rejected", "reason": "too_large"}


def test_the_default_limit_accepts_large_real_bodies(client: FlaskClient) -> None:
    payload = build_callback("complete", tracks=2)
    payload["data"]["data"][0]["prompt"] = "la " * 300_000  # ~900 KiB of lyrics
    assert client.post(URL, json=payload).status_code == 200


def test_rejections_are_reported_with_reason_errors_and_status(
    app: Flask, client: FlaskClient
) -> None:
    with record_signals(app) as recorded:
        client.post(URL, data=b"nope")
        client.post("/music-callback", json=build_callback())
    assert recorded == [
        ("callback_rejected", {"reason": "invalid_json", "errors": {}, "status": 400}),
        ("callback_rejected", {"reason": "unauthorized", "errors": {}, "status": 401}),
    ]


def test_no_receiver_runs_for_a_rejected_request(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None)
    with record_signals(app) as recorded:
        app.test_client().post(OPEN_URL, json={"code": 200, "data": {"task_id": "t"}})
    assert [name for name, _ in recorded] == ["callback_rejected"]


def test_a_broken_rejection_receiver_does_not_break_the_answer(
    app: Flask, client: FlaskClient
) -> None:
    def broken(sender: Flask, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    with callback_rejected.connected_to(broken, sender=app):
        answer = client.post(URL, data=b"nope")
    assert answer.status_code == 400


def test_url_rule_is_configurable(make_app: AppFactory) -> None:
    client = make_app(URL_RULE="/hooks/suno").test_client()
    token = URL.partition("?")[2]
    assert client.post(f"/hooks/suno?{token}", json=build_callback()).status_code == 200
    assert client.post(URL, json=build_callback()).status_code == 404


# Over a real socket: what a streaming client, a lying client or a chunked client gets.


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[tuple[Flask, int]]:
    app = make_app(MAX_CONTENT_LENGTH=4096)
    with serve(app) as port:
        yield app, port


def raw_post(port: int, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", URL)
        if "Transfer-Encoding" not in headers and "Content-Length" not in headers:
            headers = {**headers, "Content-Length": str(sum(map(len, chunks)))}
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        for chunk in chunks:
            connection.send(chunk)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_chunked_body_past_the_limit_is_cut_off_as_too_large(
    server: tuple[Flask, int],
) -> None:
    app, port = server
    chunk = b"x" * 1024
    framed = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(64)] + [b"0\r\n\r\n"]
    calls: list[Any] = []
    with callback_received.connected_to(lambda sender, **kw: calls.append(kw), sender=app):
        status, body = raw_post(
            port,
            {"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            framed,
        )
    assert status == 413
    assert json.loads(body) == {"status": "rejected", "reason": "too_large"}
    assert calls == []


def test_chunked_body_within_the_limit_is_read(server: tuple[Flask, int]) -> None:
    _, port = server
    payload = json.dumps(build_callback("text")).encode()
    framed = [b"%x\r\n%s\r\n" % (len(payload), payload), b"0\r\n\r\n"]
    status, body = raw_post(port, {"Transfer-Encoding": "chunked"}, framed)
    assert (status, json.loads(body)) == (200, {"status": "received"})


def test_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    server: tuple[Flask, int],
) -> None:
    _, port = server
    status, body = raw_post(port, {"Content-Length": str(10 * 1024 * 1024)}, [])
    assert status == 413
    assert b"too_large" in body


def test_body_shorter_than_its_declared_length_is_not_a_500(server: tuple[Flask, int]) -> None:
    _app, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("POST", URL)
    connection.putheader("Content-Length", "2000")
    connection.endheaders()
    connection.send(b'{"code": 200')
    connection.sock.shutdown(1)  # type: ignore[union-attr]  # the client stops sending
    response = connection.getresponse()
    assert response.status == 400
    assert b"Traceback" not in response.read()
    connection.close()


def test_stage_signal_fires_over_a_real_socket(server: tuple[Flask, int]) -> None:
    app, port = server
    events: list[Any] = []
    with all_tracks_generated.connected_to(
        lambda sender, event: events.append(event), sender=app
    ):
        status, _ = raw_post(port, {}, [json.dumps(build_callback("complete", tracks=1)).encode()])
    assert status == 200
    assert len(events) == 1


#: A request provoking each refusal, and the configuration it is made under.
REFUSED_REQUESTS: dict[Refusal, tuple[dict[str, Any], str, bytes]] = {
    Refusal.INVALID_JSON: ({}, URL, b"not json"),
    Refusal.UNAUTHORIZED: ({}, "/music-callback", b"{}"),
    Refusal.FORBIDDEN: ({"ALLOWED_IPS": ["10.0.0.0/8"]}, URL, b"{}"),
    Refusal.TOO_LARGE: ({"MAX_CONTENT_LENGTH": 10}, URL, b'{"code": 200, "data": {}}'),
    Refusal.INVALID_PAYLOAD: ({"TOKEN": None}, "/music-callback", b"{}"),
    Refusal.UNEXPECTED_TASK: ({"EXPECTED_ONLY": True}, URL, json.dumps(build_callback()).encode()),
    # Against the fake provider, which records the task as still pending.
    Refusal.UNVERIFIED: (
        {"VERIFY_BY_FETCH": True, "API_KEY": "provider-key"},
        URL,
        json.dumps(build_callback(task_id="unconfirmed")).encode(),
    ),
}


@pytest.mark.parametrize("refusal", list(Refusal), ids=str)
def test_each_refusal_is_answered_and_signalled_with_its_own_status(
    make_app: AppFactory, refusal: Refusal, request: pytest.FixtureRequest
) -> None:
    config, url, body = REFUSED_REQUESTS[refusal]
    if refusal is Refusal.UNVERIFIED:
        provider: FakeProvider = request.getfixturevalue("provider")
        provider.statuses("unconfirmed", "PENDING")
        config = {**config, "API_BASE_URL": provider.url}
    app = make_app(**config)
    with record_signals(app) as recorded:
        answer = app.test_client().post(url, data=body, content_type="application/json")
    assert answer.status_code == refusal.status
    assert answer.get_json()["reason"] == str(refusal)
    [(name, sent)] = recorded
    assert name == "callback_rejected"
    assert (sent["reason"], sent["status"]) == (str(refusal), refusal.status)
