"""The callback endpoint: the whole life of a callback, top to bottom.

1. verify the source cheaply, before the body is read: address, token, signature timestamp;
2. read the body within the size limit, and parse it as a JSON object;
3. verify the signature, which needs the task id from the body, and that it came with no other
   body; under ``MUSICCALLBACK_EXPECTED_ONLY``, that the task was expected;
4. find its family (the callback URL's ``family=``, its keys, the task's registration) and
   validate the payload into an event with that family's schema;
5. under ``MUSICCALLBACK_VERIFY_BY_FETCH``, confirm it against the provider's record
   (:mod:`.confirm`);
6. claim it in the store and dispatch the signals (:func:`~.dispatch.deliver`), or, for an
   authenticated body no family reads, keep it (:mod:`.unreadable`);
7. answer with one of the fixed bodies of the public contract.

Every refusal is a :class:`~.verify.Rejected` raised by a step and answered in one place, so no
input reaches Flask's 500 handler.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, request
from marshmallow import ValidationError
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from . import telemetry
from .confirm import confirm
from .dispatch import Outcome, send_isolated
from .dispatch.job import deliver_claimed
from .families import FAMILY_ARG, Family, find_task_id
from .families.base import Unreadable, registered_family
from .provider import PollError
from .redact import REDACTED
from .signals import callback_rejected
from .state import EXTENSION_NAME, MusicCallbackState
from .stores.base import ClaimResult, StoreUnavailable
from .stores.tasks import TaskRecord
from .unreadable import keep_unreadable
from .verify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Refusal,
    Rejected,
    check_address,
    check_expected,
    check_one_body,
    check_signature,
    check_token,
    signed_timestamp,
    unauthorized,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger("flask_musiccallback")

ENDPOINT = "receive"

#: Headers a persistent store keeps with a delivery; the signature is kept redacted.
KEPT_HEADERS = ("Content-Type", "User-Agent", TIMESTAMP_HEADER, SIGNATURE_HEADER, "X-Forwarded-For")

# A ``\uD800``-``\uDFFF`` escape: the only way a lone surrogate gets into decoded JSON text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# The answers never vary, so they are serialised once.
_ANSWERS: dict[Outcome, tuple[bytes, int]] = {
    Outcome.RECEIVED: (_body({"status": "received"}), 200),
    Outcome.DUPLICATE: (_body({"status": "duplicate"}), 200),
    Outcome.RETRY: (_body({"status": "retry"}), 503),
    Outcome.KEPT: (_body({"status": "kept"}), 200),
}


def _answer(body: bytes, status: int) -> Response:
    return current_app.response_class(body, status=status, mimetype="application/json")


def _reject(app: Flask, rejected: Rejected, span: Span) -> Response:
    errors = dict(rejected.errors)
    telemetry.rejected(str(rejected.reason))
    span.set_attribute(telemetry.OUTCOME_ATTRIBUTE, "rejected")
    span.set_attribute(telemetry.REASON_ATTRIBUTE, str(rejected.reason))
    send_isolated(
        callback_rejected, app, reason=str(rejected.reason), errors=errors, status=rejected.status
    )
    body: dict[str, Any] = {"status": "rejected", "reason": str(rejected.reason)}
    if rejected.reason is Refusal.INVALID_PAYLOAD:
        body["errors"] = errors
    return _answer(_body(body), rejected.status)


def read_payload(limit: int) -> tuple[dict[str, Any], str]:
    """The body as a JSON object, and as text, read no further than ``limit`` bytes.

    A declared length over the limit is refused before reading. A chunked body is read through
    Werkzeug's limited stream, which stops at its maximum without saying whether more was coming;
    reading one byte past the limit tells a body at the limit from a longer one, which must be
    refused rather than parsed cut short.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise Rejected(Refusal.TOO_LARGE)
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise Rejected(Refusal.TOO_LARGE) from None
    except ClientDisconnected:
        raise Rejected(Refusal.INVALID_JSON) from None
    if len(body) > limit:
        raise Rejected(Refusal.TOO_LARGE)
    return parse_json_object(body)


#: How deeply a body may nest. Real callbacks nest six levels at most (MIDI notes); a body that
#: Python's parser can just read near its recursion limit would fail later, when a store, a task
#: queue or a receiver serialises it again, deeper in the stack. 128 is serde_json's limit too.
MAX_DEPTH = 128


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


