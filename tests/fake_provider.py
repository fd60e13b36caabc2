"""A stand-in for the provider's API, served over real HTTP on 127.0.0.1, and a server helper.

:class:`FakeProvider` answers ``GET /api/v1/generate/record-info``, and the record endpoint of
every other family, in the documented shape (PROVIDER.md section 6), from answers a test scripts
per task: each poll takes the next answer, and the last one repeats, as a finished task keeps its
final record; a task never scripted is "not found", and with ``api_key`` set another key gets 401.
The path each task was asked at is recorded, so a test sees which family was polled.

It also takes submissions: a ``POST`` to any other path under ``/api/v1/`` is recorded
(:attr:`FakeProvider.submitted`) and answered with a new task id, or with what a test scripted
(:meth:`FakeProvider.refuse_next`); with :attr:`FakeProvider.call_back` set, the provider then
posts the callbacks that function builds for the new task to the ``callBackUrl`` it was given,
as the real one does once the task is done.
:func:`record` builds the music family's record; the other families' records, which share one
shape, are built by ``tests.family_kit.record_answer``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from flask import Flask, Response, jsonify, request

from flask_musiccallback.families import BUILT_IN
from flask_musiccallback.testing import build_callback

from .servers import serve_url

#: snake_case track keys of a callback, and how record-info spells them.
CAMEL = {
    "audio_url": "audioUrl",
    "source_audio_url": "sourceAudioUrl",
    "stream_audio_url": "streamAudioUrl",
    "source_stream_audio_url": "sourceStreamAudioUrl",
    "image_url": "imageUrl",
    "source_image_url": "sourceImageUrl",
    "model_name": "modelName",
}

#: The callback stage whose tracks each status carries.
STATUS_TRACKS = {"TEXT_SUCCESS": "text", "FIRST_SUCCESS": "first", "SUCCESS": "complete"}


def camel_tracks(stage: str, task_id: str, count: int = 2) -> list[dict[str, Any]]:
    """Tracks as record-info lists them: the callback's tracks with camelCase keys."""
    tracks = build_callback(stage, task_id=task_id, tracks=count)["data"]["data"]
    return [{CAMEL.get(key, key): value for key, value in track.items()} for track in tracks]


def record(
    task_id: str,
    status: str,
    *,
    tracks: list[dict[str, Any]] | None = None,
    error_code: Any = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """A record-info body for ``task_id`` in ``status``, with the tracks that status carries."""
    if tracks is None:
        stage = STATUS_TRACKS.get(status)
        tracks = camel_tracks(stage, task_id) if stage in ("first", "complete") else []
    return {
        "code": 200,
        "msg": "success",
        "data": {
            "taskId": task_id,
            "parentMusicId": "",
            "param": '{"prompt":"A calm piano track","customMode":false,"model":"V4"}',
            "response": {"taskId": task_id, "sunoData": tracks},
            "status": status,
            "type": "GENERATE",
            "operationType": "generate",
            "errorCode": error_code,
            "errorMessage": error_message,
        },
    }


@dataclass
class Answer:
    status: int
    body: Mapping[str, Any] | str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Submission:
    """One submission the fake provider received."""

    path: str
    payload: dict[str, Any]
    authorization: str | None
    #: The task id it answered with; ``None`` when it refused.
    task_id: str | None


class FakeProvider:
    """The provider's record-info endpoint, scripted per task, recording every request."""

    def __init__(self) -> None:
        self.url = ""
        #: The API key the provider accepts; any other is answered 401. ``None`` accepts any.
        self.api_key: str | None = None
        self.answers: dict[str, list[Answer]] = {}
        self.requests: list[dict[str, Any]] = []
        #: The path of each request, in order.
        self.paths: list[str] = []
        #: Every submission, in order.
        self.submitted: list[Submission] = []
        #: Answers for the next submissions, in order, before it creates tasks again.
        self.refusals: list[Answer] = []
        #: The callbacks to post, for a new task id, to the URL it was submitted with.
        self.call_back: Callable[[str], list[Mapping[str, Any]]] | None = None
        #: The answers of the callbacks posted, as ``(task_id, status)``.
        self.called_back: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.app = Flask("fake_provider")
        for family in BUILT_IN:
            self.app.add_url_rule(
                family.record_path or "", f"record-{family.name}", view_func=self._record_info
            )
        self.app.add_url_rule(
            "/api/v1/<path:path>", "submit", view_func=self._submit, methods=["POST"]
        )

    def script(self, task_id: str, *answers: Answer | Mapping[str, Any]) -> None:
        """The answers for ``task_id``, in order; a mapping is a 200 answer with that body."""
        self.answers[task_id] = [
            answer if isinstance(answer, Answer) else Answer(200, answer) for answer in answers
        ]

    def statuses(self, task_id: str, *statuses: str) -> None:
        """Script ``task_id`` to go through ``statuses``, one per poll."""
        self.script(task_id, *(record(task_id, status) for status in statuses))

    def _record_info(self) -> Response:
        task_id = request.args.get("taskId", "")
        with self._lock:
            self.requests.append(
                {"task_id": task_id, "authorization": request.headers.get("Authorization")}
            )
            self.paths.append(request.path)
            queue = self.answers.get(task_id)
            if self.api_key is not None and (
                request.headers.get("Authorization") != f"Bearer {self.api_key}"
            ):
                answer = Answer(401, {"code": 401, "msg": "Unauthorized", "data": None})
            elif not queue:
                answer = Answer(200, {"code": 400, "msg": "task not found", "data": None})
            else:
                answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return _respond(answer)

    def refuse_next(self, status: int, body: Mapping[str, Any] | str) -> None:
        """Answer the next submission with ``body`` (HTTP ``status``), creating no task."""
        self.refusals.append(Answer(status, body))

    def _submit(self, path: str) -> Response:
        payload = request.get_json(silent=True)
        authorization = request.headers.get("Authorization")
        with self._lock:
            if self.api_key is not None and authorization != f"Bearer {self.api_key}":
                answer = Answer(401, {"code": 401, "msg": "Unauthorized", "data": None})
            elif self.refusals:
                answer = self.refusals.pop(0)
            else:
                answer = None
            task_id = None if answer is not None else f"fake-{uuid.uuid4().hex[:16]}"
            self.submitted.append(
                Submission(request.path, payload or {}, authorization, task_id)
            )
        if answer is not None:
            return _respond(answer)
        assert task_id is not None
        url = (payload or {}).get("callBackUrl") or (payload or {}).get("calBackUrl")
        if self.call_back is not None and isinstance(url, str):
            thread = threading.Thread(target=self._post_callbacks, args=(url, task_id))
            self._threads.append(thread)
            thread.start()
        return _respond(Answer(200, {"code": 200, "msg": "success", "data": {"taskId": task_id}}))

    def _post_callbacks(self, url: str, task_id: str) -> None:
        """Post the task's callbacks, as the provider does once the answer has gone."""
        assert self.call_back is not None
        for body in self.call_back(task_id):
            status = httpx.post(url, json=body, timeout=10).status_code
            with self._lock:
                self.called_back.append((task_id, status))

    @contextmanager
    def running(self) -> Iterator[FakeProvider]:
        with serve_url(self.app) as url:
            self.url = url
            try:
                yield self
            finally:
                for thread in self._threads:
                    thread.join(timeout=30)


def _respond(answer: Answer) -> Response:
    if isinstance(answer.body, str):
        response = Response(answer.body, status=answer.status, mimetype="text/html")
    else:
        response = jsonify(answer.body)
        response.status_code = answer.status
    response.headers.update(answer.headers)
    return response
