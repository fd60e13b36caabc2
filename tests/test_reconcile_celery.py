"""Reconciliation under ``celery`` dispatch: the beat task ``flask_musiccallback.reconcile_tasks``
run by a real worker, which polls the fake provider and publishes what it finds to the workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback.dispatch.celery import RECONCILE_TASK_NAME
from flask_musiccallback.state import get_state

from .celery_host import create_app, host_env
from .fake_provider import FakeProvider
from .servers_redis import celery_worker, redis_server
from .test_dispatch_celery import attempts

API_KEY = "provider-api-key"


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider().running() as fake:
        yield fake


@pytest.fixture(scope="module")
def config(provider: FakeProvider) -> dict[str, Any]:
    return {
        "MUSICCALLBACK_API_KEY": API_KEY,
        "MUSICCALLBACK_API_BASE_URL": provider.url,
        "MUSICCALLBACK_RECONCILE_AFTER": 0,
    }


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def worker(
    broker: str, config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    with celery_worker("tests.celery_host:celery_app", host_env(broker, **config), log=log):
        yield log


@pytest.fixture
def web(broker: str, worker: Path, config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(f"{broker}/0", f"{broker}/1", MUSICCALLBACK_STORE=f"{broker}/2", **config)
    yield app
    app.extensions["celery"].close()


def test_the_beat_task_polls_an_overdue_task_and_the_workers_dispatch_it(
    web: Flask, provider: FakeProvider
) -> None:
    task_id = f"ok-{uuid.uuid4().hex}"
    provider.statuses(task_id, "SUCCESS")
    with web.app_context():
        get_state(web).extension.expect(task_id)

    web.extensions["celery"].send_task(RECONCILE_TASK_NAME)  # what beat sends

    [attempt] = attempts(web, task_id, 1)
    assert attempt["stage"] == "complete"
    assert [request["task_id"] for request in provider.requests] == [task_id]
