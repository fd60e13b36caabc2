"""A bounded pool of worker threads whose jobs may wait for a time to be due.

``concurrent.futures.ThreadPoolExecutor`` does not fit a webhook receiver: its queue has no
bound, so a burst of slow deliveries grows memory and latency without limit instead of pushing
back, and a job cannot be run later without holding a thread (or a timer thread) for the delay.

Here every job sits in one heap ordered by the time it is due. A new job is due at once and counts
against ``capacity``; :meth:`Pool.submit` refuses it when ``capacity`` jobs already wait, which the
dispatcher turns into a 503 so the provider retries later. A retry is due after its back-off and
does not count (it was accepted once already); while it waits, no thread is held: idle workers
sleep on a condition until the earliest job is due.

Threads start with the first job, not at construction, so a pre-forking server (gunicorn
``--preload``) does not fork a pool whose threads would be missing in the children; a pool used
after a fork starts afresh. Every pool is drained when the interpreter exits (:func:`drain_all`,
registered with :mod:`atexit`), within :data:`DRAIN_TIMEOUT` seconds.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

logger = logging.getLogger("flask_musiccallback")

#: Seconds the interpreter's exit waits for a pool's queued, running and retrying jobs.
DRAIN_TIMEOUT = 10.0

Job = Callable[[], None]


def backoff(failures: int, first: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``first``, doubled for each further
    one, so that a backend that is down is not hammered, and at most ``cap``."""
    return float(min(first * 2 ** (failures - 1), cap))


_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


class Pool:
    """``size`` daemon threads running jobs, at most ``capacity`` new jobs waiting for them."""

    def __init__(
        self, size: int, capacity: int, name: str = "musiccallback", unit: str = "deliveries"
    ) -> None:
        if size < 1 or capacity < 1:
            raise ValueError("a pool needs a size and a capacity of at least 1")
        self.size = size
        self.capacity = capacity
        self.name = name
        #: What a job stands for, in the warning about jobs left unfinished.
        self.unit = unit
        self._reset()
        _pools.add(self)

    def _reset(self) -> None:
        lock = threading.Lock()
        self._work_ready = threading.Condition(lock)
        self._idle = threading.Condition(lock)
        # (due on the monotonic clock, order of arrival, counts against capacity, job)
        self._heap: list[tuple[float, int, bool, Job]] = []
        self._order = itertools.count()
        self._waiting = 0
        self._running = 0
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._stopped = False
        self._pid = os.getpid()

    @property
    def waiting(self) -> int:
        """New jobs accepted and not started yet: what ``capacity`` bounds."""
        return self._waiting

    def submit(self, job: Job) -> bool:
        """Queue a new job; ``False`` when the pool is full or shutting down (back-pressure)."""
        return self._push(job, 0.0, new=True)

    def submit_later(self, delay: float, job: Job) -> bool:
        """Run ``job`` once ``delay`` seconds have passed; ``False`` only once the pool stopped.

        Accepted while the pool drains, so that a retry due before the drain's end still runs.
        """
        return self._push(job, delay, new=False)

    def _push(self, job: Job, delay: float, *, new: bool) -> bool:
        if self._pid != os.getpid():
            self._reset()
        with self._work_ready:
            if self._stopped or (new and (self._closing or self._waiting >= self.capacity)):
                return False
            if not self._threads:
                self._start()
            due = time.monotonic() + delay
            heapq.heappush(self._heap, (due, next(self._order), new, job))
            self._waiting += new
            self._work_ready.notify()
        return True

    def _start(self) -> None:
        for number in range(self.size):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            with self._work_ready:
                job = self._next_job()
                if job is None:
                    return
            try:
                job()
            except Exception:
                logger.exception("A job of the %s pool raised", self.name)
            finally:
                with self._work_ready:
                    self._running -= 1
                    if not self._heap and not self._running:
                        self._idle.notify_all()

    def _next_job(self) -> Job | None:
        """The next due job, waiting for one; ``None`` when the pool stops. Called with the lock."""
        while not self._stopped:
            if not self._heap:
                self._work_ready.wait()
                continue
            due = self._heap[0][0]
            now = time.monotonic()
            if due > now:
                self._work_ready.wait(due - now)
                continue
            _, _, new, job = heapq.heappop(self._heap)
            self._waiting -= new
            self._running += 1
            if self._heap:
                # Hand the watch over the next job to another idle thread.
                self._work_ready.notify()
            return job
        return None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued, running or waiting for a retry; ``False`` on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._heap and not self._running, timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, finish the others within ``timeout`` seconds, then stop the threads.

        Returns whether everything finished. Jobs still queued or waiting for a retry are dropped
        with a warning; with a persistent store their deliveries stay pending, for ``replay``.
        """
        with self._work_ready:
            self._closing = True
        finished = self.wait_idle(timeout)
        with self._work_ready:
            self._stopped = True
            left = len(self._heap) + self._running
            self._heap.clear()
            self._waiting = 0
            self._work_ready.notify_all()
        if left:
            logger.warning(
                "The %s pool stopped with %d %s unfinished (queued, running or waiting "
                "for a retry).",
                self.name,
                left,
                self.unit,
            )
        _pools.discard(self)
        return finished


def drain_all(timeout: float = DRAIN_TIMEOUT) -> None:
    """Shut every pool of this process down, sharing ``timeout`` seconds between them.

    Runs at interpreter exit: the pool's threads are daemons, which keep running through
    :mod:`atexit` handlers and so can finish what was acknowledged.
    """
    deadline = time.monotonic() + timeout
    for pool in list(_pools):
        if pool._pid == os.getpid() and pool._threads:
            pool.shutdown(max(0.0, deadline - time.monotonic()))


atexit.register(drain_all)
