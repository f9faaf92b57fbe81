"""PostgreSQL unreachable: records go to the local spool (durable), new calls are refused with
4506, calls in progress go on; once PostgreSQL is back every spooled record and outbox row
arrives there exactly once, in order; a process killed with units in the spool moves them at
its next start. Each test runs its own PostgreSQL (``own_postgres``) and stops it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from callwire.codes import ErrorCode
from signaling_server.pgstore import PgCallStore
from signaling_server.records import OutboxRow
from signaling_server.spool import Spool, SpoolError, drain
from signaling_server.storage import open_store
from signaling_server.store import RecordWriter, StoreUnavailable
from tests.helpers.core import CoreHarness
from tests.helpers.postgres import PostgresServer, db_rows
from tests.helpers.rest import rest
from tests.helpers.serverproc import ServerProcess
from tests.helpers.servers import APP, insert_callback_config, new_server
from tests.helpers.waits import eventually
from tests.helpers.webhook_receiver import Receiver
from tests.helpers.wsclient import WsClient
from tests.server.test_store_writer import make_call


def row(call_id: str, step: int) -> OutboxRow:
    """An outbox row of ``call_id`` whose body says its place."""
    return OutboxRow(APP, call_id, "caller_call_end", "{}", json.dumps({"Step": step}), 1.0)


def spooled_units(path: Path) -> int:
    """Units in a spool file, read as another process would."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])
    finally:
        conn.close()


