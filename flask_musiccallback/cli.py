"""The ``flask musiccallback`` command group.

Registered on ``app.cli`` by ``init_app`` (so ``app.test_cli_runner()`` sees it) and through the
``flask.commands`` entry point (so ``flask --help`` lists it in any app that installs the package).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from .replay import Replayed, replay
from .state import get_state
from .stores.base import STATUS_STATES, PersistentStore, StoreError, require_persistent


@click.group("musiccallback", cls=AppGroup)
def musiccallback() -> None:
    """Receive, inspect and replay the music generation API's callbacks."""


@musiccallback.command("url")
def url_command() -> None:
    """Print the URL to pass as callBackUrl (token included)."""
    state = get_state(current_app)
    click.echo(state.extension.callback_url())


def _persistent_store() -> PersistentStore:
    """The app's store, or a clear refusal when it keeps nothing (exit status 1)."""
    try:
        return require_persistent(get_state(current_app).store)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def _store_errors() -> Iterator[None]:
    """A store that cannot be reached is reported in one line, not a traceback."""
    try:
        yield
    except StoreError as exc:
        raise click.ClickException(f"The store is unavailable: {exc}") from None


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
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


@musiccallback.command("show")
@click.argument("delivery_id")
def show_command(delivery_id: str) -> None:
    """Show one delivery: state, attempts, last error, headers and raw payload."""
    store = _persistent_store()
    with _store_errors():
        kept = store.get(delivery_id)
    if kept is None:
        raise click.ClickException(f"No delivery {delivery_id!r}; `list` shows the ids.")
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
    for name, value in fields:
        click.echo(f"{name + ':':<13}{value}")
    click.echo("headers:")
    for name, value in kept.headers.items():
        click.echo(f"  {name}: {value}")
    click.echo("payload:")
    click.echo(json.dumps(kept.payload, indent=2, ensure_ascii=False))


@musiccallback.command("replay")
@click.argument("delivery_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every failed delivery.")
@click.option(
    "--pending",
    is_flag=True,
    help="Every delivery accepted and never finished whose claim is free (lease run out, or "
    "its process gone).",
)
@click.option("--force", is_flag=True, help="Take finished deliveries and live claims too.")
def replay_command(delivery_ids: tuple[str, ...], failed: bool, pending: bool, force: bool) -> None:
    """Dispatch kept deliveries again through the same signals.

    Exits with status 1 when any delivery was not found or failed again.
    """
    if not (delivery_ids or failed or pending):
        raise click.UsageError("Name deliveries by ID, or give --failed or --pending.")
    _persistent_store()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with _store_errors():
        results = replay(app, delivery_ids, failed=failed, pending=pending, force=force)
    if not results:
        click.echo("Nothing to replay.")
    for result in results:
        click.echo(f"{result.delivery_id}: {result.result.value} ({result.detail})")
    if any(result.result in _REPLAY_FAILURES for result in results):
        sys.exit(1)


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
