"""Every ``MUSICCALLBACK_*`` configuration key, its default, and how it is read.

Keys are read once, in ``init_app``, into a frozen :class:`!Settings`: the request path then never
parses configuration, and a mistake in it fails at start-up with a message naming the key instead of
at the first callback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .archive.fetch import AllowList
from .pool import backoff
from .redact import redact_url


class ConfigKeys:
    """The names of the configuration keys, in one place."""

    URL_RULE = "MUSICCALLBACK_URL_RULE"
    STORE = "MUSICCALLBACK_STORE"
    DEDUP_TTL = "MUSICCALLBACK_DEDUP_TTL"
    TOKEN = "MUSICCALLBACK_TOKEN"  # noqa: S105 - the key's name, not a secret
    HMAC_KEY = "MUSICCALLBACK_HMAC_KEY"
    TIMESTAMP_TOLERANCE = "MUSICCALLBACK_TIMESTAMP_TOLERANCE"
    ALLOWED_IPS = "MUSICCALLBACK_ALLOWED_IPS"
    MAX_CONTENT_LENGTH = "MUSICCALLBACK_MAX_CONTENT_LENGTH"
    DISPATCH = "MUSICCALLBACK_DISPATCH"
    RECEIVER_ERRORS = "MUSICCALLBACK_RECEIVER_ERRORS"
    EXTERNAL_URL = "MUSICCALLBACK_EXTERNAL_URL"
    API_KEY = "MUSICCALLBACK_API_KEY"
    API_BASE_URL = "MUSICCALLBACK_API_BASE_URL"
    THREAD_POOL_SIZE = "MUSICCALLBACK_THREAD_POOL_SIZE"
    THREAD_QUEUE_SIZE = "MUSICCALLBACK_THREAD_QUEUE_SIZE"
    RETRY_ATTEMPTS = "MUSICCALLBACK_RETRY_ATTEMPTS"
    RETRY_BACKOFF = "MUSICCALLBACK_RETRY_BACKOFF"
    CELERY_APP = "MUSICCALLBACK_CELERY_APP"
    PENDING_SWEEP_AGE = "MUSICCALLBACK_PENDING_SWEEP_AGE"
    RECONCILE_AFTER = "MUSICCALLBACK_RECONCILE_AFTER"
    RECONCILE_GIVE_UP = "MUSICCALLBACK_RECONCILE_GIVE_UP"
    RECONCILE_RATE = "MUSICCALLBACK_RECONCILE_RATE"
    EXPECTED_ONLY = "MUSICCALLBACK_EXPECTED_ONLY"
    VERIFY_BY_FETCH = "MUSICCALLBACK_VERIFY_BY_FETCH"
    ARCHIVE = "MUSICCALLBACK_ARCHIVE"
    ARCHIVE_MAX_BYTES = "MUSICCALLBACK_ARCHIVE_MAX_BYTES"
    ARCHIVE_ALLOW = "MUSICCALLBACK_ARCHIVE_ALLOW"
    ARCHIVE_THREADS = "MUSICCALLBACK_ARCHIVE_THREADS"
    ARCHIVE_TIMEOUT = "MUSICCALLBACK_ARCHIVE_TIMEOUT"
    SIMULATED_MEDIA_URL = "MUSICCALLBACK_SIMULATED_MEDIA_URL"


#: The defaults ``init_app`` sets with ``app.config.setdefault``.
DEFAULTS: Mapping[str, Any] = {
    ConfigKeys.URL_RULE: "/music-callback",
    ConfigKeys.STORE: "memory://",
    ConfigKeys.DEDUP_TTL: 7 * 24 * 3600,
    ConfigKeys.TOKEN: None,
    ConfigKeys.HMAC_KEY: None,
    ConfigKeys.TIMESTAMP_TOLERANCE: 300,
    ConfigKeys.ALLOWED_IPS: None,
    ConfigKeys.MAX_CONTENT_LENGTH: 8 * 1024 * 1024,
    ConfigKeys.DISPATCH: "sync",
    ConfigKeys.RECEIVER_ERRORS: "retry",
    ConfigKeys.EXTERNAL_URL: None,
    ConfigKeys.API_KEY: None,
    ConfigKeys.API_BASE_URL: "https://api.sunoapi.org",
    # Off the request path (``thread`` and ``celery`` dispatch; docs/dispatch.md):
    # worker threads of the ``thread`` pool, per app and process;
    ConfigKeys.THREAD_POOL_SIZE: 4,
    # deliveries accepted and waiting for a thread; past it the endpoint answers 503;
    ConfigKeys.THREAD_QUEUE_SIZE: 100,
    # runs of one delivery's receivers, the first included, before it is kept as failed;
    ConfigKeys.RETRY_ATTEMPTS: 5,
    # seconds before the first retry, doubled for each next one (2, 4, 8, 16 by default);
    ConfigKeys.RETRY_BACKOFF: 2.0,
    # the Celery app that sends deliveries to workers: the object, an import string
    # ("pkg.tasks:celery_app"), or None for app.extensions["celery"] (Flask's Celery pattern).
    ConfigKeys.CELERY_APP: None,
    # seconds after which a delivery accepted and never finished (a process died) is dispatched
    # again by the sweep, when its claim is free; None or 0 turns the sweep off (docs/dispatch.md).
    ConfigKeys.PENDING_SWEEP_AGE: 300,
    # Reconciliation (docs/tasks.md): seconds an open task may stay silent before it is overdue
    # (task_overdue, then polled), None turning reconciliation off; seconds after it was expected
    # or first heard of before an open task is given up as lost (task_lost); and the most
    # requests a second one reconciliation run sends the provider.
    ConfigKeys.RECONCILE_AFTER: 1800,
    ConfigKeys.RECONCILE_GIVE_UP: 86400,
    ConfigKeys.RECONCILE_RATE: 2.0,
    # Defense in depth where the provider's signature is weak (docs/security.md):
    # refuse callbacks of tasks never registered with music.expect (403 unexpected_task);
    ConfigKeys.EXPECTED_ONLY: False,
    # confirm each callback against the provider's record of its task before dispatching it
    # (409 unverified when the record contradicts it); needs MUSICCALLBACK_API_KEY.
    ConfigKeys.VERIFY_BY_FETCH: False,
    # The media archive (docs/archive.md): an fsspec URL every new success event's media is
    # copied to, off the request path, or None; the largest file it keeps; the hosts and
    # networks its links may lead to although they are not public (loopback, private, ...);
    # threads copying in each process (sync and thread dispatch); seconds to wait on a media
    # server, to connect and for each read.
    ConfigKeys.ARCHIVE: None,
    ConfigKeys.ARCHIVE_MAX_BYTES: 200 * 1024 * 1024,
    ConfigKeys.ARCHIVE_ALLOW: None,
    ConfigKeys.ARCHIVE_THREADS: 2,
    ConfigKeys.ARCHIVE_TIMEOUT: 30,
    # Development: the base URL the media links of simulated callbacks (``flask musiccallback
    # simulate``, ``CallbackClient``) point under, for an app that serves stand-ins there; None
    # keeps them on cdn.example.invalid, which never resolves.
    ConfigKeys.SIMULATED_MEDIA_URL: None,
}

DISPATCH_MODES = ("sync", "thread", "celery")
RECEIVER_ERROR_POLICIES = ("retry", "ack")
#: The longest wait between two attempts of a delivery, however many attempts are configured.
MAX_RETRY_DELAY = 600.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigurationError(ValueError):
    """A ``MUSICCALLBACK_*`` key holds a value the extension cannot use."""


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """The configuration of one app, validated and in the form the request path uses.

    Secrets are left out of its ``repr``, which error reports and debuggers print, and the store
    URL is shown there without its password.
    """

    url_rule: str
    store_url: str
    dedup_ttl: int
    tokens: tuple[bytes, ...] = field(repr=False)
    hmac_keys: tuple[bytes, ...] = field(repr=False)
    timestamp_tolerance: int
    allowed_networks: tuple[IPNetwork, ...]
    max_content_length: int
    dispatch: str
    receiver_errors: str
    external_url: str | None
    api_key: str | None = field(repr=False)
    api_base_url: str
    thread_pool_size: int
    thread_queue_size: int
    retry_attempts: int
    retry_backoff: float
    #: A Celery app, an import string naming one, or ``None``; resolved at the first dispatch,
    #: since the host usually builds its Celery app after the extension.
    celery_app: Any
    #: Seconds before the sweep takes a pending delivery over, or ``None``: no sweep.
    pending_sweep_age: float | None
    #: Seconds of silence after which an open task is overdue, or ``None``: no reconciliation.
    reconcile_after: float | None
    #: Seconds after a task was expected or first heard of before it is given up as lost.
    reconcile_give_up: float
    #: The most provider requests a second of one reconciliation run.
    reconcile_rate: float
    #: Whether callbacks of tasks never expected are refused (``unexpected_task``).
    expected_only: bool
    #: Whether each callback is confirmed against the provider's record before it is dispatched.
    verify_by_fetch: bool
    #: The fsspec URL of the media archive, or ``None``: no archive.
    archive_url: str | None = field(repr=False)
    archive_max_bytes: int
    #: Where links may lead although it is not public.
    archive_allow: AllowList
    archive_threads: int
    archive_timeout: float
    #: Where simulated callbacks' media links point, or ``None``: the invalid host.
    simulated_media_url: str | None

    @property
    def secured(self) -> bool:
        """Whether any source check is configured; without one, anybody can post callbacks."""
        return bool(self.tokens or self.hmac_keys or self.allowed_networks)

    @classmethod
    def from_config(cls, config: MutableMapping[str, Any]) -> Settings:
        """Set the defaults into ``config`` and read every key, failing on the first bad one."""
        for key, value in DEFAULTS.items():
            config.setdefault(key, value)
        return cls(
            url_rule=_url_rule(config[ConfigKeys.URL_RULE]),
            store_url=_text(ConfigKeys.STORE, config[ConfigKeys.STORE]),
            dedup_ttl=_positive_int(ConfigKeys.DEDUP_TTL, config[ConfigKeys.DEDUP_TTL]),
            tokens=_secrets(ConfigKeys.TOKEN, config[ConfigKeys.TOKEN]),
            hmac_keys=_secrets(ConfigKeys.HMAC_KEY, config[ConfigKeys.HMAC_KEY]),
            timestamp_tolerance=_positive_int(
                ConfigKeys.TIMESTAMP_TOLERANCE, config[ConfigKeys.TIMESTAMP_TOLERANCE]
            ),
            allowed_networks=_networks(config[ConfigKeys.ALLOWED_IPS]),
            max_content_length=_positive_int(
                ConfigKeys.MAX_CONTENT_LENGTH, config[ConfigKeys.MAX_CONTENT_LENGTH]
            ),
            dispatch=_choice(ConfigKeys.DISPATCH, config[ConfigKeys.DISPATCH], DISPATCH_MODES),
            receiver_errors=_choice(
                ConfigKeys.RECEIVER_ERRORS,
                config[ConfigKeys.RECEIVER_ERRORS],
                RECEIVER_ERROR_POLICIES,
            ),
            external_url=_optional_text(ConfigKeys.EXTERNAL_URL, config[ConfigKeys.EXTERNAL_URL]),
            api_key=_optional_secret(ConfigKeys.API_KEY, config[ConfigKeys.API_KEY]),
            api_base_url=_text(ConfigKeys.API_BASE_URL, config[ConfigKeys.API_BASE_URL]),
            thread_pool_size=_positive_int(
                ConfigKeys.THREAD_POOL_SIZE, config[ConfigKeys.THREAD_POOL_SIZE]
            ),
            thread_queue_size=_positive_int(
                ConfigKeys.THREAD_QUEUE_SIZE, config[ConfigKeys.THREAD_QUEUE_SIZE]
            ),
            retry_attempts=_positive_int(
                ConfigKeys.RETRY_ATTEMPTS, config[ConfigKeys.RETRY_ATTEMPTS]
            ),
            retry_backoff=_seconds(ConfigKeys.RETRY_BACKOFF, config[ConfigKeys.RETRY_BACKOFF]),
            celery_app=_celery_app(config[ConfigKeys.CELERY_APP]),
            pending_sweep_age=_seconds(
                ConfigKeys.PENDING_SWEEP_AGE, config[ConfigKeys.PENDING_SWEEP_AGE] or 0
            )
            or None,
            reconcile_after=_optional_seconds(
                ConfigKeys.RECONCILE_AFTER, config[ConfigKeys.RECONCILE_AFTER]
            ),
            reconcile_give_up=_seconds(
                ConfigKeys.RECONCILE_GIVE_UP, config[ConfigKeys.RECONCILE_GIVE_UP]
            ),
            reconcile_rate=_rate(ConfigKeys.RECONCILE_RATE, config[ConfigKeys.RECONCILE_RATE]),
            expected_only=_flag(ConfigKeys.EXPECTED_ONLY, config[ConfigKeys.EXPECTED_ONLY]),
            verify_by_fetch=_verify_by_fetch(config),
            archive_url=_optional_text(ConfigKeys.ARCHIVE, config[ConfigKeys.ARCHIVE]),
            archive_max_bytes=_positive_int(
                ConfigKeys.ARCHIVE_MAX_BYTES, config[ConfigKeys.ARCHIVE_MAX_BYTES]
            ),
            archive_allow=_allow_list(config[ConfigKeys.ARCHIVE_ALLOW]),
            archive_threads=_positive_int(
                ConfigKeys.ARCHIVE_THREADS, config[ConfigKeys.ARCHIVE_THREADS]
            ),
            archive_timeout=_positive_seconds(
                ConfigKeys.ARCHIVE_TIMEOUT, config[ConfigKeys.ARCHIVE_TIMEOUT]
            ),
            simulated_media_url=_optional_http_url(
                ConfigKeys.SIMULATED_MEDIA_URL, config[ConfigKeys.SIMULATED_MEDIA_URL]
            ),
        )

    def __repr__(self) -> str:
        shown = {item.name: getattr(self, item.name) for item in fields(self) if item.repr}
        shown["store_url"] = redact_url(self.store_url)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first run).

        Exponential, so that a receiver whose backend is down is not hammered, and capped, so that
        many attempts never push a retry past :data:`MAX_RETRY_DELAY`.
        """
        return backoff(attempt, self.retry_backoff, MAX_RETRY_DELAY)


