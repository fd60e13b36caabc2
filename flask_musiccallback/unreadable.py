"""Bodies no family reads: kept, answered 200, and made visible (API.md section 9).

The provider adds families and renames keys every few months (PROVIDER.md section 7). A body that
arrives authenticated but that no installed family reads is still the provider's result:
refusing it makes the provider retry three times and then drop it for good. So, once a source
check has passed, it is answered ``{"status": "kept"}``, announced with ``callback_unreadable``,
logged once per distinct body, and kept by a persistent store in the ``unreadable`` state under a
key made from the body itself, so that a redelivery keeps it once. ``replay --unreadable`` reads
the kept bodies again with the families installed by then (:mod:`.dispatch.replay`).

Without any source check the endpoint stays strict and refuses such a body (422): an open
endpoint must not store whatever anyone posts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .dispatch import send_isolated
from .families.base import FAMILY_HEADER, find_task_id
from .signals import callback_unreadable
from .stores.base import MAX_TASK_ID_LENGTH, Delivery, PersistentStore, unreadable_stage

if TYPE_CHECKING:
    from flask import Flask

    from .state import MusicCallbackState

logger = logging.getLogger("flask_musiccallback")

#: The task id a kept body is filed under when it has none a store can key.
NO_TASK_ID = "-"

def unreadable_key(body: str, payload: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(task_id, stage)`` a kept body is filed under: its task id when it has a usable
    one (so ``list --task-id`` finds it), and the stage the store derives from its text."""
    task_id = find_task_id(payload)
    if task_id is None or len(task_id) > MAX_TASK_ID_LENGTH or not task_id.isprintable():
        task_id = NO_TASK_ID
    return task_id, unreadable_stage(body.encode("utf-8", "surrogatepass"))


def keep_unreadable(
    app: Flask,
    state: MusicCallbackState,
    payload: Mapping[str, Any],
    body: str,
    errors: Mapping[str, Any],
    *,
    family: str | None,
    named: str | None,
    headers: Mapping[str, str],
) -> None:
    """Announce, log and keep one body that no family reads.

    ``family`` is the family that tried to read it (``None`` when none did), ``named`` the
    ``family=`` of its callback URL, kept for the replay. Raises ``StoreUnavailable`` when a
    persistent store cannot keep it: then the endpoint answers 503 and the provider sends it again.
    """
    task_id, stage = unreadable_key(body, payload)
    store = state.store
    if isinstance(store, PersistentStore):
        kept_headers = {**headers, FAMILY_HEADER: named} if named else dict(headers)
        delivery = Delivery(
            task_id=task_id,
            stage=stage,
            payload=payload,
            received_at=datetime.now(timezone.utc),
            headers=kept_headers,
            body=body,
        )
        store.keep_unreadable(delivery, _describe(family, errors))
    if state.unreadable_logged.first(stage):
        logger.warning(
            "Kept a callback no family reads (task %s, %s): %s",
            task_id,
            f"read as {family}" if family else "no family matched",
            _describe(None, errors),
        )
    send_isolated(
        callback_unreadable, app, None, payload=payload, errors=dict(errors), family=family
    )


def _describe(family: str | None, errors: Mapping[str, Any]) -> str:
    prefix = f"{family}: " if family else ""
    return prefix + str(dict(errors))
