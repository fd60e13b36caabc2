"""A host application wired to Celery exactly as docs/dispatch.md tells hosts to do it.

The tests build its web side with :func:`create_app`; the worker they start runs
``celery -A tests.celery_host:celery_app worker`` with ``CELERY_HOST_BROKER`` and
``CELERY_HOST_RECORDS`` set (and ``CELERY_HOST_CONFIG``, JSON of more configuration, such as the
store web and workers share), which builds the same app at import, as a host's ``make_celery.py``
does. The receivers run in the worker's processes, so they record what they saw in Redis, where the
tests read it: ``attempts:<task id>`` when a receiver starts, ``finished:<task id>`` when it
returns. What a receiver does depends on the task id's first word:

- ``flaky-N-...`` fails its first ``N`` attempts;
- ``broken-...`` always fails;
- ``held-...`` waits until the test pushes ``release:<task id>`` (30 s at most);
- ``stuck-...`` hangs on its first attempt (until the worker is killed);
- anything else just records.

With ``CELERY_HOST_TRACE`` set, the worker configures the OpenTelemetry SDK as a traced host
would, exporting every span it ends to ``spans`` in the records (:class:`RedisSpanExporter`).

The host also reads a family of its own (the karaoke family of :mod:`tests.karaoke_family`), which
its workers must find by name on their own extension.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, Task
from flask import Flask, current_app, has_app_context, has_request_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from flask_musiccallback import CallbackEvent, MusicCallback, all_tracks_generated, task_failed
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import KeptDelivery, PersistentStore

from .karaoke_family import KARAOKE, KaraokeEvent, karaoke_ready

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
    music = MusicCallback(app)
    music.families.register(KARAOKE)
    celery_init_app(app)
    all_tracks_generated.connect(record, sender=app)
    task_failed.connect(record, sender=app)
    karaoke_ready.connect(record, sender=app)
    return app


def records(app: Flask) -> redis.Redis:
    return redis.Redis.from_url(app.config["RECORDS_URL"])


def host_env(broker: str, **config: Any) -> dict[str, str]:
    """The environment of a worker building this app on ``broker``'s server: the broker in
    database 0, the records in 1, and the store web and workers share in 2."""
    config.setdefault("MUSICCALLBACK_STORE", f"{broker}/2")
    return {
        "CELERY_HOST_BROKER": f"{broker}/0",
        "CELERY_HOST_RECORDS": f"{broker}/1",
        "CELERY_HOST_CONFIG": json.dumps(config),
    }


def kept(app: Flask, task_id: str, state: str, timeout: float = 20) -> KeptDelivery:
    """The delivery of ``task_id`` in the shared store, once it is in ``state``."""
    store = get_state(app).store
    assert isinstance(store, PersistentStore)
    deadline = time.monotonic() + timeout
    while True:
        found = store.list(task_id=task_id)
        if found and found[0].state == state:
            return found[0]
        assert time.monotonic() < deadline, f"not {state}: {found}"
        time.sleep(0.05)


def record(sender: Flask, event: CallbackEvent | KaraokeEvent, **extra: Any) -> None:
    """Note this attempt in Redis, then behave as the task id says."""
    attempt = {
        "task_id": event.task_id,
        "stage": str(event.stage),
        "tracks": len(event.tracks) if isinstance(event, CallbackEvent) else None,
        "received_at": event.received_at.isoformat(),
        "app": current_app.name if has_app_context() else None,
        "request_context": has_request_context(),
        "pid": os.getpid(),
        "at": time.time(),
    }
    records(sender).rpush(f"attempts:{event.task_id}", json.dumps(attempt))
    kind, _, rest = event.task_id.partition("-")
    if kind == "held":
        records(sender).blpop([f"release:{event.task_id}"], timeout=30)
    elif kind == "broken":
        raise RuntimeError("broken receiver")
    elif kind == "flaky":
        failures = int(rest.partition("-")[0])
        if records(sender).llen(f"attempts:{event.task_id}") <= failures:
            raise RuntimeError("flaky receiver")
    elif kind == "stuck" and records(sender).llen(f"attempts:{event.task_id}") == 1:
        time.sleep(600)
    records(sender).rpush(f"finished:{event.task_id}", os.getpid())


class RedisSpanExporter(SpanExporter):
    """A span exporter writing each span's identity, name and attributes to Redis as JSON, where
    the tests, in another process, read what the worker traced."""

    def __init__(self, url: str) -> None:
        self.url = url

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # Connected per export: the worker's pool processes are forked after this is built.
        client = redis.Redis.from_url(self.url)
        for span in spans:
            context = span.get_span_context()
            assert context is not None
            client.rpush(
                "spans",
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": context.trace_id,
                        "span_id": context.span_id,
                        "parent_id": span.parent.span_id if span.parent else None,
                        "attributes": dict(span.attributes or {}),
                    }
                ),
            )
        return SpanExportResult.SUCCESS



def trace_to_redis(records_url: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisSpanExporter(records_url)))
    trace.set_tracer_provider(provider)


if "CELERY_HOST_BROKER" in os.environ:
    if os.environ.get("CELERY_HOST_TRACE"):
        trace_to_redis(os.environ["CELERY_HOST_RECORDS"])
    flask_app = create_app(
        os.environ["CELERY_HOST_BROKER"],
        os.environ["CELERY_HOST_RECORDS"],
        **json.loads(os.environ.get("CELERY_HOST_CONFIG", "{}")),
    )
    celery_app = flask_app.extensions["celery"]
