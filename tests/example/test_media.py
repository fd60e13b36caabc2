"""Saving media: the downloader against a real HTTP server on 127.0.0.1, and the app around it."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask, Response, request

from example_app.media import DownloadFailed, DownloadPolicy, download
from flask_musiccallback.simulate import post_callback
from flask_musiccallback.testing import CallbackClient, build_callback

from ..servers import serve_url
from .conftest import ExampleFactory, settle, task

AUDIO = b"ID3" + bytes(range(256)) * 64
COVER = b"\xff\xd8\xff\xe0" + b"jpeg" * 500


class Origin:
    """The provider's CDN as the tests need it: files, failures, and a count of requests."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.failures_left: Counter[str] = Counter()
        self.app = Flask("origin")
        self.app.add_url_rule("/<path:name>", "file", self.file)

    def fail(self, name: str, times: int) -> None:
        self.failures_left[name] = times

    def file(self, name: str) -> Response:
        self.hits[name] += 1
        if self.failures_left[name] > 0:
            self.failures_left[name] -= 1
            return Response("busy", status=503)
        if name.startswith("song"):
            return Response(AUDIO, mimetype="audio/mpeg")
        if name.startswith("cover"):
            return Response(COVER, mimetype="image/jpeg")
        if name == "unlabelled.mp3":
            return Response(AUDIO, mimetype="application/octet-stream")
        if name == "moved":
            return Response(status=302, headers={"Location": "/song.mp3"})
        if name == "huge":
            return Response(b"x" * 5000, mimetype="audio/mpeg")
        if name == "huge-streamed":
            return Response((b"x" * 1000 for _ in range(5)), mimetype="audio/mpeg")
        if name == "slow":
            time.sleep(float(request.args.get("seconds", "1")))
            return Response(AUDIO, mimetype="audio/mpeg")
        return Response("gone", status=404)


@pytest.fixture
def origin() -> Iterator[tuple[Origin, str]]:
    server = Origin()
    with serve_url(server.app) as url:
        yield server, url


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5, follow_redirects=True) as http:
        yield http


FAST = DownloadPolicy(attempts=3, backoff=0.05, timeout=5, max_bytes=1024 * 1024)


def test_a_file_is_saved_with_the_extension_of_its_media_type(
    origin: tuple[Origin, str], client: httpx.Client, tmp_path: Path
) -> None:
    _, url = origin
    name = download(client, f"{url}/song.bin", tmp_path, "0-audio", FAST)

    assert name == "0-audio.mp3"
    assert (tmp_path / name).read_bytes() == AUDIO


def test_an_unlabelled_file_keeps_the_extension_of_its_link(
    origin: tuple[Origin, str], client: httpx.Client, tmp_path: Path
) -> None:
    _, url = origin
    assert download(client, f"{url}/unlabelled.mp3", tmp_path, "a", FAST) == "a.mp3"


def test_a_redirect_is_followed(
    origin: tuple[Origin, str], client: httpx.Client, tmp_path: Path
) -> None:
    _, url = origin
    name = download(client, f"{url}/moved", tmp_path, "a", FAST)
    assert (tmp_path / name).read_bytes() == AUDIO


def test_a_server_error_is_retried_with_back_off_until_it_passes(
    origin: tuple[Origin, str], client: httpx.Client, tmp_path: Path
) -> None:
    server, url = origin
    server.fail("song.mp3", 2)
    policy = DownloadPolicy(attempts=3, backoff=0.2, timeout=5, max_bytes=1024 * 1024)

    started = time.monotonic()
    name = download(client, f"{url}/song.mp3", tmp_path, "a", policy)

    assert (tmp_path / name).read_bytes() == AUDIO
    assert server.hits["song.mp3"] == 3
    assert time.monotonic() - started >= 0.2 + 0.4  # waited 0.2 s, then twice as long


def test_retries_stop_after_the_last_attempt(
    origin: tuple[Origin, str], client: httpx.Client, tmp_path: Path
) -> None:
    server, url = origin
    server.fail("song.mp3", 10)

    with pytest.raises(DownloadFailed, match=r"HTTP 503 \(after 3 attempts\)"):
        download(client, f"{url}/song.mp3", tmp_path, "a", FAST)
    assert server.hits["song.mp3"] == 3
    assert list(tmp_path.iterdir()) == []


def test_an_expired_link_is_not_retried(
    origin: tuple[Origin, str], client: httpx.Client, tmp_path: Path
) -> None:
    server, url = origin
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        download(client, f"{url}/expired.mp3", tmp_path, "a", FAST)
    assert server.hits["expired.mp3"] == 1


