"""The developer kit on the command line: ``simulate``, ``url`` and ``poll [--watch]``."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import Result
from flask import Flask, Response
from flask.testing import FlaskCliRunner

from flask_musiccallback import ConfigurationError, all_tracks_generated
from flask_musiccallback.testing import SIMULATED_MEDIA_HOST, record_signals

from .backends import StoreApp
from .conftest import TOKEN, AppFactory
from .fake_provider import Answer, FakeProvider, record
from .servers import serve_url as serve

API_KEY = "provider-api-key"

Recorded = list[tuple[str, dict[str, Any]]]


def run(app: Flask, *args: str) -> Result:
    runner: FlaskCliRunner = app.test_cli_runner()
    return runner.invoke(args=["musiccallback", *args])


def names(recorded: Recorded) -> list[str]:
    return [name for name, _ in recorded]


# simulate


def test_simulate_sends_text_first_complete_in_process(
    musiccallback_app: Flask, musiccallback_signals: Recorded
) -> None:
    result = run(musiccallback_app, "simulate", "--task-id", "t1")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Task t1 (music) -> the app in-process"
    assert [line.split()[:2] for line in lines[1:]] == [
        ["text", "200"],
        ["first", "200"],
        ["complete", "200"],
    ]
    assert all(line.endswith('{"status":"received"}') for line in lines[1:])
    assert [n for n in names(musiccallback_signals) if n != "callback_received"] == [
        "text_generated",
        "first_track_generated",
        "all_tracks_generated",
    ]


def test_simulate_twice_on_one_task_answers_duplicate(musiccallback_app: Flask) -> None:
    run(musiccallback_app, "simulate", "--task-id", "t1", "--stage", "complete")

    result = run(musiccallback_app, "simulate", "--task-id", "t1", "--stage", "complete")

    assert result.exit_code == 0
    assert result.output.splitlines()[1].endswith('{"status":"duplicate"}')


def test_simulate_new_task_by_default(musiccallback_app: Flask) -> None:
    first = run(musiccallback_app, "simulate", "--stage", "text").output.splitlines()[0]
    second = run(musiccallback_app, "simulate", "--stage", "text").output.splitlines()[0]

    assert first != second


def test_simulate_failure_with_its_code(
    musiccallback_app: Flask, musiccallback_signals: Recorded
) -> None:
    result = run(musiccallback_app, "simulate", "--stage", "failed", "--code", "531")

    assert result.exit_code == 0, result.output
    (event,) = [kw["event"] for name, kw in musiccallback_signals if name == "task_failed"]
    assert (event.code, event.callback_type) == (531, "error")


def test_simulate_tracks(musiccallback_app: Flask, musiccallback_signals: Recorded) -> None:
    run(musiccallback_app, "simulate", "--stage", "complete", "--tracks", "4")

    (event,) = [kw["event"] for name, kw in musiccallback_signals if name == "all_tracks_generated"]
    assert len(event.tracks) == 4


def test_simulate_signs_and_comes_from_an_allowed_address(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None, HMAC_KEY="hmac-key", ALLOWED_IPS=["198.51.100.7"])

    result = run(app, "simulate")

    assert result.exit_code == 0, result.output
    assert result.output.count('{"status":"received"}') == 3


def test_simulate_rejects_an_unknown_stage(musiccallback_app: Flask) -> None:
    result = run(musiccallback_app, "simulate", "--stage", "done")

    assert result.exit_code == 2
    assert "'done' is not one of" in result.output


def test_simulate_over_http_reaches_a_served_app(make_app: AppFactory) -> None:
    app = make_app(HMAC_KEY="hmac-key")
    with serve(app) as base, record_signals(app) as recorded:
        result = run(app, "simulate", "--url", f"{base}/music-callback", "--task-id", "t1")

    assert result.exit_code == 0, result.output
    assert result.output.count('{"status":"received"}') == 3
    assert "all_tracks_generated" in names(recorded)


def test_simulate_over_http_keeps_the_token_of_the_url(make_app: AppFactory) -> None:
    app = make_app()
    with serve(app) as base:
        result = run(app, "simulate", "--stage", "text", "--url", f"{base}/music-callback?token=x")

    assert result.exit_code == 1
    assert re.search(r"^text +401 .*unauthorized", result.output, re.M)
    assert "did not accept every callback" in result.output


def test_simulate_over_http_sends_the_query_of_the_url_as_it_is(make_app: AppFactory) -> None:
    app = make_app()
    url = f"/music-callback?token={TOKEN}&family=lyrics"
    with serve(app) as base, record_signals(app) as recorded:
        result = run(app, "simulate", "--family", "lyrics", "--url", f"{base}{url}")

    assert result.exit_code == 0, result.output
    assert '{"status":"received"}' in result.output
    assert "lyrics_generated" in names(recorded)


def test_simulate_over_http_to_nothing_says_so(make_app: AppFactory) -> None:
    app = make_app()
    with serve(app) as base:
        pass

    result = run(app, "simulate", "--url", f"{base}/music-callback")

    assert result.exit_code == 1
    assert "Error: cannot deliver to" in result.output
    assert "Traceback" not in result.output


# simulate: media links under MUSICCALLBACK_SIMULATED_MEDIA_URL


def links(value: Any) -> list[str]:
    """Every http(s) link in a body, at any depth."""
    if isinstance(value, str):
        return [value] if value.startswith(("http://", "https://")) else []
    items = (
        value.values()
        if isinstance(value, Mapping)
        else value
        if isinstance(value, Sequence) and not isinstance(value, bytes)
        else ()
    )
    return [link for item in items for link in links(item)]


@pytest.mark.parametrize("family", ["music", "wav", "stems", "video", "cover"])
def test_simulate_points_media_links_under_the_configured_url(
    make_app: AppFactory, family: str
) -> None:
    app = make_app(SIMULATED_MEDIA_URL="http://media.test:8080/samples/")
    with record_signals(app) as recorded:
        result = run(app, "simulate", "--family", family, "--stage", "complete")

    assert result.exit_code == 0, result.output
    [event] = [kw["event"] for name, kw in recorded if name == "callback_received"]
    sent = links(event.raw)
    assert sent
    assert all(link.startswith("http://media.test:8080/samples/") for link in sent), sent
    assert not any("//samples" in link for link in sent)


def test_simulated_media_links_stay_on_the_invalid_host_by_default(
    musiccallback_app: Flask, musiccallback_signals: Recorded
) -> None:
    run(musiccallback_app, "simulate", "--stage", "complete")

    [event] = [kw["event"] for name, kw in musiccallback_signals if name == "callback_received"]
    assert {urlsplit(link).hostname for link in links(event.raw)} == {SIMULATED_MEDIA_HOST}


def test_simulated_media_served_on_loopback_are_archived_over_http(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The whole point of the key: simulated media fetched for real, through every check of
    the archive (here allowed to reach 127.0.0.1, where the stand-ins are served). In-process,
    ``simulate`` returns once the copies ran, however slow the media server: the process may
    end at once."""
    served: list[str] = []
    media = Flask("media")

    @media.get("/samples/<path:name>")
    def sample(name: str) -> Response:
        time.sleep(0.2)
        served.append(name)
        return Response(f"stand-in for {name}".encode(), mimetype="audio/wav")

    with serve(media) as base:
        app = make_app(
            ARCHIVE=(tmp_path / "archive").as_uri(),
            ARCHIVE_ALLOW=["127.0.0.1"],
            SIMULATED_MEDIA_URL=f"{base}/samples",
        )
        with record_signals(app) as recorded:
            result = run(app, "simulate", "--task-id", "t1", "--stage", "complete")

    assert result.exit_code == 0, result.output
    [archived] = [kw for name, kw in recorded if name == "media_archived"]
    assert all(source.startswith(f"{base}/samples/") for source in archived["files"])
    assert len(served) == len(archived["files"]) == 4  # two tracks: audio and cover each
    for file in archived["archived"]:
        name = urlsplit(file.source).path.removeprefix("/samples/")
        assert (tmp_path / "archive" / file.path).read_bytes() == f"stand-in for {name}".encode()


