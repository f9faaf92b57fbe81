"""Call records in SQLite: a synchronous `CallStore` and an asyncio-side `RecordWriter`.

One row of ``calls`` per call and one row of ``call_participants`` per user of it (the caller
and everyone ever invited). A user's deletion of a record only flags that user's participant
row, so everyone else still sees the call. Room ids keep their type: the int room 123 and the
string room ``"123"`` are different rooms, stored in two columns ``room_int`` / ``room_str``.

:class:`RecordStore` is what the writer and the server need from a store (records, their
outbox rows and profiles written in one transaction; record queries); :class:`CallStore` is
the SQLite implementation, and :class:`signaling_server.pgstore.PgCallStore` the same
interface on PostgreSQL (:func:`signaling_server.storage.open_store` picks one from ``--db``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, Protocol, TypeVar

from signaling_server.records import (
    OutboxRow,
    ParticipantOutcome,
    ProfileUpdate,
    StoredCall,
    snapshot,
)
from signaling_server.spool import Spool, drain

__all__ = [
    "SCHEMA_VERSION",
    "CallStore",
    "PendingWrite",
    "RecordStore",
    "RecordWriter",
    "StoreBusy",
    "StoreUnavailable",
    "WriterStats",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION: Final = 3
"""``PRAGMA user_version`` of a database this module created; see :data:`_MIGRATIONS`."""

_CHUNK: Final = 500  # bound parameters per IN (...) list, well below SQLite's limit


# Each entry upgrades a database from user_version ``index`` to ``index + 1``.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE calls (
        sdk_app_id  INTEGER NOT NULL,
        call_id     TEXT    NOT NULL,
        caller      TEXT    NOT NULL,
        callees     TEXT    NOT NULL,          -- JSON array, invitation order
        scene       INTEGER NOT NULL,
        media_type  INTEGER NOT NULL,
        room_int    INTEGER,                   -- exactly one of room_int / room_str is set
        room_str    TEXT,
        group_id    TEXT    NOT NULL,
        start_ts    REAL    NOT NULL,
        accept_ts   REAL,
        end_ts      REAL,
        result      TEXT    NOT NULL,
        user_data   TEXT    NOT NULL,
        PRIMARY KEY (sdk_app_id, call_id),
        CHECK ((room_int IS NULL) <> (room_str IS NULL))
    );
    CREATE INDEX idx_calls_start ON calls (sdk_app_id, start_ts, call_id);
    CREATE INDEX idx_calls_open ON calls (result) WHERE result = '';
    CREATE TABLE call_participants (
        sdk_app_id  INTEGER NOT NULL,
        call_id     TEXT    NOT NULL,
        user_id     TEXT    NOT NULL,
        role        INTEGER NOT NULL,
        result_type INTEGER NOT NULL,
        deleted     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sdk_app_id, call_id, user_id),
        FOREIGN KEY (sdk_app_id, call_id) REFERENCES calls (sdk_app_id, call_id)
            ON DELETE CASCADE
    );
    CREATE INDEX idx_participants_user ON call_participants (user_id, sdk_app_id, call_id);
    """,
    # 2: webhook outbox and callback configuration, used by signaling_server.webhooks.
    """
    CREATE TABLE webhook_outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        sdk_app_id      INTEGER NOT NULL,
        call_id         TEXT    NOT NULL,
        command         TEXT    NOT NULL,
        query           TEXT    NOT NULL,      -- JSON object: the callback's query parameters
        body            TEXT    NOT NULL,      -- JSON object: the callback's body
        created_at      REAL    NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL    NOT NULL,
        last_error      TEXT    NOT NULL DEFAULT '',
        outcome         TEXT    NOT NULL DEFAULT '',  -- '' pending, 'delivered', 'discarded'
        done_at         REAL                          -- when outcome was set
    );
    CREATE INDEX idx_outbox_pending ON webhook_outbox (id) WHERE outcome = '';
    CREATE INDEX idx_outbox_done ON webhook_outbox (done_at) WHERE outcome <> '';
    CREATE TABLE callback_config (
        sdk_app_id  INTEGER PRIMARY KEY,
        url         TEXT    NOT NULL,
        events      TEXT    NOT NULL,          -- JSON array of enabled event or command names
        created_ts  REAL    NOT NULL,
        updated_ts  REAL    NOT NULL
    );
    """,
    # 3: users in a call, offline pushes in the outbox and their endpoint, user profiles,
    # groups (signaling_server.profiles, signaling_server.group_api, push in webhooks).
    """
    ALTER TABLE calls ADD COLUMN total_users INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE webhook_outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'callback';
    ALTER TABLE webhook_outbox ADD COLUMN expires_at REAL;
    CREATE INDEX idx_outbox_pending_kind ON webhook_outbox (kind, id) WHERE outcome = '';
    CREATE TABLE push_config (
        sdk_app_id  INTEGER PRIMARY KEY,
        url         TEXT    NOT NULL,
        events      TEXT    NOT NULL,
        created_ts  REAL    NOT NULL,
        updated_ts  REAL    NOT NULL
    );
    CREATE TABLE user_profiles (
        sdk_app_id  INTEGER NOT NULL,
        user_id     TEXT    NOT NULL,
        nickname    TEXT    NOT NULL DEFAULT '',
        avatar      TEXT    NOT NULL DEFAULT '',
        updated_ts  REAL    NOT NULL,
        PRIMARY KEY (sdk_app_id, user_id)
    );
    CREATE TABLE call_groups (
        sdk_app_id  INTEGER NOT NULL,
        group_id    TEXT    NOT NULL,
        name        TEXT    NOT NULL,
        created_ts  REAL    NOT NULL,
        PRIMARY KEY (sdk_app_id, group_id)
    );
    CREATE TABLE call_group_members (
        sdk_app_id  INTEGER NOT NULL,
        group_id    TEXT    NOT NULL,
        user_id     TEXT    NOT NULL,
        added_ts    REAL    NOT NULL,
        PRIMARY KEY (sdk_app_id, group_id, user_id),
        FOREIGN KEY (sdk_app_id, group_id) REFERENCES call_groups (sdk_app_id, group_id)
            ON DELETE CASCADE
    );
    """,
)

