"""The life of one delivery, in one place: claimed, run, and settled.

A callback (the endpoint) or a poll becomes a delivery, which :func:`deliver` claims in the store
(:meth:`~..stores.base.Store.claim`), notes on its task (:func:`record_stage`: the task view and
reconciliation read it) and makes a :class:`Job`. Then, by the app's dispatcher:

- ``sync``: :func:`process` runs the receivers in the request. All succeeded: ``done``
  (:meth:`Job.complete`); one raised: released for the provider's retry (``retry`` policy, 503) or
  kept ``failed`` (``ack`` policy, 200).
- ``thread``, ``celery``: the job is queued (:exc:`NotQueued` when it cannot be: the claim is
  released, 503) and the answer given. A worker runs :func:`process_acknowledged`: it starts the
  delivery (``pending`` to ``processing``, :meth:`~..stores.base.Store.start`), runs the
  receivers, and completes it, or records the failed attempt (:meth:`Job.defer`, ``pending``
  again) and returns the :class:`NextAttempt`, or, after the last attempt, keeps it ``failed``.

A replay or the sweep (:mod:`.replay`) takes a kept delivery over with ``reclaim`` instead of
``claim`` and goes through the same steps. Whoever claims gives the claim back when the delivery
cannot go on: :func:`deliver` for a new delivery, the job itself when its receivers are
interrupted; dispatchers only run or queue.

A new delivery of a success with media also has its media copied, when the app has an archive
(:mod:`..archive.copies`): a job of its own, claimed and queued by the write-back.

A job's writes to the store name the owner of its claim (:attr:`~..stores.base.Delivery.owner`)
and go through the app's :class:`~..writeback.WriteBack`: when the store cannot be reached just
then, the outcome stands (the receivers are not run again for it) and the write is made once the
store is back.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import telemetry
from ..signals import callback_duplicate
from ..stores.base import ClaimResult, Delivery, StoreUnavailable
from ..stores.owners import claim_owner
from ..stores.tasks import VIA_CALLBACK, VIA_POLL, TaskState
from .receivers import describe, run_receivers, send_isolated

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.context import Context

    from ..families import Event, Family
    from ..state import MusicCallbackState

logger = logging.getLogger("flask_musiccallback")


#: The pseudo-header of a polled delivery (:func:`~..poll.poll_task`): its stage came by poll.
SOURCE_HEADER = "Source"
POLL_SOURCE = "poll"


class Outcome(str, enum.Enum):
    """How a delivery ended, which is also what the endpoint answers."""

    RECEIVED = "received"
    DUPLICATE = "duplicate"
    RETRY = "retry"
    #: An authenticated body that no family reads, kept instead of refused (API.md section 9).
    KEPT = "kept"


class NotQueued(Exception):  # noqa: N818 - reads as what happened: "not queued"
    """A dispatcher could not queue a job now (its queue is full, the broker is down)."""


def receivers(job: Job) -> list[Exception]:
    """A job's usual work: the event's receivers, every one (:func:`.run_receivers`)."""
    return run_receivers(job.app, job.family, job.event)


#: What a job does with its event; what raised, as a list, says it failed. The receivers, or
#: the copy of its media to the archive (:mod:`..archive`), which is kept and retried as a
#: delivery is.
Work = Callable[["Job"], list[Exception]]


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery on its way to its receivers: what came, for which app, and under
    whose claim (``delivery.owner``); the one thing every dispatcher runs."""

    app: Flask
    state: MusicCallbackState
    family: Family
    event: Event
    delivery: Delivery
    #: Which run of the receivers this is; off the request path, retries count up.
    attempt: int = 1
    #: Off the request path: the owner the job holds the claim as once it starts
    #: (:meth:`~.stores.base.Store.start`), chosen once so that a start sent again is known.
    runner: str | None = None
    #: Whether the delivery was acknowledged before (a replay, the sweep): the provider will not
    #: send it again, so a dispatcher must not refuse it to push back on the provider.
    replayed: bool = False
    #: What the job does: :func:`receivers` unless it is a media copy.
    work: Work = receivers
    #: The trace context of the request (or message) that brought the delivery, so that a run in
    #: a pool thread continues that trace; ``None``: whatever context the run finds.
    trace_context: Context | None = None

    def complete(self) -> None:
        self._write("the completion", lambda: self.state.store.complete(self.delivery))

    def release(self, error: str) -> None:
        self._write("the release", lambda: self.state.store.release(self.delivery, error))

    def fail(self, error: str) -> None:
        self._write("the failure", lambda: self.state.store.fail(self.delivery, error))

    def defer(self, error: str, delay: float) -> None:
        self._write(
            "the failed attempt", lambda: self.state.store.defer(self.delivery, error, delay)
        )

    def _write(self, what: str, write: Callable[[], None]) -> None:
        self.state.write_back.write(write, what, self.delivery)


