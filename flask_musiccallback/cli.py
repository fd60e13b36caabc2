"""The ``flask musiccallback`` command group.

Registered on ``app.cli`` by ``init_app`` (so ``app.test_cli_runner()`` sees it) and through the
``flask.commands`` entry point (so ``flask --help`` lists it in any app that installs the package).

Exit codes of ``poll`` and ``submit``: 0 done, 1 an error of configuration, store or answer (and
any other refusal of the provider), 3 the provider refused the API key, 4 the provider stayed busy
or unreachable (rate limits, maintenance, server or network errors), 5 ``poll --watch`` ran out of
time before the task ended.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .config import ConfigurationError
from .dispatch.replay import Replayed, replay
from .families import FAMILY_ARG, MUSIC_NAME
from .families.examples import RESELLERS
from .simulate import (
    PAST_RETRY_WINDOW,
    PROVIDER_RETRY_WINDOW,
    Answer,
    BadDay,
    Delivery,
    build_callback,
    default_stages,
    deliver_stages,
    post_callback,
    post_over_http,
)
from .state import get_state
from .stores.base import (
    STATUS_STATES,
    KeptDelivery,
    PersistentStore,
    Store,
    StoreError,
    StoreUnavailable,
    require_persistent,
)
from .stores.tasks import VIA_CALLBACK, VIA_POLL, TaskRecord, TaskState

if TYPE_CHECKING:
    from .poll import PollResult
    from .provider import ProviderError

#: Seconds ``simulate`` (in-process) waits for the work it started: receivers, their retries,
#: and media copies with theirs.
IN_PROCESS_WAIT = 120.0

#: Seconds ``submit`` waits for a registration the store could not take at once.
REGISTRATION_WAIT = 30.0

#: Exit codes of ``poll`` and ``submit``; see the module docstring.
EXIT_UNAUTHORIZED = 3
EXIT_UNAVAILABLE = 4
EXIT_TIMEOUT = 5


class CommandError(click.ClickException):
    """A failure reported as ``Error: ...`` with exit status 1, never a traceback.

    Other exit statuses are subclasses: Click declares ``exit_code`` a class variable.
    """

    exit_code = 1


class PollTimeoutError(CommandError):
    """``poll --watch`` gave up before the task finished."""

    exit_code = EXIT_TIMEOUT


class ProviderUnauthorizedError(CommandError):
    """The provider refused the API key."""

    exit_code = EXIT_UNAUTHORIZED


class ProviderUnavailableError(CommandError):
    """The provider could not be reached, or answered with an error worth retrying."""

    exit_code = EXIT_UNAVAILABLE


def _provider_failure(error: ProviderError) -> CommandError:
    """The command error, and so the exit status, for what the provider answered."""
    if error.code in (401, 403):
        return ProviderUnauthorizedError(str(error))
    return (ProviderUnavailableError if error.retryable else CommandError)(str(error))


@click.group("musiccallback", cls=AppGroup)
def musiccallback() -> None:
    """Receive, inspect and replay the music generation API's callbacks."""


def _app() -> Flask:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


@musiccallback.command("url")
def url_command() -> None:
    """Print the URL to pass as callBackUrl (token included)."""
    state = get_state(_app())
    try:
        click.echo(state.extension.callback_url())
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None


def _in_process(app: Flask, query: Mapping[str, str]) -> Callable[[Mapping[str, Any]], Answer]:
    """Posts to the app's own endpoint through its test client: the real checks and dedup path.

    A client per request, so that ``--twice`` can post from two threads at once.
    """

    def send(payload: Mapping[str, Any]) -> Answer:
        response = post_callback(app, payload, query=query)
        return response.status_code, response.get_data(as_text=True)

    return send


