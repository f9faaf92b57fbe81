"""CallStore: call records, in SQLite and in PostgreSQL (the ``store`` fixture runs each
test on both back ends; the file and kill tests are SQLite's)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from callclient.types import CallMediaType, CallResultType, CallRole, CallScene
from signaling_server.records import OutboxRow, ParticipantOutcome, ProfileUpdate, StoredCall
from signaling_server.storage import open_store
from signaling_server.store import SCHEMA_VERSION, CallStore, RecordWriter
from tests.helpers.postgres import PostgresServer

APP = 1400000001
CALLER = ParticipantOutcome(CallRole.CALLER, CallResultType.OUTGOING)
INCOMING = ParticipantOutcome(CallRole.CALLED, CallResultType.INCOMING)
MISSED = ParticipantOutcome(CallRole.CALLED, CallResultType.MISSED)


def make_call(
    call_id: str,
    start: float = 1000.0,
    *,
    caller: str = "alice",
    callees: tuple[str, ...] = ("bob",),
    room: int | str = 123,
    result: str = "normal_end",
    accept: float | None = None,
    end: float | None = None,
    media: int = CallMediaType.AUDIO,
    app: int = APP,
) -> StoredCall:
    """A finished single call from ``caller`` to ``callees``, everyone answered."""
    participants = {caller: CALLER} | {user: INCOMING for user in callees}
    return StoredCall(
        call_id=call_id,
        sdk_app_id=app,
        caller=caller,
        callees=list(callees),
        scene=CallScene.SINGLE_CALL if len(callees) == 1 else CallScene.GROUP_CALL,
        media_type=media,
        room_id=room,
        group_id="",
        start_ts=start,
        accept_ts=accept,
        end_ts=end if end is not None else (None if result == "" else start + 30),
        result=result,
        participants=participants,
        user_data="{}",
    )


@pytest.fixture
def store(db: str) -> Iterator[CallStore]:
    """An empty store: in-memory SQLite, then a fresh PostgreSQL database."""
    opened = open_store(db)
    yield opened
    opened.close()


def test_save_and_get_round_trip(store: CallStore) -> None:
    """Every field of a saved call reads back equal, participants in invitation order."""
    call = make_call("c1", 1000.25, callees=("carol", "bob"), accept=1002.5, end=1060.75)
    call.participants["bob"] = MISSED
    call.group_id = "group-1"
    call.user_data = "hello"
    store.save_calls([call])
    got = store.get_call(APP, "c1")
    assert got == call
    assert got is not None
    assert list(got.participants) == ["alice", "carol", "bob"]
    assert store.get_call(APP, "missing") is None
    assert store.get_call(APP + 1, "c1") is None


def test_room_id_type_is_kept(store: CallStore) -> None:
    """The int room 123 and the string room "123" stay distinct."""
    store.save_calls([make_call("int", room=123), make_call("str", room="123")])
    int_call, str_call = store.get_call(APP, "int"), store.get_call(APP, "str")
    assert int_call is not None and str_call is not None
    assert int_call.room_id == 123 and type(int_call.room_id) is int
    assert str_call.room_id == "123" and type(str_call.room_id) is str
    rooms = {r["callId"]: r["roomId"] for r in store.recent_calls(APP, "bob", None, None, None)}
    assert rooms == {"int": 123, "str": "123"}
    assert type(rooms["str"]) is str


def test_bool_room_id_is_refused(store: CallStore) -> None:
    """A bool is not a room id."""
    with pytest.raises(TypeError):
        store.save_calls([make_call("c1", room=True)])


def test_upsert_updates_in_place(store: CallStore) -> None:
    """Saving a call again replaces its fields and participants' outcomes."""
    call = make_call("c1", result="", callees=("bob", "carol"))
    call.participants["carol"] = MISSED
    store.save_calls([call])
    call.accept_ts, call.end_ts, call.result = 1001.0, 1050.0, "normal_end"
    call.participants["carol"] = INCOMING
    call.callees.append("dave")
    call.participants["dave"] = MISSED
    store.save_calls([call])
    assert store.get_call(APP, "c1") == call
    assert store.open_calls() == []
    assert len(store.find_calls(APP)) == 1


def test_upsert_keeps_deleted_flag(store: CallStore) -> None:
    """A user's deletion survives later updates of the same call."""
    store.save_calls([make_call("c1", result="")])
    assert store.delete_calls(APP, "bob", ["c1"]) == ["c1"]
    store.save_calls([make_call("c1", result="normal_end")])
    assert store.recent_calls(APP, "bob", None, None, None) == []
    assert [r["callId"] for r in store.recent_calls(APP, "alice", None, None, None)] == ["c1"]


