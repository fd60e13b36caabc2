"""Reading a family's task record (PROVIDER.md section 6) as the callback it stands for.

Every family but music answers its record endpoint alike: ``{code, msg, data: {taskId,
successFlag or status, response, errorCode, errorMessage, createTime, completeTime}}``, with the
status a string or an integer and the result under ``response`` in camelCase. A family says only
what differs: which statuses mean success, failure or "not yet" (:func:`word_statuses`,
:func:`flag_statuses`), and how its result becomes its callback's ``data`` (:func:`result_at`
for a result that is one value). :func:`record_reader` makes the family's ``read_record`` from
that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from ..schemas import StatusCode, Timestamp
from .base import COMPLETE, FAILED, Record
from .envelope import SUCCESS_CODE

#: Builds a success callback's ``data`` (task id excluded) from a record's ``response`` and
#: ``data``; raises ``ValidationError`` when the record holds no result to build it from.
SuccessData = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]

#: The code a failure's callback carries when its record names none.
DEFAULT_FAILURE_CODE = 500

#: The stage of a status read by its content: ``CALLBACK_EXCEPTION`` says the provider could not
#: deliver the callback, not how the task went, so a record with its result is a success and one
#: without a failure.
BY_CONTENT = "by content"


class _RecordDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    taskId = fields.String(load_default=None, allow_none=True)  # noqa: N815
    task_id = fields.String(load_default=None, allow_none=True)
    successFlag = fields.Raw(load_default=None, allow_none=True)  # noqa: N815
    status = fields.Raw(load_default=None, allow_none=True)
    response = fields.Raw(load_default=None, allow_none=True)
    errorCode = fields.Raw(load_default=None, allow_none=True)  # noqa: N815
    errorMessage = fields.String(load_default=None, allow_none=True)  # noqa: N815
    createTime = Timestamp(load_default=None, allow_none=True)  # noqa: N815
    completeTime = Timestamp(load_default=None, allow_none=True)  # noqa: N815


class RecordSchema(Schema):
    """A record endpoint's answer, every family's: the times in any of their three forms
    (epoch milliseconds, ISO 8601 with ``Z``, ``YYYY-MM-DD HH:MM:SS``) and the status either a
    string or an integer."""

    class Meta:
        unknown = EXCLUDE

    code = StatusCode(required=True)
    msg = fields.String(load_default="", allow_none=True)
    data = fields.Nested(_RecordDataSchema, required=True)


record_schema = RecordSchema()


def status_of(value: Any) -> str | None:
    """A status as text, upper-cased: ``"success"``, ``"SUCCESS"`` and ``1`` alike are keys."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().upper()
    return text or None


def failure_code(error_code: Any, default: int = DEFAULT_FAILURE_CODE) -> int:
    """The failure code a record's ``errorCode`` gives, or ``default`` when it gives none."""
    try:
        code = int(error_code)
    except (TypeError, ValueError, OverflowError):
        return default
    return code if code and code != SUCCESS_CODE and abs(code) < 2**31 else default


def record_reader(
    statuses: Mapping[str, str | None],
    success_data: SuccessData,
    *,
    status_keys: tuple[str, ...] = ("successFlag", "status"),
    failure_data: Mapping[str, Any] | None = None,
) -> Callable[[Mapping[str, Any]], Record]:
    """A family's ``read_record``: ``statuses`` maps each status (as :func:`status_of` writes it)
    to the stage it means (:data:`BY_CONTENT`: a success if the record holds a result, else a
    failure), ``None`` for "not yet"; a status it does not list means "not yet"
    too (the provider adds some, and asking again is harmless). ``success_data`` builds a
    success's ``data``, raising ``ValidationError`` when the record has no result;
    ``failure_data`` is what a failure's ``data`` holds besides the task id
    (the family's result key set to ``null``, as its failure callbacks send it)."""

    def read_record(answer: Mapping[str, Any]) -> Record:
        loaded = record_schema.load(answer)
        data: dict[str, Any] = loaded["data"]
        original: Mapping[str, Any] = answer["data"]
        response = data["response"] if isinstance(data["response"], dict) else {}
        task_id = data["taskId"] or data["task_id"] or response.get("taskId")
        if not task_id:
            raise ValidationError({"data": {"taskId": ["Missing task id."]}})
        status = next(
            (status_of(data[key]) for key in status_keys if status_of(data[key]) is not None), None
        )
        if status is None:
            raise ValidationError({"data": {status_keys[0]: ["Missing status."]}})
        stage = statuses.get(status)
        if stage is None:
            return Record(task_id=task_id, status=status, body=None, final=False)
        if stage != FAILED:
            try:
                result = success_data(response, original)
            except ValidationError:
                if stage != BY_CONTENT:
                    raise
            else:
                body = {
                    "code": SUCCESS_CODE,
                    "msg": loaded["msg"] or status,
                    "data": {**result, "taskId": task_id},
                }
                return Record(task_id=task_id, status=status, body=body, final=True)
        message = data["errorMessage"] or status
        body = {
            "code": failure_code(data["errorCode"]),
            "msg": message,
            "data": {**(failure_data or {}), "taskId": task_id, "errorMessage": message},
        }
        return Record(task_id=task_id, status=status, body=body, final=True)

    return read_record


# What families hand record_reader alike: their statuses, and a result that is one value.


def word_statuses(*failures: str) -> dict[str, str | None]:
    """The statuses a record spells out, as every family's but music's and MIDI's does:
    ``PENDING`` not yet, ``SUCCESS`` complete, ``CREATE_TASK_FAILED`` and the family's own
    ``failures`` (``GENERATE_WAV_FAILED``, ...) failed, ``CALLBACK_EXCEPTION`` by content."""
    return {
        "PENDING": None,
        "SUCCESS": COMPLETE,
        "CREATE_TASK_FAILED": FAILED,
        **dict.fromkeys(failures, FAILED),
        "CALLBACK_EXCEPTION": BY_CONTENT,
    }


def flag_statuses(
    *, failed: tuple[int, ...], pending: tuple[int, ...] = (0,)
) -> dict[str, str | None]:
    """The statuses of a record whose ``successFlag`` is an integer: ``1`` complete, ``failed``
    failed, ``pending`` not yet. Families number their failures differently (MIDI's ``2`` is a
    failure, cover's is "generating"), so each names its own."""
    return {
        **dict.fromkeys(map(str, pending), None),
        "1": COMPLETE,
        **dict.fromkeys(map(str, failed), FAILED),
    }


def result_at(
    key: str, *, what: str, sent_as: str | None = None, response_only: bool = False
) -> SuccessData:
    """The ``success_data`` of a family whose result is one value: the record's
    ``response.<key>``, else (unless ``response_only``) its ``data.<key>``, as the callback's
    ``data.<sent_as>`` (``key`` unless given). ``what`` names the result in the error a record
    without it raises."""
    callback_key = sent_as or key
    message = f"The record holds no {what}."

    def success_data(response: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        value = response.get(key) or (None if response_only else data.get(key))
        if not value:
            raise ValidationError(message)
        return {callback_key: value}

    return success_data
