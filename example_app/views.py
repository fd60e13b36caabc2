"""The page: tasks newest first, and what it asks for while it watches them."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import unquote, urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    send_from_directory,
    url_for,
)

from . import samples
from .listing import STATE_NAMES, TaskRow, list_version, recent_rows
from .media import media_folder
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


@bp.get("/")
def index() -> str:
    rows = page_rows()
    return render_template(
        "index.html",
        rows=rows,
        active=any(row.in_progress for row in rows),
        version=list_version(rows),
        callback_url=_masked_callback_url(),
        refresh_seconds=current_app.config["PAGE_REFRESH_SECONDS"],
    )


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
    """A saved copy. Served as inert data: a stored SVG must not run as a page of this site."""
    response = send_from_directory(media_folder(current_app), path, max_age=86400)
    response.headers["Content-Security-Policy"] = INERT
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/samples/<path:path>")
def sample(path: str) -> Response:
    """What a simulated link stands for (see samples.py), for the browser."""
    rendered = samples.render(path) if current_app.config["MEDIA_SAMPLE_HOST"] else None
    if rendered is None:
        abort(404)
    body, media_type = rendered
    response = Response(body, mimetype=media_type)
    response.headers["Content-Security-Policy"] = INERT
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Ranges, so that a player can seek (Chromium does not seek a video served without them).
    response.make_conditional(request, accept_ranges=True, complete_length=len(body))
    return response


def is_sample(url: str | None) -> bool:
    """Whether ``url`` is a simulated link that the app answers with a sample."""
    host: str | None = current_app.config["MEDIA_SAMPLE_HOST"]
    if not (url and host):
        return False
    try:
        return urlsplit(url).hostname == host
    except ValueError:  # not a URL at all: the provider's problem, not a reason to fail the page
        return False


@bp.app_template_filter("playable")
def playable_filter(url: str | None) -> str | None:
    """A link the browser can load: a simulated one becomes the app's own sample."""
    if url and is_sample(url):
        # The link's path is already percent-encoded (a stem's "%20"); url_for encodes it again.
        return url_for("pages.sample", path=unquote(urlsplit(url).path.lstrip("/")))
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
