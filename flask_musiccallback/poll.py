"""Polling the provider's record-info endpoint: the fallback when callbacks cannot reach the app.

A poll is turned into the very callback the provider would have posted: the record-info answer is
read by :class:`RecordInfoSchema`, which builds the music callback body for the task's status and
loads it with the callback schema into the same :class:`~.events.CallbackEvent`. The event then
takes the path every callback takes, :func:`~.dispatch.deliver` with the music family's delivery,
so polling and callbacks share one deduplication: whichever reports a stage first fires it, and the
other is a duplicate.

One status names one stage (PROVIDER.md section 6). A ``SUCCESS`` poll of a task whose ``text`` and
``first`` were never seen fires ``complete`` only, as when the provider itself skips them; a
``text`` or ``first`` polled after ``complete`` was processed is stale.

``CALLBACK_EXCEPTION`` means the provider could not deliver a callback, not that the task failed,
so it is read by its content: tracks that all have audio are ``complete``; some audio is ``first``;
tracks without audio are ``text``; no tracks at all is a failure, with ``errorCode`` (500 when
there is none) and ``errorMessage``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
from flask import Flask, current_app, has_app_context
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

from .config import ConfigKeys, ConfigurationError, Settings
from .dispatch import Outcome, deliver
from .events import CallbackEvent, Stage
from .families import MUSIC_NAME
from .pool import backoff
from .schemas import load_callback
from .state import get_state

RECORD_INFO_PATH = "/api/v1/generate/record-info"

#: Seconds to wait for the provider: a short connect, and well under a minute overall.
DEFAULT_TIMEOUT = httpx.Timeout(20.0, connect=5.0)

#: The provider's recommended polling interval, in seconds.
DEFAULT_INTERVAL = 30.0

#: The longest wait between two polls when backing off after errors, in seconds.
MAX_BACKOFF = 300.0

#: record-info statuses and the stage each one is the same as; absent statuses dispatch nothing.
STATUS_STAGES: Mapping[str, Stage] = MappingProxyType(
    {
        "TEXT_SUCCESS": Stage.TEXT,
        "FIRST_SUCCESS": Stage.FIRST,
        "SUCCESS": Stage.COMPLETE,
        "CREATE_TASK_FAILED": Stage.FAILED,
        "GENERATE_AUDIO_FAILED": Stage.FAILED,
        "SENSITIVE_WORD_ERROR": Stage.FAILED,
    }
)

CALLBACK_EXCEPTION = "CALLBACK_EXCEPTION"

#: The failure code of a failed status when the record has no ``errorCode``: the code the matching
#: callback carries (PROVIDER.md section 3).
FAILURE_CODES: Mapping[str, int] = MappingProxyType(
    {
        "CREATE_TASK_FAILED": 400,
        "GENERATE_AUDIO_FAILED": 501,
        "SENSITIVE_WORD_ERROR": 400,
        CALLBACK_EXCEPTION: 500,
    }
)

#: Provider answer codes (the HTTP status, or the body's ``code``), what they mean, and whether
#: asking again later can help.
PROVIDER_ERRORS: Mapping[int, tuple[str, bool]] = MappingProxyType(
    {
        400: ("the provider refused the request as invalid", False),
        401: ("the provider refused the API key; check MUSICCALLBACK_API_KEY", False),
        403: ("the provider refused access with this API key", False),
        404: ("the provider does not know this endpoint; check MUSICCALLBACK_API_BASE_URL", False),
        405: ("the provider's rate limit is exceeded", True),
        429: ("the provider answered 429: too many requests, or no credits left", True),
        430: ("the provider says calls are too frequent (it allows about 20 per 10 s)", True),
        455: ("the provider is under maintenance", True),
    }
)


class PollError(Exception):
    """The provider could not be asked, or its answer cannot be used.

    ``retryable`` says whether asking again later may succeed (rate limits, maintenance, server
    errors, network trouble); ``retry_after`` is the provider's own hint in seconds, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


