"""The media archive on the persistent stores (API.md §11): each copy is a delivery of its own.

The tests run on SQLite, PostgreSQL and Redis (those with a Celery worker on PostgreSQL and Redis),
with a real media server on 127.0.0.1 that counts the requests for each file and can be told to
fail some files or to hold its answers. A copy is kept under ``archive:<event key>``: failed after
its attempts and listed, replayed without fetching again what is archived already, taken over
from a process that died, and, under ``celery`` dispatch, run by a real worker as its task
``flask_musiccallback.archive_media``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_musiccallback.dispatch.celery import ARCHIVE_TASK_NAME
from flask_musiccallback.dispatch.sweep import sweep
from flask_musiccallback.families import BUILT_IN
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import DeliveryState, KeptDelivery
from flask_musiccallback.stores.owners import owner_is_dead
from flask_musiccallback.testing import build_callback, record_signals

from .backends import child_env, claim_in_a_process_that_dies, persistent_store
from .celery_host import URL as HOST_URL
from .celery_host import create_app, host_env
from .conftest import TOKEN, URL, AppFactory
from .family_kit import sent
from .media_host import HOLD_TIMEOUT, MediaHost, content, media_host
from .servers import PostgresServer
from .servers_redis import celery_worker

RETRY_ATTEMPTS = 2


@pytest.fixture
def media() -> Iterator[MediaHost]:
    with media_host() as served:
        yield served


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def archive_config(store_url: str, archive: Path) -> dict[str, Any]:
    return {
        "STORE": store_url,
        "ARCHIVE": f"file://{archive}",
        "ARCHIVE_ALLOW": ["127.0.0.1"],
        "RETRY_ATTEMPTS": RETRY_ATTEMPTS,
        "RETRY_BACKOFF": 0.05,
    }


ArchiveApp = Callable[..., Flask]


@pytest.fixture
def archive_app(make_app: AppFactory, shared_store_url: str, archive: Path) -> Iterator[ArchiveApp]:
    """Build apps archiving to ``archive``, on the store of the running parameter; closed after."""
    apps: list[Flask] = []

    def factory(**config: Any) -> Flask:
        app = make_app(**{**archive_config(shared_store_url, archive), **config})
        apps.append(app)
        return app

    yield factory
    for app in apps:
        get_state(app).extension.close(app, timeout=10)


def post(app: Flask, payload: dict[str, Any], url: str = URL) -> dict[str, Any]:
    answer = app.test_client().post(url, json=payload)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body: dict[str, Any] = answer.get_json()
    return body


def settle(app: Flask) -> None:
    """Wait for the write-back to claim and queue the copies, and for the archive to run them."""
    assert get_state(app).extension.wait_idle(30, app=app)


def run(app: Flask, *args: str) -> Result:
    result = app.test_cli_runner().invoke(args=["musiccallback", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def music(media: MediaHost, stage: str = "complete", task_id: str | None = None) -> dict[str, Any]:
    task_id = task_id or f"task-{uuid.uuid4().hex[:12]}"
    return build_callback(stage, task_id=task_id, media_base=media.base)


def task_of(payload: dict[str, Any]) -> str:
    task_id: str = payload["data"]["task_id"]
    return task_id


def track_links(payload: dict[str, Any]) -> list[str]:
    """A music body's links the archive fetches: each track's audio and image, in order."""
    tracks = payload["data"]["data"]
    return [link for track in tracks for link in (track["audio_url"], track["image_url"]) if link]


def kept(app: Flask, task_id: str, stage: str = "archive:complete") -> KeptDelivery:
    """The delivery the store keeps for ``task_id``'s ``stage``: by default, its copy."""
    [delivery] = [k for k in persistent_store(app).list(task_id=task_id) if k.stage == stage]
    return delivery


def archived_files(archive: Path) -> dict[str, bytes]:
    """The archive's files by their paths from the root, without the manifests and the hidden
    partial files of downloads under way (or cut short)."""
    return {
        str(path.relative_to(archive)): path.read_bytes()
        for path in archive.rglob("*")
        if path.is_file()
        and not path.name.endswith(".manifest.json")
        and not path.name.startswith(".")
    }


