"""The default store: a bounded, thread-safe dictionary in this process.

It deduplicates across the threads of one process and nothing else: two gunicorn workers, two
machines or a restart each start with an empty memory. Use it for development, tests and single
process deployments; use a persistent store (SQLAlchemy, Redis) anywhere else.

Memory stays bounded by two limits: entries expire ``ttl`` seconds after their last change, and the
oldest entries are dropped once there are more than ``max_entries``. Entries sit in an
:class:`~collections.OrderedDict` in the order of their last change, which with one TTL is also the
order in which they expire, so both limits are enforced by popping from the front: O(1) per claim.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from urllib.parse import parse_qs, urlsplit

from .base import ClaimResult, Delivery, Store, StoreError

#: How many deliveries the memory store remembers unless ``memory://?max_entries=N`` says otherwise.
DEFAULT_MAX_ENTRIES = 100_000

_Key = tuple[str, str]


class MemoryStore(Store):
    """Per process, per app, bounded by ``ttl`` and ``max_entries``.

    With the ``ack`` policy a receiver failure is reported (``receiver_failed``, the log) but not
    kept: there is nothing here to replay after a restart.
    """

    def __init__(self, *, ttl: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        super().__init__(ttl=ttl)
        if max_entries < 1:
            raise StoreError("memory:// needs max_entries of at least 1.")
        self.max_entries = max_entries
        self._lock = threading.Lock()
        # key -> (done, expires_at on the monotonic clock)
        self._entries: OrderedDict[_Key, tuple[bool, float]] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, *, ttl: int) -> MemoryStore:
        query = parse_qs(urlsplit(url).query)
        try:
            max_entries = int(query.get("max_entries", [DEFAULT_MAX_ENTRIES])[-1])
        except ValueError as exc:
            raise StoreError(f"memory:// max_entries must be a whole number: {url!r}") from exc
        return cls(ttl=ttl, max_entries=max_entries)

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        key = (delivery.task_id, delivery.stage)
        now = time.monotonic()
        entries = self._entries
        with self._lock:
            self._evict(now)
            entry = entries.get(key)
            if entry is not None:
                return ClaimResult.DUPLICATE if entry[0] else ClaimResult.IN_PROGRESS
            if delivery.superseded_by is not None:
                later = entries.get((delivery.task_id, delivery.superseded_by))
                if later is not None and later[0]:
                    return ClaimResult.STALE
            entries[key] = (False, now + self.ttl)
            if len(entries) > self.max_entries:
                entries.popitem(last=False)
            return ClaimResult.CLAIMED

    def complete(self, task_id: str, stage: str) -> None:
        self._finish(task_id, stage)

    def fail(self, task_id: str, stage: str, error: str) -> None:
        self._finish(task_id, stage)

    def release(self, task_id: str, stage: str, error: str) -> None:
        with self._lock:
            self._entries.pop((task_id, stage), None)

    def _finish(self, task_id: str, stage: str) -> None:
        key = (task_id, stage)
        with self._lock:
            self._entries[key] = (True, time.monotonic() + self.ttl)
            self._entries.move_to_end(key)

    def _evict(self, now: float) -> None:
        """Drop expired entries; they sit at the front because every change moves to the end."""
        entries = self._entries
        while entries:
            key, (_, expires_at) = next(iter(entries.items()))
            if expires_at > now:
                return
            del entries[key]
