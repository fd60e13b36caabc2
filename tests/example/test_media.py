"""The example app's media: archived by the extension, recorded on the task's rows, served from
the archive.

Simulated tasks' media are the app's own samples, fetched by the archive from the app's server
over 127.0.0.1 (conftest.py). Other links go to a media server of the tests' own, on 127.0.0.1
too: the example allows the archive to reach that address for its samples.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask, Response

from example_app import samples
from flask_musiccallback.simulate import post_callback
from flask_musiccallback.testing import CallbackClient, build_callback, record_signals

from ..servers import serve_url
from .conftest import ExampleFactory, archive_folder, base_url, settle, task

AUDIO = b"ID3" + bytes(range(256)) * 64
AUDIO_SRC = re.compile(r'<audio[^>]*\ssrc="([^"]+)"')
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
        return Response("gone", status=404)


@pytest.fixture
def origin() -> Iterator[tuple[Origin, str]]:
    server = Origin()
    with serve_url(server.app) as url:
        yield server, url


def allowing(url: str) -> dict[str, Any]:
    """The configuration that lets the archive fetch from the media server at ``url`` alone
    (it is on loopback, which the archive refuses unless allowed)."""
    return {"MUSICCALLBACK_ARCHIVE_ALLOW": [urlsplit(url).netloc]}


def completed_with_links(task_id: str, url: str, audio: str, image: str) -> dict[str, object]:
    payload = build_callback("complete", task_id=task_id, tracks=1)
    payload["data"]["data"][0].update(audio_url=f"{url}/{audio}", image_url=f"{url}/{image}")
    return payload


def page(app: Flask) -> str:
    return app.test_client().get("/").get_data(as_text=True)


def test_a_simulated_task_is_fetched_from_the_app_itself_over_http(example: Flask) -> None:
    with record_signals(example) as recorded:
        CallbackClient(example).deliver("complete", task_id="task-1")
        settle(example)

    [archived] = [kw for name, kw in recorded if name == "media_archived"]
    sources = list(archived["files"])
    assert len(sources) == 4  # two tracks, their audio and cover each
    assert base_url(example).startswith("http://127.0.0.1:")
    assert all(source.startswith(f"{base_url(example)}/samples/") for source in sources)


def test_a_simulated_task_is_archived_and_played_from_the_archive(example: Flask) -> None:
    CallbackClient(example).deliver("complete", task_id="task-1")
    settle(example)

    tracks = task(example, "task-1").tracks
    assert [track.media_status for track in tracks] == ["archived", "archived"]
    html = page(example)
    client = example.test_client()
    for track in tracks:
        assert track.audio_path is not None
        assert track.image_path is not None
        assert track.audio_path.startswith("task-1/music/")
        assert f'src="/media/{track.audio_path}"' in html
        assert f'src="/media/{track.image_path}"' in html
        rendered = samples.render(str(track.audio_url))
        assert rendered is not None
        sample = rendered[0]
        assert (archive_folder(example) / track.audio_path).read_bytes() == sample
        audio = client.get(f"/media/{track.audio_path}")
        assert audio.status_code == 200
        assert audio.data == sample
    assert html.count("Archived on this server") == 2


def test_archived_files_are_served_with_the_type_their_server_gave(example: Flask) -> None:
    """A simulated track's audio is a WAV behind an .mp3 link, its cover an SVG behind a .jpeg
    one: the archive's manifest says what each is, and the browser needs to know."""
    CallbackClient(example).deliver("complete", task_id="task-1", tracks=1)
    settle(example)

    [track] = task(example, "task-1").tracks
    client = example.test_client()
    audio = client.get(f"/media/{track.audio_path}")
    cover = client.get(f"/media/{track.image_path}")
    assert PurePosixPath(str(track.audio_path)).suffix == ".mp3"
    assert (audio.mimetype, audio.data[:4]) == ("audio/wav", b"RIFF")
    assert PurePosixPath(str(track.image_path)).suffix == ".jpeg"
    assert cover.mimetype == "image/svg+xml"
    assert cover.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert cover.headers["X-Content-Type-Options"] == "nosniff"


def test_a_track_archived_at_its_first_stage_keeps_its_type_after_the_last(
    example: Flask,
) -> None:
    """The first track is archived with the ``first`` stage; ``complete``'s copy finds it there
    and records no type for it: the earlier manifest has it."""
    client = CallbackClient(example)
    for stage in ("first", "complete"):
        client.deliver(stage, task_id="task-1")
        settle(example)

    first = task(example, "task-1").tracks[0]
    assert example.test_client().get(f"/media/{first.audio_path}").mimetype == "audio/wav"


def test_an_archived_file_is_served_in_ranges(example: Flask) -> None:
    CallbackClient(example).deliver("complete", family="video", task_id="video-1")
    settle(example)

    [result] = task(example, "video-1").results
    [path] = result.files.values()
    client = example.test_client()
    whole = client.get(f"/media/{path}")
    part = client.get(f"/media/{path}", headers={"Range": "bytes=0-99"})  # a player seeking
    assert whole.mimetype == "video/mp4"
    assert part.status_code == 206
    assert part.data == whole.data[:100]


@pytest.mark.parametrize(
    "path",
    [
        "../example.db",
        "%2e%2e/example.db",
        "task-1/../../example.db",
        "task-1/music/complete.manifest.json",
        "task-1/music/.hidden.part",
        "task-1/music",
        "task-1//music/x.mp3",
        "task-1/music/nothing-here.mp3",
    ],
)
def test_only_archived_files_are_served(example: Flask, path: str) -> None:
    CallbackClient(example).deliver("complete", task_id="task-1", tracks=1)
    settle(example)
    (archive_folder(example) / "task-1" / "music" / ".hidden.part").write_bytes(b"partial")
    assert (archive_folder(example) / "task-1" / "music" / "complete.manifest.json").is_file()

    assert example.test_client().get(f"/media/{path}").status_code == 404