def _over_http(
    app: Flask, url: str, query: Mapping[str, str]
) -> Callable[[Mapping[str, Any]], Answer]:
    """Posts to ``url`` as the provider would (:func:`~.simulate.post_over_http`)."""
    import httpx

    def send(payload: Mapping[str, Any]) -> Answer:
        try:
            return post_over_http(app, url, payload, query=query)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot deliver to {url}: {exc}") from None

    return send


@musiccallback.command("simulate")
@click.option(
    "--family",
    default=MUSIC_NAME,
    show_default=True,
    help="The family of the callbacks: music, lyrics, wav, stems, midi, video, cover, voice.",
)
@click.option(
    "--stage",
    "stages",
    multiple=True,
    help="A stage of the family to send (music: text, first, complete, failed; most others: "
    "complete, failed; voice also phrase); repeat for several, in order.  "
    "[default: music: text, first, complete; others: complete]",
)
@click.option(
    "--reseller",
    type=click.Choice(RESELLERS),
    default=RESELLERS[0],
    show_default=True,
    help="Whose spelling of the keys to send: sunoapi.org's or kie.ai's.",
)
@click.option("--task-id", help="The task id of the callbacks.  [default: a new one]")
@click.option(
    "--tracks",
    type=click.IntRange(0, 50),
    default=2,
    show_default=True,
    help="Results in a success: tracks of first and complete callbacks, lyrics, images.",
)
@click.option(
    "--code",
    type=int,
    help="The code of every callback; not 200 means failure.  [default: 200, 501 if failed]",
)
@click.option("--url", help="Post over HTTP to this URL instead of the app's own endpoint.")
@click.option(
    "--drop",
    multiple=True,
    metavar="STAGE",
    help="Do not send this stage at all, as a callback lost for good; repeat for several.",
)
@click.option(
    "--out-of-order",
    is_flag=True,
    help="Send the stages last first (complete before first), as a late retry arrives.",
)
@click.option(
    "--twice",
    is_flag=True,
    help="Post each callback twice at the same moment, from two threads: one is received, the "
    "other answered as a duplicate.",
)
@click.option(
    "--late",
    type=click.FloatRange(min=0),
    is_flag=False,
    flag_value=PAST_RETRY_WINDOW,
    metavar="[SECONDS]",
    help=f"Hold the callbacks this long before sending them; alone, {PAST_RETRY_WINDOW} s: past "
    f"the provider's last retry ({PROVIDER_RETRY_WINDOW // 60} minutes after its first try), "
    "when only reconciliation could have recovered the task.",
)
@click.option(
    "--unexpected",
    is_flag=True,
    help="Do not register the task first (music.expect), as for a task the host never submitted.",
)
def simulate_command(
    family: str,
    stages: tuple[str, ...],
    reseller: str,
    task_id: str | None,
    tracks: int,
    code: int | None,
    url: str | None,
    drop: tuple[str, ...],
    out_of_order: bool,
    twice: bool,
    late: float | None,
    unexpected: bool,
) -> None:
    """Send realistic callbacks, tokened and signed as the configuration requires.

    Without --url they go to the app's own endpoint in this process, through its real checks,
    deduplication and receivers, and the command returns once those (and the media copies) ran.
    A family other than music is sent to the callback URL that names it (family=F), as
    callback_url(family=F) gives it. The task is first registered with
    music.expect in this app's store, as a host does when it submits one (not with --unexpected).

    --drop, --out-of-order, --twice and --late deliver as the provider does on a bad day, and
    combine. Media links point at cdn.example.invalid, which never resolves, or under
    MUSICCALLBACK_SIMULATED_MEDIA_URL when the app serves stand-ins there. Prints each answer
    (both of --twice); exits 1 if any was refused.
    """
    app = _app()
    extension = get_state(app).extension
    try:
        kind = extension.families.named(family)
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="--family") from None
    if kind.example is None:
        raise click.BadParameter(
            f"the {family} family has no example bodies", param_hint="--family"
        )
    allowed = (*kind.stages, "error") if kind.name == MUSIC_NAME else kind.stages
    for stage in stages:
        if stage not in allowed:
            choices = ", ".join(allowed)
            raise click.BadParameter(f"{stage!r} is not one of {choices}", param_hint="--stage")
    stages = stages or default_stages(kind)
    for stage in drop:
        if stage not in stages:
            sent = ", ".join(stages)
            raise click.BadParameter(f"{stage!r} is not a stage sent ({sent})", param_hint="--drop")
    task_id = task_id or f"sim-{uuid.uuid4().hex[:16]}"
    if not unexpected:
        try:
            extension.expect(task_id, family=kind.name)
        except StoreError as exc:
            raise CommandError(f"the callback store is unreachable: {exc}") from None
    # As a host submits a task of another family: with a callback URL that names the family, the
    # one way its failures (which name no family) are read by it.
    query = {} if kind is extension.families.default else {FAMILY_ARG: family}
    send = _over_http(app, url, query) if url else _in_process(app, query)
    bad_day = BadDay(frozenset(drop), out_of_order, twice, late or 0.0)
    click.echo(f"Task {task_id} ({family}) -> {url or 'the app in-process'}")
    if out_of_order:
        click.echo(f"Out of order: {', '.join(bad_day.order(stages))}")
    if bad_day.late:
        click.echo(f"Holding the callbacks {bad_day.late:g} s before sending them...")

    media_base = get_state(app).settings.simulated_media_url

    def build(stage: str) -> dict[str, Any]:
        return build_callback(
            stage,
            family=kind,
            task_id=task_id,
            tracks=tracks,
            code=code,
            reseller=reseller,
            media_base=media_base,
        )

    refused = False
    for delivery in deliver_stages(stages, build, send, bad_day):
        click.echo(_delivered(delivery))
        refused |= any(status >= 400 for status, _ in delivery.answers)
    if not url:
        _wait_for_the_work(app)
    if refused:
        raise CommandError("the endpoint did not accept every callback")


