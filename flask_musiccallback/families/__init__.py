"""Callback families: one module each, on the seam of :mod:`.base` (docs/families.md).

:data:`BUILT_IN` is every family the provider calls back with, in the order an extension
registers them: music first, so that it is the default a failure nothing else places goes to.
A body's keys are asked about in the reverse order, so the families with the narrowest keys come
last here: lyrics, whose callbacks carry a ``callbackType`` as music's do, is asked before music.
"""

from .base import FAMILY_ARG, Event, Example, Families, Family, Record, find_task_id
from .cover import COVER, CoverEvent
from .lyrics import LYRICS, Lyrics, LyricsEvent
from .midi import MIDI, Instrument, MidiEvent, Note
from .music import MUSIC, MUSIC_NAME
from .stems import STEMS, StemAudio, StemPart, StemsEvent
from .video import VIDEO, VideoEvent
from .voice import VOICE, VoiceEvent
from .wav import WAV, WavEvent

#: The provider's families, as every extension reads them (``music.families``).
BUILT_IN: tuple[Family, ...] = (MUSIC, WAV, LYRICS, STEMS, MIDI, VIDEO, COVER, VOICE)


def built_in(name: str) -> Family:
    """The built-in family called ``name``; ``LookupError`` for another name."""
    for family in BUILT_IN:
        if family.name == name:
            return family
    raise LookupError(f"No built-in callback family is named {name!r}.")


__all__ = [
    "BUILT_IN",
    "COVER",
    "FAMILY_ARG",
    "LYRICS",
    "MIDI",
    "MUSIC",
    "MUSIC_NAME",
    "STEMS",
    "VIDEO",
    "VOICE",
    "WAV",
    "CoverEvent",
    "Event",
    "Example",
    "Families",
    "Family",
    "Instrument",
    "Lyrics",
    "LyricsEvent",
    "MidiEvent",
    "Note",
    "Record",
    "StemAudio",
    "StemPart",
    "StemsEvent",
    "VideoEvent",
    "VoiceEvent",
    "WavEvent",
    "built_in",
    "find_task_id",
]