_CALL_COLUMNS: Final = (
    "sdk_app_id, call_id, caller, callees, scene, media_type, room_int, room_str, group_id, "
    "start_ts, accept_ts, end_ts, result, user_data, total_users"
)

_UPSERT_CALL: Final = f"""
    INSERT INTO calls ({_CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (sdk_app_id, call_id) DO UPDATE SET
        caller = excluded.caller, callees = excluded.callees, scene = excluded.scene,
        media_type = excluded.media_type, room_int = excluded.room_int,
        room_str = excluded.room_str, group_id = excluded.group_id,
        start_ts = excluded.start_ts, accept_ts = excluded.accept_ts, end_ts = excluded.end_ts,
        result = excluded.result, user_data = excluded.user_data,
        total_users = excluded.total_users
"""

_UPSERT_PARTICIPANT: Final = """
    INSERT INTO call_participants (sdk_app_id, call_id, user_id, role, result_type)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (sdk_app_id, call_id, user_id) DO UPDATE SET
        role = excluded.role, result_type = excluded.result_type
"""


_UPSERT_PROFILE: Final = """
    INSERT INTO user_profiles (sdk_app_id, user_id, nickname, avatar, updated_ts)
    VALUES (?, ?, COALESCE(?, ''), COALESCE(?, ''), ?)
    ON CONFLICT (sdk_app_id, user_id) DO UPDATE SET
        nickname = COALESCE(?, nickname), avatar = COALESCE(?, avatar),
        updated_ts = excluded.updated_ts
"""

