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

#: Every accepted new delivery, before its stage signal. Sender: the app. Kwargs: ``event``.
callback_received = _signals.signal("callback-received")

#: A delivery that was not dispatched again. Sender: the app. Kwargs: ``event``, and ``reason``:
#: ``"duplicate"`` (already processed), ``"in_progress"`` (being processed right now) or
#: ``"stale"`` (a ``text`` or ``first`` after that task's ``complete`` was processed).
callback_duplicate = _signals.signal("callback-duplicate")

#: A refused request. Sender: the app. Kwargs: ``reason`` (``unauthorized``, ``forbidden``,
#: ``too_large``, ``invalid_json`` or ``invalid_payload``), ``errors`` (a dict, may be empty) and
#: ``status`` (the HTTP status answered).
callback_rejected = _signals.signal("callback-rejected")

#: A receiver raised. Sender: the app. Kwargs: ``event``, ``receiver`` (its qualified name) and
#: ``exception``.
receiver_failed = _signals.signal("receiver-failed")

__all__ = [
    "all_tracks_generated",
    "callback_duplicate",
    "callback_received",
    "callback_rejected",
    "first_track_generated",
    "receiver_failed",
    "task_failed",
    "text_generated",
]
