"""The real server end to end: REST API and call-event webhooks next to the websocket layer,
on each record back end (the ``db`` fixture: SQLite, then PostgreSQL)."""

from __future__ import annotations

import asyncio

from signaling_server.webhooks import WebhookSettings
from tests.helpers.postgres import db_rows
from tests.helpers.rest import rest
from tests.helpers.servers import APP, new_server
from tests.helpers.webhook_receiver import Receiver
from tests.helpers.wsclient import WsClient

# The receivers listen on loopback: allowed only with allow_private_targets.
FAST = WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2, close_grace_s=0.0,
                       allow_private_targets=True)


async def test_call_through_server_reaches_receiver_and_records(db: str) -> None:
    """With a callback configured over REST, a real 1v1 call over websockets produces the
    documented callbacks (client IP and platform of each user) and a record readable by REST."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with (
            new_server(db=db, http_port=0, webhooks=FAST) as server,
            await WsClient.connect(server.url) as alice,
            await WsClient.connect(server.url) as bob,
        ):
            await rest(server, "callback/create_config", {"url": receiver.url})
            await alice.login("alice", platform="iOS")
            await bob.login("bob", platform="Android")
            call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 2}))[
                "callId"
            ]
            await bob.expect("ON_CALL_RECEIVED")
            await bob.call("accept", {"callId": call_id})
            await alice.expect("USER_ACCEPT")
            await bob.call("hangup", {"callId": call_id})
            await alice.expect("ON_CALL_BEGIN")
            got = await receiver.wait_for(6)
            record = await rest(server, "records/get_record_by_callId", {"callId": call_id})
    finally:
        await receiver.stop()
    assert [(r.command, r.query["optplatform"], r.query["clientip"]) for r in got] == [
        ("caller_start_call", "iOS", "127.0.0.1"),
        ("callee_receive_call", "Android", "127.0.0.1"),
        ("callee_accept_call", "Android", "127.0.0.1"),
        ("caller_call_accepted", "iOS", "127.0.0.1"),
        ("callee_call_end", "Android", "127.0.0.1"),
        ("caller_call_end", "iOS", "127.0.0.1"),
    ]
    assert {r.body["CallId"] for r in got} == {call_id}
    assert got[-1].body["CallResult"] == "normal_end"
    assert got[-1].body["EndTs"] == record["endTs"] > 0
    assert record["callResult"] == "normal_end" and record["callees"] == ["bob"]


async def test_callbacks_pending_at_stop_are_sent_after_restart(db: str) -> None:
    """The receiver is down while a call is interrupted by the server stopping: the final
    call_interrupted callbacks are stored at stop and delivered, in order, after a restart."""
    receiver = Receiver()
    await receiver.start()
    await receiver.stop()
    async with new_server(db=db, http_port=0, webhooks=FAST) as server:
        await rest(server, "callback/create_config", {"url": receiver.url})
        alice = await WsClient.connect(server.url)
        bob = await WsClient.connect(server.url)
        await alice.login("alice")
        await bob.login("bob")
        call_id = (await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1}))["callId"]
        await bob.expect("ON_CALL_RECEIVED")
        await bob.call("accept", {"callId": call_id})
        await bob.expect("ON_CALL_BEGIN")
        await server.stop()
        await alice.close()
        await bob.close()
    pending = [row[0] for row in db_rows(
        db, "SELECT command FROM webhook_outbox WHERE outcome = '' ORDER BY id")]
    assert pending == [
        "caller_start_call", "callee_receive_call", "callee_accept_call",
        "caller_call_accepted", "caller_call_interrupted", "callee_call_interrupted",
    ]
    await receiver.start()
    try:
        async with new_server(db=db, webhooks=FAST):
            got = await receiver.wait_for(6)
    finally:
        await receiver.stop()
    assert [r.command for r in got] == pending
    assert {r.body["CallResult"] for r in got[-2:]} == {"interrupt"}


async def test_calls_left_open_by_a_crash_are_reported_interrupted_at_start(
    db: str,
) -> None:
    """A call a killed server left open becomes interrupt at the next start, and its caller
    and the invitee who had answered get call_interrupted; an invitee still ringing does not."""
    from signaling_server.records import ParticipantOutcome, StoredCall
    from signaling_server.storage import open_store

    receiver = Receiver()
    await receiver.start()
    try:
        async with new_server(db=db, http_port=0, webhooks=FAST) as server:
            await rest(server, "callback/create_config", {"url": receiver.url})
        # What a SIGKILL leaves behind: a connected call with no result.
        store = open_store(db)
        store.save_calls([StoredCall(
            call_id="crashed", sdk_app_id=APP, caller="alice", callees=["bob", "carol"],
            scene=0, media_type=2, room_id=42, group_id="", start_ts=1000.0,
            accept_ts=1001.0, end_ts=None, result="",
            participants={"alice": ParticipantOutcome(1, 3), "bob": ParticipantOutcome(2, 2),
                          "carol": ParticipantOutcome(2, 1)},
        )])
        store.close()
        async with new_server(db=db, webhooks=FAST) as server:
            await receiver.wait_for(2)
            await server.webhooks.flush()  # anything else queued would be sent by now
            await asyncio.sleep(0.3)
            got = list(receiver.received)
    finally:
        await receiver.stop()
    assert sorted(r.command for r in got) == ["callee_call_interrupted", "caller_call_interrupted"]
    assert {r.body["UserId"] for r in got} == {"alice", "bob"}
    assert {r.body["CallId"] for r in got} == {"crashed"}
    # A group call: the reference's webhooks give group calls only normal_end; the record
    # keeps the detail.
    assert {r.body["CallResult"] for r in got} == {"normal_end"}
    store = open_store(db)
    try:
        crashed = store.get_call(APP, "crashed")
    finally:
        store.close()
    assert crashed is not None and crashed.result == "interrupt"
