"""The example app, through its test client: what it records of each callback, and its page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from markupsafe import escape

from example_app import DEFAULTS, SERVER_URL_FILE, _instance_token
from example_app.models import Result, Task, TaskStage, Track, db
from example_app.receivers import music, record
from flask_musiccallback.families import BUILT_IN, LYRICS, MUSIC, VOICE
from flask_musiccallback.simulate import post_callback
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.tasks import VIA_CALLBACK, VIA_POLL, TaskState
from flask_musiccallback.testing import CallbackClient, build_callback, record_signals

from .conftest import (
    TOKEN,
    ExampleFactory,
    archive_folder,
    base_url,
    example_config,
    instance,
    settle,
    task,
)

AUDIO = re.compile(r'<audio[^>]*\ssrc="([^"]+)"')
COVER = re.compile(r'<img class="track__cover" src="([^"]+)"')

ROOT = Path(__file__).resolve().parents[2]

#: Every family but music, whose results the page shows beside music's tracks.
FAMILIES = tuple(family.name for family in BUILT_IN if family is not MUSIC)


def page(app: Flask) -> str:
    return app.test_client().get("/").get_data(as_text=True)


def simulate(client: CallbackClient, task_id: str, *stages: str) -> None:
    for stage in stages or ("text", "first", "complete"):
        assert client.deliver(stage, task_id=task_id).json == {"status": "received"}


def test_defaults_keep_everything_in_the_app_database_and_answer_before_receivers_run() -> None:
    assert DEFAULTS["MUSICCALLBACK_STORE"] == "sqlalchemy://"
    assert DEFAULTS["MUSICCALLBACK_DISPATCH"] == "thread"
    assert DEFAULTS["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")


def test_media_are_archived_in_the_instance_folder_from_the_servers_own_samples(
    example: Flask,
) -> None:
    assert example.config["MUSICCALLBACK_ARCHIVE"] == archive_folder(example).as_uri()
    assert example.config["MUSICCALLBACK_SIMULATED_MEDIA_URL"] == f"{base_url(example)}/samples"
    # The samples are on loopback, which the archive refuses unless allowed: their port alone.
    port = urlsplit(base_url(example)).port
    assert example.config["MUSICCALLBACK_ARCHIVE_ALLOW"] == [f"127.0.0.1:{port}"]
    assert get_state(example).archive is not None


def test_the_server_url_is_the_one_init_recorded(
    make_example: ExampleFactory, tmp_path: Path
) -> None:
    """What a ``flask`` command in another terminal reads, to find the server's samples."""
    Path(instance(tmp_path)).mkdir()
    (Path(instance(tmp_path)) / SERVER_URL_FILE).write_text("http://127.0.0.1:5999\n")

    app = make_example(SERVER_URL=None)

    assert app.config["MUSICCALLBACK_SIMULATED_MEDIA_URL"] == "http://127.0.0.1:5999/samples"


def test_without_a_recorded_server_url_the_samples_are_on_flasks_default_port(
    make_example: ExampleFactory,
) -> None:
    app = make_example(SERVER_URL=None)

    assert app.config["MUSICCALLBACK_SIMULATED_MEDIA_URL"] == "http://127.0.0.1:5000/samples"


def test_the_app_is_built_on_thread_dispatch(example: Flask) -> None:
    assert type(get_state(example).dispatcher).__name__ == "ThreadDispatcher"


def test_a_simulated_task_shows_its_stages_tracks_and_players(
    example: Flask, deliver: CallbackClient
) -> None:
    simulate(deliver, "task-1")
    settle(example)

    html = page(example)
    assert "task-1" in html
    for stage, msg in (
        ("Text", "Text generation completed."),
        ("First track", "First track generation completed."),
        ("Complete", "All generated successfully."),
    ):
        assert f'<span class="step__name">{stage}</span>' in html
        assert msg in html
    assert "Neon Harbor" in html
    assert "Paper Satellites" in html
    assert "<li>synthwave</li>" in html
    assert ">2:30<" in html
    assert ">2:44<" in html
    players = AUDIO.findall(html)
    covers = COVER.findall(html)
    assert len(players) == 2
    assert len(covers) == 2
    assert all(src.startswith("/media/") for src in players + covers)


