"""A TCP listener that counts the connections made to it, and answers HTTP/1.1 as told.

A refusal to connect is only worth something if nothing was connected to, so tests of the
archive's links check it here: :meth:`Listener.connections` counts behind a probe connection of
its own, so no connection made before the question can be missed.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

#: What a route answers: status, headers, body; ``None`` drops the connection unanswered.
Reply = tuple[int, dict[str, str], bytes] | None


class Listener(socketserver.ThreadingTCPServer):
    """An HTTP/1.1 server that remembers every connection it accepts and every request it reads.

    HTTP/1.1 keeps connections open, so a client that reused one would show here as fewer
    connections than requests.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int = 0, *, hang: bool = False) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.routes: dict[str, Reply] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.peers: list[tuple[str, int]] = []
        self.seen = threading.Condition()
        self.hang = hang
        self.released = threading.Event()
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    def url(self, path: str = "/track.mp3", *, host: str | None = None) -> str:
        name = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{name}:{self.port}{path}"

    def get_request(self) -> tuple[Any, Any]:
        conn, peer = super().get_request()
        with self.seen:
            self.peers.append(peer[:2])
            self.seen.notify_all()
        return conn, peer

    def connections(self) -> int:
        """How many connections others opened to this listener so far.

        Counted behind a probe of our own: a connection opened before the probe waits ahead of it
        in the accept queue, so once the probe is accepted none of them can be missed, and no
        sleep has to guess how long a stray connection takes to show.
        """
        with socket.create_connection((self.host, self.port), timeout=2) as probe:
            mine = probe.getsockname()[:2]
            with self.seen:
                assert self.seen.wait_for(lambda: mine in self.peers, timeout=2)
                self.peers.remove(mine)
                return len(self.peers)

    def hosts(self) -> list[str]:
        return [headers["host"] for _, headers in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: Listener
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.requests.append((self.path, headers))
        if self.server.hang:
            self.server.released.wait(10)
            self.close_connection = True
            return
        reply = self.server.routes.get(self.path, (404, {}, b"not here"))
        if reply is None:
            self.close_connection = True
            return
        status, extra, body = reply
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def listening(host: str = "127.0.0.1", port: int = 0, *, hang: bool = False) -> Iterator[Listener]:
    """A :class:`Listener` on ``host`` serving in a thread of its own for the duration of the
    block; with ``hang``, it reads each request and never answers."""
    listener = Listener(host, port, hang=hang)
    thread = threading.Thread(
        target=listener.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield listener
    finally:
        listener.released.set()
        listener.shutdown()
        listener.server_close()
        thread.join(2)
