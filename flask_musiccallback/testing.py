"""Helpers for testing code that receives callbacks: realistic payloads, signatures, signals.

They are public API, used by this project's own tests, so they stay honest: the bodies are those of
:mod:`flask_musiccallback.simulate`, shaped like real traffic, and :class:`CallbackClient` posts
through the app's real endpoint, source checks and deduplication included. Nothing here needs
pytest; the fixtures are in :mod:`flask_musiccallback.pytest_plugin`, and no module of the package
imports this one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from flask import Flask

from . import signals as _signals
from .events import Stage
from .families import FAMILY_ARG, MUSIC_NAME
from .simulate import (
    SIMULATED_MEDIA_HOST,
    Credentials,
    build_callback,
    callback_credentials,
    post_callback,
    signature_headers,
)
from .state import get_state

if TYPE_CHECKING:
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

__all__ = [
    "SIGNALS",
    "SIMULATED_MEDIA_HOST",
    "CallbackClient",
    "Credentials",
    "build_callback",
    "callback_credentials",
    "record_signals",
    "signature_headers",
]

# Loading this module as a plugin (``-p flask_musiccallback.testing``, or ``pytest_plugins`` in a
# conftest.py, as hosts did before the plugin had a module of its own) loads the fixtures too. A
# name, not an import: pytest imports it, only when pytest runs.
pytest_plugins = ["flask_musiccallback.pytest_plugin"]

#: Every signal of the extension, by its public name.
SIGNALS = {name: getattr(_signals, name) for name in _signals.__all__}


@contextmanager
def record_signals(app: Flask) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Collect every signal of the extension sent for ``app``, as ``(name, kwargs)`` in order."""
    recorded: list[tuple[str, dict[str, Any]]] = []

    def recorder(name: str) -> Any:
        def receive(sender: Flask, **kwargs: Any) -> None:
            recorded.append((name, kwargs))

        return receive

    with ExitStack() as stack:
        for name, signal in SIGNALS.items():
            stack.enter_context(signal.connected_to(recorder(name), sender=app))
        yield recorded


class CallbackClient:
    """Delivers callbacks to an app's own endpoint, the way the provider would.

    Each delivery carries what the app's configuration requires (token, HMAC signature, an allowed
    source address) and goes through the real endpoint, so a test sees exactly the answers and
    signals that production traffic produces::

        client = CallbackClient(app)
        assert client.deliver("complete", task_id="t1").json == {"status": "received"}
    """

    #: Seconds :meth:`deliver` waits for receivers run off the request path before it gives up.
    timeout: float = 60.0

    def __init__(self, app: Flask, client: FlaskClient | None = None) -> None:
        self.app = app
        self.client = client if client is not None else app.test_client()

    @property
    def path(self) -> str:
        """The endpoint's route, without any query."""
        return get_state(self.app).settings.url_rule

    def deliver(
        self,
        payload_or_stage: Mapping[str, Any] | Stage | str = "complete",
        *,
        family: str = MUSIC_NAME,
        task_id: str | None = None,
        tracks: int = 2,
        code: int | None = None,
        msg: str | None = None,
        reseller: str = "sunoapi",
        family_in_url: bool = False,
        authenticate: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> TestResponse:
        """Post one callback and return the endpoint's answer, once its receivers have run.

        Under ``thread`` dispatch the endpoint answers before the receivers run; waiting for them
        here (retries included, as Celery's eager mode runs a task and its retries in the caller)
        lets a test deliver and then assert on what the receivers did, whatever the dispatch mode.
        A test of the answer alone, or of its timing, posts with
        :func:`~flask_musiccallback.simulate.post_callback`.

        ``payload_or_stage`` is a whole body, or a stage of ``family`` (any family registered on
        the app's extension) given to :func:`~.simulate.build_callback` with ``task_id``,
        ``tracks``, ``code``, ``msg`` and ``reseller``, its media links under
        ``MUSICCALLBACK_SIMULATED_MEDIA_URL`` when the app sets it. ``family_in_url`` posts to
        the callback URL that names the family, as ``music.callback_url(family=...)`` gives it.
        ``authenticate=False``
        sends it with no token and no signature, as a stranger would; ``headers`` are added last
        and win.
        """
        if isinstance(payload_or_stage, Mapping):
            payload = dict(payload_or_stage)
        else:
            kind = get_state(self.app).extension.families.named(family)
            payload = build_callback(
                payload_or_stage,
                family=kind,
                task_id=task_id,
                tracks=tracks,
                code=code,
                msg=msg,
                reseller=reseller,
                media_base=get_state(self.app).settings.simulated_media_url,
            )
        response = post_callback(
            self.app,
            payload,
            client=self.client,
            authenticate=authenticate,
            headers=headers,
            query={FAMILY_ARG: family} if family_in_url else None,
        )
        if not get_state(self.app).dispatcher.wait_idle(self.timeout):
            raise TimeoutError(
                f"the receivers of the delivery did not finish within {self.timeout} seconds"
            )
        return response