def test_save_calls_is_one_transaction(store: CallStore) -> None:
    """When one call of a batch cannot be written, none of the batch is."""
    bad = make_call("bad")
    bad.participants["bob"] = ParticipantOutcome(None, 1)  # type: ignore[arg-type]
    with pytest.raises((TypeError, sqlite3.IntegrityError)):
        store.save_calls([make_call("good"), bad])
    assert store.get_call(APP, "good") is None
    store.save_calls([make_call("good")])
    assert store.get_call(APP, "good") is not None


def test_delete_is_per_user(store: CallStore) -> None:
    """Deleting hides the record from that user only and reports what was really deleted."""
    store.save_calls([make_call("c1"), make_call("c2", 2000.0)])
    assert store.delete_calls(APP, "alice", ["c1", "nope", "c1"]) == ["c1"]
    assert store.delete_calls(APP, "alice", ["c1"]) == []
    assert store.delete_calls(APP, "mallory", ["c2"]) == []
    assert store.delete_calls(APP + 1, "bob", ["c2"]) == []
    assert [r["callId"] for r in store.recent_calls(APP, "alice", None, None, None)] == ["c2"]
    assert [r["callId"] for r in store.recent_calls(APP, "bob", None, None, None)] == ["c2", "c1"]
    assert store.get_call(APP, "c1") is not None


def test_recent_calls_wire_shape(store: CallStore) -> None:
    """A record carries the wire fields, with begin and total time from accept and end."""
    store.save_calls(
        [
            make_call("answered", 1000.0, accept=1004.9, end=1065.2, media=CallMediaType.VIDEO),
            make_call("missed", 2000.0, result="not_answer", room="r-1"),
        ]
    )
    answered, missed = reversed(store.recent_calls(APP, "bob", None, None, None))
    assert answered == {
        "callId": "answered",
        "inviter": "alice",
        "inviteList": ["bob"],
        "scene": CallScene.SINGLE_CALL,
        "mediaType": CallMediaType.VIDEO,
        "groupId": "",
        "role": CallRole.CALLED,
        "result": CallResultType.INCOMING,
        "beginTime": 1004,
        "totalTime": 60,
        "callResult": "normal_end",
        "roomId": 123,
    }
    assert (missed["beginTime"], missed["totalTime"], missed["roomId"]) == (2000, 0, "r-1")
    assert store.recent_calls(APP, "alice", None, None, None)[0]["role"] == CallRole.CALLER


def test_recent_calls_filters_and_order(store: CallStore) -> None:
    """begin is inclusive, end exclusive, resultType is the user's; newest first, ties by id."""
    calls = [make_call(f"c{i}", 1000.0 + 10 * i) for i in range(5)]
    calls.append(make_call("c2b", 1020.0))
    calls[1].participants["bob"] = MISSED
    calls.append(make_call("other-app", 1020.0, app=APP + 1))
    calls.append(make_call("not-bob", 1020.0, callees=("carol",)))
    store.save_calls(calls)

    def ids(
        begin: float | None = None, end: float | None = None, result_type: int | None = None
    ) -> list[str]:
        rows = store.recent_calls(APP, "bob", begin, end, result_type)
        return [r["callId"] for r in rows]

    assert ids() == ["c4", "c3", "c2b", "c2", "c1", "c0"]
    assert ids(begin=1010.0, end=1030.0) == ["c2b", "c2", "c1"]
    assert ids(result_type=CallResultType.MISSED) == ["c1"]
    assert ids(result_type=CallResultType.INCOMING, end=1020.0) == ["c0"]
    assert ids(result_type=CallResultType.OUTGOING) == []
    assert [r["callId"] for r in store.recent_calls(APP, "bob", None, None, None, limit=2)] == [
        "c4",
        "c3",
    ]


