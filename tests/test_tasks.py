"""The task view (API.md section 10): every new delivery, callback or poll, notes its stage on its
task; ``music.task``, ``flask musiccallback tasks`` and ``show`` read it; on every store."""

from __future__ import annotations

import threading

import pytest
from click.testing import Result
from flask import Flask

from flask_musiccallback import TaskRecord, TaskState, all_tracks_generated
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import CallbackClient, record_signals

from .backends import StoreApp
from .conftest import AppFactory
from .fake_provider import FakeProvider

API_KEY = "provider-api-key"


@pytest.fixture
def app(store_app: StoreApp, provider: FakeProvider) -> Flask:
    return store_app(API_KEY=API_KEY, API_BASE_URL=provider.url, RECONCILE_AFTER=0)


def task(app: Flask, task_id: str) -> TaskRecord | None:
    music = get_state(app).extension
    music.wait_idle(10, app=app)
    with app.app_context():
        return music.task(task_id)


def opened(app: Flask, task_id: str) -> TaskRecord:
    record = task(app, task_id)
    assert record is not None
    return record


def run(app: Flask, *args: str) -> Result:
    get_state(app).extension.wait_idle(10, app=app)
    return app.test_cli_runner().invoke(args=["musiccallback", *args])


def test_a_task_never_expected_nor_heard_of_is_none(app: Flask) -> None:
    assert task(app, "nobody") is None


def test_the_first_callback_of_an_unknown_task_creates_it_open(app: Flask) -> None:
    CallbackClient(app).deliver("text", task_id="t1")

    created = opened(app, "t1")

    assert (created.family, created.state, created.expected_at) == ("music", TaskState.OPEN, None)
    assert list(created.stages) == ["text"]
    assert created.sources == {"text": "callback"}


@pytest.mark.parametrize(
    ("family", "stage", "state"),
    [
        ("music", "text", TaskState.OPEN),
        ("music", "first", TaskState.OPEN),
        ("music", "complete", TaskState.COMPLETE),
        ("music", "failed", TaskState.FAILED),
        ("voice", "phrase", TaskState.OPEN),
        ("voice", "complete", TaskState.COMPLETE),
        ("lyrics", "complete", TaskState.COMPLETE),
        ("wav", "failed", TaskState.FAILED),
    ],
)
def test_a_stage_settles_its_task_unless_the_family_goes_on_after_it(
    app: Flask, family: str, stage: str, state: TaskState
) -> None:
    CallbackClient(app).deliver(stage, family=family, task_id="t1", family_in_url=True)

    settled = opened(app, "t1")

    assert (settled.family, settled.state) == (family, state)


def test_out_of_order_and_duplicate_deliveries_keep_each_stage_with_its_first_time(
    app: Flask,
) -> None:
    client = CallbackClient(app)
    with record_signals(app) as recorded:
        client.deliver("first", task_id="t1")
        client.deliver("text", task_id="t1")
        client.deliver("first", task_id="t1")
        client.deliver("complete", task_id="t1")
        client.deliver("complete", task_id="t1")
        client.deliver("text", task_id="t1")
    received = {
        kwargs["event"].stage: kwargs["event"].received_at
        for name, kwargs in recorded
        if name == "callback_received"
    }

    view = opened(app, "t1")

    assert view.state is TaskState.COMPLETE
    assert dict(view.stages) == received, "each stage at the time of its first delivery"
    assert set(view.stages) == {"text", "first", "complete"}
    assert view.stages["first"] < view.stages["text"] < view.stages["complete"]
    assert set(view.sources.values()) == {"callback"}


def test_an_expected_task_keeps_its_family_and_when_it_was_expected(app: Flask) -> None:
    with app.app_context():
        get_state(app).extension.expect("t1", family="lyrics")
    CallbackClient(app).deliver("complete", family="lyrics", task_id="t1")

    view = opened(app, "t1")

    assert (view.family, view.state) == ("lyrics", TaskState.COMPLETE)
    assert view.expected_at is not None
    assert view.expected_at <= view.stages["complete"]


def test_a_polled_stage_says_it_came_by_poll(app: Flask, provider: FakeProvider) -> None:
    CallbackClient(app).deliver("text", task_id="t1")
    provider.statuses("t1", "SUCCESS")
    with app.app_context():
        get_state(app).extension.poll("t1")

    view = opened(app, "t1")

    assert view.sources == {"text": "callback", "complete": "poll"}
    assert view.state is TaskState.COMPLETE


