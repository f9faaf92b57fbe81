"""The server and its record store (issue 12 items 5 to 8), in process, on each back end (the
``db`` fixture: an SQLite file, then a PostgreSQL database).

* a step's frames go out only after its records are committed (item 6, in process; the
  SIGKILL version is tests/system/test_server_kill_records.py);
* a record and its webhook notices are stored together or not at all, at start-up
  ("open calls → interrupt") as during a call (item 7);
* record queries are limited per connection, refused with 4290 beyond (item 5);
* the writer's counters are in the REST API's ``server/get_stats`` (item 8).
"""

from __future__ import annotations

import asyncio
import threading

from callwire import protocol
from callwire.codes import ErrorCode
from signaling_server.pgstore import is_postgres_url
from signaling_server.records import ParticipantOutcome, StoredCall
from signaling_server.storage import open_store
from tests.helpers.rest import rest
from tests.helpers.servers import APP, insert_callback_config, new_server
from tests.helpers.wsclient import WsClient

UNREACHABLE_URL = "http://127.0.0.1:9/callbacks"


def refuse_outbox(db: str) -> list[str]:
    """Statements installing a trigger that makes every outbox insert fail."""
    if is_postgres_url(db):
        return ["CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'outbox refused'; END $$",
                "CREATE TRIGGER refuse_outbox BEFORE INSERT ON webhook_outbox "
                "FOR EACH ROW EXECUTE FUNCTION refuse_outbox()"]
    return ["CREATE TRIGGER refuse_outbox BEFORE INSERT ON webhook_outbox "
            "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"]


def drop_refuse_outbox(db: str) -> str:
    """The statement removing that trigger."""
    if is_postgres_url(db):
        return "DROP TRIGGER refuse_outbox ON webhook_outbox"
    return "DROP TRIGGER refuse_outbox"


def prepare(db: str, *statements: str, open_call: bool = False) -> None:
    """Callbacks configured (every event, unreachable URL), optionally a call left open by a
    crash, then ``statements``."""
    store = open_store(db)
    try:
        with store.transaction() as conn:
            insert_callback_config(conn, UNREACHABLE_URL)
        if open_call:
            store.save_calls([StoredCall(
                call_id="crashed", sdk_app_id=APP, caller="alice", callees=["bob"], scene=2,
                media_type=1, room_id=7, group_id="", start_ts=100.0, accept_ts=101.0,
                end_ts=None, result="",
                participants={"alice": ParticipantOutcome(1, 3), "bob": ParticipantOutcome(2, 2)},
            )])
        with store.transaction() as conn:
            for statement in statements:
                conn.execute(statement)
    finally:
        store.close()


def stored(db: str) -> tuple[dict[str, str], list[str]]:
    """``{call_id: result}`` and the outbox rows' ``call_id:command``, read from the database."""
    store = open_store(db)
    try:
        calls = {c.call_id: c.result for c in store.find_calls(APP)}
        with store.locked() as conn:
            rows = [f"{r[0]}:{r[1]}" for r in conn.execute(
                "SELECT call_id, command FROM webhook_outbox ORDER BY id")]
    finally:
        store.close()
    return calls, rows


async def test_interrupting_open_calls_at_start_stores_record_and_notices_together(
    db: str,
) -> None:
    """A call a crash left open becomes ``interrupt`` in the same transaction as its
    call_interrupted notices: when the notices cannot be stored, neither is the record."""
    prepare(db, *refuse_outbox(db), open_call=True)
    async with new_server(db=db) as server:
        assert server.records.stats().lost == 1
        assert stored(db) == ({"crashed": ""}, [])  # both or neither: neither
    prepare_drop = open_store(db)
    with prepare_drop.transaction() as conn:
        conn.execute(drop_refuse_outbox(db))
    prepare_drop.close()
    async with new_server(db=db):
        calls, rows = stored(db)
    assert calls == {"crashed": "interrupt"}
    assert rows == ["crashed:caller_call_interrupted", "crashed:callee_call_interrupted"]


