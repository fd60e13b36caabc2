"""Schemathesis against the app's own OpenAPI document, over HTTP to a live server.

Cases are generated from the document (valid bodies, and bodies that break it), sent with the
right token and signature so that they reach the parser, and their answers are checked against
the document: no 5xx, only documented statuses, each with its documented body. A request that is
refused never reaches a receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flask_musiccallback.families import find_task_id
from flask_musiccallback.testing import record_signals, signature_headers

from .conftest import TOKEN, build_app
from .live_server import TracebackCatcher, catch_tracebacks, serve

HMAC_KEY = "schemathesis-hmac-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Target:
    app: Flask
    base_url: str
    operation: Any
    signals: list[tuple[str, dict[str, Any]]]
    tracebacks: TracebackCatcher
    session: requests.Session

    @property
    def signed(self) -> bool:
        return bool(self.app.extensions["musiccallback"].settings.hmac_keys)


@pytest.fixture(scope="module", params=["token", "token+hmac"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    config = {"HMAC_KEY": HMAC_KEY} if "hmac" in request.param else {}
    app = build_app(MAX_CONTENT_LENGTH=256 * 1024, **config)
    schema = schemathesis.openapi.from_dict(app.extensions["musiccallback"].extension.openapi())
    operation = schema["/music-callback"]["POST"]
    with (
        serve(app) as server,
        record_signals(app) as signals,
        catch_tracebacks() as tracebacks,
        requests.Session() as session,
    ):
        yield Target(app, server.base_url, operation, signals, tracebacks, session)
    assert not tracebacks.records


def _send(target: Target, case: Any) -> Any:
    """Send a case with valid credentials, so that it is the body that is put to the test."""
    case.query = {"token": TOKEN}
    if target.signed:
        body = case.body if isinstance(case.body, dict) else {}
        case.headers = signature_headers(find_task_id(body) or "", HMAC_KEY)
    before = len(target.signals)
    response = case.call_and_validate(
        base_url=target.base_url, session=target.session, checks=CHECKS
    )
    sent = {name for name, _ in target.signals[before:]}
    assert "Traceback" not in response.text
    if response.status_code != 200:
        assert sent <= {"callback_rejected"}
    return response


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_documented_bodies_get_documented_answers(target: Target, data: st.DataObject) -> None:
    case = data.draw(
        target.operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)
    )
    response = _send(target, case)
    if target.signed and not find_task_id(case.body):
        assert response.status_code == 401  # a signature needs a task id to be checked against
    else:
        assert response.status_code in (200, 422)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_bodies_that_break_the_document_get_documented_refusals(
    target: Target, data: st.DataObject
) -> None:
    case = data.draw(
        target.operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
    )
    _send(target, case)
