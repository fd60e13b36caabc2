"""``flask musiccallback list | show | replay | prune`` (API.md §7), on every persistent store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

import flask_musiccallback
from flask_musiccallback import all_tracks_generated, text_generated
from flask_musiccallback.contract import unreadable_delivery
from flask_musiccallback.stores.base import DeliveryState
from flask_musiccallback.testing import build_callback, record_signals

from .backends import StoreApp, persistent_store, sqlite_url
from .conftest import URL, AppFactory
from .servers import free_port


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["musiccallback", *args])


def post(app: Flask, payload: dict[str, Any]) -> int:
    return app.test_client().post(URL, json=payload).status_code


class Flaky:
    """A receiver that fails its first ``failures`` calls."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, sender: Flask, **extra: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"failure {self.calls}")


@pytest.fixture
def app(persistent_app: StoreApp) -> Flask:
    """An app on a persistent store whose receiver errors are acknowledged and kept."""
    return persistent_app(RECEIVER_ERRORS="ack")


def fail_delivery(app: Flask, payload: dict[str, Any]) -> str:
    """Deliver ``payload`` with a failing receiver; the id of the failed delivery kept."""
    with all_tracks_generated.connected_to(Flaky(), sender=app):
        assert post(app, payload) == 200
    [kept] = persistent_store(app).list(task_id=payload["data"]["task_id"])
    assert kept.state is DeliveryState.FAILED
    return kept.id


def test_list_shows_kept_deliveries_latest_first(app: Flask) -> None:
    post(app, build_callback("text", task_id="task-one"))
    fail_delivery(app, build_callback("complete", task_id="task-two"))
    result = run(app, "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["ID", "STATE", "TASK", "STAGE", "TRIES"]
    assert "task-two" in lines[1]
    assert "failed" in lines[1]
    assert "RuntimeError: failure 1" in lines[1]
    assert "task-one" in lines[2]
    assert "done" in lines[2]


def test_list_filters_by_status_task_and_limit(app: Flask) -> None:
    post(app, build_callback("text", task_id="task-one"))
    post(app, build_callback("first", task_id="task-one"))
    fail_delivery(app, build_callback("complete", task_id="task-two"))

    failed = run(app, "list", "--status", "failed").output
    assert "task-two" in failed
    assert "task-one" not in failed
    by_task = run(app, "list", "--task-id", "task-one").output.splitlines()
    assert len(by_task) == 3
    assert len(run(app, "list", "--limit", "1").output.splitlines()) == 2
    assert run(app, "list", "--status", "pending").output == "No deliveries.\n"
    assert run(app, "list", "--status", "bogus").exit_code == 2


def test_show_prints_state_attempts_error_headers_and_raw_payload(app: Flask) -> None:
    payload = build_callback("complete", task_id="shown")
    delivery_id = fail_delivery(app, payload)
    result = run(app, "show", delivery_id)
    assert result.exit_code == 0, result.output
    assert "state:       failed" in result.output
    assert "attempts:    1" in result.output
    assert "last error:  RuntimeError: failure 1" in result.output
    assert "Content-Type: application/json" in result.output
    assert '"task_id": "shown"' in result.output
    assert payload["data"]["data"][0]["audio_url"] in result.output


def test_unreadable_bodies_are_listed_by_their_status_and_shown(app: Flask) -> None:
    post(app, build_callback("complete", task_id="readable"))
    body = unreadable_delivery(task_id="mystery")
    persistent_store(app).keep_unreadable(body, "data.callbackType: Not a known stage.")

    listed = run(app, "list", "--status", "unreadable")
    assert listed.exit_code == 0, listed.output
    [_header, row] = listed.output.splitlines()
    assert row.split()[1:4] == ["unreadable", "mystery", body.stage]
    assert "mystery" not in run(app, "list", "--status", "done").output
    shown = run(app, "show", row.split()[0])
    assert shown.exit_code == 0, shown.output
    assert "state:       unreadable\n" in shown.output
    assert "last error:  data.callbackType: Not a known stage." in shown.output
    assert '"callbackType": "mystery"' in shown.output


def test_show_of_an_unknown_delivery_exits_1(app: Flask) -> None:
    result = run(app, "show", "999999")
    assert result.exit_code == 1
    assert "No delivery '999999'" in result.output


def test_replay_by_id_sends_the_signals_again_and_marks_the_delivery_done(app: Flask) -> None:
    payload = build_callback("complete")
    delivery_id = fail_delivery(app, payload)
    with record_signals(app) as recorded:
        result = run(app, "replay", delivery_id)
    assert result.exit_code == 0, result.output
    assert result.output == f"{delivery_id}: done (attempt 2)\n"
    assert [name for name, _ in recorded] == ["callback_received", "all_tracks_generated"]
    assert recorded[1][1]["event"].task_id == payload["data"]["task_id"]
    kept = persistent_store(app).get(delivery_id)
    assert kept is not None
    assert (kept.state, kept.attempts) == (DeliveryState.DONE, 2)


def test_replay_failed_takes_every_failed_delivery_oldest_first(app: Flask) -> None:
    ids = [fail_delivery(app, build_callback("complete", task_id=f"t{i}")) for i in range(3)]
    post(app, build_callback("text"))
    seen: list[str] = []
    with all_tracks_generated.connected_to(
        lambda sender, event: seen.append(event.task_id), sender=app
    ):
        result = run(app, "replay", "--failed")
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.output.splitlines()] == ids
    assert seen == ["t0", "t1", "t2"]
    assert persistent_store(app).list(status="failed") == []


