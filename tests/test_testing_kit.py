"""The testing kit (API.md section 8): payload builders, signatures, the signal recorder, the client
that delivers callbacks, and the pytest plugin."""

from __future__ import annotations

import os
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tomllib
from flask import Flask

from flask_musiccallback import CallbackEvent, Stage, all_tracks_generated
from flask_musiccallback.schemas import TRACK_WIRE_KEYS, load_callback
from flask_musiccallback.testing import (
    CallbackClient,
    build_callback,
    callback_credentials,
    record_signals,
    signature_headers,
)

from .conftest import AppFactory, thread_apps

ROOT = Path(__file__).resolve().parent.parent

TRACK_FIELDS = set(TRACK_WIRE_KEYS) - {"duration"}


def test_build_callback_complete_is_shaped_like_real_traffic() -> None:
    payload = build_callback("complete", task_id="t1", tracks=3)

    assert payload["code"] == 200
    assert payload["data"]["callbackType"] == "complete"
    assert payload["data"]["task_id"] == "t1"
    tracks = payload["data"]["data"]
    assert len(tracks) == 3
    for track in tracks:
        assert set(track) >= TRACK_FIELDS
        assert isinstance(track["createTime"], int)  # epoch milliseconds, as real traffic sends
        assert track["audio_url"]
        assert isinstance(track["duration"], float)


def test_build_callback_first_leaves_the_second_track_unfinished() -> None:
    first, second = build_callback("first", task_id="t1")["data"]["data"]

    assert first["audio_url"]
    assert "duration" in first
    assert second["audio_url"] == ""
    assert "duration" not in second
    assert second["stream_audio_url"]


@pytest.mark.parametrize(
    ("stage", "code", "expected_stage", "expected_code"),
    [
        ("text", None, Stage.TEXT, 200),
        ("first", None, Stage.FIRST, 200),
        ("complete", None, Stage.COMPLETE, 200),
        ("failed", None, Stage.FAILED, 501),
        ("complete", 531, Stage.FAILED, 531),
    ],
)
def test_build_callback_loads_into_the_stage_it_names(
    stage: str, code: int | None, expected_stage: Stage, expected_code: int
) -> None:
    event = load_callback(build_callback(stage, task_id="t1", code=code))

    assert event.stage is expected_stage
    assert event.code == expected_code


def test_build_callback_failures_and_text_carry_no_tracks() -> None:
    assert build_callback("text")["data"]["data"] == []
    failed = build_callback("failed", msg="Generation failed")
    assert failed["data"]["callbackType"] == "error"
    assert failed["data"]["data"] == []
    assert failed["msg"] == "Generation failed"


def test_build_callback_track_times_load_as_aware_utc() -> None:
    event = load_callback(build_callback("complete", task_id="t1"))

    created = event.tracks[0].created_at
    assert created is not None
    assert created.tzinfo is timezone.utc
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60


def test_signature_headers_are_accepted_by_an_app_with_the_key(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None, HMAC_KEY="hmac-key")
    payload = build_callback("complete", task_id="t1")

    response = app.test_client().post(
        "/music-callback", json=payload, headers=signature_headers("t1", "hmac-key")
    )

    assert response.status_code == 200


def test_signature_headers_with_another_key_are_refused(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None, HMAC_KEY="hmac-key")
    payload = build_callback("complete", task_id="t1")

    response = app.test_client().post(
        "/music-callback", json=payload, headers=signature_headers("t1", b"other-key")
    )

    assert response.status_code == 401


def test_signature_headers_sign_a_given_timestamp() -> None:
    headers = signature_headers("t1", "key", timestamp=1_700_000_000)

    assert headers["X-Webhook-Timestamp"] == "1700000000"
    assert headers == signature_headers("t1", b"key", timestamp=1_700_000_000)


def test_record_signals_collects_the_app_signals_in_order(app: Flask) -> None:
    client = CallbackClient(app)

    with record_signals(app) as recorded:
        client.deliver("complete", task_id="t1")
        client.deliver("complete", task_id="t1")

    names = [name for name, _ in recorded]
    assert names == ["callback_received", "all_tracks_generated", "callback_duplicate"]
    assert recorded[1][1]["event"].task_id == "t1"
    assert recorded[2][1]["reason"] == "duplicate"


