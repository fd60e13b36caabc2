"""A host application for flask-musiccallback: what a real one looks like, small enough to read.

``scripts/demo.sh`` runs it on http://127.0.0.1:5000. It keeps every task it hears about in a
database (SQLite in the instance folder unless ``SQLALCHEMY_DATABASE_URI`` says otherwise), has the
extension archive every result's media before the provider's links expire (a folder of the
instance folder unless ``MUSICCALLBACK_ARCHIVE`` says otherwise), and shows it all on one page that
follows tasks as they progress, playing the archived copies; ``/metrics`` shows what it and the
extension measure (metrics.py). ``flask --app example_app musiccallback simulate`` sends it a
task, whose media it serves itself (samples.py); or the page's form submits one with
``music.submit`` to the stand-in for the provider's API that it also serves, which calls back
(provider.py).

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
from urllib.parse import urlsplit

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import event

from flask_musiccallback.state import get_state

from . import metrics, provider
from .models import db
from .receivers import music
from .views import bp

#: The example app's configuration; its own keys are documented in docs/example-app.md.
DEFAULTS: Mapping[str, Any] = {
    # Relative SQLite paths are in the instance folder (Flask-SQLAlchemy).
    "SQLALCHEMY_DATABASE_URI": "sqlite:///example_app.db",
    # The extension keeps its deliveries in the app's own database, beside the tasks.
    "MUSICCALLBACK_STORE": "sqlalchemy://",
    # Answer the provider first; run the receivers in a pool of threads.
    "MUSICCALLBACK_DISPATCH": "thread",
    # Where this app's server is, as the app itself reaches it; None: what `flask init --port`
    # recorded in the instance folder, else http://127.0.0.1:5000.
    "SERVER_URL": None,
    # Seconds between the page's checks for changes while a task is in progress.
    "PAGE_REFRESH_SECONDS": 3.0,
    # Tasks shown on the page, newest first.
    "PAGE_TASKS": 50,
    # Give the process OpenTelemetry's SDK meter provider, whose Prometheus reader /metrics shows
    # (once per process; see metrics.py). False leaves OpenTelemetry to the process.
    "METRICS_PROVIDER": True,
    # Serve a stand-in for the provider's API at /fake-provider, which takes the tasks the page
    # submits and calls them back (provider.py); the app submits there unless
    # MUSICCALLBACK_API_BASE_URL and MUSICCALLBACK_API_KEY say otherwise. False: no such route.
    "FAKE_PROVIDER": True,
    # Seconds the fake provider waits before each callback of a task.
    "FAKE_PROVIDER_SECONDS": 1.0,
}

# Set by create_app unless configured (None turns either off): MUSICCALLBACK_EXTERNAL_URL,
# SERVER_URL; MUSICCALLBACK_ARCHIVE, the folder "archive" of the instance folder;
# MUSICCALLBACK_SIMULATED_MEDIA_URL, SERVER_URL's /samples.
# And MUSICCALLBACK_ARCHIVE_ALLOW: the archive fetches links that lead to public addresses only,
# and simulated tasks' media are this app's own samples, on loopback: the address and port of
# MUSICCALLBACK_SIMULATED_MEDIA_URL are allowed, that port only, so that a callback cannot have
# the app fetch (and serve) what another service on the machine's loopback answers. An app that
# receives the provider's callbacks allows nothing (FLASK_MUSICCALLBACK_ARCHIVE_ALLOW='[]').
# With FAKE_PROVIDER: MUSICCALLBACK_API_BASE_URL, SERVER_URL's /fake-provider, and
# MUSICCALLBACK_API_KEY, the key it accepts; a real provider's, configured, wins.

#: The file in the instance folder holding the callback token made on the first run.
TOKEN_FILE = "callback-token"  # noqa: S105 - a file name
#: The file in the instance folder holding the server's URL, as ``init --port`` says it.
SERVER_URL_FILE = "server-url"
#: The server's URL when nothing says otherwise (``flask run``'s default).
DEFAULT_SERVER_URL = "http://127.0.0.1:5000"


def _own_address(samples_url: str | None) -> list[str]:
    """The allow-list entry of the server the samples come from: ``host:port``, or none."""
    if not samples_url:
        return []
    parts = urlsplit(samples_url)
    if parts.hostname is None:
        return []
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return [f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"]


def create_app(
    config: Mapping[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Build the app; ``config`` wins over every other source (tests use it, and
    ``instance_path``)."""
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    app.config.update(config or {})
    if app.config["SERVER_URL"] is None:
        app.config["SERVER_URL"] = _recorded_server_url(app)
    app.config.setdefault("MUSICCALLBACK_EXTERNAL_URL", app.config["SERVER_URL"])
    app.config.setdefault("MUSICCALLBACK_ARCHIVE", (Path(app.instance_path) / "archive").as_uri())
    app.config.setdefault(
        "MUSICCALLBACK_SIMULATED_MEDIA_URL", f"{app.config['SERVER_URL'].rstrip('/')}/samples"
    )
    app.config.setdefault(
        "MUSICCALLBACK_ARCHIVE_ALLOW", _own_address(app.config["MUSICCALLBACK_SIMULATED_MEDIA_URL"])
    )
    if app.config["FAKE_PROVIDER"]:
        app.config.setdefault(
            "MUSICCALLBACK_API_BASE_URL", provider.base_url(app.config["SERVER_URL"])
        )
        app.config.setdefault("MUSICCALLBACK_API_KEY", provider.DEMO_API_KEY)
    if not any(
        app.config.get(key)
        for key in ("MUSICCALLBACK_TOKEN", "MUSICCALLBACK_HMAC_KEY", "MUSICCALLBACK_ALLOWED_IPS")
    ):
        app.config["MUSICCALLBACK_TOKEN"] = _instance_token(app)

    db.init_app(app)  # before the extension, so that sqlalchemy:// finds db at once
    music.init_app(app)
    if app.config["METRICS_PROVIDER"]:
        metrics.install()
    app.register_blueprint(bp)
    app.register_blueprint(metrics.bp)
    if app.config["FAKE_PROVIDER"] and app.config["MUSICCALLBACK_API_BASE_URL"] == (
        provider.base_url(app.config["SERVER_URL"])
    ):  # not beside a provider configured: it would stand in for nothing
        app.register_blueprint(provider.bp)
    app.cli.add_command(init_command)
    with app.app_context():
        for engine in db.engines.values():
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
        db.create_all()
    return app


