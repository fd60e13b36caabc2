"""A media host for archive tests: a real HTTP server on 127.0.0.1 that serves each simulated
link of a callback as the provider's CDN would, and can be told to fail, stall or count.

The families' examples link to ``https://cdn.example.invalid/...``; :meth:`MediaHost.rebase`
points such a body at this server, whose answer for a path is :func:`content`, a few kilobytes
that differ per path, so a test compares archived files byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, abort, request, stream_with_context

from flask_musiccallback.families.examples import SIMULATED_MEDIA_HOST

from .servers import serve_url

SIMULATED_BASE = f"https://{SIMULATED_MEDIA_HOST}"


def content(path: str, size: int = 4096) -> bytes:
    """What the host serves at ``path``: ``size`` bytes derived from the path."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class MediaHost:
    """The server's behaviour, changed by a test as it goes."""

    base: str = ""
    #: Requests per path (without the leading ``/``).
    hits: Counter[str] = field(default_factory=Counter)
    #: Paths answered with this status instead of the file.
    statuses: dict[str, int] = field(default_factory=dict)
    #: Paths whose answer waits until the event is set.
    held: dict[str, threading.Event] = field(default_factory=dict)
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

    def rebase(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with every simulated link pointing at this server."""
        loaded: dict[str, Any] = json.loads(json.dumps(body).replace(SIMULATED_BASE, self.base))
        return loaded

    def path_of(self, url: str) -> str:
        return url.removeprefix(self.base + "/")


def media_app(host: MediaHost) -> Flask:
    app = Flask("media-host")

    @app.get("/<path:path>")
    def serve_file(path: str) -> Response:
        host.hits[path] += 1
        host.encodings.append(request.headers.get("Accept-Encoding", ""))
        if path in host.encoded:
            answer = Response(host.encoded[path], mimetype="audio/mpeg")
            answer.headers["Content-Encoding"] = "gzip"
            return answer
        if path in host.held:
            host.held[path].wait(30)
        if path in host.stalled:
            time.sleep(host.stalled[path])
        if path in host.statuses:
            abort(host.statuses[path])
        if path in host.sizes:
            size = host.sizes[path]

            def chunks() -> Iterator[bytes]:
                block = b"\x00" * 65536
                left = size
                while left > 0:
                    yield block[: min(left, len(block))]
                    left -= len(block)

            answer = Response(stream_with_context(chunks()), mimetype="audio/mpeg")
            if path in host.declared:
                answer.headers["Content-Length"] = str(size)
            return answer
        kind = "image/png" if path.endswith((".png", ".jpeg", ".jpg")) else "audio/mpeg"
        return Response(content(path), mimetype=kind)

    return app


@contextmanager
def media_host() -> Iterator[MediaHost]:
    """A :class:`MediaHost` served on 127.0.0.1 for the duration of the block."""
    host = MediaHost()
    with serve_url(media_app(host)) as base:
        host.base = base
        try:
            yield host
        finally:
            for event in host.held.values():
                event.set()