def test_record_signals_ignores_other_apps(make_app: AppFactory) -> None:
    watched, other = make_app(), make_app()

    with record_signals(watched) as recorded:
        CallbackClient(other).deliver("complete")

    assert recorded == []


def test_record_signals_stops_recording_on_exit(app: Flask) -> None:
    with record_signals(app) as recorded:
        pass
    CallbackClient(app).deliver("complete")

    assert recorded == []


def test_client_delivers_each_stage_once(app: Flask) -> None:
    client = CallbackClient(app)

    answers = [client.deliver(stage, task_id="t1").json for stage in ("text", "first", "first")]

    assert answers == [{"status": "received"}, {"status": "received"}, {"status": "duplicate"}]


def test_client_signs_when_the_app_requires_a_signature(make_app: AppFactory) -> None:
    app = make_app(HMAC_KEY=["new-key", "old-key"])

    assert CallbackClient(app).deliver("text").status_code == 200


def test_client_comes_from_an_allowed_address(make_app: AppFactory) -> None:
    app = make_app(ALLOWED_IPS=["203.0.113.0/24"])

    assert CallbackClient(app).deliver("text").status_code == 200


def test_client_without_authentication_is_refused(make_app: AppFactory) -> None:
    app = make_app(HMAC_KEY="hmac-key")

    response = CallbackClient(app).deliver("text", authenticate=False)

    assert response.status_code == 401
    assert response.json == {"status": "rejected", "reason": "unauthorized"}


def test_client_points_media_links_under_the_simulated_media_url(make_app: AppFactory) -> None:
    app = make_app(SIMULATED_MEDIA_URL="http://127.0.0.1:5000/samples")

    with record_signals(app) as recorded:
        CallbackClient(app).deliver("complete", task_id="t1", tracks=1)

    [event] = [kw["event"] for name, kw in recorded if name == "all_tracks_generated"]
    [track] = event.tracks
    for link in (track.audio_url, track.image_url, track.stream_audio_url):
        assert link is not None
        assert link.startswith("http://127.0.0.1:5000/samples/")


def test_client_returns_once_receivers_run_off_the_request_path_have_run(
    make_app: AppFactory,
) -> None:
    """As Celery's eager mode does, so that a test may deliver, then assert on what they did."""
    ran: list[str] = []

    def slow(sender: Flask, event: CallbackEvent, **extra: Any) -> None:
        time.sleep(0.2)
        ran.append(event.task_id)

    with thread_apps(make_app) as thread_app:
        app = thread_app()
        with all_tracks_generated.connected_to(slow, sender=app):
            assert CallbackClient(app).deliver("complete", task_id="t1").status_code == 200
            assert ran == ["t1"]


def test_client_delivers_a_whole_payload(make_app: AppFactory) -> None:
    payload = {"code": 200, "msg": "ok", "data": {"callbackType": "nope", "task_id": "t1"}}

    response = CallbackClient(make_app(TOKEN=None)).deliver(payload)

    assert response.status_code == 422
    assert response.json["errors"] == {"data": {"callbackType": ["Unknown callbackType."]}}


def test_client_headers_win_over_its_own(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None, HMAC_KEY="hmac-key")

    response = CallbackClient(app).deliver("text", headers={"X-Webhook-Signature": "forged"})

    assert response.status_code == 401


def test_credentials_follow_the_configuration(make_app: AppFactory) -> None:
    app = make_app(TOKEN=["first", "second"], HMAC_KEY="key", ALLOWED_IPS=["10.1.0.0/16"])

    credentials = callback_credentials(app, build_callback("text", task_id="t1"))

    assert credentials.query == {"token": "first"}
    assert set(credentials.headers) == {"X-Webhook-Timestamp", "X-Webhook-Signature"}
    assert credentials.remote_addr == "10.1.0.0"


def test_credentials_of_an_open_app_are_empty(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None)

    credentials = callback_credentials(app, build_callback("text"))

    assert (credentials.query, credentials.headers) == ({}, {})
    assert credentials.remote_addr == "127.0.0.1"


# The plugin, as this project's own tests use it.


def test_plugin_client_delivers_to_the_plugin_app(
    musiccallback_client: CallbackClient,
    musiccallback_signals: list[tuple[str, dict[str, Any]]],
) -> None:
    response = musiccallback_client.deliver("complete", task_id="t1", tracks=1)

    assert response.json == {"status": "received"}
    (event,) = [kw["event"] for name, kw in musiccallback_signals if name == "all_tracks_generated"]
    assert len(event.tracks) == 1


