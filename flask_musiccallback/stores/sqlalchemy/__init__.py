"""The relational store: SQLite, PostgreSQL, MySQL/MariaDB through SQLAlchemy.

Two ways to point it at a database:

``sqlalchemy://`` (options ``?bind=KEY&table=NAME&lease=SECONDS&timeout=SECONDS``)
    The host app's Flask-SQLAlchemy ``db``. The extension's table joins ``db.metadata`` (or the
    bind's metadata), so ``db.create_all()``, Flask-Migrate and Alembic see it and the host's
    migrations own it. Only ``db``'s engine is borrowed, never its session: a claim commits on its
    own connection and never commits, or rolls back, the host's unit of work.

any SQLAlchemy URL (``sqlite:///callbacks.db``, ``postgresql+psycopg://...``;
``?table=&lease=&timeout=``)
    An engine of the extension's own, which creates its table on first use if it is missing.
    Relative SQLite paths are read from the app's instance folder, as Flask-SQLAlchemy does.

One module per idea: :mod:`.table` (the deliveries table), :mod:`.engine` (its own engine or the
host's), :mod:`.statements` (the request path's statements), :mod:`.driver` (the runner of those
statements on the DBAPI connection) and :mod:`.store` (:class:`SQLAlchemyStore`, which uses them).
"""

from .store import SQLAlchemyStore
from .table import DEFAULT_TABLE, table_items

__all__ = ["DEFAULT_TABLE", "SQLAlchemyStore", "table_items"]