class Permanent(Exception):  # noqa: N818 - a kind of failure, mixed into others
    """A failure no later attempt can mend (a link the archive refuses, a file over its cap):
    a job whose every failure is one gives up at once instead of retrying."""


def last_attempt(job: Job, failures: list[Exception]) -> bool:
    """Whether ``job``'s run that failed with ``failures`` is its last one, off the request path:
    ``MUSICCALLBACK_RETRY_ATTEMPTS`` runs made, or nothing a retry could mend."""
    if job.attempt >= job.state.settings.retry_attempts:
        return True
    return all(isinstance(failure, Permanent) for failure in failures)


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """A job to run again after ``delay`` seconds (off the request path)."""

    delay: float
    job: Job


def deliver(
    app: Flask, state: MusicCallbackState, family: Family, event: Event, delivery: Delivery
) -> Outcome:
    """Claim a delivery and process it once (:func:`deliver_claimed`); how it ended."""
    return deliver_claimed(app, state, family, event, delivery)[0]


def deliver_claimed(
    app: Flask, state: MusicCallbackState, family: Family, event: Event, delivery: Delivery
) -> tuple[Outcome, ClaimResult]:
    """Claim a delivery and process it once; raises ``StoreUnavailable`` when the store is down.
    Returns how it ended and what the claim decided, whose reason the endpoint's metrics keep
    apart (a duplicate, one in progress, a stale stage).

    A dispatcher that answers before the receivers run claims the delivery as ``pending``: with a
    persistent store it is then durably recorded before the answer, and stays pending, for
    ``replay --pending`` and the sweep, if the process dies before a worker finishes it. One that
    cannot be queued is given back, for the provider's retry.

    A claim whose answer never came may still have been taken: it is given back as soon as the
    store answers again, so that the provider's retry finds it free rather than held for a lease.
    """
    dispatcher = state.dispatcher
    try:
        claim = state.store.claim(delivery, queued=dispatcher.queued)
    except StoreUnavailable as exc:
        if exc.reached:
            state.write_back.add(
                lambda: state.store.release(delivery, "the store did not answer the claim"),
                "the release of an unanswered claim",
                delivery,
            )
        raise
    if claim is ClaimResult.IN_PROGRESS and state.write_back.write_now(delivery):
        # Held by a claim this process gave up on, and given back just now.
        claim = state.store.claim(delivery, queued=dispatcher.queued)
    if claim is not ClaimResult.CLAIMED:
        send_isolated(callback_duplicate, app, event=event, reason=claim.value)
        return Outcome.DUPLICATE, claim
    record_stage(state, family, event, delivery)
    job = Job(app, state, family, event, delivery, trace_context=telemetry.current_context())
    if state.archive is not None:
        state.archive.schedule(state, job)
    if not dispatcher.queued:
        return process(job), claim
    try:
        dispatcher.submit(job)
    except NotQueued as exc:
        job.release(f"not queued: {exc}")
        return Outcome.RETRY, claim
    return Outcome.RECEIVED, claim


def record_stage(
    state: MusicCallbackState, family: Family, event: Event, delivery: Delivery
) -> None:
    """Note a new delivery's stage on its task (the task view, reconciliation), with the time it
    was received and whether a callback or a poll brought it, after the answer.

    A final stage also records the task's ``musiccallback.task.duration``, from ``expect``, when
    the host meters: the task is read back for it in the same write.
    """
    stage = str(event.stage)
    via = VIA_POLL if delivery.headers.get(SOURCE_HEADER) == POLL_SOURCE else VIA_CALLBACK
    final = family.task_state(stage)
    write = functools.partial(
        state.store.record_stage,
        event.task_id,
        family.name,
        stage,
        at=event.received_at,
        via=via,
        final=final,
    )
    if final is not None and telemetry.metering():
        write = functools.partial(_settled, state, write, event, family.name, final)
    after_the_answer(state, write, "the stage", delivery)


def _settled(
    state: MusicCallbackState,
    write: Callable[[], None],
    event: Event,
    family: str,
    final: TaskState,
) -> None:
    """Make ``write`` (a final stage's), then record how long its task took since ``expect``.

    A store that cannot answer the read costs the figure, not the write (which is not retried
    for it).
    """
    write()
    try:
        task = state.store.task(event.task_id)
    except StoreUnavailable:
        return
    if task is not None and task.expected_at is not None:
        seconds = (event.received_at - task.expected_at).total_seconds()
        telemetry.task_settled(family, str(final), max(seconds, 0.0))


