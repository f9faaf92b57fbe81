"""The record store ``--db`` names: SQLite (:mod:`signaling_server.store`) or PostgreSQL
(:mod:`signaling_server.pgstore`), behind the one :class:`~signaling_server.store.CallStore`
interface."""

from __future__ import annotations

from signaling_server.pgstore import PgCallStore, is_postgres_url
from signaling_server.store import CallStore

__all__ = ["open_store"]


def open_store(db: str, *, spool: str | None = None) -> CallStore:
    """The store ``--db`` names: a PostgreSQL database for a ``postgresql://`` URL (needs the
    ``postgres`` extra), else an SQLite file (or ``:memory:``). Blocking: call it in a thread.

    ``spool`` (PostgreSQL only; ignored for SQLite) is the file where records wait while
    PostgreSQL is unreachable (:mod:`signaling_server.spool`); what a previous run left there
    is moved to PostgreSQL before this returns. None: no spool.
    """
    if is_postgres_url(db):
        return PgCallStore(db, spool=spool)
    return CallStore(db)
