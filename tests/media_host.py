"""A media host for archive tests: a real HTTP server on 127.0.0.1 that serves each simulated
link of a callback as the provider's CDN would, counts the requests for each file, and can be
told to fail, hold or stall its answers, or to stream a file of any size.

The families' examples link to ``https://cdn.example.invalid/...``; the package's
:func:`~flask_musiccallback.simulate.rebase_media` (:meth:`MediaHost.rebase`, or
``build_callback(media_base=host.base)``) points such a body at this server, whose answer for a
path is :func:`content`, bytes that differ per path, so a test compares archived files byte for
byte.
"""

from __future__ import annotations

import hashlib
import mimetypes
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

from flask_musiccallback.simulate import rebase_media

from .servers import serve_url

#: The size of an audio file: several of the archive's 256 KiB chunks, so that a copy cut short
#: leaves part of a file behind.
AUDIO_SIZE = 1_000_000

#: The longest a held answer waits for the test before it goes on anyway.
HOLD_TIMEOUT = 20.0

#: The blocks a large answer is streamed in.
BLOCK = 65536


def content(path: str, size: int | None = None) -> bytes:
    """What the host serves at ``path``: ``size`` bytes derived from the path; by default
    :data:`AUDIO_SIZE` for audio and a few kilobytes for anything else."""
    if size is None:
        size = AUDIO_SIZE if path.endswith((".mp3", ".wav")) else 4096
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class MediaHost:
    """The server's behaviour, changed by a test as it goes. A path is the part of a link after
    :attr:`base` and its ``/``."""

    #: Where the server listens: ``http://127.0.0.1:PORT``.
    base: str = ""
    #: Requests per path.
    hits: Counter[str] = field(default_factory=Counter)
    #: Paths answered with this status instead of the file.
    statuses: dict[str, int] = field(default_factory=dict)
    #: Paths whose answer waits until the event is set (:meth:`hold`), or :data:`HOLD_TIMEOUT`.
    held: dict[str, threading.Event] = field(default_factory=dict)
    #: Paths of :attr:`held` whose answer sends this many bytes before it waits.
    held_after: dict[str, int] = field(default_factory=dict)
    #: Paths of :attr:`held` answered when the wait timed out, before the test set the event.
    answered_while_held: list[str] = field(default_factory=list)
    #: Paths answered with this many bytes, streamed without a length.
    sizes: dict[str, int] = field(default_factory=dict)
    #: Paths of :attr:`sizes` whose answer declares its length.
    declared: set[str] = field(default_factory=set)
    #: Paths answered with these bytes as a gzip-encoded body, whatever the request asked.
    encoded: dict[str, bytes] = field(default_factory=dict)
    #: The ``Accept-Encoding`` of each request, in order.
    encodings: list[str] = field(default_factory=list)
    #: Paths whose answer never comes (the server sleeps this long).
    stalled: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rebase(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with every simulated link pointing at this server."""
        rebased: dict[str, Any] = rebase_media(body, self.base)
        return rebased

    def path_of(self, url: str) -> str:
        assert url.startswith(self.base + "/"), url
        return url[len(self.base) + 1 :]

    def fetches(self, urls: Iterable[str]) -> list[int]:
        """How many times each of ``urls`` was requested."""
        with self._lock:
            return [self.hits[self.path_of(url)] for url in urls]

    def hold(self, urls: Iterable[str], *, after: int = 0) -> threading.Event:
        """Make the answers for ``urls`` wait, once their first ``after`` bytes are sent, until
        the event returned is set."""
        release = threading.Event()
        for path in map(self.path_of, urls):
            self.held[path] = release
            self.held_after[path] = after
        return release

    def answer(self, path: str) -> Response:
        """The server's answer for ``path``, as the test has set it up so far."""
        with self._lock:
            self.hits[path] += 1
            self.encodings.append(request.headers.get("Accept-Encoding", ""))
        if path in self.encoded:
            compressed = Response(self.encoded[path], mimetype="audio/mpeg")
            compressed.headers["Content-Encoding"] = "gzip"
            return compressed
        if path in self.stalled:
            time.sleep(self.stalled[path])
        status, kind = 200, mimetypes.guess_type(path)[0] or "application/octet-stream"
        length: int | None
        if path in self.statuses:
            status, kind, body = self.statuses[path], "text/plain", f"no {path}".encode()
            blocks, length = _blocks(body), len(body)
        elif path in self.sizes:
            blocks = _zeros(self.sizes[path])
            length = self.sizes[path] if path in self.declared else None
        else:
            body = content(path)
            blocks, length = _blocks(body), len(body)
        answer = Response(self._paused(path, blocks), status=status, mimetype=kind)
        if length is not None:
            answer.headers["Content-Length"] = str(length)
        return answer

    def _paused(self, path: str, blocks: Iterable[bytes]) -> Iterator[bytes]:
        """``blocks``, waiting on the way while ``path`` is held. Nothing is sent, not even the
        headers, before the first block is yielded."""
        release = self.held.get(path)
        after = self.held_after.get(path, 0)
        for block in blocks:
            if release is not None and after < len(block):
                if after:
                    yield block[:after]
                if not release.wait(HOLD_TIMEOUT):
                    self.answered_while_held.append(path)
                block, release = block[after:], None
            elif release is not None:
                after -= len(block)
            yield block


def _blocks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), BLOCK):
        yield data[start : start + BLOCK]


def _zeros(size: int) -> Iterator[bytes]:
    """``size`` zero bytes, a block at a time, so that the server never holds a large file."""
    block = bytes(BLOCK)
    for start in range(0, size, BLOCK):
        yield block[: size - start]


def media_app(host: MediaHost) -> Flask:
    app = Flask("media-host")
    app.add_url_rule("/<path:path>", view_func=host.answer)
    return app


@contextmanager
def media_host() -> Iterator[MediaHost]:
    """A :class:`MediaHost` served on 127.0.0.1 for the duration of the block; its held answers
    are released at the end."""
    host = MediaHost()
    with serve_url(media_app(host)) as base:
        host.base = base
        try:
            yield host
        finally:
            for release in host.held.values():
                release.set()
