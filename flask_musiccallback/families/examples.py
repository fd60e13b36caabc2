"""Pieces every family's :attr:`~.base.Family.example` builds realistic bodies from.

Production code, not test code: ``flask musiccallback simulate``, the example app and the testing
kit all send these bodies through an app's real endpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from .base import FAILED, Example
from .envelope import SUCCESS_CODE

#: The host of the media links in simulated callbacks: a reserved name (RFC 2606) that never
#: resolves, so that nothing simulated is mistaken for, or fetched from, a real server.
SIMULATED_MEDIA_HOST = "cdn.example.invalid"

#: Where the media links of simulated callbacks start, unless ``MUSICCALLBACK_SIMULATED_MEDIA_URL``
#: moves them (:func:`~flask_musiccallback.simulate.rebase_media`).
SIMULATED_MEDIA_ORIGIN = f"https://{SIMULATED_MEDIA_HOST}"

#: The resellers whose spellings the examples follow.
RESELLERS = ("sunoapi", "kie")

#: The code of a simulated failure unless one is asked for.
FAILURE_CODE = 500

#: Builds a family's example ``data``, task id included, from the stage, the task id, the
#: reseller and how many results; raises ``ValueError`` for a stage the family does not have.
ExampleData = Callable[[str, str, str, int], dict[str, Any]]


def media_url(task_id: str, ext: str, name: str = "") -> str:
    """A media link of a simulated task, stable for one task and name."""
    key = uuid.uuid5(uuid.NAMESPACE_URL, f"{task_id}/{name}")
    return f"{SIMULATED_MEDIA_ORIGIN}/{key}{'-' + name if name else ''}.{ext}"


def task_id_key(reseller: str) -> str:
    """Where each reseller puts the task id in ``data`` of most families: kie.ai snake-cases it."""
    return "task_id" if reseller == "kie" else "taskId"


def envelope_example(
    stage: str,
    data: dict[str, Any] | None,
    *,
    code: int | None,
    msg: str | None,
    success: str,
    failure: str,
    failure_code: int = FAILURE_CODE,
) -> dict[str, Any]:
    """``{code, msg, data}`` for ``stage``: a failure's code unless one is asked for, and the
    message each reseller sends with it."""
    failed = stage == FAILED
    if code is None:
        code = failure_code if failed else SUCCESS_CODE
    if msg is None:
        msg = failure if failed or code != SUCCESS_CODE else success
    return {"code": code, "msg": msg, "data": data}


def example_from(
    data: ExampleData,
    *,
    success: str,
    failure: str,
    failure_code: int = FAILURE_CODE,
    count: int = 2,
) -> Example:
    """A family's :attr:`~.base.Family.example` whose bodies are :func:`envelope_example` over
    the ``data`` that ``data`` builds, so that a family says only what differs: what its ``data``
    holds, its messages and its failure code. ``count`` is how many results a body carries when
    none is asked for."""
    default_count = count

    def example(
        stage: str,
        *,
        task_id: str,
        code: int | None = None,
        msg: str | None = None,
        reseller: str = "sunoapi",
        count: int = default_count,
    ) -> dict[str, Any]:
        return envelope_example(
            stage,
            data(stage, task_id, reseller, count),
            code=code,
            msg=msg,
            success=success,
            failure=failure,
            failure_code=failure_code,
        )

    return example
