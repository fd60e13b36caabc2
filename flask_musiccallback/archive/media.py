"""What an event's media are, as the archive names them: :class:`Media`, and how a family says
which files a success of it carries (:attr:`~..families.base.Family.media`).

Names are chosen before anything is fetched, from the event alone (a track's title and id, a
stem's name), so that a file already archived is found by its name without asking the network,
and a person browsing the archive knows what each file is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

#: The suffixes a link's path may lend its file; any other takes the media's default.
KNOWN_SUFFIXES = frozenset(
    {"mp3", "wav", "m4a", "ogg", "flac", "mp4", "webm", "mov", "jpeg", "jpg", "png", "webp", "gif"}
    | {"json", "mid", "midi", "txt"}
)

#: The longest name :func:`readable` makes, unless what must stay whole is longer.
MAX_NAME = 80

#: The longest name of a file, its suffix aside: within every filesystem's 255 bytes.
MAX_FILE_NAME = 200

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
        name = _clean(self.name)[:MAX_FILE_NAME] or "file"
        return f"{name}.{readable(self.ext, fallback='bin')}"

    @property
    def source(self) -> str:
        """What ``media_archived``'s ``files`` keys the file by: its link, or, for content the
        callback carried, ``callback:`` and the file's name."""
        return self.url or f"callback:{self.filename}"


def readable(*parts: str | None, fallback: str = "file") -> str:
    """A file name made of ``parts``, the readable one first (a title, then an id, a kind):
    letters, digits, ``.``, ``_`` and ``-`` only, the others joined by ``-``; ``fallback`` when
    nothing is left.

    Only the first part is shortened to keep the name within :data:`MAX_NAME`: the parts after
    it tell files apart (two tracks of a task often share a long title), so they stay whole.
    """
    words = [word for word in (_clean(part) for part in parts if part) if word]
    if not words:
        return fallback
    head, rest = words[0], "-".join(words[1:])
    if rest:
        room = max(MAX_NAME - len(rest) - 1, 0)
        head = head[:room].strip("-.")
        name = f"{head}-{rest}" if head else rest
    else:
        name = head[:MAX_NAME]
    return _clean(name[:MAX_FILE_NAME]) or fallback


def _clean(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.")


def distinct(media: Sequence[Media]) -> list[Media]:
    """``media`` with no two files of different sources under one name: a later one takes a
    digest of its source into its name. Files named alike by a family (a host's own, or two
    parts with nothing to tell them apart) would otherwise be taken for one another."""
    taken: dict[str, str] = {}
    out: list[Media] = []
    for item in media:
        if taken.setdefault(item.filename, item.source) != item.source:
            digest = hashlib.sha256(item.source.encode()).hexdigest()[:10]
            item = dataclasses.replace(item, name=f"{item.name}-{digest}")
            taken.setdefault(item.filename, item.source)
        out.append(item)
    return out


def safe_segment(text: str) -> str:
    """``text`` as one folder name: itself when it is already safe (every provider task id),
    else a readable form with a digest of the original, so that two ids never share a folder."""
    if text and text not in (".", "..") and not _UNSAFE.search(text) and len(text) <= MAX_NAME:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{readable(text, fallback='task')[:MAX_NAME]}-{digest}"
