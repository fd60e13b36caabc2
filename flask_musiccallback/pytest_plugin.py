"""The pytest plugin of the testing kit: fixtures for an app with the extension and its client.

Loaded by the ``pytest11`` entry point, so a host's tests have the fixtures with nothing to
configure; it is the package's only module that imports pytest. A host overrides
``musiccallback_app`` (to test its own app, built by its factory) or ``musiccallback_config`` (to
test the bundled app under another configuration) in its ``conftest.py``; the other fixtures follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from .extension import MusicCallback
from .testing import CallbackClient, record_signals

#: The token of the app ``musiccallback_app`` builds unless ``musiccallback_config`` says otherwise.
TEST_TOKEN = "musiccallback-test-token"  # noqa: S105 - a test value, public on purpose


@pytest.fixture
def musiccallback_config() -> dict[str, Any]:
    """The configuration of the app ``musiccallback_app`` builds; override it to change it."""
    return {"MUSICCALLBACK_TOKEN": TEST_TOKEN}


@pytest.fixture
def musiccallback_app(musiccallback_config: dict[str, Any]) -> Iterator[Flask]:
    """A fresh app in testing mode with the extension; override it to use the host's own app.

    Closed after the test, so that a configuration with ``thread`` dispatch leaves no pool behind.
    """
    app = Flask("musiccallback_test_app")
    app.testing = True
    app.config.update(musiccallback_config)
    music = MusicCallback(app)
    yield app
    music.close(app)


@pytest.fixture
def musiccallback_client(musiccallback_app: Flask) -> CallbackClient:
    """Delivers callbacks to ``musiccallback_app`` with the token and signature it requires."""
    return CallbackClient(musiccallback_app)


@pytest.fixture
def musiccallback_signals(musiccallback_app: Flask) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every signal of the extension sent for ``musiccallback_app`` during the test, in order."""
    with record_signals(musiccallback_app) as recorded:
        yield recorded