def test_nothing_is_served_without_an_archive(make_example: ExampleFactory) -> None:
    app = make_example(MUSICCALLBACK_ARCHIVE=None)
    CallbackClient(app).deliver("complete", task_id="task-1", tracks=1)
    settle(app)

    [track] = task(app, "task-1").tracks
    assert (track.media_status, track.audio_path) == ("none", None)
    assert AUDIO_SRC.findall(page(app)) == [track.audio_url]


def test_every_familys_media_are_archived_and_played_from_the_archive(example: Flask) -> None:
    client = CallbackClient(example)
    for family in ("wav", "stems", "video", "cover", "midi"):
        client.deliver("complete", family=family, task_id=f"{family}-1", family_in_url=True)
    settle(example)

    html = page(example)
    for family in ("wav", "stems", "video", "cover", "midi"):
        [result] = task(example, f"{family}-1").results
        assert result.media_status == "archived", (family, result.file_errors)
        assert result.files
        for path in result.files.values():
            assert path.startswith(f"{family}-1/{family}/")
            assert f'"/media/{path}"' in html
            assert (archive_folder(example) / path).is_file()
    [midi] = task(example, "midi-1").results
    [notes] = midi.files.values()
    assert json.loads(example.test_client().get(f"/media/{notes}").data)
    assert "Download every note (JSON)" in html
    assert html.count("Archived on this server") == 5


def test_a_link_that_cannot_be_archived_is_recorded_and_the_page_plays_it(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    _, url = origin
    app = make_example(**allowing(url), MUSICCALLBACK_RETRY_ATTEMPTS=2)
    payload = completed_with_links("task-1", url, "expired.mp3", "cover.jpeg")

    CallbackClient(app).deliver(payload)
    settle(app)

    [track] = task(app, "task-1").tracks
    assert track.media_status == "failed"
    assert (track.audio_error, track.image_error) == ("HTTP 404", None)
    # Given up on the audio, the archive announces the cover on its own: the page serves the
    # archived cover, and plays the provider's link of the audio.
    assert track.audio_path is None
    assert track.image_path is not None
    assert track.image_path.endswith("-cover.jpeg")
    assert (archive_folder(app) / track.image_path).is_file()
    html = page(app)
    assert AUDIO_SRC.findall(html) == [f"{url}/expired.mp3"]
    assert "Could not archive a copy (HTTP 404)" in html


def test_a_flaky_media_server_is_retried_off_the_request_path(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    server, url = origin
    server.fail("song.mp3", 2)
    app = make_example(**allowing(url))

    started = time.monotonic()
    answer = post_callback(app, completed_with_links("task-1", url, "song.mp3", "cover.jpeg"))
    answered_in = time.monotonic() - started
    settle(app)

    assert answer.json == {"status": "received"}
    assert answered_in < 0.5  # the answer did not wait for the media, nor their retries
    assert server.hits["song.mp3"] == 3
    [track] = task(app, "task-1").tracks
    assert track.media_status == "archived"
    assert archive_folder(app).joinpath(str(track.audio_path)).read_bytes() == AUDIO


def test_replay_archives_again_what_could_not_be_archived(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    server, url = origin
    server.fail("song.mp3", 3)
    app = make_example(**allowing(url), MUSICCALLBACK_RETRY_ATTEMPTS=1)
    CallbackClient(app).deliver(completed_with_links("task-1", url, "song.mp3", "cover.jpeg"))
    settle(app)
    assert task(app, "task-1").tracks[0].audio_error == "HTTP 503"

    server.fail("song.mp3", 0)
    result = app.test_cli_runner().invoke(args=["musiccallback", "replay", "--failed"])
    settle(app)

    assert result.exit_code == 0, result.output
    [track] = task(app, "task-1").tracks
    assert (track.media_status, track.audio_error) == ("archived", None)
    assert archive_folder(app).joinpath(str(track.audio_path)).read_bytes() == AUDIO


@pytest.mark.parametrize("allow", ["as shipped", "nothing"])
def test_links_to_other_services_on_loopback_are_never_fetched(
    make_example: ExampleFactory, origin: tuple[Origin, str], allow: str
) -> None:
    """The issue's probe: a callback whose links lead to another service of this machine (an
    admin page on loopback) makes the app fetch nothing, and serve nothing of it. As shipped,
    the app allows its own samples' port alone; a deployment that receives the provider's
    callbacks allows nothing that is not public."""
    server, url = origin
    app = make_example() if allow == "as shipped" else make_example(MUSICCALLBACK_ARCHIVE_ALLOW=[])

    CallbackClient(app).deliver(completed_with_links("task-1", url, "song.mp3", "cover.jpeg"))
    settle(app)

    assert server.hits == Counter()
    [track] = task(app, "task-1").tracks
    assert track.media_status == "failed"
    assert track.audio_error is not None
    assert "MUSICCALLBACK_ARCHIVE_ALLOW" in track.audio_error
    assert not any(path.is_file() for path in archive_folder(app).rglob("*.mp3"))


def test_two_tasks_archiving_at_once_keep_their_files_apart(
    make_example: ExampleFactory, origin: tuple[Origin, str]
) -> None:
    _, url = origin
    app = make_example(**allowing(url))
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

    files = {task(app, task_id).tracks[0].audio_path for task_id in ("a/b", "a_b")}
    assert len(files) == 2
    assert all(path and (archive_folder(app) / path).is_file() for path in files)
