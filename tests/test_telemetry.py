"""Metrics and traces (API.md section 12), read with the OpenTelemetry SDK's in-memory reader and
exporter after real deliveries of every outcome: to the endpoint of real apps, through a thread
pool, through a real Celery worker, and reconciliation giving a task up.

The SDK's providers can be set only once per process, so one pair serves the whole session (each
pytest-xdist worker is a process of its own): the metric reader reports deltas, read once when a
test starts and once when it asks, and the span exporter is cleared when a test starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, Sum
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from flask_musiccallback import MusicCallback, all_tracks_generated, telemetry
from flask_musiccallback.reconcile import Reconciled, reconcile
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import build_callback

from .conftest import TOKEN, URL, AppFactory, thread_apps
from .fake_provider import FakeProvider

DELTA = AggregationTemporality.DELTA


@dataclass
class Providers:
    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter


@pytest.fixture(scope="session")
def providers() -> Providers:
    """The process's SDK providers, set once; both semantic conventions of the HTTP
    instrumentation are asked for, so that its span records ``http.target`` and ``url.query``."""
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http/dup"
    reader = InMemoryMetricReader(
        preferred_temporality=dict.fromkeys(
            (
                Counter,
                Histogram,
                UpDownCounter,
                ObservableCounter,
                ObservableGauge,
                ObservableUpDownCounter,
            ),
            DELTA,
        )
    )
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics.set_meter_provider(meter_provider)
    trace.set_tracer_provider(tracer_provider)
    # Refused (with a warning) when something else in this process set them first.
    assert metrics.get_meter_provider() is meter_provider
    assert trace.get_tracer_provider() is tracer_provider
    return Providers(reader, exporter)


@dataclass(frozen=True)
class Point:
    metric: str
    attributes: dict[str, Any]
    #: A counter's sum; a histogram's count.
    value: float
    #: A histogram's sum.
    total: float | None = None


class Recorded:
    """What was recorded since the test started."""

    def __init__(self, providers: Providers) -> None:
        self._providers = providers
        self._points: list[Point] = []
        self._read()
        self._points.clear()
        providers.exporter.clear()

    def _read(self) -> None:
        data = self._providers.reader.get_metrics_data()
        if data is None:
            return
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if hasattr(point, "count"):
                            self._points.append(
                                Point(metric.name, attributes, point.count, point.sum)
                            )
                        else:
                            self._points.append(Point(metric.name, attributes, point.value))

    def points(self, prefix: str = "") -> list[Point]:
        self._read()
        return [point for point in self._points if point.metric.startswith(prefix)]

    def values(self, metric: str) -> dict[tuple[tuple[str, Any], ...], float]:
        """Each attribute set of ``metric`` to its sum (a histogram: its count)."""
        found: dict[tuple[tuple[str, Any], ...], float] = {}
        for point in self.points(metric):
            if point.metric == metric and point.value:
                key = tuple(sorted(point.attributes.items()))
                found[key] = found.get(key, 0) + point.value
        return found

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        finished = self._providers.exporter.get_finished_spans()
        return [span for span in finished if name is None or span.name == name]


@pytest.fixture
def recorded(providers: Providers) -> Recorded:
    return Recorded(providers)


def key(**attributes: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(attributes.items()))


def new_task(kind: str = "t") -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def receive_span(recorded: Recorded, task_id: str) -> ReadableSpan:
    [span] = [
        span
        for span in recorded.spans("musiccallback.receive")
        if (span.attributes or {}).get("musiccallback.task_id") == task_id
    ]
    return span


def assert_no_secret_in_metrics(recorded: Recorded, *task_ids: str) -> None:
    for point in recorded.points():
        for value in point.attributes.values():
            assert TOKEN not in str(value), point
            assert all(task_id not in str(value) for task_id in task_ids), point


# Deliveries: each outcome counted once, under its family and stage


def test_a_new_delivery_is_counted_received_and_its_receivers_run_in_a_child_span(
    make_app: AppFactory, recorded: Recorded
) -> None:
    app = make_app()
    task_id = new_task()
    assert app.test_client().post(URL, json=build_callback("complete", task_id=task_id)).json == {
        "status": "received"
    }

    assert recorded.values("musiccallback.deliveries") == {
        key(family="music", stage="complete", outcome="received"): 1
    }
    assert recorded.values("musiccallback.dispatch.duration") == {
        key(family="music", stage="complete"): 1
    }
    receive = receive_span(recorded, task_id)
    assert dict(receive.attributes or {}) == {
        "musiccallback.task_id": task_id,
        "musiccallback.family": "music",
        "musiccallback.stage": "complete",
        "musiccallback.outcome": "received",
    }
    [dispatch] = recorded.spans("musiccallback.dispatch")
    assert dispatch.parent is not None
    assert dispatch.parent.span_id == receive.context.span_id
    assert dispatch.context.trace_id == receive.context.trace_id
    assert dict(dispatch.attributes or {}) == {
        "musiccallback.family": "music",
        "musiccallback.stage": "complete",
    }
    assert dispatch.status.status_code is StatusCode.UNSET
    assert_no_secret_in_metrics(recorded, task_id)


def test_the_counts_are_monotonic_sums_that_lose_nothing_across_threads(
    providers: Providers, recorded: Recorded
) -> None:
    """Deliveries and refusals are counted in process and read at collection (an asynchronous
    counter): a backend still sees a counter, and concurrent requests' counts all arrive."""

    def count() -> None:
        for _ in range(2000):
            telemetry.delivered("threads-test", "complete", telemetry.RECEIVED)
            telemetry.rejected("threads-test")

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert recorded.values("musiccallback.deliveries") == {
        key(family="threads-test", stage="complete", outcome="received"): 16000
    }
    assert recorded.values("musiccallback.rejections") == {key(reason="threads-test"): 16000}
    data = providers.reader.get_metrics_data()
    assert data is not None
    kinds = {
        metric.name: metric.data
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    for name in ("musiccallback.deliveries", "musiccallback.rejections"):
        assert isinstance(kinds[name], Sum)
        assert kinds[name].is_monotonic


def test_a_redelivery_is_counted_duplicate(make_app: AppFactory, recorded: Recorded) -> None:
    client = make_app().test_client()
    task_id = new_task()
    payload = build_callback("complete", task_id=task_id)
    client.post(URL, json=payload)
    assert client.post(URL, json=payload).json == {"status": "duplicate"}

    assert recorded.values("musiccallback.deliveries") == {
        key(family="music", stage="complete", outcome="received"): 1,
        key(family="music", stage="complete", outcome="duplicate"): 1,
    }
    outcomes = [
        (span.attributes or {}).get("musiccallback.outcome")
        for span in recorded.spans("musiccallback.receive")
    ]
    assert outcomes == ["received", "duplicate"]
    # The duplicate ran no receivers.
    assert len(recorded.spans("musiccallback.dispatch")) == 1


def test_an_early_stage_after_the_complete_one_is_counted_stale(
    make_app: AppFactory, recorded: Recorded
) -> None:
    client = make_app().test_client()
    task_id = new_task()
    client.post(URL, json=build_callback("complete", task_id=task_id))
    assert client.post(URL, json=build_callback("first", task_id=task_id)).json == {
        "status": "duplicate"
    }

    assert (
        recorded.values("musiccallback.deliveries")[
            key(family="music", stage="first", outcome="stale")
        ]
        == 1
    )
    outcomes = {
        (span.attributes or {}).get("musiccallback.stage"): (span.attributes or {}).get(
            "musiccallback.outcome"
        )
        for span in recorded.spans("musiccallback.receive")
    }
    assert outcomes == {"complete": "received", "first": "stale"}


def test_a_body_no_family_reads_is_counted_kept(make_app: AppFactory, recorded: Recorded) -> None:
    body = {"code": 200, "msg": "success", "data": {"taskId": new_task(), "karaokeUrl": "x"}}
    assert make_app().test_client().post(URL, json=body).json == {"status": "kept"}

    assert recorded.values("musiccallback.deliveries") == {
        key(family="unknown", stage="unknown", outcome="kept"): 1
    }
    [span] = recorded.spans("musiccallback.receive")
    assert (span.attributes or {})["musiccallback.outcome"] == "kept"


@pytest.mark.parametrize(
    ("config", "url", "body", "reason"),
    [
        ({}, "/music-callback?token=wrong", b"{}", "unauthorized"),
        ({"ALLOWED_IPS": ["10.0.0.1"]}, URL, b"{}", "forbidden"),
        ({"MAX_CONTENT_LENGTH": 64}, URL, b"{" + b" " * 100 + b"}", "too_large"),
        ({}, URL, b"not json", "invalid_json"),
        ({"TOKEN": None}, "/music-callback", b'{"code": 200}', "invalid_payload"),
        ({"EXPECTED_ONLY": True}, URL, None, "unexpected_task"),
    ],
)
def test_each_refusal_is_counted_under_its_reason(
    make_app: AppFactory,
    recorded: Recorded,
    config: dict[str, Any],
    url: str,
    body: bytes | None,
    reason: str,
) -> None:
    data = json.dumps(build_callback(task_id=new_task())).encode() if body is None else body
    answer = make_app(**config).test_client().post(url, data=data, content_type="application/json")
    assert (answer.json["status"], answer.json["reason"]) == ("rejected", reason)

    assert recorded.values("musiccallback.rejections") == {key(reason=reason): 1}
    assert recorded.values("musiccallback.deliveries") == {}
    [span] = recorded.spans("musiccallback.receive")
    assert (span.attributes or {})["musiccallback.outcome"] == "rejected"
    assert (span.attributes or {})["musiccallback.reason"] == reason


def test_a_receiver_that_raises_is_counted_and_fails_its_span(
    make_app: AppFactory, recorded: Recorded
) -> None:
    app = make_app(RECEIVER_ERRORS="ack")

    def broken(sender: Flask, **extra: Any) -> None:
        raise RuntimeError("receiver broke")

    all_tracks_generated.connect(broken, sender=app)
    app.test_client().post(URL, json=build_callback("complete", task_id=new_task()))

    assert recorded.values("musiccallback.receiver.errors") == {
        key(family="music", stage="complete"): 1
    }
    [dispatch] = recorded.spans("musiccallback.dispatch")
    assert dispatch.status.status_code is StatusCode.ERROR
    [event] = dispatch.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "receiver broke"


# Tasks: how long they took, and those given up


def test_a_final_stage_records_the_time_since_the_task_was_expected(
    make_app: AppFactory, recorded: Recorded
) -> None:
    app = make_app()
    done, failed = new_task(), new_task()
    with app.app_context():
        get_state(app).extension.expect(done, family="music")
        get_state(app).extension.expect(failed, family="music")
    client = app.test_client()
    client.post(URL, json=build_callback("first", task_id=done))
    client.post(URL, json=build_callback("complete", task_id=done))
    client.post(URL, json=build_callback("failed", task_id=failed))
    client.post(URL, json=build_callback("complete", task_id=new_task()))  # never expected
    get_state(app).extension.wait_idle(10, app=app)

    assert recorded.values("musiccallback.task.duration") == {
        key(family="music", state="complete"): 1,
        key(family="music", state="failed"): 1,
    }
    [duration] = [
        point
        for point in recorded.points("musiccallback.task.duration")
        if point.attributes == {"family": "music", "state": "complete"}
    ]
    assert duration.total is not None
    assert 0 <= duration.total < 60


def test_a_task_reconciliation_gives_up_is_counted_lost(
    make_app: AppFactory, provider: FakeProvider, recorded: Recorded
) -> None:
    app = make_app(
        API_KEY="provider-api-key",
        API_BASE_URL=provider.url,
        RECONCILE_AFTER=0,
        RECONCILE_GIVE_UP=0,
    )
    task_id = new_task()
    with app.app_context():
        get_state(app).extension.expect(task_id, family="lyrics")
    result = reconcile(app)
    assert [done.result for done in result.tasks] == [Reconciled.LOST]

    assert recorded.values("musiccallback.tasks.lost") == {key(family="lyrics"): 1}
    assert_no_secret_in_metrics(recorded, task_id)


# Thread dispatch: the job's span continues the request's trace


def test_under_thread_dispatch_the_jobs_span_continues_the_requests_trace(
    make_app: AppFactory, recorded: Recorded
) -> None:
    with thread_apps(make_app) as factory:
        app = factory()
        release = threading.Event()

        def held(sender: Flask, **extra: Any) -> None:
            release.wait(10)

        all_tracks_generated.connect(held, sender=app)
        client = app.test_client()
        task_id = new_task()
        payload = build_callback("complete", task_id=task_id)
        assert client.post(URL, json=payload).json == {"status": "received"}
        # The job holds the claim while its receiver runs: a redelivery is in progress.
        assert client.post(URL, json=payload).json == {"status": "duplicate"}
        release.set()
        assert get_state(app).extension.wait_idle(10, app=app)

    assert recorded.values("musiccallback.deliveries") == {
        key(family="music", stage="complete", outcome="received"): 1,
        key(family="music", stage="complete", outcome="in_progress"): 1,
    }
    first = next(
        span
        for span in recorded.spans("musiccallback.receive")
        if (span.attributes or {}).get("musiccallback.outcome") == "received"
    )
    [dispatch] = recorded.spans("musiccallback.dispatch")
    assert dispatch.context.trace_id == first.context.trace_id
    assert dispatch.parent is not None
    assert dispatch.parent.span_id == first.context.span_id
    assert recorded.values("musiccallback.dispatch.duration") == {
        key(family="music", stage="complete"): 1
    }


# The token, with the Flask instrumentation installed


@pytest.fixture
def instrumented(make_app: AppFactory, providers: Providers) -> Iterator[Flask]:
    """An app instrumented the usual way: the extension first, then the instrumentation."""
    app = make_app()
    FlaskInstrumentor().instrument_app(app)
    yield app
    FlaskInstrumentor().uninstrument_app(app)


def everything_exported(recorded: Recorded) -> str:
    """Every span (name, attributes, events) and metric point exported, as text."""
    parts: list[str] = []
    for span in recorded.spans():
        parts.append(span.to_json())
    for point in recorded.points():
        parts.append(json.dumps([point.metric, point.attributes], default=str))
    return "\n".join(parts)


def server_span(recorded: Recorded) -> ReadableSpan:
    [span] = [span for span in recorded.spans() if span.kind is trace.SpanKind.SERVER]
    return span


def test_with_the_flask_instrumentation_the_token_is_nowhere_in_spans_or_metrics(
    instrumented: Flask, recorded: Recorded
) -> None:
    task_id = new_task()
    answer = instrumented.test_client().post(
        f"{URL}&family=music", json=build_callback("complete", task_id=task_id)
    )
    assert answer.json == {"status": "received"}

    server = server_span(recorded)
    attributes = dict(server.attributes or {})
    # The instrumentation recorded the query, the token redacted in it.
    assert attributes["http.target"] == "/music-callback?token=[redacted]&family=music"
    assert attributes["url.query"] == "token=[redacted]&family=music"
    parent = receive_span(recorded, task_id).parent
    assert parent is not None
    assert parent.span_id == server.context.span_id
    assert recorded.points("http.server")  # its metrics were recorded, and read here
    assert TOKEN not in everything_exported(recorded)
    assert_no_secret_in_metrics(recorded, task_id)


def test_with_the_flask_instrumentation_a_refused_method_keeps_the_token_out_too(
    instrumented: Flask, recorded: Recorded
) -> None:
    assert instrumented.test_client().get(URL).status_code == 405
    assert server_span(recorded).attributes is not None
    assert TOKEN not in everything_exported(recorded)


def test_instrumented_before_the_extension_the_token_is_kept_out_as_well(
    providers: Providers, recorded: Recorded
) -> None:
    app = Flask(__name__)
    app.config["MUSICCALLBACK_TOKEN"] = TOKEN
    FlaskInstrumentor().instrument_app(app)
    try:
        MusicCallback(app)
        app.test_client().post(URL, json=build_callback("complete", task_id=new_task()))
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    attributes = dict(server_span(recorded).attributes or {})
    assert attributes["http.target"] == "/music-callback?token=[redacted]"
    assert TOKEN not in everything_exported(recorded)


# Celery: the message carries the trace, the worker's span continues it


@pytest.fixture(scope="module")
def traced_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A worker whose host configures the SDK, exporting its spans to Redis."""
    from .celery_host import host_env
    from .servers_redis import celery_worker

    log = tmp_path_factory.mktemp("celery") / "worker.log"
    env = {**host_env(broker), "CELERY_HOST_TRACE": "1"}
    with celery_worker("tests.celery_host:celery_app", env, log=log):
        yield log


def test_under_celery_dispatch_the_workers_span_continues_the_requests_trace(
    broker: str, traced_worker: Path, recorded: Recorded
) -> None:
    from .celery_host import URL as CELERY_URL
    from .celery_host import create_app, records

    web = create_app(f"{broker}/0", f"{broker}/1", MUSICCALLBACK_STORE=f"{broker}/2")
    try:
        task_id = new_task()
        answer = web.test_client().post(
            CELERY_URL, json=build_callback("complete", task_id=task_id)
        )
        assert answer.json == {"status": "received"}
        receive = receive_span(recorded, task_id)
        deadline = time.monotonic() + 20
        found: list[dict[str, Any]] = []
        while not found:
            assert time.monotonic() < deadline, "the worker exported no span of this trace"
            spans = [json.loads(item) for item in records(web).lrange("spans", 0, -1)]
            found = [span for span in spans if span["trace_id"] == receive.context.trace_id]
            time.sleep(0.05)
    finally:
        web.extensions["celery"].close()

    [dispatch] = found
    assert dispatch["name"] == "musiccallback.dispatch"
    assert dispatch["parent_id"] == receive.context.span_id
    assert dispatch["attributes"] == {
        "musiccallback.family": "music",
        "musiccallback.stage": "complete",
    }


# Without the otel extra


def test_without_the_opentelemetry_api_installed_the_endpoint_works_and_records_nothing(
    tmp_path: Path,
) -> None:
    """In a fresh interpreter where ``opentelemetry`` cannot be imported (as without the extra)."""
    script = tmp_path / "no_otel.py"
    script.write_text(
        f"""
import sys
sys.modules["opentelemetry"] = None  # any import of it raises ImportError
from flask import Flask
from flask_musiccallback import MusicCallback, telemetry
from flask_musiccallback.testing import build_callback
assert not telemetry.AVAILABLE
app = Flask("no_otel")
app.config.update(MUSICCALLBACK_TOKEN={TOKEN!r}, MUSICCALLBACK_DISPATCH="thread")
MusicCallback(app)
answer = app.test_client().post({URL!r}, json=build_callback("complete", task_id="t1"))
assert answer.json == {{"status": "received"}}, answer.json
assert app.extensions["musiccallback"].extension.wait_idle(10, app=app)
print("ok")
"""
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert done.stdout.strip() == "ok", done.stderr
