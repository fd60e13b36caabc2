"""What the example app does with each callback: record the task's progress and result, and
what the media archive kept of its files.

The receivers run off the request path (``MUSICCALLBACK_DISPATCH = "thread"``) in an app context,
possibly several stages of one task at once and in any order, and again after a failure; so every
write is idempotent and an earlier stage never overwrites what a later one filled in.

Every stage of every family goes through :func:`record`; what differs is what each family keeps
of its event for the page (:data:`RESULTS`). The files themselves are the extension's to copy
(``MUSICCALLBACK_ARCHIVE``): it fetches every success's media off the request path, then sends
``media_archived`` for the files it kept and, after its last retry, ``media_archive_failed`` for
each it could not, whose receivers here record on the task's rows where each file is, or why it
is not. Those signals come from the archive's own
threads, maybe before the stage's receiver has run: they go through :func:`record` too, which
writes the task, its stage and its rows from the event whichever comes first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from flask import Flask, current_app

from flask_musiccallback import (
    CallbackEvent,
    CoverEvent,
    FamilyEvent,
    LyricsEvent,
    MidiEvent,
    MusicCallback,
    StemsEvent,
    VideoEvent,
    VoiceEvent,
    WavEvent,
    media_archive_failed,
    media_archived,
)
from flask_musiccallback import Track as CallbackTrack
from flask_musiccallback.archive.copies import ArchivedFile
from flask_musiccallback.state import get_state

from .metrics import stages_recorded
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


def keep(event: FamilyEvent) -> None:
    """Add the stage to the task's timeline, and fill in its tracks or its result."""
    record(event)
    stages_recorded.add(1, {"family": event.family, "stage": str(event.stage)})


# Every stage of every family, successes and failures alike.
for _family in music.families:
    for _stage in _family.stages:
        music.on(_stage, family=_family.name)(keep)


@media_archived.connect
def keep_archived(
    sender: Flask, *, event: FamilyEvent, archived: tuple[ArchivedFile, ...], **extra: Any
) -> None:
    """Files of a success are in the archive (every one, or those kept when the archive gave
    up on others): note where, for the page to serve them."""
    if _ours(sender):
        record(event, archived={file.source: file.path for file in archived})


@media_archive_failed.connect
def keep_archive_failure(
    sender: Flask, *, event: FamilyEvent, url: str, error: str, **extra: Any
) -> None:
    """A file could not be archived after the archive's retries: note why; the page plays the
    provider's link meanwhile, and ``flask musiccallback replay`` tries again."""
    if _ours(sender):
        record(event, failed={url: error})


def _ours(app: Flask) -> bool:
    """Whether ``app`` is served by this extension object: the archive's signals, unlike
    ``music.on``, are sent for every app of the process (a test suite builds many)."""
    return "musiccallback" in app.extensions and get_state(app).extension is music


# What the page shows of each family's result, but music's (whose tracks have a table of their
# own): the ``data`` its macro in templates/_results.html reads.


def _lyrics(event: LyricsEvent) -> dict[str, Any]:
    """Each variant's title and text (line breaks and ``[Verse]`` marks as sent), and why a
    variant failed when one did."""
    return {"variants": [asdict(variant) for variant in event.lyrics]}


#: Labels of the stems whose name does not read well as it is (``backing_vocals`` does).
_STEM_NAMES = {"origin": "original"}


def _stems(event: StemsEvent) -> dict[str, Any]:
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
    return {"stems": stems}


def _stem(name: str, url: str, duration: float | None = None) -> dict[str, Any]:
    return {"label": name.replace("_", " ").capitalize(), "url": url, "duration": duration}


def _midi(event: MidiEvent) -> dict[str, Any]:
    """Each instrument with its number of notes: a summary for the page, not the notes
    themselves (a song has thousands; the archive keeps them all, as JSON)."""
    instruments = [
        {"name": instrument.name, "notes": len(instrument.notes)}
        for instrument in event.instruments
    ]
    return {"instruments": instruments}


def _voice(event: VoiceEvent) -> dict[str, Any]:
    """The phrase the speaker must record (``phrase``), then the voice made of it
    (``complete``)."""
    return {"phrase": event.validate_info, "voice_id": event.voice_id}