#: ``json.loads`` without ``NaN`` and ``Infinity``; built once, as ``json.loads`` builds its own.
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def parse_json_object(body: bytes) -> tuple[dict[str, Any], str]:
    """Parse a body as one JSON object of valid Unicode, or refuse it as ``invalid_json``.

    Returns the object and the text it was parsed from, which a persistent store keeps as it is.

    JSON on the network is UTF-8 (RFC 8259), so the body is decoded strictly here instead of
    letting :func:`json.loads` guess an encoding and pass surrogates through. An escaped lone
    surrogate (``"\\ud800"``) is still valid JSON syntax but no valid text: it would fail later,
    wherever the task id or a title is encoded (the HMAC, a database, a receiver's log), so it
    is refused here too (I-JSON, RFC 7493), as is nesting deeper than :data:`MAX_DEPTH`, and
    ``NaN`` and ``Infinity``, which Python's parser reads but JSON has not (a database's JSON
    column refuses them, so a store could never keep such a delivery). The surrogate check is one
    regular-expression search (faster than a substring test for ``\\u``, which the many ``\\n``
    of lyrics slow down), and encodes the payload again only for a body with surrogate escapes
    (real traffic has them in pairs, for emoji); the depth check walks the parsed values once.
    """
    try:
        text = body.decode("utf-8-sig")
        payload = _DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise Rejected(Refusal.INVALID_JSON) from None
    if not isinstance(payload, dict):
        raise Rejected(Refusal.INVALID_JSON)
    if _deeper_than(payload, MAX_DEPTH):
        raise Rejected(Refusal.INVALID_JSON)
    return payload, text


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels.

    Level by level, so any depth is safe and a deep body stops the walk at ``limit``. It visits
    each value once: cheaper than counting brackets in the text, which costs per byte, and a
    payload has far fewer values than bytes (a few µs for a real callback).
    """
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
        depth += 1
    return False


def _messages(exc: ValidationError) -> dict[str, Any]:
    messages = exc.messages
    return messages if isinstance(messages, dict) else {"_schema": messages}


def _environ_key(header: str) -> str:
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


#: Each kept header with the WSGI environ key it arrives under, looked up once.
_KEPT_ENVIRON = tuple((name, _environ_key(name)) for name in KEPT_HEADERS)


def kept_headers() -> dict[str, str]:
    """The request headers a persistent store records, with secrets redacted.

    Read from the WSGI environ by precomputed keys, as ``request.headers`` would find them: this
    runs on every request to a persistent store, and the headers object normalises each name anew.
    """
    environ = request.environ
    headers = {name: environ[key] for name, key in _KEPT_ENVIRON if key in environ}
    if SIGNATURE_HEADER in headers:
        headers[SIGNATURE_HEADER] = REDACTED
    if request.remote_addr:
        headers["Remote-Addr"] = request.remote_addr
    return headers


def receive() -> Response:
    """The view behind ``MUSICCALLBACK_URL_RULE``, inside its ``musiccallback.receive`` span."""
    with telemetry.receive_span() as span:
        return _receive(span)


def _receive(span: Span) -> Response:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    state: MusicCallbackState = app.extensions[EXTENSION_NAME]
    settings = state.settings
    try:
        check_address(settings, request.remote_addr)
        check_token(settings, request.args.get("token"))
        timestamp = signed_timestamp(settings, request.headers, time.time())
        try:
            payload, body = read_payload(settings.max_content_length)
        except Rejected as rejected:
            # Before the signature is checked, a malformed body tells nothing to an unsigned caller.
            if timestamp is not None and rejected.reason is Refusal.INVALID_JSON:
                raise unauthorized() from None
            raise
        task_id = find_task_id(payload)
        if timestamp is not None:
            check_signature(settings, request.headers, task_id, timestamp)
            check_one_body(settings, state.store, request.headers, request.get_data(cache=True))
        if task_id is not None:
            span.set_attribute(telemetry.TASK_ID_ATTRIBUTE, task_id)
        task = None
        if settings.expected_only:
            # Before routing: a body no family reads is kept only for a task the host expects.
            task = check_expected(state.store, task_id)
        named = request.args.get(FAMILY_ARG)
        try:
            family, event = read_event(state, payload, named, task_id, task)
        except Unreadable as unreadable:
            if not settings.secured:
                raise Rejected(Refusal.INVALID_PAYLOAD, unreadable.errors) from None
            return _keep(app, state, payload, body, unreadable, named, span)
        if settings.verify_by_fetch:
            # Before the claim, which is not held across a request to the provider.
            confirm(settings, family, event, payload)
    except Rejected as rejected:
        return _reject(app, rejected, span)
    except StoreUnavailable as exc:
        return _unavailable(state, exc, span)
    except PollError as exc:
        logger.warning("Cannot confirm a callback with the provider; answering 503: %s", exc)
        span.set_attribute(telemetry.OUTCOME_ATTRIBUTE, Outcome.RETRY.value)
        return _answer(*_ANSWERS[Outcome.RETRY])

    stage = str(event.stage)
    span.set_attribute(telemetry.FAMILY_ATTRIBUTE, family.name)
    span.set_attribute(telemetry.STAGE_ATTRIBUTE, stage)
    persistent = state.store.persistent
    delivery = family.delivery(
        event, payload, kept_headers() if persistent else None, body=body if persistent else None
    )
    try:
        outcome, claim = deliver_claimed(app, state, family, event, delivery)
    except StoreUnavailable as exc:
        return _unavailable(state, exc, span)
    if outcome is Outcome.RETRY:
        span.set_attribute(telemetry.OUTCOME_ATTRIBUTE, outcome.value)
    else:
        # A duplicate is counted under the store's reason: duplicate, in_progress or stale.
        counted = telemetry.RECEIVED if claim is ClaimResult.CLAIMED else claim.value
        telemetry.delivered(family.name, stage, counted)
        span.set_attribute(telemetry.OUTCOME_ATTRIBUTE, counted)
    return _answered(state, outcome)


def read_event(
    state: MusicCallbackState,
    payload: Mapping[str, Any],
    named: str | None,
    task_id: str | None,
    task: TaskRecord | None = None,
) -> tuple[Family, Any]:
    """The family that reads ``payload`` (whose task id is ``task_id``), and its event;
    :class:`Unreadable` when none does.

    Routing (:meth:`~.families.Families.route`) reads the store only for a body whose keys place
    it in no family, to ask which family its task was registered with; that read raises
    ``StoreUnavailable`` when the store is down. ``task``, when the endpoint read it already
    (``MUSICCALLBACK_EXPECTED_ONLY``), answers instead.
    """
    if task is None:
        expected = registered_family(state.store, task_id)
    else:
        family = task.family

        def expected() -> str | None:
            return family

    return state.extension.families.read(payload, named=named, expected=expected)


def _keep(
    app: Flask,
    state: MusicCallbackState,
    payload: Mapping[str, Any],
    body: str,
    unreadable: Unreadable,
    named: str | None,
    span: Span,
) -> Response:
    family = unreadable.family
    try:
        keep_unreadable(
            app,
            state,
            payload,
            body,
            unreadable.errors,
            family=None if family is None else family.name,
            named=named,
            headers=kept_headers() if state.store.persistent else {},
        )
    except StoreUnavailable as exc:
        return _unavailable(state, exc, span)
    # A body no family reads has no stage to trust, and its family only when one claims it.
    family_name = telemetry.UNKNOWN if family is None else family.name
    telemetry.delivered(family_name, telemetry.UNKNOWN, telemetry.KEPT)
    span.set_attribute(telemetry.FAMILY_ATTRIBUTE, family_name)
    span.set_attribute(telemetry.OUTCOME_ATTRIBUTE, telemetry.KEPT)
    return _answered(state, Outcome.KEPT)


def _answered(state: MusicCallbackState, outcome: Outcome) -> Response:
    if state.store_outage.recovered():
        logger.warning("The callback store is reachable again.")
    return _answer(*_ANSWERS[outcome])


def _unavailable(state: MusicCallbackState, exc: StoreUnavailable, span: Span) -> Response:
    span.set_attribute(telemetry.OUTCOME_ATTRIBUTE, Outcome.RETRY.value)
    if state.store_outage.failed():
        logger.error("The callback store is unreachable; answering 503: %s", exc)
    return _answer(*_ANSWERS[Outcome.RETRY])


def make_blueprint(url_rule: str) -> Blueprint:
    """A blueprint holding the endpoint at ``url_rule``; one per app, as the rule is per app."""
    blueprint = Blueprint(EXTENSION_NAME, __name__)
    blueprint.add_url_rule(url_rule, ENDPOINT, receive, methods=["POST"])
    blueprint.after_app_request(_redact_server_span)
    return blueprint


def _redact_server_span(response: Response) -> Response:
    """Keep the token out of the HTTP instrumentation's span, on every route of the app (a GET to
    the endpoint's URL, answered 405, carries the token too).

    After the request rather than before it: Flask's instrumentation starts its span in a
    ``before_request`` function of its own, which may run after this extension's, and ends it at
    teardown, so only here is its span always the current one, whichever was set up first.
    """
    telemetry.redact_server_span(request.query_string)
    return response
