"""Submitting a task from the page: the form, ``music.submit``, and the fake provider that takes
the task and calls it back, all on the app's own server on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
from flask import Flask, request, request_started
from werkzeug.test import TestResponse

from example_app import create_app
from example_app.models import Task, db
from example_app.provider import DEMO_API_KEY
from example_app.receivers import music
from example_app.views import SUBMIT_EXAMPLES
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.tasks import TaskState

from .conftest import TOKEN, ExampleFactory, base_url, example_config, instance, settle

T = TypeVar("T")

#: The fake provider's pace in these tests: its callbacks come a tenth of a second apart.
QUICK = {"FAKE_PROVIDER_SECONDS": 0.1}


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """``condition()``'s first true answer, asked every 50 ms for ``timeout`` seconds at most."""
    deadline = time.monotonic() + timeout
    while not (answer := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
        time.sleep(0.05)
    return answer


def submit_form(app: Flask, example: str = "music", **fields: str) -> TestResponse:
    """Post the page's form as a person would: an example's endpoint and payload, unless
    ``fields`` changes them."""
    path, payload = SUBMIT_EXAMPLES[example]
    form = {"example": example, "path": path, "payload": json.dumps(payload), **fields}
    return app.test_client().post("/submit", data=form)


def submitted_id(response: TestResponse) -> str:
    assert response.status_code == 303, response.get_data(as_text=True)
    (task_id,) = parse_qs(urlsplit(response.location).query)["submitted"]
    return task_id


def completed(app: Flask, task_id: str) -> Task | None:
    with app.app_context():
        found = db.session.get(Task, task_id)
        if found is None or found.status != "complete":
            return None
        _ = [found.stages, found.tracks, found.results]
        db.session.expunge_all()
        return found


def nothing_registered(app: Flask) -> bool:
    with app.app_context():
        rows = db.session.scalar(db.select(db.func.count(Task.id)))
    return rows == 0 and get_state(app).store.tasks(limit=10) == []


def test_a_submitted_music_task_is_called_back_by_the_fake_provider_until_complete(
    make_example: ExampleFactory,
) -> None:
    app = make_example(**QUICK)

    task_id = submitted_id(submit_form(app))

    # Registered before any callback, so the page lists it at once.
    with app.app_context():
        record = music.task(task_id)
    assert record is not None
    assert record.family == "music"
    shown = app.test_client().get("/").get_data(as_text=True)
    assert f'data-task="{task_id}"' in shown
    task = wait_for(lambda: completed(app, task_id), "the music task's completion")
    assert [stage.stage for stage in task.stages] == ["text", "first", "complete"]
    assert [track.title for track in task.tracks] == ["Neon Harbor", "Paper Satellites"]
    settle(app)
    with app.app_context():
        record = music.task(task_id)
    assert record is not None
    assert record.state is TaskState.COMPLETE


def test_the_fake_provider_calls_back_the_url_with_the_token_and_the_family(
    make_example: ExampleFactory,
) -> None:
    app = make_example(**QUICK)
    arrived: list[str] = []

    def note(sender: Flask, **extra: Any) -> None:
        if request.path == get_state(app).settings.url_rule:
            arrived.append(request.url)

    with request_started.connected_to(note, app):
        task_id = submitted_id(submit_form(app, "lyrics"))
        task = wait_for(lambda: completed(app, task_id), "the lyrics task's completion")

    assert [result.family for result in task.results] == ["lyrics"]
    (url,) = arrived
    assert parse_qs(urlsplit(url).query) == {"token": [TOKEN], "family": ["lyrics"]}
    settle(app)


def test_a_payload_that_is_not_json_is_shown_refused(example: Flask) -> None:
    response = submit_form(example, payload='{"prompt": "A calm piano track",}')

    assert response.status_code == 400
    assert "The payload is not JSON" in response.get_data(as_text=True)
    assert nothing_registered(example)


def test_a_payload_that_is_not_an_object_is_shown_refused(example: Flask) -> None:
    response = submit_form(example, payload='["A calm piano track"]')

    assert response.status_code == 400
    assert "The payload must be a JSON object" in response.get_data(as_text=True)
    assert nothing_registered(example)


def test_a_path_of_no_family_is_shown_refused(example: Flask) -> None:
    response = submit_form(example, path="/api/v1/nothing-here")

    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "/api/v1/nothing-here: no family&#39;s endpoints are there" in html
    assert "/api/v1/generate" in html
    assert nothing_registered(example)


def test_the_providers_refusal_is_shown_with_its_code_and_message(
    make_example: ExampleFactory,
) -> None:
    app = make_example(MUSICCALLBACK_API_KEY="not-the-demo-key")

    response = submit_form(app)

    html = response.get_data(as_text=True)
    assert response.status_code == 502
    assert "The provider did not create the task" in html
    assert "401: You do not have access permissions" in html
    assert nothing_registered(app)


def test_a_cross_site_post_from_a_browser_is_refused(example: Flask) -> None:
    path, payload = SUBMIT_EXAMPLES["music"]
    response = example.test_client().post(
        "/submit",
        data={"path": path, "payload": json.dumps(payload)},
        headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://elsewhere.example"},
    )

    assert response.status_code == 403
    assert "from this app&#39;s own page only" in response.get_data(as_text=True)
    assert nothing_registered(example)


def test_the_fake_provider_refuses_another_key(example: Flask) -> None:
    answer = httpx.post(
        f"{base_url(example)}/fake-provider/api/v1/generate",
        json={"prompt": "x", "callBackUrl": "http://127.0.0.1:9/"},
        headers={"Authorization": "Bearer someone-elses"},
    )

    assert answer.status_code == 401
    assert answer.json()["code"] == 401


def test_the_fake_provider_requires_a_callback_url(example: Flask) -> None:
    answer = httpx.post(
        f"{base_url(example)}/fake-provider/api/v1/generate",
        json={"prompt": "x"},
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    )

    assert answer.json() == {"code": 422, "msg": "Please enter callBackUrl", "data": None}


def test_the_fake_provider_knows_no_endpoint_outside_the_families(example: Flask) -> None:
    answer = httpx.post(
        f"{base_url(example)}/fake-provider/api/v1/nothing-here",
        json={"prompt": "x", "callBackUrl": "http://127.0.0.1:9/"},
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    )

    assert answer.json()["code"] == 404


def test_the_fake_provider_calls_back_this_app_only(example: Flask) -> None:
    """Elsewhere, the simulator would add the app's token to a URL without one: refused."""
    answer = httpx.post(
        f"{base_url(example)}/fake-provider/api/v1/generate",
        json={"prompt": "x", "callBackUrl": "http://127.0.0.1:9/collect"},
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    )

    assert answer.json()["code"] == 422
    assert "this app's own endpoint only" in answer.json()["msg"]


def test_without_the_fake_provider_there_is_no_such_route_and_no_key(
    make_example: ExampleFactory,
) -> None:
    app = make_example(FAKE_PROVIDER=False)

    assert app.test_client().post("/fake-provider/api/v1/generate", json={}).status_code == 404
    assert not any(rule.rule.startswith("/fake-provider") for rule in app.url_map.iter_rules())
    assert app.config["MUSICCALLBACK_API_BASE_URL"] == "https://api.sunoapi.org"
    assert app.config["MUSICCALLBACK_API_KEY"] is None


def test_without_an_api_key_the_form_says_what_to_set(make_example: ExampleFactory) -> None:
    app = make_example(FAKE_PROVIDER=False)

    response = submit_form(app)

    assert response.status_code == 503
    assert "set MUSICCALLBACK_API_KEY" in response.get_data(as_text=True)
    assert nothing_registered(app)


def test_a_configured_provider_wins_over_the_fake_one(tmp_path: Any) -> None:
    config = example_config(
        tmp_path,
        "http://127.0.0.1:5000",
        MUSICCALLBACK_API_BASE_URL="https://api.sunoapi.org",
        MUSICCALLBACK_API_KEY="a-real-key",
    )
    app = create_app(config, instance_path=instance(tmp_path))
    try:
        assert app.config["MUSICCALLBACK_API_BASE_URL"] == "https://api.sunoapi.org"
        assert app.config["MUSICCALLBACK_API_KEY"] == "a-real-key"
        assert "https://api.sunoapi.org" in app.test_client().get("/").get_data(as_text=True)
    finally:
        music.close(app, timeout=10)
        with app.app_context():
            db.engine.dispose()


def test_init_says_the_form_submits_to_the_fake_provider(example: Flask) -> None:
    result = example.test_cli_runner().invoke(args=["init", "--port", "5123"])

    assert result.exit_code == 0, result.output
    assert "submit a task with the page's form" in result.output
    assert "fake provider" in result.output
