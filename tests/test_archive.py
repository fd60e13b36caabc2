"""The media archive (API.md section 11): each new success event's files copied to an fsspec
URL off the request path, every family, byte for byte, once, within the size cap, and only from
where links may lead.

Media come from a real HTTP server on 127.0.0.1 (:mod:`tests.media_host`), allowed by
``MUSICCALLBACK_ARCHIVE_ALLOW``; the archive is a ``file://`` folder, or fsspec's ``memory://``.
The stores' side (failed copies kept, listed and replayed, a restart) is in
tests/test_archive_stores.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback.config import ConfigurationError
from flask_musiccallback.families import BUILT_IN, Family
from flask_musiccallback.families.base import COMPLETE, Families
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import build_callback, record_signals

from .conftest import URL, build_app
from .family_kit import names, sent
from .listeners import listening
from .media_host import MediaHost, content, media_host

#: Every built-in family whose success carries files.
ARCHIVED = [family for family in BUILT_IN if family.name not in ("lyrics", "voice")]


@pytest.fixture
def host() -> Iterator[MediaHost]:
    with media_host() as served:
        yield served


def archive_app(tmp_path: Path, **config: Any) -> Flask:
    config.setdefault("ARCHIVE", (tmp_path / "archive").as_uri())
    config.setdefault("ARCHIVE_ALLOW", ["127.0.0.1"])
    config.setdefault("RETRY_ATTEMPTS", 2)
    config.setdefault("RETRY_BACKOFF", 0.05)
    return build_app(**config)


def settle(app: Flask) -> None:
    assert get_state(app).extension.wait_idle(10, app=app)


def success(family: Family, host: MediaHost, task_id: str | None = None) -> dict[str, Any]:
    assert family.example is not None
    return host.rebase(
        family.example(COMPLETE, task_id=task_id or f"{family.name}-{uuid.uuid4().hex[:8]}")
    )


def post(app: Flask, body: dict[str, Any]) -> Any:
    answer = app.test_client().post(URL, json=body)
    assert answer.status_code == 200, answer.get_json()
    return answer


@pytest.mark.parametrize("family", ARCHIVED, ids=lambda family: family.name)
def test_every_family_archived_byte_for_byte(
    tmp_path: Path, host: MediaHost, family: Family
) -> None:
    app = archive_app(tmp_path)
    body = success(family, host)
    with record_signals(app) as signals:
        post(app, body)
        settle(app)
    archived = sent(signals, "media_archived")
    assert len(archived) == 1, signals
    files: dict[str, str] = archived[0]["files"]
    event = archived[0]["event"]
    expected = family.media(event)
    assert len(files) == len(expected) > 0
    root = tmp_path / "archive"
    for media in expected:
        path = root / event.task_id / family.name / media.filename
        assert files[media.source] == path.as_uri()
        if media.url is not None:
            assert path.read_bytes() == content(host.path_of(media.url))
        else:
            assert json.loads(path.read_bytes()) == body["data"]
    assert not list(root.rglob(".*.part"))
    manifest = json.loads(
        (root / event.task_id / family.name / "complete.manifest.json").read_text()
    )
    recorded = {item["source"]: item for item in manifest["files"]}
    for media in expected:
        assert (
            recorded[media.source]["size"] == (root / recorded[media.source]["path"]).stat().st_size
        )
        if media.url is not None:
            assert recorded[media.source]["content_type"] is not None


def test_music_files_named_after_the_track(tmp_path: Path, host: MediaHost) -> None:
    app = archive_app(tmp_path)
    body = host.rebase(build_callback("complete", task_id="named-1", tracks=1))
    track = body["data"]["data"][0]
    track["title"] = "Rain / on: the Roof?"
    post(app, body)
    settle(app)
    folder = tmp_path / "archive" / "named-1" / "music"
    files = sorted(path.name for path in folder.iterdir())
    assert f"Rain-on-the-Roof-{track['id']}.mp3" in files
    assert f"Rain-on-the-Roof-{track['id']}-cover.jpeg" in files


@pytest.mark.parametrize("dispatch", ["sync", "thread"])
def test_the_answer_never_waits_for_a_download(
    tmp_path: Path, host: MediaHost, dispatch: str
) -> None:
    app = archive_app(tmp_path, DISPATCH=dispatch)
    body = host.rebase(build_callback("complete", task_id="slow-1", tracks=1))
    audio = host.path_of(body["data"]["data"][0]["audio_url"])
    release = host.held[audio] = threading.Event()
    with record_signals(app) as signals:
        answer = post(app, body)
        assert answer.get_json() == {"status": "received"}
        # The media server holds the file; the answer came all the same.
        assert not sent(signals, "media_archived")
        assert not (tmp_path / "archive" / "slow-1" / "music").exists() or not any(
            path.suffix == ".mp3" for path in (tmp_path / "archive" / "slow-1" / "music").iterdir()
        )
        release.set()
        settle(app)
    assert names(signals).count("media_archived") == 1


def test_a_redelivery_fetches_nothing_again(tmp_path: Path, host: MediaHost) -> None:
    app = archive_app(tmp_path)
    body = host.rebase(build_callback("complete", task_id="again-1", tracks=2))
    post(app, body)
    settle(app)
    fetched = sum(host.hits.values())
    assert fetched == 4
    with record_signals(app) as signals:
        assert post(app, body).get_json() == {"status": "duplicate"}
        settle(app)
    assert sum(host.hits.values()) == fetched
    assert "media_archived" not in names(signals)


def test_files_archived_already_are_not_fetched_again(tmp_path: Path, host: MediaHost) -> None:
    """The music ``first`` stage and ``complete`` name the first track alike: fetched once."""
    app = archive_app(tmp_path)
    first = host.rebase(build_callback("first", task_id="twice-1", tracks=1))
    post(app, first)
    settle(app)
    complete = host.rebase(build_callback("complete", task_id="twice-1", tracks=1))
    complete["data"]["data"] = first["data"]["data"]
    with record_signals(app) as signals:
        post(app, complete)
        settle(app)
    assert all(count == 1 for count in host.hits.values()), host.hits
    (archived,) = sent(signals, "media_archived")
    assert archived["files"]
    assert not any(file.fetched for file in archived["archived"])


def test_a_missing_file_ends_in_media_archive_failed_after_the_retries(
    tmp_path: Path, host: MediaHost
) -> None:
    app = archive_app(tmp_path, RETRY_ATTEMPTS=3, RETRY_BACKOFF=0.01)
    body = host.rebase(build_callback("complete", task_id="gone-1", tracks=1))
    track = body["data"]["data"][0]
    audio = host.path_of(track["audio_url"])
    host.statuses[audio] = 404
    with record_signals(app) as signals:
        post(app, body)
        settle(app)
    failed = sent(signals, "media_archive_failed")
    assert [(kwargs["url"], kwargs["error"]) for kwargs in failed] == [
        (track["audio_url"], "HTTP 404")
    ]
    assert host.hits[audio] == 3
    # The cover came, once, and is announced after the failure, on its own.
    assert host.hits[host.path_of(track["image_url"])] == 1
    names_sent = [name for name in names(signals) if name.startswith("media_")]
    assert names_sent == ["media_archive_failed", "media_archived"]
    (archived,) = sent(signals, "media_archived")
    assert list(archived["files"]) == [track["image_url"]]
    assert not list((tmp_path / "archive").rglob("*.mp3"))


def test_a_server_that_never_answers_times_out_and_fails(tmp_path: Path, host: MediaHost) -> None:
    app = archive_app(tmp_path, ARCHIVE_TIMEOUT=0.3, RETRY_ATTEMPTS=2, RETRY_BACKOFF=0.01)
    body = host.rebase(build_callback("complete", task_id="hang-1", tracks=1))
    audio = body["data"]["data"][0]["audio_url"]
    host.stalled[host.path_of(audio)] = 2.0
    with record_signals(app) as signals:
        post(app, body)
        settle(app)
    failed = sent(signals, "media_archive_failed")
    assert [kwargs["url"] for kwargs in failed] == [audio]
    assert "Timeout" in failed[0]["error"]
    assert host.hits[host.path_of(audio)] == 2


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_file_over_the_cap_is_not_kept_half_written(
    tmp_path: Path, host: MediaHost, declared: bool
) -> None:
    app = archive_app(tmp_path, ARCHIVE_MAX_BYTES=100_000, RETRY_ATTEMPTS=3)
    body = host.rebase(build_callback("complete", task_id="big-1", tracks=1))
    audio = body["data"]["data"][0]["audio_url"]
    host.sizes[host.path_of(audio)] = 1_000_000
    if declared:  # refused before the body is read
        host.declared.add(host.path_of(audio))
    with record_signals(app) as signals:
        post(app, body)
        settle(app)
    failed = sent(signals, "media_archive_failed")
    assert [kwargs["url"] for kwargs in failed] == [audio]
    assert "MUSICCALLBACK_ARCHIVE_MAX_BYTES" in failed[0]["error"]
    assert host.hits[host.path_of(audio)] == 1, "no retry can make the file smaller"
    folder = tmp_path / "archive" / "big-1" / "music"
    assert sorted(path.suffix for path in folder.iterdir()) == [".jpeg", ".json"]


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1:{port}/secret.mp3",
        "http://localhost:{port}/secret.mp3",
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/secret.mp3",
        "http://10.0.0.1:{port}/secret.mp3",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_links_into_the_network_are_never_connected_to(tmp_path: Path, link: str) -> None:
    with listening() as listener:
        app = archive_app(tmp_path, ARCHIVE_ALLOW=None, RETRY_ATTEMPTS=3, RETRY_BACKOFF=5.0)
        url = link.format(port=listener.port)
        body = build_callback("complete", task_id="ssrf-1", tracks=1)
        body["data"]["data"][0].update(audio_url=url, image_url=None, source_image_url=None)
        with record_signals(app) as signals:
            post(app, body)
            # Refused for good: given up at once, not after two back-offs of 5 s.
            assert get_state(app).extension.wait_idle(4, app=app)
        failed = sent(signals, "media_archive_failed")
        assert [kwargs["url"] for kwargs in failed] == [url]
        assert listener.connections() == 0
        assert not list((tmp_path / "archive").rglob("*.mp3"))


def test_memory_filesystem_as_the_archive(tmp_path: Path, host: MediaHost) -> None:
    root = f"memory://archive-{uuid.uuid4().hex[:8]}"
    app = archive_app(tmp_path, ARCHIVE=root)
    body = host.rebase(build_callback("complete", task_id="mem-1", tracks=1))
    post(app, body)
    settle(app)
    archive = get_state(app).archive
    assert archive is not None
    track = body["data"]["data"][0]
    name = f"{track['title'].replace(' ', '-')}-{track['id']}.mp3"
    with archive.open(f"mem-1/music/{name}") as file:
        assert file.read() == content(host.path_of(track["audio_url"]))


def test_memory_stays_flat_while_a_large_file_is_archived(tmp_path: Path, host: MediaHost) -> None:
    """64 MiB archived while Python's allocations stay within a few chunks."""
    app = archive_app(tmp_path, RETRY_ATTEMPTS=1)
    body = host.rebase(build_callback("complete", task_id="large-1", tracks=1))
    track = body["data"]["data"][0]
    track["image_url"] = track["source_image_url"] = None
    size = 64 * 1024 * 1024
    host.sizes[host.path_of(track["audio_url"])] = size
    tracemalloc.start()
    try:
        post(app, body)
        settle(app)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (archived,) = (tmp_path / "archive" / "large-1" / "music").glob("*.mp3")
    assert archived.stat().st_size == size
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes"


