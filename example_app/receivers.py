"""What the example app does with each callback: record the task's progress, keep its media.

The receivers run off the request path (``MUSICCALLBACK_DISPATCH = "thread"``) in an app context,
possibly several stages of one task at once and in any order, and again after a failure; so every
write is idempotent and an earlier stage never overwrites what a later one filled in.
"""

from __future__ import annotations

from flask import current_app

from flask_musiccallback import CallbackEvent, MusicCallback, Stage
from flask_musiccallback import Track as CallbackTrack

from . import media
from .models import STAGE_RANK, Task, TaskStage, Track, db, insert_missing, naive_utc, utcnow

music = MusicCallback()

#: Track fields copied from the event as they are, when the event carries them.
_TRACK_FIELDS = (
    ("audio_id", "id"),
    ("title", "title"),
    ("tags", "tags"),
    ("prompt", "prompt"),
    ("model_name", "model_name"),
    ("duration", "duration"),
    ("audio_url", "audio_url"),
    ("stream_audio_url", "stream_audio_url"),
    ("image_url", "image_url"),
)


@music.on(Stage.TEXT)
@music.on(Stage.FIRST)
@music.on(Stage.FAILED)
def record_progress(event: CallbackEvent) -> None:
    """Add the stage to the task's timeline and fill its tracks in."""
    record(event)


@music.on(Stage.COMPLETE)
def keep_tracks(event: CallbackEvent) -> None:
    """Record the finished task, then copy its audio and covers before the provider's links expire.

    The copy never raises: a failed download is recorded on the track and the page uses the
    provider's link meanwhile (``flask download-media`` tries again).
    """
    record(event)
    media.save_task_media(current_app._get_current_object(), event.task_id)  # type: ignore[attr-defined]


def record(event: CallbackEvent) -> None:
    """Write one stage of a task, in one short transaction."""
    received_at = naive_utc(event.received_at)
    # The insert comes first: on SQLite it takes the write lock, so concurrent stages of one task
    # are written one after the other; on PostgreSQL the row lock below does the same.
    insert_missing(Task, {"id": event.task_id, "created_at": received_at, "updated_at": utcnow()})
    insert_missing(
        TaskStage,
        {
            "task_id": event.task_id,
            "stage": event.stage.value,
            "code": event.code,
            "msg": event.msg,
            "error": event.error,
            "received_at": received_at,
        },
    )
    task = db.session.execute(
        db.select(Task).where(Task.id == event.task_id).with_for_update()
    ).scalar_one()
    task.created_at = min(task.created_at, received_at)
    for position, track in enumerate(event.tracks):
        _merge_track(task, position, track, event.stage)
    task.updated_at = utcnow()
    db.session.commit()


def _merge_track(task: Task, position: int, track: CallbackTrack, stage: Stage) -> None:
    row = next((row for row in task.tracks if row.position == position), None)
    if row is None:
        row = Track(position=position, stage=stage.value, media_status="none")
        task.tracks.append(row)
    elif STAGE_RANK[stage.value] < STAGE_RANK[row.stage]:
        return
    row.stage = stage.value
    for column, field in _TRACK_FIELDS:
        value = getattr(track, field)
        if value is not None:
            setattr(row, column, value)
    if track.created_at is not None:
        row.generated_at = naive_utc(track.created_at)
    if stage is Stage.COMPLETE and row.media_status != "saved" and (row.audio_url or row.image_url):
        row.media_status = "pending"
        row.media_error = None
