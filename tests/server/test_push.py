"""Offline call push from a real server to a real HTTP receiver: what is sent, when, in what
order, despite a receiver that is down, across a restart; what is not sent. On both record
back ends (the ``db`` fixture: SQLite, then PostgreSQL)."""

from __future__ import annotations

import asyncio

from callwire.protocol import PUSH_INFO_DEFAULTS
from signaling_server.webhooks import WebhookSettings
from tests.helpers.postgres import db_rows
from tests.helpers.rest import rest
from tests.helpers.servers import new_server
from tests.helpers.waits import eventually
from tests.helpers.webhook_receiver import Receiver
from tests.helpers.wsclient import WsClient

# The receivers listen on loopback: allowed only with allow_private_targets.
FAST = WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2, close_grace_s=0.0,
                       allow_private_targets=True)
PUSH_FIELDS = ["UserId", "CallId", "EventTime", "ExpireTs", "OfflinePushInfo", "Invitation"]


async def test_an_offline_invitee_is_pushed_with_the_invitation(db: str) -> None:
    """An invitee with no connection: one push per offline invitee with the invitation (as
    ON_CALL_RECEIVED has it), every push info field (defaults filled) and the invitee; none
    for an invitee online, none when the push is disabled. The invitee who then logs in while
    it rings gets ON_CALL_RECEIVED."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with (
            new_server(db=db, http_port=0, webhooks=FAST) as server,
            await WsClient.connect(server.url) as alice,
            await WsClient.connect(server.url) as carol,
        ):
            config = await rest(server, "push/create_config", {"url": receiver.url})
            assert config["url"] == receiver.url
            assert await rest(server, "push/get_config", {}) == {
                **config, "delivery": {"pending": 0, "discarded": 0, "lastDiscarded": {}}}
            await alice.login("alice", nickname="Alice")
            await carol.login("carol")
            push_info = {"title": "Alice calls", "desc": "video call", "iOSPushType": 1,
                         "androidVIVOClassification": 0}
            created = await alice.call("calls", {
                "userIDList": ["bob", "carol", "dave"], "mediaType": 2, "timeout": 20,
                "userData": "hello", "offlinePushInfo": push_info})
            call_id = created["callId"]
            got = await receiver.wait_for(2)
            assert sorted(r.body["UserId"] for r in got) == ["bob", "dave"]
            push = next(r for r in got if r.body["UserId"] == "bob")
            assert push.query == {"sdkappid": str(server.config.sdk_app_id),
                                  "command": "offline_push", "contenttype": "json"}
            assert list(push.body) == PUSH_FIELDS
            assert push.body["CallId"] == call_id
            assert push.body["ExpireTs"] == push.body["EventTime"] + 20
            assert push.body["OfflinePushInfo"] == {**PUSH_INFO_DEFAULTS, **push_info}
            invitation = push.body["Invitation"]
            assert invitation["sponsor"] == "alice" and invitation["callId"] == call_id
            assert invitation["sponsorNickname"] == "Alice" and invitation["userData"] == "hello"
            assert invitation["userIDList"] == ["bob", "carol", "dave"]
            assert invitation["callRole"] == "called" and invitation["timeout"] == 20
            async with await WsClient.connect(server.url) as bob:
                await bob.login("bob")
                received = await bob.expect("ON_CALL_RECEIVED")
                assert received["callId"] == call_id
            # The same call, an invitation with the push disabled: nothing more is pushed.
            await carol.call("accept", {"callId": call_id})
            await alice.call("invite", {"callId": call_id, "userIDList": ["erin"],
                                        "offlinePushInfo": {"isDisablePush": True}})
            await alice.call("invite", {"callId": call_id, "userIDList": ["frank"]})
            got = await receiver.wait_for(3)
            assert server.pushes is not None
            await server.pushes.flush()
            await asyncio.sleep(0.2)
    finally:
        await receiver.stop()
    assert [r.body["UserId"] for r in receiver.received][2:] == ["frank"]
    assert receiver.received[2].body["OfflinePushInfo"] == PUSH_INFO_DEFAULTS


async def test_pushes_wait_for_the_receiver_in_order_and_survive_a_restart(
    db: str,
) -> None:
    """The push endpoint is down: pushes stay in the outbox (kind push), are retried, and are
    delivered in the order of the invitations after a restart, each once; the call-event
    webhooks have their own endpoint and are not held back by it."""
    pushes, hooks = Receiver(), Receiver()
    await hooks.start()
    await pushes.start()
    await pushes.stop()  # the push endpoint is down
    try:
        async with new_server(db=db, http_port=0, webhooks=FAST) as server:
            await rest(server, "push/create_config", {"url": pushes.url})
            await rest(server, "callback/create_config", {"url": hooks.url,
                                                          "events": ["start_call"]})
            async with await WsClient.connect(server.url) as alice:
                await alice.login("alice")
                created = await alice.call("calls", {"userIDList": ["bob", "carol", "dave"],
                                                     "mediaType": 1, "timeout": 600})
                await hooks.wait_for(1)  # webhooks flow while pushes wait
                assert server.pushes is not None
                await eventually(lambda: server.pushes is not None
                                 and server.pushes.failed_attempts >= 3,
                                 "the push sender retried")
        rows = db_rows(db, "SELECT kind, command, attempts > 0 FROM webhook_outbox "
                       "WHERE outcome = '' ORDER BY id")
        # The call's first push is retried; the next ones wait behind it (one call, in order).
        assert rows == [("push", "offline_push", 1)] + [("push", "offline_push", 0)] * 2
        await pushes.start()
        async with new_server(db=db, webhooks=FAST):
            got = await pushes.wait_for(3)
            await asyncio.sleep(0.3)
    finally:
        await pushes.stop()
        await hooks.stop()
    assert [r.body["UserId"] for r in pushes.received] == ["bob", "carol", "dave"]
    assert len(got) == 3 and {r.body["CallId"] for r in got} == {created["callId"]}
    assert [r.seq for r in got] == sorted(r.seq for r in got)


async def test_a_push_for_an_invitation_that_no_longer_rings_is_dropped(db: str) -> None:
    """A push not delivered before the invitation's timeout is discarded, not sent late."""
    receiver = Receiver()
    await receiver.start()
    await receiver.stop()
    try:
        async with new_server(db=db, http_port=0, webhooks=FAST) as server:
            await rest(server, "push/create_config", {"url": receiver.url})
            async with await WsClient.connect(server.url) as alice:
                await alice.login("alice")
                await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1,
                                           "timeout": 1})
                await alice.expect("NO_RESP", timeout=5)
                await asyncio.sleep(1.2)
        await receiver.start()
        async with new_server(db=db, webhooks=FAST) as server:
            assert server.pushes is not None
            await eventually(lambda: server.pushes is not None and server.pushes.pending == 0,
                             "the stale push was settled")
            await server.pushes.flush()
    finally:
        await receiver.stop()
    assert receiver.received == []
    outcome = db_rows(db, "SELECT outcome, last_error FROM webhook_outbox WHERE kind = 'push'")
    assert outcome == [("discarded", "expired before it could be delivered")]


async def test_no_push_endpoint_no_push(db: str) -> None:
    """Without a push configuration nothing is stored; deleting it stops pushes."""
    async with new_server(db=db, http_port=0, webhooks=FAST) as server:
        assert await rest(server, "push/get_config", {}) == {}
        async with await WsClient.connect(server.url) as alice:
            await alice.login("alice")
            await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1})
            assert server.pushes is not None
            await server.pushes.flush()
            assert server.pushes.skipped == 1 and server.pushes.pending == 0
        await rest(server, "push/create_config", {"url": "http://127.0.0.1:9/push"})
        assert await rest(server, "push/delete_config", {}) == {"deleted": True}
        assert await rest(server, "push/delete_config", {}) == {"deleted": False}
        await rest(server, "push/create_config", {"url": "ftp://x"}, expect=70001)
