"""``/metrics``: what the extension and this app measure, in Prometheus' text format.

The extension reports through the OpenTelemetry API (meter ``flask_musiccallback``, see
docs/operations.md), and so do this app's receivers (:data:`stages_recorded`); the API records
nothing until the process has an SDK ``MeterProvider``. :func:`install` gives it one, whose
``PrometheusMetricReader`` answers each scrape of the page.

A process has one global provider, and OpenTelemetry refuses to replace it, while
:func:`~example_app.create_app` runs once per app (a test suite builds hundreds): the provider is
made on the first call only, and every later app serves the same one. The reader registers with
``prometheus_client``'s default registry, the one place every version of the exporter can report
to; the page shows that registry, which also holds ``prometheus_client``'s process and garbage
collector figures.
"""

from __future__ import annotations

import threading

from flask import Blueprint, Response
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

bp = Blueprint("metrics", __name__)

#: This app's own metric, beside the extension's: each stage its receivers wrote, by family and
#: stage (``example_stages_recorded_total`` on the page). A receiver that ran again after a
#: failure counts again.
stages_recorded = metrics.get_meter("example_app").create_counter(
    "example.stages.recorded",
    unit="{stage}",
    description="Stages of tasks the example app's receivers wrote to its database.",
)

#: Bucket bounds, in seconds, of a receiver run (``musiccallback.dispatch.duration``). The SDK's
#: default bounds (0, 5, 10, 25, ... 10000) are made for milliseconds: in seconds they would put
#: every run in the first bucket, and a p95 computed from them would mean nothing.
RECEIVER_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Bucket bounds, in seconds, from ``expect`` to a task's final stage
#: (``musiccallback.task.duration``): generation takes from tens of seconds to minutes.
TASK_SECONDS = (10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1800.0, 3600.0)

_lock = threading.Lock()
_provider: MeterProvider | None = None


def install() -> MeterProvider:
    """The process's ``MeterProvider``: made and set as the global one on the first call,
    unless the process set one of its own first (``opentelemetry-instrument``, or a host's own
    setup), which it keeps; the page then shows what that provider's Prometheus reader has, if
    it has one."""
    global _provider
    with _lock:
        if _provider is None:
            configured = metrics.get_meter_provider()
            if isinstance(configured, MeterProvider):
                _provider = configured
            else:
                _provider = MeterProvider(
                    metric_readers=[PrometheusMetricReader()],
                    views=[
                        View(
                            instrument_name="musiccallback.dispatch.duration",
                            aggregation=ExplicitBucketHistogramAggregation(RECEIVER_SECONDS),
                        ),
                        View(
                            instrument_name="musiccallback.task.duration",
                            aggregation=ExplicitBucketHistogramAggregation(TASK_SECONDS),
                        ),
                    ],
                )
                metrics.set_meter_provider(_provider)
        return _provider


@bp.get("/metrics")
def page() -> Response:
    """Every metric of the process, as Prometheus scrapes them."""
    return Response(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
