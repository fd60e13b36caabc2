"""Serving the media archive: the files the extension copied (``MUSICCALLBACK_ARCHIVE``), read
through it, so that a local folder and an S3 bucket are served alike.

The path comes from the request, so it is checked before the archive is asked: plain names
separated by ``/``, none empty, none ``.`` or ``..``, none hidden (a copy in progress is a hidden
partial file), and no manifest (it lists the provider's links, which are not the page's to give
away). A path that passes can only name a file under the archive's root.

The media type is the one the media server gave, as the archive's manifests record it, when it is
one a page may load (audio, image, video, JSON); else it follows the file's suffix
(:func:`media_type` says why that is safe here).
"""

from __future__ import annotations

import io
import mimetypes
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from flask_musiccallback.archive.copies import Archive

#: The end of the names of the archive's manifests (``complete.manifest.json``).
MANIFEST_SUFFIX = ".manifest.json"

#: The media types served as the manifest records them; any other is served as bytes.
SERVED_TYPES = ("audio/", "image/", "video/", "application/json")


class NotArchived(LookupError):  # noqa: N818 - reads as what the path is
    """The path names nothing the archive serves: outside it, hidden, or not there."""


@dataclass(frozen=True)
class ArchivedMedia:
    """An archived file, open for reading."""

    file: IO[bytes]
    size: int
    media_type: str


def is_servable(path: str) -> bool:
    """Whether ``path`` may name a served file of the archive (see the module's docstring)."""
    names = path.split("/")
    return (
        "\\" not in path
        and "\x00" not in path
        and not path.endswith(MANIFEST_SUFFIX)
        and all(name and not name.startswith(".") for name in names)
    )


def open_archived(archive: Archive | None, path: str) -> ArchivedMedia:
    """The archived file at ``path`` (from the archive's root); :class:`NotArchived` when there
    is none to serve."""
    if archive is None or not is_servable(path):
        raise NotArchived(path)
    try:
        file = archive.open(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise NotArchived(path) from None
    try:
        size = file.seek(0, io.SEEK_END)
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return ArchivedMedia(file, size, media_type(archive, path))


def media_type(archive: Archive, path: str) -> str:
    """What the media server said the file is, when the archive recorded it and a page may load
    it; else what its suffix says.

    The recorded type is the media server's word, which a forged callback's server chooses: it
    is served only when it is audio, an image, a video or JSON, and the page's headers
    (``Content-Security-Policy``, ``X-Content-Type-Options: nosniff``, views.py) keep even an
    SVG image from running as a page. The samples need it: their covers are SVG under links
    ending in ``.jpeg``.
    """
    recorded = archive.content_type(path)
    if recorded and recorded.partition(";")[0].strip().lower().startswith(SERVED_TYPES):
        return recorded
    return mimetypes.guess_type(path)[0] or "application/octet-stream"
