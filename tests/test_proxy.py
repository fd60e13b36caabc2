"""Behind a reverse proxy: the allow-list sees the client through ProxyFix, and only through it;
``callback_url()`` gives the public address."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_musiccallback import MusicCallback
from flask_musiccallback.testing import build_callback

from .conftest import TOKEN, URL, AppFactory
from .live_server import exchange, request_bytes, serve

PROXY = "10.0.0.2"
PROVIDER = "203.0.113.7"
ALLOWED = ["203.0.113.0/24"]


def _behind_proxy(app: Flask, **trusted: int) -> Flask:
    app.wsgi_app = ProxyFix(app.wsgi_app, **trusted)  # type: ignore[method-assign]
    return app


def _post_via_proxy(app: Flask, forwarded_for: str | None) -> int:
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    response = app.test_client().post(
        URL,
        json=build_callback("complete"),
        headers=headers,
        environ_base={"REMOTE_ADDR": PROXY},
    )
    return response.status_code


def test_behind_proxyfix_the_allow_list_sees_the_provider(make_app: AppFactory) -> None:
    app = _behind_proxy(make_app(ALLOWED_IPS=ALLOWED), x_for=1)
    assert _post_via_proxy(app, PROVIDER) == 200
    assert _post_via_proxy(app, "198.51.100.9") == 403


def test_without_proxyfix_a_forwarded_for_header_is_not_believed(make_app: AppFactory) -> None:
    app = make_app(ALLOWED_IPS=ALLOWED)
    assert _post_via_proxy(app, PROVIDER) == 403


def test_a_forged_entry_before_the_proxys_own_is_ignored(make_app: AppFactory) -> None:
    """The proxy appends the address it saw; whatever the caller wrote before it is not trusted."""
    app = _behind_proxy(make_app(ALLOWED_IPS=ALLOWED), x_for=1)
    assert _post_via_proxy(app, f"{PROVIDER}, 198.51.100.9") == 403


def test_two_trusted_proxies_take_the_second_address_from_the_end(make_app: AppFactory) -> None:
    app = _behind_proxy(make_app(ALLOWED_IPS=ALLOWED), x_for=2)
    assert _post_via_proxy(app, f"198.51.100.9, {PROVIDER}, 10.0.0.3") == 200
    assert _post_via_proxy(app, f"{PROVIDER}, 198.51.100.9, 10.0.0.3") == 403


def test_the_allow_list_behind_a_proxy_over_a_real_socket(make_app: AppFactory) -> None:
    app = _behind_proxy(make_app(ALLOWED_IPS=ALLOWED), x_for=1)
    body = build_callback("complete")

    def post(forwarded_for: str | None) -> int | None:
        headers = [(b"Content-Type", b"application/json")]
        if forwarded_for:
            headers.append((b"X-Forwarded-For", forwarded_for.encode()))
        raw = request_bytes(URL, json.dumps(body).encode(), headers=headers)
        return exchange(server.port, raw).status

    with serve(app) as server:
        assert post(None) == 403  # 127.0.0.1 itself is not on the list
        assert post(PROVIDER) == 200
        assert post("198.51.100.9") == 403


def test_the_external_url_is_the_base_anywhere(make_app: AppFactory) -> None:
    app = make_app(EXTERNAL_URL="https://hooks.example.com/app/")
    music = app.extensions["musiccallback"].extension
    expected = f"https://hooks.example.com/app/music-callback?token={TOKEN}"
    assert music.callback_url() == expected
    with app.test_request_context("/", base_url="http://10.0.0.5:8000"):
        assert music.callback_url() == expected
    result = app.test_cli_runner().invoke(args=["musiccallback", "url"])
    assert result.output.strip() == expected


def test_without_an_external_url_proxyfix_gives_the_public_scheme_and_host(
    make_app: AppFactory,
) -> None:
    app = _behind_proxy(make_app(), x_for=1, x_proto=1, x_host=1)
    music = app.extensions["musiccallback"].extension
    seen: list[str] = []

    @app.get("/where")
    def where() -> str:
        seen.append(music.callback_url())
        return "ok"

    app.test_client().get(
        "/where",
        base_url="http://10.0.0.5:8000",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example.com"},
    )
    assert seen == [f"https://public.example.com/music-callback?token={TOKEN}"]


def test_callback_url_outside_a_request_needs_a_base() -> None:
    app = Flask(__name__)
    app.testing = True
    app.config["MUSICCALLBACK_TOKEN"] = TOKEN
    music = MusicCallback(app)
    with pytest.raises(RuntimeError, match="MUSICCALLBACK_EXTERNAL_URL"):
        music.callback_url()