def _wait_for_the_work(app: Flask) -> None:
    """Delivered in this process, the receivers and the media copies run in its threads, one
    handing work to the next after the answer (the write-back queues the copies): wait for all of
    it before the process ends, rather than leave it to the exit's drain of each pool."""
    extension = get_state(app).extension
    if extension.wait_idle(2.0, app=app):
        return
    click.echo("Waiting for the receivers and media copies to finish...")
    if not extension.wait_idle(IN_PROCESS_WAIT, app=app):
        click.echo(
            f"Still running after {IN_PROCESS_WAIT:g} s: what is left is taken over by the sweep, "
            "or by replay --pending."
        )


def _status_of(answer: str) -> object:
    """The ``status`` of an answer's JSON body, or ``None`` (a proxy's HTML page, say)."""
    try:
        body = json.loads(answer)
    except ValueError:
        return None
    return body.get("status") if isinstance(body, dict) else None


def _delivered(delivery: Delivery) -> str:
    """One line per stage: its answers, and what the bad day did to it."""
    if delivery.dropped:
        return f"{delivery.stage:<9} dropped (not sent)"
    answers = "; ".join(f"{status} {answer.strip()}" for status, answer in delivery.answers)
    line = f"{delivery.stage:<9} {answers}"
    if len(delivery.answers) > 1:
        line += f"  (sent {len(delivery.answers)} times at once)"
    if delivery.late:
        line += f"  (late by {delivery.late:g} s"
        if all(_status_of(answer) == "duplicate" for _, answer in delivery.answers):
            line += "; a duplicate: it, or a later stage, was dispatched before it came"
        line += ")"
    return line


def _describe(result: PollResult) -> str:
    from .dispatch import Outcome

    if result.event is None:
        return f"{result.status}: nothing to dispatch yet"
    what = f"{result.status}: {result.event.stage}"
    if result.outcome is Outcome.DUPLICATE:
        return f"{what} already dispatched (duplicate)"
    if result.outcome is Outcome.RETRY:
        return f"{what} receivers failed; polling again retries them"
    tracks = getattr(result.event, "tracks", None)  # the music family's events only
    return f"{what} dispatched" + ("" if tracks is None else f" ({len(tracks)} tracks)")


