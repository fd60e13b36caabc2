"""Metrics and traces through the OpenTelemetry API (API.md section 12).

The extension only ever talks to the global API: the host decides, by configuring an SDK (or not),
whether anything is recorded and where it goes. Without an SDK the API's proxies do nothing, and
without the API installed (no ``otel`` extra) every function here is a no-op, so the pipeline calls
them unconditionally.

Instruments are created once, at import, from the API's proxy meter, which forwards to whatever
provider the host sets later. Every metric attribute is a bounded name (a family, a stage, an
outcome, a reason, a state), never a task id, a URL or a secret, so that a flood of deliveries
cannot grow a metrics backend's series; each attribute set is built once per key and reused, which
keeps the request path free of per-request dictionaries. The two counts made on every request
(deliveries, refusals) are tallied in process and read by the SDK when it collects
(:class:`_Tally`), so that a configured SDK costs a request no more than adding one.

A delivery handed to a thread or a Celery worker keeps the trace of the request that accepted it:
the job carries the request's context (:func:`current_context`), and a Celery message carries it
as W3C trace-context headers (:func:`inject`, :func:`extract`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .redact import redact_token

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # the otel extra is not installed
    AVAILABLE = False
else:
    AVAILABLE = True

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

#: The instrumentation scope of the meter and the tracer.
NAME = "flask_musiccallback"

#: The span of each request to the endpoint, and of each run of a job.
RECEIVE_SPAN = "musiccallback.receive"
DISPATCH_SPAN = "musiccallback.dispatch"
ARCHIVE_SPAN = "musiccallback.archive"

#: ``musiccallback.deliveries`` outcomes beside the store's duplicate reasons.
RECEIVED = "received"
KEPT = "kept"

#: Span attributes of the receive span.
FAMILY_ATTRIBUTE = "musiccallback.family"
STAGE_ATTRIBUTE = "musiccallback.stage"
OUTCOME_ATTRIBUTE = "musiccallback.outcome"
TASK_ID_ATTRIBUTE = "musiccallback.task_id"
REASON_ATTRIBUTE = "musiccallback.reason"

#: The attributes an HTTP server instrumentation (WSGI, Flask) records with the query string in
#: them: rewritten with the token redacted (:func:`redact_server_span`).
URL_ATTRIBUTES = ("http.target", "http.url", "url.query", "url.full")

#: A family or stage not known (a kept body no family reads).
UNKNOWN = "unknown"

class _Tally:
    """Counts kept in process and reported when a reader collects, through an asynchronous
    counter: what the endpoint counts on every request (a delivery, a refusal).

    A synchronous SDK counter hashes its attributes, finds its series and takes its lock on every
    ``add``; here a request adds one to an integer, and the SDK reads the totals once per
    collection. The totals are cumulative and monotonic, which is what an asynchronous counter
    reports: a backend sees the same counter either way.
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def add(self, pairs: tuple[str, ...]) -> None:
        with self._lock:
            self._counts[pairs] = self._counts.get(pairs, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        for pairs, count in counts:
            yield Observation(count, _attributes(*pairs))


_delivery_tally = _Tally()
_rejection_tally = _Tally()

if AVAILABLE:
    _tracer = trace.get_tracer(NAME)
    _meter = metrics.get_meter(NAME)
    _meter.create_observable_counter(
        "musiccallback.deliveries",
        callbacks=[_delivery_tally.observe],
        unit="{delivery}",
        description="Callbacks accepted by the endpoint, by family, stage and outcome.",
    )
    _meter.create_observable_counter(
        "musiccallback.rejections",
        callbacks=[_rejection_tally.observe],
        unit="{request}",
        description="Requests the endpoint refused, by reason.",
    )
    _receiver_errors = _meter.create_counter(
        "musiccallback.receiver.errors",
        unit="{error}",
        description="Receivers that raised, by family and stage.",
    )
    _dispatch_duration = _meter.create_histogram(
        "musiccallback.dispatch.duration",
        unit="s",
        description="How long one run of a delivery's receivers took.",
    )
    _task_duration = _meter.create_histogram(
        "musiccallback.task.duration",
        unit="s",
        description="From expect to the task's final stage.",
    )
    _tasks_lost = _meter.create_counter(
        "musiccallback.tasks.lost",
        unit="{task}",
        description="Tasks reconciliation gave up on, by family.",
    )

_attribute_sets: dict[tuple[str, ...], dict[str, str]] = {}


def _attributes(*pairs: str) -> dict[str, str]:
    """The attribute set of ``name, value, name, value...``, built once per distinct set.

    Every value is a bounded name, so the cache stays as small as the metric's series.
    """
    found = _attribute_sets.get(pairs)
    if found is None:
        found = _attribute_sets.setdefault(pairs, dict(zip(pairs[::2], pairs[1::2], strict=True)))
    return found


def delivered(family: str, stage: str, outcome: str) -> None:
    """Count a callback the endpoint accepted (``musiccallback.deliveries``)."""
    _delivery_tally.add(("family", family, "stage", stage, "outcome", outcome))


def rejected(reason: str) -> None:
    """Count a refused request (``musiccallback.rejections``)."""
    _rejection_tally.add(("reason", reason))


def receivers_failed(family: str, stage: str, count: int) -> None:
    """Count receivers that raised (``musiccallback.receiver.errors``)."""
    if AVAILABLE and count:
        _receiver_errors.add(count, _attributes("family", family, "stage", stage))


def task_settled(family: str, state: str, seconds: float) -> None:
    """Record how long a task took from ``expect`` to its final stage."""
    if AVAILABLE:
        _task_duration.record(seconds, _attributes("family", family, "state", state))


def task_lost(family: str) -> None:
    """Count a task reconciliation gave up on (``musiccallback.tasks.lost``)."""
    if AVAILABLE:
        _tasks_lost.add(1, _attributes("family", family))


def current_context() -> Context | None:
    """The trace context now, for a job that will run elsewhere (a pool thread): a context
    variable's read, cheaper than asking whether anything traces."""
    return otel_context.get_current() if AVAILABLE else None


def inject(context: Context | None) -> dict[str, str]:
    """``context`` as propagation headers (W3C ``traceparent`` by default): what a Celery
    message carries so that the worker continues the request's trace."""
    carrier: dict[str, str] = {}
    if AVAILABLE:
        propagate.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context | None:
    """The context :func:`inject` wrote, read back in the worker."""
    if not AVAILABLE or not carrier:
        return None
    return propagate.extract(carrier)


class _NoSpan:
    """The span of a request or a run when nothing records spans: accepts and drops everything."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False


_NOTHING: contextlib.nullcontext[Any] = contextlib.nullcontext(_NoSpan())


_configured: set[str] = set()


def _tracing() -> bool:
    """Whether the host configured a tracer provider: without one, no span is started at all.

    The API's own providers (its proxy, its no-op) record nothing, and starting and activating a
    span through them still costs a request several context switches. The API lets a process set
    its provider once, so a real one, once seen, is remembered rather than asked for again.
    """
    if "trace" in _configured:
        return True
    if not AVAILABLE:
        return False
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return False
    _configured.add("trace")
    return True


def metering() -> bool:
    """Whether the host configured a meter provider (one not from the API package itself),
    remembered once seen as :func:`_tracing` does."""
    if "metrics" in _configured:
        return True
    if not AVAILABLE or type(metrics.get_meter_provider()).__module__.startswith(
        "opentelemetry.metrics"
    ):
        return False
    _configured.add("metrics")
    return True


class _Current:
    """A started span made current until the block ends, then ended, with what escaped it.

    A class rather than the API's ``start_as_current_span``, whose nested generator context
    managers cost the request path more than the span itself.
    """

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        span = self.span
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))
        otel_context.detach(self._token)
        span.end()


def receive_span() -> contextlib.AbstractContextManager[Span]:
    """The ``musiccallback.receive`` span of one request, current while the view runs."""
    if not _tracing():
        return _NOTHING
    return _Current(_tracer.start_span(RECEIVE_SPAN))


class _Run:
    """One run of a job's work: its span, when spans are recorded, and for receivers its
    ``musiccallback.dispatch.duration``."""

    __slots__ = ("_current", "_family", "_stage", "_started", "_timed")

    def __init__(
        self, parent: Context | None, family: str, stage: str, *, receivers: bool
    ) -> None:
        self._family = family
        self._stage = stage
        self._timed = receivers
        self._current: _Current | None = None
        if _tracing():
            name = DISPATCH_SPAN if receivers else ARCHIVE_SPAN
            attributes = _attributes(FAMILY_ATTRIBUTE, family, STAGE_ATTRIBUTE, stage)
            self._current = _Current(
                _tracer.start_span(name, context=parent, attributes=attributes)
            )

    def __enter__(self) -> None:
        if self._current is not None:
            self._current.__enter__()
        self._started = time.perf_counter()

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        if self._timed:
            _dispatch_duration.record(
                time.perf_counter() - self._started,
                _attributes("family", self._family, "stage", self._stage),
            )
        if self._current is not None:
            self._current.__exit__(kind, exc, traceback)


def dispatch_span(
    parent: Context | None, family: str, stage: str, *, receivers: bool
) -> contextlib.AbstractContextManager[None]:
    """One run of a job's work as a child of ``parent`` (the request's context, or the current
    one); for receivers, also its ``musiccallback.dispatch.duration``.

    The span's failure status is set by the caller through :func:`failed`, since the receivers'
    errors are returned, not raised.
    """
    if not AVAILABLE:
        return contextlib.nullcontext()
    return _Run(parent, family, stage, receivers=receivers)


def failed(errors: list[Exception]) -> None:
    """Mark the current span (a job's run) failed with what its work raised."""
    if not AVAILABLE or not errors:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for error in errors:
        span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{len(errors)} receiver(s) raised"))


def redact_server_span(query_string: bytes) -> None:
    """Rewrite, on the current span (the HTTP server instrumentation's, when one is installed),
    every URL attribute holding a ``token=`` with the token redacted.

    ``opentelemetry-instrumentation-wsgi`` records the raw request target and query string, and
    redacts only a few cloud-signature parameters; the callback URL carries the token in its
    query. The attributes are read from the span (an SDK span's public ``attributes``) so that
    only those the instrumentation set are rewritten.
    """
    if b"=" not in query_string or not AVAILABLE:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    recorded = getattr(span, "attributes", None)
    if not isinstance(recorded, Mapping):
        return
    for key in URL_ATTRIBUTES:
        value = recorded.get(key)
        if isinstance(value, str):
            redacted = redact_token(value)
            if redacted != value:
                span.set_attribute(key, redacted)