def the_files_of(links: list[str], media: MediaHost) -> list[bytes]:
    return sorted(content(media.path_of(link)) for link in links)


# A copy that fails is kept failed and listed, and a replay fetches only what it lacks.


def failed_copy(app: Flask, media: MediaHost) -> tuple[str, list[str]]:
    """Post a music callback whose second track is gone (its audio 404, its image 503) and let
    its copy fail after its attempts; the task id and the body's links."""
    payload = music(media)
    links = track_links(payload)
    media.statuses[media.path_of(links[2])] = 404
    media.statuses[media.path_of(links[3])] = 503
    assert post(app, payload) == {"status": "received"}
    settle(app)
    return task_of(payload), links


def test_a_copy_failing_after_its_attempts_is_kept_failed_and_listed(
    archive_app: ArchiveApp, media: MediaHost, archive: Path
) -> None:
    app = archive_app()
    with record_signals(app) as recorded:
        task_id, links = failed_copy(app, media)

    failures = sent(recorded, "media_archive_failed")
    assert sorted((f["url"], f["error"]) for f in failures) == [
        (links[2], "HTTP 404"),
        (links[3], "HTTP 503"),
    ]
    assert {f["event"].task_id for f in failures} == {task_id}
    # Given up on those two, the copy announces the first track's files, which are archived.
    [partial] = sent(recorded, "media_archived")
    assert list(partial["files"]) == links[:2]
    assert [name for name, _ in recorded if name.startswith("media_")][-1] == "media_archived"
    # The second attempt asked again for what was missing, not for the first track's files.
    assert media.fetches(links) == [1, 1, RETRY_ATTEMPTS, RETRY_ATTEMPTS]
    assert sorted(archived_files(archive).values()) == the_files_of(links[:2], media)

    copy = kept(app, task_id)
    assert (copy.state, copy.attempts) == (DeliveryState.FAILED, RETRY_ATTEMPTS)
    assert copy.last_error == (
        f"ArchiveFailed: {links[2]}: HTTP 404; ArchiveFailed: {links[3]}: HTTP 503"
    )
    assert kept(app, task_id, "complete").state is DeliveryState.DONE
    listed = run(app, "list", "--status", "failed")
    assert listed.exit_code == 0, listed.output
    [row] = listed.output.splitlines()[1:]
    assert row.split()[:5] == [copy.id, "failed", task_id, "archive:complete", "2"]


@pytest.mark.parametrize("how", ["by id", "--failed"])
def test_a_replayed_copy_fetches_only_the_files_it_lacks(
    archive_app: ArchiveApp, media: MediaHost, archive: Path, how: str
) -> None:
    app = archive_app()
    task_id, links = failed_copy(app, media)
    copy = kept(app, task_id)
    media.statuses.clear()

    with record_signals(app) as recorded:
        replayed = run(app, "replay", copy.id if how == "by id" else "--failed")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.output == f"{copy.id}: done (attempt {RETRY_ATTEMPTS + 1})\n"

    assert media.fetches(links) == [1, 1, RETRY_ATTEMPTS + 1, RETRY_ATTEMPTS + 1]
    [archived] = sent(recorded, "media_archived")
    assert [(file.source, file.fetched) for file in archived["archived"]] == [
        (links[0], False),
        (links[1], False),
        (links[2], True),
        (links[3], True),
    ]
    files = archived_files(archive)
    assert sorted(archived["files"].values()) == sorted(f"file://{archive}/{p}" for p in files)
    assert sorted(files.values()) == the_files_of(links, media)
    assert sent(recorded, "media_archive_failed") == []
    assert kept(app, task_id).state is DeliveryState.DONE
    assert run(app, "list", "--status", "failed").output == "No deliveries.\n"


# Nothing is fetched twice.


