"""The provider's bad days on the command line: ``simulate --drop / --out-of-order / --twice /
--late``, each against a real app in-process and over HTTP to a live server, and the scheduling
of :mod:`flask_musiccallback.simulate` they are built on."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_musiccallback.simulate import (
    PAST_RETRY_WINDOW,
    Answer,
    BadDay,
    deliver_stages,
    send_concurrently,
)
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import record_signals

from .conftest import AppFactory
from .fake_provider import FakeProvider
from .servers import serve_url

API_KEY = "provider-api-key"

Recorded = list[tuple[str, dict[str, Any]]]

#: The stage signals of a music task, by stage.
STAGE_SIGNALS = {
    "text": "text_generated",
    "first": "first_track_generated",
    "complete": "all_tracks_generated",
}

#: ``simulate`` arguments that drop every stage of a music task.
NOTHING_SENT = ("--drop", "text", "--drop", "first", "--drop", "complete")


@pytest.fixture(params=["in-process", "over-http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def simulating(app: Flask, transport: str) -> Iterator[list[str]]:
    """The arguments that make ``simulate`` reach ``app`` by ``transport``; over HTTP, the app is
    served on 127.0.0.1 until the block ends."""
    if transport == "in-process":
        yield []
        return
    with serve_url(app) as base:
        yield ["--url", f"{base}/music-callback"]


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["musiccallback", *args])


def stage_signals(recorded: Recorded) -> list[str]:
    return [name for name, _ in recorded if name in STAGE_SIGNALS.values()]


def answers(result: Result, stage: str) -> list[str]:
    """The statuses of the answers printed for ``stage`` (two for ``--twice``)."""
    (line,) = [line for line in result.output.splitlines() if line.split()[:1] == [stage]]
    return [json.loads(body)["status"] for body in re.findall(r"\{[^}]*\}", line)]


def line_of(result: Result, stage: str) -> str:
    (line,) = [line for line in result.output.splitlines() if line.split()[:1] == [stage]]
    return line


# --drop


def test_a_dropped_stage_is_never_sent(make_app: AppFactory, transport: str) -> None:
    app = make_app()
    with simulating(app, transport) as via, record_signals(app) as recorded:
        result = run(app, "simulate", "--task-id", "t1", "--drop", "first", *via)

    assert result.exit_code == 0, result.output
    assert line_of(result, "first") == "first     dropped (not sent)"
    assert answers(result, "text") == answers(result, "complete") == ["received"]
    assert stage_signals(recorded) == ["text_generated", "all_tracks_generated"]


def test_every_stage_dropped_sends_nothing(make_app: AppFactory, transport: str) -> None:
    app = make_app()
    with simulating(app, transport) as via, record_signals(app) as recorded:
        result = run(app, "simulate", *NOTHING_SENT, *via)

    assert result.exit_code == 0, result.output
    assert result.output.count("dropped (not sent)") == 3
    assert recorded == []


def test_dropping_a_stage_that_is_not_sent_is_refused(make_app: AppFactory) -> None:
    result = run(make_app(), "simulate", "--stage", "complete", "--drop", "first")

    assert result.exit_code == 2
    assert "'first' is not a stage sent (complete)" in result.output


# --out-of-order


def test_out_of_order_sends_complete_first_and_the_earlier_stages_are_stale(
    make_app: AppFactory, transport: str
) -> None:
    app = make_app()
    with simulating(app, transport) as via, record_signals(app) as recorded:
        result = run(app, "simulate", "--task-id", "t1", "--out-of-order", *via)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == "Out of order: complete, first, text"
    assert [line.split()[0] for line in lines[2:]] == ["complete", "first", "text"]
    assert answers(result, "complete") == ["received"]
    assert answers(result, "first") == answers(result, "text") == ["duplicate"]
    assert stage_signals(recorded) == ["all_tracks_generated"]


# --twice


@pytest.mark.parametrize("check", [{}, {"HMAC_KEY": "hmac-key"}], ids=["token", "token+hmac"])
def test_twice_at_once_is_received_once_and_answered_duplicate_once(
    make_app: AppFactory, transport: str, check: dict[str, str]
) -> None:
    app = make_app(**check)
    with simulating(app, transport) as via, record_signals(app) as recorded:
        result = run(app, "simulate", "--task-id", "t1", "--twice", *via)

    assert result.exit_code == 0, result.output
    for stage in ("text", "first", "complete"):
        assert sorted(answers(result, stage)) == ["duplicate", "received"], result.output
        assert line_of(result, stage).endswith("(sent 2 times at once)")
    assert stage_signals(recorded) == [
        "text_generated",
        "first_track_generated",
        "all_tracks_generated",
    ]


def test_twice_posts_the_copies_at_the_same_moment() -> None:
    """Each copy waits at a barrier for the other: sent one after the other, they would never
    meet (the barrier breaks after its timeout, which only a serial sender reaches)."""
    meet = threading.Barrier(2, timeout=30)
    bodies: list[Mapping[str, Any]] = []

    def send(body: Mapping[str, Any]) -> Answer:
        bodies.append(body)
        meet.wait()
        return 200, "{}"

    body = {"data": {"task_id": "t1"}}
    assert send_concurrently(send, body) == ((200, "{}"), (200, "{}"))
    assert bodies == [body, body]


# --late


@pytest.fixture
def polling_app(make_app: AppFactory, provider: FakeProvider) -> Flask:
    return make_app(API_KEY=API_KEY, API_BASE_URL=provider.url)


def test_late_callbacks_of_a_task_already_recovered_by_a_poll_are_duplicates(
    polling_app: Flask, provider: FakeProvider, transport: str
) -> None:
    """What reconciliation does for a host: the provider's record is polled while the callback
    is late, so the stage is dispatched once, and the callback that comes after is a duplicate."""
    provider.statuses("t1", "SUCCESS")
    with record_signals(polling_app) as recorded:
        assert run(polling_app, "poll", "t1").exit_code == 0
        with simulating(polling_app, transport) as via:
            started = time.monotonic()
            late = ["--task-id", "t1", "--stage", "complete", "--late", "0.2"]
            result = run(polling_app, "simulate", *late, *via)
            waited = time.monotonic() - started

    assert result.exit_code == 0, result.output
    assert "Holding the callbacks 0.2 s before sending them..." in result.output
    assert answers(result, "complete") == ["duplicate"]
    assert line_of(result, "complete").endswith(
        "(late by 0.2 s; a duplicate: it, or a later stage, was dispatched before it came)"
    )
    assert stage_signals(recorded) == ["all_tracks_generated"]
    assert waited >= 0.2


def test_late_callbacks_of_a_task_nothing_recovered_are_received(
    make_app: AppFactory, transport: str
) -> None:
    app = make_app()
    with simulating(app, transport) as via, record_signals(app) as recorded:
        result = run(app, "simulate", "--task-id", "t1", "--late", "0.1", *via)

    assert result.exit_code == 0, result.output
    assert all(answers(result, stage) == ["received"] for stage in STAGE_SIGNALS)
    assert line_of(result, "text").endswith("(late by 0.1 s)")
    assert len(stage_signals(recorded)) == 3


def test_late_alone_waits_past_the_providers_retries(make_app: AppFactory) -> None:
    """Nothing sent, so nothing waited for: only the announced delay is read."""
    result = run(make_app(), "simulate", "--stage", "complete", "--drop", "complete", "--late")

    assert result.exit_code == 0, result.output
    assert PAST_RETRY_WINDOW > 21 * 60
    assert f"Holding the callbacks {PAST_RETRY_WINDOW} s before sending them..." in result.output


# the task, as the host submitted it


def test_simulate_registers_the_task_as_a_host_submits_it(make_app: AppFactory) -> None:
    app = make_app()

    result = run(app, "simulate", "--task-id", "t1", "--family", "lyrics", "--drop", "complete")

    assert result.exit_code == 0, result.output
    task = get_state(app).store.task("t1")
    assert task is not None
    assert (task.family, str(task.state), task.expected_at is not None) == ("lyrics", "open", True)


def test_simulate_unexpected_registers_nothing(make_app: AppFactory) -> None:
    app = make_app()

    run(app, "simulate", "--task-id", "t1", "--unexpected", *NOTHING_SENT)

    assert get_state(app).store.task("t1") is None


# combined


def test_bad_days_combine(make_app: AppFactory, transport: str) -> None:
    app = make_app()
    args = ["--task-id", "t1", "--drop", "text", "--out-of-order", "--twice", "--late", "0.05"]
    with simulating(app, transport) as via, record_signals(app) as recorded:
        result = run(app, "simulate", *args, *via)

    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[3:]] == [
        "complete",
        "first",
        "text",
    ]
    assert sorted(answers(result, "complete")) == ["duplicate", "received"]
    assert answers(result, "first") == ["duplicate", "duplicate"]
    assert line_of(result, "text") == "text      dropped (not sent)"
    assert stage_signals(recorded) == ["all_tracks_generated"]


def test_the_schedule_waits_once_before_the_first_stage_sent() -> None:
    waits: list[float] = []
    sent: list[str] = []

    def send(body: Mapping[str, Any]) -> Answer:
        (stage,) = body
        sent.append(stage)
        return 200, '{"status":"received"}'

    bad_day = BadDay(drop=frozenset({"complete"}), out_of_order=True, late=30.0)
    stages = ("text", "first", "complete")
    deliveries = list(
        deliver_stages(stages, lambda stage: {stage: 1}, send, bad_day, wait=waits.append)
    )

    assert waits == [30.0]
    assert sent == ["first", "text"]
    assert [(d.stage, d.dropped, d.late) for d in deliveries] == [
        ("complete", True, 0.0),
        ("first", False, 30.0),
        ("text", False, 30.0),
    ]
