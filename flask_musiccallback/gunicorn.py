"""gunicorn's logger, with the callback token redacted from its error log as well as its access log.

``init_app`` puts :class:`~flask_musiccallback.redact.TokenRedactingFilter` on gunicorn's access
logger only once the app is loaded, in a worker. gunicorn's error log writes the request line too:
``Error handling request POST /music-callback?token=...`` when a worker timeout aborts a request,
``Invalid request from ip=...: Invalid HTTP request line: '...'`` for a malformed one, both in a
worker before or outside the app. This logger class installs the filter on both of gunicorn's
loggers as gunicorn sets them up, in the master, before any worker starts::

    gunicorn --logger-class flask_musiccallback.gunicorn.GunicornLogger "yourapp:create_app()"

or ``logger_class = "flask_musiccallback.gunicorn.GunicornLogger"`` in ``gunicorn.conf.py``.
Importing this module needs gunicorn (the ``bench`` extra, or the host's own); the rest of the
package never imports it.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from .redact import install_log_filters

#: gunicorn's two loggers: every message it writes goes through one of them.
GUNICORN_LOGGERS = ("gunicorn.error", "gunicorn.access")


class GunicornLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type information
    """gunicorn's own logger, its handlers and formats unchanged, that redacts ``token=`` values.

    The filter goes on the loggers rather than on their handlers, so the handlers a ``logconfig``
    or ``logconfig_dict`` puts there instead of gunicorn's get redacted records as well.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        install_log_filters(GUNICORN_LOGGERS)