def test_find_calls_filters(store: CallStore) -> None:
    """find_calls matches time range, caller or participant, result and media type."""
    store.save_calls(
        [
            make_call("a", 100.0, caller="alice", callees=("bob",)),
            make_call("b", 200.0, caller="bob", callees=("carol", "dave"), result="reject"),
            make_call("c", 300.0, caller="erin", callees=("frank",), media=CallMediaType.VIDEO),
            make_call("d", 300.0, app=APP + 1),
        ]
    )

    def ids(**kw: object) -> list[str]:
        return [c.call_id for c in store.find_calls(APP, **kw)]  # type: ignore[arg-type]

    assert ids() == ["a", "b", "c"]
    assert ids(begin=200.0) == ["b", "c"]
    assert ids(end=300.0) == ["a", "b"]
    assert ids(user_id="bob") == ["a", "b"]
    assert ids(user_id="dave") == ["b"]
    assert ids(user_id="nobody") == []
    assert ids(call_result="reject") == ["b"]
    assert ids(media_type=CallMediaType.VIDEO) == ["c"]
    assert ids(media_type=CallMediaType.AUDIO, user_id="alice") == ["a"]
    assert ids(limit=1) == ["a"]
    found = store.find_calls(APP, user_id="dave")[0]
    assert found.participants["dave"] == INCOMING


def test_find_calls_keyset_pagination(store: CallStore) -> None:
    """Paging 250 calls (many sharing a start time) yields each exactly once, in order."""
    calls = [make_call(f"call-{i:03d}", 1000.0 + (i % 7) * 0.5) for i in range(250)]
    store.save_calls(calls)
    seen: list[StoredCall] = []
    after: tuple[float, str] | None = None
    for _ in range(50):  # 250 calls in pages of 40 (+ the late ones): bounded, never a hang
        page = store.find_calls(APP, after=after, limit=40)
        if not page:
            break
        assert len(page) <= 40
        seen += page
        after = (page[-1].start_ts, page[-1].call_id)
        # a call arriving later never shifts the pages already read
        store.save_calls([make_call(f"late-{len(seen)}", 10.0)])
    else:
        pytest.fail("pagination did not end after 50 pages")
    expected = sorted(calls, key=lambda c: (c.start_ts, c.call_id))
    assert [c.call_id for c in seen] == [c.call_id for c in expected]
    assert len({c.call_id for c in seen}) == 250


def test_open_calls_are_the_unfinished_ones_oldest_first(store: CallStore) -> None:
    """open_calls lists the calls still in progress by start time; finished ones are not."""
    store.save_calls(
        [
            make_call("open-1", 100.0, result=""),
            make_call("open-2", 50.0, result="", accept=60.0),
            make_call("done", 10.0),
        ]
    )
    assert [c.call_id for c in store.open_calls()] == ["open-2", "open-1"]


def test_save_writes_records_outbox_rows_and_profiles_together(store: CallStore) -> None:
    """save() is one transaction: the outbox rows' ids come back in order; a profile field
    that is None keeps its stored value."""
    rows = [OutboxRow(APP, "c1", f"caller_{event}", "{}", "{}", 1.0)
            for event in ("start_call", "call_end")]
    first = store.save([make_call("c1", 1.0)], rows,
                       [ProfileUpdate(APP, "alice", "Alice", "a.png", 1.0)])
    assert len(first) == 2 and first[1] == first[0] + 1
    assert store.save([], [], [ProfileUpdate(APP, "alice", None, "b.png", 2.0)]) == []
    with store.locked() as conn:
        commands = [r[0] for r in conn.execute("SELECT command FROM webhook_outbox ORDER BY id")]
        profile = conn.execute("SELECT nickname, avatar FROM user_profiles").fetchone()
    assert commands == ["caller_start_call", "caller_call_end"]
    assert tuple(profile) == ("Alice", "b.png")
    bad_row = OutboxRow(APP, None, "caller_call_end", "{}", "{}", 2.0)  # type: ignore[arg-type]
    # the record was written first: rolled back
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.save([make_call("c2", 2.0)], [rows[0], bad_row])
    assert store.get_call(APP, "c2") is None
    with store.locked() as conn:
        assert conn.execute("SELECT COUNT(*) FROM webhook_outbox").fetchone()[0] == 2


