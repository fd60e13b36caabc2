"""Fixtures for the example app's tests: the real app, on its own database and media folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from example_app import create_app
from example_app.models import Task, db
from example_app.receivers import music
from flask_musiccallback.testing import CallbackClient

TOKEN = "example-test-token"

ExampleFactory = Callable[..., Flask]


def example_config(folder: Path, **overrides: Any) -> dict[str, Any]:
    """Configuration that keeps everything of one app inside ``folder``."""
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'example.db'}",
        "MEDIA_FOLDER": str(folder / "media"),
        "MUSICCALLBACK_TOKEN": TOKEN,
        "MEDIA_DOWNLOAD_BACKOFF": 0.05,
        **overrides,
    }


@pytest.fixture
def make_example(tmp_path: Path) -> Iterator[ExampleFactory]:
    """Build example apps; keyword arguments override their configuration. Each is shut down
    (the extension closed, its database released) at the end of the test."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        app = create_app(example_config(tmp_path, **overrides))
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


def settle(app: Flask) -> None:
    """Wait until every delivery the app accepted is processed, downloads included: for those that
    did not come through ``CallbackClient`` (``simulate``, a browser, a bare post), nothing else
    waits."""
    assert music.wait_idle(30, app=app), "the receivers did not finish in time"


def task(app: Flask, task_id: str) -> Task:
    with app.app_context():
        found = db.session.get(Task, task_id)
        assert found is not None, f"no task {task_id}"
        # Load what the assertions read before the session ends.
        _ = [found.stages, found.tracks, found.results]
        db.session.expunge_all()
        return found
