"""The ``flask musiccallback`` command group.

Registered on ``app.cli`` by ``init_app`` (so ``app.test_cli_runner()`` sees it) and through the
``flask.commands`` entry point (so ``flask --help`` lists it in any app that installs the package).

Exit codes of ``poll``: 0 done, 1 an error of configuration, store or answer, 3 the provider
refused the API key, 4 the provider stayed busy or unreachable (rate limits, maintenance, server or
network errors), 5 ``--watch`` ran out of time before the task ended.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .config import ConfigurationError
from .state import get_state
from .stores.base import StoreUnavailable

if TYPE_CHECKING:
    from .poll import PollResult

#: The stages ``simulate`` sends when none is named: a task's usual life.
DEFAULT_STAGES = ("text", "first", "complete")

#: Exit codes of ``poll``; see the module docstring.
EXIT_UNAUTHORIZED = 3
EXIT_UNAVAILABLE = 4
EXIT_TIMEOUT = 5

#: (status code, body) of one answer of the endpoint.
Answer = tuple[int, str]


class CommandError(click.ClickException):
    """A failure reported as ``Error: ...`` with its own exit code, never a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def _in_process(app: Flask) -> Callable[[Mapping[str, Any]], Answer]:
    """Posts to the app's own endpoint through its test client: the real checks and dedup path."""
    from .testing import CallbackClient

    client = CallbackClient(app)

    def send(payload: Mapping[str, Any]) -> Answer:
        response = client.deliver(payload)
        return response.status_code, response.get_data(as_text=True)

    return send


def _over_http(app: Flask, url: str) -> Callable[[Mapping[str, Any]], Answer]:
    """Posts to ``url`` as the provider would, adding the token unless the URL carries one."""
    import httpx

    from .testing import callback_credentials

    has_token = "token" in httpx.URL(url).params

    def send(payload: Mapping[str, Any]) -> Answer:
        credentials = callback_credentials(app, payload)
        params = {} if has_token else dict(credentials.query)
        try:
            response = httpx.post(
                url, params=params, json=payload, headers=dict(credentials.headers), timeout=15.0
            )
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot deliver to {url}: {exc}") from None
        return response.status_code, response.text

    return send


@musiccallback.command("simulate")
@click.option(
    "--stage",
    "stages",
    multiple=True,
    type=click.Choice(["text", "first", "complete", "failed", "error"]),
    help="A stage to send; repeat for several, in order.  [default: text, first, complete]",
)
@click.option("--task-id", help="The task id of the callbacks.  [default: a new one]")
@click.option(
    "--tracks",
    type=click.IntRange(0, 50),
    default=2,
    show_default=True,
    help="Tracks in first and complete callbacks.",
)
@click.option(
    "--code",
    type=int,
    help="The code of every callback; not 200 means failure.  [default: 200, 501 if failed]",
)
@click.option("--url", help="Post over HTTP to this URL instead of the app's own endpoint.")
def simulate_command(
    stages: tuple[str, ...], task_id: str | None, tracks: int, code: int | None, url: str | None
) -> None:
    """Send realistic callbacks, tokened and signed as the configuration requires.

    Without --url they go to the app's own endpoint in this process, through its real checks,
    deduplication and receivers. Prints each answer; exits 1 if any was refused.
    """
    from .testing import build_callback

    app = _app()
    task_id = task_id or f"sim-{uuid.uuid4().hex[:16]}"
    send = _over_http(app, url) if url else _in_process(app)
    click.echo(f"Task {task_id} -> {url or 'the app in-process'}")
    refused = False
    for stage in stages or DEFAULT_STAGES:
        status, body = send(build_callback(stage, task_id=task_id, tracks=tracks, code=code))
        click.echo(f"{stage:<9} {status} {body.strip()}")
        refused |= status >= 400
    if refused:
        raise CommandError("the endpoint did not accept every callback")


def _describe(result: PollResult) -> str:
    from .dispatch import Outcome

    if result.event is None:
        return f"{result.status}: nothing to dispatch yet"
    what = f"{result.status}: {result.event.stage}"
    if result.outcome is Outcome.DUPLICATE:
        return f"{what} already dispatched (duplicate)"
    if result.outcome is Outcome.RETRY:
        return f"{what} receivers failed; polling again retries them"
    return f"{what} dispatched ({len(result.event.tracks)} tracks)"


@musiccallback.command("poll")
@click.argument("task_id")
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
def poll_command(task_id: str, watch: bool, interval: float, timeout: float) -> None:
    """Fetch TASK_ID from the provider's record-info endpoint and dispatch what is new.

    Uses MUSICCALLBACK_API_KEY and MUSICCALLBACK_API_BASE_URL. Stages already delivered by a
    callback (or an earlier poll) are not dispatched again.
    """
    from .dispatch import Outcome
    from .poll import PollError, WatchTimeout, poll_task, watch_task

    app = _app()
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
                app, task_id, interval=interval, timeout=timeout, on_result=show, on_retry=warn
            )
            return
        result = poll_task(app, task_id)
    except WatchTimeout as exc:
        raise CommandError(str(exc), EXIT_TIMEOUT) from None
    except PollError as exc:
        if exc.code in (401, 403):
            raise CommandError(str(exc), EXIT_UNAUTHORIZED) from None
        raise CommandError(str(exc), EXIT_UNAVAILABLE if exc.retryable else 1) from None
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    except StoreUnavailable as exc:
        raise CommandError(f"the callback store is unreachable: {exc}") from None
    show(result)
    if result.outcome is Outcome.RETRY:
        raise CommandError("a receiver failed; see the log")
