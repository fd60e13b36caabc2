"""A small host application that receives the music generation API's callbacks.

Run it with ``scripts/demo.sh``. It keeps what it receives in memory and shows it on ``/``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask, render_template_string

from flask_musiccallback import CallbackEvent, MusicCallback, Stage

music = MusicCallback()

_PAGE = """<!doctype html>
<title>Music callbacks</title>
<meta http-equiv="refresh" content="5">
<h1>Music callbacks</h1>
<p>Callback URL: <code>{{ url }}</code></p>
<ul>{% for event in events %}
  <li><b>{{ event.task_id }}</b> {{ event.stage.value }} (code {{ event.code }}: {{ event.msg }})
    {% for track in event.tracks %}<br>{{ track.title }} {{ track.duration or "" }}{% endfor %}
  </li>{% else %}<li>Nothing received yet.</li>{% endfor %}
</ul>"""


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the example app; ``config`` overrides the defaults (tests use it)."""
    app = Flask(__name__)
    app.config["MUSICCALLBACK_TOKEN"] = (
        os.environ.get("MUSICCALLBACK_TOKEN") or secrets.token_urlsafe(24)
    )
    app.config["EVENTS"] = []
    app.config.update(config or {})
    music.init_app(app)

    @app.get("/")
    def index() -> str:
        events = list(reversed(app.config["EVENTS"]))
        return render_template_string(_PAGE, events=events, url=music.callback_url())

    return app


def _remember(event: CallbackEvent) -> None:
    from flask import current_app

    current_app.config["EVENTS"].append(event)


for _stage in Stage:
    music.on(_stage)(_remember)