@musiccallback.command("poll")
@click.argument("task_id")
@click.option(
    "--family",
    default=MUSIC_NAME,
    show_default=True,
    help="The task's family, whose record endpoint is asked.",
)
@click.option("--watch", is_flag=True, help="Poll until the task ends, showing each new status.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5),
    default=30.0,
    show_default=True,
    help="Seconds between polls with --watch.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=3600.0,
    show_default=True,
    help="Seconds after which --watch gives up.",
)
def poll_command(task_id: str, family: str, watch: bool, interval: float, timeout: float) -> None:
    """Fetch TASK_ID from its family's record endpoint and dispatch what is new.

    Uses MUSICCALLBACK_API_KEY and MUSICCALLBACK_API_BASE_URL. Stages already delivered by a
    callback (or an earlier poll) are not dispatched again.
    """
    from .dispatch import Outcome
    from .poll import WatchTimeout, poll_task, pollable, watch_task
    from .provider import PollError

    app = _app()
    try:
        pollable(app, family)
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="--family") from None
    shown: list[tuple[str, bool]] = []

    def show(result: PollResult) -> None:
        """Print a status once, and again only if its receivers failed or recovered."""
        key = (result.status, result.outcome is Outcome.RETRY)
        if not shown or shown[-1] != key:
            click.echo(_describe(result))
            shown.append(key)

    def warn(error: PollError, delay: float) -> None:
        click.echo(f"Warning: {error}; trying again in {delay:g} s", err=True)

    try:
        if watch:
            watch_task(
                app,
                task_id,
                family=family,
                interval=interval,
                timeout=timeout,
                on_result=show,
                on_retry=warn,
            )
            return
        result = poll_task(app, task_id, family=family)
    except WatchTimeout as exc:
        raise PollTimeoutError(str(exc)) from None
    except PollError as exc:
        raise _provider_failure(exc) from None
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    except StoreUnavailable as exc:
        raise CommandError(f"the callback store is unreachable: {exc}") from None
    show(result)
    if result.outcome is Outcome.RETRY:
        raise CommandError("a receiver failed; see the log")


@musiccallback.command("submit")
@click.argument("path")
@click.option(
    "--json",
    "payload_text",
    required=True,
    metavar="JSON",
    help="The task's parameters, a JSON object; callBackUrl is added unless it is there.",
)
@click.option(
    "--family",
    help="The task's family.  [default: the one whose endpoints PATH is under]",
)
def submit_command(path: str, payload_text: str, family: str | None) -> None:
    """Submit a task to the provider's PATH, register it, and print its id.

    The callback URL (this app's, with its token and the task's family) is put in the payload.
    Uses MUSICCALLBACK_API_KEY and MUSICCALLBACK_API_BASE_URL; builds the callback URL outside a
    request, so MUSICCALLBACK_EXTERNAL_URL (or SERVER_NAME) must say where the app is.
    """
    from .provider import SubmitError
    from .submit import submit_task

    try:
        payload = json.loads(payload_text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--json")
    app = _app()
    try:
        task_id = submit_task(app, path, payload, family=family)
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="--family or PATH") from None
    except SubmitError as exc:
        raise _provider_failure(exc) from None
    except (ConfigurationError, RuntimeError) as exc:  # no API key; no address for the URL
        raise CommandError(str(exc)) from None
    click.echo(task_id)
    # A registration the store could not take waits in the write-back, which this process
    # takes with it when it exits: wait for it here, and say so if the store stays away.
    if not get_state(app).write_back.wait_idle(REGISTRATION_WAIT):
        raise CommandError(
            f"task {task_id} was created, but the callback store did not answer within "
            f"{REGISTRATION_WAIT:g} s to register it: call music.expect({task_id!r}, "
            f"family=...) once it is back"
        )


