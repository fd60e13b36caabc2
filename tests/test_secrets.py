"""Secrets never leave the process: not in logs, stored headers, answers, reprs or timings."""

from __future__ import annotations

import hmac
import json
import logging
import sys
from typing import Any

import pytest
from flask import Flask, request
from hypothesis import given
from hypothesis import strategies as st

from flask_musiccallback import ConfigurationError, Delivery
from flask_musiccallback.endpoint import KEPT_HEADERS, kept_headers
from flask_musiccallback.families import find_task_id
from flask_musiccallback.redact import (
    REDACTED,
    TokenRedactingFilter,
    install_log_filters,
    redact_token,
    redact_url,
)
from flask_musiccallback.stores.base import ClaimResult, StoreError
from flask_musiccallback.testing import build_callback, record_signals, signature_headers
from flask_musiccallback.verify import SIGNATURE_HEADER

from .conftest import TOKEN, URL, AppFactory, build_app
from .live_server import exchange, request_bytes, serve
from .payloads import encode, json_values, mutated_callbacks
from .servers import free_port
from .test_store_contract import DictStore

HMAC_KEY = "hmac-key-that-must-stay-inside"
API_KEY = "provider-api-key-that-must-stay-inside"
SECRETS = (TOKEN, HMAC_KEY, API_KEY)


class KeepingStore(DictStore):
    """A persistent store that keeps what it is handed, to see what a real one would."""

    def __init__(self) -> None:
        super().__init__(ttl=60)
        self.deliveries: list[Delivery] = []

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        self.deliveries.append(delivery)
        return super().claim(delivery, queued=queued)


# --- logs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (f"POST {URL}&x=1 HTTP/1.1", f"POST /music-callback?token={REDACTED}&x=1 HTTP/1.1"),
        ("/hook?a=1&token=abc", f"/hook?a=1&token={REDACTED}"),
        ("/hook?%74oken=abc", f"/hook?%74oken={REDACTED}"),
        ("token=abc&page=2", f"token={REDACTED}&page=2"),
        ("/hook?tokens=abc&my_token=def", "/hook?tokens=abc&my_token=def"),
        ("/hook?token=", "/hook?token="),
        ("no query here", "no query here"),
    ],
)
def test_redact_token_replaces_the_token_value_only(text: str, redacted: str) -> None:
    assert redact_token(text) == redacted


def test_the_token_never_reaches_the_werkzeug_log(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app()
    body = encode(build_callback("complete"))
    requests = [
        request_bytes(URL, body, headers=[(b"Content-Type", b"application/json")]),
        request_bytes(URL, b"not json"),
        request_bytes(f"/music-callback?%74oken={TOKEN}", body),
        request_bytes(f"/elsewhere?token={TOKEN}", body),
        f"POST {URL} HTTP/9.9\r\n\r\n".encode(),  # a bad request line is logged as it came
        f"GET {URL}\r\n\r\n".encode(),
    ]
    with serve(app) as server:
        statuses = [exchange(server.port, raw).status for raw in requests]
    assert statuses[:4] == [200, 400, 200, 404]
    messages = [record.getMessage() for record in caplog.records]
    assert any("/music-callback" in message for message in messages)
    assert not [message for message in messages if TOKEN in message]


def test_the_filter_redacts_mapping_arguments_as_gunicorn_logs_them() -> None:
    record = logging.LogRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        '%(h)s "%(r)s" %(s)s %(q)s',
        None,
        None,
    )
    record.args = {"h": "10.0.0.1", "r": f"POST {URL} HTTP/1.1", "s": "200", "q": f"token={TOKEN}"}
    assert TokenRedactingFilter().filter(record) is True
    assert TOKEN not in record.getMessage()
    assert record.getMessage().startswith('10.0.0.1 "POST /music-callback?token=[redacted]')


def test_the_filter_redacts_an_exception_text_that_quotes_the_request_line() -> None:
    try:
        raise ValueError(f"cannot read POST {URL} HTTP/1.1")
    except ValueError:
        record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())  # fmt: skip
    record.stack_info = f"Stack (most recent call last):\n  handling {URL}"
    assert TokenRedactingFilter().filter(record) is True
    written = logging.Formatter().format(record)
    assert f"cannot read POST /music-callback?token={REDACTED} HTTP/1.1" in written
    assert TOKEN not in written


def test_the_filter_is_installed_once_on_each_access_logger(make_app: AppFactory) -> None:
    make_app()
    make_app()
    install_log_filters()
    for name in ("werkzeug", "gunicorn.access"):
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, TokenRedactingFilter) for f in filters) == 1


# --- stored headers ------------------------------------------------------------------------------


