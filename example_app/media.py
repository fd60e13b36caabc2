"""Local copies of a task's audio and covers: the provider's links expire after about two weeks.

:func:`save_task_media` runs in the ``complete`` receiver, off the request path. Each file is
fetched with :func:`download`: httpx with timeouts, a size limit, and retries with back-off on what
may pass (network errors, timeouts, 408, 429, 5xx); a refusal (403, 404: an expired link) is not
retried. A file that still cannot be fetched is recorded on its track and never raised: the other
files are still fetched, the page uses the provider's link meanwhile, and ``flask download-media``
tries again later.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from flask import Flask
from werkzeug.utils import secure_filename

from . import samples
from .models import Task, Track, db, utcnow

logger = logging.getLogger(__name__)

#: Statuses worth another attempt: the server or the way to it may be better in a moment.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The longest wait between two attempts.
MAX_BACKOFF = 60.0

#: File extensions for the media types the provider (and the samples) send.
_EXTENSIONS = {
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/mp4": ".m4a",
    "audio/ogg": ".ogg",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
}
_KNOWN_SUFFIXES = frozenset(_EXTENSIONS.values()) | {".jpeg"}


class DownloadFailed(Exception):  # noqa: N818 - reads as what happened to the file
    """A file could not be fetched, after every attempt that made sense."""


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard to try: the example app's ``MEDIA_DOWNLOAD_*`` keys."""

    attempts: int = 3
    backoff: float = 1.0
    timeout: float = 30.0
    max_bytes: int = 50 * 1024 * 1024

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DownloadPolicy:
        return cls(
            attempts=max(1, int(config["MEDIA_DOWNLOAD_ATTEMPTS"])),
            backoff=float(config["MEDIA_DOWNLOAD_BACKOFF"]),
            timeout=float(config["MEDIA_DOWNLOAD_TIMEOUT"]),
            max_bytes=int(config["MEDIA_MAX_BYTES"]),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt``: doubled each time, capped."""
        return float(min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF))


def media_folder(app: Flask) -> Path:
    return Path(app.config["MEDIA_FOLDER"])


def client_for(app: Flask, policy: DownloadPolicy) -> httpx.Client:
    """An HTTP client with the policy's timeouts; the sample host, if set, answered in-process."""
    mounts: dict[str, httpx.BaseTransport] = {}
    sample_host = app.config.get("MEDIA_SAMPLE_HOST")
    if sample_host:
        mounts[f"all://{sample_host}"] = httpx.WSGITransport(app=samples.wsgi_app)
    return httpx.Client(
        timeout=httpx.Timeout(policy.timeout, connect=min(policy.timeout, 10.0)),
        follow_redirects=True,
        mounts=mounts,
        headers={"User-Agent": "flask-musiccallback-example/1"},
    )


def download(
    client: httpx.Client, url: str, folder: Path, stem: str, policy: DownloadPolicy
) -> str:
    """Save ``url`` as ``folder/stem.EXT`` and return that name (relative to ``folder``).

    The extension follows the answer's media type. The file is written under a temporary name and
    renamed when whole, so the page never serves half a file. Raises :class:`DownloadFailed`.
    """
    error = "no attempt made"
    for attempt in range(1, policy.attempts + 1):
        try:
            return _fetch(client, url, folder, stem, policy)
        except _Retryable as exc:
            error = str(exc)
        if attempt < policy.attempts:
            delay = policy.delay(attempt)
            logger.info(
                "Fetching %s failed (%s); attempt %d in %.1f s", url, error, attempt + 1, delay
            )
            time.sleep(delay)
    raise DownloadFailed(f"{error} (after {policy.attempts} attempts)")


class _Retryable(Exception):  # noqa: N818
    pass


def _fetch(client: httpx.Client, url: str, folder: Path, stem: str, policy: DownloadPolicy) -> str:
    partial = folder / f".{stem}.{uuid.uuid4().hex}.part"
    try:
        with client.stream("GET", url) as response:
            if response.status_code in RETRY_STATUSES:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise DownloadFailed(f"HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise DownloadFailed(f"larger than {policy.max_bytes} bytes")
            name = stem + _extension(response.headers.get("Content-Type", ""), url)
            folder.mkdir(parents=True, exist_ok=True)
            size = 0
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise DownloadFailed(f"larger than {policy.max_bytes} bytes")
                    file.write(chunk)
            if size == 0:
                raise _Retryable("empty answer")
        os.replace(partial, folder / name)
        return name
    except httpx.InvalidURL as exc:
        raise DownloadFailed(f"not a usable link: {exc}") from None
    except httpx.UnsupportedProtocol as exc:
        raise DownloadFailed(f"not a usable link: {exc}") from None
    except httpx.TransportError as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    finally:
        partial.unlink(missing_ok=True)


def _extension(content_type: str, url: str) -> str:
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type in _EXTENSIONS:
        return _EXTENSIONS[media_type]
    suffix = PurePosixPath(httpx.URL(url).path).suffix.lower()
    if suffix in _KNOWN_SUFFIXES:
        return suffix
    return mimetypes.guess_extension(media_type) or ".bin"


def task_folder(task_id: str) -> str:
    """A folder name for a task's files: readable, and distinct for every task id."""
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:10]
    readable = secure_filename(task_id)[:60]
    return f"{readable}-{digest}" if readable else digest


@dataclass(frozen=True)
class _Job:
    track_id: int
    position: int
    audio_url: str | None
    image_url: str | None


def save_task_media(app: Flask, task_id: str, *, retry_failed: bool = True) -> None:
    """Copy the audio and cover of every track of ``task_id`` not saved yet; never raises.

    Runs in an app context. No database transaction is held while files are fetched.
    """
    try:
        statuses = ("pending", "failed") if retry_failed else ("pending",)
        rows = db.session.scalars(
            db.select(Track).where(Track.task_id == task_id, Track.media_status.in_(statuses))
        ).all()
        jobs = [_Job(row.id, row.position, row.audio_url, row.image_url) for row in rows]
        db.session.commit()
        if not jobs:
            return
        policy = DownloadPolicy.from_config(app.config)
        folder = media_folder(app) / task_folder(task_id)
        with client_for(app, policy) as client:
            for job in jobs:
                _save_track(client, folder, job, policy)
    except Exception:
        db.session.rollback()
        logger.exception("Saving the media of task %s failed", task_id)


def _save_track(client: httpx.Client, folder: Path, job: _Job, policy: DownloadPolicy) -> None:
    saved: dict[str, str] = {}
    errors: list[str] = []
    for kind, url in (("audio", job.audio_url), ("image", job.image_url)):
        if not url:
            continue
        try:
            name = download(client, url, folder, f"{job.position}-{kind}", policy)
        except DownloadFailed as exc:
            logger.warning("Could not save the %s of a track from %s: %s", kind, url, exc)
            errors.append(f"{kind}: {exc}")
        except Exception as exc:  # a link httpx cannot even parse, a full disk: still recorded
            logger.exception("Could not save the %s of a track from %s", kind, url)
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        else:
            saved[f"{kind}_file"] = f"{folder.name}/{name}"
    track = db.session.get(Track, job.track_id)
    if track is None:
        return
    for column, value in saved.items():
        setattr(track, column, value)
    track.media_status = "failed" if errors else "saved"
    track.media_error = "; ".join(errors) or None
    task = db.session.get(Task, track.task_id)
    if task is not None:
        task.updated_at = utcnow()
    db.session.commit()