def test_a_delivered_task_is_on_the_page_without_waiting_for_the_pool(
    example: Flask, deliver: CallbackClient
) -> None:
    """What docs/testing.md promises a host under thread dispatch: deliver, then look. The
    media play from the archive once they are there, from their links until then."""
    simulate(deliver, "task-1")

    html = page(example)
    assert "task-1" in html
    assert "Neon Harbor" in html
    players = AUDIO.findall(html)
    assert len(players) == 2
    for src in players + COVER.findall(html):
        assert src.startswith(("/media/", f"{base_url(example)}/samples/"))


def test_the_page_serves_the_saved_copies(example: Flask, deliver: CallbackClient) -> None:
    simulate(deliver, "task-1", "complete")
    settle(example)

    html = page(example)
    client = example.test_client()
    audio = client.get(AUDIO.findall(html)[0])
    cover = client.get(COVER.findall(html)[0])
    assert audio.status_code == 200
    assert audio.mimetype in ("audio/wav", "audio/x-wav")
    assert audio.data[:4] == b"RIFF"
    assert cover.status_code == 200
    assert cover.mimetype == "image/svg+xml"
    assert cover.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert cover.headers["X-Content-Type-Options"] == "nosniff"


def test_every_stage_is_recorded_once_however_often_it_arrives(
    example: Flask, deliver: CallbackClient
) -> None:
    simulate(deliver, "task-1")
    assert deliver.deliver("complete", task_id="task-1").json == {"status": "duplicate"}
    settle(example)

    with example.app_context():
        stages = db.session.scalars(db.select(TaskStage.stage)).all()
        tracks = db.session.scalar(db.select(db.func.count(Track.id)))
    assert sorted(stages) == ["complete", "first", "text"]
    assert tracks == 2


def test_a_failed_task_shows_its_code_message_and_error(
    example: Flask, deliver: CallbackClient
) -> None:
    payload = {
        "code": 501,
        "msg": "Audio generation failed.",
        "data": {
            "callbackType": "error",
            "task_id": "task-f",
            "error": "Generation failed due to technical issues",
        },
    }
    assert deliver.deliver(payload).json == {"status": "received"}
    settle(example)

    assert task(example, "task-f").status == "failed"
    html = page(example)
    assert 'class="task task--failed"' in html
    assert '<span class="step__code" title="code">501</span>' in html
    assert "Audio generation failed." in html
    assert "Generation failed due to technical issues" in html


def test_a_task_in_progress_keeps_the_page_watching_it(
    example: Flask, deliver: CallbackClient
) -> None:
    simulate(deliver, "task-1", "text", "first")
    settle(example)

    html = page(example)
    assert 'data-active="true"' in html
    assert '<noscript><meta http-equiv="refresh"' in html
    assert "Waiting for the next stage" in html
    # The first track's audio is ready, and archived with its stage; the second has only its
    # stream, which the page plays from the link: the app's own sample.
    first, second = AUDIO.findall(html)
    assert first.startswith("/media/task-1/music/")
    assert first.endswith(".mp3")
    assert second.startswith(f"{base_url(example)}/samples/stream/")

    simulate(deliver, "task-1", "complete")
    settle(example)
    html = page(example)
    assert 'data-active="false"' in html
    assert "http-equiv" not in html


def test_an_earlier_stage_processed_late_does_not_undo_a_later_one(example: Flask) -> None:
    complete = MUSIC.load(build_callback("complete", task_id="task-1"))
    first = MUSIC.load(build_callback("first", task_id="task-1"))

    with example.app_context():
        record(complete)
        record(first)

    recorded = task(example, "task-1")
    assert recorded.status == "complete"
    assert [stage.stage for stage in recorded.stages] == ["complete", "first"]
    second = recorded.tracks[1]
    assert second.stage == "complete"
    assert second.audio_url == complete.tracks[1].audio_url
    assert second.duration == complete.tracks[1].duration


def test_tasks_are_listed_newest_first(example: Flask, deliver: CallbackClient) -> None:
    for task_id in ("older", "middle", "newest"):
        simulate(deliver, task_id, "text")
        settle(example)

    html = page(example)
    assert html.index("newest") < html.index("middle") < html.index("older")


