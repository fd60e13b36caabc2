"""The example app, through its test client: what it records of each callback, and its page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from example_app import DEFAULTS, _instance_token
from example_app.models import Task, TaskStage, Track, db
from example_app.receivers import record
from flask_musiccallback.families import MUSIC
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import CallbackClient, build_callback, record_signals

from .conftest import TOKEN, ExampleFactory, example_config, settle, task

AUDIO = re.compile(r'<audio[^>]*\ssrc="([^"]+)"')
COVER = re.compile(r'<img class="track__cover" src="([^"]+)"')

ROOT = Path(__file__).resolve().parents[2]


def page(app: Flask) -> str:
    return app.test_client().get("/").get_data(as_text=True)


def simulate(client: CallbackClient, task_id: str, *stages: str) -> None:
    for stage in stages or ("text", "first", "complete"):
        assert client.deliver(stage, task_id=task_id).json == {"status": "received"}


def test_defaults_keep_everything_in_the_app_database_and_answer_before_receivers_run() -> None:
    assert DEFAULTS["MUSICCALLBACK_STORE"] == "sqlalchemy://"
    assert DEFAULTS["MUSICCALLBACK_DISPATCH"] == "thread"
    assert DEFAULTS["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")


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


def test_a_delivered_task_is_on_the_page_with_its_copies_without_waiting_for_the_pool(
    example: Flask, deliver: CallbackClient
) -> None:
    """What docs/testing.md promises a host under thread dispatch: deliver, then look."""
    simulate(deliver, "task-1")

    html = page(example)
    assert "task-1" in html
    assert "Neon Harbor" in html
    players = AUDIO.findall(html)
    assert len(players) == 2
    assert all(src.startswith("/media/") for src in players + COVER.findall(html))


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
    # The first track's audio is ready; the second has only its stream, which the page plays.
    # Both are simulated links, played from the app's own samples.
    first, second = AUDIO.findall(html)
    assert first.startswith("/samples/")
    assert first.endswith(".mp3")
    assert second.startswith("/samples/stream/")

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


def test_the_page_shows_the_callback_url_without_its_token(example: Flask) -> None:
    html = page(example)
    assert "/music-callback?token=…" in html
    assert TOKEN not in html


def test_media_outside_the_media_folder_is_not_served(example: Flask) -> None:
    client = example.test_client()
    assert client.get("/media/../example.db").status_code == 404
    assert client.get("/media/%2e%2e/example.db").status_code == 404


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


def test_simulate_in_its_own_process_saves_the_media_before_it_exits(
    make_example: ExampleFactory, tmp_path: Path
) -> None:
    config = example_config(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **{
            f"FLASK_{key}": str(config[key])
            for key in ("SQLALCHEMY_DATABASE_URI", "MEDIA_FOLDER", "MUSICCALLBACK_TOKEN")
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

    recorded = task(make_example(), "own-process")
    assert recorded.status == "complete"
    assert [track.media_status for track in recorded.tracks] == ["saved", "saved"]
    for track in recorded.tracks:
        assert track.audio_file
        assert (Path(config["MEDIA_FOLDER"]) / track.audio_file).is_file()


def test_receivers_report_no_failure_for_a_task_whose_media_cannot_be_saved(
    make_example: ExampleFactory,
) -> None:
    app = make_example(MEDIA_SAMPLE_HOST=None, MEDIA_DOWNLOAD_ATTEMPTS=1)
    payload = build_callback("complete", task_id="task-1", tracks=1)
    for key in ("audio_url", "image_url"):
        payload["data"]["data"][0][key] = "http://127.0.0.1:9/gone"

    with record_signals(app) as signals:
        assert CallbackClient(app).deliver(payload).json == {"status": "received"}
        settle(app)

    assert "receiver_failed" not in [name for name, _ in signals]
    track = task(app, "task-1").tracks[0]
    assert track.media_status == "failed"
    assert track.media_error
    assert "audio:" in track.media_error
    html = page(app)
    assert "Could not save a copy" in html
    assert AUDIO.findall(html) == ["http://127.0.0.1:9/gone"]


def test_an_empty_app_says_how_to_send_a_task(example: Flask) -> None:
    html = page(example)
    assert "No task yet" in html
    assert "flask --app example_app musiccallback simulate" in html
    with example.app_context():
        assert db.session.scalar(db.select(db.func.count(Task.id))) == 0


def test_init_creates_the_media_folder_and_says_how_to_send_a_task(
    example: Flask, tmp_path: Path
) -> None:
    result = example.test_cli_runner().invoke(args=["init", "--port", "5123"])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "media").is_dir()
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
    assert track.media_error is not None
    assert track.media_error.startswith("audio: ")
    assert "image: " in track.media_error
    answer = example.test_client().get("/")
    assert answer.status_code == 200
    assert "Could not save a copy" in answer.get_data(as_text=True)


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
        assert sorted(kept) == ["complete", "first", "text"]
