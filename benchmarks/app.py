"""The app the HTTP benchmark serves: the extension's endpoint beside two reference routes.

All routes live in one app under one gunicorn, so they share the server, the workers and the
machine's state; the only difference measured is what the extension does.

``/bare``
    The physical limit: parse the JSON body and answer, nothing else.
``/round-trips``
    ``/bare`` plus two trivial round trips (``PING``, ``SELECT 1``) to the store's server: the
    least that claiming a delivery and then recording it as done can cost, whatever the store
    does in them. With the memory store, or SQLite, there is no server and it is ``/bare``.

``BENCH_STORE`` picks the store (a ``MUSICCALLBACK_STORE`` URL); ``BENCH_WITHOUT`` names fast
paths to turn off (comma-separated, :data:`FAST_PATHS`), so that what each one buys is measured
against the plain path it stands in for (docs/benchmarks.md). ``BENCH_OTEL`` configures the
OpenTelemetry SDK as a host exporting its telemetry would (:func:`configure_sdk`, one of
:data:`SDK_MODES`), so that what recording the extension's metrics and spans costs is measured too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_musiccallback import MusicCallback, all_tracks_generated
from flask_musiccallback.stores.registry import url_scheme

TOKEN = "benchmark-token-0123456789"  # noqa: S105 - a fixed secret for a local benchmark


def bare() -> ResponseReturnValue:
    """Parse the body and answer, as any JSON route does."""
    request.get_json()
    return jsonify(status="received")


def receiver(sender: Flask, event: object, **extra: object) -> None:
    """A host receiver that does nothing, so the cost measured is the extension's own."""


def pinger(store: str) -> Callable[[], Any]:
    """One trivial round trip to the server behind ``store``, on a connection kept open."""
    scheme = url_scheme(store)
    if scheme in ("redis", "rediss", "unix"):
        import redis

        return redis.Redis.from_url(store.partition("?")[0]).ping
    if scheme == "postgresql":
        import sqlalchemy as sa

        connection = sa.create_engine(store.partition("?")[0]).raw_connection()
        connection.driver_connection.autocommit = True  # type: ignore[union-attr]

        def select_one() -> Any:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            return cursor.fetchall()

        return select_one
    return lambda: None


def _plain_sql(store: type[Any]) -> None:
    """Statements through SQLAlchemy's ``Connection.execute`` instead of on the driver."""
    store._drives = property(lambda self: False)


def _plain_parser() -> None:
    """Every callback read by the marshmallow schema, without the envelope's fast path."""
    from flask_musiccallback import schemas

    schemas._fast_envelope = lambda payload: None


def _turn_off(names: str) -> None:
    for name in filter(None, names.split(",")):
        if name == "driver":
            from flask_musiccallback.stores.sqlalchemy import SQLAlchemyStore

            _plain_sql(SQLAlchemyStore)
        elif name == "envelope":
            _plain_parser()
        else:
            raise SystemExit(f"BENCH_WITHOUT: no fast path {name!r}; known: {FAST_PATHS}")


#: The fast paths ``BENCH_WITHOUT`` can turn off.
FAST_PATHS = ("driver", "envelope")


#: What ``BENCH_OTEL`` may ask for: metrics only; metrics and one trace in ten (the parent-based
#: ratio sampler a host tracing at volume sets); metrics and every trace.
SDK_MODES = ("metrics", "sampled", "all")


def configure_sdk(mode: str) -> None:
    """A meter provider with a periodic reader and, unless ``mode`` is ``metrics``, a tracer
    provider with a batch span processor, both exporting to exporters that drop what they get: the
    cost measured is recording, not a collector's network.

    Called in each gunicorn worker (the app is imported after the fork), so the SDK's background
    threads run in the process that records.
    """
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    if mode not in SDK_MODES:
        raise ValueError(f"BENCH_OTEL={mode!r}: expected one of {', '.join(SDK_MODES)}")

    class DropMetrics(MetricExporter):
        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    class DropSpans(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    reader = PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=1000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    if mode == "metrics":
        return
    sampler = ParentBased(TraceIdRatioBased(0.1) if mode == "sampled" else ALWAYS_ON)
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    trace.set_tracer_provider(tracer_provider)


def create_app(store: str) -> Flask:
    """The routes, the extension on ``store``."""
    app = Flask(__name__)
    app.config["MUSICCALLBACK_TOKEN"] = TOKEN
    app.config["MUSICCALLBACK_STORE"] = store
    # The sweep of pending deliveries is background work whose cost follows what the store keeps,
    # not the requests served: left out here, measured on its own (docs/benchmarks.md).
    app.config["MUSICCALLBACK_PENDING_SWEEP_AGE"] = 0
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("BENCH_DATABASE_URI", "sqlite://")
    MusicCallback(app)
    app.add_url_rule("/bare", view_func=bare, methods=["POST"])
    pings: list[Callable[[], Any]] = []

    def round_trips() -> ResponseReturnValue:
        if not pings:  # connected in the worker, not in gunicorn's master before the fork
            pings.append(pinger(store))
        pings[0]()
        pings[0]()
        return bare()

    app.add_url_rule("/round-trips", view_func=round_trips, methods=["POST"])
    all_tracks_generated.connect(receiver, sender=app)
    return app


_turn_off(os.environ.get("BENCH_WITHOUT", ""))
if os.environ.get("BENCH_OTEL"):
    configure_sdk(os.environ["BENCH_OTEL"])
app = create_app(os.environ.get("BENCH_STORE", "memory://"))
