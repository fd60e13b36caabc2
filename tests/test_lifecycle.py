"""The extension's life on an app, through its public API: waiting for the deliveries it accepted,
and shutting it down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import CallbackEvent, MemoryStore, MusicCallback, all_tracks_generated
from flask_musiccallback.simulate import build_callback, post_callback
from flask_musiccallback.state import get_state

from .conftest import TOKEN
from .servers import RedisServer, start_redis

RECEIVED = {"status": "received"}

Served = Callable[..., tuple[Flask, MusicCallback]]


@pytest.fixture
def served() -> Iterator[Served]:
    """Apps with thread dispatch and the extension that serves them, closed after the test."""
    built: list[tuple[Flask, MusicCallback]] = []

    def factory(music: MusicCallback | None = None, **config: Any) -> tuple[Flask, MusicCallback]:
        music = music or MusicCallback()
        app = Flask(__name__)
        app.testing = True
        app.config.update(MUSICCALLBACK_TOKEN=TOKEN, MUSICCALLBACK_DISPATCH="thread")
        app.config.update({f"MUSICCALLBACK_{key}": value for key, value in config.items()})
        music.init_app(app)
        built.append((app, music))
        return app, music

    yield factory
    for app, music in built:
        music.close(app, timeout=5)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of the test's own, which it stops and starts again; removed after the test,
    failed or not (pytest resumes the fixture either way)."""
    server = start_redis()
    yield server
    server.remove()


class SharedStore(MemoryStore):
    """A host's own store whose one backend serves every app, and which is unusable once closed."""

    closed = False

    def init_app(self, app: Flask) -> SharedStore:
        return self

    def close(self) -> None:
        self.closed = True


def test_wait_idle_returns_once_the_receivers_of_accepted_deliveries_ran(served: Served) -> None:
    app, music = served()
    go_on = threading.Event()
    ran: list[str] = []

    def slow(sender: Flask, event: CallbackEvent, **extra: Any) -> None:
        go_on.wait(10)
        ran.append(event.task_id)

    with all_tracks_generated.connected_to(slow, sender=app):
        assert post_callback(app, build_callback(task_id="t1")).json == RECEIVED
        assert music.wait_idle(0.1) is False
        go_on.set()
        assert music.wait_idle(10) is True
    assert ran == ["t1"]


def completed_while_the_store_goes_away(app: Flask, server: RedisServer) -> dict[str, Any]:
    """A delivery whose receivers ran, and whose store stopped before it heard so: the completion
    is kept, to be written once the store is back."""
    payload = build_callback(task_id="t1")
    with all_tracks_generated.connected_to(lambda sender, **extra: server.stop(), sender=app):
        assert post_callback(app, payload).json == RECEIVED
        assert get_state(app).dispatcher.wait_idle(10)
    return payload


def test_wait_idle_waits_for_a_completion_kept_until_the_store_is_back(
    served: Served, own_redis: RedisServer
) -> None:
    """A test that asserts on the store must wait for the late write too."""
    app, music = served(STORE=own_redis.url())
    payload = completed_while_the_store_goes_away(app, own_redis)

    assert music.wait_idle(1) is False
    own_redis.start()
    assert music.wait_idle(30) is True
    assert post_callback(app, payload).json == {"status": "duplicate"}


def test_close_says_when_a_kept_write_was_left_unwritten(
    served: Served, own_redis: RedisServer
) -> None:
    app, music = served(STORE=own_redis.url())
    completed_while_the_store_goes_away(app, own_redis)

    assert music.close(app, timeout=0.5) is False


def test_wait_idle_without_an_app_waits_for_the_current_one(served: Served) -> None:
    music = MusicCallback()
    app, _ = served(music)
    other, _ = served(music)
    go_on = threading.Event()

    with all_tracks_generated.connected_to(lambda sender, **extra: go_on.wait(10), sender=app):
        post_callback(app, build_callback())
        with other.app_context():
            assert music.wait_idle(0.1) is True
        with app.app_context():
            assert music.wait_idle(0.1) is False
        go_on.set()


def test_close_finishes_the_accepted_deliveries_then_answers_503(served: Served) -> None:
    app, music = served()
    ran: list[str] = []

    def slow(sender: Flask, event: CallbackEvent, **extra: Any) -> None:
        time.sleep(0.2)
        ran.append(event.task_id)

    with all_tracks_generated.connected_to(slow, sender=app):
        post_callback(app, build_callback(task_id="t1"))
        assert music.close(app) is True
        assert ran == ["t1"]
        late = post_callback(app, build_callback(task_id="t2"))

    assert (late.status_code, late.json) == (503, {"status": "retry"})


def test_close_says_when_a_delivery_was_left_unfinished(served: Served) -> None:
    app, music = served()
    go_on = threading.Event()

    with all_tracks_generated.connected_to(lambda sender, **extra: go_on.wait(10), sender=app):
        post_callback(app, build_callback())
        assert music.close(app, timeout=0.1) is False
        go_on.set()


def test_close_closes_the_store_once_no_open_app_uses_it(served: Served) -> None:
    store = SharedStore(ttl=60)
    music = MusicCallback(store=store)
    first, _ = served(music)
    second, _ = served(music)

    music.close(first)
    assert store.closed is False
    assert post_callback(second, build_callback()).json == RECEIVED
    music.close(second)
    assert store.closed is True
