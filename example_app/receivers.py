"""What the example app does with each callback: record the task's progress and result, and keep
a music task's media.

The receivers run off the request path (``MUSICCALLBACK_DISPATCH = "thread"``) in an app context,
possibly several stages of one task at once and in any order, and again after a failure; so every
write is idempotent and an earlier stage never overwrites what a later one filled in.

Every family goes through :func:`record`; what differs is what each keeps of its event for the
page (``result``). Only music tracks' media are copied here: the other families' links are shown
as the provider sent them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from flask import current_app

from flask_musiccallback import (
    CallbackEvent,
    CoverEvent,
    FamilyEvent,
    LyricsEvent,
    MidiEvent,
    MusicCallback,
    Stage,
    StemsEvent,
    VideoEvent,
    VoiceEvent,
    WavEvent,
)
from flask_musiccallback import Track as CallbackTrack

from . import media
from .models import (
    STAGE_RANK,
    Result,
    Task,
    TaskStage,
    Track,
    db,
    insert_missing,
    naive_utc,
    utcnow,
)

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


@music.on("complete", family="lyrics")
def keep_lyrics(event: LyricsEvent) -> None:
    """Each variant's title and text (line breaks and ``[Verse]`` marks as sent), and why a
    variant failed when one did."""
    record(event, {"variants": [asdict(variant) for variant in event.lyrics]})


@music.on("complete", family="wav")
def keep_wav(event: WavEvent) -> None:
    record(event, {"url": event.wav_url})


#: Labels of the stems whose name does not read well as it is (``backing_vocals`` does).
_STEM_NAMES = {"origin": "original"}


@music.on("complete", family="stems")
def keep_stems(event: StemsEvent) -> None:
    """One labelled link per stem: the separation's or split's stems by name, then, for each
    part of an advanced split, the stem taken out and the track without it."""
    stems = [_stem(_STEM_NAMES.get(name, name), url) for name, url in event.stems.items()]
    for part in event.parts:
        if part.extract is not None and part.extract.audio_url:
            group = part.extract.group or "Extracted stem"
            stems.append(_stem(group, part.extract.audio_url, part.extract.duration))
        if part.remove is not None and part.remove.audio_url:
            group = (part.remove.group or "the stem").lower()
            stems.append(_stem(f"Without {group}", part.remove.audio_url, part.remove.duration))
    record(event, {"stems": stems})


def _stem(name: str, url: str, duration: float | None = None) -> dict[str, Any]:
    return {"label": name.replace("_", " ").capitalize(), "url": url, "duration": duration}


@music.on("complete", family="midi")
def keep_midi_summary(event: MidiEvent) -> None:
    """Each instrument with its number of notes: a summary for the page, not the notes
    themselves (a song has thousands; ``event.raw`` has them all)."""
    instruments = [
        {"name": instrument.name, "notes": len(instrument.notes)}
        for instrument in event.instruments
    ]
    record(event, {"instruments": instruments})


@music.on("complete", family="video")
def keep_video(event: VideoEvent) -> None:
    record(event, {"url": event.video_url})


@music.on("complete", family="cover")
def keep_cover_images(event: CoverEvent) -> None:
    record(event, {"images": list(event.images)})


@music.on("phrase", family="voice")
@music.on("complete", family="voice")
def keep_voice(event: VoiceEvent) -> None:
    """The phrase the speaker must record (``phrase``), then the voice made of it
    (``complete``)."""
    record(event, {"phrase": event.validate_info, "voice_id": event.voice_id})


@music.on("failed", family="lyrics")
@music.on("failed", family="wav")
@music.on("failed", family="stems")
@music.on("failed", family="midi")
@music.on("failed", family="video")
@music.on("failed", family="cover")
@music.on("failed", family="voice")
def record_failure(event: FamilyEvent) -> None:
    """Any other family's failure: its code, message and error are all there is to show."""
    record(event)


def record(event: FamilyEvent, result: Mapping[str, Any] | None = None) -> None:
    """Write one stage of a task of any family, with what the page shows of its ``result``, in
    one short transaction."""
    received_at = naive_utc(event.received_at)
    stage = str(event.stage)
    # The insert comes first: on SQLite it takes the write lock, so concurrent stages of one task
    # are written one after the other; on PostgreSQL the row lock below does the same.
    insert_missing(Task, {"id": event.task_id, "created_at": received_at, "updated_at": utcnow()})
    insert_missing(
        TaskStage,
        {
            "task_id": event.task_id,
            "family": event.family,
            "stage": stage,
            "code": event.code,
            "msg": event.msg,
            "error": _error(event),
            "received_at": received_at,
        },
    )
    task = db.session.execute(
        db.select(Task).where(Task.id == event.task_id).with_for_update()
    ).scalar_one()
    task.created_at = min(task.created_at, received_at)
    if isinstance(event, CallbackEvent):
        for position, track in enumerate(event.tracks):
            _merge_track(task, position, track, event.stage)
    if result is not None:
        _merge_result(task, event.family, stage, result)
    task.updated_at = utcnow()
    db.session.commit()


def _error(event: FamilyEvent) -> str | None:
    """A failure's own explanation, from the families that send one besides code and message."""
    if isinstance(event, (CallbackEvent, VoiceEvent)):
        return event.error
    return None


def _merge_result(task: Task, family: str, stage: str, result: Mapping[str, Any]) -> None:
    row = next((row for row in task.results if row.family == family), None)
    if row is None:
        task.results.append(Result(family=family, stage=stage, data=dict(result)))
    elif STAGE_RANK[stage] >= STAGE_RANK[row.stage]:
        row.stage = stage
        row.data = dict(result)


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
