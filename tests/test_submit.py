"""Submitting through the extension (``music.submit``, ``flask musiccallback submit``): the
callback URL, the family and the task registered in one call, against a fake provider served on
127.0.0.1; and the whole loop, the provider calling the served app back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask

from flask_musiccallback import ConfigurationError, all_tracks_generated
from flask_musiccallback.families import BUILT_IN, Families
from flask_musiccallback.provider import SubmitError
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.tasks import TaskState
from flask_musiccallback.submit import family_for_path
from flask_musiccallback.testing import build_callback

from .backends import StoreApp
from .conftest import TOKEN, AppFactory
from .fake_provider import FakeProvider
from .servers import serve_url, start_redis

API_KEY = "provider-api-key"
EXTERNAL = "https://music.example.org"

MUSIC_PAYLOAD = {"prompt": "A calm piano track", "customMode": False, "model": "V4"}

#: The documented table (docs/submitting.md): each endpoint, and the family it belongs to.
PATHS = {
    "/api/v1/generate": "music",
    "/api/v1/generate/extend": "music",
    "/api/v1/generate/upload-cover": "music",
    "/api/v1/generate/replace-section": "music",
    "/api/v1/lyrics": "lyrics",
    "/api/v1/wav/generate": "wav",
    "/api/v1/vocal-removal/generate": "stems",
    "/api/v1/midi/generate": "midi",
    "/api/v1/mp4/generate": "video",
    "/api/v1/suno/cover/generate": "cover",
    "/api/v1/voice/generate": "voice",
    "/api/v1/voice/regenerate": "voice",
}


@pytest.fixture
def submitting(make_app: AppFactory, provider: FakeProvider) -> Flask:
    provider.api_key = API_KEY
    return make_app(API_KEY=API_KEY, API_BASE_URL=provider.url, EXTERNAL_URL=EXTERNAL)


def submit(app: Flask, path: str, payload: Mapping[str, Any], **kwargs: Any) -> str:
    with app.app_context():
        return get_state(app).extension.submit(path, payload, **kwargs)


def callback_query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


@pytest.mark.parametrize(("path", "family"), PATHS.items())
def test_the_family_follows_from_the_path(path: str, family: str) -> None:
    assert family_for_path(Families(*BUILT_IN), path).name == family


def test_a_path_no_family_has_asks_for_the_family() -> None:
    with pytest.raises(LookupError, match="pass family="):
        family_for_path(Families(*BUILT_IN), "/api/v1/jobs/createTask")


def test_the_task_is_posted_with_the_key_and_a_callback_url_carrying_token_and_family(
    submitting: Flask, provider: FakeProvider
) -> None:
    task_id = submit(submitting, "/api/v1/lyrics", {"prompt": "rain on a tin roof"})

    [sent] = provider.submitted
    assert (sent.path, sent.authorization, sent.task_id) == (
        "/api/v1/lyrics",
        f"Bearer {API_KEY}",
        task_id,
    )
    assert sent.payload["prompt"] == "rain on a tin roof"
    url = sent.payload["callBackUrl"]
    assert url.startswith(f"{EXTERNAL}/music-callback?")
    assert callback_query(url) == {"token": [TOKEN], "family": ["lyrics"]}


def test_the_task_is_expected_with_its_family(
    store_app: StoreApp, provider: FakeProvider
) -> None:
    """On every store: the task is registered, open, before any callback."""
    app = store_app(API_KEY=API_KEY, API_BASE_URL=provider.url, EXTERNAL_URL=EXTERNAL)

    task_id = submit(app, "/api/v1/wav/generate", {"taskId": "t0", "audioId": "a0"})

    with app.app_context():
        task = get_state(app).extension.task(task_id)
    assert task is not None
    assert (task.family, task.state, task.expected_at is not None) == ("wav", TaskState.OPEN, True)


def test_a_family_given_wins_over_the_path(submitting: Flask, provider: FakeProvider) -> None:
    task_id = submit(submitting, "/api/v1/generate", MUSIC_PAYLOAD, family="lyrics")

    assert callback_query(provider.submitted[0].payload["callBackUrl"])["family"] == ["lyrics"]
    with submitting.app_context():
        task = get_state(submitting).extension.task(task_id)
    assert task is not None
    assert task.family == "lyrics"


def test_a_callback_url_in_the_payload_is_kept(submitting: Flask, provider: FakeProvider) -> None:
    own = "https://elsewhere.example/hook?token=theirs"

    submit(submitting, "/api/v1/generate", {**MUSIC_PAYLOAD, "callBackUrl": own})

    assert provider.submitted[0].payload["callBackUrl"] == own


def test_the_voice_regenerate_endpoint_gets_the_url_under_its_own_spelling(
    submitting: Flask, provider: FakeProvider
) -> None:
    submit(submitting, "/api/v1/voice/regenerate", {"taskId": "voice-1"})

    sent = provider.submitted[0].payload
    assert "callBackUrl" not in sent
    assert callback_query(sent["calBackUrl"])["family"] == ["voice"]


def test_the_payload_given_is_left_as_it_was(submitting: Flask) -> None:
    payload = dict(MUSIC_PAYLOAD)

    submit(submitting, "/api/v1/generate", payload)

    assert payload == MUSIC_PAYLOAD


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (401, {"code": 401, "msg": "Unauthorized", "data": None}, 401, False),
        (200, {"code": 413, "msg": "Prompt too long", "data": None}, 413, False),
        (200, {"code": 429, "msg": "Insufficient credits", "data": None}, 429, True),
        (200, {"code": 430, "msg": "Call frequency too high", "data": None}, 430, True),
        (200, {"code": 455, "msg": "System maintenance", "data": None}, 455, True),
        (502, "<html>Bad gateway</html>", 502, True),
        (200, {"code": 500, "msg": "Server error", "data": None}, 500, True),
        (200, {"code": 400, "msg": "Lyrics contain copyrighted material"}, 400, False),
    ],
)
def test_a_refusal_raises_with_its_code_and_message_and_registers_nothing(
    submitting: Flask,
    provider: FakeProvider,
    status: int,
    body: Mapping[str, Any] | str,
    code: int,
    retryable: bool,
) -> None:
    provider.refuse_next(status, body)

    with pytest.raises(SubmitError) as raised:
        submit(submitting, "/api/v1/generate", MUSIC_PAYLOAD)

    error = raised.value
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message == (body["msg"] if isinstance(body, Mapping) else "")
    assert str(code) in str(error)
    assert provider.submitted[0].task_id is None
    assert_nothing_registered(submitting)


def assert_nothing_registered(app: Flask) -> None:
    with app.app_context():
        store = get_state(app).store
        assert store.tasks(limit=10) == []


def test_an_answer_without_a_task_id_raises_and_registers_nothing(
    submitting: Flask, provider: FakeProvider
) -> None:
    provider.refuse_next(200, {"code": 200, "msg": "success", "data": {}})

    with pytest.raises(SubmitError, match="no task id"):
        submit(submitting, "/api/v1/generate", MUSIC_PAYLOAD)
    assert_nothing_registered(submitting)


def test_a_provider_that_cannot_be_reached_raises_a_retryable_error(
    make_app: AppFactory,
) -> None:
    with serve_url(Flask("gone")) as url:
        pass  # the port is free again: nothing listens there
    app = make_app(API_KEY=API_KEY, API_BASE_URL=url, EXTERNAL_URL=EXTERNAL)

    with pytest.raises(SubmitError) as raised:
        submit(app, "/api/v1/generate", MUSIC_PAYLOAD)
    assert (raised.value.code, raised.value.retryable) == (None, True)
    assert_nothing_registered(app)


def test_no_api_key_is_a_configuration_error(make_app: AppFactory) -> None:
    app = make_app(EXTERNAL_URL=EXTERNAL)

    with pytest.raises(ConfigurationError, match="Submitting needs the provider's API key"):
        submit(app, "/api/v1/generate", MUSIC_PAYLOAD)


def test_an_unknown_family_is_refused_before_anything_is_sent(
    submitting: Flask, provider: FakeProvider
) -> None:
    with pytest.raises(LookupError):
        submit(submitting, "/api/v1/generate", MUSIC_PAYLOAD, family="karaoke")
    with pytest.raises(LookupError):
        submit(submitting, "/api/v1/jobs/createTask", {"model": "x"})
    assert provider.submitted == []


def test_a_store_down_at_registration_registers_the_task_once_it_is_back(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    """The task exists at the provider (and was paid for): its id is returned, not lost to the
    store's outage, and the registration is written when the store answers again."""
    server = start_redis()
    server.stop()
    try:
        app = make_app(
            API_KEY=API_KEY,
            API_BASE_URL=provider.url,
            EXTERNAL_URL=EXTERNAL,
            STORE=server.url() + "?timeout=0.5",
        )
        task_id = submit(app, "/api/v1/generate", MUSIC_PAYLOAD)

        assert provider.submitted[0].task_id == task_id
        server.start()
        state = get_state(app)
        assert state.write_back.wait_idle(30)
        with app.app_context():
            task = state.extension.task(task_id)
        assert task is not None
        assert task.family == "music"
        state.store.close()
    finally:
        server.remove()