def test_concurrent_duplicates_record_the_stage_once(app: Flask) -> None:
    gate = threading.Barrier(4)
    client = CallbackClient(app)

    def deliver() -> None:
        gate.wait(10)
        client.deliver("complete", task_id="t1")

    with all_tracks_generated.connected_to(lambda sender, event: None, sender=app):
        threads = [threading.Thread(target=deliver) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

    assert list(opened(app, "t1").stages) == ["complete"]


def test_the_tasks_command_lists_tasks_by_state(app: Flask) -> None:
    client = CallbackClient(app)
    client.deliver("text", task_id="open-1")
    client.deliver("complete", task_id="done-1")
    client.deliver("failed", task_id="failed-1")

    every = run(app, "tasks")
    complete = run(app, "tasks", "--state", "complete")
    limited = run(app, "tasks", "--limit", "1")

    assert every.exit_code == 0, every.output
    lines = every.stdout.splitlines()
    assert lines[0].split()[:3] == ["TASK", "FAMILY", "STATE"]
    assert {line.split()[0]: line.split()[2] for line in lines[1:]} == {
        "open-1": "open",
        "done-1": "complete",
        "failed-1": "failed",
    }
    assert [line.split()[0] for line in complete.stdout.splitlines()[1:]] == ["done-1"]
    assert len(limited.stdout.splitlines()) == 2


def test_the_tasks_command_says_the_memory_store_is_per_process(make_app: AppFactory) -> None:
    app = make_app()
    CallbackClient(app).deliver("complete", task_id="t1")

    result = run(app, "tasks")

    assert result.exit_code == 0
    assert "per process" in result.stderr
    assert "t1" in result.stdout


def test_show_of_a_task_id_prints_its_stages_and_how_each_came(
    app: Flask, provider: FakeProvider
) -> None:
    CallbackClient(app).deliver("text", task_id="t1")
    provider.statuses("t1", "SUCCESS")
    with app.app_context():
        get_state(app).extension.poll("t1")

    shown = run(app, "show", "t1")

    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "task:        t1\n" in out
    assert "family:      music\n" in out
    assert "state:       complete\n" in out
    stages = out.split("stages:")[1].split("deliveries:")[0].splitlines()[1:]
    assert [(line.split()[0], line.split()[-1]) for line in stages] == [
        ("text", "callback"),
        ("complete", "poll"),
    ]
    if get_state(app).store.persistent:
        deliveries = out.split("deliveries:")[1].splitlines()[2:]
        assert sorted(line.split()[2] for line in deliveries) == ["complete", "text"]


def test_show_of_an_overdue_task_says_so(app: Flask, provider: FakeProvider) -> None:
    provider.statuses("t1", "PENDING")
    with app.app_context():
        get_state(app).extension.expect("t1")
    run(app, "reconcile")

    out = run(app, "show", "t1").stdout

    assert "state:       open (overdue since " in out
    assert "polls:       1\n" in out
    assert "stages: none yet" in out


def test_show_of_an_unknown_id_exits_1(app: Flask) -> None:
    result = run(app, "show", "nothing-by-this-id")
    assert result.exit_code == 1
    assert "nothing-by-this-id" in result.output


def test_the_reconcile_command_prints_a_line_per_task(app: Flask, provider: FakeProvider) -> None:
    provider.statuses("t1", "SUCCESS")
    with app.app_context():
        get_state(app).extension.expect("t1")

    dry = run(app, "reconcile", "--dry-run")
    real = run(app, "reconcile")
    nothing = run(app, "reconcile")

    assert dry.exit_code == 0, dry.output
    assert "t1 (music): would be polled" in dry.stdout
    assert real.exit_code == 0, real.output
    assert "t1 (music): polled; status SUCCESS (complete, received); task_overdue sent" in (
        real.stdout
    )
    assert nothing.stdout.strip().endswith("No task is overdue.")
    assert len(provider.requests) == 1


def test_the_reconcile_command_exits_4_when_the_provider_stopped_the_run(
    app: Flask, provider: FakeProvider
) -> None:
    from .fake_provider import Answer

    provider.script("t1", Answer(455, {"code": 455, "msg": "maintenance"}))
    with app.app_context():
        get_state(app).extension.expect("t1")

    result = run(app, "reconcile")

    assert result.exit_code == 4
    assert "t1 (music): polled;" in result.stdout
    assert "maintenance" in result.output


def test_the_reconcile_command_with_limit_looks_at_that_many(
    app: Flask, provider: FakeProvider
) -> None:
    with app.app_context():
        for task_id in ("t1", "t2", "t3"):
            get_state(app).extension.expect(task_id)
            provider.statuses(task_id, "PENDING")

    result = run(app, "reconcile", "--limit", "2")

    assert len(result.stdout.splitlines()) == 2
    assert len(provider.requests) == 2


def test_the_task_record_is_exported(app: Flask) -> None:
    import flask_musiccallback

    assert {"TaskRecord", "TaskState", "task_overdue", "task_lost"} <= set(
        flask_musiccallback.__all__
    )
