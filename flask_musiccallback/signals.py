"""Every signal the extension sends, in one namespace.

Each is sent with the Flask application as sender, so a host subscribes with
``signal.connect_via(app)`` and a library serving several apps can tell them apart. Receivers take
``(sender, **kwargs)``; the keyword arguments of each signal are listed beside it.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A new ``text`` stage (lyrics or text done). Sender: the app. Kwargs: ``event``.
text_generated = _signals.signal("text-generated")

#: A new ``first`` stage (the first track is ready). Sender: the app. Kwargs: ``event``.
first_track_generated = _signals.signal("first-track-generated")

#: A new ``complete`` stage (all tracks are ready). Sender: the app. Kwargs: ``event``.
all_tracks_generated = _signals.signal("all-tracks-generated")

#: A new failure: any ``code`` but 200, or ``callbackType`` ``error``/``failed``.
#: Sender: the app. Kwargs: ``event``.
task_failed = _signals.signal("task-failed")

# The other families (API.md section 9). Each success and failure signal is sent once per
# ``(task_id, family, stage)``, with the family's own event class; a failure's event has
# ``ok`` False, its ``code`` and ``msg`` as sent.

#: New lyrics. Sender: the app. Kwargs: ``event`` (a ``LyricsEvent``: ``lyrics``, each with
#: ``text``, ``title``, ``status`` and ``error``).
lyrics_generated = _signals.signal("lyrics-generated")

#: A failed lyrics task. Sender: the app. Kwargs: ``event`` (a ``LyricsEvent``).
lyrics_failed = _signals.signal("lyrics-failed")

#: A finished WAV conversion. Sender: the app. Kwargs: ``event`` (a ``WavEvent``: ``wav_url``).
wav_converted = _signals.signal("wav-converted")

#: A failed WAV conversion. Sender: the app. Kwargs: ``event`` (a ``WavEvent``).
wav_failed = _signals.signal("wav-failed")

#: A finished vocal separation or stem split. Sender: the app. Kwargs: ``event`` (a
#: ``StemsEvent``: ``stems``, stem name to URL, and ``parts`` of the advanced split).
stems_separated = _signals.signal("stems-separated")

#: A failed vocal separation or stem split. Sender: the app. Kwargs: ``event`` (a ``StemsEvent``).
stems_failed = _signals.signal("stems-failed")

#: A finished MIDI transcription. Sender: the app. Kwargs: ``event`` (a ``MidiEvent``:
#: ``instruments``, each with its ``notes``).
midi_generated = _signals.signal("midi-generated")

#: A failed MIDI transcription. Sender: the app. Kwargs: ``event`` (a ``MidiEvent``).
midi_failed = _signals.signal("midi-failed")

#: A finished music video. Sender: the app. Kwargs: ``event`` (a ``VideoEvent``: ``video_url``).
video_generated = _signals.signal("video-generated")

#: A failed music video. Sender: the app. Kwargs: ``event`` (a ``VideoEvent``).
video_failed = _signals.signal("video-failed")

#: New cover images. Sender: the app. Kwargs: ``event`` (a ``CoverEvent``: ``images``).
cover_generated = _signals.signal("cover-generated")

#: A failed cover image task. Sender: the app. Kwargs: ``event`` (a ``CoverEvent``).
cover_failed = _signals.signal("cover-failed")

#: A custom voice's validation phrase is ready to be recorded (status ``wait_validating``).
#: Sender: the app. Kwargs: ``event`` (a ``VoiceEvent``: ``validate_info`` holds the phrase).
voice_phrase_ready = _signals.signal("voice-phrase-ready")

#: A custom voice is ready (status ``success``). Sender: the app. Kwargs: ``event`` (a
#: ``VoiceEvent``: ``voice_id``).
voice_generated = _signals.signal("voice-generated")

#: A custom voice failed, or its validation did. Sender: the app. Kwargs: ``event`` (a
#: ``VoiceEvent``: ``status`` as sent).
voice_failed = _signals.signal("voice-failed")

#: Every accepted new delivery of any family, before its stage signal. Sender: the app.
#: Kwargs: ``event``.
callback_received = _signals.signal("callback-received")

#: A delivery that was not dispatched again. Sender: the app. Kwargs: ``event``, and ``reason``:
#: ``"duplicate"`` (already processed), ``"in_progress"`` (being processed right now) or
#: ``"stale"`` (a ``text`` or ``first`` after that task's ``complete`` was processed).
callback_duplicate = _signals.signal("callback-duplicate")

#: An authenticated body that no family reads, answered 200 ``{"status": "kept"}`` and kept by a
#: persistent store as ``unreadable`` (``replay --unreadable`` reads it again). Sender: the app.
#: Kwargs: ``payload`` (the JSON body), ``errors`` (what failed, a dict) and ``family`` (the
#: family that tried to read it, or ``None`` when none did).
callback_unreadable = _signals.signal("callback-unreadable")

#: A refused request. Sender: the app. Kwargs: ``reason`` (``unauthorized``, ``forbidden``,
#: ``too_large``, ``invalid_json``, ``invalid_payload``, ``unexpected_task`` or ``unverified``),
#: ``errors`` (a dict, may be empty) and ``status`` (the HTTP status answered).
callback_rejected = _signals.signal("callback-rejected")

#: An open task went silent for ``MUSICCALLBACK_RECONCILE_AFTER`` seconds: its callbacks may be
#: lost, and reconciliation polls it (docs/tasks.md). Sent once per task, before that first poll
#: dispatches what it finds, by the reconciler that claimed the task; a reconciler that dies before
#: recording it leaves it to be sent again (at least once). Sender: the app. Kwargs: ``task`` (a
#: ``TaskRecord``).
task_overdue = _signals.signal("task-overdue")

#: An open task stayed open ``MUSICCALLBACK_RECONCILE_GIVE_UP`` seconds after it was expected or
#: first heard of: reconciliation made it ``lost`` and stops polling it. Sent once, after the
#: store recorded it (a reconciler that dies in between loses the signal, not the state: ``flask
#: musiccallback tasks --state lost`` lists it). A result found later still settles the task.
#: Sender: the app. Kwargs: ``task`` (a ``TaskRecord``, ``lost``).
task_lost = _signals.signal("task-lost")

#: The files of a new success event are in ``MUSICCALLBACK_ARCHIVE`` (docs/archive.md), copied
#: off the request path: every one, or, after the copy's last attempt, those that could be (the
#: others have ``media_archive_failed``). Sender: the app. Kwargs: ``event``, ``files`` (a dict:
#: each source URL to its archived URL; content the callback carried, a MIDI result, is keyed
#: ``callback:`` and its file name) and ``archived`` (an ``ArchivedFile`` for each: path, size,
#: content type, and whether it was fetched now or found archived already).
media_archived = _signals.signal("media-archived")

#: A file of an event could not be archived after the copy's last attempt (copies are retried
#: as receivers are: ``MUSICCALLBACK_RETRY_ATTEMPTS``, ``MUSICCALLBACK_RETRY_BACKOFF``). Sent
#: once for each such file; a persistent store keeps the copy failed, and ``replay`` tries it
#: again. Sender: the app. Kwargs: ``event``, ``url`` (the source) and ``error`` (why).
media_archive_failed = _signals.signal("media-archive-failed")

#: A receiver raised. Sender: the app. Kwargs: ``event``, ``receiver`` (its qualified name) and
#: ``exception``.
receiver_failed = _signals.signal("receiver-failed")

__all__ = [
    "all_tracks_generated",
    "callback_duplicate",
    "callback_received",
    "callback_rejected",
    "callback_unreadable",
    "cover_failed",
    "cover_generated",
    "first_track_generated",
    "lyrics_failed",
    "lyrics_generated",
    "media_archive_failed",
    "media_archived",
    "midi_failed",
    "midi_generated",
    "receiver_failed",
    "stems_failed",
    "stems_separated",
    "task_failed",
    "task_lost",
    "task_overdue",
    "text_generated",
    "video_failed",
    "video_generated",
    "voice_failed",
    "voice_generated",
    "voice_phrase_ready",
    "wav_converted",
    "wav_failed",
]
