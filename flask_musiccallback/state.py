"""The per-application state kept in ``app.extensions["musiccallback"]``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Settings
from .outage import Outage
from .seen import LoggedOnce
from .stores.base import Store
from .writeback import WriteBack

if TYPE_CHECKING:
    from flask import Flask

    from .archive.copies import Archive
    from .dispatch import Dispatcher
    from .dispatch.sweep import Sweeper
    from .extension import MusicCallback

EXTENSION_NAME = "musiccallback"


@dataclass(eq=False)
class MusicCallbackState:
    """Everything one app's callbacks need, built once by ``init_app``."""

    extension: MusicCallback
    settings: Settings
    store: Store
    dispatcher: Dispatcher
    #: The media archive (``MUSICCALLBACK_ARCHIVE``), or ``None``.
    archive: Archive | None = field(default=None)
    #: The sweep of pending deliveries in this app's web processes, or ``None`` (off, the memory
    #: store, or ``celery`` dispatch, where workers sweep).
    sweeper: Sweeper | None = field(default=None)
    #: Whether the store's last call failed, so that an outage is logged once, not per request.
    store_outage: Outage = field(default_factory=Outage)
    #: The store writes kept while the store could not be reached.
    write_back: WriteBack = field(default_factory=WriteBack)
    #: The unreadable bodies this process logged already (:mod:`.unreadable`).
    unreadable_logged: LoggedOnce = field(default_factory=LoggedOnce)
    #: Held while a reconciliation run of this process is under way (:mod:`.reconcile`): one at
    #: a time, whoever starts it (the sweep, a Celery beat task, the CLI).
    reconciling: threading.Lock = field(default_factory=threading.Lock)


def get_state(app: Flask) -> MusicCallbackState:
    """The extension's state for ``app``, with a clear error when it was never initialised."""
    try:
        state: MusicCallbackState = app.extensions[EXTENSION_NAME]
    except KeyError:
        raise RuntimeError(
            f"flask-musiccallback is not initialised on app {app.name!r}: "
            "call MusicCallback(app) or music.init_app(app) first."
        ) from None
    return state
