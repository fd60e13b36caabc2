"""A bounded memory of what this process has logged already, so that a message repeated by the
provider's retries is written once, and a flood of distinct ones cannot fill the memory."""

from __future__ import annotations

import threading
from collections import OrderedDict

#: How many distinct keys a process remembers by default.
DEFAULT_SIZE = 1024


class LoggedOnce:
    """The keys (a body's digest) logged by this process, the oldest forgotten first."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: str) -> bool:
        """Whether ``key`` is new to this process (and remember it)."""
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True