def test_stored_headers_hold_neither_the_token_nor_the_signature(make_app: AppFactory) -> None:
    store = KeepingStore()
    app = make_app(HMAC_KEY=HMAC_KEY, _store=store)
    payload = build_callback("complete")
    headers = {**signature_headers(payload["data"]["task_id"], HMAC_KEY), "User-Agent": "provider"}
    response = app.test_client().post(URL, json=payload, headers=headers)
    assert response.status_code == 200
    (delivery,) = store.deliveries
    assert delivery.headers[SIGNATURE_HEADER] == REDACTED
    assert delivery.headers["User-Agent"] == "provider"
    stored = json.dumps([dict(delivery.headers), dict(delivery.payload)])
    assert headers[SIGNATURE_HEADER] not in stored
    for secret in SECRETS:
        assert secret not in stored


def test_kept_headers_redact_the_signature(app: Flask) -> None:
    headers = {SIGNATURE_HEADER: "c2lnbmF0dXJl", "Authorization": f"Bearer {TOKEN}"}
    with app.test_request_context(URL, method="POST", headers=headers):
        kept = kept_headers()
    assert kept[SIGNATURE_HEADER] == REDACTED
    assert "Authorization" not in kept
    assert TOKEN not in json.dumps(kept)


def test_kept_headers_are_the_request_headers_of_those_names(app: Flask) -> None:
    sent = {name: f"value of {name}" for name in KEPT_HEADERS if name != SIGNATURE_HEADER}
    with app.test_request_context(
        URL,
        method="POST",
        headers={**sent, "X-Other": "not kept"},
        data=b"{}",
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    ):
        expected = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
        kept = kept_headers()
    assert kept == {**expected, "Remote-Addr": "127.0.0.1"}
    assert set(expected) == set(sent)


# --- answers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> Flask:
    """An app with every check on, and the secrets planted in its configuration."""
    return build_app(HMAC_KEY=HMAC_KEY, API_KEY=API_KEY, MAX_CONTENT_LENGTH=4096)


def _planted(payload: Any, secret: str) -> Any:
    """``payload`` with ``secret`` as a value and as a key, where it may be echoed back."""
    if isinstance(payload, dict):
        return {**payload, secret: secret, "data": _planted(payload.get("data"), secret)}
    if isinstance(payload, list):
        return [*payload, secret]
    return secret


@given(
    payload=mutated_callbacks() | json_values,
    secret=st.sampled_from(SECRETS),
    signed=st.booleans(),
    token=st.sampled_from([TOKEN, "wrong", ""]),
)
def test_no_answer_and_no_rejection_report_carries_a_secret(
    guarded: Flask, payload: Any, secret: str, signed: bool, token: str
) -> None:
    body = encode(_planted(payload, secret))
    task_id = find_task_id(payload) if isinstance(payload, dict) else None
    headers = signature_headers(task_id or "", HMAC_KEY) if signed else {}
    with record_signals(guarded) as recorded:
        response = guarded.test_client().post(
            f"/music-callback?token={token}",
            data=body,
            headers={**headers, "X-Secret": secret},
            content_type="application/json",
        )
    assert response.status_code < 500
    reports = json.dumps([kwargs.get("errors") for name, kwargs in recorded], default=str)
    for text in (response.get_data(as_text=True), reports):
        for leaked in (*SECRETS, headers.get(SIGNATURE_HEADER, SECRETS[0])):
            assert leaked not in text


# --- configuration -------------------------------------------------------------------------------


def test_settings_repr_shows_no_secret(make_app: AppFactory) -> None:
    app = make_app(HMAC_KEY=HMAC_KEY, API_KEY=API_KEY)
    text = repr(app.extensions["musiccallback"].settings) + repr(app.extensions["musiccallback"])
    for secret in SECRETS:
        assert secret not in text
        assert repr(secret.encode()) not in text


def test_a_bad_api_key_is_not_repeated_in_the_error(make_app: AppFactory) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_app(API_KEY=12345678987654321)
    assert "12345678987654321" not in str(raised.value)


# --- constant-time comparison --------------------------------------------------------------------


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every ``hmac.compare_digest`` call, as the lengths of what it compared."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


@pytest.mark.parametrize("given_token", [TOKEN, "short", "x" * 500, "second-token"])
def test_every_token_is_compared_in_constant_time_and_length(
    make_app: AppFactory, comparisons: list[tuple[int, int]], given_token: str
) -> None:
    app = make_app(TOKEN=[TOKEN, "second-token", "third-token-is-longer-than-the-others"])
    response = app.test_client().post(
        f"/music-callback?token={given_token}", json=build_callback("complete")
    )
    assert response.status_code == (200 if given_token in (TOKEN, "second-token") else 401)
    assert comparisons == [(32, 32)] * 3  # all three, whatever matched, as equal-length digests


def test_every_hmac_key_is_compared_without_stopping_at_a_match(
    make_app: AppFactory, comparisons: list[tuple[int, int]]
) -> None:
    app = make_app(TOKEN=None, HMAC_KEY=[HMAC_KEY, "older-hmac-key"])
    payload = build_callback("complete")
    headers = signature_headers(payload["data"]["task_id"], HMAC_KEY)
    assert (
        app.test_client().post("/music-callback", json=payload, headers=headers).status_code == 200
    )
    assert comparisons == [(32, 32)] * 2


