"""Real servers for tests that need a socket: a threaded Werkzeug server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server


@contextmanager
def serve(app: Any) -> Iterator[int]:
    """Serve a WSGI app on 127.0.0.1 with one thread per request; yields the port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="test-server", daemon=True
    )
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextmanager
def serve_url(app: Any) -> Iterator[str]:
    """Like :func:`serve`, yielding the base URL (``http://127.0.0.1:PORT``)."""
    with serve(app) as port:
        yield f"http://127.0.0.1:{port}"