class WatchTimeout(PollError):  # noqa: N818 - reads as what happened: the watch timed out
    """The task did not end within the time a watch was given."""


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll found and did."""

    task_id: str
    #: The record-info status, upper-cased (``PENDING``, ``SUCCESS``, ...).
    status: str
    #: The event the status stands for, or ``None`` when it stands for no stage yet.
    event: CallbackEvent | None
    #: Whether the task will change no more, so polling it again is useless.
    final: bool
    #: How the event's delivery ended (``duplicate`` when a callback or poll already fired it).
    outcome: Outcome | None = None


def provider_error(code: int, msg: str = "", retry_after: float | None = None) -> PollError:
    """The :class:`PollError` for a provider answer code, with a message a person can act on."""
    if code in PROVIDER_ERRORS:
        text, retryable = PROVIDER_ERRORS[code]
    elif code >= 500:
        text, retryable = "the provider had a server error", True
    else:
        text, retryable = "the provider refused the request", False
    detail = f" ({code}{': ' + msg if msg else ''})"
    return PollError(text + detail, code=code, retryable=retryable, retry_after=retry_after)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # absent, or an HTTP date: back off by our own schedule


class ProviderClient:
    """A connection to the provider's API, kept open across the polls of a watch."""

    def __init__(
        self, api_key: str, base_url: str, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": "flask-musiccallback",
            },
            timeout=timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderClient:
        """The client an app's configuration describes; polling needs an API key."""
        if not settings.api_key:
            raise ConfigurationError(
                f"Polling needs the provider's API key: set {ConfigKeys.API_KEY}."
            )
        return cls(settings.api_key, settings.api_base_url)

    def record_info(self, task_id: str) -> dict[str, Any]:
        """The record-info answer for ``task_id``, once the provider said it succeeded."""
        try:
            response = self._http.get(RECORD_INFO_PATH, params={"taskId": task_id})
        except httpx.TimeoutException:
            raise PollError(
                f"the provider at {self.base_url} did not answer in time", retryable=True
            ) from None
        except httpx.HTTPError as exc:
            raise PollError(
                f"cannot reach the provider at {self.base_url}: {exc}", retryable=True
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        msg = body.get("msg") if isinstance(body, dict) else None
        msg = msg if isinstance(msg, str) else ""
        if not response.is_success:
            raise provider_error(response.status_code, msg, _retry_after(response))
        if not isinstance(body, dict):
            raise PollError(
                f"the provider's answer is not a JSON object (HTTP {response.status_code})"
            )
        code = body.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and code != 200:
            raise provider_error(code, msg, _retry_after(response))
        return body

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _has_audio(track: Mapping[str, Any]) -> bool:
    return bool(track.get("audioUrl") or track.get("audio_url"))


def stage_for(status: str, tracks: list[dict[str, Any]]) -> Stage | None:
    """The stage a record stands for: by its status, or by its content for CALLBACK_EXCEPTION."""
    if status != CALLBACK_EXCEPTION:
        return STATUS_STAGES.get(status)
    ready = [_has_audio(track) for track in tracks]
    if not ready:
        return Stage.FAILED
    if all(ready):
        return Stage.COMPLETE
    return Stage.FIRST if any(ready) else Stage.TEXT


def _failure_code(status: str, error_code: Any) -> int:
    try:
        code = int(error_code)
    except (TypeError, ValueError):
        code = 0
    return code if code and code != 200 else FAILURE_CODES.get(status, 500)


class _RecordResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    taskId = fields.String(load_default=None, allow_none=True)  # noqa: N815
    sunoData = fields.List(fields.Dict(), load_default=None, allow_none=True)  # noqa: N815


class _RecordDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    taskId = fields.String(load_default=None, allow_none=True)  # noqa: N815
    status = fields.String(required=True)
    response = fields.Nested(_RecordResponseSchema, load_default=None, allow_none=True)
    errorCode = fields.Raw(load_default=None, allow_none=True)  # noqa: N815
    errorMessage = fields.String(load_default=None, allow_none=True)  # noqa: N815


class RecordInfoSchema(Schema):
    """A record-info answer ``{code, msg, data: {taskId, status, response: {sunoData}, ...}}``.

    Loads into a :class:`PollResult` whose event is built from the callback body the status stands
    for, so that a persistent store keeps (and replays) a body of the same shape as a callback's.
    The record's other keys (``param``, ``operationType``, ...) are kept in that body's ``data``.
    """

    class Meta:
        unknown = EXCLUDE

    code = fields.Integer(required=True)
    msg = fields.String(load_default="", allow_none=True)
    data = fields.Nested(_RecordDataSchema, required=True)

    @post_load(pass_original=True)
    def make_result(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> PollResult:
        data: dict[str, Any] = loaded["data"]
        response: dict[str, Any] = data["response"] or {}
        task_id = data["taskId"] or response.get("taskId")
        if not task_id:
            raise ValidationError({"data": {"taskId": ["Missing task id."]}})
        status = data["status"].strip().upper()
        tracks: list[dict[str, Any]] = response.get("sunoData") or []
        stage = stage_for(status, tracks)
        if stage is None:
            return PollResult(task_id=task_id, status=status, event=None, final=False)
        failed = stage is Stage.FAILED
        message = data["errorMessage"]
        body_data = {key: value for key, value in original["data"].items() if key != "response"}
        body_data.update(callbackType="error" if failed else stage.value, task_id=task_id)
        body_data["data"] = tracks
        if failed and message:
            body_data["error"] = message
        payload = {
            "code": _failure_code(status, data["errorCode"]) if failed else 200,
            "msg": (message or status) if failed else (loaded["msg"] or status),
            "data": body_data,
        }
        return PollResult(
            task_id=task_id,
            status=status,
            event=load_callback(payload),
            final=failed or stage is Stage.COMPLETE,
        )


#: The one shared instance polls are read with.
record_info_schema = RecordInfoSchema()


def read_record(body: Mapping[str, Any], task_id: str) -> PollResult:
    """A record-info answer as a :class:`PollResult`; a :class:`PollError` says what is wrong."""
    try:
        result: PollResult = record_info_schema.load(body)
    except ValidationError as exc:
        raise PollError(
            f"the provider's answer is not a usable task record: {exc.messages}"
        ) from None
    if result.task_id != task_id:
        raise PollError(f"the provider answered about task {result.task_id}, not {task_id}")
    return result


def poll_task(app: Flask, task_id: str, *, client: ProviderClient | None = None) -> PollResult:
    """Fetch ``task_id`` once and dispatch its event, if new, through the callbacks' path.

    Raises :class:`PollError` when the provider cannot be used, ``ConfigurationError`` without an
    API key, and ``StoreUnavailable`` when the store is down (nothing was dispatched then).
    """
    state = get_state(app)
    if client is None:
        with ProviderClient.from_settings(state.settings) as own_client:
            body = own_client.record_info(task_id)
    else:
        body = client.record_info(task_id)
    result = read_record(body, task_id)
    event = result.event
    if event is None:
        return result
    family = state.extension.families.named(MUSIC_NAME)
    delivery = family.delivery(event, event.raw, {"Source": "poll"})
    if has_app_context() and current_app._get_current_object() is app:  # type: ignore[attr-defined]
        outcome = deliver(app, state, family, event, delivery)
    else:
        with app.app_context():
            outcome = deliver(app, state, family, event, delivery)
    return dataclasses.replace(result, outcome=outcome)


def watch_task(
    app: Flask,
    task_id: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    timeout: float = 3600.0,
    max_errors: int = 5,
    on_result: Callable[[PollResult], None] | None = None,
    on_retry: Callable[[PollError, float], None] | None = None,
) -> PollResult:
    """Poll every ``interval`` seconds until the task ends; return its last result.

    Errors that may pass (rate limits, maintenance, server errors, network) are retried with a
    doubling delay, never sooner than the provider's ``Retry-After``; after ``max_errors`` of them
    in a row, or any other error, the :class:`PollError` is raised. When ``timeout`` seconds pass
    first, the last error is raised if the last poll failed, else :class:`WatchTimeout`.
    """
    deadline = time.monotonic() + timeout
    errors = 0
    last: PollResult | None = None
    with ProviderClient.from_settings(get_state(app).settings) as client:
        while True:
            try:
                last = poll_task(app, task_id, client=client)
            except PollError as exc:
                errors += 1
                if not exc.retryable or errors >= max_errors:
                    raise
                delay = backoff(errors, max(interval, exc.retry_after or 0.0), MAX_BACKOFF)
                if time.monotonic() + delay > deadline:
                    raise
                if on_retry is not None:
                    on_retry(exc, delay)
            else:
                errors = 0
                if on_result is not None:
                    on_result(last)
                if last.final and last.outcome is not Outcome.RETRY:
                    return last  # a receiver error under ``retry`` is retried by the next poll
                delay = interval
                if time.monotonic() + delay > deadline:
                    raise WatchTimeout(
                        f"task {task_id} did not end within {timeout:g} s "
                        f"(last status: {last.status})"
                    )
            time.sleep(delay)
