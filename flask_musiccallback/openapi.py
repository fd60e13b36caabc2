"""The OpenAPI 3.1 document of an app's callback endpoint, generated from the schemas that parse it.

The request body comes from every registered family's schema (:mod:`.families`) through
apispec's marshmallow plugin, so the document cannot drift from what the endpoint accepts; what
marshmallow cannot say (the camelCase aliases the music ``pre_load`` hook folds, the two forms of
``createTime``) is added here, next to the generation. The security schemes, the responses and
the server follow the app's settings: the document states what this app answers, never a secret.
Nothing here runs on the request path.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from types import MappingProxyType
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields, validate

from .config import Settings
from .families import FAMILY_ARG, MUSIC, Families, Family
from .families.envelope import Text
from .redact import TOKEN_PARAM
from .schemas import TRACK_ALIASES, Timestamp
from .state import get_state
from .verify import SIGNATURE_HEADER, TIMESTAMP_HEADER, Refusal

OPENAPI_VERSION = "3.1.0"
OPERATION_ID = "receiveMusicCallback"
TOKEN_SCHEME = "callbackToken"  # noqa: S105 - the scheme's name, not a secret
SIGNATURE_SCHEME = "webhookSignature"
TIMESTAMP_SCHEME = "webhookTimestamp"

#: When each refusal of API.md section 5 is answered.
REFUSALS: Mapping[Refusal, str] = MappingProxyType(
    {
        Refusal.INVALID_JSON: "The body is not JSON, not valid UTF-8, or not a JSON object.",
        Refusal.UNAUTHORIZED: (
            "Missing or wrong token or signature, or a signed timestamp outside the tolerance. "
            "With an HMAC key set, a malformed body is answered with this too."
        ),
        Refusal.FORBIDDEN: "The caller's address is outside the IP allow-list.",
        Refusal.TOO_LARGE: "The body is over the size limit; it is not read whole.",
        Refusal.INVALID_PAYLOAD: (
            "JSON that is not a callback: no task id, or a value of wrong type."
        ),
        Refusal.UNEXPECTED_TASK: (
            "A callback of a task never registered with `expect` (MUSICCALLBACK_EXPECTED_ONLY)."
        ),
        Refusal.UNVERIFIED: (
            "The provider's record of the task contradicts the callback "
            "(MUSICCALLBACK_VERIFY_BY_FETCH)."
        ),
    }
)


class AcceptedAnswerSchema(Schema):
    """The answer to a delivery the provider must not send again."""

    status = fields.String(
        required=True,
        validate=validate.OneOf(["received", "duplicate", "kept"]),
        metadata={
            "description": "`received` for a new delivery, `duplicate` for a repeat, `kept` for "
            "an authenticated body no family reads (kept to be read again after an upgrade)."
        },
    )


class RejectedAnswerSchema(Schema):
    """The answer to a refused request."""

    status = fields.String(required=True, validate=validate.OneOf(["rejected"]))
    reason = fields.String(
        required=True, validate=validate.OneOf([str(refusal) for refusal in Refusal])
    )
    errors = fields.Dict(
        metadata={"description": "Field by field, what could not be read (422 only)."}
    )


class RetryAnswerSchema(Schema):
    """The answer that asks the provider to deliver again later."""

    status = fields.String(required=True, validate=validate.OneOf(["retry"]))


def _timestamp_property(converter: Any, field: Any, ret: dict[str, Any], **kwargs: Any) -> Any:
    """``createTime`` takes two forms the marshmallow field cannot declare by itself."""
    if not isinstance(field, Timestamp):
        return {}
    forms: list[dict[str, Any]] = [
        {"type": "number", "description": "Epoch milliseconds (real traffic)."},
        {"type": "string", "description": "A date-time, e.g. `2025-01-01 00:00:00`."},
    ]
    if field.allow_none:
        forms.append({"type": "null"})
    return {"anyOf": forms}


def _path(url_rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A Flask rule as an OpenAPI path template and its path parameters."""
    names = re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", url_rule)
    path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", url_rule)
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in names
    ]
    return path, parameters


