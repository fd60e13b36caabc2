"""A host application wired to Celery exactly as docs/dispatch.md tells hosts to do it.

The tests build its web side with :func:`create_app`; the worker they start runs
``celery -A tests.celery_host:celery_app worker`` with ``CELERY_HOST_BROKER`` and
``CELERY_HOST_RECORDS`` set, which builds the same app at import, as a host's ``make_celery.py``
does. The receivers run in the worker's processes, so they record what they saw in Redis, where the
tests read it. What a receiver does depends on the task id's first word:

- ``flaky-N-...`` fails its first ``N`` attempts;
- ``broken-...`` always fails;
- ``slow-...`` sleeps a second;
- anything else just records.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, Task
from flask import Flask, current_app, has_app_context, has_request_context

from flask_musiccallback import CallbackEvent, MusicCallback, all_tracks_generated, task_failed

TOKEN = "celery-host-token"
URL = f"/music-callback?token={TOKEN}"


def celery_init_app(app: Flask) -> Celery:
    """The Flask documentation's Celery pattern: every task runs in an app context."""

    class FlaskTask(Task):  # type: ignore[type-arg]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app: Celery = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app(broker_url: str, records_url: str, **config: Any) -> Flask:
    app = Flask("celery_host")
    app.testing = True
    app.config.from_mapping(
        MUSICCALLBACK_TOKEN=TOKEN,
        MUSICCALLBACK_DISPATCH="celery",
        MUSICCALLBACK_RETRY_ATTEMPTS=3,
        MUSICCALLBACK_RETRY_BACKOFF=0.3,
        CELERY={"broker_url": broker_url, "task_ignore_result": True},
        RECORDS_URL=records_url,
    )
    app.config.update(config)
    MusicCallback(app)
    celery_init_app(app)
    all_tracks_generated.connect(record, sender=app)
    task_failed.connect(record, sender=app)
    return app


def records(app: Flask) -> redis.Redis:
    return redis.Redis.from_url(app.config["RECORDS_URL"])


def record(sender: Flask, event: CallbackEvent, **extra: Any) -> None:
    """Note this attempt in Redis, then behave as the task id says."""
    attempt = {
        "task_id": event.task_id,
        "stage": str(event.stage),
        "tracks": len(event.tracks),
        "received_at": event.received_at.isoformat(),
        "app": current_app.name if has_app_context() else None,
        "request_context": has_request_context(),
        "pid": os.getpid(),
        "at": time.time(),
    }
    records(sender).rpush(f"attempts:{event.task_id}", json.dumps(attempt))
    kind, _, rest = event.task_id.partition("-")
    if kind == "slow":
        time.sleep(1)
    elif kind == "broken":
        raise RuntimeError("broken receiver")
    elif kind == "flaky":
        failures = int(rest.partition("-")[0])
        if records(sender).llen(f"attempts:{event.task_id}") <= failures:
            raise RuntimeError("flaky receiver")


if "CELERY_HOST_BROKER" in os.environ:
    flask_app = create_app(os.environ["CELERY_HOST_BROKER"], os.environ["CELERY_HOST_RECORDS"])
    celery_app = flask_app.extensions["celery"]
