"""The local spool: units of records kept durably on this node while PostgreSQL is unreachable.

When a unit (call records, their outbox rows, profile changes: one
:class:`~signaling_server.store.PendingWrite`) cannot be committed to PostgreSQL because the
database cannot be reached, the record writer commits it to a :class:`Spool` instead: an SQLite
file in WAL mode with ``synchronous=FULL``, written on the writer's thread, so the unit
survives a SIGKILL (and a power loss) and counts as durable. The writer then moves spooled
units to PostgreSQL oldest first, each batch in one PostgreSQL transaction that also records
the last spooled unit it holds (table ``callserver_spool``), so a unit reaches PostgreSQL
exactly once even when the process dies between that commit and the spool's delete (or the
commit's reply is lost): :func:`drain` skips what PostgreSQL already has.

One spool per node: the file holds an exclusive ``flock`` while open, and the database it
belongs to; units spooled for another database are refused at open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from signaling_server.records import OutboxRow, ParticipantOutcome, ProfileUpdate, StoredCall
from signaling_server.urls import redact_url

__all__ = [
    "Spool",
    "SpoolError",
    "SpoolTarget",
    "SpooledUnit",
    "default_spool_path",
    "drain",
]

logger = logging.getLogger(__name__)

_SCHEMA: Final = """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS units (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: PostgreSQL's marker
        unit       TEXT    NOT NULL,                    -- JSON: calls, outbox, profiles
        spooled_at REAL    NOT NULL
    );
"""


_PORT0_SPOOLS: Final = itertools.count(1)


class SpoolError(RuntimeError):
    """The spool cannot be used (held by another process, another database's units)."""


def default_spool_path(db: str, port: int) -> str:
    """``data/spool-<hash of the database URL>-<port>.db``, next to the default SQLite file:
    one per node (database and listening port). With port 0 (any free port) the name also
    holds the process id and a counter (the next start would not find it under its real port
    anyway, and servers of one process must not share it): give tests that restart a
    server on port 0 their own ``spool``."""

    digest = hashlib.sha256(redact_url(db).encode()).hexdigest()[:12]
    node = str(port) if port else f"port0-{os.getpid()}-{next(_PORT0_SPOOLS)}"
    return os.path.join("data", f"spool-{digest}-{node}.db")


@dataclass
class SpooledUnit:
    """One unit as the spool holds it; ``seq`` orders units and marks them in PostgreSQL."""

    seq: int
    calls: list[StoredCall]
    outbox: list[OutboxRow]
    profiles: list[ProfileUpdate]


def _encode(calls: Sequence[StoredCall], outbox: Sequence[OutboxRow],
            profiles: Sequence[ProfileUpdate]) -> str:
    return json.dumps({
        "calls": [dataclasses.asdict(c) for c in calls],
        "outbox": [dataclasses.asdict(r) for r in outbox],
        "profiles": [dataclasses.asdict(p) for p in profiles],
    }, separators=(",", ":"))


def _decode(seq: int, text: str) -> SpooledUnit:
    data = json.loads(text)
    calls = []
    for c in data["calls"]:
        c["participants"] = {u: ParticipantOutcome(p["role"], p["result_type"])
                             for u, p in c["participants"].items()}
        calls.append(StoredCall(**c))
    return SpooledUnit(seq, calls, [OutboxRow(**r) for r in data["outbox"]],
                       [ProfileUpdate(**p) for p in data["profiles"]])


class Spool:
    """A durable FIFO of units in one SQLite file; thread-safe, blocking (writer threads only).

    ``path`` ``":memory:"`` is refused unless ``allow_memory`` (tests that say so): a spool
    that a crash loses would make a unit acknowledged and then lost. ``database`` names the
    database the units are for (a redacted URL); a spool holding units of another database
    raises :class:`SpoolError`. :meth:`close` removes the file when it is empty.
    """

    def __init__(self, path: str, database: str, *, allow_memory: bool = False) -> None:
        memory = path == ":memory:"
        if memory and not allow_memory:
            raise SpoolError("the PostgreSQL spool cannot be ':memory:': a crash would lose "
                             "units already acknowledged; give a file path (--spool)")
        self.path = path
        self.database = database
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        if not memory:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise SpoolError(f"the spool {path} is in use by another server process; "
                                 "give each server its own --spool") from None
            self._lock_fd = fd
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                if not memory:
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                self._conn = conn
                self.count = int(conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])
                self.spool_id = self._meta("spool_id") or self._set_meta("spool_id",
                                                                         uuid.uuid4().hex)
                owner = self._meta("database")
                if owner not in (None, database) and self.count:
                    raise SpoolError(
                        f"the spool {path} holds {self.count} unit(s) for the database "
                        f"{owner}, not {database}: start the server on that database to "
                        "move them, or give this one another --spool")
                self._set_meta("database", database)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._unlock()
            raise
        self.closed = False
        if self.count:
            logger.warning("spool %s holds %d unit(s) of call records not yet in %s",
                           path, self.count, database)

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> str:
        self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                           "DO UPDATE SET value = excluded.value", (key, value))
        return value

    def append(self, units: Sequence[tuple[Sequence[StoredCall], Sequence[OutboxRow],
                                           Sequence[ProfileUpdate]]]) -> list[int]:
        """Commit ``units`` (calls, outbox rows, profiles) in one transaction; their seqs."""
        now = time.time()
        texts = [_encode(*unit) for unit in units]
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                seqs = [int(conn.execute(
                    "INSERT INTO units (unit, spooled_at) VALUES (?, ?) RETURNING seq",
                    (text, now)).fetchone()[0]) for text in texts]
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.count += len(seqs)
        return seqs

    def oldest(self, limit: int) -> list[SpooledUnit]:
        """Up to ``limit`` units, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, unit FROM units ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [_decode(int(seq), text) for seq, text in rows]

    def remove_through(self, seq: int) -> int:
        """Delete every unit up to ``seq`` (they are in PostgreSQL); how many."""
        with self._lock:
            removed = self._conn.execute("DELETE FROM units WHERE seq <= ?", (seq,)).rowcount
            self.count -= removed
        return int(removed)

    def close(self) -> None:
        """Close the file, removing it when empty; idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            empty = self.count == 0
            self._conn.close()
            if empty and self.path != ":memory:":
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path + suffix)
        self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # after SQLite closed its descriptors: this drops the flock


class SpoolTarget(Protocol):
    """The database a spool drains into (:class:`~signaling_server.pgstore.PgCallStore`)."""

    def apply_spooled(self, spool_id: str, units: Sequence[SpooledUnit]) -> dict[int, list[int]]:
        """Write ``units`` in one transaction with the marker of the last one, skipping those
        already applied; the outbox ids of each unit written, by seq."""
        ...


def drain(target: SpoolTarget, spool: Spool, limit: int) -> tuple[int, dict[int, list[int]]]:
    """Move up to ``limit`` of the oldest units to ``target`` (one transaction), then delete
    them from the spool: the seq of the last one moved (0: none), and the outbox ids by seq of
    those written now (those an earlier attempt had written are skipped). Raises what the
    database raised."""
    units = spool.oldest(limit)
    if not units:
        return 0, {}
    ids = target.apply_spooled(spool.spool_id, units)
    spool.remove_through(units[-1].seq)
    return units[-1].seq, ids