def _package_version() -> str:
    try:
        return version("flask-musiccallback")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _security(spec: APISpec, settings: Settings) -> list[dict[str, list[str]]]:
    """Declare the configured source checks; all of them apply to every request together."""
    requirement: dict[str, list[str]] = {}
    if settings.tokens:
        spec.components.security_scheme(
            TOKEN_SCHEME,
            {
                "type": "apiKey",
                "in": "query",
                "name": TOKEN_PARAM,
                "description": "The shared secret of `MUSICCALLBACK_TOKEN`, included by "
                "`callback_url()` in the URL given to the provider.",
            },
        )
        requirement[TOKEN_SCHEME] = []
    if settings.hmac_keys:
        spec.components.security_scheme(
            SIGNATURE_SCHEME,
            {
                "type": "apiKey",
                "in": "header",
                "name": SIGNATURE_HEADER,
                "description": "base64(HMAC-SHA256(key, task_id + \".\" + timestamp)), with a key "
                "of `MUSICCALLBACK_HMAC_KEY` and the task id of the body.",
            },
        )
        spec.components.security_scheme(
            TIMESTAMP_SCHEME,
            {
                "type": "apiKey",
                "in": "header",
                "name": TIMESTAMP_HEADER,
                "description": "Unix seconds; refused when more than "
                f"{settings.timestamp_tolerance} s away from the receiver's clock.",
            },
        )
        requirement[SIGNATURE_SCHEME] = []
        requirement[TIMESTAMP_SCHEME] = []
    return [requirement] if requirement else []


def _json(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema, "example": example}}


def _responses(settings: Settings) -> dict[str, Any]:
    """Every answer this app can give, each with the exact body API.md fixes."""
    refused = {
        Refusal.UNAUTHORIZED: bool(settings.tokens or settings.hmac_keys),
        Refusal.FORBIDDEN: bool(settings.allowed_networks),
        # Behind a source check, a body no family reads is kept (200), never refused.
        Refusal.INVALID_PAYLOAD: not settings.secured,
        Refusal.UNEXPECTED_TASK: settings.expected_only,
        Refusal.UNVERIFIED: settings.verify_by_fetch,
    }
    kept = " or kept (a body no family reads)" if settings.secured else ""
    responses: dict[str, Any] = {
        "200": {
            "description": f"Handled (or queued), a duplicate{kept}: the provider must not retry.",
            "content": _json(
                {"$ref": "#/components/schemas/AcceptedAnswer"}, {"status": "received"}
            ),
        }
    }
    # Refusals that share a status (403: forbidden, unexpected_task) are one answer of it.
    by_status: dict[int, list[Refusal]] = {}
    for reason in REFUSALS:
        if refused.get(reason, True):
            by_status.setdefault(reason.status, []).append(reason)
    for status, reasons in by_status.items():
        first = reasons[0]
        named = [str(reason) for reason in reasons]
        reason_schema = {"const": named[0]} if len(named) == 1 else {"enum": named}
        schema: dict[str, Any] = {
            "allOf": [
                {"$ref": "#/components/schemas/RejectedAnswer"},
                {"properties": {"reason": reason_schema}},
            ]
        }
        example: dict[str, Any] = {"status": "rejected", "reason": str(first)}
        if first is Refusal.INVALID_PAYLOAD:
            schema["allOf"].append({"required": ["errors"]})
            example["errors"] = {"data": {"task_id": ["Missing task id."]}}
        description = " Or: ".join(
            REFUSALS[reason] if len(reasons) == 1 else f"`{reason}`: {REFUSALS[reason]}"
            for reason in reasons
        )
        responses[str(status)] = {"description": description, "content": _json(schema, example)}
    fetching = ", or the provider cannot confirm it" if settings.verify_by_fetch else ""
    responses["503"] = {
        "description": "A receiver raised under the `retry` policy, or the store is unreachable"
        f"{fetching}: the provider should deliver again.",
        "content": _json({"$ref": "#/components/schemas/RetryAnswer"}, {"status": "retry"}),
    }
    return responses