def test_a_simulated_media_url_that_is_not_http_fails_at_start_up(make_app: AppFactory) -> None:
    with pytest.raises(ConfigurationError, match="MUSICCALLBACK_SIMULATED_MEDIA_URL"):
        make_app(SIMULATED_MEDIA_URL="file:///srv/samples")


# url


def test_url_prints_the_callback_url(make_app: AppFactory) -> None:
    app = make_app(EXTERNAL_URL="https://example.org/app")

    result = run(app, "url")

    assert result.output == f"https://example.org/app/music-callback?token={TOKEN}\n"


def test_url_without_a_known_address_explains(make_app: AppFactory) -> None:
    result = run(make_app(), "url")

    assert result.exit_code == 1
    assert "MUSICCALLBACK_EXTERNAL_URL" in result.output


# poll


@pytest.fixture
def polling_app(store_app: StoreApp, provider: FakeProvider) -> Flask:
    """On every store: a polled event reaches the store as a callback's does."""
    return store_app(API_KEY=API_KEY, API_BASE_URL=provider.url)


def test_poll_once_prints_what_it_dispatched(polling_app: Flask, provider: FakeProvider) -> None:
    provider.statuses("t1", "SUCCESS")

    first = run(polling_app, "poll", "t1")
    again = run(polling_app, "poll", "t1")

    assert (first.exit_code, first.output) == (0, "SUCCESS: complete dispatched (2 tracks)\n")
    assert again.output == "SUCCESS: complete already dispatched (duplicate)\n"


