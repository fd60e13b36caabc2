"""The :class:`MusicCallback` extension object."""

from __future__ import annotations

import functools
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from flask import Flask, current_app, has_app_context, has_request_context, url_for

from .archive.copies import archive_for
from .config import Settings
from .dispatch import dispatcher_for
from .dispatch.sweep import Sweeper, sweeper_interval
from .endpoint import ENDPOINT, make_blueprint
from .events import Stage
from .families import BUILT_IN, FAMILY_ARG, MUSIC_NAME, Families
from .pool import DRAIN_TIMEOUT
from .redact import install_log_filters
from .state import EXTENSION_NAME, MusicCallbackState, get_state
from .stores.base import Store
from .stores.registry import store_from_url
from .stores.tasks import TaskRecord

if TYPE_CHECKING:
    from .poll import PollResult

F = TypeVar("F", bound=Callable[[Any], Any])

logger = logging.getLogger("flask_musiccallback")


class MusicCallbackInsecureWarning(UserWarning):
    """The endpoint accepts callbacks from anybody: no token, HMAC key or IP list is set."""


class MusicCallback:
    """Receives the music generation API's callbacks and turns them into signals.

    ``init_app`` reads these configuration keys (defaults in :mod:`flask_musiccallback.config`):
    ``MUSICCALLBACK_URL_RULE``, ``_STORE``, ``_DEDUP_TTL``, ``_TOKEN``, ``_HMAC_KEY``,
    ``_TIMESTAMP_TOLERANCE``, ``_ALLOWED_IPS``, ``_MAX_CONTENT_LENGTH``, ``_DISPATCH``,
    ``_RECEIVER_ERRORS``, ``_EXTERNAL_URL``, ``_API_KEY`` and ``_API_BASE_URL``; off the request
    path also ``_THREAD_POOL_SIZE``, ``_THREAD_QUEUE_SIZE``, ``_RETRY_ATTEMPTS``,
    ``_RETRY_BACKOFF``, ``_CELERY_APP`` and ``_PENDING_SWEEP_AGE`` (docs/dispatch.md); for
    reconciliation ``_RECONCILE_AFTER``, ``_RECONCILE_GIVE_UP`` and ``_RECONCILE_RATE``
    (docs/tasks.md); for development ``_SIMULATED_MEDIA_URL`` (``flask musiccallback
    simulate`` and ``CallbackClient``). They are read once, when the app is initialised; set them
    before.

    One extension object may serve several apps (an app factory called twice, tests); each gets its
    own endpoint, store and settings in ``app.extensions["musiccallback"]``. A ``store`` passed
    here is shared by those apps only where its backend may be (:class:`~.stores.base.Store`
    says where). Receivers added with :meth:`on` and the callback families read
    (:attr:`families`) are kept here, on the extension, so they can be declared before any app
    exists.
    """

    def __init__(self, app: Flask | None = None, *, store: Store | None = None) -> None:
        self._store = store
        #: The callback families this extension reads: every built-in one, music first
        #: (docs/families.md); ``music.families.register(family)`` adds one for every app it
        #: serves.
        self.families = Families(*BUILT_IN)
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._closed: weakref.WeakSet[Flask] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the endpoint, the store and the CLI on ``app``.

        Never contacts the store, so an app starts while its database or Redis is down. Also puts
        a filter on the access loggers of Werkzeug and gunicorn that redacts the token from the
        request lines they write (see :mod:`!flask_musiccallback.redact`).
        """
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                "flask-musiccallback is already initialised on this app; "
                "init_app may be called once per app."
            )
        settings = Settings.from_config(app.config)
        store = self._store
        if store is None:  # not ``or``: an empty store is falsy (it has a length)
            store = store_from_url(settings.store_url, ttl=settings.dedup_ttl)
        store = store.init_app(app)
        state = MusicCallbackState(
            extension=self,
            settings=settings,
            store=store,
            dispatcher=dispatcher_for(settings, store),
            archive=archive_for(settings),
        )
        app.extensions[EXTENSION_NAME] = state
        every = sweeper_interval(settings, store)
        if every is not None:
            state.sweeper = Sweeper(app, every)
            app.before_request(state.sweeper.start)
        app.register_blueprint(make_blueprint(settings.url_rule))
        from .cli import musiccallback

        app.cli.add_command(musiccallback)
        install_log_filters()
        self._apps.add(app)
        if not settings.secured and not app.testing:
            warnings.warn(
                "flask-musiccallback: the callback endpoint accepts callbacks from anybody. "
                "Set MUSICCALLBACK_TOKEN, MUSICCALLBACK_HMAC_KEY or MUSICCALLBACK_ALLOWED_IPS.",
                MusicCallbackInsecureWarning,
                stacklevel=2,
            )

    def on(self, stage: Stage | str, *, family: str = MUSIC_NAME) -> Callable[[F], F]:
        """Decorate a receiver that takes the event only, for one stage of a registered family
        (music unless named), on every app served.

        Sugar over the stage's signal: the receiver is connected to it for any sender and runs only
        for apps this extension object serves, so it may be declared before ``init_app``.
        """
        try:
            signal = self.families.named(family).signals[stage]
        except KeyError:
            raise ValueError(f"{stage!r} is not a stage of the {family} family.") from None

        def decorator(func: F) -> F:
            @functools.wraps(func)
            def receiver(sender: Flask, event: Any, **extra: Any) -> Any:
                state = sender.extensions.get(EXTENSION_NAME)
                if state is not None and state.extension is self:
                    return sender.ensure_sync(func)(event)
                return None

            signal.connect(receiver, weak=False)
            return func

        return decorator

    def callback_url(self, **params: Any) -> str:
        """The absolute URL to pass as ``callBackUrl``, with the token and ``params`` as query.

        ``family="lyrics"`` (any registered family's name) routes every callback of the task to
        that family, whatever its body looks like: the one way to place a failure that names no
        family (docs/families.md). An unregistered name raises ``LookupError``.

        ``MUSICCALLBACK_EXTERNAL_URL``, when set, is the base anywhere (behind a proxy, in CLI or
        worker code); otherwise the URL follows ``url_for``: a request context, or ``SERVER_NAME``.
        """
        app = self._current_app()
        settings = get_state(app).settings
        query = dict(params)
        family = query.get(FAMILY_ARG)
        if family is not None:
            self.families.named(family)  # a URL naming no family would keep every callback
        if settings.tokens:
            query.setdefault("token", settings.tokens[0].decode())
        if settings.external_url:
            url = settings.external_url.rstrip("/") + settings.url_rule
            return f"{url}?{urlencode(query, doseq=True)}" if query else url
        endpoint = f"{EXTENSION_NAME}.{ENDPOINT}"
        try:
            if has_request_context() or has_app_context():
                return url_for(endpoint, _external=True, **query)
            with app.app_context():
                return url_for(endpoint, _external=True, **query)
        except RuntimeError as exc:
            raise RuntimeError(
                "callback_url() needs a request, SERVER_NAME, or MUSICCALLBACK_EXTERNAL_URL "
                "to know the public address of the app."
            ) from exc

    def expect(self, task_id: str, *, family: str = MUSIC_NAME) -> None:
        """Register a task the host submitted, with the family its callbacks belong to.

        Call it with the task id the provider's submit answer returned. A callback whose body
        names no family (most failures) is then read by ``family``; idempotent (called again, it
        records the family given). Raises ``LookupError`` for an unregistered family and
        ``StoreUnavailable`` when the store cannot be reached.
        """
        self.families.named(family)
        get_state(self._current_app()).store.expect(task_id, family)

    def submit(
        self, path: str, payload: Mapping[str, Any], *, family: str | None = None
    ) -> str:
        """Submit a task to the provider and register it; the task id.

        Posts ``payload`` to ``MUSICCALLBACK_API_BASE_URL`` + ``path`` with the API key, and
        ``callBackUrl`` set to :meth:`callback_url` for the family (unless the payload has its
        own), then registers (:meth:`expect`) the task the answer names. ``family`` defaults to
        the one whose endpoints ``path`` is under (``/api/v1/lyrics`` is ``lyrics``; see
        docs/submitting.md).
        Raises :class:`~flask_musiccallback.provider.SubmitError`, with the provider's ``code``
        and ``message``, when the task was not created: nothing is registered then.
        """
        from .submit import submit_task  # the HTTP client is loaded only by apps that submit

        return submit_task(self._current_app(), path, payload, family=family)

    def task(self, task_id: str) -> TaskRecord | None:
        """The task as the store has it: its family, state, the stages seen (when, and whether
        by callback or poll), the polls made; ``None`` for a task never expected nor heard of.

        A persistent store records a callback's stage just after the answer (off the request
        path), so a stage read right after its request may be missing for a moment; the memory
        store records it at once, and only this process sees it. Raises ``StoreUnavailable``
        when the store cannot be reached.
        """
        return get_state(self._current_app()).store.task(task_id)

    def poll(self, task_id: str, *, family: str = MUSIC_NAME) -> PollResult:
        """Ask ``family``'s record endpoint about ``task_id`` and dispatch what is new.

        The fallback for when callbacks cannot reach the app: the answer becomes the same event a
        callback would, through the same deduplication, so no stage fires twice however polls and
        callbacks interleave. Needs ``MUSICCALLBACK_API_KEY``; raises
        :class:`~flask_musiccallback.provider.PollError` when the provider cannot be used, and
        ``LookupError`` for a family that is not registered or cannot be polled.
        """
        from .poll import poll_task  # the HTTP client is loaded only by apps that poll

        return poll_task(self._current_app(), task_id, family=family)

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of the endpoint, for the current app (or the only one served).

        Generated from the marshmallow schemas that parse callbacks, so it always says what the
        endpoint accepts, and from the app's settings: its security schemes, answers and server.
        """
        from .openapi import openapi_document

        return openapi_document(self._current_app())

    def wait_idle(self, timeout: float | None = None, *, app: Flask | None = None) -> bool:
        """Wait until the deliveries the app accepted in this process are settled and recorded.

        Under ``thread`` dispatch the endpoint answers before the receivers run, and a store that
        was away has its writes kept for later: a test, a script or a command that must see what
        the receivers did waits here first. Deliveries handed to Celery run in its workers and are
        not waited for. ``False`` when ``timeout`` seconds passed first.
        """
        state = get_state(app or self._current_app())
        left = _time_left(timeout)
        waits = [state.dispatcher.wait_idle, state.write_back.wait_idle]
        if state.archive is not None:
            # The write-back queues the media copies, and records how they ended.
            waits += [state.archive.wait_idle, state.write_back.wait_idle]
        return all(wait(left()) for wait in waits)

    def close(self, app: Flask | None = None, *, timeout: float | None = DRAIN_TIMEOUT) -> bool:
        """Shut the extension down on the app: its sweep, dispatch pool, media copies, kept writes
        and store.

        What was accepted is finished within ``timeout`` seconds (the bound the interpreter's exit
        gives a pool), so that a test or a host stopping an app before its process ends loses no
        delivery and leaves no thread behind. A store shared with another app this extension
        serves stays open for it. Returns ``False`` when something was left unfinished; deliveries
        arriving afterwards are answered 503 under ``thread`` dispatch, so that the provider
        retries them.
        """
        app = app or self._current_app()
        state = get_state(app)
        if state.sweeper is not None:
            state.sweeper.stop()
        left = _time_left(timeout)
        finished = state.dispatcher.close(left())
        if state.archive is not None:
            state.write_back.wait_idle(left())
            finished = state.archive.close(left()) and finished
        finished = state.write_back.close(left()) and finished
        self._closed.add(app)
        open_apps = (get_state(other) for other in self._apps if other not in self._closed)
        if all(other.store is not state.store for other in open_apps):
            state.store.close()
        return finished

    def _current_app(self) -> Flask:
        """The app to act for: the current one if this extension serves it, else its only app."""
        if has_app_context():
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            if app in self._apps:
                return app
        apps = list(self._apps)
        if len(apps) == 1:
            return apps[0]
        raise RuntimeError(
            "No app to use: call this inside an app context of an app this extension serves."
        )


def _time_left(timeout: float | None) -> Callable[[], float | None]:
    """The seconds left of ``timeout``, each time it is asked: one bound for waits made in turn."""
    if timeout is None:
        return lambda: None
    deadline = time.monotonic() + timeout
    return lambda: max(0.0, deadline - time.monotonic())