async def test_a_call_and_its_notices_are_stored_together(db: str) -> None:
    """During a call too: a record is never committed without its notices."""
    prepare(db, *refuse_outbox(db))
    async with (
        new_server(db=db) as server,
        await WsClient.connect(server.url) as alice,
        await WsClient.connect(server.url) as bob,
    ):
        await alice.login("alice")
        await bob.login("bob")
        call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1}))["callId"]
        await bob.expect("ON_CALL_RECEIVED")
        await bob.call("accept", {"callId": call_id})
        await alice.call("hangup", {"callId": call_id})
        await alice.expect("USER_ACCEPT")
        lost = server.records.stats().lost
        assert stored(db) == ({}, [])
    assert lost == 3  # the call's three steps: calls, accept, hangup


async def test_frames_of_a_step_wait_for_its_commit(db: str) -> None:
    """While the writer thread is busy, the hangup reply and CALLING_END are held; they go
    out once the final record is committed, and the record is on disk by then."""
    async with (
        new_server(db=db) as server,
        await WsClient.connect(server.url) as alice,
        await WsClient.connect(server.url) as bob,
    ):
        await alice.login("alice")
        await bob.login("bob")
        call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1}))["callId"]
        await bob.expect("ON_CALL_RECEIVED")
        await bob.call("accept", {"callId": call_id})
        release, busy = threading.Event(), threading.Event()

        def hold() -> bool:
            busy.set()
            return release.wait(30)

        held = asyncio.ensure_future(server.records.run_query(hold))
        await asyncio.to_thread(busy.wait, 10)
        hangup = asyncio.ensure_future(alice.request("hangup", {"callId": call_id}, timeout=30))
        await asyncio.sleep(0.3)  # time for the reply to arrive if it were not held
        assert not hangup.done()
        assert stored(db)[0] == {call_id: ""}
        release.set()
        reply = await hangup
        assert reply.ok
        assert stored(db)[0] == {call_id: "normal_end"}  # committed before the reply
        assert await held


async def test_record_queries_are_limited_per_connection(db: str) -> None:
    """With the query thread stuck, 4 queries of one connection are in flight and the other 6
    get 4290 at once; another connection still gets its own 4; every request one reply."""
    async with (
        new_server(db=db) as server,
        await WsClient.connect(server.url) as alice,
        await WsClient.connect(server.url) as bob,
    ):
        await alice.login("alice")
        await bob.login("bob")
        release, busy = threading.Event(), threading.Event()

        def stuck() -> bool:
            busy.set()
            return release.wait(30)

        held = asyncio.ensure_future(server.records.run_read(stuck))
        await asyncio.to_thread(busy.wait, 10)
        sent = {}
        for i in range(10):
            request_id = f"q{i}"
            sent[request_id] = asyncio.ensure_future(alice.raw_request(
                protocol.encode_request("query_recent_calls", request_id, {}), request_id, 30
            ))
        bobs = [asyncio.ensure_future(bob.request("query_recent_calls", {}, timeout=30))
                for _ in range(4)]
        await asyncio.wait(list(sent.values()), timeout=10, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.2)
        refused = {i for i, f in sent.items() if f.done()}
        assert len(refused) == 6
        for i in refused:
            reply = sent[i].result()
            assert reply.code == ErrorCode.SERVER_BUSY and "in flight" in (reply.message or "")
        release.set()
        assert await held
        replies = [await sent[i] for i in sorted(set(sent) - refused)] + list(
            await asyncio.gather(*bobs))
        assert all(r.ok and r.data == {"records": []} for r in replies)
        assert len(replies) == 8


async def test_writer_counters_are_in_the_rest_api(db: str) -> None:
    """``server/get_stats`` reports the writer's counters (failed attempts, retrying, lost)."""
    async with (
        new_server(db=db, http_port=0) as server,
        await WsClient.connect(server.url) as alice,
    ):
        await alice.login("alice")
        await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1})
        data = await rest(server, "server/get_stats", {})
    store = data["store"]
    assert store["committedRecords"] >= 1 and store["commits"] >= 1
    assert (store["failedAttempts"], store["retrying"], store["lost"]) == (0, 0, 0)
    assert data["connections"] == 1
