"""Fixtures for the example app's tests: the real app, on its own instance folder, served.

Every app is served on 127.0.0.1, as ``scripts/demo.sh`` serves it: simulated tasks link their
media to its ``/samples/`` (``MUSICCALLBACK_SIMULATED_MEDIA_URL``), and its archive fetches them
from there over real HTTP, through every check of the extension's fetcher. Its page and endpoint
are also reached through the test client, as most tests do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from example_app import create_app
from example_app.models import Task, db
from example_app.receivers import music
from flask_musiccallback.testing import CallbackClient

from ..servers import serve_url

TOKEN = "example-test-token"

ExampleFactory = Callable[..., Flask]


def example_config(folder: Path, server_url: str, **overrides: Any) -> dict[str, Any]:
    """Configuration that keeps everything of one app inside ``folder``; the app is served at
    ``server_url``."""
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'example.db'}",
        "SERVER_URL": server_url,
        "MUSICCALLBACK_TOKEN": TOKEN,
        "MUSICCALLBACK_RETRY_BACKOFF": 0.05,
        # A process's global meter provider is set once, and a test process runs other files'
        # tests too (tests/test_telemetry.py sets its own): test_metrics.py runs the example's
        # provider in processes of their own.
        "METRICS_PROVIDER": False,
        **overrides,
    }


def instance(folder: Path) -> str:
    return str(folder / "instance")


class Later:
    """A WSGI app to serve before the app it stands for exists: the port comes first, since
    the app's configuration names it."""

    app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        assert self.app is not None, "served before it was built"
        return self.app(environ, start_response)


@pytest.fixture
def make_example(tmp_path: Path) -> Iterator[ExampleFactory]:
    """Build example apps, each served on 127.0.0.1; keyword arguments override their
    configuration. Each is shut down (the extension closed, its database released, its server
    stopped) at the end of the test."""
    apps: list[Flask] = []
    with ExitStack() as servers:

        def factory(**overrides: Any) -> Flask:
            later = Later()
            base = servers.enter_context(serve_url(later))
            app = create_app(
                example_config(tmp_path, base, **overrides), instance_path=instance(tmp_path)
            )
            later.app = app
            apps.append(app)
            return app

        yield factory
        for app in apps:
            music.close(app, timeout=10)
            with app.app_context():
                db.engine.dispose()


@pytest.fixture
def example(make_example: ExampleFactory) -> Flask:
    return make_example()


@pytest.fixture
def deliver(example: Flask) -> CallbackClient:
    return CallbackClient(example)


def base_url(app: Flask) -> str:
    """Where ``app`` is served."""
    url: str = app.config["SERVER_URL"]
    return url


def archive_folder(app: Flask) -> Path:
    """The app's archive: a folder of its instance folder, unless configured otherwise."""
    return Path(app.instance_path) / "archive"


def settle(app: Flask) -> None:
    """Wait until every delivery the app accepted is processed, its media archived: for those
    that did not come through ``CallbackClient`` (``simulate``, a browser, a bare post), and for
    the archive, nothing else waits."""
    assert music.wait_idle(30, app=app), "the receivers or the archive did not finish in time"


def task(app: Flask, task_id: str) -> Task:
    with app.app_context():
        found = db.session.get(Task, task_id)
        assert found is not None, f"no task {task_id}"
        # Load what the assertions read before the session ends.
        _ = [found.stages, found.tracks, found.results]
        db.session.expunge_all()
        return found