# The whole loop: submitted, called back, the receivers ran, the task complete.


def test_submit_then_the_provider_calls_back_and_the_task_completes(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    provider.api_key = API_KEY
    provider.call_back = lambda task_id: [
        build_callback(stage, task_id=task_id) for stage in ("text", "first", "complete")
    ]
    received: list[str] = []
    app = make_app(API_KEY=API_KEY, API_BASE_URL=provider.url)

    def save(sender: Flask, event: Any, **extra: Any) -> None:
        received.append(event.task_id)

    with serve_url(app) as served, all_tracks_generated.connected_to(save, sender=app):
        with app.test_request_context(base_url=served):  # as a view of the host submits
            task_id = get_state(app).extension.submit("/api/v1/generate", MUSIC_PAYLOAD)
        task = wait_for(lambda: final_task(app, task_id))

    assert received == [task_id]
    assert [status for _, status in provider.called_back] == [200, 200, 200]
    assert task.state is TaskState.COMPLETE
    assert sorted(task.stages) == ["complete", "first", "text"]


@pytest.mark.parametrize("family", ["lyrics", "cover"])
def test_the_loop_of_a_family_whose_failure_names_no_family(
    make_app: AppFactory, provider: FakeProvider, family: str
) -> None:
    """A failure body that names no family is read by the family the submission registered."""
    failure = {"code": 500, "msg": "Internal Error", "data": {"taskId": "TASK"}}
    provider.call_back = lambda task_id: [
        json.loads(json.dumps(failure).replace("TASK", task_id))
    ]
    app = make_app(API_KEY=API_KEY, API_BASE_URL=provider.url)
    path = {"lyrics": "/api/v1/lyrics", "cover": "/api/v1/suno/cover/generate"}[family]

    with serve_url(app) as served:
        with app.test_request_context(base_url=served):
            task_id = get_state(app).extension.submit(path, {"prompt": "p", "taskId": "t"})
        task = wait_for(lambda: final_task(app, task_id))

    assert (task.family, task.state) == (family, TaskState.FAILED)


def final_task(app: Flask, task_id: str) -> Any:
    with app.app_context():
        task = get_state(app).extension.task(task_id)
    return task if task is not None and task.state is not TaskState.OPEN else None


def wait_for(find: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"not there after {timeout} s")


# The command


def test_the_command_prints_the_task_id_and_registers_it(
    submitting: Flask, provider: FakeProvider
) -> None:
    result = submitting.test_cli_runner().invoke(
        args=["musiccallback", "submit", "/api/v1/lyrics", "--json", '{"prompt": "rain"}']
    )

    assert result.exit_code == 0, result.output
    [sent] = provider.submitted
    assert result.output == f"{sent.task_id}\n"
    assert callback_query(sent.payload["callBackUrl"])["family"] == ["lyrics"]
    with submitting.app_context():
        task = get_state(submitting).extension.task(result.output.strip())
    assert task is not None
    assert task.family == "lyrics"


def test_the_command_takes_the_family(submitting: Flask, provider: FakeProvider) -> None:
    result = submitting.test_cli_runner().invoke(
        args=[
            "musiccallback", "submit", "/api/v1/generate", "--json", "{}", "--family", "cover"
        ]
    )

    assert result.exit_code == 0, result.output
    assert callback_query(provider.submitted[0].payload["callBackUrl"])["family"] == ["cover"]


@pytest.mark.parametrize(
    ("status", "body", "exit_code"),
    [
        (401, {"code": 401, "msg": "Unauthorized"}, 3),
        (200, {"code": 455, "msg": "System maintenance"}, 4),
        (200, {"code": 413, "msg": "Prompt too long"}, 1),
    ],
)
def test_the_command_says_what_the_provider_refused(
    submitting: Flask,
    provider: FakeProvider,
    status: int,
    body: dict[str, Any],
    exit_code: int,
) -> None:
    provider.refuse_next(status, body)

    result = submitting.test_cli_runner().invoke(
        args=["musiccallback", "submit", "/api/v1/generate", "--json", "{}"]
    )

    assert result.exit_code == exit_code
    assert result.output.startswith("Error: ")
    assert body["msg"] in result.output
    assert "Traceback" not in result.output
    assert_nothing_registered(submitting)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["/api/v1/generate", "--json", "{not json"], "not JSON"),
        (["/api/v1/generate", "--json", "[1, 2]"], "must be a JSON object"),
        (["/api/v1/jobs/createTask", "--json", "{}"], "pass family="),
        (["/api/v1/generate", "--json", "{}", "--family", "karaoke"], "karaoke"),
    ],
)
def test_the_command_refuses_bad_input_before_sending(
    submitting: Flask, provider: FakeProvider, args: list[str], says: str
) -> None:
    result = submitting.test_cli_runner().invoke(args=["musiccallback", "submit", *args])

    assert result.exit_code == 2
    assert says in result.output
    assert provider.submitted == []


def test_the_command_without_an_address_for_the_app_says_so(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    app = make_app(API_KEY=API_KEY, API_BASE_URL=provider.url)

    result = app.test_cli_runner().invoke(
        args=["musiccallback", "submit", "/api/v1/generate", "--json", "{}"]
    )

    assert result.exit_code == 1
    assert "MUSICCALLBACK_EXTERNAL_URL" in result.output
    assert provider.submitted == []


def test_a_payload_json_cannot_carry_is_refused_before_anything_is_sent(
    submitting: Flask, provider: FakeProvider
) -> None:
    with pytest.raises(SubmitError, match="cannot be sent"):
        submit(submitting, "/api/v1/generate", {"prompt": float("nan")})
    result = submitting.test_cli_runner().invoke(
        args=["musiccallback", "submit", "/api/v1/generate", "--json", '{"prompt": NaN}']
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert provider.submitted == []
    assert_nothing_registered(submitting)
