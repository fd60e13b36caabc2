"""Keeping the callback's secrets out of logs.

The provider must be given the token inside the callback URL, and every access log in front of the
app (Werkzeug's, gunicorn's, a proxy's) writes that URL down. :class:`TokenRedactingFilter` rewrites
``token=`` query values in log records before any handler formats them; ``init_app`` installs it on
the loggers of the servers Python hosts run (:data:`ACCESS_LOGGERS`). gunicorn's error log, which
quotes the request line when a worker timeout aborts a request or a request line is malformed, is
not an access log: gunicorn's logger class :class:`flask_musiccallback.gunicorn.GunicornLogger`
installs the filter on it, in the master, before any worker or app is loaded. Logs written outside
Python (nginx, a load balancer) are configured in the host's deployment: see ``docs/security.md``.

The store's URL may carry a database or Redis password, and error messages and reprs, which end up
in logs and error trackers, show that URL: they show it through :func:`redact_url`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote, unquote_plus

#: What a secret is replaced with, in logs and in the headers a persistent store keeps.
REDACTED = "[redacted]"

#: What a password in a URL is replaced with: SQLAlchemy's mask, so that a URL reads the same
#: whichever of the two masked it.
HIDDEN_PASSWORD = "***"  # noqa: S105 - the mask, not a secret

#: The query parameter that carries the callback token.
TOKEN_PARAM = "token"  # noqa: S105 - the parameter's name, not a secret

#: Loggers that write request lines, URL and query string included.
ACCESS_LOGGERS = ("werkzeug", "gunicorn.access")

# One ``name=value`` pair of a query string as it shows in a request line, a URL, or alone (a
# server's query-string field). The name is decided after percent-decoding, so that ``%74oken=``,
# which Werkzeug reads as ``token``, is caught as well.
_QUERY_PAIR = re.compile(
    r"(?P<lead>^|[?&;\s])(?P<name>[^=&;\s\"'?#]{1,32})=(?P<value>[^&;\s\"'#]*)"
)


def _redact_pair(match: re.Match[str]) -> str:
    if unquote(match["name"]).strip().lower() != TOKEN_PARAM or not match["value"]:
        return match[0]
    return f"{match['lead']}{match['name']}={REDACTED}"


def redact_token(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced by ``[redacted]``."""
    if "=" not in text:
        return text
    return _QUERY_PAIR.sub(_redact_pair, text)


def _redact_value(value: Any) -> Any:
    return redact_token(value) if isinstance(value, str) else value


# Renders exceptions as every formatter does unless a host overrides ``formatException``.
_EXCEPTION_FORMATTER = logging.Formatter()


def _redact_mapping(args: Mapping[str, Any]) -> Mapping[str, Any]:
    """A copy of ``args`` with its values redacted, of the same class where it can be changed.

    gunicorn's access log passes a ``dict`` subclass that answers ``-`` for a missing atom and
    reads header atoms case-insensitively: a plain ``dict`` in its place would fail the format.
    """
    if isinstance(args, MutableMapping):
        redacted = copy.copy(args)
        for key, value in args.items():
            redacted[key] = _redact_value(value)
        return redacted
    return {key: _redact_value(value) for key, value in args.items()}


class TokenRedactingFilter(logging.Filter):
    """Rewrites ``token=`` query values in a record's message, arguments, exception and stack
    texts; drops nothing.

    Arguments are rewritten one by one rather than formatting the message here, so handlers and
    formatters further on still see a normal record (``%``-style message, tuple or mapping args).
    An exception's text is rendered here, as :class:`logging.Formatter` renders it, and kept on the
    record (``exc_text``), which is what every formatter writes when it is set: an exception's
    message may quote the request line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_token(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_value(arg) for arg in args)
        elif isinstance(args, Mapping):
            record.args = _redact_mapping(args)
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_token(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_token(record.stack_info)
        return True


def install_log_filters(names: tuple[str, ...] = ACCESS_LOGGERS) -> None:
    """Put one :class:`TokenRedactingFilter` on each named logger; calling again adds none."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, TokenRedactingFilter) for existing in logger.filters):
            logger.addFilter(TokenRedactingFilter())


# A query parameter that holds a password (redis-py and libpq read ``password=``, MySQL drivers
# ``passwd=``, TLS options ``ssl_password=``) and its value.
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][^=&;?#/]*(?:pass|pwd|secret|token)[^=&;?#/]*=)(?P<value>[^&;#]*)",
    re.IGNORECASE,
)

# Where a URL's authority (``user:password@host:port``) ends, as ``urlsplit`` reads it.
_NETLOC_END = re.compile(r"[/?#]")


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where ``url`` may hold a password, read as any of its parsers could read it.

    SQLAlchemy ends a password at its first ``@``, redis-py (``urlsplit``) at the last ``@``
    before the path, so the span runs to whichever is further. Without any ``@``, a port that is
    not a number is a password whose host was left out (``redis://user:s3cret/0``): parsers quote
    it back in their errors as a bad port.
    """
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    after_netloc = _NETLOC_END.search(url, start)
    netloc_end = after_netloc.start() if after_netloc else len(url)
    spans = [(match.start("value"), match.end("value")) for match in _SECRET_PARAM.finditer(url)]
    colon = url.find(":", start)
    slash = url.find("/", start)
    if colon >= 0 and (slash < 0 or colon < slash):
        end = max(url.find("@", colon), url.rfind("@", colon, netloc_end))
        if end >= 0:
            return [(colon + 1, end), *spans]
    if "@" not in url[start:netloc_end]:
        host = url[start:netloc_end]
        colon = host.rfind(":", host.rfind("]") + 1)
        port = host[colon + 1 :]
        if colon >= 0 and port and not port.isdigit():
            spans.append((start + colon + 1, netloc_end))
    return spans


def _mask(url: str) -> str:
    merged: list[list[int]] = []
    for begin, end in sorted(_secret_spans(url)):
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        elif end > begin:
            merged.append([begin, end])
    for begin, end in reversed(merged):
        url = url[:begin] + HIDDEN_PASSWORD + url[end:]
    return url


def redact_url(url: str) -> str:
    """``url`` with its passwords masked, for every message and repr that shows a store URL.

    SQLAlchemy renders the URLs it parses (as ``describe()`` does), since its grammar decides what
    a database URL's password is; the masking by hand that follows covers what it cannot parse
    (broken URLs, or SQLAlchemy not installed) and what its rendering keeps: a password in the
    query, or the rest of a ``redis://`` password holding an ``@``, which redis-py reads whole.
    """
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:
        return _mask(url)
    with contextlib.suppress(ArgumentError, ValueError):
        parsed = make_url(url)
        if parsed.password is not None:  # its rendering re-quotes: leave other URLs as written
            url = parsed.render_as_string(hide_password=True)
    return _mask(url)


def redact_url_secrets(text: str, url: str) -> str:
    """``text``, a parser's or driver's error about ``url``, with ``url``'s passwords masked.

    Such errors quote a piece of the URL rather than the URL itself (``Port could not be cast to
    integer value as 's3cret'``), so every piece :func:`redact_url` hides is masked, as written and
    percent-decoded.
    """
    text = text.replace(url, redact_url(url))
    secrets = {url[begin:end] for begin, end in _secret_spans(url)}
    secrets |= {decode(secret) for secret in secrets for decode in (unquote, unquote_plus)}
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, HIDDEN_PASSWORD)
    return text