_INSERT_OUTBOX: Final = """
    INSERT INTO webhook_outbox (sdk_app_id, call_id, command, query, body, created_at,
                                next_attempt_at, kind, expires_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _call_row(call: StoredCall) -> tuple[Any, ...]:
    room = call.room_id
    if isinstance(room, bool) or not isinstance(room, int | str):
        raise TypeError(f"room_id of call {call.call_id!r} must be int or str, not {room!r}")
    return (
        call.sdk_app_id,
        call.call_id,
        call.caller,
        json.dumps(list(call.callees)),
        int(call.scene),
        int(call.media_type),
        room if isinstance(room, int) else None,
        room if isinstance(room, str) else None,
        call.group_id,
        float(call.start_ts),
        None if call.accept_ts is None else float(call.accept_ts),
        None if call.end_ts is None else float(call.end_ts),
        call.result,
        call.user_data,
        int(call.total_users),
    )


def _call_from_row(row: sqlite3.Row) -> StoredCall:
    room: int | str = row["room_int"] if row["room_int"] is not None else row["room_str"]
    return StoredCall(
        call_id=row["call_id"],
        sdk_app_id=row["sdk_app_id"],
        caller=row["caller"],
        callees=json.loads(row["callees"]),
        scene=row["scene"],
        media_type=row["media_type"],
        room_id=room,
        group_id=row["group_id"],
        start_ts=row["start_ts"],
        accept_ts=row["accept_ts"],
        end_ts=row["end_ts"],
        result=row["result"],
        participants={},
        user_data=row["user_data"],
        total_users=row["total_users"],
    )


class RecordStore(Protocol):
    """What the record writer and the server need from a database of call records.

    Blocking methods, called from the writer's threads. :meth:`save` is the one write of the
    signaling path: records, their outbox rows and profile changes in one transaction.
    """

    path: str

    def save(
        self,
        calls: Sequence[StoredCall],
        outbox: Sequence[OutboxRow] = (),
        profiles: Sequence[ProfileUpdate] = (),
    ) -> list[int]:
        """Write everything in one transaction; the ids of the outbox rows, in order."""
        ...

    def open_calls(self) -> list[StoredCall]:
        """Every call still in progress, oldest first."""
        ...

    def close(self) -> None:
        """Close the database; idempotent."""
        ...


class CallStore:
    """Call records in one SQLite database; every method is synchronous and thread-safe.

    Two connections, both opened with ``check_same_thread=False``: the write connection
    (``self._lock``), used by the :class:`RecordWriter`'s worker thread, and a read connection
    (``self._read_lock``) for queries, so a long query never holds up a commit: in WAL mode a
    reader sees the last committed state while the writer goes on. An in-memory database
    (``":memory:"``) has a single connection for both.

    Durability: a file database runs in WAL mode with ``synchronous=FULL``. Once :meth:`save`
    returns, the transaction is in the WAL file, so it survives the server being killed (even
    SIGKILL: the bytes are in the OS already); FULL additionally fsyncs the WAL at every
    commit, so it also survives an OS crash or power loss, which the default NORMAL level of
    WAL mode does not promise. Batching commits keeps the fsync cost per record small.
    ``busy_timeout`` is how long a write waits for another process's lock before failing
    (the writer then retries it).
    """

    dialect: str = "sqlite"
    """Which SQL the connections speak: ``"sqlite"`` here, ``"postgresql"`` in the subclass."""
    shared: bool = False
    """Whether other server processes may use the same database at once (PostgreSQL): the
    webhook outbox then leases rows to the process sending them."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._read_lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self.open()

    # ------------------------------------------------------------------ lifecycle

    @property
    def in_memory(self) -> bool:
        """Whether the database is in memory (one connection, nothing kept)."""
        return self.path == ":memory:" or self.path.startswith("file::memory:")

    def open(self) -> None:
        """Open the database and bring its schema up to date; a no-op when already open."""
        with self._lock, self._read_lock:
            if self._conn is not None:
                return
            if not self.in_memory:
                parent = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(parent, exist_ok=True)
            conn = self._connect()
            reader: sqlite3.Connection | None = None
            try:
                if not self.in_memory:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        logger.warning("%s: journal mode is %s, not wal", self.path, mode)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                self._migrate(conn)
                if not self.in_memory:
                    reader = self._connect()
                    reader.execute("PRAGMA query_only=ON")
            except BaseException:
                conn.close()
                if reader is not None:
                    reader.close()
                raise
            self._conn, self._reader = conn, reader
            logger.debug("call store %s opened", self.path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        conn.row_factory = sqlite3.Row
        return conn

    def close(self) -> None:
        """Close the database; calling it again does nothing."""
        with self._lock, self._read_lock:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
            reader, self._reader = self._reader, None
            conn.close()
            if reader is not None:
                reader.close()
            logger.debug("call store %s closed", self.path)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._conn is None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}; this server knows up to "
                f"{SCHEMA_VERSION}: upgrade the server or use another database"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            logger.info("%s: schema migrated to version %d", self.path, target)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # Shared access for other modules keeping their tables in this database (webhooks).

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The write connection inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, holding its lock.

        For modules that keep their own tables in this database; blocking, so call it from a
        worker thread, never from the event loop.
        """
        with self._transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The read connection (autocommit, query only) while holding its lock, for reads.

        It sees what is committed; an in-memory database has only the write connection.
        """
        if self._reader is None:
            with self._lock:
                yield self._connection()
            return
        with self._read_lock:
            reader = self._reader
            if reader is None:
                raise RuntimeError(f"call store {self.path} is closed")
            yield reader

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"call store {self.path} is closed")
        return self._conn

    # ------------------------------------------------------------------ writes

    def save(
        self,
        calls: Sequence[StoredCall],
        outbox: Sequence[OutboxRow] = (),
        profiles: Sequence[ProfileUpdate] = (),
    ) -> list[int]:
        """Insert or update calls, append outbox rows and apply profile changes, all in one
        transaction; the ids of the new outbox rows, in order.

        A participant keeps its deleted flag; participants no longer in a call are dropped.
        """
        if not calls and not outbox and not profiles:
            return []
        rows = [_call_row(call) for call in calls]
        ids: list[int] = []
        with self._transaction() as conn:
            conn.executemany(_UPSERT_CALL, rows)
            for call in calls:
                users = list(call.participants)
                conn.executemany(
                    _UPSERT_PARTICIPANT,
                    [
                        (call.sdk_app_id, call.call_id, user, int(p.role), int(p.result_type))
                        for user, p in call.participants.items()
                    ],
                )
                conn.execute(
                    "DELETE FROM call_participants WHERE sdk_app_id = ? AND call_id = ? "
                    "AND user_id NOT IN (SELECT value FROM json_each(?))",
                    (call.sdk_app_id, call.call_id, json.dumps(users)),
                )
            for new in outbox:
                cursor = conn.execute(
                    _INSERT_OUTBOX,
                    (new.sdk_app_id, new.call_id, new.command, new.query, new.body,
                     new.created_at, new.created_at, new.kind, new.expires_at),
                )
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            conn.executemany(
                _UPSERT_PROFILE,
                [
                    (p.sdk_app_id, p.user_id, p.nickname, p.avatar, p.updated_ts, p.nickname,
                     p.avatar)
                    for p in profiles
                ],
            )
        return ids

    def save_calls(self, calls: Sequence[StoredCall]) -> None:
        """Insert or update every call and its participants in one transaction."""
        self.save(calls)

    def delete_calls(self, sdk_app_id: int, user_id: str, call_ids: Sequence[str]) -> list[str]:
        """Hide records from ``user_id`` only; the ids that were visible to them and now are not."""
        deleted: list[str] = []
        with self._transaction() as conn:
            for call_id in call_ids:
                cursor = conn.execute(
                    "UPDATE call_participants SET deleted = 1 WHERE sdk_app_id = ? "
                    "AND call_id = ? AND user_id = ? AND deleted = 0",
                    (sdk_app_id, call_id, user_id),
                )
                if cursor.rowcount > 0:
                    deleted.append(call_id)
        return deleted

    # ------------------------------------------------------------------ reads

    def get_call(self, sdk_app_id: int, call_id: str) -> StoredCall | None:
        """The call, or None."""
        with self.locked() as conn:
            calls = self._load(
                conn,
                "SELECT * FROM calls WHERE sdk_app_id = ? AND call_id = ?",
                (sdk_app_id, call_id),
            )
        return calls[0] if calls else None

    def open_calls(self) -> list[StoredCall]:
        """Every call still in progress (``result == ""``), oldest first."""
        with self.locked() as conn:
            return self._load(
                conn,
                "SELECT * FROM calls WHERE result = '' ORDER BY start_ts, call_id",
                (),
            )

    def recent_calls(
        self,
        sdk_app_id: int,
        user_id: str,
        begin: float | None,
        end: float | None,
        result_type: int | None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The user's records not deleted by them, newest first, as wire dicts.

        ``begin`` (inclusive) and ``end`` (exclusive) bound the start time; ``result_type``
        keeps only records of that CallResultType for this user. Equal start times are
        ordered by call id, descending.
        """
        sql = [
            "SELECT c.*, p.role AS p_role, p.result_type AS p_result_type",
            "FROM call_participants p JOIN calls c",
            "ON c.sdk_app_id = p.sdk_app_id AND c.call_id = p.call_id",
            "WHERE p.sdk_app_id = ? AND p.user_id = ? AND p.deleted = 0",
        ]
        params: list[Any] = [sdk_app_id, user_id]
        if begin is not None:
            sql.append("AND c.start_ts >= ?")
            params.append(float(begin))
        if end is not None:
            sql.append("AND c.start_ts < ?")
            params.append(float(end))
        if result_type is not None:
            sql.append("AND p.result_type = ?")
            params.append(int(result_type))
        sql.append("ORDER BY c.start_ts DESC, c.call_id DESC LIMIT ?")
        params.append(max(0, limit))
        with self.locked() as conn:
            rows = conn.execute(" ".join(sql), params).fetchall()
        records = []
        for row in rows:
            call = _call_from_row(row)
            begin_ts = call.accept_ts if call.accept_ts is not None else call.start_ts
            total = 0
            if call.accept_ts is not None and call.end_ts is not None:
                total = max(0, int(call.end_ts - call.accept_ts))
            records.append(
                {
                    "callId": call.call_id,
                    "inviter": call.caller,
                    "inviteList": call.callees,
                    "scene": call.scene,
                    "mediaType": call.media_type,
                    "groupId": call.group_id,
                    "role": row["p_role"],
                    "result": row["p_result_type"],
                    "beginTime": int(begin_ts),
                    "totalTime": total,
                    "callResult": call.result,
                    "roomId": call.room_id,
                }
            )
        return records

    def find_calls(
        self,
        sdk_app_id: int,
        *,
        begin: float | None = None,
        end: float | None = None,
        user_id: str | None = None,
        call_result: str | None = None,
        media_type: int | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 100,
    ) -> list[StoredCall]:
        """Calls matching every given condition, ordered by (start_ts, call_id).

        ``after`` is the (start_ts, call_id) of the last call of the previous page; ``user_id``
        matches the caller or any participant, whether or not they deleted the record.
        """
        sql = ["SELECT * FROM calls c WHERE c.sdk_app_id = ?"]
        params: list[Any] = [sdk_app_id]
        if begin is not None:
            sql.append("AND c.start_ts >= ?")
            params.append(float(begin))
        if end is not None:
            sql.append("AND c.start_ts < ?")
            params.append(float(end))
        if user_id is not None:
            sql.append(
                "AND (c.caller = ? OR EXISTS (SELECT 1 FROM call_participants p "
                "WHERE p.sdk_app_id = c.sdk_app_id AND p.call_id = c.call_id AND p.user_id = ?))"
            )
            params += [user_id, user_id]
        if call_result is not None:
            sql.append("AND c.result = ?")
            params.append(call_result)
        if media_type is not None:
            sql.append("AND c.media_type = ?")
            params.append(int(media_type))
        if after is not None:
            sql.append("AND (c.start_ts, c.call_id) > (?, ?)")
            params += [float(after[0]), after[1]]
        sql.append("ORDER BY c.start_ts, c.call_id LIMIT ?")
        params.append(max(0, limit))
        with self.locked() as conn:
            return self._load(conn, " ".join(sql), params)

    def _load(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[StoredCall]:
        """Calls selected by ``sql`` (``SELECT *`` from calls), with their participants."""
        calls = [_call_from_row(row) for row in conn.execute(sql, params)]
        by_key = {(call.sdk_app_id, call.call_id): call for call in calls}
        for app_id in {call.sdk_app_id for call in calls}:
            ids = [call.call_id for call in calls if call.sdk_app_id == app_id]
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT call_id, user_id, role, result_type FROM call_participants "
                    f"WHERE sdk_app_id = ? AND call_id IN ({marks})",
                    [app_id, *chunk],
                )
                for row in rows:
                    by_key[(app_id, row["call_id"])].participants[row["user_id"]] = (
                        ParticipantOutcome(row["role"], row["result_type"])
                    )
        for call in calls:  # caller first, then callees in invitation order
            order = {user: i for i, user in enumerate([call.caller, *call.callees])}
            call.participants = dict(
                sorted(call.participants.items(), key=lambda item: order.get(item[0], len(order)))
            )
        return calls


# ---------------------------------------------------------------------- the writer


class StoreBusy(RuntimeError):
    """Too many queries (or non-record writes) are waiting for the store: retry later."""


class StoreUnavailable(RuntimeError):
    """The database is unreachable and records wait in the spool: queries and other writes are
    refused at once until it returns (error 4506)."""


STORE_UNAVAILABLE_MESSAGE: Final = ("the record store is unreachable; new calls are refused "
                                    "until it returns: retry later")


def _unreachable(exc: BaseException) -> bool:
    """Whether a failed PostgreSQL write says the database cannot be reached (connection
    refused or lost, the server shutting down or starting): spool the unit. A lock timeout,
    a serialization failure or a deadlock is transient too, but from a live database."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed when tried again (busy, locked, disk full, I/O;
    with PostgreSQL a lost connection, a lock timeout, a serialization failure).

    Anything else (a constraint, a value the database cannot store) fails the same way
    every time.
    """
    if isinstance(exc, sqlite3.OperationalError):
        return True
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.errors.LockNotAvailable
                      | psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)



@dataclass
class PendingWrite:
    """One unit of :meth:`RecordWriter.submit_unit`, written in a single transaction."""

    calls: list[StoredCall]
    outbox: list[OutboxRow]
    profiles: list[ProfileUpdate]
    attempted: concurrent.futures.Future[bool] = field(default_factory=concurrent.futures.Future)
    """Set after the first attempt: True once committed, False when that attempt failed
    (the unit is kept and retried) or the unit was lost."""
    committed: concurrent.futures.Future[list[int]] = field(
        default_factory=concurrent.futures.Future
    )
    """The ids of the outbox rows once committed (perhaps after retries); an exception if
    the unit could never be written."""
    token: Any = None
    """The submitter's own data, handed back through ``on_attempted``."""
    seq: int = 0
    spooled: bool = False
    """Committed to the writer's local spool (PostgreSQL was unreachable): durable, and
    ``attempted`` is True; ``committed`` is set once the unit reached PostgreSQL."""


