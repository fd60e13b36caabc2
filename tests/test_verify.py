"""Source checks: token, HMAC signature with a timestamp window, IP allow-list, and the warning."""

from __future__ import annotations

import threading
import time
import warnings

import httpx
import pytest
from flask import Flask
from werkzeug.serving import make_server

from flask_musiccallback import ConfigurationError, MusicCallback, MusicCallbackInsecureWarning
from flask_musiccallback.testing import build_callback, record_signals, signature_headers

from .conftest import TOKEN, URL, AppFactory

UNAUTHORIZED = {"status": "rejected", "reason": "unauthorized"}
FORBIDDEN = {"status": "rejected", "reason": "forbidden"}
KEY = "hmac-key-for-tests"


# Token


@pytest.mark.parametrize("query", ["", "?token=", "?token=wrong", f"?token={TOKEN}x", "?tok=x"])
def test_missing_or_wrong_token_is_unauthorized(make_app: AppFactory, query: str) -> None:
    answer = make_app().test_client().post(f"/music-callback{query}", json=build_callback())
    assert answer.status_code == 401
    assert answer.get_json() == UNAUTHORIZED


def test_without_the_token_nothing_else_is_learned(make_app: AppFactory) -> None:
    client = make_app(MAX_CONTENT_LENGTH=10).test_client()
    for body in (b"not json", b"{}", b"x" * 100):
        assert client.post("/music-callback", data=body).status_code == 401


def test_token_list_allows_rotation(make_app: AppFactory) -> None:
    client = make_app(TOKEN=["new-token", "old-token"]).test_client()
    for token in ("new-token", "old-token"):
        answer = client.post(f"/music-callback?token={token}", json=build_callback())
        assert answer.status_code == 200
    assert client.post("/music-callback?token=other", json=build_callback()).status_code == 401


def test_non_ascii_token_is_refused_cleanly(make_app: AppFactory) -> None:
    client = make_app().test_client()
    answer = client.post("/music-callback?token=%C3%A9%F0%9F%8E%B5", json=build_callback())
    assert answer.status_code == 401


# HMAC signatures


@pytest.fixture
def signed_app(make_app: AppFactory) -> Flask:
    return make_app(TOKEN=None, HMAC_KEY=KEY)


def test_valid_signature_is_accepted(signed_app: Flask) -> None:
    payload = build_callback(task_id="task-1")
    answer = signed_app.test_client().post(
        "/music-callback", json=payload, headers=signature_headers("task-1", KEY)
    )
    assert answer.status_code == 200


def test_signature_over_camel_case_task_id_is_accepted(signed_app: Flask) -> None:
    payload = build_callback(task_id="task-2")
    payload["data"]["taskId"] = payload["data"].pop("task_id")
    answer = signed_app.test_client().post(
        "/music-callback", json=payload, headers=signature_headers("task-2", KEY)
    )
    assert answer.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Webhook-Timestamp": str(int(time.time()))},
        {"X-Webhook-Signature": "abc"},
        {"X-Webhook-Timestamp": "soon", "X-Webhook-Signature": "abc"},
        {"X-Webhook-Timestamp": "-5", "X-Webhook-Signature": "abc"},
        {"X-Webhook-Timestamp": "9" * 40, "X-Webhook-Signature": "abc"},
        signature_headers("another-task", KEY),
        signature_headers("task-3", "another-key"),
        {**signature_headers("task-3", KEY), "X-Webhook-Signature": "not base64 at all é"},
    ],
)
def test_missing_or_wrong_signature_is_unauthorized(
    signed_app: Flask, headers: dict[str, str]
) -> None:
    answer = signed_app.test_client().post(
        "/music-callback", json=build_callback(task_id="task-3"), headers=headers
    )
    assert answer.status_code == 401
    assert answer.get_json() == UNAUTHORIZED


# Clear of the 300 s edge by more than the second the timestamp's rounding down takes and the
# moment a busy machine takes between signing and checking: a bound test must not be timed.
@pytest.mark.parametrize("offset", [-310, 310, -86400, 86400])
def test_timestamp_outside_the_window_is_unauthorized(signed_app: Flask, offset: int) -> None:
    headers = signature_headers("task-4", KEY, timestamp=int(time.time()) + offset)
    answer = signed_app.test_client().post(
        "/music-callback", json=build_callback(task_id="task-4"), headers=headers
    )
    assert answer.status_code == 401


@pytest.mark.parametrize("offset", [-290, 290])
def test_timestamp_inside_the_window_both_ways_is_accepted(
    signed_app: Flask, offset: int
) -> None:
    headers = signature_headers("task-5", KEY, timestamp=int(time.time()) + offset)
    answer = signed_app.test_client().post(
        "/music-callback", json=build_callback(task_id="task-5"), headers=headers
    )
    assert answer.status_code == 200


def test_tolerance_is_configurable(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None, HMAC_KEY=KEY, TIMESTAMP_TOLERANCE=10)
    headers = signature_headers("task-6", KEY, timestamp=int(time.time()) - 60)
    answer = app.test_client().post(
        "/music-callback", json=build_callback(task_id="task-6"), headers=headers
    )
    assert answer.status_code == 401


