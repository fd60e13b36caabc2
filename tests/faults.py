"""A TCP proxy on 127.0.0.1 in front of a store's server, that loses the answers it is told to.

A lost answer is the fault no store can rule out: the server did the work, and the connection broke
before the client heard of it. The proxy forwards everything both ways, and on request drops the
connection instead of forwarding the answer to a message that carries a marker (a task id: every
store call of a delivery names its task), optionally refusing every connection after that until it
is healed, as a server that went away would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class _Fault:
    marker: bytes
    #: Which message carrying the marker loses its answer (1: the first).
    occurrence: int
    refuse_after: bool
    seen: int = 0


@dataclass(eq=False)
class _Link:
    client: socket.socket
    server: socket.socket
    #: Set when the next answer on this link is to be lost.
    doomed: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class LossyProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; :meth:`lose_answer` arms one fault."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._refusing = False
        self._links: list[_Link] = []
        #: Set once an answer was lost: a test asserts it, so that it cannot pass without a fault.
        self.lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_answer(self, marker: str, *, occurrence: int = 1, refuse_after: bool = False) -> None:
        """Lose the answer to the ``occurrence``-th message that carries ``marker`` from now on;
        with ``refuse_after``, refuse every connection afterwards until :meth:`heal`."""
        with self._lock:
            self._fault = _Fault(marker.encode(), occurrence, refuse_after)
            self.lost.clear()

    def heal(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        self._listener.close()
        for link in list(self._links):
            link.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            link = _Link(client, server)
            self._links.append(link)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._answers, args=(link,), daemon=True).start()

    def _requests(self, link: _Link) -> None:
        for chunk in _chunks(link.client):
            with self._lock:
                fault = self._fault
                if fault is not None and fault.marker in chunk:
                    fault.seen += 1
                    if fault.seen == fault.occurrence:
                        link.doomed = True
            try:
                link.server.sendall(chunk)
            except OSError:
                break
        link.close()

    def _answers(self, link: _Link) -> None:
        for chunk in _chunks(link.server):
            if link.doomed:
                with self._lock:
                    assert self._fault is not None
                    self._refusing = self._fault.refuse_after
                    self._fault = None
                self.lost.set()  # before the client can notice, and a test ask
                link.close()
                return
            try:
                link.client.sendall(chunk)
            except OSError:
                break
        link.close()


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        yield chunk