@pytest.mark.parametrize("name", ["huge", "huge-streamed"])
def test_a_file_over_the_size_limit_is_refused_and_nothing_is_left(
    origin: tuple[Origin, str], client: httpx.Client, tmp_path: Path, name: str
) -> None:
    server, url = origin
    policy = DownloadPolicy(attempts=3, backoff=0.05, timeout=5, max_bytes=4096)

    with pytest.raises(DownloadFailed, match="larger than 4096 bytes"):
        download(client, f"{url}/{name}", tmp_path, "a", policy)
    assert server.hits[name] == 1
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_does_not_answer_in_time_is_retried_then_given_up(
    origin: tuple[Origin, str], tmp_path: Path
) -> None:
    server, url = origin
    policy = DownloadPolicy(attempts=2, backoff=0.05, timeout=0.3, max_bytes=1024 * 1024)

    with (
        httpx.Client(timeout=policy.timeout) as client,
        pytest.raises(DownloadFailed, match=r"ReadTimeout.*after 2 attempts"),
    ):
        download(client, f"{url}/slow?seconds=1", tmp_path, "a", policy)
    assert server.hits["slow"] == 2


def test_a_refused_connection_is_retried_then_given_up(
    client: httpx.Client, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it once the probe is closed

    with pytest.raises(DownloadFailed, match=r"ConnectError.*after 3 attempts"):
        download(client, f"http://127.0.0.1:{port}/song.mp3", tmp_path, "a", FAST)


def completed_with_links(task_id: str, url: str, audio: str, image: str) -> dict[str, object]:
    payload = build_callback("complete", task_id=task_id, tracks=1)
    payload["data"]["data"][0].update(audio_url=f"{url}/{audio}", image_url=f"{url}/{image}")
    return payload


def test_a_completed_task_has_its_media_saved_and_served_from_here(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    _, url = origin
    app = make_example()
    payload = completed_with_links("task-1", url, "song.mp3", "cover.jpeg")

    assert CallbackClient(app).deliver(payload).json == {"status": "received"}
    settle(app)

    track = task(app, "task-1").tracks[0]
    assert track.media_status == "saved"
    assert track.media_error is None
    client = app.test_client()
    html = client.get("/").get_data(as_text=True)
    assert f'src="/media/{track.audio_file}"' in html
    assert f'src="/media/{track.image_file}"' in html
    assert client.get(f"/media/{track.audio_file}").data == AUDIO
    assert client.get(f"/media/{track.image_file}").data == COVER


def test_a_flaky_provider_is_retried_off_the_request_path(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    server, url = origin
    server.fail("song.mp3", 2)
    app = make_example()

    started = time.monotonic()
    answer = post_callback(app, completed_with_links("task-1", url, "song.mp3", "cover.jpeg"))
    answered_in = time.monotonic() - started
    settle(app)

    assert answer.json == {"status": "received"}
    assert answered_in < 0.05 + 0.1  # the answer did not wait for the back-off
    assert server.hits["song.mp3"] == 3
    assert task(app, "task-1").tracks[0].media_status == "saved"


def test_a_link_that_cannot_be_fetched_is_recorded_and_the_page_uses_it_meanwhile(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    _, url = origin
    app = make_example()
    payload = completed_with_links("task-1", url, "expired.mp3", "cover.jpeg")

    CallbackClient(app).deliver(payload)
    settle(app)

    track = task(app, "task-1").tracks[0]
    assert track.media_status == "failed"
    assert track.media_error == "audio: HTTP 404"
    assert track.image_file  # the cover was saved all the same
    html = app.test_client().get("/").get_data(as_text=True)
    assert f'src="{url}/expired.mp3"' in html
    assert "Could not save a copy (audio: HTTP 404)" in html


def test_download_media_tries_failed_copies_again(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    server, url = origin
    server.fail("song.mp3", 3)
    app = make_example(MEDIA_DOWNLOAD_ATTEMPTS=1)
    CallbackClient(app).deliver(completed_with_links("task-1", url, "song.mp3", "cover.jpeg"))
    settle(app)
    assert task(app, "task-1").tracks[0].media_status == "failed"

    server.fail("song.mp3", 0)
    result = app.test_cli_runner().invoke(args=["download-media"])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 saved"
    assert task(app, "task-1").tracks[0].media_status == "saved"


def test_two_tasks_saving_at_once_keep_their_files_apart(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    _, url = origin
    app = make_example()
    threads = [
        threading.Thread(
            target=CallbackClient(app).deliver,
            args=(completed_with_links(task_id, url, "song.mp3", "cover.jpeg"),),
        )
        for task_id in ("a/b", "a_b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settle(app)

    files = {task(app, task_id).tracks[0].audio_file for task_id in ("a/b", "a_b")}
    assert len(files) == 2
