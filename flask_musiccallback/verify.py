"""Source checks: IP allow-list, URL token, kie.ai HMAC signature with a timestamp window, and
the defenses where that signature is weak: one signature to one body, expected tasks only.

Each check is a small function that raises :class:`Rejected` and otherwise returns nothing, so the
endpoint composes them in the order that leaks least: the cheap ones before the body is read, and a
request that fails one learns nothing else. Secrets are compared with :func:`hmac.compare_digest`
against every configured value (rotation) without stopping at the first match, and as SHA-256
digests of equal length, so that the time taken tells neither a secret's bytes nor its length.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from typing import Any

from werkzeug.datastructures import Headers

from .config import Settings
from .stores.base import Store
from .stores.tasks import TaskRecord

SIGNATURE_HEADER = "X-Webhook-Signature"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"


class Refusal(str, enum.Enum):
    """Why the endpoint refuses a request (API.md section 5), with the status it is answered with:
    one table, so that the endpoint, its signal and its OpenAPI document never disagree."""

    status: int

    def __new__(cls, reason: str, status: int) -> Refusal:
        member = str.__new__(cls, reason)
        member._value_ = reason
        member.status = status
        return member

    INVALID_JSON = "invalid_json", 400
    UNAUTHORIZED = "unauthorized", 401
    FORBIDDEN = "forbidden", 403
    TOO_LARGE = "too_large", 413
    INVALID_PAYLOAD = "invalid_payload", 422
    UNEXPECTED_TASK = "unexpected_task", 403
    UNVERIFIED = "unverified", 409

    def __str__(self) -> str:
        return str.__str__(self)


class Rejected(Exception):  # noqa: N818 - it is an answer, not an error of ours
    """A request the endpoint refuses; carries what to answer and to report."""

    def __init__(self, reason: Refusal, errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.status = reason.status
        self.errors: Mapping[str, Any] = errors or {}


def unauthorized() -> Rejected:
    return Rejected(Refusal.UNAUTHORIZED)


def check_address(settings: Settings, remote_addr: str | None) -> None:
    """Refuse an address outside ``MUSICCALLBACK_ALLOWED_IPS`` (403), when a list is set."""
    if not settings.allowed_networks:
        return
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        raise Rejected(Refusal.FORBIDDEN) from None
    # A server listening on ``[::]`` sees IPv4 callers as ``::ffff:a.b.c.d``: the same caller.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    if not any(
        address in network or (mapped is not None and mapped in network)
        for network in settings.allowed_networks
    ):
        raise Rejected(Refusal.FORBIDDEN)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@functools.lru_cache(maxsize=32)
def _digests(secrets: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The digests of configured secrets, computed once per configuration, not per request."""
    return tuple(_digest(secret) for secret in secrets)


def _matches_any(candidate: bytes, digests: tuple[bytes, ...]) -> bool:
    given = _digest(candidate)
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(given, digest)
    return matched


def check_token(settings: Settings, token: str | None) -> None:
    """Refuse a missing or wrong ``token`` query parameter (401), when tokens are set."""
    if not settings.tokens:
        return
    if not token or not _matches_any(token.encode(), _digests(settings.tokens)):
        raise unauthorized()


def signed_timestamp(settings: Settings, headers: Headers, now: float) -> str | None:
    """The signature's timestamp, once its headers are present and it is inside the window.

    Runs before the body is read: an unsigned or replayed request is refused without it. Returns
    ``None`` when no HMAC key is configured.
    """
    if not settings.hmac_keys:
        return None
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    if not headers.get(SIGNATURE_HEADER) or not timestamp.isascii() or not timestamp.isdigit():
        raise unauthorized()
    if len(timestamp) > 12 or abs(now - int(timestamp)) > settings.timestamp_tolerance:
        raise unauthorized()
    return timestamp


def sign(key: bytes, task_id: str, timestamp: str) -> str:
    """The kie.ai signature: base64 of HMAC-SHA256 over ``task_id + "." + timestamp``."""
    message = f"{task_id}.{timestamp}".encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def check_signature(
    settings: Settings, headers: Headers, task_id: str | None, timestamp: str
) -> None:
    """Refuse a signature that no configured key produces for this task and timestamp (401)."""
    if not task_id:
        raise unauthorized()  # nothing to verify against: the request cannot be authentic
    given = headers.get(SIGNATURE_HEADER, "").strip().encode("ascii", "replace")
    expected = tuple(
        _digest(sign(key, task_id, timestamp).encode("ascii")) for key in settings.hmac_keys
    )
    if not _matches_any(given, expected):
        raise unauthorized()


def check_one_body(settings: Settings, store: Store, headers: Headers, body: bytes) -> None:
    """Refuse a verified signature already accepted with another body (401).

    kie.ai signs the task id and the timestamp, not the body (PROVIDER.md section 5), so whoever
    saw one signed request could post the same headers with a body of their own while the
    timestamp is in the window. The store remembers each signature with the digest of the raw
    bytes it came with, as long as the window lasts both ways: a redelivery sends the same bytes
    and stays a duplicate; another body is refused. Raises ``StoreUnavailable`` when the store
    cannot be reached.
    """
    signature = headers.get(SIGNATURE_HEADER, "").strip()
    digest = hashlib.sha256(body).hexdigest()
    if not store.remember_signature(signature, digest, ttl=2 * settings.timestamp_tolerance):
        raise unauthorized()


def check_expected(store: Store, task_id: str | None) -> TaskRecord:
    """Refuse a callback of a task the host never registered with ``music.expect`` (403).

    For ``MUSICCALLBACK_EXPECTED_ONLY``: a task created by an earlier callback is not expected
    either, so a stranger who knows the callback URL (a leaked token on sunoapi.org, which signs
    nothing) can make up no task at all. A body without a task id is no expected task's.
    Returns the task, so that routing need not read it again. Raises ``StoreUnavailable`` when
    the store cannot be reached.
    """
    record = store.task(task_id) if task_id else None
    if record is None or record.expected_at is None:
        raise Rejected(Refusal.UNEXPECTED_TASK)
    return record
