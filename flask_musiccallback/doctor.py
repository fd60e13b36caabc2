"""``flask musiccallback doctor``: can this deployment receive callbacks, checked from its own
configuration, before the provider finds out.

Each check is a plain function of the app returning a :class:`Check`, so that a host's health page
or its own tests can run them too (:func:`run_checks`); the command prints them one a line. A check
looks and changes nothing a deployment relies on: the SQL store's missing tables are reported, not
created, and the archive's probe file is removed again.

Nothing a check prints holds a secret: the store's and the broker's URLs have their passwords
masked, and the callback URL its token.
"""

from __future__ import annotations

import enum
import ipaddress
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, has_app_context

from .archive.fetch import is_public
from .config import ConfigKeys, ConfigurationError, Settings
from .redact import redact_token, redact_url, redact_url_secrets
from .state import get_state
from .stores.base import StoreError
from .stores.watchdog import NoAnswer

#: Seconds the broker and the provider are given to answer; the store has its own timeout.
DEFAULT_TIMEOUT = 5.0

#: The task id the provider is asked about to test the API key: no task has it, and the answer
#: (an unknown task, or a refused key) costs no credits.
PROBE_TASK_ID = "musiccallback-doctor-probe"


class Status(str, enum.Enum):
    """How a check went; only ``fail`` makes the command exit non-zero."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    #: Nothing to check: the feature is not configured.
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Check:
    """One check's name, how it went, and what it found, in one line."""

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.value:<4}  {self.name:<14} {self.detail}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def check_configuration(app: Flask, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """The settings that decide how callbacks are taken in, and whether anything guards the
    endpoint: without a token, an HMAC key or an allow-list, anybody may post callbacks.

    The configuration was validated when the extension was initialised (a wrong value stops the
    app there, naming the key), so this reports rather than validates.
    """
    settings = get_state(app).settings
    guards = _guards(settings)
    detail = (
        f"dispatch {settings.dispatch}; store {redact_url(settings.store_url)}; "
        f"source checks: {', '.join(guards) or 'none'}"
    )
    if not guards:
        return Check(
            "configuration",
            Status.WARN,
            f"{detail}: anybody who finds the URL can post callbacks; set "
            f"{ConfigKeys.TOKEN}, {ConfigKeys.HMAC_KEY} or {ConfigKeys.ALLOWED_IPS}",
        )
    return Check("configuration", Status.OK, detail)


def _guards(settings: Settings) -> list[str]:
    guards = []
    if settings.tokens:
        guards.append(f"token ({len(settings.tokens)})")
    if settings.hmac_keys:
        guards.append(f"HMAC ({len(settings.hmac_keys)})")
    if settings.allowed_networks:
        guards.append(f"IP allow-list ({len(settings.allowed_networks)} networks)")
    return guards


def check_store(app: Flask, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """The store answers, how fast, and its tables or keyspace are there.

    The store's own timeout (``?timeout=``) bounds the wait, as on the request path.
    """
    store = get_state(app).store
    try:
        health = store.check()
    except StoreError as exc:
        return Check("store", Status.FAIL, f"unreachable: {exc}")
    if health is None:
        return Check("store", Status.WARN, f"{store.describe()} cannot check itself (no check())")
    where = store.describe()
    timing = "" if health.round_trip is None else f", round trip {_ms(health.round_trip)}"
    detail = f"{where}{timing}; {health.found}"
    if health.missing:
        missing = ", ".join(health.missing)
        if health.creates_missing:
            return Check(
                "store",
                Status.WARN,
                f"{detail}; missing: {missing} (created at the store's first use, which needs "
                "the right to create tables)",
            )
        return Check(
            "store",
            Status.FAIL,
            f"{detail}; missing: {missing} (create them: db.create_all() or a migration)",
        )
    if health.warnings:
        return Check("store", Status.WARN, f"{detail}; {'; '.join(health.warnings)}")
    return Check("store", Status.OK, detail)


def check_broker(app: Flask, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """The Celery broker accepts a connection, within ``timeout``, when ``celery`` dispatch
    hands deliveries to it: while it is away every callback is answered 503."""
    state = get_state(app)
    if state.settings.dispatch != "celery":
        return Check("broker", Status.SKIP, f"dispatch is {state.settings.dispatch}, not celery")
    from .dispatch.celery import CeleryDispatcher

    dispatcher = state.dispatcher
    assert isinstance(dispatcher, CeleryDispatcher)
    try:
        celery = dispatcher.celery_app(app)
    except (ConfigurationError, ImportError) as exc:
        return Check("broker", Status.FAIL, str(exc))
    connection = celery.connection_for_write(connect_timeout=timeout)
    where = connection.as_uri()  # the password masked
    started = time.perf_counter()
    try:
        _within(timeout, lambda: connection.ensure_connection(max_retries=0))
    except Exception as exc:  # every transport raises its own kind
        detail = redact_url_secrets(f"{type(exc).__name__}: {exc}", str(celery.conf.broker_url))
        return Check("broker", Status.FAIL, f"{where} unreachable: {detail}")
    took = time.perf_counter() - started
    connection.release()
    return Check("broker", Status.OK, f"{where}, connected in {_ms(took)}")


def _within(timeout: float, work: Callable[[], object]) -> None:
    """Run ``work`` in a thread of its own and wait ``timeout`` seconds for it at most.

    Kombu's and fsspec's timeouts bound a connect, not every wait after it: a broker that takes
    the connection and never answers would hang the command. The thread is a daemon, left to
    its wait when it overruns: it ends with the process.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, name="musiccallback-doctor", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise NoAnswer(f"no answer within {timeout:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def check_api_key(app: Flask, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """The provider accepts ``MUSICCALLBACK_API_KEY``, which polling, reconciliation and
    ``MUSICCALLBACK_VERIFY_BY_FETCH`` need.

    Asked as a poll asks: the music record of a task nobody has, which costs no credits. An
    answer about that task, even "not found", is the key accepted; 401 or 403 is the key refused.
    """
    import httpx

    from .families import MUSIC
    from .provider import PollError, ProviderClient

    settings = get_state(app).settings
    if not settings.api_key:
        return Check("api-key", Status.SKIP, f"{ConfigKeys.API_KEY} is not set")
    base = settings.api_base_url
    client = ProviderClient.from_settings(
        settings, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
    )
    started = time.perf_counter()
    try:
        with client:
            client.record_info(PROBE_TASK_ID, MUSIC.record_path or "")
    except PollError as exc:
        took = time.perf_counter() - started
        if exc.code in (401, 403, 404):
            return Check("api-key", Status.FAIL, f"{base}: {exc}")
        if exc.code is None:  # no answer at all, or not the provider's (not JSON)
            return Check("api-key", Status.FAIL, str(exc))
        if exc.retryable:
            return Check("api-key", Status.WARN, f"{base}: not checked now: {exc}")
        # The key was read and a task looked for: an unknown task is what was asked about.
        return Check("api-key", Status.OK, f"accepted by {base} ({_ms(took)})")
    return Check("api-key", Status.OK, f"accepted by {base} ({_ms(time.perf_counter() - started)})")


def check_callback_url(app: Flask, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """``callback_url()`` can be built, absolute, and over ``https``: the token travels in it,
    and the provider must reach it from the internet."""
    try:
        url = get_state(app).extension.callback_url()
    except RuntimeError as exc:  # no request, SERVER_NAME nor MUSICCALLBACK_EXTERNAL_URL
        return Check("callback-url", Status.FAIL, str(exc))
    shown = redact_token(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Check("callback-url", Status.FAIL, f"{shown} is not an absolute http(s) URL")
    if _local(parts.hostname):
        return Check(
            "callback-url", Status.WARN, f"{shown}: the provider cannot reach {parts.hostname}"
        )
    if parts.scheme != "https":
        return Check(
            "callback-url",
            Status.WARN,
            f"{shown}: not https, so the token travels in clear; put TLS in front",
        )
    return Check("callback-url", Status.OK, shown)


def _local(host: str) -> bool:
    """Whether ``host`` is this machine or a private network, out of the provider's reach."""
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not is_public(address)


def check_archive(app: Flask, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """The media archive takes a file: its folder is made if missing, as a copy makes it, and a
    small probe file is written there and removed."""
    archive = get_state(app).archive
    if archive is None:
        return Check("archive", Status.SKIP, f"{ConfigKeys.ARCHIVE} is not set")
    fs, root = archive.fs, archive.root
    where = archive.url_of("")
    probe = f"{root}/.musiccallback-doctor-{uuid.uuid4().hex}.probe"

    def write_and_remove() -> None:
        fs.makedirs(root, exist_ok=True)
        with fs.open(probe, "wb") as out:
            out.write(b"flask musiccallback doctor\n")
        fs.rm(probe)

    try:
        _within(max(timeout, archive.timeout), write_and_remove)
    except Exception as exc:  # each fsspec backend raises its own kind
        return Check(
            "archive", Status.FAIL, f"{where} is not writable: {type(exc).__name__}: {exc}"
        )
    return Check("archive", Status.OK, f"{where} writable")


#: Every check, in the order printed.
CHECKS: Sequence[Callable[[Flask, float], Check]] = (
    check_configuration,
    check_store,
    check_broker,
    check_api_key,
    check_callback_url,
    check_archive,
)


def run_checks(app: Flask, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """Every check of :data:`CHECKS` on ``app``, in an app context."""
    if not has_app_context():
        with app.app_context():
            return run_checks(app, timeout)
    return [_guarded(check, app, timeout) for check in CHECKS]


def _guarded(check: Callable[[Flask, float], Check], app: Flask, timeout: float) -> Check:
    """``check``'s result, or its error as a failure: one check that breaks in a way it did not
    foresee must not hide what the others find. The store URL's passwords are masked in it."""
    try:
        return check(app, timeout)
    except Exception as exc:  # reported as the check's failure
        name = check.__name__.removeprefix("check_").replace("_", "-")
        detail = redact_url_secrets(
            f"{type(exc).__name__}: {exc}", get_state(app).settings.store_url
        )
        return Check(name, Status.FAIL, detail)