def test_a_redelivered_callback_fetches_nothing_again(
    archive_app: ArchiveApp, media: MediaHost
) -> None:
    app = archive_app()
    payload = music(media)
    with record_signals(app) as recorded:
        assert post(app, payload) == {"status": "received"}
        settle(app)
        assert post(app, payload) == {"status": "duplicate"}
        settle(app)
    assert media.fetches(track_links(payload)) == [1, 1, 1, 1]
    assert len(sent(recorded, "media_archived")) == 1
    assert kept(app, task_of(payload)).attempts == 1


def test_replaying_the_music_delivery_fetches_nothing_again(
    archive_app: ArchiveApp, media: MediaHost
) -> None:
    app = archive_app()
    payload = music(media)
    post(app, payload)
    settle(app)
    delivery = kept(app, task_of(payload), "complete")

    with record_signals(app) as recorded:
        replayed = run(app, "replay", "--force", delivery.id)
    assert replayed.output == f"{delivery.id}: done (attempt 2)\n"
    assert [name for name, _ in recorded] == ["callback_received", "all_tracks_generated"]
    assert media.fetches(track_links(payload)) == [1, 1, 1, 1]
    assert kept(app, task_of(payload)).attempts == 1


def test_a_forced_replay_of_a_done_copy_finds_every_file_archived(
    archive_app: ArchiveApp, media: MediaHost, archive: Path
) -> None:
    app = archive_app()
    payload = music(media)
    post(app, payload)
    settle(app)
    before = archived_files(archive)
    copy = kept(app, task_of(payload))

    with record_signals(app) as recorded:
        replayed = run(app, "replay", "--force", copy.id)
    assert replayed.output == f"{copy.id}: done (attempt 2)\n"
    [archived] = sent(recorded, "media_archived")
    assert set(archived["files"]) == set(track_links(payload))
    assert not any(file.fetched for file in archived["archived"])
    assert media.fetches(track_links(payload)) == [1, 1, 1, 1]
    assert archived_files(archive) == before


def test_the_complete_stage_fetches_only_what_the_first_stage_did_not(
    archive_app: ArchiveApp, media: MediaHost
) -> None:
    app = archive_app()
    first = music(media, "first")
    complete = music(media, "complete", task_of(first))
    with record_signals(app) as recorded:
        post(app, first)
        settle(app)
        post(app, complete)
        settle(app)

    links, early = track_links(complete), track_links(first)
    assert set(early) < set(links)
    assert media.fetches(links) == [1, 1, 1, 1]
    of_first, of_complete = (kwargs["archived"] for kwargs in sent(recorded, "media_archived"))
    assert all(file.fetched for file in of_first)
    assert {file.source for file in of_complete if file.fetched} == set(links) - set(early)
    assert kept(app, task_of(first), "archive:first").state is DeliveryState.DONE
    assert kept(app, task_of(first), "archive:complete").state is DeliveryState.DONE


def test_each_familys_copy_is_kept_under_its_own_key_and_fetched_once(
    archive_app: ArchiveApp, media: MediaHost, archive: Path
) -> None:
    app = archive_app()
    task_ids = {family.name: f"{family.name}-{uuid.uuid4().hex[:8]}" for family in BUILT_IN}
    for family in BUILT_IN:
        assert family.example is not None
        payload = media.rebase(family.example("complete", task_id=task_ids[family.name]))
        assert post(app, payload) == {"status": "received"}
        assert post(app, payload) == {"status": "duplicate"}
    settle(app)

    folders = {path.rpartition("/")[0] for path in archived_files(archive)}
    for family in BUILT_IN:
        key = "complete" if family.name == "music" else f"{family.name}:complete"
        states = {
            k.stage: k.state for k in persistent_store(app).list(task_id=task_ids[family.name])
        }
        if family.name in ("lyrics", "voice"):  # no media
            assert states == {key: DeliveryState.DONE}
        else:
            assert states == {key: DeliveryState.DONE, f"archive:{key}": DeliveryState.DONE}
            assert f"{task_ids[family.name]}/{family.name}" in folders
    assert media.hits
    assert set(media.hits.values()) == {1}


# Copies outlive the process that claimed them.