def test_poll_pending(polling_app: Flask, provider: FakeProvider) -> None:
    provider.statuses("t1", "PENDING")

    result = run(polling_app, "poll", "t1")

    assert (result.exit_code, result.output) == (0, "PENDING: nothing to dispatch yet\n")


def test_watch_shows_each_new_status_until_the_task_ends(
    polling_app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("t1", "PENDING", "TEXT_SUCCESS", "TEXT_SUCCESS", "SUCCESS")
    started = time.monotonic()

    result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.5")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "PENDING: nothing to dispatch yet",
        "TEXT_SUCCESS: text dispatched (0 tracks)",
        "SUCCESS: complete dispatched (2 tracks)",
    ]
    assert len(provider.requests) == 4
    assert time.monotonic() - started >= 1.5  # three waits of the interval


def test_watch_backs_off_on_rate_limits(polling_app: Flask, provider: FakeProvider) -> None:
    provider.script(
        "t1", Answer(200, {"code": 430, "msg": "Too frequent"}), record("t1", "SUCCESS")
    )

    result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.5")

    assert result.exit_code == 0, result.output
    assert "too frequent" in result.output
    assert "trying again in 0.5 s" in result.output
    assert result.output.endswith("SUCCESS: complete dispatched (2 tracks)\n")


def test_watch_waits_as_long_as_retry_after_asks(
    polling_app: Flask, provider: FakeProvider
) -> None:
    provider.script("t1", Answer(429, {"code": 429}, {"Retry-After": "1"}), record("t1", "SUCCESS"))

    result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.5")

    assert result.exit_code == 0, result.output
    assert "trying again in 1 s" in result.output


def test_watch_gives_up_when_the_task_does_not_end(
    polling_app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("t1", "PENDING")

    result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.5", "--timeout", "1")

    assert result.exit_code == 5
    assert "did not end within 1 s (last status: PENDING)" in result.output


def test_watch_gives_up_when_the_provider_stays_down(
    polling_app: Flask, provider: FakeProvider
) -> None:
    provider.script("t1", Answer(503, "<html>down</html>"))

    result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.5", "--timeout", "2")

    assert result.exit_code == 4
    assert "server error (503)" in result.output
    assert "Traceback" not in result.output


def test_watch_stops_at_once_on_a_refused_key(polling_app: Flask, provider: FakeProvider) -> None:
    provider.script("t1", Answer(401, {"code": 401, "msg": "Invalid API key"}))

    result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.5")

    assert result.exit_code == 3
    assert "MUSICCALLBACK_API_KEY" in result.output
    assert "Invalid API key" in result.output
    assert len(provider.requests) == 1


def test_poll_without_api_key_exits_with_a_message(make_app: AppFactory) -> None:
    result = run(make_app(), "poll", "t1")

    assert result.exit_code == 1
    assert "Error: Polling needs the provider's API key: set MUSICCALLBACK_API_KEY." in (
        result.output
    )


def test_poll_refuses_a_too_short_interval(polling_app: Flask) -> None:
    result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.1")

    assert result.exit_code == 2


def test_watch_keeps_polling_until_failed_receivers_succeed(
    polling_app: Flask, provider: FakeProvider
) -> None:
    failures = ["disk full"]

    def flaky(sender: Flask, **extra: Any) -> None:
        if failures:
            raise RuntimeError(failures.pop())

    provider.statuses("t1", "SUCCESS")
    with all_tracks_generated.connected_to(flaky, sender=polling_app):
        result = run(polling_app, "poll", "t1", "--watch", "--interval", "0.5")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "SUCCESS: complete receivers failed; polling again retries them",
        "SUCCESS: complete dispatched (2 tracks)",
    ]


def test_poll_once_with_a_failed_receiver_exits_non_zero(
    polling_app: Flask, provider: FakeProvider
) -> None:
    def broken(sender: Flask, **extra: Any) -> None:
        raise RuntimeError("disk full")

    provider.statuses("t1", "SUCCESS")
    with all_tracks_generated.connected_to(broken, sender=polling_app):
        result = run(polling_app, "poll", "t1")

    assert result.exit_code == 1
    assert "Error: a receiver failed; see the log" in result.output
