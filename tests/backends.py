"""Every store the extension ships, as a pytest parameter: the conformance suite runs on each.

``store_app(**config)`` builds an app (``make_app`` of conftest) on the backend of the running
parameter; ``backend`` says which one it is. ``persistent_app`` does the same over the persistent
stores only. ``shared_store_url`` is a URL of the stores several processes can share (SQLite,
PostgreSQL, Redis), and :func:`claim_in_a_process_that_dies` leaves a claim of a dead process in
one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import flask_musiccallback
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import PersistentStore

#: Every backend; ``sqlite-portable`` claims with INSERT then UPDATE, as on MySQL.
ALL = ("memory", "sqlite", "sqlite-portable", "postgresql", "redis", "flask-sqlalchemy")
PERSISTENT = ("sqlite", "postgresql", "redis", "flask-sqlalchemy")


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    #: Runs on each new app after the extension: sets up what the backend needs.
    prepare: Callable[[Flask], None] = lambda app: None

    @property
    def persistent(self) -> bool:
        return self.name != "memory"


def sqlite_url(tmp_path: Path, name: str = "callbacks.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def with_flask_sqlalchemy(database_url: str) -> Callable[[Flask], None]:
    """Set up Flask-SQLAlchemy on an app after the extension (the harder order) and create
    every table of ``db.metadata``, as a host app does."""

    def prepare(app: Flask) -> None:
        from flask_sqlalchemy import SQLAlchemy

        app.config["SQLALCHEMY_DATABASE_URI"] = database_url
        db = SQLAlchemy()
        db.init_app(app)
        with app.app_context():
            db.create_all()

    return prepare


def make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if name == "memory":
        return Backend(name, "memory://")
    if name == "sqlite":
        return Backend(name, sqlite_url(tmp_path))
    if name == "sqlite-portable":

        def portable(app: Flask) -> None:
            get_state(app).store.upsert_dialects = ()  # type: ignore[attr-defined]

        return Backend(name, sqlite_url(tmp_path), portable)
    if name == "postgresql":
        return Backend(name, request.getfixturevalue("postgresql_url"))
    if name == "redis":
        return Backend(name, request.getfixturevalue("redis_url"))
    if name == "flask-sqlalchemy":
        return Backend(name, "sqlalchemy://", with_flask_sqlalchemy(sqlite_url(tmp_path)))
    raise ValueError(name)


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture(params=PERSISTENT)
def persistent_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


StoreApp = Callable[..., Flask]


def _factory(
    request: pytest.FixtureRequest, make_app: Callable[..., Flask], backend: Backend
) -> StoreApp:
    def factory(**config: Any) -> Flask:
        config.setdefault("STORE", backend.url)
        app = make_app(**config)
        request.addfinalizer(get_state(app).store.close)
        backend.prepare(app)
        return app

    return factory


@pytest.fixture
def store_app(
    request: pytest.FixtureRequest, make_app: Callable[..., Flask], backend: Backend
) -> StoreApp:
    """Build apps on the backend of the running parameter; keywords as for ``make_app``."""
    return _factory(request, make_app, backend)


@pytest.fixture
def persistent_app(
    request: pytest.FixtureRequest, make_app: Callable[..., Flask], persistent_backend: Backend
) -> StoreApp:
    """Build apps on the persistent backend of the running parameter."""
    return _factory(request, make_app, persistent_backend)


def persistent_store(app: Flask) -> PersistentStore:
    store = get_state(app).store
    assert isinstance(store, PersistentStore)
    return store


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of the running parameter, on a backend nobody has used yet."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    fixture = {"postgresql": "postgresql_url", "redis": "redis_url"}[request.param]
    url: str = request.getfixturevalue(fixture)
    return url


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process that imports this checkout of the package."""
    package_root = str(Path(flask_musiccallback.__file__).parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, *sys.path]), **extra}


CLAIM_AND_DIE = """
import json, os, sys
from flask_musiccallback.families import MUSIC
from flask_musiccallback.stores.registry import store_from_url

payload = json.loads(sys.argv[2])
store = store_from_url(sys.argv[1], ttl=3600)
store.claim(MUSIC.delivery(MUSIC.load(payload), payload))
os._exit(0)  # dies holding the claim, as a worker killed mid-request would
"""


def claim_in_a_process_that_dies(store_url: str, payload: dict[str, Any]) -> None:
    subprocess.run(
        [sys.executable, "-c", CLAIM_AND_DIE, store_url, json.dumps(payload)],
        check=True,
        env=child_env(),
        timeout=60,
    )
