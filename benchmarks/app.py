"""The app the HTTP benchmark serves: a bare JSON route and the extension's endpoint, side by side.

Both routes live in one app under one gunicorn, so they share the server, the workers and the
machine's state; the only difference measured is what the extension does.
``BENCH_STORE`` picks the store (a ``MUSICCALLBACK_STORE`` URL).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_musiccallback import MusicCallback, all_tracks_generated

TOKEN = "benchmark-token-0123456789"  # noqa: S105 - a fixed secret for a local benchmark


def bare() -> ResponseReturnValue:
    """The physical limit: parse the JSON body and answer, nothing else."""
    request.get_json()
    return jsonify(status="received")


def receiver(sender: Flask, event: object, **extra: object) -> None:
    """A host receiver that does nothing, so the cost measured is the extension's own."""


def create_app(store: str) -> Flask:
    """The two routes, the extension on ``store``."""
    app = Flask(__name__)
    app.config["MUSICCALLBACK_TOKEN"] = TOKEN
    app.config["MUSICCALLBACK_STORE"] = store
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("BENCH_DATABASE_URI", "sqlite://")
    MusicCallback(app)
    app.add_url_rule("/bare", view_func=bare, methods=["POST"])
    all_tracks_generated.connect(receiver, sender=app)
    return app


app = create_app(os.environ.get("BENCH_STORE", "memory://"))
