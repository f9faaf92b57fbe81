"""Call records in SQLite: a synchronous `CallStore` and an asyncio-side `RecordWriter`.

One row of ``calls`` per call and one row of ``call_participants`` per user of it (the caller
and everyone ever invited). A user's deletion of a record only flags that user's participant
row, so everyone else still sees the call. Room ids keep their type: the int room 123 and the
string room ``"123"`` are different rooms, stored in two columns ``room_int`` / ``room_str``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, ParamSpec, TypeVar

from signaling_server.records import ParticipantOutcome, StoredCall, snapshot

__all__ = ["SCHEMA_VERSION", "CallStore", "RecordWriter"]

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


class CallStore:
    """Call records in one SQLite database; every method is synchronous and thread-safe.

    The connection is opened with ``check_same_thread=False`` and every access holds
    ``self._lock``: the :class:`RecordWriter` worker thread uses a store created on the event
    loop's thread, and tests or tools may still call it directly. With the writer, its single
    worker thread is in practice the only user of the connection.

    Durability: a file database runs in WAL mode with ``synchronous=FULL``. Once
    :meth:`save_calls` returns, the transaction is in the WAL file, so it survives the server
    being killed (even SIGKILL: the bytes are in the OS already); FULL additionally fsyncs the
    WAL at every commit, so it also survives an OS crash or power loss, which the default
    NORMAL level of WAL mode does not promise. Batching commits keeps the fsync cost per
    record small.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.open()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open the database and bring its schema up to date; a no-op when already open."""
        with self._lock:
            if self._conn is not None:
                return
            in_memory = self.path == ":memory:" or self.path.startswith("file::memory:")
            if not in_memory:
                parent = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(parent, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            try:
                conn.row_factory = sqlite3.Row
                if not in_memory:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        logger.warning("%s: journal mode is %s, not wal", self.path, mode)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            logger.debug("call store %s opened", self.path)

    def close(self) -> None:
        """Close the database; calling it again does nothing."""
        with self._lock:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
            conn.close()
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
        """The connection inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, holding the store's lock.

        For modules that keep their own tables in this database; blocking, so call it from a
        worker thread, never from the event loop.
        """
        with self._transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection (autocommit) while holding the store's lock, for reads."""
        with self._lock:
            yield self._connection()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"call store {self.path} is closed")
        return self._conn

    # ------------------------------------------------------------------ writes

    def save_calls(self, calls: Sequence[StoredCall]) -> None:
        """Insert or update every call and its participants in one transaction.

        A participant keeps its deleted flag; participants no longer in a call are dropped.
        """
        if not calls:
            return
        rows = [_call_row(call) for call in calls]
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

    def interrupt_open_calls(self, now: float) -> list[StoredCall]:
        """End every unfinished call with result ``interrupt`` at ``now``; return them."""
        with self._transaction() as conn:
            calls = self._load(conn, "SELECT * FROM calls WHERE result = ''", ())
            conn.execute(
                "UPDATE calls SET result = 'interrupt', end_ts = ? WHERE result = ''", (now,)
            )
        for call in calls:
            call.result = "interrupt"
            call.end_ts = now
        if calls:
            logger.info("%d unfinished call(s) marked interrupted", len(calls))
        return calls

    # ------------------------------------------------------------------ reads

    def get_call(self, sdk_app_id: int, call_id: str) -> StoredCall | None:
        """The call, or None."""
        with self._lock:
            calls = self._load(
                self._connection(),
                "SELECT * FROM calls WHERE sdk_app_id = ? AND call_id = ?",
                (sdk_app_id, call_id),
            )
        return calls[0] if calls else None

    def open_calls(self) -> list[StoredCall]:
        """Every call still in progress (``result == ""``), oldest first."""
        with self._lock:
            return self._load(
                self._connection(),
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
        with self._lock:
            rows = self._connection().execute(" ".join(sql), params).fetchall()
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
        with self._lock:
            return self._load(self._connection(), " ".join(sql), params)

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

_Job = tuple[str, Any]


class RecordWriter:
    """Commits call records from an asyncio server in batches on one worker thread.

    :meth:`submit` never blocks; the worker drains the queue, keeps only the latest version of
    each call in a batch of up to ``max_batch`` calls and commits the batch in one transaction.
    :meth:`flush`, :meth:`run_query` and :meth:`close` are ordered after every earlier submit.
    The thread is not a daemon, so queued records are written before the process exits; if
    the owner never calls :meth:`close`, the worker finishes the queue and stops on its own
    once the main thread has ended.
    """

    def __init__(self, store: CallStore, *, max_batch: int = 512) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.store = store
        self.max_batch = max_batch
        self.committed = 0  # records committed so far, after coalescing
        self.failed = 0  # records that could not be written; each failure is logged
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closing: concurrent.futures.Future[None] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"record-writer:{store.path}", daemon=False
        )
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing is not None

    def submit(self, call: StoredCall) -> None:
        """Queue a snapshot of ``call`` for writing; returns at once."""
        if self._closing is not None:
            raise RuntimeError("record writer is closed")
        self._queue.put(("call", snapshot(call)))

    async def flush(self) -> None:
        """Wait until every call submitted before this one is committed."""
        if self._closing is not None:
            await asyncio.wrap_future(self._closing)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(("flush", done))
        await asyncio.wrap_future(done)

    async def run_query(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the worker thread, after every earlier submit."""
        if self._closing is not None:
            raise RuntimeError("record writer is closed")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(("query", (done, fn, args, kwargs)))
        return await asyncio.wrap_future(done)

    async def close(self) -> None:
        """Write everything queued, stop the thread and close the store; idempotent."""
        if self._closing is None:
            self._closing = concurrent.futures.Future()
            self._queue.put(("stop", None))
        await asyncio.wrap_future(self._closing)
        await asyncio.to_thread(self._thread.join)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        pending: dict[tuple[int, str], StoredCall] = {}
        stopping = False
        try:
            while not stopping:
                try:
                    job = self._queue.get(timeout=0.5)
                except queue.Empty:
                    if not threading.main_thread().is_alive():
                        logger.warning("record writer was never closed; stopping at exit")
                        break
                    continue
                while True:
                    kind, payload = job
                    if kind == "call":
                        # pop first so the latest version also takes the latest position
                        key = (payload.sdk_app_id, payload.call_id)
                        pending.pop(key, None)
                        pending[key] = payload
                        if len(pending) >= self.max_batch:
                            self._commit(pending)
                    else:
                        self._commit(pending)
                        if kind == "stop":
                            stopping = True
                            break
                        self._control(kind, payload)
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                self._commit(pending)
        except BaseException:  # pragma: no cover - a bug in the loop itself
            logger.exception("record writer stopped unexpectedly")
            raise
        finally:
            self._commit(pending)
            self.store.close()
            self._finish_pending_jobs()
            if self._closing is None:
                self._closing = concurrent.futures.Future()
            if not self._closing.done():
                self._closing.set_result(None)

    def _control(self, kind: str, payload: Any) -> None:
        if kind == "flush":
            payload.set_result(None)
            return
        done, fn, args, kwargs = payload
        if not done.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def _finish_pending_jobs(self) -> None:
        """Answer whatever was queued after the stop request (the store is closed by now)."""
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == "call":
                self.failed += 1
                logger.error("call %s submitted after close was dropped", payload.call_id)
            elif kind == "flush":
                payload.set_result(None)
            elif kind == "query":
                payload[0].set_exception(RuntimeError("record writer is closed"))

    def _commit(self, pending: dict[tuple[int, str], StoredCall]) -> None:
        if not pending:
            return
        batch = list(pending.values())
        pending.clear()
        try:
            self.store.save_calls(batch)
        except Exception:
            logger.exception("batch of %d call records failed; retrying one by one", len(batch))
            for call in batch:
                try:
                    self.store.save_calls([call])
                except Exception:
                    self.failed += 1
                    logger.exception("call record %s could not be written", call.call_id)
                else:
                    self.committed += 1
        else:
            self.committed += len(batch)