def test_hmac_key_list_allows_rotation(make_app: AppFactory) -> None:
    client = make_app(TOKEN=None, HMAC_KEY=["key-new", "key-old"]).test_client()
    for key in ("key-new", "key-old"):
        payload = build_callback()
        task_id = payload["data"]["task_id"]
        answer = client.post(
            "/music-callback", json=payload, headers=signature_headers(task_id, key)
        )
        assert answer.status_code == 200


def test_signed_request_with_a_malformed_body_learns_nothing(signed_app: Flask) -> None:
    client = signed_app.test_client()
    headers = signature_headers("task-7", KEY)
    for body in (b"not json", b"[]", b'{"code": 200}'):
        answer = client.post("/music-callback", data=body, headers=headers)
        assert answer.status_code == 401


def test_signature_is_checked_before_the_payload_is_validated(signed_app: Flask) -> None:
    payload = {"code": 200, "data": {"task_id": "task-8", "callbackType": "bogus"}}
    client = signed_app.test_client()
    wrong = client.post("/music-callback", json=payload, headers=signature_headers("x", KEY))
    right = client.post("/music-callback", json=payload, headers=signature_headers("task-8", KEY))
    # Signed right, a body no family reads is kept (200): the signature is a source check.
    assert (wrong.status_code, right.get_json()) == (401, {"status": "kept"})


def test_token_and_signature_are_both_required_when_both_are_set(make_app: AppFactory) -> None:
    client = make_app(HMAC_KEY=KEY).test_client()
    payload = build_callback(task_id="task-9")
    headers = signature_headers("task-9", KEY)
    assert client.post("/music-callback", json=payload, headers=headers).status_code == 401
    assert client.post(URL, json=payload).status_code == 401
    assert client.post(URL, json=payload, headers=headers).status_code == 200


# IP allow-list


@pytest.mark.parametrize(
    ("allowed", "address", "status"),
    [
        (["203.0.113.7"], "203.0.113.7", 200),
        (["203.0.113.7"], "203.0.113.8", 403),
        (["203.0.113.0/24"], "203.0.113.200", 200),
        (["203.0.113.0/24", "2001:db8::/32"], "2001:db8::1", 200),
        (["2001:db8::/32"], "2001:db9::1", 403),
        ("198.51.100.0/24", "198.51.100.1", 200),
        # An IPv4 caller as a server listening on [::] sees it.
        (["203.0.113.7"], "::ffff:203.0.113.7", 200),
        (["203.0.113.0/24"], "::ffff:203.0.113.200", 200),
        (["203.0.113.7"], "::ffff:203.0.113.8", 403),
    ],
)
def test_ip_allow_list_by_address_or_network(
    make_app: AppFactory, allowed: list[str] | str, address: str, status: int
) -> None:
    client = make_app(ALLOWED_IPS=allowed).test_client()
    answer = client.post(URL, json=build_callback(), environ_base={"REMOTE_ADDR": address})
    assert answer.status_code == status
    if status == 403:
        assert answer.get_json() == FORBIDDEN


def test_ipv4_allow_list_admits_ipv4_callers_of_a_server_on_all_ipv6_addresses(
    make_app: AppFactory,
) -> None:
    app = make_app(ALLOWED_IPS=["127.0.0.1"])
    server = make_server("::", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        answer = httpx.post(
            f"http://127.0.0.1:{server.server_port}{URL}", json=build_callback(), timeout=10
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    assert (answer.status_code, answer.json()) == (200, {"status": "received"})


def test_forbidden_address_learns_nothing_else(make_app: AppFactory) -> None:
    client = make_app(ALLOWED_IPS=["10.0.0.1"]).test_client()
    answer = client.post(
        "/music-callback", data=b"garbage", environ_base={"REMOTE_ADDR": "192.0.2.1"}
    )
    assert answer.status_code == 403


def test_invalid_allow_list_fails_at_start_up() -> None:
    app = Flask(__name__)
    app.config["MUSICCALLBACK_ALLOWED_IPS"] = ["not-an-address"]
    with pytest.raises(ConfigurationError, match="MUSICCALLBACK_ALLOWED_IPS"):
        MusicCallback(app)


def test_rejections_are_signalled_with_their_status(make_app: AppFactory) -> None:
    app = make_app(ALLOWED_IPS=["10.0.0.1"])
    with record_signals(app) as recorded:
        app.test_client().post(URL, json={}, environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert recorded == [
        ("callback_rejected", {"reason": "forbidden", "errors": {}, "status": 403})
    ]


# The insecure warning


def test_insecure_configuration_warns_at_start_up() -> None:
    app = Flask(__name__)
    with pytest.warns(MusicCallbackInsecureWarning, match="MUSICCALLBACK_TOKEN"):
        MusicCallback(app)


@pytest.mark.parametrize(
    "config",
    [
        {"MUSICCALLBACK_TOKEN": "t"},
        {"MUSICCALLBACK_HMAC_KEY": "k"},
        {"MUSICCALLBACK_ALLOWED_IPS": ["10.0.0.0/8"]},
        {"TESTING": True},
    ],
)
def test_no_warning_when_secured_or_testing(config: dict[str, object]) -> None:
    app = Flask(__name__)
    app.config.update(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MusicCallback(app)
