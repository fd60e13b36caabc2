"""A host application for flask-musiccallback: what a real one looks like, small enough to read.

``scripts/demo.sh`` runs it on http://127.0.0.1:5000. It keeps every task it hears about in a
database (SQLite in the instance folder unless ``SQLALCHEMY_DATABASE_URI`` says otherwise), copies
each finished track's audio and cover to a local folder before the provider's links expire, and
shows it all on one page that follows tasks as they progress. ``flask --app example_app
musiccallback simulate`` sends it a task.

Configuration, lowest precedence first: :data:`DEFAULTS`, ``instance/config.py``, ``FLASK_*``
environment variables (``FLASK_MUSICCALLBACK_TOKEN``, ``FLASK_SQLALCHEMY_DATABASE_URI``), then the
``config`` given to :func:`create_app`. See docs/example-app.md.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import event, func

from flask_musiccallback.simulate import SIMULATED_MEDIA_HOST

from . import media
from .models import Task, Track, db
from .receivers import music
from .views import bp

#: The example app's configuration; its own keys are documented in docs/example-app.md.
DEFAULTS: Mapping[str, Any] = {
    # Relative SQLite paths are in the instance folder (Flask-SQLAlchemy).
    "SQLALCHEMY_DATABASE_URI": "sqlite:///example_app.db",
    # The extension keeps its deliveries in the app's own database, beside the tasks.
    "MUSICCALLBACK_STORE": "sqlalchemy://",
    # Receivers download media: answer the provider first, run them in a pool of threads.
    "MUSICCALLBACK_DISPATCH": "thread",
    # Where local copies of audio and covers go; None: the instance folder's "media".
    "MEDIA_FOLDER": None,
    "MEDIA_DOWNLOAD_ATTEMPTS": 3,
    "MEDIA_DOWNLOAD_BACKOFF": 1.0,
    "MEDIA_DOWNLOAD_TIMEOUT": 30.0,
    "MEDIA_MAX_BYTES": 50 * 1024 * 1024,
    # Links on this host are answered by built-in samples (see samples.py); None turns it off.
    "MEDIA_SAMPLE_HOST": SIMULATED_MEDIA_HOST,
    # Seconds between the page's checks for changes while a task is in progress.
    "PAGE_REFRESH_SECONDS": 3.0,
    # Tasks shown on the page, newest first.
    "PAGE_TASKS": 50,
}

#: The file in the instance folder holding the callback token made on the first run.
TOKEN_FILE = "callback-token"  # noqa: S105 - a file name


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; ``config`` wins over every other source (tests use it)."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    app.config.update(config or {})
    if app.config["MEDIA_FOLDER"] is None:
        app.config["MEDIA_FOLDER"] = os.path.join(app.instance_path, "media")
    if not any(
        app.config.get(key)
        for key in ("MUSICCALLBACK_TOKEN", "MUSICCALLBACK_HMAC_KEY", "MUSICCALLBACK_ALLOWED_IPS")
    ):
        app.config["MUSICCALLBACK_TOKEN"] = _instance_token(app)

    db.init_app(app)  # before the extension, so that sqlalchemy:// finds db at once
    music.init_app(app)
    app.register_blueprint(bp)
    app.cli.add_command(init_command)
    app.cli.add_command(download_media_command)
    with app.app_context():
        for engine in db.engines.values():
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
        db.create_all()
    return app


def _instance_token(app: Flask) -> str:
    """The token made on the first run, shared by the server and ``flask`` commands.

    Kept in the instance folder, so ``simulate --url`` from another terminal passes the server's
    check; created atomically, so two processes starting together agree on one.
    """
    path = Path(app.instance_path) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the other process may not have written it yet
            token = path.read_text().strip()
            if token:
                return token
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it to make a new callback token.") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """Write-ahead logging: the page and the receivers read while another receiver writes."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


@click.command("init")
@click.option("--port", type=int, default=5000, show_default=True, help="The port it will run on.")
@with_appcontext
def init_command(port: int) -> None:
    """Create the database, the media folder and the callback token, and say how to try it.

    Every start does the same; ``scripts/demo.sh`` runs this first to show where things are.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    folder = media.media_folder(app)
    folder.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with app.test_request_context(base_url=base):
        callback_url = music.callback_url()
    click.echo(
        f"""
  Database      {db.engine.url.render_as_string(hide_password=True)}
  Media         {folder}
  Page          {base}/
  Callback URL  {callback_url}

  Send it a simulated task from another terminal, in this folder:

      flask --app example_app musiccallback simulate

  or over HTTP, through the running server:

      flask --app example_app musiccallback simulate --url {base}/music-callback

  Another kind of task: add --family lyrics (or wav, stems, midi, video, cover, voice).
"""
    )


@click.command("download-media")
@click.argument("task_ids", nargs=-1)
@with_appcontext
def download_media_command(task_ids: tuple[str, ...]) -> None:
    """Copy the media of finished tasks that have no local copy yet (all tasks, or TASK_IDS)."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if not task_ids:
        task_ids = tuple(db.session.scalars(db.select(Task.id)).all())
    for task_id in task_ids:
        media.save_task_media(app, task_id)
    counts = db.session.execute(
        db.select(Track.media_status, func.count()).group_by(Track.media_status)
    ).all()
    click.echo(", ".join(f"{count} {status}" for status, count in counts) or "no tracks")
