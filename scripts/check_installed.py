"""Use an installed flask-musiccallback as a host would: run by scripts/check-package.sh with the
Python of a fresh virtual environment, in which the wheel was installed with no extras
(``python check_installed.py``) or with one (``python check_installed.py redis``).

Each check does what its extra is installed for, as far as it goes without a server: a callback
received on the memory store and on a SQLite file, one sent to a Celery broker; a Redis store and a
PostgreSQL engine built without connecting; fsspec writing a file; the OpenTelemetry API and the
Prometheus exporter. An extra with no check here fails, so that a new extra gets one.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

import flask_musiccallback
from flask_musiccallback import MusicCallback, all_tracks_generated
from flask_musiccallback.testing import build_callback

TOKEN = "check-package-token"  # noqa: S105 - a test value
RECEIVED: list[Any] = []


def record(sender: Flask, event: Any, **extra: Any) -> None:
    RECEIVED.append(event)


def receive_a_callback(*, dispatched: bool = True, **config: Any) -> None:
    """An app with the extension and ``config``; one callback posted to it, accepted, and
    ``dispatched`` to the receivers in this process."""
    app = Flask("check_installed")
    app.config.update(MUSICCALLBACK_TOKEN=TOKEN, **config)
    music = MusicCallback(app)
    all_tracks_generated.connect(record, app)
    body = build_callback("complete")
    response = app.test_client().post(f"/music-callback?token={TOKEN}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json == {"status": "received"}, response.json
    sent = [body["data"]["task_id"]] if dispatched else []
    assert [event.task_id for event in RECEIVED] == sent, RECEIVED
    music.close(app)
    RECEIVED.clear()


def base() -> None:
    installed = Path(flask_musiccallback.__file__).resolve()
    assert installed.is_relative_to(Path(sys.prefix).resolve()), (
        f"not the installed one: {installed}"
    )
    importlib.import_module("flask_musiccallback.cli")
    receive_a_callback()


def sqlalchemy() -> None:
    importlib.import_module("flask_sqlalchemy")
    with tempfile.TemporaryDirectory() as folder:
        receive_a_callback(MUSICCALLBACK_STORE=f"sqlite:///{folder}/callbacks.db")


def postgresql() -> None:
    from sqlalchemy import create_engine

    importlib.import_module("flask_musiccallback.stores.sqlalchemy")
    engine = create_engine("postgresql+psycopg://check@localhost/check")  # loads psycopg
    assert engine.dialect.driver == "psycopg", engine.dialect.driver


def redis() -> None:
    from flask_musiccallback.stores.registry import store_from_url

    store = store_from_url("redis://localhost:6379/0", ttl=60)
    assert type(store).__module__ == "flask_musiccallback.stores.redis", type(store)


def celery() -> None:
    from celery import Celery

    # The delivery is sent to kombu's in-memory broker; no worker takes it here. (The extension
    # logs that the memory store is not shared with workers: true, and beside the point.)
    broker = Celery("check_installed", broker="memory://")
    receive_a_callback(
        dispatched=False, MUSICCALLBACK_DISPATCH="celery", MUSICCALLBACK_CELERY_APP=broker
    )


def archive() -> None:
    importlib.import_module("flask_musiccallback.archive.copies")
    files = importlib.import_module("fsspec").filesystem("file")
    with tempfile.TemporaryDirectory() as folder:
        files.pipe_file(f"{folder}/track.mp3", b"ID3")
        assert files.cat_file(f"{folder}/track.mp3") == b"ID3"


def otel() -> None:
    importlib.import_module("opentelemetry.metrics")
    importlib.import_module("opentelemetry.trace")
    importlib.import_module("flask_musiccallback.telemetry")


def prometheus() -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    MeterProvider(metric_readers=[PrometheusMetricReader()]).shutdown()


CHECKS: dict[str, Callable[[], None]] = {
    check.__name__: check
    for check in (base, sqlalchemy, postgresql, redis, celery, archive, otel, prometheus)
}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "base"
    if name not in CHECKS:
        sys.exit(f"No check for the extra {name!r}: add one to {__file__}.")
    CHECKS[name]()
    print(f"{name}: flask-musiccallback {flask_musiccallback.__version__} works")