async def test_units_spool_while_postgresql_is_down_and_move_in_order(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """PostgreSQL stopped: units are committed to the spool (attempted True, durable), later
    ones queue behind them, queries and other writes are refused at once; PostgreSQL back:
    each unit's records and outbox rows arrive once, in submission order, with their ids."""
    url = own_postgres.new_database()
    spool = tmp_path / "spool.db"
    writer = RecordWriter(open_store(url, spool=str(spool)), retry_initial_s=0.01,
                          spool_probe_max_s=0.05)
    store = writer.store
    try:
        first = writer.submit_unit([make_call("c0", result="normal_end")], [row("c0", 0)])
        assert len(await asyncio.wrap_future(first.committed)) == 1
        own_postgres.stop()
        units = [writer.submit_unit([make_call(f"c{i // 2}", result="normal_end" if i % 2
                                               else "")], [row(f"c{i // 2}", i)])
                 for i in range(1, 9)]
        for unit in units:
            assert await asyncio.wait_for(asyncio.wrap_future(unit.attempted), 10) is True
        assert all(u.spooled for u in units) and not any(u.committed.done() for u in units)
        assert writer.unavailable() and writer.stats().spooled == 8
        assert spooled_units(spool) == 8  # on disk already
        with pytest.raises(StoreUnavailable):
            await writer.run_read(store.open_calls)  # type: ignore[attr-defined]
        with pytest.raises(StoreUnavailable):
            await writer.run_query(lambda: None)
        await eventually(lambda: writer.stats().failed_attempts >= 3, "probes failed")
        own_postgres.start()
        ids = [await asyncio.wait_for(asyncio.wrap_future(u.committed), 30) for u in units]
        assert not writer.unavailable() and writer.stats().spooled == 0 and writer.lost == 0
        later = writer.submit_unit([make_call("c9")], [row("c9", 9)])
        await asyncio.wrap_future(later.committed)
    finally:
        await writer.close()
    stored = db_rows(url, "SELECT id, call_id, body FROM webhook_outbox ORDER BY id")
    assert [json.loads(r[2])["Step"] for r in stored] == list(range(10))  # once, in order
    assert [[r[0]] for r in stored[1:9]] == ids
    results = dict(db_rows(url, "SELECT call_id, result FROM calls"))
    assert results == {"c0": "normal_end", "c1": "normal_end", "c2": "normal_end",
                       "c3": "normal_end", "c4": "", "c9": ""}
    assert not spool.exists()  # empty at close: removed


async def test_close_leaves_spooled_units_for_the_next_open_or_moves_them(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """Closing while PostgreSQL is down keeps the spooled units in the file (not lost) and
    the next open moves them; closing once it is back waits for the spool to empty."""
    url = own_postgres.new_database()
    spool = tmp_path / "spool.db"
    own_postgres.stop()
    with pytest.raises(RuntimeError, match="cannot connect to PostgreSQL"):
        open_store(url, spool=str(spool))
    own_postgres.start()
    writer = RecordWriter(open_store(url, spool=str(spool)), retry_initial_s=0.01,
                          spool_probe_max_s=0.05, close_retry_s=0.1)
    own_postgres.stop()
    kept = writer.submit_unit([make_call("kept", result="normal_end")], [row("kept", 0)])
    assert await asyncio.wrap_future(kept.attempted) is True
    await writer.close()
    assert writer.lost == 0 and spooled_units(spool) == 1
    with pytest.raises(RuntimeError, match="waits in the spool for the next start"):
        kept.committed.result()
    own_postgres.start()
    writer = RecordWriter(open_store(url, spool=str(spool)), retry_initial_s=0.01,
                          spool_probe_max_s=0.05, close_retry_s=60)
    assert db_rows(url, "SELECT call_id FROM calls") == [("kept",)]  # moved at open
    own_postgres.stop()
    moved = writer.submit_unit([make_call("moved", result="normal_end")], [row("moved", 1)])
    assert await asyncio.wrap_future(moved.attempted) is True
    own_postgres.start()
    await writer.close()  # waits for the drainer
    assert moved.committed.result() != [] and not spool.exists()
    steps = [json.loads(r[0])["Step"] for r in
             db_rows(url, "SELECT body FROM webhook_outbox ORDER BY id")]
    assert steps == [0, 1]


async def test_a_batch_written_before_its_reply_was_lost_is_not_written_twice(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """The mark in ``callserver_spool`` makes moving idempotent: units PostgreSQL already has
    (the commit's reply was lost, or the process died before deleting them from the spool)
    are skipped on the next attempt."""
    url = own_postgres.new_database()
    store = PgCallStore(url, spool=str(tmp_path / "spool.db"))
    try:
        spool = store.spool
        assert spool is not None
        spool.append([([make_call("a")], [row("a", 0)], []), ([], [row("a", 1)], [])])
        store.apply_spooled(spool.spool_id, spool.oldest(10))  # written, still in the spool
        spool.append([([make_call("a", result="normal_end")], [row("a", 2)], [])])
        through, written = drain(store, spool, 10)
        assert through == 3 and list(written) == [3] and spool.count == 0
    finally:
        store.close()
    steps = [json.loads(r[0])["Step"] for r in
             db_rows(url, "SELECT body FROM webhook_outbox ORDER BY id")]
    assert steps == [0, 1, 2]
    assert db_rows(url, "SELECT result FROM calls") == [("normal_end",)]


def test_a_spool_is_one_node_s(own_postgres: PostgresServer, tmp_path: Path) -> None:
    """A spool in use by another process, or holding units of another database, is refused
    with the reason; ``:memory:`` is refused unless a test says so."""
    url, other = own_postgres.new_database(), own_postgres.new_database()
    path = str(tmp_path / "spool.db")
    store = PgCallStore(url, spool=path)
    try:
        with pytest.raises(SpoolError, match="in use by another server process"):
            Spool(path, "elsewhere")
        assert store.spool is not None
        store.spool.append([([make_call("x")], [], [])])
    finally:
        store.close()
    with pytest.raises(SpoolError, match="holds 1 unit"):
        Spool(path, other)
    with pytest.raises(SpoolError, match="cannot be ':memory:'"):
        open_store(url, spool=":memory:")
    Spool(":memory:", "test", allow_memory=True).close()
    store = PgCallStore(url, spool=path)  # its own database: moved at open
    store.close()
    assert db_rows(url, "SELECT call_id FROM calls") == [("x",)]


def test_the_core_refuses_only_new_calls_while_the_store_is_unavailable() -> None:
    """With ``store_unavailable`` true, ``calls`` gets 4506 and leaves nothing behind (no
    record, no notice); a call in progress goes on: invite, accept, join, hangup."""
    h = CoreHarness()
    for user in ("alice", "bob", "carol", "dave"):
        h.login(user)
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1)["callId"]
    h.request("bob", "accept", callId=call_id)
    down = True
    h.core.store_unavailable = lambda: down
    saves, notices = len(h.saves), len(h.notices)
    error = h.request("dave", "calls", userIDList=["alice"], mediaType=1,
                      expect_error=ErrorCode.STORE_UNAVAILABLE)
    assert "new calls are refused until it returns" in error["message"]
    assert (len(h.saves), len(h.notices)) == (saves, notices)
    h.request("alice", "invite", callId=call_id, userIDList=["carol"])
    h.request("carol", "accept", callId=call_id)
    h.request("carol", "hangup", callId=call_id)
    h.request("carol", "join", callId=call_id)
    h.request("alice", "hangup", callId=call_id)
    down = False
    h.request("dave", "calls", userIDList=["alice"], mediaType=1)


async def until(client: WsClient, name: str, timeout: float = 10.0) -> dict[str, object]:  # noqa: ASYNC109
    """Read ``client``'s events up to the next ``name``; its data."""
    async with asyncio.timeout(timeout):
        while True:
            event = await client.events.get()
            if event.name == name:
                return event.data


async def delivered(db: str, count: int) -> None:
    """Wait until ``count`` outbox rows are stored as delivered."""
    query = "SELECT COUNT(*) FROM webhook_outbox WHERE outcome = 'delivered'"
    for _ in range(200):
        if (await asyncio.to_thread(db_rows, db, query))[0][0] >= count:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{count} outbox rows not marked delivered within 10 s")


def configure_callbacks(db: str, url: str) -> None:
    """Every callback event to ``url`` (as the REST API would store it)."""
    store = open_store(db)
    try:
        with store.transaction() as conn:
            insert_callback_config(conn, url)
    finally:
        store.close()


async def test_server_refuses_new_calls_while_postgresql_is_down(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """PostgreSQL stopped during a call: the call goes on and ends (its frames are not held),
    a new call and a record query get 4506, the REST stats show the spooled units; back, the
    records and every callback arrive once, in order, and new calls are accepted again."""
    db = own_postgres.new_database()
    receiver = Receiver()
    await receiver.start()
    configure_callbacks(db, receiver.url)
    server = new_server(db, spool=str(tmp_path / "spool.db"), http_port=0)
    try:
        async with (
            server,
            await WsClient.connect(server.url) as alice,
            await WsClient.connect(server.url) as bob,
            await WsClient.connect(server.url) as carol,
        ):
            for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
                await client.login(name)
            call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1}))[
                "callId"]
            await until(bob, "ON_CALL_RECEIVED")
            await bob.call("accept", {"callId": call_id})
            await until(alice, "ON_CALL_BEGIN")
            await receiver.wait_for(4)  # start, receive, accept, accepted
            await delivered(db, 4)
            own_postgres.stop()
            await bob.call("media_state", {"callId": call_id, "camera": False})
            await alice.call("hangup", {"callId": call_id})  # spooled: its frames go out
            await until(bob, "CALLING_END")
            assert server.records.unavailable()
            refused = await carol.request("calls", {"userIDList": ["alice"], "mediaType": 1})
            assert refused.code == ErrorCode.STORE_UNAVAILABLE and "retry later" in (
                refused.message)
            query = await alice.request("query_recent_calls", {})
            assert query.code == ErrorCode.STORE_UNAVAILABLE
            stats = await rest(server, "server/get_stats", {})
            assert stats["store"]["spooled"] >= 1
            own_postgres.start()
            await eventually(lambda: not server.records.unavailable(), "the spool emptied",
                             timeout=30)
            await carol.call("calls", {"userIDList": ["alice"], "mediaType": 1})
            got = await receiver.wait_for(8, timeout=30)  # + both call_end, carol's 2
            records = (await alice.call("query_recent_calls", {}))["records"]
            assert call_id in [r["callId"] for r in records]
    finally:
        await receiver.stop()
    assert dict(db_rows(db, "SELECT call_id, result FROM calls"))[call_id] == "normal_end"
    mine = [r for r in got if r.body["CallId"] == call_id]
    seqs = [r.seq for r in mine]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, once each
    stored = db_rows(db, "SELECT id FROM webhook_outbox WHERE call_id = ? ORDER BY id",
                     (call_id,))
    assert [r[0] for r in stored] == seqs
    assert sorted(r.command for r in mine) == sorted(
        ["caller_start_call", "callee_receive_call", "callee_accept_call",
         "caller_call_accepted", "caller_call_end", "callee_call_end"])