def test_plugin_app_requires_a_token(musiccallback_app: Flask) -> None:
    response = musiccallback_app.test_client().post("/music-callback", json=build_callback())

    assert response.status_code == 401


# The plugin, as a host project's tests use it.

HOST_TESTS = """
    import pytest
    from flask_musiccallback import CallbackEvent, Stage, all_tracks_generated

    @pytest.fixture
    def musiccallback_config():
        return {"MUSICCALLBACK_HMAC_KEY": "host-key", "MUSICCALLBACK_DEDUP_TTL": 60}

    def test_delivers_signed(musiccallback_client, musiccallback_signals):
        assert musiccallback_client.deliver("failed", task_id="t9").status_code == 200
        names = [name for name, _ in musiccallback_signals]
        assert names == ["callback_received", "task_failed"]

    def test_app_is_configured(musiccallback_app):
        assert musiccallback_app.config["MUSICCALLBACK_DEDUP_TTL"] == 60

    def test_app_may_be_the_hosts(musiccallback_app):
        assert musiccallback_app.testing
"""


@pytest.mark.parametrize(
    "name",
    [
        "flask_musiccallback.pytest_plugin",
        # The name hosts used before the plugin had a module of its own.
        "flask_musiccallback.testing",
    ],
)
def test_plugin_loads_by_name_and_serves_host_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_host=textwrap.dedent(HOST_TESTS))

    result = pytester.runpytest("-p", name)

    result.assert_outcomes(passed=3)


THREAD_HOST_TESTS = """
    import pytest
    from flask_musiccallback import all_tracks_generated
    from flask_musiccallback.testing import CallbackClient

    saved = []
    apps = []

    @pytest.fixture
    def musiccallback_config():
        return {"MUSICCALLBACK_TOKEN": "t", "MUSICCALLBACK_DISPATCH": "thread"}

    def test_delivers_then_asserts_on_what_receivers_did(musiccallback_app, musiccallback_client):
        @all_tracks_generated.connect_via(musiccallback_app)
        def save(sender, event, **extra):
            saved.extend(track.title for track in event.tracks)

        musiccallback_client.deliver("complete", task_id="t1", tracks=2)
        assert len(saved) == 2
        apps.append(musiccallback_app)

    def test_the_app_of_a_finished_test_takes_no_more_deliveries():
        (app,) = apps
        assert CallbackClient(app).deliver("text").status_code == 503
"""


def test_plugin_host_tests_under_thread_dispatch_see_receivers_done_and_leave_no_pool(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_host=textwrap.dedent(THREAD_HOST_TESTS))

    result = pytester.runpytest("-p", "flask_musiccallback.pytest_plugin")

    result.assert_outcomes(passed=2)


def test_plugin_fixture_can_be_replaced_by_the_host_app(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from flask import Flask
        from flask_musiccallback import MusicCallback

        @pytest.fixture
        def musiccallback_app():
            app = Flask("host")
            app.config["MUSICCALLBACK_URL_RULE"] = "/hooks/suno"
            app.config["MUSICCALLBACK_TOKEN"] = "host-token"
            MusicCallback(app)
            return app
        """
    )
    pytester.makepyfile(
        """
        def test_delivers_to_the_host_route(musiccallback_client):
            assert musiccallback_client.path == "/hooks/suno"
            assert musiccallback_client.deliver("text").json == {"status": "received"}
        """
    )

    result = pytester.runpytest("-p", "flask_musiccallback.pytest_plugin")

    result.assert_outcomes(passed=1)


def test_pyproject_declares_the_plugin_under_pytest11(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed, the entry point loads the plugin with no ``-p``: checked with a dist-info that
    declares exactly the entry points of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = project["project"]["entry-points"]["pytest11"]
    assert entry_points == {
        "flask_musiccallback.pytest_plugin": "flask_musiccallback.pytest_plugin"
    }
    site = pytester.mkdir("site")
    dist = site / "musiccallback_entry_check-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: musiccallback-entry-check\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (dist / "entry_points.txt").write_text("[pytest11]\n" + lines)
    pytester.makepyfile(
        """
        def test_fixture_available(musiccallback_client):
            assert musiccallback_client.deliver("text").status_code == 200
        """
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT)]))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
