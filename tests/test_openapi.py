"""The OpenAPI document: valid, generated from the schemas, and true to the app's settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from flask_musiccallback import MusicCallback
from flask_musiccallback.families import BUILT_IN
from flask_musiccallback.schemas import TRACK_ALIASES, TrackSchema

from .conftest import TOKEN, AppFactory

HMAC_KEY = "hmac-key-for-the-openapi-tests"


def openapi_of(app: Flask) -> dict[str, Any]:
    """``music.openapi()`` for the extension serving ``app``."""
    document: dict[str, Any] = app.extensions["musiccallback"].extension.openapi()
    return document


def operation(document: dict[str, Any], path: str = "/music-callback") -> dict[str, Any]:
    post: dict[str, Any] = document["paths"][path]["post"]
    return post


def test_the_document_is_valid_openapi(make_app: AppFactory) -> None:
    app = make_app(HMAC_KEY=HMAC_KEY, ALLOWED_IPS=["10.0.0.0/8"])
    document = openapi_of(app)
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_the_request_body_is_the_callback_schema(make_app: AppFactory) -> None:
    document = openapi_of(make_app())
    body = operation(document)["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Callback"
    }
    schemas = document["components"]["schemas"]
    assert schemas["MusicCallback"]["required"] == ["code"]
    assert schemas["MusicCallback"]["properties"]["data"]["anyOf"][0] == {
        "$ref": "#/components/schemas/TaskData"
    }
    assert schemas["TaskData"]["properties"]["data"]["items"] == {
        "$ref": "#/components/schemas/Track"
    }


def test_every_track_field_and_every_camel_case_alias_is_described(make_app: AppFactory) -> None:
    document = openapi_of(make_app())
    properties = document["components"]["schemas"]["Track"]["properties"]
    data_keys = {field.data_key or name for name, field in TrackSchema().fields.items()}
    assert data_keys <= set(properties)
    for alias, target in TRACK_ALIASES.items():
        assert alias in properties
        assert target in properties[alias]["description"]


def test_create_time_is_epoch_milliseconds_or_a_date_time_string(make_app: AppFactory) -> None:
    document = openapi_of(make_app())
    create_time = document["components"]["schemas"]["Track"]["properties"]["createTime"]
    assert [form["type"] for form in create_time["anyOf"]] == ["number", "string", "null"]


@pytest.mark.parametrize(
    ("config", "statuses"),
    [
        # Behind a source check, a body no family reads is kept (200), never refused (422).
        ({}, {"200", "400", "401", "413", "503"}),
        ({"ALLOWED_IPS": ["127.0.0.1"]}, {"200", "400", "401", "403", "413", "503"}),
        ({"TOKEN": None}, {"200", "400", "413", "422", "503"}),
    ],
)
def test_every_answer_the_app_can_give_is_documented(
    make_app: AppFactory, config: dict[str, Any], statuses: set[str]
) -> None:
    document = openapi_of(make_app(**config))
    assert set(operation(document)["responses"]) == statuses


def test_each_refusal_documents_its_exact_reason(make_app: AppFactory) -> None:
    app = make_app(TOKEN=None, HMAC_KEY=HMAC_KEY, ALLOWED_IPS=["127.0.0.1"])
    responses = operation(openapi_of(app))["responses"]
    reasons = {
        status: response["content"]["application/json"]["example"]
        for status, response in responses.items()
    }
    assert reasons == {
        "200": {"status": "received"},
        "400": {"status": "rejected", "reason": "invalid_json"},
        "401": {"status": "rejected", "reason": "unauthorized"},
        "403": {"status": "rejected", "reason": "forbidden"},
        "413": {"status": "rejected", "reason": "too_large"},
        "503": {"status": "retry"},
    }


def test_an_open_endpoint_documents_its_422(make_app: AppFactory) -> None:
    responses = operation(openapi_of(make_app(TOKEN=None)))["responses"]
    assert responses["422"]["content"]["application/json"]["example"] == {
        "status": "rejected",
        "reason": "invalid_payload",
        "errors": {"data": {"task_id": ["Missing task id."]}},
    }


def test_every_family_body_is_described_and_named_by_the_family_parameter(
    make_app: AppFactory,
) -> None:
    document = openapi_of(make_app())
    schemas = document["components"]["schemas"]
    families = sorted(family.name for family in BUILT_IN)
    assert schemas["Callback"]["anyOf"] == [
        {"$ref": f"#/components/schemas/{family.name.title()}Callback"} for family in BUILT_IN[::-1]
    ]
    [parameter] = operation(document)["parameters"]
    assert (parameter["name"], parameter["in"]) == ("family", "query")
    assert parameter["schema"]["enum"] == families
    validate(document)


def test_the_token_is_a_query_security_scheme(make_app: AppFactory) -> None:
    document = openapi_of(make_app())
    assert document["components"]["securitySchemes"] == {
        "callbackToken": {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": document["components"]["securitySchemes"]["callbackToken"][
                "description"
            ],
        }
    }
    assert operation(document)["security"] == [{"callbackToken": []}]


def test_signature_headers_are_security_schemes_required_together(make_app: AppFactory) -> None:
    document = openapi_of(make_app(HMAC_KEY=HMAC_KEY))
    schemes = document["components"]["securitySchemes"]
    assert schemes["webhookSignature"]["name"] == "X-Webhook-Signature"
    assert schemes["webhookTimestamp"]["name"] == "X-Webhook-Timestamp"
    assert operation(document)["security"] == [
        {"callbackToken": [], "webhookSignature": [], "webhookTimestamp": []}
    ]


def test_an_open_endpoint_declares_no_security(make_app: AppFactory) -> None:
    document = openapi_of(make_app(TOKEN=None))
    assert "securitySchemes" not in document.get("components", {})
    assert operation(document)["security"] == []


def test_the_document_holds_no_secret(make_app: AppFactory) -> None:
    app = make_app(HMAC_KEY=HMAC_KEY, API_KEY="provider-api-key-secret")
    text = json.dumps(openapi_of(app))
    for secret in (TOKEN, HMAC_KEY, "provider-api-key-secret"):
        assert secret not in text


def test_the_path_and_server_follow_the_settings(make_app: AppFactory) -> None:
    app = make_app(URL_RULE="/hooks/music", EXTERNAL_URL="https://api.example.com/app")
    document = openapi_of(app)
    assert list(document["paths"]) == ["/hooks/music"]
    assert document["servers"] == [{"url": "https://api.example.com/app"}]
    validate(document)


def test_a_rule_with_variables_becomes_a_path_template(make_app: AppFactory) -> None:
    app = make_app(URL_RULE="/hooks/<tenant>/music")
    document = openapi_of(app)
    assert operation(document, "/hooks/{tenant}/music")["parameters"][0] == {
        "name": "tenant",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    validate(document)


def test_openapi_follows_the_current_app_when_one_extension_serves_several() -> None:
    music = MusicCallback()
    first, second = Flask("first"), Flask("second")
    for app, rule in ((first, "/one"), (second, "/two")):
        app.testing = True
        app.config["MUSICCALLBACK_URL_RULE"] = rule
        music.init_app(app)
    with second.app_context():
        assert list(music.openapi()["paths"]) == ["/two"]
    with pytest.raises(RuntimeError, match="app context"):
        music.openapi()


def test_the_cli_prints_the_document(make_app: AppFactory) -> None:
    app = make_app()
    result = app.test_cli_runner().invoke(args=["musiccallback", "openapi"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == openapi_of(app)
