"""The example app's tables: tasks, the stages each went through, their tracks, and the results of
the other families.

A task is whatever the provider reported under one task id: music, lyrics, a WAV, stems, MIDI, a
video, cover images or a voice. Every family's stages go to one timeline (``task_stages``, keyed as
the extension deduplicates them: task id, family, stage); music's tracks have a table of their own,
because their fields are filled in stage by stage, while each other family's result is one row of
``results``, holding what the page shows of it as JSON.

Tracks and results also say what the extension's media archive did with their files
(``MUSICCALLBACK_ARCHIVE``): each file's path in the archive once it is there, or why it could not
be archived, and a ``media_status`` summing them up (:func:`media_status`).

Times are stored as naive UTC (SQLite keeps no zone) and made aware again where they are shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

#: How far along each stage is, whatever the family; a task's status is the furthest stage it
#: reached. A voice's ``phrase`` (the phrase to record) comes before its ``complete``.
STAGE_RANK = {"text": 1, "first": 2, "phrase": 2, "complete": 3, "failed": 4}

#: ``media_status`` of a track or a result: ``none`` when it has no file (yet) or nothing archives
#: it; ``pending`` while the archive copies its files; ``archived`` once every one is in the
#: archive; ``failed`` when one could not be archived after the archive's retries (the page then
#: uses the provider's link, which expires after about two weeks; ``flask musiccallback replay``
#: tries again).
MEDIA_STATUSES = ("none", "pending", "archived", "failed")


def media_status(files: Iterable[tuple[str | None, str | None]], archiving: bool) -> str:
    """The :data:`MEDIA_STATUSES` of a row from the ``(path, error)`` of each of its files: the
    path once archived, the error once the archive gave up on it."""
    files = list(files)
    if not files:
        return "none"
    missing = [error for path, error in files if path is None]
    if not missing:
        return "archived"
    if any(missing):
        return "failed"
    return "pending" if archiving else "none"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc)


class Task(db.Model):  # type: ignore[name-defined,misc]
    """A task of any family, known from its first callback on."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    #: When its earliest callback was received.
    created_at: Mapped[datetime] = mapped_column(index=True)
    #: Changed by every write to the task, its stages or its tracks: what the page compares to
    #: know whether to redraw it.
    updated_at: Mapped[datetime] = mapped_column(index=True)

    stages: Mapped[list[TaskStage]] = relationship(
        order_by="TaskStage.received_at", cascade="all, delete-orphan", lazy="selectin"
    )
    tracks: Mapped[list[Track]] = relationship(
        order_by="Track.position", cascade="all, delete-orphan", lazy="selectin"
    )
    results: Mapped[list[Result]] = relationship(
        order_by="Result.family", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def families(self) -> list[str]:
        """The families its callbacks came from, first heard first: one, unless two kinds of
        task shared an id."""
        return list(dict.fromkeys(stage.family for stage in self.stages))

    @property
    def status(self) -> str:
        """``text``, ``first``, ``phrase``, ``complete`` or ``failed``: the furthest stage
        received; ``waiting`` before any (a task submitted, known from the extension's task
        view only)."""
        return max(
            (stage.stage for stage in self.stages), key=STAGE_RANK.__getitem__, default="waiting"
        )

    @property
    def failure(self) -> TaskStage | None:
        return next((stage for stage in self.stages if stage.stage == "failed"), None)

    @property
    def media_pending(self) -> bool:
        """Whether the archive is still copying a file of its tracks or results."""
        rows: list[Track | Result] = [*self.tracks, *self.results]
        return any(row.media_status == "pending" for row in rows)

    @property
    def in_progress(self) -> bool:
        """Whether the page should keep watching this task for changes."""
        return self.status not in ("complete", "failed") or self.media_pending

    @property
    def version(self) -> str:
        return self.updated_at.isoformat()


class TaskStage(db.Model):  # type: ignore[name-defined,misc]
    """One stage a task went through, as its callback reported it: the task's timeline.

    Keyed like the extension's deduplication, so that a lyrics ``complete`` never hides a music
    ``complete`` of the same task id.
    """

    __tablename__ = "task_stages"
    __table_args__ = (sa.UniqueConstraint("task_id", "family", "stage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(sa.String(32))
    stage: Mapped[str] = mapped_column(sa.String(16))
    code: Mapped[int]
    msg: Mapped[str] = mapped_column(sa.Text)
    #: A failure's own explanation, when the provider sent one (music's ``data.error``, a
    #: voice's ``errorMessage``).
    error: Mapped[str | None] = mapped_column(sa.Text)
    received_at: Mapped[datetime]


class Track(db.Model):  # type: ignore[name-defined,misc]
    """One track of a task, filled in as the stages arrive, with its archived media.

    Keyed by its position in the task's list, since the provider may leave its ``id`` out.
    """

    __tablename__ = "tracks"
    __table_args__ = (sa.UniqueConstraint("task_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"))
    position: Mapped[int]
    #: The stage whose callback last filled the track in; an earlier stage never overwrites it.
    stage: Mapped[str] = mapped_column(sa.String(16))
    audio_id: Mapped[str | None] = mapped_column(sa.String(255))
    title: Mapped[str | None] = mapped_column(sa.Text)
    tags: Mapped[str | None] = mapped_column(sa.Text)
    prompt: Mapped[str | None] = mapped_column(sa.Text)
    model_name: Mapped[str | None] = mapped_column(sa.String(64))
    duration: Mapped[float | None]
    generated_at: Mapped[datetime | None]
    #: The links the archive copies (the provider's ``source_`` ones when these are missing).
    audio_url: Mapped[str | None] = mapped_column(sa.Text)
    stream_audio_url: Mapped[str | None] = mapped_column(sa.Text)
    image_url: Mapped[str | None] = mapped_column(sa.Text)
    #: Paths in the archive of the copies, from its root (``{task_id}/music/{name}.{ext}``).
    audio_path: Mapped[str | None] = mapped_column(sa.Text)
    image_path: Mapped[str | None] = mapped_column(sa.Text)
    #: Why a file could not be archived, after the archive's last attempt.
    audio_error: Mapped[str | None] = mapped_column(sa.Text)
    image_error: Mapped[str | None] = mapped_column(sa.Text)
    media_status: Mapped[str] = mapped_column(sa.String(16), default="none")

    @property
    def tag_list(self) -> list[str]:
        return [tag.strip() for tag in (self.tags or "").split(",") if tag.strip()]

    def settle_media(self, archiving: bool) -> None:
        files = [
            (path, error)
            for url, path, error in (
                (self.audio_url, self.audio_path, self.audio_error),
                (self.image_url, self.image_path, self.image_error),
            )
            if url
        ]
        self.media_status = media_status(files, archiving)


class Result(db.Model):  # type: ignore[name-defined,misc]
    """What a task of a family other than music produced, as the page shows it.

    ``data`` holds only that (a MIDI task's note counts, not its notes), in a shape of the
    family's own that its macro in ``templates/_results.html`` reads; the whole body is the
    extension's to keep, not the page's. One row per family of a task, filled in by the
    furthest stage that had a result: a voice's ``complete`` replaces its ``phrase``, never the
    other way round.
    """

    __tablename__ = "results"
    __table_args__ = (sa.UniqueConstraint("task_id", "family"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(sa.String(32))
    #: The stage whose callback filled it in.
    stage: Mapped[str] = mapped_column(sa.String(16))
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    #: Each archived file's path in the archive, by the link it was copied from (``callback:``
    #: and its name for content the callback carried: a MIDI result's notes).
    files: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    #: Why a file could not be archived, by its link.
    file_errors: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    media_status: Mapped[str] = mapped_column(sa.String(16), default="none")

    def settle_media(self, sources: Iterable[str], archiving: bool) -> None:
        """``sources``: the links of every file the result has, as the archive names them."""
        files = [(self.files.get(source), self.file_errors.get(source)) for source in sources]
        self.media_status = media_status(files, archiving)


def insert_missing(model: Any, values: dict[str, Any]) -> None:
    """Insert a row unless one with the same unique key exists, without a race between threads.

    Receivers of several stages of one task run at once under thread dispatch; a check before the
    insert would let two of them insert the same task.
    """
    table = model.__table__
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        db.session.execute(pg_insert(table).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        db.session.execute(sqlite_insert(table).values(values).on_conflict_do_nothing())
    else:
        try:
            with db.session.begin_nested():
                db.session.execute(sa.insert(table).values(values))
        except sa.exc.IntegrityError:
            pass