def test_file_database_survives_reopen(tmp_path: Path) -> None:
    """A file database is created with its directories, in WAL mode, and keeps its records."""
    path = tmp_path / "deep" / "dir" / "calls.db"
    store = CallStore(str(path))
    store.save_calls([make_call("c1", room="123"), make_call("c2", 2000.0, result="")])
    store.delete_calls(APP, "bob", ["c1"])
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.get_call(APP, "c1")

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()

    reopened = CallStore(str(path))
    try:
        c1 = reopened.get_call(APP, "c1")
        assert c1 == make_call("c1", room="123")
        assert [c.call_id for c in reopened.open_calls()] == ["c2"]
        assert [r["callId"] for r in reopened.recent_calls(APP, "bob", None, None, None)] == ["c2"]
    finally:
        reopened.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer schema is not opened."""
    path = tmp_path / "calls.db"
    CallStore(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        CallStore(str(path))


_WRITER = textwrap.dedent(
    """
    import sys
    from signaling_server.records import OutboxRow, ParticipantOutcome, ProfileUpdate, StoredCall
    from signaling_server.store import CallStore

    store = CallStore(sys.argv[1])
    for i in range(1_000_000):
        call = StoredCall(
            call_id=f"c{i}", sdk_app_id=1, caller="alice", callees=["bob"], scene=2,
            media_type=1, room_id=i, group_id="", start_ts=float(i), accept_ts=None,
            end_ts=None, result="",
            participants={"alice": ParticipantOutcome(1, 3), "bob": ParticipantOutcome(2, 1)},
        )
        store.save_calls([call])
        print(i, flush=True)
    """
)


def test_committed_records_survive_sigkill(tmp_path: Path) -> None:
    """Records whose commit returned are in the database after the writer is SIGKILLed."""
    path = tmp_path / "calls.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        last = -1
        while last < 40:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            last = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        proc.stdout.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    store = CallStore(str(path))
    try:
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        for i in range(last + 1):
            call = store.get_call(1, f"c{i}")
            assert call is not None, f"committed call c{i} lost"
            assert call.room_id == i and call.participants["bob"].result_type == 1
    finally:
        store.close()


def test_postgresql_newer_schema_is_refused(postgres: PostgresServer) -> None:
    """A PostgreSQL database of a newer server is refused with the reason."""
    url = postgres.new_database()
    store = open_store(url)
    with store.transaction() as conn:
        conn.execute("UPDATE callserver_schema SET version = 99")
    store.close()
    with pytest.raises(RuntimeError, match="schema version 99; this server knows up to"):
        open_store(url)


async def test_writer_reconnects_when_postgresql_drops_the_connection(
    postgres: PostgresServer,
) -> None:
    """PostgreSQL ends the store's connections (a restart, a failover): the next write fails
    as transient, is retried on a new connection and committed. A query on the lost read
    connection runs once more, on a new connection."""
    url = postgres.new_database()
    store = open_store(url)
    writer = RecordWriter(store, retry_initial_s=0.01)
    try:
        writer.submit(make_call("before"))
        await writer.flush()
        assert writer.stats().committed == 1
        assert await writer.run_read(store.get_call, APP, "before") is not None
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (url.split("/")[3].split("?")[0],),
            ).fetchall()
        assert ended and all(row[0] for row in ended)
        unit = writer.submit_unit([make_call("after")])
        await asyncio.wrap_future(unit.committed)
        stats = writer.stats()
        assert stats.failed_attempts >= 1 and stats.lost == 0 and stats.committed == 2
        assert await writer.run_read(store.get_call, APP, "after") is not None
    finally:
        await writer.close()


def test_text_with_nul_is_stored(store: CallStore) -> None:
    """A client's text with U+0000 (userData, a nickname) does not lose its record: SQLite
    keeps it as is, PostgreSQL (whose text cannot hold it) with U+FFFD in its place."""
    call = make_call("c\x00", room="r\x00")
    call.user_data = "a\x00b"
    store.save([call], [OutboxRow(APP, "c\x00", "caller_call_end", "{}", "{}", 1.0)],
               [ProfileUpdate(APP, "alice", "Al\x00ice", None, 1.0)])
    store.save([call])  # again: the participants of the stored call are matched
    nul = "\x00" if store.dialect == "sqlite" else "\ufffd"
    stored = store.get_call(APP, f"c{nul}")
    assert stored is not None and stored.user_data == f"a{nul}b"
    assert stored.room_id == f"r{nul}" and set(stored.participants) == {"alice", "bob"}
    with store.locked() as conn:
        assert conn.execute("SELECT nickname FROM user_profiles").fetchone()[0] == f"Al{nul}ice"


def test_stores_on_one_postgresql_see_each_others_records(postgres: PostgresServer) -> None:
    """Two stores on one PostgreSQL database (two server processes): each reads what the other
    committed, and a user's deletion on one hides the record from that user on both."""
    url = postgres.new_database()
    first, second = open_store(url), open_store(url)
    try:
        first.save([make_call("from-first", 1.0)])
        second.save([make_call("from-second", 2.0)])
        for store in (first, second):
            assert [c.call_id for c in store.find_calls(APP)] == ["from-first", "from-second"]
        assert second.delete_calls(APP, "bob", ["from-first"]) == ["from-first"]
        assert [r["callId"] for r in first.recent_calls(APP, "bob", None, None, None)] == [
            "from-second"]
    finally:
        first.close()
        second.close()
