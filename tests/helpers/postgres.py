"""A real PostgreSQL for the tests: started from the Debian package's binaries, stopped at exit.

:class:`PostgresServer` runs ``initdb`` and ``postgres`` in a temporary directory, listening on
a unix socket there only (no TCP port to collide on), as an unprivileged user when the tests
run as root (PostgreSQL refuses root): the ``postgres`` user of the Debian package, else
``nobody``. :meth:`PostgresServer.new_database` makes an empty database per test.

Fixtures (re-exported by ``tests/conftest.py``): ``postgres`` (one server per test session),
``own_postgres`` (one for a test that stops and restarts it: :meth:`PostgresServer.halt`) and
``db`` (parametrized: an SQLite file in the test's temporary directory, then a fresh
PostgreSQL database URL), so a test taking ``db`` runs against both back ends;
:func:`db_rows` reads either with the store's own read connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

__all__ = ["PG_BIN", "PostgresServer", "db", "db_rows", "own_postgres", "postgres"]

PG_BIN = Path(os.environ.get("CALLSERVER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Where initdb and postgres are (Debian's postgresql-15)."""


def _die_with_parent() -> None:
    """In the child before exec: SIGINT (PostgreSQL's fast shutdown) when the test process
    dies, so a killed test run leaves no server behind (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def _run_as() -> dict[str, Any]:
    """``subprocess`` arguments running a child as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists "
                       "to run PostgreSQL as; create one (useradd --system postgres)")


class PostgresServer:
    """One PostgreSQL server in a temporary directory; :meth:`stop` removes it."""

    def __init__(self, bin_dir: Path = PG_BIN) -> None:
        for tool in ("initdb", "postgres"):
            if not (bin_dir / tool).exists():
                raise RuntimeError(
                    f"{bin_dir / tool} not found: install the Debian package postgresql "
                    "(make setup does), or point CALLSERVER_TEST_PG_BIN at its bin directory"
                )
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="callserver-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.port = 5432  # only names the socket file: no TCP listener
        self.user = "postgres"
        self._as = _run_as()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._names = itertools.count(1)

    def start(self, timeout_s: float = 60.0) -> None:
        """initdb (the first time), then start ``postgres`` and wait until it accepts
        connections. After :meth:`halt`, this starts it again on the same data."""
        if not self.data.exists():
            self._initdb()
        self._log = (self.root / "postgres.log").open("ab")
        self._proc = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data), "-k", str(self.socket_dir),
             "-p", str(self.port), "-c", "listen_addresses=", "-c", "max_connections=200",
             "-c", "shared_buffers=32MB"],
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            **self._as,
        )
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}: "
                                   f"{(self.root / 'postgres.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready within {timeout_s:g} s")
            time.sleep(0.05)

    def _initdb(self) -> None:
        if self._as:
            os.chown(self.root, self._as["user"], self._as["group"])
        log = self.root / "initdb.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user,
                 "--auth=trust", "--locale=C", "--encoding=UTF8", "--no-sync"],
                stdout=out, stderr=subprocess.STDOUT, check=False, **self._as,
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {log.read_text()[-2000:]}")

    def halt(self) -> None:
        """Stop the server (fast shutdown: its clients' connections end), keeping its data:
        PostgreSQL is unreachable until :meth:`start`."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def url(self, dbname: str) -> str:
        """The connection URL of database ``dbname`` (over the unix socket)."""
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: SIGTERM would wait for clients) and remove its
        directory."""
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test alone, to :meth:`~PostgresServer.halt` and
    :meth:`~PostgresServer.start` again (an outage)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


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
