"""A real PostgreSQL for the tests, stopped at exit: the fixtures over
:class:`~signaling_server.devservices.LocalPostgres`.

:class:`PostgresServer` (that class) runs ``initdb`` and ``postgres`` in a temporary directory,
listening on a unix socket there only (no TCP port to collide on), as an unprivileged user when
the tests run as root (PostgreSQL refuses root). :meth:`PostgresServer.new_database` makes an
empty database per test. A test that stops the server (an outage) takes ``own_postgres``.

Fixtures (re-exported by ``tests/conftest.py``): ``postgres`` (one server per test session)
and ``db`` (parametrized: an SQLite file in the test's temporary directory, then a fresh
PostgreSQL database URL), so a test taking ``db`` runs against both back ends;
:func:`db_rows` reads either with the store's own read connection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from signaling_server.devservices import LocalPostgres, default_pg_bin

__all__ = ["PG_BIN", "PostgresServer", "db", "db_rows", "own_postgres", "postgres"]

PG_BIN = default_pg_bin()
"""Where initdb and postgres are (Debian's postgresql-N; ``$CALLSERVER_TEST_PG_BIN``)."""

PostgresServer = LocalPostgres
"""The tests' name for :class:`~signaling_server.devservices.LocalPostgres`."""


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session."""
    server = PostgresServer(PG_BIN)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test alone, to :meth:`~PostgresServer.stop` (its data
    kept) and :meth:`~PostgresServer.start` again: an outage."""
    server = PostgresServer(PG_BIN)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``--db`` of each back end in turn: an SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "records.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


def db_rows(db: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows of one query (``?`` placeholders) on database ``db``, either back end."""
    from signaling_server.storage import open_store

    store = open_store(db)
    try:
        with store.locked() as conn:
            return [tuple(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        store.close()