def _wav(event: WavEvent) -> dict[str, Any]:
    return {"url": event.wav_url}


def _video(event: VideoEvent) -> dict[str, Any]:
    return {"url": event.video_url}


def _cover(event: CoverEvent) -> dict[str, Any]:
    return {"images": list(event.images)}


#: What a success of each family but music keeps for the page, by family.
RESULTS: Mapping[str, Callable[[Any], dict[str, Any]]] = {
    "lyrics": _lyrics,
    "wav": _wav,
    "stems": _stems,
    "midi": _midi,
    "video": _video,
    "cover": _cover,
    "voice": _voice,
}

#: Track fields copied from the event as they are, when the event carries them.
_TRACK_FIELDS = (
    ("audio_id", "id"),
    ("title", "title"),
    ("tags", "tags"),
    ("prompt", "prompt"),
    ("model_name", "model_name"),
    ("duration", "duration"),
    ("stream_audio_url", "stream_audio_url"),
)


def record(
    event: FamilyEvent,
    *,
    archived: Mapping[str, str] | None = None,
    failed: Mapping[str, str] | None = None,
) -> None:
    """Write one stage of a task of any family in one short transaction: the stage, its tracks
    or result, and what the archive did with the files (``archived``: each source link's path
    in the archive; ``failed``: why a link could not be archived)."""
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
    state = get_state(current_app)
    archiving = state.archive is not None
    if isinstance(event, CallbackEvent):
        for position, track in enumerate(event.tracks):
            _merge_track(task, position, track, stage)
        for row in task.tracks:
            _archived_track(row, archived or {}, failed or {})
            row.settle_media(archiving)
    elif event.family in RESULTS and stage != "failed":
        row = _merge_result(task, event.family, stage, RESULTS[event.family](event))
        row.files = {**row.files, **(archived or {})}
        row.file_errors = {
            source: error
            for source, error in {**row.file_errors, **(failed or {})}.items()
            if source not in row.files
        }
        family = state.extension.families.named(event.family)
        row.settle_media([media.source for media in family.media(event)], archiving)
    task.updated_at = utcnow()
    db.session.commit()


def _error(event: FamilyEvent) -> str | None:
    """A failure's own explanation, from the families that send one besides code and message."""
    if isinstance(event, (CallbackEvent, VoiceEvent)):
        return event.error
    return None


def _merge_result(task: Task, family: str, stage: str, result: Mapping[str, Any]) -> Result:
    row = next((row for row in task.results if row.family == family), None)
    if row is None:
        row = Result(family=family, stage=stage, data=dict(result), files={}, file_errors={})
        task.results.append(row)
    elif STAGE_RANK[stage] >= STAGE_RANK[row.stage]:
        row.stage = stage
        row.data = dict(result)
    return row


def _merge_track(task: Task, position: int, track: CallbackTrack, stage: str) -> None:
    row = next((row for row in task.tracks if row.position == position), None)
    if row is None:
        row = Track(position=position, stage=stage, media_status="none")
        task.tracks.append(row)
    elif STAGE_RANK[stage] < STAGE_RANK[row.stage]:
        return
    row.stage = stage
    for column, field in _TRACK_FIELDS:
        value = getattr(track, field)
        if value is not None:
            setattr(row, column, value)
    # The links the archive copies: the provider's own ones when the usual are missing.
    row.audio_url = track.audio_url or track.source_audio_url or row.audio_url
    row.image_url = track.image_url or track.source_image_url or row.image_url
    if track.created_at is not None:
        row.generated_at = naive_utc(track.created_at)


def _archived_track(row: Track, archived: Mapping[str, str], failed: Mapping[str, str]) -> None:
    """Note on a track where its audio and cover are in the archive, or why they are not."""
    audio, image = row.audio_url or "", row.image_url or ""
    if audio in archived:
        row.audio_path, row.audio_error = archived[audio], None
    elif audio in failed and row.audio_path is None:
        row.audio_error = failed[audio]
    if image in archived:
        row.image_path, row.image_error = archived[image], None
    elif image in failed and row.image_path is None:
        row.image_error = failed[image]