def _recorded_server_url(app: Flask) -> str:
    """The URL ``init --port`` recorded: what a ``flask`` command in another terminal needs to
    know where the server's samples are."""
    try:
        return (Path(app.instance_path) / SERVER_URL_FILE).read_text().strip() or DEFAULT_SERVER_URL
    except FileNotFoundError:
        return DEFAULT_SERVER_URL


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
    """Create the database, the archive folder and the callback token, record the server's port,
    and say how to try it.

    ``scripts/demo.sh`` runs this first; the port recorded is where later ``flask`` commands (a
    ``simulate`` in another terminal) find the server's samples.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    (Path(app.instance_path) / SERVER_URL_FILE).write_text(base + "\n")
    archive = get_state(app).archive
    if archive is not None:
        archive.fs.makedirs(archive.root, exist_ok=True)
    # At the port recorded now: the app was configured with the one recorded before, if any.
    callback = urlsplit(music.callback_url())
    callback_url = f"{base}{callback.path}?{callback.query}"
    click.echo(
        f"""
  Database      {db.engine.url.render_as_string(hide_password=True)}
  Archive       {archive.url_of("") if archive is not None else "none (MUSICCALLBACK_ARCHIVE)"}
  Page          {base}/
  Callback URL  {callback_url}

  Send it a simulated task from another terminal, in this folder:

      flask --app example_app musiccallback simulate

  or over HTTP, through the running server:

      flask --app example_app musiccallback simulate --url {base}/music-callback

  Another kind of task: add --family lyrics (or wav, stems, midi, video, cover, voice).
  Its media are this server's samples ({base}/samples/), archived once it is done.
{_submitting(app)}"""
    )


def _submitting(app: Flask) -> str:
    """What the page's form submits to: the fake provider, which calls back, or the one
    configured."""
    if provider.in_use(app):
        return """
  Or submit a task with the page's form: it goes to this server's fake provider
  (/fake-provider), which calls back a few seconds later, as the provider would.
"""
    return f"""
  The page's form submits tasks to {app.config["MUSICCALLBACK_API_BASE_URL"]}.
"""
