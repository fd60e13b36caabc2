"""The private statement runner: a prebuilt statement run on the DBAPI connection.

On the extension's own engine the request path's statements (:mod:`.statements`) go to the
driver as SQL text compiled once, on a pooled DBAPI connection: SQLAlchemy's work per execution
(cache key, execution context, result) was a third of the store's CPU on the client
(docs/benchmarks.md has the figures). A host's engine runs them through SQLAlchemy, so that its
events and echo see them.

Alone in its module because it is a fast path that must earn its lines: it rebuilds what
``Connection.execute`` does from the dialect's compiler, and it is kept, or removed, as one piece.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class DriverSQL:
    """A statement as its driver takes it, compiled once: running it costs the driver's work
    and no more.

    Everything comes from SQLAlchemy's compiler for the dialect: the text (with the bind casts
    it renders), the parameters' order for a positional paramstyle, each parameter's bind
    processor (a ``DateTime`` on SQLite becomes SQLAlchemy's text) and the statement's own
    constants. What is written is what ``Connection.execute`` would write, and the text is the
    same on every run, as psycopg's automatic server-side prepare wants.
    """

    sql: str
    #: Whether the paramstyle is positional (``?``), else named (``%(name)s``).
    positional: bool
    #: The driver's name of each parameter, in the order of :attr:`binds`.
    keys: tuple[str, ...]
    #: Per parameter: the name of its value, or ``None`` for a constant of the statement; the
    #: constant, processed; the value's bind processor.
    binds: tuple[tuple[str | None, Any, Callable[[Any], Any] | None], ...]

    @classmethod
    def compile(cls, clause: sa.UpdateBase, dialect: sa.Dialect) -> DriverSQL:
        compiled = clause.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        named = {name: bind for bind, name in compiled.bind_names.items()}
        order = (compiled.positiontup or []) if compiled.positional else list(named)
        keys: list[str] = []
        binds: list[tuple[str | None, Any, Callable[[Any], Any] | None]] = []
        for name in order:
            bind = named[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            keys.append(compiled.escaped_bind_names.get(name, name))
            if bind.required:
                binds.append((name, None, process))
            else:
                constant = bind.effective_value
                binds.append((None, constant if process is None else process(constant), None))
        return cls(compiled.string, compiled.positional, tuple(keys), tuple(binds))

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The parameters in the driver's paramstyle, each as its bind processor makes it."""
        laid_out = []
        for name, constant, process in self.binds:
            value = constant if name is None else values[name]
            laid_out.append(value if process is None else process(value))
        if self.positional:
            return laid_out
        return dict(zip(self.keys, laid_out, strict=True))

    def run(self, connection: PoolProxiedConnection, values: Mapping[str, Any]) -> int:
        """The rows the statement returned, else those it changed (as :func:`.statements.rows`)."""
        cursor = connection.cursor()
        try:
            cursor.execute(self.sql, self.parameters(values))
            if cursor.description is not None:
                return len(cursor.fetchall())
            return cursor.rowcount
        finally:
            cursor.close()
