"""The page: tasks newest first, and what it asks for while it watches them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.wsgi import wrap_file

from flask_musiccallback.config import ConfigurationError
from flask_musiccallback.provider import SubmitError
from flask_musiccallback.state import get_state
from flask_musiccallback.submit import submit_folders

from . import provider, samples
from .listing import STATE_NAMES, TaskRow, list_version, recent_rows
from .media import NotArchived, open_archived
from .models import aware
from .receivers import music

bp = Blueprint("pages", __name__)

#: For files served from the app's own origin: shown, never run (an SVG may hold a script).
INERT = "default-src 'none'; style-src 'unsafe-inline'"


def page_rows() -> list[TaskRow]:
    return recent_rows(int(current_app.config["PAGE_TASKS"]))


def _masked_callback_url() -> str:
    """The callback URL for the page, its token hidden: the page is not the place for a secret."""
    url = music.callback_url()
    base, _, query = url.partition("?")
    if not query:
        return url
    params = [
        f"{name}=…" if name == "token" else f"{name}={value}"
        for name, _, value in (pair.partition("=") for pair in query.split("&"))
    ]
    return f"{base}?{'&'.join(params)}"


@bp.app_context_processor
def helpers() -> dict[str, object]:
    return {"is_sample": is_sample, "state_names": STATE_NAMES}


#: What the form offers to submit: a family's endpoint and a small payload for it (the
#: callback URL is added by ``music.submit``).
SUBMIT_EXAMPLES: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "music": (
        "/api/v1/generate",
        {"prompt": "A calm piano track", "customMode": False, "instrumental": False, "model": "V4"},
    ),
    "lyrics": ("/api/v1/lyrics", {"prompt": "A song about the sea at night"}),
}


#: :data:`SUBMIT_EXAMPLES` as the form's fields show them.
EXAMPLE_FIELDS = {
    name: (path, json.dumps(payload, indent=2)) for name, (path, payload) in SUBMIT_EXAMPLES.items()
}


@dataclass(frozen=True)
class SubmitForm:
    """The form as shown: the example chosen, or what was sent, and why it was refused."""

    example: str = "music"
    path: str = EXAMPLE_FIELDS["music"][0]
    payload: str = EXAMPLE_FIELDS["music"][1]
    error: str | None = None


def _page(form: SubmitForm = SubmitForm()) -> str:
    rows = page_rows()
    return render_template(
        "index.html",
        rows=rows,
        active=any(row.in_progress for row in rows),
        version=list_version(rows),
        callback_url=_masked_callback_url(),
        refresh_seconds=current_app.config["PAGE_REFRESH_SECONDS"],
        form=form,
        examples=EXAMPLE_FIELDS,
        submitted=request.args.get("submitted"),
        provider=current_app.config["MUSICCALLBACK_API_BASE_URL"],
        fake_provider=provider.in_use(current_app),
    )


@bp.get("/")
def index() -> str:
    return _page()


@bp.post("/submit")
def submit() -> ResponseReturnValue:
    """Submit the form's task through ``music.submit``, then show the page, where the task is
    listed as submitted until its callbacks come; or show the form again with why not.

    Another site's page could post this form from a visitor's browser, and spend the provider's
    credits: a browser's cross-site post is refused (its ``Sec-Fetch-Site``, or else its
    ``Origin``, says where it comes from). Clients that are not browsers send neither.
    """
    form = SubmitForm(
        example=request.form.get("example", ""),
        path=request.form.get("path", "").strip(),
        payload=request.form.get("payload", ""),
    )
    if not _same_origin():
        return _refused(form, "Tasks are submitted from this app's own page only.", 403)
    try:
        payload = json.loads(form.payload)
    except ValueError as exc:
        return _refused(form, f"The payload is not JSON: {exc}.", 400)
    if not isinstance(payload, dict):
        return _refused(form, "The payload must be a JSON object: {...}.", 400)
    try:
        task_id = music.submit(form.path, payload)
    except LookupError:
        known = ", ".join(sorted(submit_folders(music.families)))
        where = form.path or "No path"
        return _refused(form, f"{where}: no family's endpoints are there ({known}).", 400)
    except SubmitError as exc:
        if exc.code is None and exc.retryable:  # no answer: the task may exist all the same
            text = f"No answer from the provider ({exc}); the task may have been created: look "
            text += "before submitting it again."
            return _refused(form, text, 502)
        return _refused(form, f"The provider did not create the task: {exc}.", 502)
    except ConfigurationError as exc:
        return _refused(form, str(exc), 503)
    return redirect(url_for("pages.index", submitted=task_id), code=303)


def _refused(form: SubmitForm, error: str, status: int) -> tuple[str, int]:
    return _page(SubmitForm(form.example, form.path, form.payload, error)), status


def _same_origin() -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is None or origin == request.host_url.rstrip("/")


@bp.get("/tasks")
def task_list() -> Response:
    """The list alone, for the page's refreshes; ``304`` when nothing changed since its tag."""
    rows = page_rows()
    version = list_version(rows)
    if request.if_none_match.contains(version):
        return Response(status=304, headers={"ETag": f'"{version}"'})
    html = render_template("_tasks.html", rows=rows, active=any(row.in_progress for row in rows))
    response = Response(html, mimetype="text/html")
    response.set_etag(version)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/media/<path:path>")
def media(path: str) -> Response:
    """An archived file, read through the archive (media.py says which paths are refused).

    Served as inert data: an archived SVG must not run as a page of this site; with ranges, as
    the samples are.
    """
    try:
        found = open_archived(get_state(current_app).archive, path)
    except NotArchived:
        abort(404)
    response = Response(
        wrap_file(request.environ, found.file), mimetype=found.media_type, direct_passthrough=True
    )
    response.content_length = found.size
    response.cache_control.max_age = 86400  # a file at its name in the archive never changes
    _inert(response)
    response.make_conditional(request, accept_ranges=True, complete_length=found.size)
    return response


@bp.get("/samples/<path:path>")
def sample(path: str) -> Response:
    """What a simulated link stands for (see samples.py): the media server of simulated tasks,
    fetched by the archive, and by the browser until a file is archived."""
    rendered = samples.render(path)
    if rendered is None:
        abort(404)
    body, media_type = rendered
    response = Response(body, mimetype=media_type)
    _inert(response)
    # Ranges, so that a player can seek (Chromium does not seek a video served without them).
    response.make_conditional(request, accept_ranges=True, complete_length=len(body))
    return response


def _inert(response: Response) -> None:
    response.headers["Content-Security-Policy"] = INERT
    response.headers["X-Content-Type-Options"] = "nosniff"


def is_sample(url: str | None) -> bool:
    """Whether ``url`` is a simulated link, answered by this app's samples."""
    base: str | None = current_app.config.get("MUSICCALLBACK_SIMULATED_MEDIA_URL")
    return bool(url and base and url.startswith(base.rstrip("/") + "/"))


@bp.app_template_filter("archived")
def archived_filter(url: str | None, files: Mapping[str, str]) -> str | None:
    """The archived copy of ``url`` when ``files`` (a result's) has it, else the link itself."""
    if url and url in files:
        return url_for("pages.media", path=files[url])
    return url


@bp.app_template_filter("duration")
def duration_filter(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


@bp.app_template_filter("utc")
def utc_filter(moment: datetime) -> str:
    """ISO 8601 with the zone, for ``<time datetime>``, which the page shows in local time."""
    return aware(moment).isoformat(timespec="seconds").replace("+00:00", "Z")