def test_a_replay_that_fails_again_exits_1_and_keeps_the_new_error(app: Flask) -> None:
    delivery_id = fail_delivery(app, build_callback("complete"))
    flaky = Flaky(failures=5)
    flaky.calls = 1
    with all_tracks_generated.connected_to(flaky, sender=app):
        result = run(app, "replay", delivery_id)
    assert result.exit_code == 1
    assert "failed (RuntimeError: failure 2)" in result.output
    kept = persistent_store(app).get(delivery_id)
    assert kept is not None
    assert (kept.state, kept.attempts) == (DeliveryState.FAILED, 2)


def test_a_done_delivery_is_replayed_only_when_forced(app: Flask) -> None:
    post(app, build_callback("text", task_id="again"))
    [kept] = persistent_store(app).list()
    calls: list[str] = []
    with text_generated.connected_to(lambda sender, event: calls.append(event.task_id), sender=app):
        skipped = run(app, "replay", kept.id)
        forced = run(app, "replay", "--force", kept.id)
    assert skipped.exit_code == 0
    assert "skipped (done; --force takes it)" in skipped.output
    assert forced.exit_code == 0
    assert calls == ["again"]


def test_replay_pending_leaves_a_claim_held_by_a_live_process(app: Flask) -> None:
    calls: list[Result] = []

    def replay_meanwhile(sender: Flask, **extra: Any) -> None:
        calls.append(run(app, "replay", "--pending"))

    with all_tracks_generated.connected_to(replay_meanwhile, sender=app):
        post(app, build_callback("complete"))
    [result] = calls
    assert "skipped (processing, held by" in result.output


def test_replay_of_an_unknown_delivery_exits_1(app: Flask) -> None:
    result = run(app, "replay", "424242")
    assert result.exit_code == 1
    assert "424242: not_found" in result.output


def test_replay_needs_ids_or_a_selection(app: Flask) -> None:
    result = run(app, "replay")
    assert result.exit_code == 2
    assert "--failed, --pending or --unreadable" in result.output


def test_prune_deletes_deliveries_older_than_the_given_days(app: Flask) -> None:
    post(app, build_callback("complete"))
    kept = run(app, "prune")
    assert kept.exit_code == 0
    assert kept.output.startswith("Deleted 0 deliveries unchanged for 7 days")
    pruned = run(app, "prune", "--older-than", "0")
    assert pruned.output.startswith("Deleted 1 deliveries")
    assert run(app, "list").output == "No deliveries.\n"


@pytest.mark.parametrize(
    "args", [["list"], ["show", "1"], ["replay", "--failed"], ["prune"]], ids=lambda a: a[0]
)
def test_on_the_memory_store_the_commands_say_they_need_a_persistent_store(
    make_app: AppFactory, args: list[str]
) -> None:
    result = run(make_app(), *args)
    assert result.exit_code == 1
    assert "needs a persistent store" in result.output
    assert "MUSICCALLBACK_STORE" in result.output


def test_an_unreachable_store_is_reported_in_one_line(make_app: AppFactory) -> None:
    app = make_app(STORE=f"redis://127.0.0.1:{free_port()}/0")
    result = run(app, "list")
    assert result.exit_code == 1
    assert result.output.startswith("Error: The store is unavailable: Redis at 127.0.0.1")
    assert "Traceback" not in result.output


def test_the_commands_are_reachable_from_the_flask_command(tmp_path: Path) -> None:
    (tmp_path / "callbacks_app.py").write_text(
        "from flask import Flask\n"
        "from flask_musiccallback import MusicCallback\n"
        "app = Flask(__name__)\n"
        "app.config['MUSICCALLBACK_TOKEN'] = 'secret'\n"
        f"app.config['MUSICCALLBACK_STORE'] = {sqlite_url(tmp_path)!r}\n"
        "MusicCallback(app)\n"
    )
    package_root = str(Path(flask_musiccallback.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, str(tmp_path)])}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "callbacks_app", "musiccallback", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "No deliveries.\n"