def test_failures_and_tasks_without_media_archive_nothing(tmp_path: Path, host: MediaHost) -> None:
    app = archive_app(tmp_path)
    with record_signals(app) as signals:
        post(app, build_callback("failed", task_id="fail-1"))
        post(app, host.rebase(build_callback("text", task_id="text-1")))
        settle(app)
    assert not [name for name in names(signals) if name.startswith("media_")]
    assert not host.hits


def test_without_an_archive_nothing_is_fetched(host: MediaHost) -> None:
    app = build_app()
    assert get_state(app).archive is None
    post(app, host.rebase(build_callback("complete", task_id="off-1")))
    settle(app)
    assert not host.hits


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"ARCHIVE": "nosuchprotocol://x"}, "MUSICCALLBACK_ARCHIVE"),
        (
            {"ARCHIVE": "file:///tmp/x", "ARCHIVE_ALLOW": ["not a host/"]},
            "MUSICCALLBACK_ARCHIVE_ALLOW",
        ),
        ({"ARCHIVE": "file:///tmp/x", "ARCHIVE_ALLOW": [42]}, "MUSICCALLBACK_ARCHIVE_ALLOW"),
        ({"ARCHIVE": "file:///tmp/x", "ARCHIVE_MAX_BYTES": 0}, "MUSICCALLBACK_ARCHIVE_MAX_BYTES"),
        ({"ARCHIVE": "file:///tmp/x", "ARCHIVE_TIMEOUT": 0}, "MUSICCALLBACK_ARCHIVE_TIMEOUT"),
    ],
)
def test_a_bad_archive_configuration_fails_at_start_up(config: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        build_app(**config)


def test_a_family_may_not_be_named_like_the_copies() -> None:
    family = BUILT_IN[1]
    with pytest.raises(ValueError, match="archive"):
        Families(dataclasses.replace(family, name="archive"))


def test_the_copies_are_kept_apart_from_the_events(tmp_path: Path, host: MediaHost) -> None:
    """The copy's key is its own: the same stage of the same task is not a duplicate of it."""
    app = archive_app(tmp_path)
    body = host.rebase(build_callback("complete", task_id="keys-1", tracks=1))
    with record_signals(app) as signals:
        post(app, body)
        settle(app)
    names_sent = names(signals)
    assert names_sent.count("all_tracks_generated") == 1
    assert names_sent.count("media_archived") == 1
    assert "callback_duplicate" not in names_sent


@pytest.mark.parametrize("path", ["../secret.txt", "/etc/passwd", "a/../../secret.txt", "..", "."])
def test_archive_open_never_leaves_the_archive(tmp_path: Path, path: str) -> None:
    (tmp_path / "secret.txt").write_text("not archived")
    app = archive_app(tmp_path)
    (tmp_path / "archive" / "a").mkdir(parents=True)
    archive = get_state(app).archive
    assert archive is not None
    with pytest.raises(FileNotFoundError):
        archive.open(path)


def test_content_types_outlive_the_run_that_fetched_them(tmp_path: Path, host: MediaHost) -> None:
    app = archive_app(tmp_path)
    first = host.rebase(build_callback("first", task_id="types-1", tracks=1))
    post(app, first)
    settle(app)
    complete = host.rebase(build_callback("complete", task_id="types-1", tracks=2))
    complete["data"]["data"][0] = first["data"]["data"][0]
    post(app, complete)
    settle(app)
    folder = tmp_path / "archive" / "types-1" / "music"
    manifest = json.loads((folder / "complete.manifest.json").read_text())
    by_source = {item["source"]: item for item in manifest["files"]}
    found = by_source[first["data"]["data"][0]["audio_url"]]
    assert (found["fetched"], found["content_type"]) == (False, "audio/mpeg")
    assert len(by_source) == 4


def test_what_a_killed_process_left_half_written_is_cleared(
    tmp_path: Path, host: MediaHost
) -> None:
    app = archive_app(tmp_path)
    body = host.rebase(build_callback("complete", task_id="stale-1", tracks=1))
    track = body["data"]["data"][0]
    name = f"{track['title'].replace(' ', '-')}-{track['id']}.mp3"
    folder = tmp_path / "archive" / "stale-1" / "music"
    folder.mkdir(parents=True)
    left = folder / f".{name}.0123abcd.part"
    left.write_bytes(b"half a file")
    hours_ago = time.time() - 7 * 3600
    os.utime(left, (hours_ago, hours_ago))
    writing = folder / f".{name}.4567cdef.part"
    writing.write_bytes(b"a live copy's")
    post(app, body)
    settle(app)
    # What a killed process left hours ago goes; a partial file written just now may be a
    # live copy's, and stays.
    assert sorted(path.name for path in folder.iterdir() if path.suffix == ".part") == [
        writing.name
    ]
    assert (folder / name).read_bytes() == content(host.path_of(track["audio_url"]))


def test_each_side_of_an_advanced_split_is_archived(tmp_path: Path, host: MediaHost) -> None:
    stems = next(family for family in BUILT_IN if family.name == "stems")
    app = archive_app(tmp_path)
    body = success(stems, host, task_id="split-1")
    side = {"duration": 30.5, "stem_type_group_name": "Vocals"}
    (info,) = (value for key, value in body["data"].items() if key.endswith("_info"))
    info["origin_data"] = [
        {
            "extract": {**side, "id": "x1", "audio_url": f"{host.base}/parts/vocals only.mp3"},
            "remove": {**side, "id": "r1", "audio_url": f"{host.base}/parts/no vocals.mp3"},
        }
    ]
    post(app, body)
    settle(app)
    folder = tmp_path / "archive" / "split-1" / "stems"
    assert (folder / "Vocals-extract-x1.mp3").read_bytes() == content("parts/vocals only.mp3")
    assert (folder / "Vocals-remove-r1.mp3").read_bytes() == content("parts/no vocals.mp3")


def test_a_host_family_cannot_name_a_file_out_of_its_folder(tmp_path: Path) -> None:
    from flask_musiccallback.archive.media import Media

    assert Media("../../etc/passwd", "mp3", url="https://x/y").filename == "etc-passwd.mp3"
    assert Media("a/b", "../sh", content=b"").filename == "a-b.sh"


def test_unnamed_parts_of_a_split_get_names_of_their_own() -> None:
    from flask_musiccallback.families.stems import STEMS, StemAudio, StemPart, StemsEvent

    def side(url: str) -> StemAudio:
        return StemAudio(id=None, audio_url=url, duration=None, group=None)

    parts = tuple(
        StemPart(side(f"https://x/{n}e.mp3"), side(f"https://x/{n}r.mp3")) for n in (1, 2)
    )
    event = StemsEvent(
        task_id="t",
        stage="complete",
        code=200,
        msg="",
        raw={},
        received_at=None,  # type: ignore[arg-type]
        stems={},
        parts=parts,
    )
    filenames = [media.filename for media in STEMS.media(event)]
    assert filenames == [
        "part-1-extract.mp3",
        "part-1-remove.mp3",
        "part-2-extract.mp3",
        "part-2-remove.mp3",
    ]


def test_two_tracks_with_one_long_title_keep_a_file_each(tmp_path: Path, host: MediaHost) -> None:
    app = archive_app(tmp_path)
    body = host.rebase(build_callback("complete", task_id="long-1", tracks=2))
    for track in body["data"]["data"]:
        track["title"] = "A very long title that the provider gives both variants of a task " * 2
    with record_signals(app) as signals:
        post(app, body)
        settle(app)
    (archived,) = sent(signals, "media_archived")
    assert len(set(archived["files"].values())) == 4, archived["files"]
    folder = tmp_path / "archive" / "long-1" / "music"
    for track in body["data"]["data"]:
        (audio,) = folder.glob(f"*-{track['id']}.mp3")
        assert audio.read_bytes() == content(host.path_of(track["audio_url"]))
        assert len(audio.stem) <= 80
        assert list(folder.glob(f"*-{track['id']}-cover.jpeg"))


def test_files_named_alike_by_a_family_are_kept_apart() -> None:
    from flask_musiccallback.archive.media import Media, distinct

    named = distinct([Media("x", "mp3", url="https://a/1"), Media("x", "mp3", url="https://a/2")])
    assert named[0].filename == "x.mp3"
    assert named[1].filename.startswith("x-")
    assert named[1].filename != "x.mp3"


def test_a_media_function_that_raises_costs_the_event_nothing(tmp_path: Path) -> None:
    from .karaoke_family import KARAOKE, karaoke_payload

    def broken(event: Any) -> Any:
        raise RuntimeError("no idea")

    app = archive_app(tmp_path)
    get_state(app).extension.families.register(dataclasses.replace(KARAOKE, media=broken))
    body = karaoke_payload("karaoke-1")
    with record_signals(app) as signals:
        assert post(app, body).get_json() == {"status": "received"}
        settle(app)
    names_sent = names(signals)
    assert "callback_received" in names_sent
    assert not [name for name in names_sent if name.startswith("media_")]


def test_a_compressed_answer_is_refused_not_decoded_in_memory(
    tmp_path: Path, host: MediaHost
) -> None:
    import gzip

    app = archive_app(tmp_path, RETRY_ATTEMPTS=3, RETRY_BACKOFF=5.0)
    body = host.rebase(build_callback("complete", task_id="gzip-1", tracks=1))
    track = body["data"]["data"][0]
    track["image_url"] = track["source_image_url"] = None
    host.encoded[host.path_of(track["audio_url"])] = gzip.compress(b"\0" * 10_000_000)
    with record_signals(app) as signals:
        post(app, body)
        assert get_state(app).extension.wait_idle(4, app=app)
    failed = sent(signals, "media_archive_failed")
    assert [kwargs["url"] for kwargs in failed] == [track["audio_url"]]
    assert "compressed" in failed[0]["error"]
    assert host.encodings == ["identity"]


def test_a_family_whose_copies_no_store_could_key_is_refused() -> None:
    family = BUILT_IN[1]
    with pytest.raises(ValueError, match="64"):
        Families(dataclasses.replace(family, name="w" * 50))
