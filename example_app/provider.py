"""A stand-in for the provider's API, so that the demo's whole loop runs on one machine with no
account: the page submits a task (``music.submit``), this takes it as the provider would, and
calls back.

Mounted at ``/fake-provider`` when ``FAKE_PROVIDER`` is on (the default); the app then points
``MUSICCALLBACK_API_BASE_URL`` here and uses :data:`DEMO_API_KEY`, unless configured otherwise.
It answers a submission as the provider does (``{"code": 200, "msg": "success", "data":
{"taskId": ...}}``, or the provider's refusals: a wrong key, no callback URL, an endpoint of no
family), then posts the family's callbacks to the ``callBackUrl`` it was given, from a thread of
its own, a few seconds apart, as the provider's stages come. The callbacks are the simulator's
(``flask_musiccallback.simulate``), their media the app's own samples, so the archive copies them
over HTTP as it would copy the provider's.

It keeps no records: its record endpoints answer that it calls back instead, so a poll of one
of its tasks fails as a poll of a task the provider does not know. Posting to the development
server that serves it works because ``flask run`` answers each request on a thread of its own.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from flask_musiccallback.families import Family
from flask_musiccallback.simulate import build_callback, default_stages, post_over_http
from flask_musiccallback.state import get_state
from flask_musiccallback.submit import CALLBACK_FIELDS, family_for_path

bp = Blueprint("fake_provider", __name__, url_prefix="/fake-provider")

#: The one API key the fake provider accepts; the app's ``MUSICCALLBACK_API_KEY`` while it is on.
DEMO_API_KEY = "demo-key-of-the-fake-provider"


def base_url(server_url: str) -> str:
    """The fake provider's address on the server at ``server_url``: the app's API base URL
    while it is on."""
    return f"{server_url.rstrip('/')}{bp.url_prefix}"


def in_use(app: Flask) -> bool:
    """Whether ``app`` submits its tasks to its own fake provider (not to one configured)."""
    config = app.config
    return (
        bool(config["FAKE_PROVIDER"])
        and config["MUSICCALLBACK_API_BASE_URL"] == base_url(config["SERVER_URL"])
        and config["MUSICCALLBACK_API_KEY"] == DEMO_API_KEY
    )


def _answer(code: int, msg: str, data: Mapping[str, Any] | None = None) -> tuple[Response, int]:
    """The provider's envelope; a refusal's HTTP status is its code, so curl shows it too."""
    return jsonify(code=code, msg=msg, data=data), 200 if code == 200 else code


def _refused_key() -> tuple[Response, int] | None:
    authorization = request.headers.get("Authorization", "")
    if hmac.compare_digest(authorization.encode(), f"Bearer {DEMO_API_KEY}".encode()):
        return None
    return _answer(401, "You do not have access permissions")


@bp.post("/<path:path>")
def submit(path: str) -> tuple[Response, int]:
    """Take a task as the provider does, and call it back later."""
    refused = _refused_key()
    if refused is not None:
        return refused
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _answer(400, "The request body must be a JSON object")
    callback_url = next(
        (body[key] for key in CALLBACK_FIELDS if isinstance(body.get(key), str) and body[key]),
        None,
    )
    if callback_url is None:
        return _answer(422, "Please enter callBackUrl")
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        family = family_for_path(get_state(app).extension.families, path)
    except LookupError:
        return _answer(404, f"No endpoint at /{path}")
    if not _own_endpoint(callback_url):
        # Calling back anywhere else would post the app's own credentials there (the simulator
        # adds the token to a URL without one): the demo's provider calls back this app only.
        return _answer(422, "The demo's fake provider calls back this app's own endpoint only")
    if not _calling_back.acquire(blocking=False):
        return _answer(430, "Too many demo tasks are being called back; try again shortly")
    task_id = uuid.uuid4().hex
    threading.Thread(
        target=call_back,
        args=(app, callback_url, family, task_id),
        name=f"fake-provider-{task_id[:8]}",
        daemon=True,
    ).start()
    return _answer(200, "success", {"taskId": task_id})


#: Tasks the fake provider calls back at once, at most: a thread each.
MAX_CALLING_BACK = 8
_calling_back = threading.BoundedSemaphore(MAX_CALLING_BACK)


def _own_endpoint(url: str) -> bool:
    """Whether ``url`` is this app's callback endpoint (its query aside)."""
    own = urlsplit(get_state(current_app).extension.callback_url())
    given = urlsplit(url)
    return (given.scheme, given.netloc, given.path) == (own.scheme, own.netloc, own.path)


@bp.get("/<path:path>")
def record(path: str) -> tuple[Response, int]:
    """Record endpoints (polls, ``doctor``'s check of the key): the key is checked, and no task
    is known."""
    refused = _refused_key()
    if refused is not None:
        return refused
    return _answer(400, "The demo's fake provider keeps no records: it calls back instead")


def _post_callbacks(app: Flask, url: str, family: Family, task_id: str) -> None:
    """Post ``family``'s callbacks of ``task_id`` to ``url``, ``FAKE_PROVIDER_SECONDS`` apart
    (the first too: the answer to the submission comes first, as the provider's does)."""
    seconds = float(app.config["FAKE_PROVIDER_SECONDS"])
    media_base = get_state(app).settings.simulated_media_url
    for stage in default_stages(family):
        time.sleep(seconds)
        body = build_callback(stage, family=family, task_id=task_id, media_base=media_base)
        try:
            status, answer = post_over_http(app, url, body)
        except httpx.HTTPError as exc:
            app.logger.warning("The fake provider could not call back %s: %s", task_id, exc)
            return
        if status >= 400:
            app.logger.warning(
                "The fake provider's %s callback of %s was refused: %s %s",
                stage,
                task_id,
                status,
                answer,
            )


def call_back(app: Flask, url: str, family: Family, task_id: str) -> None:
    """Post the task's callbacks (:func:`_post_callbacks`), then free its place."""
    try:
        _post_callbacks(app, url, family, task_id)
    finally:
        _calling_back.release()
