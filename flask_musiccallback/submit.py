"""Submitting a task through the extension: the one moment the host knows everything the
receiver needs, so the one place to record it.

Routing a body that names no family and reconciling a task that never called back both depend on
the host having said what it submitted (``callback_url(family=...)`` and ``expect``). A host that
submits with its own HTTP code can forget either; :func:`submit_task` does the three steps as one:
it puts the callback URL, with the token and the family, into the payload; posts it; and registers
the task the answer names. Nothing is registered unless the provider created the task.

Which family a submission belongs to follows from its path: each family's endpoints live under
the folder of its record endpoint (``/api/v1/wav/generate`` and ``/api/v1/wav/record-info``), so
the families themselves say it, and a family added later is found the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from .families import Families, Family
from .provider import ProviderClient, SubmitError
from .state import get_state
from .stores.base import StoreUnavailable

logger = logging.getLogger("flask_musiccallback")

#: The payload key the provider reads the callback URL from.
CALLBACK_FIELD = "callBackUrl"

#: Endpoints that spell the callback URL's key otherwise (by path).
CALLBACK_FIELD_AT: Mapping[str, str] = {"/api/v1/voice/regenerate": "calBackUrl"}

#: Every spelling of the key: a payload holding any of them brings its own URL.
CALLBACK_FIELDS = frozenset({CALLBACK_FIELD, *CALLBACK_FIELD_AT.values()})


def _folder(record_path: str) -> str:
    return record_path.rsplit("/", 1)[0]


def _endpoint(path: str) -> str:
    """``path`` as the provider's endpoint: one leading slash, no trailing one, no query."""
    return "/" + path.split("?", 1)[0].strip("/")


def submit_folders(families: Families) -> dict[str, str]:
    """Each registered family's endpoint folder (its record endpoint's), to its name: the table
    :func:`family_for_path` reads."""
    return {
        _folder(family.record_path): family.name
        for family in families
        if family.record_path is not None
    }


def family_for_path(families: Families, path: str) -> Family:
    """The family whose endpoints ``path`` is one of: the one with the longest endpoint folder
    that holds it. ``LookupError`` when none does, saying to name the family."""
    path = _endpoint(path)
    found = [
        (folder, name)
        for folder, name in submit_folders(families).items()
        if path == folder or path.startswith(folder + "/")
    ]
    if not found:
        raise LookupError(
            f"No family's endpoints are at {path}; pass family= (one of: "
            f"{', '.join(family.name for family in families)})."
        )
    return families.named(max(found, key=lambda pair: len(pair[0]))[1])


def callback_field(path: str) -> str:
    """The payload key of the callback URL for the endpoint at ``path``."""
    return CALLBACK_FIELD_AT.get(_endpoint(path), CALLBACK_FIELD)


def task_id_of(answer: Mapping[str, Any]) -> str:
    """The task id a submission's answer names (``data.taskId``, or ``data.task_id``)."""
    data = answer.get("data")
    if isinstance(data, Mapping):
        for key in ("taskId", "task_id"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    raise SubmitError(
        "the provider's answer names no task id (data.taskId); nothing was registered"
    )


def submit_task(
    app: Flask,
    path: str,
    payload: Mapping[str, Any],
    *,
    family: str | None = None,
    client: ProviderClient | None = None,
) -> str:
    """Post ``payload`` to the provider's ``path`` with this app's callback URL, register the
    task it created, and return its id.

    The callback URL (token and family included) is added under the key the endpoint reads,
    unless the payload has one of its own. Raises :class:`~.provider.SubmitError` when the
    provider did not create the task (nothing is registered then), ``LookupError`` for a family
    that is not registered or a path whose family cannot be told, and ``ConfigurationError``
    without an API key. A store that cannot take the registration does not lose the task: it is
    registered by the write-back once the store answers, and the id is returned.
    """
    state = get_state(app)
    extension = state.extension
    kind = extension.families.named(family) if family else family_for_path(extension.families, path)
    body = dict(payload)
    if not CALLBACK_FIELDS & body.keys():
        body[callback_field(path)] = extension.callback_url(family=kind.name)
    if client is None:
        with ProviderClient.from_settings(state.settings, needed_for="Submitting") as own:
            answer = own.submit(path, body)
    else:
        answer = client.submit(path, body)
    task_id = task_id_of(answer)

    def register() -> None:
        state.store.expect(task_id, kind.name)

    try:
        register()
    except StoreUnavailable as exc:
        logger.warning(
            "Cannot register submitted task %s now; registering it in the background: %s",
            task_id,
            exc,
        )
        state.write_back.add_for_task(register, "the registration", task_id)
    return task_id