def test_the_list_answers_not_modified_until_a_task_changes(
    example: Flask, deliver: CallbackClient
) -> None:
    client = example.test_client()
    first = client.get("/tasks")
    assert first.status_code == 200
    assert first.headers["ETag"]
    again = client.get("/tasks", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304

    simulate(deliver, "task-1", "text")
    settle(example)
    changed = client.get("/tasks", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200
    assert "task-1" in changed.get_data(as_text=True)


# The extension's task view on the page: each task's state, and how each stage came.


def article(html: str, task_id: str) -> str:
    """The part of the page showing ``task_id``."""
    match = re.search(rf'<article [^>]*data-task="{re.escape(task_id)}".*?</article>', html, re.S)
    assert match is not None, f"{task_id} is not on the page"
    return match.group(0)


def step(html: str, stage: str) -> str:
    match = re.search(rf'<li class="step step--{stage}">.*?</li>', html, re.S)
    assert match is not None, f"no {stage} in {html}"
    return match.group(0)


def reconcile_once(app: Flask, task_id: str, **change: bool) -> None:
    """What reconciliation records of a task it looked at: overdue, or given up as lost."""
    store = get_state(app).store
    assert store.claim_task(task_id, "test-reconciler", lease=60, now=datetime.now(timezone.utc))
    store.release_task(task_id, "test-reconciler", **change)


def test_the_page_shows_each_tasks_state_and_whether_each_stage_came_by_callback_or_poll(
    example: Flask, deliver: CallbackClient
) -> None:
    # The extension records each delivered stage on the task itself, the first way it came
    # winning: text and first come by callback; complete only by a poll, recorded as
    # reconciliation does (the app's receiver, then the stage on the task view).
    simulate(deliver, "task-1", "text", "first")
    settle(example)
    with example.app_context():
        record(MUSIC.load(build_callback("complete", task_id="task-1")))
    get_state(example).store.record_stage(
        "task-1",
        "music",
        "complete",
        at=datetime.now(timezone.utc),
        via=VIA_POLL,
        final=TaskState.COMPLETE,
    )
    recorded = get_state(example).store.task("task-1")
    assert recorded is not None
    assert dict(recorded.sources) == {
        "text": VIA_CALLBACK,
        "first": VIA_CALLBACK,
        "complete": VIA_POLL,
    }

    shown = article(page(example), "task-1")

    assert '<span class="state state--complete"' in shown
    assert ">Complete</span>" in shown
    assert ">by callback<" in step(shown, "text")
    assert ">by callback<" in step(shown, "first")
    assert ">by poll<" in step(shown, "complete")


def test_a_submitted_task_shows_as_open_before_any_callback(example: Flask) -> None:
    with example.app_context():
        music.expect("submitted-1")

    shown = article(page(example), "submitted-1")

    assert '<span class="state state--open"' in shown
    assert "Submitted, nothing heard yet" in shown


def test_an_overdue_task_is_shown_overdue_though_nothing_was_ever_received(
    example: Flask,
) -> None:
    with example.app_context():
        music.expect("silent-1")
    reconcile_once(example, "silent-1", overdue=True)

    shown = article(page(example), "silent-1")

    assert "task--overdue" in shown
    assert ">Overdue</span>" in shown
    assert '<span class="family family--music">Music</span> Submitted' in shown
    assert "Overdue since" in shown
    assert "reconciliation asks the provider" in shown


def test_a_lost_task_is_shown_lost_and_no_longer_watched(
    example: Flask, deliver: CallbackClient
) -> None:
    simulate(deliver, "task-1", "text")
    settle(example)
    with example.app_context():
        music.expect("task-1")
    reconcile_once(example, "task-1", overdue=True, lost=True)

    html = page(example)
    shown = article(html, "task-1")

    assert "task--lost" in shown
    assert ">Lost</span>" in shown
    assert "Lost: nothing more will come." in shown
    assert "Waiting for the next stage" not in shown
    assert step(shown, "text")
    assert 'data-active="false"' in html


def test_the_list_changes_when_only_the_task_view_does(example: Flask) -> None:
    """Reconciliation writes to the extension's store, not to the app's tables: the page's
    refresh must see it all the same."""
    with example.app_context():
        music.expect("silent-1")
    client = example.test_client()
    before = client.get("/tasks").headers["ETag"]

    reconcile_once(example, "silent-1", overdue=True)

    changed = client.get("/tasks", headers={"If-None-Match": before})
    assert changed.status_code == 200
    assert ">Overdue</span>" in changed.get_data(as_text=True)


def test_the_page_shows_the_callback_url_without_its_token(example: Flask) -> None:
    html = page(example)
    assert "/music-callback?token=…" in html
    assert TOKEN not in html


def test_a_first_run_makes_one_token_that_later_runs_reuse(tmp_path: Path) -> None:
    app = Flask("token_test", instance_path=str(tmp_path / "instance"))
    token = _instance_token(app)

    assert len(token) >= 32
    assert _instance_token(app) == token
    assert (tmp_path / "instance" / "callback-token").stat().st_mode & 0o077 == 0


def test_the_simulate_command_makes_a_task_appear_with_players(example: Flask) -> None:
    result = example.test_cli_runner().invoke(
        args=["musiccallback", "simulate", "--task-id", "cli-1"]
    )
    assert result.exit_code == 0, result.output
    settle(example)

    assert task(example, "cli-1").status == "complete"
    assert len(AUDIO.findall(page(example))) == 2


def test_simulate_in_its_own_process_archives_the_media_before_it_exits(
    example: Flask, tmp_path: Path
) -> None:
    """As from a second terminal beside the demo: the command's process delivers in-process,
    and its archive fetches the media from the server's samples."""
    config = example_config(tmp_path, base_url(example))
    config["MUSICCALLBACK_ARCHIVE"] = archive_folder(example).as_uri()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **{
            f"FLASK_{key}": str(config[key])
            for key in (
                "SQLALCHEMY_DATABASE_URI",
                "SERVER_URL",
                "MUSICCALLBACK_TOKEN",
                "MUSICCALLBACK_ARCHIVE",
            )
        },
    }
    command = [sys.executable, "-m", "flask", "--app", "example_app"]
    answer = subprocess.run(
        [*command, "musiccallback", "simulate", "--task-id", "own-process"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    assert "complete  200" in answer.stdout

    recorded = task(example, "own-process")
    assert recorded.status == "complete"
    assert [track.media_status for track in recorded.tracks] == ["archived", "archived"]
    for track in recorded.tracks:
        assert track.audio_path
        assert (archive_folder(example) / track.audio_path).is_file()


def test_receivers_report_no_failure_for_a_task_whose_media_cannot_be_archived(
    make_example: ExampleFactory,
) -> None:
    # Allowed, and nothing listens there: each copy fails to connect.
    app = make_example(MUSICCALLBACK_RETRY_ATTEMPTS=1, MUSICCALLBACK_ARCHIVE_ALLOW=["127.0.0.1:9"])
    payload = build_callback("complete", task_id="task-1", tracks=1)
    for key in ("audio_url", "image_url"):
        payload["data"]["data"][0][key] = "http://127.0.0.1:9/gone"

    with record_signals(app) as signals:
        assert CallbackClient(app).deliver(payload).json == {"status": "received"}
        settle(app)

    assert "receiver_failed" not in [name for name, _ in signals]
    assert [name for name, _ in signals].count("media_archive_failed") == 2
    track = task(app, "task-1").tracks[0]
    assert track.media_status == "failed"
    assert track.audio_error
    assert "ConnectError" in track.audio_error
    html = page(app)
    assert "Could not archive a copy" in html
    assert AUDIO.findall(html) == ["http://127.0.0.1:9/gone"]


def test_an_empty_app_says_how_to_send_a_task(example: Flask) -> None:
    html = page(example)
    assert "No task yet" in html
    assert "flask --app example_app musiccallback simulate" in html
    with example.app_context():
        assert db.session.scalar(db.select(db.func.count(Task.id))) == 0


def test_init_creates_the_archive_folder_and_says_how_to_send_a_task(
    example: Flask, tmp_path: Path
) -> None:
    result = example.test_cli_runner().invoke(args=["init", "--port", "5123"])

    assert result.exit_code == 0, result.output
    assert archive_folder(example).is_dir()
    assert archive_folder(example).as_uri() in result.output
    # Where later commands (a simulate in another terminal) find the server's samples.
    assert (Path(example.instance_path) / SERVER_URL_FILE).read_text() == "http://127.0.0.1:5123\n"
    assert str(tmp_path / "example.db") in result.output
    assert "flask --app example_app musiccallback simulate\n" in result.output
    assert "--url http://127.0.0.1:5123/music-callback" in result.output
    assert f"http://127.0.0.1:5123/music-callback?token={TOKEN}" in result.output


def test_links_that_are_not_urls_are_recorded_as_failures_and_the_page_still_shows(
    example: Flask, deliver: CallbackClient
) -> None:
    payload = build_callback("complete", task_id="task-1", tracks=1)
    payload["data"]["data"][0].update(audio_url="http://[::1", image_url="not a link at all")

    assert deliver.deliver(payload).json == {"status": "received"}
    settle(example)

    track = task(example, "task-1").tracks[0]
    assert track.media_status == "failed"
    assert track.audio_error
    assert track.image_error
    answer = example.test_client().get("/")
    assert answer.status_code == 200
    assert "Could not archive a copy" in answer.get_data(as_text=True)


def test_deliveries_are_kept_in_the_app_database_beside_its_tasks(
    example: Flask, deliver: CallbackClient
) -> None:
    simulate(deliver, "task-1")
    settle(example)

    assert get_state(example).store.persistent
    with example.app_context():
        kept = db.session.execute(
            sa.text("SELECT stage FROM musiccallback_deliveries WHERE task_id = 'task-1'")
        ).scalars()
        # The media copies too, as deliveries of their own: kept, listed and replayed alike.
        assert sorted(kept) == ["archive:complete", "archive:first", "complete", "first", "text"]


# Every other family: each result shown as a person would want it, and failures as music's are.


def deliver_family(
    client: CallbackClient, family: str, stage: str = "complete", task_id: str = "task-1", **kw: Any
) -> dict[str, Any]:
    """Deliver a simulated callback of ``family`` to its family's callback URL, its media the
    app's samples, as ``CallbackClient`` links them; returns its body."""
    media_base = client.app.config["MUSICCALLBACK_SIMULATED_MEDIA_URL"]
    payload = build_callback(stage, family=family, task_id=task_id, media_base=media_base, **kw)
    answer = client.deliver(payload, family=family, family_in_url=True)
    assert answer.json == {"status": "received"}
    return payload


def test_lyrics_show_each_variant_as_text_under_its_title(
    example: Flask, deliver: CallbackClient
) -> None:
    payload = deliver_family(deliver, "lyrics", tracks=3)

    html = page(example)
    assert '<span class="family family--lyrics">Lyrics</span>' in html
    variants = payload["data"]["data"]
    assert len(variants) == 3
    for variant in variants:
        assert f'<h3 class="result__title">{escape(variant["title"])}</h3>' in html
        # As sent, line breaks and all; the page keeps them (white-space: pre-wrap).
        assert f'<p class="lyrics__text">{escape(variant["text"])}</p>' in html
    assert "[Verse]\nCity lights on the river\n[Chorus]" in html


def test_a_lyrics_variant_that_failed_shows_why(example: Flask, deliver: CallbackClient) -> None:
    payload = build_callback("complete", family="lyrics", task_id="task-1")
    payload["data"]["data"][1].update(
        text="", status="failed", errorMessage="The prompt contains sensitive words"
    )
    deliver.deliver(payload, family="lyrics", family_in_url=True)

    html = page(example)
    assert '<p class="result__error">The prompt contains sensitive words</p>' in html
    assert html.count('class="lyrics__text"') == 1


def test_a_wav_shows_a_player_and_a_download_link(example: Flask, deliver: CallbackClient) -> None:
    deliver_family(deliver, "wav")
    settle(example)

    html = page(example)
    [src] = AUDIO.findall(html)
    assert src.startswith("/media/task-1/wav/")
    assert src.endswith(".wav")
    assert f'<a href="{src}" download>Download the WAV</a>' in html
    answer = example.test_client().get(src)
    assert answer.mimetype == "audio/wav"
    assert answer.data[:4] == b"RIFF"


STEM = re.compile(r'<audio [^>]*src="([^"]+)" aria-label="([^"]+)"')


def test_stems_show_a_labelled_player_per_stem(example: Flask, deliver: CallbackClient) -> None:
    deliver_family(deliver, "stems", tracks=4)  # a stem split into its first four stems
    settle(example)

    html = page(example)
    stems = STEM.findall(html)
    assert [label for _, label in stems] == ["Vocal", "Backing vocals", "Drums", "Bass"]
    assert all(src.startswith("/media/task-1/stems/") for src, _ in stems)
    assert len({src for src, _ in stems}) == 4
    for _, label in stems:
        assert f'<span class="stem__name">{label}</span>' in html


def test_an_advanced_split_shows_each_part_and_the_track_without_it(
    example: Flask, deliver: CallbackClient
) -> None:
    payload = build_callback("complete", family="stems", task_id="task-1", reseller="kie")
    cdn = f"{base_url(example)}/samples/split"
    payload["data"]["vocal_separation_info"] = {
        "origin_url": f"{cdn}/origin.mp3",
        "origin_data": [
            {
                "extract": {
                    "id": "e1",
                    "audio_url": f"{cdn}/Lead Vocals.mp3",
                    "duration": 183.4,
                    "stem_type_group_name": "Vocals",
                },
                "remove": {
                    "id": "r1",
                    "audio_url": f"{cdn}/Lead Vocals removed.mp3",
                    "duration": "183.4",
                    "stem_type_group_name": "Vocals",
                },
            }
        ],
    }
    deliver.deliver(payload, family="stems", family_in_url=True)
    settle(example)

    html = page(example)
    stems = STEM.findall(html)
    assert [label for _, label in stems] == ["Original", "Vocals", "Without vocals"]
    # The archive keeps the stems by name, and each side of a split's parts by its group.
    assert stems[0][0].startswith("/media/task-1/stems/")
    assert stems[1][0] == "/media/task-1/stems/Vocals-extract-e1.mp3"
    assert stems[2][0] == "/media/task-1/stems/Vocals-remove-r1.mp3"
    assert html.count('<span class="stem__duration">3:03</span>') == 2


def test_midi_shows_each_instrument_with_its_note_count_and_the_total(
    example: Flask, deliver: CallbackClient
) -> None:
    payload = deliver_family(deliver, "midi", tracks=3)

    html = page(example)
    instruments = payload["data"]["instruments"]
    total = sum(len(instrument["notes"]) for instrument in instruments)
    assert total > 0
    for instrument in instruments:
        name, count = escape(instrument["name"]), len(instrument["notes"])
        assert f'<tr><th scope="row">{name}</th><td class="midi__count">{count}</td></tr>' in html
    assert f'<td class="midi__count midi__total">{total}</td>' in html
    assert f"MIDI: 3 instruments, {total} notes" in html


def test_a_video_is_shown_in_a_player_with_a_link(example: Flask, deliver: CallbackClient) -> None:
    deliver_family(deliver, "video")
    settle(example)

    html = page(example)
    [src] = re.findall(r'<video [^>]*src="([^"]+)"', html)
    assert src.startswith("/media/task-1/video/")
    assert f'<a href="{src}">Open the video</a>' in html
    client = example.test_client()
    video = client.get(src)
    assert video.mimetype == "video/mp4"
    assert video.data[4:8] == b"ftyp"
    part = client.get(src, headers={"Range": "bytes=0-99"})  # what a player seeks with
    assert part.status_code == 206
    assert part.data == video.data[:100]


def test_cover_images_are_shown_as_thumbnails(example: Flask, deliver: CallbackClient) -> None:
    payload = deliver_family(deliver, "cover", tracks=3)
    settle(example)

    html = page(example)
    images = re.findall(r'<img class="cover-image" src="([^"]+)"', html)
    assert len(images) == len(payload["data"]["images"]) == 3
    assert 'alt="Cover image 2 of 3"' in html
    for src in images:
        assert src.startswith("/media/task-1/cover/")
        assert example.test_client().get(src).mimetype == "image/svg+xml"


def test_a_voice_shows_the_phrase_to_record_then_its_voice_id(
    example: Flask, deliver: CallbackClient
) -> None:
    phrase = deliver_family(deliver, "voice", "phrase")["data"]["validateInfo"]

    html = page(example)
    assert f'<blockquote class="voice__phrase">{escape(phrase)}</blockquote>' in html
    assert "Phrase to record" in html
    assert 'data-active="true"' in html  # the complete stage is still to come

    voice_id = deliver_family(deliver, "voice")["data"]["voiceId"]
    html = page(example)
    assert f'<code class="voice__id">{voice_id}</code>' in html
    assert "voice__phrase" not in html
    assert '<span class="status status--complete">Complete</span>' in html


def test_a_late_phrase_does_not_undo_a_ready_voice(example: Flask) -> None:
    complete = VOICE.load(build_callback("complete", family="voice", task_id="task-1"))
    phrase = VOICE.load(build_callback("phrase", family="voice", task_id="task-1"))

    with example.app_context():
        record(complete)
        record(phrase)

    recorded = task(example, "task-1")
    assert recorded.status == "complete"
    [result] = recorded.results
    assert (result.stage, result.data["voice_id"]) == ("complete", complete.voice_id)


def test_voice_stages_processed_at_once_end_with_the_voice(example: Flask) -> None:
    bodies = [
        build_callback(stage, family="voice", task_id="task-1") for stage in ("phrase", "complete")
    ]
    threads = [
        threading.Thread(
            target=post_callback, args=(example, body), kwargs={"query": {"family": "voice"}}
        )
        for body in bodies
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settle(example)

    recorded = task(example, "task-1")
    assert sorted(stage.stage for stage in recorded.stages) == ["complete", "phrase"]
    [result] = recorded.results
    assert result.data["voice_id"] == bodies[1]["data"]["voiceId"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_failure_of_any_family_shows_its_code_and_message(
    example: Flask, deliver: CallbackClient, family: str
) -> None:
    payload = deliver_family(deliver, family, "failed")

    assert task(example, "task-1").status == "failed"
    html = page(example)
    assert 'class="task task--failed"' in html
    assert f'<span class="family family--{family}">' in html
    assert f'<span class="step__code" title="code">{payload["code"]}</span>' in html
    assert f'<span class="step__msg">{escape(payload["msg"])}</span>' in html
    assert 'class="result ' not in html  # a failure has no result to show


def test_a_failed_voice_shows_its_error_under_the_phrase(
    example: Flask, deliver: CallbackClient
) -> None:
    deliver_family(deliver, "voice", "phrase")
    error = deliver_family(deliver, "voice", "failed")["data"]["errorMessage"]

    html = page(example)
    assert f'<span class="step__error">{escape(error)}</span>' in html
    assert "voice__phrase" in html
    assert '<span class="status status--failed">Failed</span>' in html


@pytest.mark.parametrize("family", FAMILIES)
def test_the_simulate_command_sends_a_task_of_any_family_to_the_page(
    example: Flask, family: str
) -> None:
    result = example.test_cli_runner().invoke(
        args=["musiccallback", "simulate", "--family", family, "--task-id", "cli-1"]
    )
    assert result.exit_code == 0, result.output
    settle(example)

    recorded = task(example, "cli-1")
    assert recorded.families == [family]
    assert [result.family for result in recorded.results] == [family]
    assert f'class="result result--{family}"' in page(example)


def test_a_redelivered_or_retried_result_is_recorded_once(
    example: Flask, deliver: CallbackClient
) -> None:
    payload = deliver_family(deliver, "lyrics")
    assert deliver.deliver(payload, family="lyrics", family_in_url=True).json == {
        "status": "duplicate"
    }
    with example.app_context():  # the receiver run again, as after a failure
        record(LYRICS.load(payload))
        stages = db.session.scalar(db.select(db.func.count(TaskStage.id)))
        results = db.session.scalars(db.select(Result)).all()
        assert stages == 1
        assert [result.family for result in results] == ["lyrics"]


def test_one_task_id_in_two_families_keeps_both(example: Flask, deliver: CallbackClient) -> None:
    simulate(deliver, "task-1", "complete")
    deliver_family(deliver, "lyrics")

    recorded = task(example, "task-1")
    assert recorded.families == ["music", "lyrics"]
    assert [(stage.family, stage.stage) for stage in recorded.stages] == [
        ("music", "complete"),
        ("lyrics", "complete"),
    ]
    html = page(example)
    assert "Neon Harbor" in html
    assert 'class="lyrics__text"' in html


def test_doctor_builds_the_callback_url_from_the_server_url(example: Flask) -> None:
    result = example.test_cli_runner().invoke(args=["musiccallback", "doctor"])

    line = next(line for line in result.output.splitlines() if "callback-url" in line)
    server_url = example.config["SERVER_URL"].rstrip("/")
    assert line.startswith("warn"), result.output  # loopback: out of the provider's reach
    assert f"{server_url}/music-callback?token=[redacted]" in line
    assert result.exit_code == 0, result.output
