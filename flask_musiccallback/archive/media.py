"""What an event's media are, as the archive names them: :class:`Media`, and how a family says
which files a success of it carries (:attr:`~..families.base.Family.media`).

Names are chosen before anything is fetched, from the event alone (a track's title and id, a
stem's name), so that a file already archived is found by its name without asking the network,
and a person browsing the archive knows what each file is.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

#: The suffixes a link's path may lend its file; any other takes the media's default.
KNOWN_SUFFIXES = frozenset(
    {"mp3", "wav", "m4a", "ogg", "flac", "mp4", "webm", "mov", "jpeg", "jpg", "png", "webp", "gif"}
    | {"json", "mid", "midi", "txt"}
)

#: The longest readable part of a name; an id or a digest follows it.
MAX_NAME = 80

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Media:
    """One file of an event: where it is (``url``), or its content when the callback carries it
    (``content``: a MIDI result), and the name it is archived under, without a suffix."""

    name: str
    #: The suffix when the link's path gives none the archive knows (``mp3`` for audio).
    default_ext: str
    url: str | None = None
    content: bytes | None = None

    @property
    def ext(self) -> str:
        """The file's suffix: the link's, when it is one the archive knows, else the default."""
        if self.url:
            try:
                path = urlsplit(self.url).path
            except ValueError:  # "http://[::1": the fetcher refuses it, but it needs a name
                return self.default_ext
            suffix = PurePosixPath(path).suffix.lower().lstrip(".")
            if suffix in KNOWN_SUFFIXES:
                return suffix
        return self.default_ext

    @property
    def filename(self) -> str:
        """``name.ext``, made safe: a host's family may name its files from what a callback
        says, and no name may lead out of its folder."""
        return f"{readable(self.name)}.{readable(self.ext, fallback='bin')}"

    @property
    def source(self) -> str:
        """What ``media_archived``'s ``files`` keys the file by: its link, or, for content the
        callback carried, ``callback:`` and the file's name."""
        return self.url or f"callback:{self.filename}"


def readable(*parts: str | None, fallback: str = "file") -> str:
    """A file name made of ``parts`` (a title, an id): letters, digits, ``.``, ``_`` and ``-``
    only, the others joined by ``-``; ``fallback`` when nothing is left."""
    words = [_UNSAFE.sub("-", part).strip("-.") for part in parts if part]
    name = "-".join(word for word in words if word)[:MAX_NAME].strip("-.")
    return name or fallback


def safe_segment(text: str) -> str:
    """``text`` as one folder name: itself when it is already safe (every provider task id),
    else a readable form with a digest of the original, so that two ids never share a folder."""
    if text and text not in (".", "..") and not _UNSAFE.search(text) and len(text) <= MAX_NAME:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{readable(text, fallback='task')[:MAX_NAME]}-{digest}"