async def test_a_killed_server_moves_its_spool_at_the_next_start(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """SIGKILL while a call's end waits in the spool (PostgreSQL down): the next start (on
    PostgreSQL again) moves it before ending the calls left open, so the call is stored as it
    ended (not as interrupted) and each of its callbacks is stored and sent once."""
    db = own_postgres.new_database()
    receiver = Receiver()
    await receiver.start()
    configure_callbacks(db, receiver.url)
    spool = tmp_path / "spool.db"
    server = ServerProcess(db, "--spool", str(spool), "--webhook-allow-private")
    await server.start()
    try:
        async with (
            await WsClient.connect(server.url) as alice,
            await WsClient.connect(server.url) as bob,
        ):
            await alice.login("alice")
            await bob.login("bob")
            call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1}))[
                "callId"]
            await until(bob, "ON_CALL_RECEIVED")
            await bob.call("accept", {"callId": call_id})
            await until(alice, "ON_CALL_BEGIN")
            await receiver.wait_for(4)
            await delivered(db, 4)  # else their leases hold the call's rows for 30 s
            own_postgres.stop()
            await alice.call("hangup", {"callId": call_id})
            await until(bob, "CALLING_END")  # sent once the end was in the spool
            await server.kill()
        assert spooled_units(spool) >= 1
        own_postgres.start()
        await server.start()  # same port, same spool
        assert spooled_units(spool) == 0
        got = await receiver.wait_for(6, timeout=30)
        await asyncio.sleep(3)  # a second delivery would come from a later claim
    finally:
        await server.stop()
        await receiver.stop()
    assert db_rows(db, "SELECT call_id, result FROM calls") == [(call_id, "normal_end")]
    stored = db_rows(db, "SELECT id, command, outcome FROM webhook_outbox ORDER BY id")
    assert len(stored) == 6 and {r[2] for r in stored} == {"delivered"}
    assert sorted(r.seq for r in got) == [r[0] for r in stored]  # each sent once
    assert not spool.exists()
