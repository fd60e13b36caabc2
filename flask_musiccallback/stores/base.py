"""The store contract every deduplication store fulfils, and the URL-scheme registry.

The contract is *claim, then complete or release*: :meth:`Store.claim` atomically takes the key
``(task_id, stage)`` for one delivery, the receivers run, and then the delivery is marked done
(:meth:`Store.complete`), given back so a retry runs again (:meth:`Store.release`), or kept as
failed after an acknowledged receiver error (:meth:`Store.fail`). Marking before processing loses
an event when a receiver crashes; checking before inserting lets concurrent duplicates through.
Both are ruled out by doing the claim in one atomic step of the backend.

A store class never imports the view: the endpoint, polling and replay all talk to it through this
interface only.
"""

from __future__ import annotations

import enum
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from flask import Flask

#: Seconds a processing claim is held before another process may take it over (persistent stores).
DEFAULT_LEASE = 300


class ClaimResult(str, enum.Enum):
    """What :meth:`Store.claim` decided; the non-claimed values are the ``reason`` of
    ``callback_duplicate``."""

    CLAIMED = "claimed"
    DUPLICATE = "duplicate"
    IN_PROGRESS = "in_progress"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One accepted callback as the store sees it: its key, and what a persistent store keeps."""

    task_id: str
    stage: str
    payload: Mapping[str, Any]
    received_at: datetime
    #: The request headers worth keeping, secrets already redacted.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The stage of the same task whose processing makes this delivery stale (``complete`` for
    #: ``text`` and ``first``), or ``None``.
    superseded_by: str | None = None


class StoreError(Exception):
    """The store cannot be used as configured."""


class StoreUnavailable(StoreError):  # noqa: N818 - reads as a state: "the store is unavailable"
    """The backend cannot be reached; the endpoint answers 503 so that the provider retries."""


class Store(ABC):
    """Deduplicates deliveries per ``(task_id, stage)`` for ``ttl`` seconds.

    Implementations must make :meth:`claim` atomic across every thread (and, for shared stores,
    every process) that uses the same backend.
    """

    #: Whether deliveries survive a restart and can be listed and replayed.
    persistent: ClassVar[bool] = False

    def __init__(self, *, ttl: int) -> None:
        self.ttl = ttl

    @classmethod
    def from_url(cls, url: str, *, ttl: int) -> Store:
        """Build the store from its ``MUSICCALLBACK_STORE`` URL; query arguments are options."""
        return cls(ttl=ttl)

    def init_app(self, app: Flask) -> None:  # noqa: B027 - optional hook, empty by design
        """Bind to an application; stores that borrow the app's resources override it.

        Must not connect to the backend: an app starts even when its store is down.
        """

    @abstractmethod
    def claim(self, delivery: Delivery) -> ClaimResult:
        """Take the delivery's key for processing, or say why it must not be processed."""

    @abstractmethod
    def complete(self, task_id: str, stage: str) -> None:
        """Mark a claimed delivery processed: later deliveries of it are duplicates."""

    @abstractmethod
    def release(self, task_id: str, stage: str, error: str) -> None:
        """Give a claimed delivery back after a receiver error, so that a redelivery runs it."""

    @abstractmethod
    def fail(self, task_id: str, stage: str, error: str) -> None:
        """Record that receivers failed on a delivery that was acknowledged anyway."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Release connections; called when the host shuts the extension down."""


#: URL scheme to ``"module:ClassName"``; modules are imported only when their scheme is used, so an
#: app on the memory store needs neither SQLAlchemy nor redis installed.
_registry: dict[str, str | type[Store]] = {
    "memory": "flask_musiccallback.stores.memory:MemoryStore",
}


def register_store(scheme: str, store_class: str | type[Store]) -> None:
    """Make ``scheme://`` URLs build stores with ``store_class.from_url`` (or ``module:Class``)."""
    _registry[scheme] = store_class


def store_from_url(url: str, *, ttl: int) -> Store:
    """Build the store a ``MUSICCALLBACK_STORE`` URL names.

    ``postgresql+psycopg://`` is looked up as ``postgresql``: the driver is the backend's business.
    """
    scheme = url.partition("://")[0].partition("+")[0].lower()
    target = _registry.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(_registry))
        raise StoreError(f"No store for the URL scheme {scheme!r} of {url!r}; known: {known}.")
    if isinstance(target, str):
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise StoreError(
                f"The store for {scheme}:// needs a package that is not installed ({exc.name}); "
                "install flask-musiccallback with the matching extra."
            ) from exc
        target = getattr(module, class_name)
    if not (isinstance(target, type) and issubclass(target, Store)):
        raise StoreError(f"{target!r}, registered for {scheme}://, is not a Store class.")
    return target.from_url(url, ttl=ttl)
