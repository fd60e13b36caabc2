"""The media archive (``MUSICCALLBACK_ARCHIVE``): each new success event's files, copied off the
request path to an fsspec filesystem before the provider's links expire.

A copy is a delivery of its own. Its key is the event's, prefixed (:func:`copy_stage`:
``archive:complete``, ``archive:wav:complete``), and its payload is the event's body, so a
persistent store keeps it, lists it (``flask musiccallback list``), shows it, takes it back from
a process that died (the sweep) and replays it, with nothing of its own to learn; and it is
claimed once, so a copy never runs twice at once. It is a :class:`~..dispatch.job.Job` whose
work is :meth:`Archive.copy` instead of the receivers: dispatched off the request path always
(this process's archive pool under ``sync`` and ``thread``, the Celery task
``flask_musiccallback.archive_media`` under ``celery``), and retried with the receivers'
back-off (``MUSICCALLBACK_RETRY_ATTEMPTS``, ``MUSICCALLBACK_RETRY_BACKOFF``).

The copy's claim is made by the write-back (:mod:`..writeback`), after the answer, as a task's
stage is recorded: the request pays nothing for the archive, and a store that is down has the
claim made when it is back.

Each file goes to ``{task_id}/{family}/{name}.{ext}`` under the archive's root. It is streamed in
chunks to a hidden partial file beside it, and moved to its name once whole and within
``MUSICCALLBACK_ARCHIVE_MAX_BYTES``: a file at its name is whole, so a copy run again (a retry, a
replay, the music ``first`` and ``complete`` stages naming one track) skips it without asking the
network. A run's files, their sizes and content types are recorded beside them in
``{stage}.manifest.json``. Links are fetched by :class:`~.fetch.SafeFetcher`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..config import ConfigKeys, ConfigurationError, Settings
from ..dispatch.dispatchers import ThreadDispatcher
from ..dispatch.job import Job, NotQueued, Permanent, after_the_answer, last_attempt
from ..dispatch.receivers import send_isolated
from ..families.base import FAILED
from ..pool import Pool
from ..signals import media_archive_failed, media_archived
from ..stores.base import ClaimResult, copy_stage
from ..stores.owners import claim_owner
from .fetch import AllowList, FetchFailed, Refused, SafeFetcher, body
from .media import Media, distinct, safe_segment

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from ..dispatch import Dispatcher
    from ..families import Event, Family
    from ..state import MusicCallbackState

logger = logging.getLogger("flask_musiccallback")

#: How old a partial file must be to be taken for one a killed process left: longer than a
#: copy takes to write a file of the default cap at a trickle (10 KiB/s).
STALE_PARTIAL_AGE = timedelta(hours=6)

#: Bytes read from the network and written to the archive at a time.
CHUNK_SIZE = 256 * 1024


class ArchiveFailed(Exception):  # noqa: N818 - reads as what happened to the file
    """A file of the event that could not be archived: ``url`` is its source."""

    def __init__(self, url: str, error: str) -> None:
        super().__init__(f"{url}: {error}")
        self.url = url
        self.error = error


class ArchiveRefused(ArchiveFailed, Permanent):
    """A file no retry can archive: its link is refused, or it is over the cap. A 404 is not
    one: a CDN may not have a file yet a moment after the callback announced it."""


class NotKept(Exception):  # noqa: N818 - reads as what happens to the file
    """A file the archive will not keep, whatever the attempt: over
    ``MUSICCALLBACK_ARCHIVE_MAX_BYTES``."""


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """One file in the archive: where it came from, where it is, and what it is."""

    #: The link it was fetched from (or ``callback:NAME`` for content the callback carried).
    source: str
    #: Its URL in the archive (``file:///var/lib/music/...``, ``s3://bucket/...``).
    url: str
    #: Its path in the archive, from the root: ``{task_id}/{family}/{name}.{ext}``.
    path: str
    size: int
    #: As the media server said, when it did.
    content_type: str | None
    #: False when it was found archived already and not fetched again.
    fetched: bool

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Archive:
    """One app's media archive: where files go, how they are fetched, and where copies run."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        dispatcher: Dispatcher,
        *,
        allow: AllowList,
        max_bytes: int,
        timeout: float,
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        #: Runs the copies: never the request's thread.
        self.dispatcher = dispatcher
        self.allow = allow
        self.max_bytes = max_bytes
        self.timeout = timeout

    def url_of(self, path: str) -> str:
        """The archive URL of ``path`` (relative to the root)."""
        return str(self.fs.unstrip_protocol(f"{self.root}/{path}"))

    def open(self, path: str) -> Any:
        """The archived file at ``path`` (relative to the root), opened for reading; for a host
        that serves the archive (the example app does).

        ``path`` may come from a request: one that leads out of the archive (``..``, an
        absolute path) is :class:`FileNotFoundError`, as a file that is not there.
        """
        clean = posixpath.normpath(path)
        if clean in (".", "..") or clean.startswith(("/", "../")) or "\x00" in path:
            raise FileNotFoundError(path)
        return self.fs.open(f"{self.root}/{clean}", "rb")

    def content_type(self, path: str) -> str | None:
        """The content type the media server gave for the archived file at ``path``, as the
        manifests beside it recorded it; ``None`` when none did.

        It is what a server of the provider's links (or of anybody's) said: a page that serves
        it as it is trusts that server (see docs/archive.md on serving the archive).
        """
        folder = path.rpartition("/")[0]
        recorded: str | None = self._known(folder).get(path, {}).get("content_type")
        return recorded

    def folder(self, task_id: str, family: str) -> str:
        """Where the files of ``task_id``'s ``family`` events go, relative to the root."""
        return f"{safe_segment(task_id)}/{family}"

    def job(self, job: Job, *, owner: str | None = None) -> Job:
        """The copy of the media of ``job``'s event, as a job: its own key (:func:`copy_stage`),
        held by ``owner`` (``job``'s by default), and this archive's work. Accepted once
        already, it is never refused to push back on the provider."""
        delivery = dataclasses.replace(
            job.delivery,
            stage=copy_stage(job.delivery.stage),
            superseded_by=None,
            owner=job.delivery.owner if owner is None else owner,
        )
        return dataclasses.replace(job, delivery=delivery, work=self.copy, replayed=True)

    def schedule(self, state: MusicCallbackState, job: Job) -> None:
        """Have the media of a new delivery's event copied, when it is a success with media.

        Which files the event has, and the copy's claim and queueing, are left to the write-back,
        after the answer (inline for a store in this process, whose claim costs nothing): the
        request itself only builds the copy's job.
        """
        if str(job.event.stage) == FAILED:
            return
        copy = self.job(job, owner=claim_owner())
        delivery = copy.delivery

        def claim_and_queue() -> None:
            try:
                if not media_of(job.family, job.event):
                    return
            except Exception:  # a host family's media function: its error must not cost the event
                logger.exception(
                    "The %s family cannot say which files task %s has; nothing is archived for it",
                    job.family.name,
                    job.event.task_id,
                )
                return
            if state.store.claim(delivery, queued=True) is not ClaimResult.CLAIMED:
                return
            try:
                self.dispatcher.submit(copy)
            except NotQueued as exc:
                logger.warning(
                    "The media copy of task %s stage %s is not queued (%s); it stays pending, "
                    "for the sweep or replay --pending.",
                    delivery.task_id,
                    delivery.stage,
                    exc,
                )

        after_the_answer(state, claim_and_queue, "the media copy", delivery)

    def copy(self, job: Job) -> list[Exception]:
        """A :class:`Job`'s work: archive every file of its event not archived yet.

        When every file is there, sends ``media_archived``. After the job's last attempt, sends
        ``media_archive_failed`` for each file that is not, and ``media_archived`` for those that
        are, if any. Returns what failed, for the job to retry, keep failed, or complete.
        """
        event = job.event
        folder = self.folder(event.task_id, job.family.name)
        archived: list[ArchivedFile] = []
        failures: list[ArchiveFailed] = []
        try:
            files = media_of(job.family, event)
        except Exception as exc:
            logger.exception("The %s family cannot say which files it has", job.family.name)
            files = ()
            error = f"the family's media function raised {type(exc).__name__}: {exc}"
            failures.append(ArchiveRefused(f"callback:{job.family.name}", error))
        known = self._known(folder) if files else {}
        with SafeFetcher(self.allow, timeout=self.timeout) as fetcher:
            for media in files:
                path = f"{folder}/{media.filename}"
                try:
                    archived.append(self._keep(fetcher, media, path, known))
                except (Refused, NotKept, FetchFailed, OSError) as exc:
                    mendless = isinstance(exc, Refused | NotKept)
                    kind = ArchiveRefused if mendless else ArchiveFailed
                    failures.append(kind(media.source, str(exc)))
                    logger.warning(
                        "Cannot archive %s of task %s: %s", media.source, event.task_id, exc
                    )
                except Exception as exc:  # one file's surprise must not cost the others theirs
                    failures.append(ArchiveFailed(media.source, f"{type(exc).__name__}: {exc}"))
                    logger.exception("Archiving %s of task %s failed", media.source, event.task_id)
        if any(file.fetched for file in archived):
            self._write_manifest(f"{folder}/{event.stage}.manifest.json", archived)
        if failures and not last_attempt(job, list(failures)):
            return list(failures)
        for failure in failures:
            send_isolated(
                media_archive_failed, job.app, event=event, url=failure.url, error=failure.error
            )
        if archived:
            # Given up on some, the host still learns where the others are.
            sources = {file.source: file.url for file in archived}
            send_isolated(
                media_archived, job.app, event=event, files=sources, archived=tuple(archived)
            )
        return list(failures)

    def _keep(
        self, fetcher: SafeFetcher, media: Media, path: str, known: Mapping[str, Any]
    ) -> ArchivedFile:
        """Archive one file at ``path``, unless it is there already (``known``: what the
        manifests beside it say of their files, by path)."""
        full = f"{self.root}/{path}"
        content_type: str | None
        if self.fs.exists(full):
            content_type = known.get(path, {}).get("content_type")
            size = int(self.fs.size(full))
            return ArchivedFile(media.source, self.url_of(path), path, size, content_type, False)
        folder, _, name = full.rpartition("/")
        partial = f"{folder}/.{name}.{uuid.uuid4().hex}.part"
        self.fs.makedirs(folder, exist_ok=True)
        moved = False
        try:
            if media.content is not None:
                with self.fs.open(partial, "wb") as out:
                    out.write(media.content)
                size, content_type = len(media.content), "application/json"
            else:
                assert media.url is not None  # a Media has a link or content
                size, content_type = self._fetch(fetcher, media.url, partial)
            self.fs.mv(partial, full)
            moved = True
        finally:
            if not moved:
                with contextlib.suppress(OSError):
                    if self.fs.exists(partial):
                        self.fs.rm(partial)
        self._clear_partials(folder, name)
        return ArchivedFile(media.source, self.url_of(path), path, size, content_type, True)

    def _clear_partials(self, folder: str, name: str) -> None:
        """Remove what processes killed while fetching ``name`` left beside it: partial files
        older than :data:`STALE_PARTIAL_AGE`, so that one a live copy is writing is left alone.
        A filesystem that cannot say when a file changed keeps them."""
        cutoff = datetime.now(timezone.utc) - STALE_PARTIAL_AGE
        with contextlib.suppress(Exception):  # tidying only: the file itself is archived
            for stale in self.fs.glob(f"{folder}/.{glob.escape(name)}.*.part"):
                changed = self.fs.modified(stale)
                if changed.tzinfo is None:
                    changed = changed.replace(tzinfo=timezone.utc)
                if changed < cutoff:
                    self.fs.rm(stale)

    def _fetch(self, fetcher: SafeFetcher, url: str, partial: str) -> tuple[int, str | None]:
        """Stream ``url`` into ``partial``; its size and content type."""
        with fetcher.stream(url) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise NotKept(self._too_large())
            size = 0
            with self.fs.open(partial, "wb") as out:
                for chunk in body(response, CHUNK_SIZE):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise NotKept(self._too_large())
                    out.write(chunk)
            if size == 0:
                raise FetchFailed("an empty answer", retry=True)
            return size, response.headers.get("Content-Type")

    def _too_large(self) -> str:
        return f"larger than MUSICCALLBACK_ARCHIVE_MAX_BYTES ({self.max_bytes} bytes)"

    def _known(self, folder: str) -> dict[str, Any]:
        """What the manifests in ``folder`` say of their files, by path: a file archived by an
        earlier run (another stage, an attempt that archived some files) keeps its content
        type in the manifests written after it."""
        known: dict[str, Any] = {}
        try:
            manifests = sorted(self.fs.glob(f"{self.root}/{folder}/*.manifest.json"))
            for manifest in manifests:
                with self.fs.open(manifest, "r") as file:
                    for item in json.load(file).get("files", []):
                        known[item["path"]] = item
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("Cannot read the archive manifests of %s: %s", folder, exc)
        return known

    def _write_manifest(self, path: str, archived: Sequence[ArchivedFile]) -> None:
        record = {
            "archived_at": datetime.now(timezone.utc).isoformat(),
            "files": [file.as_json() for file in archived],
        }
        try:
            with self.fs.open(f"{self.root}/{path}", "w") as out:
                json.dump(record, out, indent=2)
        except OSError as exc:  # the files are archived; the record of them is a convenience
            logger.warning("Cannot write the archive manifest %s: %s", path, exc)

    def close(self, timeout: float | None = None) -> bool:
        return self.dispatcher.close(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.dispatcher.wait_idle(timeout)


def archive_for(settings: Settings) -> Archive | None:
    """The archive ``MUSICCALLBACK_ARCHIVE`` names, with copies run where the app's dispatch
    says: a pool of ``MUSICCALLBACK_ARCHIVE_THREADS`` threads of this process (``sync``,
    ``thread``), or the Celery workers (``celery``); ``None`` when it names none.

    Builds the filesystem object, which checks the URL and the fsspec plugin it needs, but
    connects to nothing: an app starts while its archive's server is away.
    """
    if settings.archive_url is None:
        return None
    try:
        import fsspec
    except ImportError as exc:
        raise ConfigurationError(
            f"{ConfigKeys.ARCHIVE} needs fsspec: pip install 'flask-musiccallback[archive]'."
        ) from exc
    try:
        fs, root = fsspec.core.url_to_fs(settings.archive_url)
    except (ImportError, ValueError) as exc:
        raise ConfigurationError(
            f"{ConfigKeys.ARCHIVE} is no fsspec URL this process can use: {exc}"
        ) from exc
    dispatcher: Dispatcher
    if settings.dispatch == "celery":
        from ..dispatch.celery import ARCHIVE_TASK_NAME, CeleryDispatcher

        dispatcher = CeleryDispatcher(settings, task_name=ARCHIVE_TASK_NAME)
    else:
        pool = Pool(
            settings.archive_threads,
            settings.thread_queue_size,
            name="musiccallback-archive",
            unit="media copies",
        )
        dispatcher = ThreadDispatcher(settings, pool)
    return Archive(
        fs,
        root,
        dispatcher,
        allow=settings.archive_allow,
        max_bytes=settings.archive_max_bytes,
        timeout=settings.archive_timeout,
    )


def media_of(family: Family, event: Event) -> Sequence[Media]:
    """The files a success of ``family`` carries (none for a failure), each under a name of its
    own (:func:`~.media.distinct`)."""
    return () if str(event.stage) == FAILED else distinct(family.media(event))
