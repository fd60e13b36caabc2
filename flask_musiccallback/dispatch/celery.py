"""``MUSICCALLBACK_DISPATCH = "celery"``: answer at once, run the receivers in a Celery worker.

The request claims the delivery and publishes one message; a worker, on any machine, loads the
event again with the family's schema and runs the receivers inside the Flask app context that the
host's Celery app provides (the Flask documentation's ``FlaskTask`` pattern, see docs/dispatch.md).

The message carries only what does not depend on this process: the family's name, the delivery's
key, the raw payload and when it arrived. That is also what a persistent store keeps, so a delivery
that a worker never finishes can be replayed from the store alone.

The task is a ``shared_task``, registered on every Celery app of the process as soon as an app
using celery dispatch is initialised; the web process only publishes it by name. It is acknowledged
late, so a worker that dies while running it leaves the message to be delivered again (unless only
its pool process died, which Celery reports as a failed task); the delivery itself stays in the
store for the sweep. The message is a trigger only, the store decides: a job runs a delivery only
while it is ``pending`` (:meth:`Store.start`), so a message delivered twice, or a delivery a
replay took over, never reaches the receivers twice.

The sweep (:mod:`.sweep`) runs in the workers: each worker sends itself
``flask_musiccallback.sweep_pending`` once when it starts, and a Celery beat schedule may run it
periodically. Recovered deliveries are published to the workers again.

Reconciliation (:mod:`..reconcile`) is the task ``flask_musiccallback.reconcile_tasks``, which the
host schedules with Celery beat (docs/tasks.md); what its polls find is published to the workers
as a callback's delivery is.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import Celery, Task, shared_task
from celery.signals import worker_ready
from flask import current_app, has_app_context
from marshmallow import ValidationError
from werkzeug.utils import import_string

from .. import telemetry
from ..config import ConfigKeys, ConfigurationError, Settings
from ..outage import Outage
from ..reconcile import Reconciled, reconcile
from ..state import get_state
from ..stores.base import Delivery, utcnow
from .job import Job, NotQueued, process_acknowledged
from .sweep import sweep

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger("flask_musiccallback")

#: The task's name, the same in every process; route it with Celery's ``task_routes``.
TASK_NAME = "flask_musiccallback.process_delivery"

#: The sweep's task, for a Celery beat schedule (docs/dispatch.md).
SWEEP_TASK_NAME = "flask_musiccallback.sweep_pending"

#: The media archive's copies (docs/archive.md): a task of its own, so that a host can route
#: the downloads to workers of their own with ``task_routes``.
ARCHIVE_TASK_NAME = "flask_musiccallback.archive_media"

#: The reconciliation's task, for a Celery beat schedule (docs/tasks.md).
RECONCILE_TASK_NAME = "flask_musiccallback.reconcile_tasks"

#: Whether an app of this process uses celery dispatch with the sweep on: its workers then sweep
#: when they start.
_sweep_at_start = False

#: Publishing runs in the request: when the broker is down, give up within a second or so and
#: answer 503 (the provider retries) rather than hold the provider past its 15 s timeout.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


class CeleryDispatcher:
    """Publishes each claimed delivery to the host's Celery app; a worker runs the receivers.

    The Celery app is looked up at the first delivery, not in ``init_app``: in the Flask pattern the
    host builds it after the extension, from the same app factory.
    """

    queued = True

    def __init__(self, settings: Settings, *, task_name: str = TASK_NAME) -> None:
        global _sweep_at_start
        #: The task each job is published as: a delivery's, or a media copy's.
        self.task_name = task_name
        self._configured: Any = settings.celery_app
        self._celery: Celery | None = None
        self._broker = Outage()
        _sweep_at_start = _sweep_at_start or settings.pending_sweep_age is not None

    def celery_app(self, app: Flask) -> Celery:
        """The Celery app deliveries are published with: ``MUSICCALLBACK_CELERY_APP`` or
        ``app.extensions["celery"]``."""
        if self._celery is None:
            configured = self._configured
            if configured is None:
                configured = app.extensions.get("celery")
                if configured is None:
                    raise ConfigurationError(
                        f"Celery dispatch needs a Celery app: set {ConfigKeys.CELERY_APP}, or "
                        'store it in app.extensions["celery"] as in the Flask Celery pattern.'
                    )
            elif isinstance(configured, str):
                configured = import_string(configured)
            self._celery = configured
        return self._celery

    def submit(self, job: Job) -> None:
        try:
            self.celery_app(job.app).send_task(
                self.task_name,
                kwargs=task_kwargs(job),
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:
            if self._broker.failed():
                logger.error("Cannot queue deliveries with Celery; answering 503: %s", exc)
            raise NotQueued(str(exc)) from exc
        if self._broker.recovered():
            logger.warning("Deliveries are queued with Celery again.")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Nothing runs here: the workers, elsewhere, settle the deliveries."""
        return True

    def close(self, timeout: float | None = None) -> bool:
        return True