def _url_rule(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigurationError(f"{ConfigKeys.URL_RULE} must be a path starting with '/'.")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        # The wrong value may be a store URL in the wrong type (bytes), password included.
        raise ConfigurationError(
            f"{key} must be a non-empty string, not {redact_url(repr(value))}."
        )
    return value


def _optional_text(key: str, value: Any) -> str | None:
    return None if value is None else _text(key, value)


def _optional_http_url(key: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:  # an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{key} must be an http:// or https:// URL, not {value!r}.")
    return str(value)


def _optional_secret(key: str, value: Any) -> str | None:
    """Like :func:`_optional_text`, but a wrong value is not repeated in the error message."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{key} must be a non-empty string.")
    return value


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{key} must be a positive whole number, not {value!r}.")
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
        raise ConfigurationError(f"{key} must be a number of seconds, 0 or more, not {value!r}.")
    return float(value)


def _optional_seconds(key: str, value: Any) -> float | None:
    return None if value is None else _seconds(key, value)


def _positive_seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise ConfigurationError(f"{key} must be a number of seconds above 0, not {value!r}.")
    return float(value)


def _rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise ConfigurationError(f"{key} must be a number above 0 (per second), not {value!r}.")
    return float(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{key} must be True or False, not {value!r}.")
    return value


def _verify_by_fetch(config: Mapping[str, Any]) -> bool:
    """The flag, refused without the API key it needs: at start-up, not at the first callback."""
    on = _flag(ConfigKeys.VERIFY_BY_FETCH, config[ConfigKeys.VERIFY_BY_FETCH])
    if on and not config[ConfigKeys.API_KEY]:
        raise ConfigurationError(
            f"{ConfigKeys.VERIFY_BY_FETCH} asks the provider about every callback: "
            f"set {ConfigKeys.API_KEY} too."
        )
    return on


def _celery_app(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value) or hasattr(value, "send_task"):
        return value
    raise ConfigurationError(
        f"{ConfigKeys.CELERY_APP} must be a Celery app, an import string naming one, or None; "
        f"got {value!r}."
    )


def _choice(key: str, value: Any, choices: Iterable[str]) -> str:
    if value not in choices:
        raise ConfigurationError(f"{key} must be one of {', '.join(choices)}; got {value!r}.")
    return str(value)


def _secrets(key: str, value: Any) -> tuple[bytes, ...]:
    """One secret or a list of them (rotation), as bytes for ``hmac.compare_digest``."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str | bytes) else list(value)
    out = []
    for item in values:
        if isinstance(item, str):
            item = item.encode()
        if not isinstance(item, bytes) or not item:
            raise ConfigurationError(f"{key} must be a non-empty string or a list of them.")
        out.append(item)
    return tuple(out)


def _allow_list(value: Any) -> AllowList:
    """Host names, addresses and networks: one as a string, or a list of them."""
    if value is None:
        return AllowList()
    values = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) for item in values):
        raise ConfigurationError(f"{ConfigKeys.ARCHIVE_ALLOW} must list host names or networks.")
    try:
        return AllowList.parse(values)
    except ValueError as exc:
        raise ConfigurationError(f"{ConfigKeys.ARCHIVE_ALLOW}: {exc}") from exc


def _networks(value: Any) -> tuple[IPNetwork, ...]:
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    try:
        return tuple(ipaddress.ip_network(str(item), strict=False) for item in values)
    except ValueError as exc:
        raise ConfigurationError(f"{ConfigKeys.ALLOWED_IPS}: {exc}") from exc