@dataclass(frozen=True)
class WriterStats:
    """Counters of a :class:`RecordWriter` (the REST API's ``server/get_stats``)."""

    committed: int
    """Call records committed (after coalescing versions of a call in one batch)."""
    commits: int
    """Transactions committed."""
    failed_attempts: int
    """Write attempts that failed; each is logged at ERROR."""
    retrying: int
    """Units kept after a failed attempt, waiting for their next try."""
    lost: int
    """Units that could never be written (a permanent error, or still failing at close)."""
    queued: int
    """Units waiting for the worker."""
    jobs_queued: int
    """Other writes (record deletions, groups, delivery results) waiting for the worker."""
    reads_in_flight: int
    refused: int
    """Queries and writes refused with :class:`StoreBusy`."""
    spooled: int = 0
    """Units in the local spool waiting for PostgreSQL (see :mod:`signaling_server.spool`);
    while there are any, new calls are refused (4506)."""

    def to_wire(self) -> dict[str, int]:
        """The REST API's data object (camelCase)."""
        return {
            "committedRecords": self.committed,
            "commits": self.commits,
            "failedAttempts": self.failed_attempts,
            "retrying": self.retrying,
            "lost": self.lost,
            "queued": self.queued,
            "jobsQueued": self.jobs_queued,
            "readsInFlight": self.reads_in_flight,
            "refused": self.refused,
            "spooled": self.spooled,
        }


