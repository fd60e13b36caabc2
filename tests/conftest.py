"""Fixtures shared by the whole suite: real Flask apps with the extension, and their clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings

from flask_musiccallback import MusicCallback

if TYPE_CHECKING:
    from .fake_provider import FakeProvider

# The project's own testing kit (musiccallback_app, musiccallback_client, ...), loaded by name so
# that it works whether or not the installed package already registers its pytest11 entry point.
pytest_plugins = [
    "pytester",
    "flask_musiccallback.pytest_plugin",
    # Real PostgreSQL and Redis servers, and every store as a parameter of the conformance suite.
    "tests.servers",
    "tests.backends",
    # The built-in families' apps with and without a source check (open_app, guarded_app).
    "tests.family_kit",
]

TOKEN = "test-token-0123456789abcdef"
URL = f"/music-callback?token={TOKEN}"

AppFactory = Callable[..., Flask]


def build_app(*, _testing: bool = True, _store: Any = None, **config: Any) -> Flask:
    """A fresh app with the extension and the test token; keywords become ``MUSICCALLBACK_*``.

    For fixtures of a wider scope than ``make_app`` (a live server shared by a module).
    """
    app = Flask(__name__)
    app.testing = _testing
    app.config["MUSICCALLBACK_TOKEN"] = TOKEN
    for key, value in config.items():
        app.config[f"MUSICCALLBACK_{key}"] = value
    MusicCallback(app, store=_store)
    return app


@contextmanager
def thread_apps(base: AppFactory) -> Iterator[AppFactory]:
    """Apps built by ``base`` with thread dispatch and a short back-off; pools closed after."""
    from flask_musiccallback.state import get_state

    apps: list[Flask] = []

    def factory(**config: Any) -> Flask:
        config.setdefault("DISPATCH", "thread")
        config.setdefault("RETRY_BACKOFF", 0.05)
        app = base(**config)
        apps.append(app)
        return app

    try:
        yield factory
    finally:
        for app in apps:
            get_state(app).dispatcher.close(timeout=5)


@pytest.fixture
def make_app() -> AppFactory:
    """Build a fresh app with the extension; keyword arguments become ``MUSICCALLBACK_*`` config.

    ``make_app(TOKEN=None)`` builds an app with no token; ``make_app(_testing=False)`` one that is
    not in testing mode; ``make_app(_store=...)`` passes a store in code.
    """
    return build_app


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """The provider's record-info endpoint, faked and served on 127.0.0.1."""
    from .fake_provider import FakeProvider

    with FakeProvider().running() as fake:
        yield fake


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A Redis server of the module's own, as a Celery broker (and result backend)."""
    from .servers_redis import redis_server

    with redis_server() as url:
        yield url


# Hypothesis: bounded example counts and no deadline (CI machines are shared and slow); in CI the
# examples are derandomized so a run is reproducible. ``HYPOTHESIS_PROFILE=figures`` is the large
# run whose counts the README's security section reports.
settings.register_profile("dev", deadline=None, max_examples=50)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, database=None)
settings.register_profile("figures", deadline=None, max_examples=2000, database=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
