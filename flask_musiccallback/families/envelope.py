"""What every family's body shares: the ``{code, msg, data}`` envelope, the task id wherever a
reseller puts it, blank strings read as "not there", and ``code`` deciding failure.

The families other than music build their schemas from these pieces, so that the envelope is
read one way everywhere: ``code`` as a bounded whole number (numeric text too), the task id at
``data.task_id``, ``data.taskId`` or the top level (PROVIDER.md section 4), ``raw`` always the
body as received, and a success refused when it lacks the result it reports (:func:`outcome`).
Their ``detect`` functions are built here too (:func:`keys_detector`), since every callback is
asked them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from ..schemas import StatusCode
from .base import COMPLETE, FAILED

#: The code of a success; any other is a failure, whatever else the body says.
SUCCESS_CODE = 200


class Text(fields.Field[str | None]):
    """An optional string, with ``""`` read as ``None``: the provider sends blanks for "not yet".

    A field of its own rather than a ``String`` whose result is blanked afterwards, so that its
    type says it may be ``None`` (the OpenAPI document maps it to a string).
    """

    default_error_messages = {"invalid": "Not a valid string."}  # noqa: RUF012 - merged per class

    def __init__(self, description: str | None = None, **kwargs: Any) -> None:
        metadata = {"description": description} if description else {}
        kwargs.setdefault("load_default", None)
        super().__init__(allow_none=True, metadata=metadata, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str | None:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return value or None


class DataSchema(Schema):
    """The envelope's ``data``, as far as every family reads it: the task id, both spellings."""

    class Meta:
        unknown = EXCLUDE

    task_id = Text("The task id (kie.ai, and most sunoapi.org families).")
    taskId = Text("The task id, as other bodies spell it.")  # noqa: N815


class EnvelopeSchema(Schema):
    """``{code, msg, data}``; a family's schema subclasses it and nests its own ``data``."""

    class Meta:
        unknown = EXCLUDE

    code = StatusCode(
        required=True, metadata={"description": "200 is success; any other code is a failure."}
    )
    msg = fields.String(load_default="", allow_none=True, metadata={"description": "Status text."})
    task_id = Text("The task id, where a body puts it at the top level (sunoapi.org's MIDI).")
    taskId = Text("The task id, top-level spelling.")  # noqa: N815


def task_id_of(loaded: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The task id of a loaded envelope, wherever it was; ``ValidationError`` when nowhere."""
    task_id = data.get("task_id") or data.get("taskId") or loaded["task_id"] or loaded["taskId"]
    if not task_id:
        raise ValidationError({"data": {"task_id": ["Missing task id."]}})
    return str(task_id)


def common_fields(
    loaded: Mapping[str, Any], original: Mapping[str, Any], data: Mapping[str, Any], stage: str
) -> dict[str, Any]:
    """The fields every event has (:class:`~flask_musiccallback.events.FamilyEvent`), read from
    a loaded envelope; ``original`` is the body as received, kept as ``raw``."""
    return {
        "task_id": task_id_of(loaded, data),
        "stage": stage,
        "code": loaded["code"],
        "msg": loaded["msg"] or "",
        "raw": MappingProxyType(original) if isinstance(original, dict) else original,
        "received_at": datetime.now(timezone.utc),
    }


def outcome(code: int, *, has_result: bool, at: str, missing: str, failed: bool = False) -> str:
    """The stage of a family whose task ends once: ``failed`` for a ``code`` other than 200 (or
    when ``failed`` says so, as lyrics' ``callbackType`` may), else ``complete``.

    A success must hold the result it reports: without it (``has_result`` false) there is
    nothing for the host, so it is refused, as ``ValidationError`` at ``data.<at>`` saying
    ``missing``, rather than dispatched as a success or guessed to be a failure.
    """
    if failed or code != SUCCESS_CODE:
        return FAILED
    if not has_result:
        raise ValidationError({"data": {at: [missing]}})
    return COMPLETE


def first_value(keys: Iterable[str], *places: Mapping[str, Any]) -> Any:
    """The first value given (not ``None``, blank or empty) under one of ``keys``, looked for in
    each of ``places`` in turn; ``None`` when none is. A result has several spellings and
    places (``data`` or ``data.response``), and the first that holds it is the one read."""
    for place in places:
        for key in keys:
            value = place.get(key)
            if value:
                return value
    return None


def data_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The body's ``data`` when it is an object, else an empty mapping: for ``detect``, which
    runs before validation on anything that parsed as JSON."""
    data = body.get("data")
    return data if isinstance(data, dict) else _EMPTY


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def has_any(data: Mapping[str, Any], keys: Iterable[str]) -> bool:
    """Whether ``data`` has one of ``keys``, whatever its value (a failure sends them ``null``).

    For a ``detect`` that asks more than :func:`keys_detector` does, and so is asked of every
    callback too: an ``in`` per key, which for a family's few keys costs less than a set
    operation (a method call and an iterator) or ``any`` over a generator.
    """
    for key in keys:  # noqa: SIM110 - ``any`` over a generator costs about four times as much
        if key in data:
            return True
    return False


def keys_detector(*keys: str) -> Callable[[Mapping[str, Any]], bool]:
    """A family's ``detect``: whether the body's ``data`` has one of ``keys``, whatever its value
    (a failure sends them ``null``).

    Every callback is asked it, so the test is one function of its own, not calls to
    :func:`data_of` and :func:`has_any`; and an ``in`` per key, which for a family's one or two
    keys costs less than a set operation. A single key (cover's, MIDI's) is tested without a
    loop, as cheaply as a hand-written ``key in data``.
    """
    if len(keys) == 1:
        (key,) = keys

        def has_key(body: Mapping[str, Any]) -> bool:
            data = body.get("data")
            return isinstance(data, dict) and key in data

        has_key.__doc__ = f"``{key}`` at ``data``, whatever its value."
        return has_key

    def has_a_key(body: Mapping[str, Any]) -> bool:
        data = body.get("data")
        if isinstance(data, dict):
            for key in keys:
                if key in data:
                    return True
        return False

    has_a_key.__doc__ = f"One of ``{'``, ``'.join(keys)}`` at ``data``, whatever its value."
    return has_a_key