DIES_WHILE_COPYING = """
import json, os, sys
from flask import Flask
from flask_musiccallback import MusicCallback

config, payload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
app = Flask("dies")
app.config.update({f"MUSICCALLBACK_{key}": value for key, value in config.items()})
MusicCallback(app)
answer = app.test_client().post(os.environ["CALLBACK_URL"], json=payload)
print(answer.status_code, answer.get_data(as_text=True).strip(), flush=True)
sys.stdin.read()  # the archive downloads in its threads until the test kills this process
"""


def killed_while_copying(
    config: dict[str, Any], payload: dict[str, Any], media: MediaHost, archive: Path
) -> None:
    """Post ``payload`` to an app in a process of its own, and kill it with SIGKILL once its
    archive has written the first part of the first file."""
    release = media.hold(track_links(payload)[:1], after=300_000)
    process = subprocess.Popen(
        [sys.executable, "-c", DIES_WHILE_COPYING, json.dumps(config), json.dumps(payload)],
        env=child_env(CALLBACK_URL=URL),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().split() == ["200", '{"status":"received"}']
        deadline = time.monotonic() + HOLD_TIMEOUT
        while not list(archive.rglob(".*.part")):
            assert time.monotonic() < deadline, "the process never started downloading"
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        release.set()


@pytest.mark.parametrize("recovery", ["replay --pending", "the sweep"])
def test_a_copy_cut_short_by_a_killed_process_is_taken_over_and_completed(
    archive_app: ArchiveApp,
    media: MediaHost,
    archive: Path,
    shared_store_url: str,
    recovery: str,
) -> None:
    payload = music(media)
    task_id, links = task_of(payload), track_links(payload)
    config = {**archive_config(shared_store_url, archive), "TOKEN": TOKEN}
    killed_while_copying(config, payload, media, archive)
    # Taken over hours later, as after a night: its partial file is old enough to be cleared.
    hours_ago = time.time() - 7 * 3600
    for partial in archive.rglob(".*.part"):
        os.utime(partial, (hours_ago, hours_ago))

    app = archive_app(PENDING_SWEEP_AGE=0.01)
    left = kept(app, task_id)
    assert left.state is DeliveryState.PROCESSING
    assert owner_is_dead(left.owner)
    assert archived_files(archive) == {}, "a file cut short is never at its name"
    listed = run(app, "list", "--status", "pending").output
    assert [line.split()[:4] for line in listed.splitlines()[1:]] == [
        [left.id, "processing", task_id, "archive:complete"]
    ]

    with record_signals(app) as recorded:
        if recovery == "the sweep":
            assert [taken.delivery_id for taken in sweep(app)] == [left.id]
            settle(app)
        else:
            replayed = run(app, "replay", "--pending")
            assert replayed.output == f"{left.id}: done (attempt 2)\n"
    [archived] = sent(recorded, "media_archived")
    assert set(archived["files"]) == set(links)
    # The killed process had asked for the first file; its successor asked for each file once.
    assert media.fetches(links) == [2, 1, 1, 1]
    assert sorted(archived_files(archive).values()) == the_files_of(links, media)
    assert kept(app, task_id).state is DeliveryState.DONE
    assert not list(archive.rglob(".*.part")), "the killed process's partial file is cleared"


def test_a_delivery_taken_over_from_a_dead_process_has_its_media_copied(
    archive_app: ArchiveApp, media: MediaHost, archive: Path, shared_store_url: str
) -> None:
    # The process claimed the delivery and died before it claimed the delivery's copy.
    payload = music(media)
    task_id, links = task_of(payload), track_links(payload)
    claim_in_a_process_that_dies(shared_store_url, payload)

    app = archive_app()
    left = kept(app, task_id, "complete")
    with record_signals(app) as recorded:
        replayed = run(app, "replay", "--pending")
    # The command waited for the copy, too.
    assert replayed.output == f"{left.id}: done (attempt 2)\n"
    [archived] = sent(recorded, "media_archived")
    assert set(archived["files"]) == set(links)
    assert media.fetches(links) == [1, 1, 1, 1]
    assert sorted(archived_files(archive).values()) == the_files_of(links, media)
    assert kept(app, task_id).state is DeliveryState.DONE


# Celery dispatch: the copies are the workers' task flask_musiccallback.archive_media.


@pytest.fixture(scope="module", params=["postgresql", "redis"])
def celery_store_url(
    request: pytest.FixtureRequest, broker: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The store web and workers share, new for each worker (SQLite is the in-process tests')."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgresql_server")
        return server.url(server.create_database())
    return f"{broker}/2"


@pytest.fixture(scope="module")
def celery_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("celery") / "archive"


@pytest.fixture(scope="module")
def celery_config(celery_store_url: str, celery_archive: Path) -> dict[str, Any]:
    config = archive_config(celery_store_url, celery_archive)
    return {f"MUSICCALLBACK_{key}": value for key, value in config.items()}


@pytest.fixture(scope="module")
def worker(
    broker: str, celery_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A worker of the host app of :mod:`tests.celery_host`, with the archive; yields its log."""
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    env = host_env(broker, **celery_config)
    with celery_worker("tests.celery_host:celery_app", env, concurrency=1, log=log):
        yield log


@pytest.fixture
def web(broker: str, worker: Path, celery_config: dict[str, Any]) -> Iterator[Flask]:
    """The host app on the web side: it claims the copies and publishes them."""
    app = create_app(f"{broker}/0", f"{broker}/1", **celery_config)
    yield app
    get_state(app).extension.close(app, timeout=10)
    app.extensions["celery"].close()


def copy_in(app: Flask, task_id: str, state: DeliveryState, timeout: float = 20) -> KeptDelivery:
    """The copy of ``task_id``'s ``complete`` stage, once the workers have left it ``state``."""
    deadline = time.monotonic() + timeout
    while True:
        copies = [
            k for k in persistent_store(app).list(task_id=task_id) if k.stage.startswith("archive:")
        ]
        if copies and copies[0].state is state:
            return copies[0]
        assert time.monotonic() < deadline, f"not {state}: {copies}"
        time.sleep(0.05)


def in_the_log(log: Path, pattern: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        assert time.monotonic() < deadline, f"no {pattern!r} in {log.read_text()}"
        time.sleep(0.05)


def test_under_celery_a_worker_archives_the_media_after_the_answer(
    web: Flask, worker: Path, media: MediaHost, celery_archive: Path
) -> None:
    payload = music(media)
    task_id, links = task_of(payload), track_links(payload)
    release = media.hold(links)
    assert post(web, payload, HOST_URL) == {"status": "received"}
    release.set()

    assert copy_in(web, task_id, DeliveryState.DONE).attempts == 1
    # No media request was answered before the callback's answer came back.
    assert media.answered_while_held == []
    assert media.fetches(links) == [1, 1, 1, 1]
    assert sorted(archived_files(celery_archive / task_id).values()) == the_files_of(links, media)
    # The worker ran the copy, as its own task: the web process only published it.
    in_the_log(worker, rf"Task {re.escape(ARCHIVE_TASK_NAME)}\[[-0-9a-f]+\] succeeded")


def test_under_celery_a_failing_copy_is_retried_kept_failed_and_replayed_by_the_workers(
    web: Flask, media: MediaHost, celery_archive: Path
) -> None:
    payload = music(media)
    task_id, links = task_of(payload), track_links(payload)
    media.statuses[media.path_of(links[2])] = 404
    assert post(web, payload, HOST_URL) == {"status": "received"}

    failed = copy_in(web, task_id, DeliveryState.FAILED)
    assert failed.attempts == RETRY_ATTEMPTS
    assert failed.last_error == f"ArchiveFailed: {links[2]}: HTTP 404"
    assert media.fetches(links) == [1, 1, RETRY_ATTEMPTS, 1]

    media.statuses.clear()
    replayed = run(web, "replay", failed.id)
    assert replayed.exit_code == 0, replayed.output
    assert copy_in(web, task_id, DeliveryState.DONE).attempts == RETRY_ATTEMPTS + 1
    assert media.fetches(links) == [1, 1, RETRY_ATTEMPTS + 1, 1]
    assert sorted(archived_files(celery_archive / task_id).values()) == the_files_of(links, media)
