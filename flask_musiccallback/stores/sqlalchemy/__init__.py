"""The relational store: SQLite, PostgreSQL, MySQL/MariaDB through SQLAlchemy (:mod:`.store`)."""

from .store import DEFAULT_TABLE, SQLAlchemyStore, table_items

__all__ = ["DEFAULT_TABLE", "SQLAlchemyStore", "table_items"]
