"""The signatures table: each provider signature seen, with the digest of the body it came with,
until its time window closes (:meth:`~..base.Store.remember_signature`).

kie.ai signs a task id and a timestamp, not the body (PROVIDER.md section 5): one signed request
seen is enough to post another body under the same headers within the window. One row per
signature keeps one signature to one body. Named after the deliveries table
(:func:`.table.companion_name`: ``musiccallback_signatures``) and created, or declared in the
host's metadata, wherever it is.

Remembering is one statement: an insert whose conflict takes the row over only if it expired or
has the same digest, so that of two bodies racing under one signature, one wins. Expired rows are
taken over when their signature comes again and deleted by ``prune``
(:meth:`.store.SQLAlchemyStore.prune`); nothing on the request path deletes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .table import companion_name, dialect_insert

#: The longest signature the table keeps (a kie.ai signature is 44 characters of base64).
MAX_SIGNATURE_LENGTH = 255


def signatures_table_name(deliveries: str) -> str:
    """The signatures table that goes with the deliveries table ``deliveries``."""
    return companion_name(deliveries, "signatures")


def signature_items(name: str) -> list[sa.schema.SchemaItem]:
    """The columns, key and index (for pruning) of the signatures table called ``name``."""
    return [
        sa.Column("signature", sa.String(MAX_SIGNATURE_LENGTH), primary_key=True),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
    ]


def seen(signature: str, digest: str, *, ttl: float, now: datetime) -> dict[str, Any]:
    """The parameters of :func:`signature_statements`; ``now`` naive UTC. None is named after a
    column, which an ``UPDATE`` would set."""
    return {
        "key_signature": signature,
        "new_digest": digest,
        "new_expires_at": now + timedelta(seconds=ttl),
        "now": now,
    }


def signature_statements(
    table: sa.Table, dialect: sa.Dialect, *, upsert: bool
) -> tuple[Any, Any, Any]:
    """Remembering a signature: ``(upsert, insert, take)`` with bound parameters (:func:`seen`).

    The upsert (``None`` unless ``upsert``, which SQLite and PostgreSQL have) inserts the row,
    or takes an expired one over, or leaves one of the same digest as it is, in one statement; a
    row comes back (or is counted) in those three cases and in no other. Elsewhere the insert
    comes first and, on a unique violation, the take: an ``UPDATE`` on the same condition.
    """
    signature = sa.bindparam("key_signature", type_=table.c.signature.type)
    digest = sa.bindparam("new_digest", type_=table.c.digest.type)
    expires_at = sa.bindparam("new_expires_at", type_=sa.DateTime())
    expired = table.c.expires_at <= sa.bindparam("now", type_=sa.DateTime())
    may_take = sa.or_(expired, table.c.digest == digest)
    taken = {
        "digest": digest,
        "expires_at": sa.case((expired, expires_at), else_=table.c.expires_at),
    }
    first = {"signature": signature, "digest": digest, "expires_at": expires_at}
    insert = sa.insert(table).values(first)
    take = sa.update(table).where(table.c.signature == signature, may_take).values(taken)
    if not upsert:
        return None, insert, take
    upserting = (
        dialect_insert(dialect.name, table)
        .values(first)
        .on_conflict_do_update(index_elements=[table.c.signature], set_=taken, where=may_take)
    )
    if dialect.insert_returning:
        # A row comes back when inserted or taken, none when the WHERE kept the row as it was.
        upserting = upserting.returning(table.c.signature)
    return upserting, insert, take
