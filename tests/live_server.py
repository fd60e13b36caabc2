"""A real threaded Werkzeug server on 127.0.0.1 and a raw HTTP/1.1 client over a plain socket.

For the tests that must see what a client on the network sees: framing errors, lying lengths and
chunked bodies never reach an app through the test client, and server-side tracebacks only show
on a real server.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Flask

from .servers import serve as serve_port

HOST = "127.0.0.1"


@dataclass
class LiveServer:
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass(frozen=True)
class RawAnswer:
    """What came back on the socket; ``status`` is ``None`` when the server closed silently."""

    status: int | None
    head: bytes
    body: bytes


@contextmanager
def serve(app: Flask) -> Iterator[LiveServer]:
    """Serve ``app`` on an ephemeral port in a background thread until the block ends."""
    with serve_port(app) as port:
        yield LiveServer(port)


def request_bytes(
    target: str,
    body: bytes = b"",
    *,
    method: bytes = b"POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    content_length: bool = True,
) -> bytes:
    """A hand-built HTTP/1.1 request; ``Content-Length`` is added unless told otherwise."""
    lines = [method + b" " + target.encode("latin-1") + b" HTTP/1.1", b"Host: " + HOST.encode()]
    lines += [name + b": " + value for name, value in headers or []]
    if content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> RawAnswer:
    """Send ``raw`` as is, close the sending side, and read the answer to the end.

    Closing the sending side gives every request an end, so a body shorter than its declared
    length is seen as a disconnect instead of leaving the server waiting.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413) and closed; its answer is still to be read
        chunks: list[bytes] = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    return parse_answer(b"".join(chunks))


def parse_answer(data: bytes) -> RawAnswer:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None
    return RawAnswer(status, head, body)


class TracebackCatcher(logging.Handler):
    """Collects every log record that carries a traceback, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(record)


@contextmanager
def catch_tracebacks() -> Iterator[TracebackCatcher]:
    """Watch the root logger (which Flask's and Werkzeug's loggers reach) for tracebacks."""
    catcher = TracebackCatcher()
    root = logging.getLogger()
    root.addHandler(catcher)
    try:
        yield catcher
    finally:
        root.removeHandler(catcher)
