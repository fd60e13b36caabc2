"""A deadline for each call a store makes on a database connection.

A database server that hangs (stopped, swapping, its machine frozen) never answers: the kernel
still acknowledges every packet, so TCP keepalives never fire, and ``statement_timeout`` runs on
the server, which is not running. Drivers such as psycopg have no client-side deadline for a
query, so a call would wait for as long as the server hangs, and the provider, which waits 15 s
for an answer, would get none.

:class:`Watchdog` gives each call a deadline. One thread per store sleeps until the earliest
deadline of the calls in flight; a call still running then has its connection's socket shut
down, which makes the driver raise at once, and the call ends with :class:`NoAnswer`. A call
costs a ``dup`` of the socket and two lock acquisitions; no thread is started per call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from types import TracebackType
from typing import Any

#: Seconds the watchdog's thread waits idle before it ends; the next call starts it again.
IDLE_SECONDS = 60.0


class NoAnswer(TimeoutError):  # noqa: N818 - reads as what happened: "no answer"
    """The server did not answer within the store's timeout; its connection was cut off.

    A :class:`TimeoutError`, hence an :class:`OSError`, which the stores already turn into
    ``StoreUnavailable``; never retried on another connection, which would double the wait.
    """


class Watchdog:
    """Cuts off the connection of any call that outlives ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._start()
        # A forked child has none of its parent's threads, and may inherit the lock held.
        _watchdogs.add(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        # Only for its timed wait, on the same lock: nothing notifies it (see _run).
        self._condition = threading.Condition(self._lock)
        #: The calls in flight, in the order they started: every call has the same timeout, so
        #: the first one is the next to run out.
        self._calls: dict[Watch, None] = {}
        self._thread: threading.Thread | None = None

    def watch(self, connection: Any) -> Watch:
        """A context manager around one call on ``connection``, a DBAPI connection.

        A connection without a public ``fileno()`` (SQLite's, which has no server to wait for)
        is not watched.
        """
        return Watch(self, _socket_of(connection), time.monotonic() + self.timeout)

    def _add(self, call: Watch) -> None:
        with self._lock:
            self._calls[call] = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="musiccallback-store-watchdog", daemon=True
                )
                self._thread.start()

    def _remove(self, call: Watch) -> None:
        with self._lock:
            self._calls.pop(call, None)

    def _run(self) -> None:
        """Sleep until the first call's deadline; with none, for one timeout.

        A call that starts during a sleep ends no earlier than that sleep, so the thread is never
        woken for one: a call costs no switch to this thread, which wakes once a timeout at most.
        """
        idle_since = time.monotonic()
        with self._condition:
            while True:
                if not self._calls:
                    if time.monotonic() - idle_since > IDLE_SECONDS:
                        self._thread = None
                        return
                    self._condition.wait(self.timeout)
                    continue
                idle_since = time.monotonic()
                call = next(iter(self._calls))
                left = call.deadline - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                # Under the lock: the call cannot end, and its connection go back to the pool
                # for another call, while its socket is being shut down.
                del self._calls[call]
                call.cut()


def _restart_all() -> None:
    for watchdog in list(_watchdogs):
        watchdog._start()


#: Every watchdog of the process, restarted in a forked child by one hook, registered once: a
#: hook per watchdog would pile up with every store an app factory builds.
_watchdogs: weakref.WeakSet[Watchdog] = weakref.WeakSet()
os.register_at_fork(after_in_child=_restart_all)


def _socket_of(connection: Any) -> int | None:
    """A duplicate of the connection's socket: it stays that connection's, whatever the driver
    does with its own descriptor meanwhile, so a late cut can never reach another socket."""
    fileno = getattr(connection, "fileno", None)
    if fileno is None:
        return None
    try:
        return os.dup(fileno())
    except Exception:  # a connection already broken: the call will say so itself
        return None


class Watch:
    """One call under the watchdog; ends in :class:`NoAnswer` if it was cut off."""

    __slots__ = ("_socket", "_watchdog", "deadline", "fired")

    def __init__(self, watchdog: Watchdog, duplicate: int | None, deadline: float) -> None:
        self._watchdog = watchdog
        self._socket = duplicate
        self.deadline = deadline
        #: Whether the call ran out of time and its connection was cut off: the connection is
        #: dead and must be thrown away.
        self.fired = False

    def __enter__(self) -> Watch:
        if self._socket is not None:
            self._watchdog._add(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._socket is None:
            return
        self._watchdog._remove(self)
        os.close(self._socket)
        self._socket = None
        if self.fired and error is not None:
            raise NoAnswer(f"no answer within {self._watchdog.timeout:g} s") from error

    def cut(self) -> None:
        """Shut the socket down, both ways: the driver's wait ends and it raises."""
        assert self._socket is not None
        self.fired = True
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=self._socket)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.detach()
