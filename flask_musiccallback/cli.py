"""The ``flask musiccallback`` command group.

Registered on ``app.cli`` by ``init_app`` (so ``app.test_cli_runner()`` sees it) and through the
``flask.commands`` entry point (so ``flask --help`` lists it in any app that installs the package).
"""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from .state import get_state


@click.group("musiccallback", cls=AppGroup)
def musiccallback() -> None:
    """Receive, inspect and replay the music generation API's callbacks."""


@musiccallback.command("url")
def url_command() -> None:
    """Print the URL to pass as callBackUrl (token included)."""
    state = get_state(current_app)
    click.echo(state.extension.callback_url())


@musiccallback.command("openapi")
@click.option("--indent", type=int, default=2, show_default=True, help="JSON indentation.")
def openapi_command(indent: int) -> None:
    """Print the OpenAPI document of the callback endpoint, generated from its schemas."""
    state = get_state(current_app)
    click.echo(json.dumps(state.extension.openapi(), indent=indent or None))