@dataclass
class _Job:
    done: concurrent.futures.Future[Any]
    fn: Callable[..., Any] | None  # None: a flush
    after: int  # runs once every unit up to this seq was attempted


class RecordWriter:
    """Writes call records from an asyncio server on one worker thread; queries on another.

    Records first: :meth:`submit_unit` queues records, their outbox rows and profile changes as
    one unit (never refused, never blocks); the worker takes every queued unit (up to
    ``max_batch``), keeps the latest version of each call and commits them in one transaction
    (group commit: one fsync for the whole batch), then runs at most one other write
    (:meth:`run_query`: deletions, groups, webhook delivery results) before it looks at the
    records again, so those never hold a commit up for long. Queries (:meth:`run_read`) run
    on their own thread and connection. Both other queues are bounded: beyond ``max_jobs``
    writes waiting or ``max_reads`` queries in flight, :class:`StoreBusy` is raised at once.

    ``on_attempted``, if given, is called on the worker thread once per batch with the units
    whose :attr:`PendingWrite.attempted` was just set: one wake-up of an event loop for a whole
    group commit rather than one per unit.

    A write that fails with a transient error (database locked or busy, disk full, I/O
    error) is kept, with every unit after it in order, and retried with exponential backoff
    from ``retry_initial_s`` to ``retry_max_s``; each failure is logged at ERROR and counted
    (:meth:`stats`). A unit that fails for any other reason (a value SQLite refuses) would fail
    forever: it is logged, counted as lost, and the others go on.

    With a spool (the store's ``spool``: PostgreSQL with ``open_store(..., spool=PATH)``), a
    unit that cannot be written because PostgreSQL is unreachable (:func:`_unreachable`) is
    committed to the spool instead (:mod:`signaling_server.spool`, on this thread): it is
    durable, its ``attempted`` is True, and every later unit goes to the spool behind it, so
    records and outbox rows keep their order. A second thread moves spooled units to
    PostgreSQL oldest first (probing every ``retry_initial_s`` doubling to
    ``spool_probe_max_s``); ``committed`` is set with their outbox ids when they get there.
    While units are spooled (:meth:`unavailable`), :meth:`run_query` and :meth:`run_read`
    raise :class:`StoreUnavailable` (they would read or write PostgreSQL ahead of the spool)
    and the server refuses new calls; :meth:`close` leaves spooled units for the next start.

    :meth:`flush`, :meth:`run_query` and :meth:`close` are ordered after every earlier submit.
    The thread is not a daemon, so queued records are written before the process exits; if
    the owner never calls :meth:`close`, the worker finishes the queue and stops on its own
    once the main thread has ended.
    """

    def __init__(
        self,
        store: RecordStore,
        *,
        max_batch: int = 512,
        max_jobs: int = 1024,
        max_reads: int = 256,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 30.0,
        close_retry_s: float = 5.0,
        on_attempted: Callable[[list[PendingWrite]], None] | None = None,
        spool_probe_max_s: float = 1.0,
    ) -> None:
        if max_batch < 1 or max_jobs < 1 or max_reads < 1:
            raise ValueError("max_batch, max_jobs and max_reads must be at least 1")
        self.store = store
        self.max_batch = max_batch
        self.max_jobs = max_jobs
        self.max_reads = max_reads
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.close_retry_s = close_retry_s
        self.spool_probe_max_s = spool_probe_max_s
        self.on_attempted = on_attempted
        self.spool: Spool | None = getattr(store, "spool", None)
        self._spooled = self.spool.count if self.spool is not None else 0
        self._in_spool: dict[int, PendingWrite] = {}  # spool seq -> unit of this process
        self._just_attempted: list[PendingWrite] = []
        self.committed = 0
        self.commits = 0
        self.failed_attempts = 0
        self.lost = 0
        self.refused = 0
        self._retrying = 0
        self._reads = 0
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        # The drainer waits on its own condition (the same lock): a submit's notify() must
        # wake the writer thread, not the drainer.
        self._spool_cv = threading.Condition(lock)
        self._units: collections.deque[PendingWrite] = collections.deque()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._seq = 0  # last unit submitted
        self._attempted = 0  # last unit attempted (units are attempted in order)
        self._stop = False
        self._drain_stop = False  # the drainer goes on while the writer finishes
        self._closing: concurrent.futures.Future[None] | None = None
        self._read_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"record-reader:{store.path}"
        )
        self._thread = threading.Thread(
            target=self._run, name=f"record-writer:{store.path}", daemon=False
        )
        self._drainer: threading.Thread | None = None
        if self.spool is not None:
            self._drainer = threading.Thread(
                target=self._drain_loop, name=f"record-spool:{store.path}", daemon=False
            )
            self._drainer.start()
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing is not None

    @property
    def failed(self) -> int:
        """Records lost so far (see :attr:`WriterStats.lost`)."""
        return self.lost

    def stats(self) -> WriterStats:
        """The counters, at this instant."""
        with self._cv:
            return WriterStats(
                self.committed, self.commits, self.failed_attempts, self._retrying, self.lost,
                len(self._units), len(self._jobs), self._reads, self.refused, self._spooled,
            )

    def unavailable(self) -> bool:
        """Whether units wait in the spool (PostgreSQL unreachable, or not caught up yet):
        the server refuses new calls meanwhile."""
        return self._spooled > 0

    def submit(self, call: StoredCall) -> None:
        """Queue a snapshot of ``call`` for writing; returns at once."""
        self.submit_unit([call])

    def submit_unit(
        self,
        calls: Sequence[StoredCall] = (),
        outbox: Sequence[OutboxRow] = (),
        profiles: Sequence[ProfileUpdate] = (),
        token: Any = None,
    ) -> PendingWrite:
        """Queue snapshots of ``calls`` with ``outbox`` rows and ``profiles``, to be written in
        one transaction; returns at once (watch the result's futures, or ``on_attempted``)."""
        if self._closing is not None:
            raise RuntimeError("record writer is closed")
        unit = PendingWrite([snapshot(c) for c in calls], list(outbox), list(profiles),
                            token=token)
        with self._cv:
            self._seq += 1
            unit.seq = self._seq
            self._units.append(unit)
            self._cv.notify()
        return unit

    async def flush(self) -> None:
        """Wait until every unit submitted before this one was attempted (committed unless
        writes are failing)."""
        if self._closing is not None:
            await asyncio.wrap_future(self._closing)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._put_job(_Job(done, None, 0), bounded=False)
        await asyncio.wrap_future(done)

    async def run_query(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the write ``fn(*args, **kwargs)`` on the worker thread, after every earlier
        submit; :class:`StoreBusy` when ``max_jobs`` writes are already waiting."""
        if self._closing is not None:
            raise RuntimeError("record writer is closed")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put_job(_Job(done, functools.partial(fn, *args, **kwargs), 0), bounded=True)
        return await asyncio.wrap_future(done)

    async def run_read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the query ``fn(*args, **kwargs)`` on the reader thread (it sees what is
        committed); :class:`StoreBusy` when ``max_reads`` queries are in flight,
        :class:`StoreUnavailable` while units wait in the spool. A query that finds its
        PostgreSQL connection lost (a restart since the last query) runs once more, on a new
        connection."""
        if self._closing is not None:
            raise RuntimeError("record writer is closed")
        if self._spooled:
            raise StoreUnavailable(STORE_UNAVAILABLE_MESSAGE)
        if self._reads >= self.max_reads:
            self.refused += 1
            raise StoreBusy(f"{self._reads} record queries are already waiting")
        self._reads += 1
        try:
            loop = asyncio.get_running_loop()
            call = functools.partial(fn, *args, **kwargs)
            try:
                return await loop.run_in_executor(self._read_pool, call)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                logger.info("record query found its connection lost (%r); once more", exc)
                return await loop.run_in_executor(self._read_pool, call)
        finally:
            self._reads -= 1

    def _put_job(self, job: _Job, *, bounded: bool) -> None:
        with self._cv:
            if bounded and len(self._jobs) >= self.max_jobs:
                self.refused += 1
                raise StoreBusy(f"{len(self._jobs)} store writes are already waiting")
            job.after = self._seq
            self._jobs.append(job)
            self._cv.notify()

    async def close(self) -> None:
        """Write everything queued, stop the threads and close the store; idempotent."""
        if self._closing is None:
            self._closing = concurrent.futures.Future()
            await asyncio.to_thread(self._read_pool.shutdown, True)
            with self._cv:
                self._stop = True
                self._cv.notify()
                self._spool_cv.notify()
        await asyncio.wrap_future(self._closing)
        await asyncio.to_thread(self._thread.join)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        kept: list[PendingWrite] = []  # failed transiently; retried first, in order
        delay = self.retry_initial_s
        retry_at = 0.0
        try:
            while True:
                with self._cv:
                    while True:
                        now = time.monotonic()
                        if self._units or self._stop:
                            break
                        if self._jobs and self._jobs[0].after <= self._attempted:
                            break
                        if kept and now >= retry_at:
                            break
                        if not threading.main_thread().is_alive() and not self._jobs:
                            logger.warning("record writer was never closed; stopping at exit")
                            self._stop = True
                            break
                        wait = 0.5 if not kept else min(0.5, max(0.0, retry_at - now))
                        self._cv.wait(wait)
                    units = [self._units.popleft()
                             for _ in range(min(self.max_batch, len(self._units)))]
                    stopping = self._stop and not self._units
                if units or (kept and time.monotonic() >= retry_at):
                    if kept and time.monotonic() < retry_at:
                        kept.extend(units)  # behind the failed ones, so versions stay in order
                        self._release(units)
                    else:
                        was_failing = bool(kept)
                        kept = self._commit(kept + units)
                        if kept:
                            delay = (min(self.retry_max_s, delay * 2) if was_failing
                                     else self.retry_initial_s)
                            retry_at = time.monotonic() + delay
                    with self._cv:
                        self._retrying = len(kept)
                        if units:
                            self._attempted = units[-1].seq
                    self._announce()
                if stopping:
                    break
                self._run_one_job()
        except BaseException:  # pragma: no cover - a bug in the loop itself
            logger.exception("record writer stopped unexpectedly")
            raise
        finally:
            self._finish(kept)

    def _release(self, units: Sequence[PendingWrite]) -> None:
        """Let whoever waits on these units go on: they are kept for a retry."""
        for unit in units:
            if not unit.attempted.done():
                unit.attempted.set_result(False)
                self._just_attempted.append(unit)

    def _announce(self) -> None:
        """Call ``on_attempted`` with the units attempted since the last call."""
        units, self._just_attempted = self._just_attempted, []
        if units and self.on_attempted is not None:
            try:
                self.on_attempted(units)
            except Exception:
                logger.exception("on_attempted failed")

    def _commit(self, units: list[PendingWrite]) -> list[PendingWrite]:
        """Write ``units`` (one transaction, else one by one; to the spool while it holds
        units or the database is unreachable); the ones to retry, in order."""
        if not units:
            return []
        if self._spooled:
            return self._to_spool(units)  # behind the spooled ones
        try:
            self._write(units)
            return []
        except Exception as exc:
            self.failed_attempts += 1
            if self.spool is not None and _unreachable(exc):
                logger.error("PostgreSQL unreachable (%s): %d unit(s) of call records "
                             "spooled to %s; new calls are refused until it returns",
                             str(exc).strip() or repr(exc), len(units), self.spool.path)
                return self._to_spool(units)
            if _transient(exc):
                logger.error("record store failing (%r): %d unit(s) of call records kept "
                             "for a retry", exc, len(units))
                self._release(units)
                return units
            logger.error("writing %d unit(s) of call records failed (%r); writing them one "
                         "by one", len(units), exc)
        for i, unit in enumerate(units):  # find the unit that can never be written
            try:
                self._write([unit])
            except Exception as exc:
                self.failed_attempts += 1
                if self.spool is not None and _unreachable(exc):
                    return self._to_spool(units[i:])
                if _transient(exc):
                    logger.error("record store failing (%r): %d unit(s) of call records kept "
                                 "for a retry", exc, len(units) - i)
                    self._release(units[i:])
                    return units[i:]
                self.lost += 1
                logger.exception("call records %s can never be written: lost",
                                 [c.call_id for c in unit.calls])
                self._release([unit])
                unit.committed.set_exception(exc)
        return []

    def _write(self, units: Sequence[PendingWrite]) -> None:
        calls: dict[tuple[int, str], StoredCall] = {}
        outbox: list[OutboxRow] = []
        profiles: list[ProfileUpdate] = []
        for unit in units:
            for call in unit.calls:
                # pop first so the latest version also takes the latest position
                key = (call.sdk_app_id, call.call_id)
                calls.pop(key, None)
                calls[key] = call
            outbox += unit.outbox
            profiles += unit.profiles
        ids = self.store.save(list(calls.values()), outbox, profiles)
        with self._cv:
            self.committed += len(calls)
            self.commits += 1
        start = 0
        for unit in units:
            if not unit.attempted.done():
                unit.attempted.set_result(True)
                self._just_attempted.append(unit)
            if not unit.committed.done():
                unit.committed.set_result(ids[start : start + len(unit.outbox)])
            start += len(unit.outbox)

    def _to_spool(self, units: list[PendingWrite]) -> list[PendingWrite]:
        """Commit ``units`` to the spool (durable: their frames may go); the ones to retry
        when even that fails (kept in memory, as without a spool)."""
        spool = self.spool
        assert spool is not None
        try:
            seqs = spool.append([(u.calls, u.outbox, u.profiles) for u in units])
        except Exception as exc:
            logger.error("the spool %s failed too (%r): %d unit(s) of call records kept in "
                         "memory for a retry", spool.path, exc, len(units))
            self._release(units)
            return units
        with self._cv:
            for seq, unit in zip(seqs, units, strict=True):
                unit.spooled = True
                self._in_spool[seq] = unit
            self._spooled = spool.count  # always the spool's own count: no drift between
            self._spool_cv.notify()  # this thread and the drainer
        for unit in units:
            if not unit.attempted.done():
                unit.attempted.set_result(True)
                self._just_attempted.append(unit)
        return []

    def _drain_loop(self) -> None:
        """The spool's thread: move spooled units to the database, oldest first, while there
        are any; probe with backoff while it is unreachable."""
        spool, target = self.spool, self.store
        assert spool is not None
        delay, retry_at, failures = self.retry_initial_s, 0.0, 0
        while True:
            with self._cv:
                while not self._drain_stop and (not self._spooled
                                                 or time.monotonic() < retry_at):
                    wait = 0.5 if not self._spooled else max(0.0, retry_at - time.monotonic())
                    self._spool_cv.wait(min(0.5, wait))
                if self._drain_stop:
                    return
            try:
                result = drain(target, spool, self.max_batch)  # type: ignore[arg-type]
            except Exception as exc:
                failures += 1
                with self._cv:
                    self.failed_attempts += 1
                if not _transient(exc):
                    try:
                        self._drop_spooled_head(exc)
                    except Exception:  # the spool itself is broken: keep it, back off
                        logger.exception("the spool %s cannot be read", spool.path)
                        retry_at = time.monotonic() + self.spool_probe_max_s
                    continue
                if failures == 1 or failures % 60 == 0:
                    logger.error("PostgreSQL still unreachable (%s): %d unit(s) wait in the "
                                 "spool %s", str(exc).strip() or repr(exc), spool.count,
                                 spool.path)
                delay = min(self.spool_probe_max_s, delay * 2) if failures > 1 else delay
                retry_at = time.monotonic() + delay
                continue
            through, written = result
            if failures:
                logger.warning("PostgreSQL answers again after %d failed attempt(s): moving "
                               "the spooled units", failures)
            failures, delay, retry_at = 0, self.retry_initial_s, 0.0
            if through:
                self._spool_written(through, written)

    def _spool_written(self, through: int, written: dict[int, list[int]]) -> None:
        """The spooled units up to seq ``through`` are in the database: count them, answer
        the ``committed`` of this process's ones (ids -1: written by an earlier attempt whose
        commit reply was lost, ids unknown; the shared outbox claims those rows anyway)."""
        spool = self.spool
        assert spool is not None
        done: list[tuple[PendingWrite, list[int]]] = []
        with self._cv:
            for seq in sorted(s for s in self._in_spool if s <= through):
                unit = self._in_spool.pop(seq)
                done.append((unit, written.get(seq, [-1] * len(unit.outbox))))
            self._spooled = spool.count
            left = self._spooled
            self.committed += sum(len({(c.sdk_app_id, c.call_id) for c in u.calls})
                                  for u, _ in done)
            self.commits += 1
            self._cv.notify_all()  # a closing writer waits for the spool to empty
        for unit, ids in done:
            if not unit.committed.done():
                unit.committed.set_result(ids)
        if left == 0:
            logger.warning("spool %s emptied into PostgreSQL: new calls are accepted again",
                           spool.path)

    def _drop_spooled_head(self, exc: BaseException) -> None:
        """A spooled batch fails for good: find the unit that can never be written (lost,
        logged), keep the others."""
        spool = self.spool
        assert spool is not None
        logger.error("moving spooled units to PostgreSQL failed (%r); moving them one by one",
                     exc)
        for unit in spool.oldest(self.max_batch):
            try:
                written = self.store.apply_spooled(  # type: ignore[attr-defined]
                    spool.spool_id, [unit])
                spool.remove_through(unit.seq)
            except Exception as one:
                if _transient(one):
                    return  # unreachable now: the drainer probes again
                spool.remove_through(unit.seq)
                logger.exception("spooled call records %s can never be written: lost",
                                 [c.call_id for c in unit.calls])
                with self._cv:
                    self.lost += 1
                    pending = self._in_spool.pop(unit.seq, None)
                    self._spooled = spool.count
                if pending is not None and not pending.committed.done():
                    pending.committed.set_exception(one)
                continue
            self._spool_written(unit.seq, written)

    def _drain_before_close(self) -> None:
        """At stop: give the drainer ``close_retry_s`` to empty the spool (PostgreSQL may be
        back); what is left stays for the next start."""
        deadline = time.monotonic() + self.close_retry_s
        with self._cv:
            while self._spooled and self._drainer is not None and self._drainer.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(min(0.5, left))

    def _run_one_job(self) -> None:
        with self._cv:
            if not self._jobs or self._jobs[0].after > self._attempted:
                return
            job = self._jobs.popleft()
        if job.fn is None:
            job.done.set_result(None)
            return
        if not job.done.set_running_or_notify_cancel():
            return
        if self._spooled:  # it would run on the database ahead of the spooled records
            job.done.set_exception(StoreUnavailable(STORE_UNAVAILABLE_MESSAGE))
            return
        try:
            result = job.fn()
        except BaseException as exc:
            job.done.set_exception(exc)
        else:
            job.done.set_result(result)

    def _finish(self, kept: list[PendingWrite]) -> None:
        """At stop: write what is left (retrying failures for ``close_retry_s``), run the
        waiting jobs, close the store, answer whatever came after."""
        try:
            with self._cv:
                units = list(self._units)
                self._units.clear()
            kept = self._commit(kept + units)
            deadline = time.monotonic() + self.close_retry_s
            delay = self.retry_initial_s
            while kept and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
                kept = self._commit(kept)
            if kept:
                self.lost += len(kept)
                logger.error("%d unit(s) of call records could not be written before the "
                             "writer stopped: lost", len(kept))
                for unit in kept:
                    unit.committed.set_exception(RuntimeError("record writer stopped"))
            with self._cv:
                self._attempted = self._seq
                self._retrying = 0
            self._announce()
            while True:
                with self._cv:
                    if not self._jobs:
                        break
                self._run_one_job()
        finally:
            if self._drainer is not None:
                self._drain_before_close()
            with self._cv:
                self._stop = self._drain_stop = True
                self._cv.notify_all()
                self._spool_cv.notify_all()
            if self._drainer is not None:
                self._drainer.join()
            with self._cv:
                left = list(self._in_spool.values())
                self._in_spool.clear()
            if left:
                logger.warning("%d unit(s) of call records stay in the spool %s for the next "
                               "start", len(left), self.spool.path if self.spool else "")
            for unit in left:
                if not unit.committed.done():
                    unit.committed.set_exception(RuntimeError(
                        "record writer stopped; the unit waits in the spool for the next start"))
            self.store.close()
            with self._cv:
                self._stop = True
                late, self._units = list(self._units), collections.deque()
            for unit in late:  # pragma: no cover - submit refuses once closing
                self.lost += 1
                logger.error("call records %s submitted after close were dropped",
                             [c.call_id for c in unit.calls])
                self._release([unit])
                unit.committed.set_exception(RuntimeError("record writer is closed"))
            self._announce()
            if self._closing is None:
                self._closing = concurrent.futures.Future()
            if not self._closing.done():
                self._closing.set_result(None)