# --- store URLs ----------------------------------------------------------------------------------

PASSWORD = "s3cret-store-password"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg://user:{PASSWORD}@db.internal:5432/app",
            "postgresql+psycopg://user:***@db.internal:5432/app",
        ),
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"rediss://user:{PASSWORD}@cache:6380/0", "rediss://user:***@cache:6380/0"),
        (f"mongodb://user:{PASSWORD}@db.internal/app", "mongodb://user:***@db.internal/app"),
        (f"redis://user:{PASSWORD}%40x@cache/0", "redis://user:***@cache/0"),
        ("redis://user:pass@word@cache/0", "redis://user:***@cache/0"),
        (f"redis://cache/0?password={PASSWORD}", "redis://cache/0?password=***"),
        (f"redis://user:{PASSWORD}/0", "redis://user:***/0"),
        (f"user:{PASSWORD}@db.internal/app", "user:***@db.internal/app"),
        ("redis://[::1]:6379/0?prefix=a:b", "redis://[::1]:6379/0?prefix=a:b"),
        ("sqlite:////var/lib/app/callbacks.db", "sqlite:////var/lib/app/callbacks.db"),
        ("memory://?max_entries=10", "memory://?max_entries=10"),
    ],
)
def test_redact_url_masks_the_password_of_any_store_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"postgresql://user:{PASSWORD}@db/app?lease=60", "postgresql://user:***@db/app?lease=60"),
        (
            f"unix:///run/redis.sock?password={PASSWORD}&db=1",
            "unix:///run/redis.sock?password=***&db=1",
        ),
        (f"mongodb://user:{PASSWORD}@db.internal/app", "mongodb://user:***@db.internal/app"),
    ],
)
def test_redact_url_needs_no_sqlalchemy(
    monkeypatch: pytest.MonkeyPatch, url: str, shown: str
) -> None:
    for module in ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.exc"):
        monkeypatch.setitem(sys.modules, module, None)  # what ``import`` sees when not installed
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("store", "what"),
    [
        (f"postgresql+psycopg://user:{PASSWORD}@localhost/app?lease=soon", "lease must be"),
        (f"redis://:{PASSWORD}@localhost:6379/0?lease=soon", "lease must be"),
        (f"rediss://user:{PASSWORD}@localhost:6380/0?lease=soon", "lease must be"),
        (f"mongodb://user:{PASSWORD}@localhost/app", "No store for the URL scheme 'mongodb'"),
        (f"redis://user:{PASSWORD}/0", "Not a usable Redis URL: 'redis://user:***/0' (Port"),
        (f"redis://:{PASSWORD}@localhost:6379/0?db=first", "Invalid value for 'db'"),
        (f"postgresql+psycopg://user:{PASSWORD}/app", "Not a usable database URL"),
        (f"memory://user:{PASSWORD}@localhost?max_entries=many", "max_entries must be"),
        (f"postgresql+nodriver://user@localhost/app?password={PASSWORD}", "nodriver"),
        (f"redis://:{PASSWORD}@localhost:6379/0".encode(), "must be a non-empty string"),
        ([f"redis://:{PASSWORD}@localhost:6379/0"], "must be a non-empty string"),
    ],
)
def test_a_bad_store_url_is_reported_without_its_password(
    make_app: AppFactory, store: Any, what: str
) -> None:
    with pytest.raises((StoreError, ConfigurationError)) as raised:
        make_app(STORE=store)
    message = str(raised.value)
    assert what in message
    assert "***" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "store",
    [
        f"postgresql+psycopg://user:{PASSWORD}@localhost/app",
        f"postgresql+psycopg://user@localhost/app?password={PASSWORD}",
        f"redis://:{PASSWORD}@localhost:6379/0",
        f"rediss://user:{PASSWORD}@localhost:6380/0?prefix=shop:",
    ],
)
def test_settings_and_state_reprs_show_the_store_without_its_password(
    make_app: AppFactory, store: str
) -> None:
    state = make_app(STORE=store).extensions["musiccallback"]
    for text in (repr(state.settings), repr(state)):
        assert f"store_url={redact_url(store)!r}" in text
        assert PASSWORD not in text


def test_an_unreachable_database_is_logged_without_the_password_in_its_query(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = f"postgresql+psycopg://user@127.0.0.1:{free_port()}/app?password={PASSWORD}"
    app = make_app(STORE=store)
    response = app.test_client().post(URL, json=build_callback("complete"))
    assert response.status_code == 503
    messages = [record.getMessage() for record in caplog.records]
    assert any("unreachable" in message and "127.0.0.1" in message for message in messages)
    assert not [message for message in messages if PASSWORD in message]