def _add_aliases(document: dict[str, Any], music: str) -> None:
    """Document each camelCase alias of a track field as a property of its own."""
    if music != _schema_name(MUSIC):
        return  # an extension whose default family is not the music one
    properties = document["components"]["schemas"]["Track"]["properties"]
    for alias, target in TRACK_ALIASES.items():
        if alias in properties or target not in properties:
            continue
        prop = copy.deepcopy(properties[target])
        prop["description"] = f"Read as `{target}`."
        properties[alias] = prop


def _schema_name(family: Family) -> str:
    return f"{family.name.title().replace('_', '').replace('-', '')}Callback"


def _family_parameter(families: Families) -> dict[str, Any]:
    names = sorted(family.name for family in families)
    return {
        "name": FAMILY_ARG,
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": names},
        "description": "The family the task's callbacks belong to, as "
        "`callback_url(family=...)` puts it: the body is read by that family whatever it looks "
        "like. Without it, the body's keys decide, then the family the task was registered with "
        "(`expect`), and a failure nothing places is read as music.",
    }


def build_document(settings: Settings, families: Families) -> dict[str, Any]:
    """The OpenAPI document for an app configured with ``settings`` reading ``families``."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Music generation callback",
        version=_package_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "The endpoint the music generation API calls back (`callBackUrl`). "
            "Source checks run first and in order: address (403), token (401), signature "
            "timestamp (401), before the body is read; then the size limit (413), the JSON "
            "(400), the signature over the task id (401), the payload (422)."
        },
        **({"servers": [{"url": settings.external_url}]} if settings.external_url else {}),
    )
    plugin.converter.add_attribute_function(_timestamp_property)  # type: ignore[union-attr]
    plugin.map_to_openapi_type(Text, fields.String)  # type: ignore[no-untyped-call]
    bodies = []
    for family in families:
        name = _schema_name(family)
        spec.components.schema(name, schema=family.schema)
        bodies.append({"$ref": f"#/components/schemas/{name}"})
    spec.components.schema(
        "Callback",
        component={
            "anyOf": bodies,
            "description": "One callback of any family: "
            + ", ".join(family.name for family in families)
            + ".",
        },
    )
    spec.components.schema("AcceptedAnswer", schema=AcceptedAnswerSchema)
    spec.components.schema("RejectedAnswer", schema=RejectedAnswerSchema)
    spec.components.schema("RetryAnswer", schema=RetryAnswerSchema)
    security = _security(spec, settings)
    path, parameters = _path(settings.url_rule)
    operation: dict[str, Any] = {
        "operationId": OPERATION_ID,
        "summary": "Receive one callback of a music generation task, of any family",
        "requestBody": {
            "required": True,
            "description": f"One JSON object in UTF-8, at most {settings.max_content_length} "
            "bytes. The task id is read from `data.task_id`, `data.taskId`, `task_id` or "
            "`taskId`, in that order. Unknown keys are accepted and kept in the event's raw "
            "payload; camelCase spellings of track fields are read as the same fields.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Callback"}}},
        },
        "responses": _responses(settings),
        "security": security,
    }
    if settings.allowed_networks:
        operation["description"] = "Only callers inside the configured IP allow-list are served."
    operation["parameters"] = [*parameters, _family_parameter(families)]
    spec.path(path=path, operations={"post": operation})
    document = spec.to_dict()
    _add_aliases(document, _schema_name(families.default))
    return document


def openapi_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s endpoint, as a JSON-ready dict."""
    state = get_state(app)
    return build_document(state.settings, state.extension.families)