def after_the_answer(
    state: MusicCallbackState, write: Callable[[], None], what: str, delivery: Delivery
) -> None:
    """Make a store write the answer need not wait for (``what`` of ``delivery``, for the log).

    In the write-back's thread, unless the store lives in this process
    (:attr:`~..stores.base.Store.in_process`): a persistent store's request then pays no round
    trip for it, and the memory store reads right at once what was written. A store that cannot
    be reached has the write kept and made later, as a settlement's is.
    """
    if state.store.in_process:
        state.write_back.write(write, what, delivery)
    else:
        state.write_back.add(write, what, delivery)


def settle(job: Job, on_failure: Callable[[list[Exception]], Outcome]) -> Outcome:
    """Run the receivers of a claimed delivery: complete it, or let ``on_failure(failures)``
    decide.

    Whatever escapes (``BaseException`` included) releases the claim, so a delivery is never left
    held by a request or a job that no longer runs.
    """
    settled = False
    try:
        run = job.work
        stage = str(job.event.stage)
        with telemetry.dispatch_span(
            job.trace_context, job.family.name, stage, receivers=run is receivers
        ):
            failures = run(job)
            telemetry.failed(failures)
        if failures:
            outcome = on_failure(failures)
        else:
            job.complete()
            outcome = Outcome.RECEIVED
        settled = True
        return outcome
    finally:
        if not settled:
            job.release("interrupted")


def process(job: Job) -> Outcome:
    """Run the receivers of a claimed delivery in the request: ``MUSICCALLBACK_RECEIVER_ERRORS``
    says whether a failure is retried by the provider (release, 503) or acknowledged (fail, 200).
    """

    def on_failure(failures: list[Exception]) -> Outcome:
        error = describe(failures)
        if job.state.settings.receiver_errors == "retry":
            job.release(error)
            return Outcome.RETRY
        job.fail(error)
        return Outcome.RECEIVED

    return settle(job, on_failure)


def process_acknowledged(job: Job) -> NextAttempt | None:
    """Run an attempt of a delivery already answered 200 (``thread``, ``celery``); what to run
    next, if anything.

    The job first takes the delivery from ``pending`` to ``processing`` (:meth:`Store.start`) as
    its :attr:`Job.runner`; when it is not waiting for the job's claim any more, another job or a
    replay has it, and this one runs nothing. A store that cannot be reached then is asked again
    after a back-off, by the same runner.

    The provider will not retry it, so a receiver error is retried here, after the next attempt's
    delay, until ``MUSICCALLBACK_RETRY_ATTEMPTS`` attempts were made; then it is kept as failed,
    for ``replay``. A failed attempt is recorded (:meth:`Store.defer`: the attempt, its error,
    ``pending`` again) and the claim stays held through the back-off, however long, so a
    redelivery meanwhile is ``in_progress``.
    """
    settings = job.state.settings
    delivery = job.delivery
    runner = job.runner or claim_owner()
    try:
        started = job.state.store.start(delivery, runner)
    except StoreUnavailable as exc:
        delay = settings.retry_delay(job.attempt)
        logger.warning(
            "Cannot start task %s stage %s: %s; trying again in %.1f s.",
            delivery.task_id,
            delivery.stage,
            exc,
            delay,
        )
        return NextAttempt(delay, dataclasses.replace(job, runner=runner))
    if not started:
        logger.info(
            "Task %s stage %s is no longer waiting (a replay or another job has it); skipped.",
            delivery.task_id,
            delivery.stage,
        )
        return None
    running = dataclasses.replace(
        job, delivery=dataclasses.replace(delivery, owner=runner), runner=None
    )
    next_attempt: NextAttempt | None = None

    def on_failure(failures: list[Exception]) -> Outcome:
        nonlocal next_attempt
        attempt = job.attempt
        error = describe(failures)
        if not last_attempt(running, failures):
            delay = settings.retry_delay(attempt)
            logger.warning(
                "Attempt %d of %d failed on task %s stage %s; retrying in %.1f s: %s",
                attempt,
                settings.retry_attempts,
                delivery.task_id,
                delivery.stage,
                delay,
                error,
            )
            running.defer(error, delay)
            next_attempt = NextAttempt(delay, dataclasses.replace(running, attempt=attempt + 1))
        else:
            logger.error(
                "Giving up on task %s stage %s after %d attempts; kept as failed: %s",
                delivery.task_id,
                delivery.stage,
                attempt,
                error,
            )
            running.fail(error)
        return Outcome.RECEIVED

    settle(running, on_failure)
    return next_attempt
