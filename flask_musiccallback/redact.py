"""Keeping the callback's secrets out of logs.

The provider must be given the token inside the callback URL, and every access log in front of the
app (Werkzeug's, gunicorn's, a proxy's) writes that URL down. :class:`TokenRedactingFilter` rewrites
``token=`` query values in log records before any handler formats them; ``init_app`` installs it on
the loggers of the servers Python hosts run (:data:`ACCESS_LOGGERS`). Logs written outside Python
(nginx, a load balancer) are configured in the host's deployment: see ``docs/security.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

#: What a secret is replaced with, in logs and in the headers a persistent store keeps.
REDACTED = "[redacted]"

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


class TokenRedactingFilter(logging.Filter):
    """Rewrites ``token=`` query values in a record's message and arguments; drops nothing.

    Arguments are rewritten one by one rather than formatting the message here, so handlers and
    formatters further on still see a normal record (``%``-style message, tuple or mapping args).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_token(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_value(arg) for arg in args)
        elif isinstance(args, Mapping):
            record.args = {key: _redact_value(value) for key, value in args.items()}
        return True


def install_log_filters(names: tuple[str, ...] = ACCESS_LOGGERS) -> None:
    """Put one :class:`TokenRedactingFilter` on each named logger; calling again adds none."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, TokenRedactingFilter) for existing in logger.filters):
            logger.addFilter(TokenRedactingFilter())
