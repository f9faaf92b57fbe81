"""Call records on a file database across server stops and restarts."""

from __future__ import annotations

import time
from pathlib import Path

from callclient.errors import ErrorCode
from signaling_server.records import ParticipantOutcome, StoredCall
from signaling_server.store import CallStore
from tests.helpers.servers import APP, new_server
from tests.helpers.wsclient import WsClient


async def test_finished_call_survives_restart(tmp_path: Path) -> None:
    """A call made before a restart is in query_recent_calls after it."""
    db = str(tmp_path / "records.db")
    async with (
        new_server(db=db) as server,
        await WsClient.connect(server.url) as alice,
        await WsClient.connect(server.url) as bob,
    ):
        await alice.login("alice")
        await bob.login("bob")
        call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 2}))["callId"]
        await bob.expect("ON_CALL_RECEIVED")
        await bob.call("reject", {"callId": call_id})
        await alice.expect("REJECT")

    async with (
        new_server(db=db) as server,
        await WsClient.connect(server.url) as alice,
    ):
        await alice.login("alice")
        records = (await alice.call("query_recent_calls"))["records"]
        assert [(r["callId"], r["callResult"], r["mediaType"]) for r in records] == [
            (call_id, "reject", 2)
        ]


async def test_call_in_progress_at_stop_is_interrupted(tmp_path: Path) -> None:
    """Stopping mid-call warns both users, closes with 1001, and records "interrupt"."""
    db = str(tmp_path / "records.db")
    async with new_server(db=db) as server:
        alice = await WsClient.connect(server.url)
        bob = await WsClient.connect(server.url)
        await alice.login("alice")
        await bob.login("bob")
        call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1}))["callId"]
        await bob.expect("ON_CALL_RECEIVED")
        await bob.call("accept", {"callId": call_id})
        await bob.expect("ON_CALL_BEGIN")
        await bob.expect("USER_ENTER")
        await server.stop()
        await server.stop()  # idempotent
        assert (await bob.expect("ERROR"))["code"] == ErrorCode.SERVER_SHUTTING_DOWN
        assert (await bob.closed()).code == 1001
        await alice.close()
        await bob.close()

    store = CallStore(db)
    try:
        call = store.get_call(APP, call_id)
        assert call is not None
        assert call.result == "interrupt"
        assert call.accept_ts is not None and call.end_ts is not None
        assert call.end_ts >= call.accept_ts
        assert store.open_calls() == []
    finally:
        store.close()


async def test_call_left_open_by_a_crash_is_interrupted_at_start(tmp_path: Path) -> None:
    """A record still open in the database (a crashed server) ends as "interrupt" at start."""
    db = str(tmp_path / "records.db")
    store = CallStore(db)
    store.save_calls(
        [
            StoredCall(
                call_id="crashed-call",
                sdk_app_id=APP,
                caller="alice",
                callees=["bob"],
                scene=2,
                media_type=1,
                room_id=42,
                group_id="",
                start_ts=time.time() - 60,
                accept_ts=time.time() - 50,
                end_ts=None,
                result="",
                participants={"alice": ParticipantOutcome(1, 3), "bob": ParticipantOutcome(2, 2)},
            )
        ]
    )
    store.close()
    async with new_server(db=db) as server, await WsClient.connect(server.url) as bob:
        await bob.login("bob")
        records = (await bob.call("query_recent_calls"))["records"]
        assert [(r["callId"], r["callResult"]) for r in records] == [("crashed-call", "interrupt")]
