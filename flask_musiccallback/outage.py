"""Logging a failing backend once per outage, not once per request while it lasts.

A store, a broker or a full queue fails every request until it recovers; a log line per request
would bury the cause under thousands of copies. Each place that reports such a failure keeps an
:class:`Outage` and logs only when it starts, and, where that helps, when it ends.
"""

from __future__ import annotations


class Outage:
    """Whether something is failing right now, as told by the calls that use it."""

    __slots__ = ("ongoing",)

    def __init__(self) -> None:
        self.ongoing = False

    def failed(self) -> bool:
        """Note a failure; True for the first of an outage, the one to log."""
        started = not self.ongoing
        self.ongoing = True
        return started

    def recovered(self) -> bool:
        """Note a success; True when it ends an outage, for a line saying so."""
        ended = self.ongoing
        self.ongoing = False
        return ended
