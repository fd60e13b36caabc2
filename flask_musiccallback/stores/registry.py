"""Which store class a ``MUSICCALLBACK_STORE`` URL names, by its scheme.

As Flask-Limiter's ``storage_from_string``: a small scheme-to-class table, whose modules are
imported only when their scheme is used, so that an app on the memory store needs neither
SQLAlchemy nor redis installed. :func:`register_store` adds a store of the host's own.
"""

from __future__ import annotations

import importlib

from ..redact import redact_url
from .base import Store, StoreError

#: URL scheme to ``"module:ClassName"`` (or the class itself, once registered in code).
_registry: dict[str, str | type[Store]] = {
    "memory": "flask_musiccallback.stores.memory:MemoryStore",
    "sqlalchemy": "flask_musiccallback.stores.sqlalchemy:SQLAlchemyStore",
    "sqlite": "flask_musiccallback.stores.sqlalchemy:SQLAlchemyStore",
    "postgresql": "flask_musiccallback.stores.sqlalchemy:SQLAlchemyStore",
    "mysql": "flask_musiccallback.stores.sqlalchemy:SQLAlchemyStore",
    "mariadb": "flask_musiccallback.stores.sqlalchemy:SQLAlchemyStore",
    "redis": "flask_musiccallback.stores.redis:RedisStore",
    "rediss": "flask_musiccallback.stores.redis:RedisStore",
    "unix": "flask_musiccallback.stores.redis:RedisStore",
}


def register_store(scheme: str, store_class: str | type[Store]) -> None:
    """Make ``scheme://`` URLs build stores with ``store_class.from_url`` (or ``module:Class``)."""
    _registry[scheme] = store_class


def url_scheme(url: str) -> str:
    """The scheme a store is registered under: ``postgresql+psycopg://...`` is ``postgresql``."""
    return url.partition("://")[0].partition("+")[0].lower()


def store_from_url(url: str, *, ttl: int) -> Store:
    """Build the store a ``MUSICCALLBACK_STORE`` URL names.

    ``postgresql+psycopg://`` is looked up as ``postgresql``: the driver is the backend's business.
    """
    scheme = url_scheme(url)
    target = _registry.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(_registry))
        shown = redact_url(url)
        raise StoreError(
            f"No store for the URL scheme {url_scheme(shown)!r} of {shown!r}; known: {known}."
        )
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