def _persistent_store() -> PersistentStore:
    """The app's store, or a clear refusal when it keeps nothing (exit status 1)."""
    try:
        return require_persistent(get_state(_app()).store)
    except StoreError as exc:
        raise CommandError(str(exc)) from None


@contextmanager
def _store_errors() -> Iterator[None]:
    """A store that cannot be reached is reported in one line, not a traceback."""
    try:
        yield
    except StoreError as exc:
        raise CommandError(f"The store is unavailable: {exc}") from None


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _shorten(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


@musiccallback.command("list")
@click.option(
    "--status", type=click.Choice(sorted(STATUS_STATES)), help="pending: accepted, not finished."
)
@click.option("--task-id", help="Only this task's deliveries.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def list_command(status: str | None, task_id: str | None, limit: int) -> None:
    """List kept deliveries, most recently changed first."""
    store = _persistent_store()
    with _store_errors():
        deliveries = store.list(status=status, task_id=task_id, limit=limit)
    if not deliveries:
        click.echo("No deliveries.")
        return
    rows = [("ID", "STATE", "TASK", "STAGE", "TRIES", "UPDATED (UTC)", "LAST ERROR")]
    rows += [
        (
            kept.id,
            str(kept.state),
            kept.task_id,
            kept.stage,
            str(kept.attempts),
            _when(kept.updated_at),
            _shorten(kept.last_error, 50),
        )
        for kept in deliveries
    ]
    _table(rows)


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Rows in columns as wide as their widest cell; the last column as it is."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo(indent + "  ".join([*cells, row[-1]]))


def _per_process_note(store: Store) -> None:
    """Say, once per command, that the memory store's tasks are this process's only."""
    if store.in_process:
        click.echo(
            "Note: the memory store is per process; this command sees only the tasks of its own "
            "process, not those of the web processes.",
            err=True,
        )


@musiccallback.command("show")
@click.argument("delivery_id", metavar="ID")
def show_command(delivery_id: str) -> None:
    """Show one delivery (state, attempts, last error, headers and raw payload), or, for a task
    id, the task (its family, state, stages, polls) and its kept deliveries."""
    store = get_state(_app()).store
    with _store_errors():
        kept = store.get(delivery_id) if isinstance(store, PersistentStore) else None
        task = None if kept is not None else store.task(delivery_id)
    if kept is not None:
        _show_delivery(kept)
        return
    if task is None:
        if not store.persistent:
            raise CommandError(
                f"No task {delivery_id!r} in this process's memory store; deliveries: "
                + _refusal(store)
            )
        raise CommandError(
            f"No delivery {delivery_id!r} (nor a task of that id); `list` shows the ids, "
            "`tasks` the tasks."
        )
    _show_task(store, task)


def _refusal(store: Store) -> str:
    try:
        require_persistent(store)
    except StoreError as exc:
        return str(exc)
    return ""


def _echo_fields(fields: list[tuple[str, str]]) -> None:
    """``name: value`` lines, the values lined up."""
    for name, value in fields:
        click.echo(f"{name + ':':<13}{value}")


def _show_task(store: Store, task: TaskRecord) -> None:
    overdue = f" (overdue since {_when(task.overdue_at)})" if task.overdue_at else ""
    fields = [
        ("task", task.task_id),
        ("family", task.family),
        ("state", str(task.state) + (overdue if task.state is TaskState.OPEN else "")),
        ("expected", _when(task.expected_at)),
        ("updated", _when(task.updated_at)),
        ("polls", str(task.polls)),
        ("overdue", _when(task.overdue_at)),
        ("next poll", _when(task.next_poll_at)),
    ]
    _echo_fields(fields)
    click.echo("stages:" + ("" if task.stages else " none yet"))
    rows = [
        (stage, _when(at), f"by {task.sources.get(stage, VIA_CALLBACK)}")
        for stage, at in sorted(task.stages.items(), key=lambda item: item[1])
    ]
    if rows:
        _table(rows, indent="  ")
    if not isinstance(store, PersistentStore):
        return
    with _store_errors():
        deliveries = store.list(task_id=task.task_id, limit=None)
    click.echo("deliveries:" + ("" if deliveries else " none kept"))
    if deliveries:
        kept_rows = [("ID", "STATE", "STAGE", "TRIES", "UPDATED (UTC)")]
        kept_rows += [
            (kept.id, str(kept.state), kept.stage, str(kept.attempts), _when(kept.updated_at))
            for kept in deliveries
        ]
        _table(kept_rows, indent="  ")


def _show_delivery(kept: KeptDelivery) -> None:
    fields = [
        ("id", kept.id),
        ("task", kept.task_id),
        ("stage", kept.stage),
        ("state", str(kept.state) + (" (released for a redelivery)" if kept.released else "")),
        ("attempts", str(kept.attempts)),
        ("last error", kept.last_error or "-"),
        ("owner", kept.owner or "-"),
        ("lease until", _when(kept.lease_expires_at)),
        ("received", _when(kept.received_at)),
        ("created", _when(kept.created_at)),
        ("updated", _when(kept.updated_at)),
    ]
    _echo_fields(fields)
    click.echo("headers:")
    for name, value in kept.headers.items():
        click.echo(f"  {name}: {value}")
    click.echo("payload:")
    click.echo(json.dumps(kept.payload, indent=2, ensure_ascii=False))


@musiccallback.command("tasks")
@click.option("--state", type=click.Choice([str(state) for state in TaskState]))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def tasks_command(state: str | None, limit: int) -> None:
    """List tasks, the most recently heard of first: expected by the host or created by their
    first callback, with the stages seen (a stage that came by poll says so) and the polls made.

    Works on every store; the memory store's tasks are those of this process only.
    """
    store = get_state(_app()).store
    _per_process_note(store)
    with _store_errors():
        tasks = store.tasks(state=state, limit=limit)
    if not tasks:
        click.echo("No tasks.")
        return
    rows = [("TASK", "FAMILY", "STATE", "POLLS", "EXPECTED (UTC)", "UPDATED (UTC)", "STAGES")]
    rows += [
        (
            task.task_id,
            task.family,
            str(task.state) + (" (overdue)" if task.overdue_at else ""),
            str(task.polls),
            _when(task.expected_at),
            _when(task.updated_at),
            _stages(task),
        )
        for task in tasks
    ]
    _table(rows)


def _stages(task: TaskRecord) -> str:
    """A task's stages in the order they came, each marked when a poll brought it."""
    ordered = sorted(task.stages.items(), key=lambda item: item[1])
    return (
        ", ".join(
            stage + (" (poll)" if task.sources.get(stage) == VIA_POLL else "")
            for stage, _ in ordered
        )
        or "-"
    )


@musiccallback.command("reconcile")
@click.option(
    "--dry-run", is_flag=True, help="Say what a run would do; claim, poll, send and change nothing."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="The most tasks to look at, the longest silent first.",
)
def reconcile_command(dry_run: bool, limit: int | None) -> None:
    """Poll the open tasks silent past MUSICCALLBACK_RECONCILE_AFTER, and give up on those open
    past MUSICCALLBACK_RECONCILE_GIVE_UP (lost); one line per task. For cron, every minute or so.

    What a poll finds is dispatched through the callbacks' deduplication. Without
    MUSICCALLBACK_API_KEY nothing is polled, but tasks are still found overdue and lost. Exits 4
    when the provider's trouble stopped the run early, 1 when it could not run.
    """
    from .reconcile import reconcile

    app = _app()
    _per_process_note(get_state(app).store)
    with _store_errors():
        run = reconcile(app, dry_run=dry_run, limit=limit)
    for task in run.tasks:
        click.echo(task.describe(dry_run=dry_run))
    if run.stopped is not None:
        raise (ProviderUnavailableError if run.tasks else CommandError)(run.stopped)
    if not run.tasks:
        click.echo("No task is overdue.")


@musiccallback.command("replay")
@click.argument("delivery_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every failed delivery.")
@click.option(
    "--pending",
    is_flag=True,
    help="Every delivery accepted and never finished whose claim is free (lease run out, or "
    "its process gone).",
)
@click.option(
    "--older-than",
    "seconds",
    type=click.FloatRange(min=0),
    help="With --failed or --pending: only deliveries unchanged for this many seconds (for cron).",
)
@click.option(
    "--unreadable",
    is_flag=True,
    help="Every body kept because no family read it, read again with the families installed now.",
)
@click.option("--force", is_flag=True, help="Take finished deliveries and live claims too.")
def replay_command(
    delivery_ids: tuple[str, ...],
    failed: bool,
    pending: bool,
    unreadable: bool,
    seconds: float | None,
    force: bool,
) -> None:
    """Dispatch kept deliveries again through the same signals, as the app dispatches callbacks.

    Under sync dispatch the receivers run here; under thread dispatch in this process's pool,
    with its retries, and the command waits for them; under celery dispatch the deliveries are
    published to the workers ("queued"). Exits with status 1 when any delivery was not found,
    could not be dispatched, or failed again.
    """
    if not (delivery_ids or failed or pending or unreadable):
        raise click.UsageError(
            "Name deliveries by ID, or give --failed, --pending or --unreadable."
        )
    _persistent_store()
    older_than = None if seconds is None else timedelta(seconds=seconds)
    with _store_errors():
        results = replay(
            _app(),
            delivery_ids,
            failed=failed,
            pending=pending,
            unreadable=unreadable,
            force=force,
            older_than=older_than,
            wait=True,
        )
    if not results:
        click.echo("Nothing to replay.")
    for result in results:
        click.echo(f"{result.delivery_id}: {result.result.value} ({result.detail})")
    if any(result.result in _REPLAY_FAILURES for result in results):
        sys.exit(1)


#: Results that make ``replay`` exit 1. A body still unreadable is not one: it stays kept, and
#: ``replay --unreadable`` in a cron job must not fail for each body no family reads yet.
_REPLAY_FAILURES = (Replayed.FAILED, Replayed.NOT_FOUND, Replayed.INVALID)


@musiccallback.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    help="Days since a delivery last changed; default: MUSICCALLBACK_DEDUP_TTL.",
)
def prune_command(days: float | None) -> None:
    """Delete kept deliveries past retention (claims still held are kept)."""
    store = _persistent_store()
    age = timedelta(seconds=store.ttl) if days is None else timedelta(days=days)
    with _store_errors():
        deleted = store.prune(age)
    click.echo(f"Deleted {deleted} deliveries unchanged for {age}.")


@musiccallback.command("doctor")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds the broker and the provider are given to answer (the store has its own).",
)
def doctor_command(timeout: float) -> None:
    """Check that this configuration can receive callbacks: the settings, the store (its round
    trip, its table or keyspace), the Celery broker under celery dispatch, the API key with the
    provider, the callback URL (absolute, https), the archive (writable).

    One line per check: ok, warn, fail or skip (not configured). Exits 1 when any check fails.
    """
    from .doctor import Status, run_checks

    checks = run_checks(_app(), timeout)
    for check in checks:
        click.echo(check.line())
    if any(check.status is Status.FAIL for check in checks):
        sys.exit(1)


@musiccallback.command("openapi")
@click.option("--indent", type=int, default=2, show_default=True, help="JSON indentation.")
def openapi_command(indent: int) -> None:
    """Print the OpenAPI document of the callback endpoint, generated from its schemas."""
    state = get_state(_app())
    click.echo(json.dumps(state.extension.openapi(), indent=indent or None))