def task_kwargs(job: Job) -> dict[str, Any]:
    """The message for one job: JSON only, and nothing tied to this process but the claim.

    With a tracer configured it also carries the request's trace context (``trace``:
    propagation headers such as ``traceparent``), so that the worker's span continues the
    request's trace; a message without it starts a trace of its own.
    """
    delivery = job.delivery
    message: dict[str, Any] = {
        "family": job.family.name,
        "task_id": delivery.task_id,
        "stage": delivery.stage,
        "payload": dict(delivery.payload),
        "received_at": delivery.received_at.isoformat(),
        "owner": delivery.owner,
        "attempt": job.attempt,
        "runner": job.runner,
    }
    carrier = telemetry.inject(job.trace_context)
    if carrier:
        message["trace"] = carrier
    return message


def _flask_app() -> Flask:
    """The app whose context the host's ``FlaskTask`` pushed, or a message saying to push one."""
    if not has_app_context():
        raise RuntimeError(
            "flask-musiccallback's Celery tasks run without a Flask app context: build the "
            "Celery app with a Task class that pushes one (task_cls=FlaskTask, as in the Flask "
            "documentation's Celery pattern)."
        )
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


@shared_task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def process_delivery(self: Task[Any, Any], /, **message: Any) -> None:
    """Run one attempt of a delivery in a worker; a failed attempt is retried by Celery.

    The message is a trigger: a copy delivered twice, or one whose delivery a replay took over,
    finds the delivery no longer waiting for its claim and runs nothing.
    """
    _run(self, archive=False, **message)


@shared_task(name=ARCHIVE_TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def archive_media(self: Task[Any, Any], /, **message: Any) -> None:
    """Run one attempt of a media copy (:mod:`..archive.copies`) in a worker, as a delivery's."""
    _run(self, archive=True, **message)


def _run(
    task: Task[Any, Any],
    *,
    archive: bool,
    family: str,
    task_id: str,
    stage: str,
    payload: dict[str, Any],
    received_at: str,
    owner: str,
    attempt: int = 1,
    runner: str | None = None,
    trace: dict[str, str] | None = None,
) -> None:
    app = _flask_app()
    state = get_state(app)
    try:
        kind = state.extension.families.named(family)
        event = kind.reload(payload, datetime.fromisoformat(received_at))
        if archive and state.archive is None:
            raise LookupError(f"{ConfigKeys.ARCHIVE} is not set in the worker's app")
    except (LookupError, ValidationError, ValueError) as exc:
        logger.error("A worker cannot read task %s stage %s: %s", task_id, stage, exc)
        unreadable = Delivery(task_id, stage, payload, utcnow(), owner=owner)
        error = f"unreadable in the worker: {exc}"
        state.write_back.write(
            lambda: state.store.fail(unreadable, error), "the failure", unreadable
        )
        return
    delivery = kind.delivery(event, payload, owner=owner)
    job = Job(
        app,
        state,
        kind,
        event,
        delivery,
        attempt=attempt,
        runner=runner,
        trace_context=telemetry.extract(trace),
    )
    if state.archive is not None and archive:
        job = state.archive.job(job)
    next_attempt = process_acknowledged(job)
    if next_attempt is not None:
        raise task.retry(
            countdown=next_attempt.delay, kwargs=task_kwargs(next_attempt.job), max_retries=None
        )


@shared_task(name=SWEEP_TASK_NAME, ignore_result=True)
def sweep_pending() -> int:
    """Publish again the deliveries left pending past ``MUSICCALLBACK_PENDING_SWEEP_AGE``;
    returns how many were taken."""
    return len(sweep(_flask_app()))


@shared_task(name=RECONCILE_TASK_NAME, ignore_result=True)
def reconcile_tasks(limit: int | None = None) -> dict[str, int]:
    """Reconcile the app's overdue tasks once (:func:`~..reconcile.reconcile`); how many tasks
    ended each way. Schedule it with beat, every minute or so: a run that finds another of the
    same worker process under way returns at once, and two workers share the tasks out."""
    run = reconcile(_flask_app(), limit=limit)
    if run.stopped is not None:
        logger.info("Reconciliation: %s", run.stopped)
    return {str(result): run.count(result) for result in Reconciled}


@worker_ready.connect
def _sweep_when_a_worker_starts(sender: Any = None, **extra: Any) -> None:
    """A worker that starts (after a crash, a deploy) sweeps once, through its own queue."""
    if _sweep_at_start and sender is not None:
        try:
            sender.app.send_task(SWEEP_TASK_NAME)
        except Exception as exc:
            logger.warning("Cannot queue the sweep of pending deliveries: %s", exc)
