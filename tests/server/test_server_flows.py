"""Call flows over real websockets: each user's events, in order, for every way a call goes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from signaling_server.core import CoreConfig, Notice
from signaling_server.server import ServerConfig, SignalingServer
from tests.helpers.cluster import Cluster, running_cluster
from tests.helpers.postgres import PostgresServer
from tests.helpers.servers import APP, KEY, new_server, sig
from tests.helpers.wsclient import WsClient

Login = Callable[..., Awaitable[WsClient]]


@pytest.fixture(params=["single", "cluster"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[SignalingServer | Cluster]:
    """A server with an in-memory record store; then a three-node cluster (Redis and
    PostgreSQL) whose ``url`` hands out its nodes round-robin, so each user of a test is on
    another node."""
    core = CoreConfig(reconnect_grace_s=0.5)
    if request.param == "single":
        async with new_server(core=core) as srv:
            yield srv
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    redis_url: str = request.getfixturevalue("cluster_redis")
    async with running_cluster(redis_url, postgres.new_database(), core=core) as cluster:
        yield cluster


@pytest.fixture
async def login(server: SignalingServer | Cluster) -> AsyncIterator[Login]:
    """Connect and log in users; every client is closed afterwards."""
    made: list[WsClient] = []

    async def make(user_id: str, **extra: Any) -> WsClient:
        client = await WsClient.connect(server.url, user_id)
        made.append(client)
        await client.login(user_id, **extra)
        return client

    yield make
    for client in made:
        await client.close()


async def start_call(caller: WsClient, callees: list[str], **extra: Any) -> str:
    """``calls`` from ``caller``; the new call id."""
    reply = await caller.call("calls", {"userIDList": callees, "mediaType": 1, **extra})
    assert reply["userIDList"] == callees
    return str(reply["callId"])


async def connected_pair(login: Login) -> tuple[WsClient, WsClient, str]:
    """alice called bob and bob accepted; every event so far consumed."""
    alice, bob = await login("alice"), await login("bob")
    call_id = await start_call(alice, ["bob"])
    await bob.expect("ON_CALL_RECEIVED")
    await bob.call("accept", {"callId": call_id})
    for name in ("USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER"):
        await alice.expect(name)
    for name in ("ON_CALL_BEGIN", "USER_ENTER"):
        await bob.expect(name)
    return alice, bob, call_id


async def test_accept_then_relay_to_peer_only(login: Login) -> None:
    """1v1 accepted: both sides get the begin events; offer/answer reach only the peer."""
    alice, bob, carol = await login("alice"), await login("bob"), await login("carol")
    reply = await alice.call("calls", {"userIDList": ["bob"], "mediaType": 2})
    call_id = reply["callId"]
    assert reply["busyUserIDList"] == []

    received = await bob.expect("ON_CALL_RECEIVED")
    assert received["callId"] == call_id
    assert received["sponsor"] == "alice"
    assert received["userIDList"] == ["bob"]
    assert received["callMediaType"] == 2
    assert received["callRole"] == "called"
    assert received["isFromGroup"] is False

    accepted = await bob.call("accept", {"callId": call_id})
    assert accepted["userIDList"] == ["alice", "bob"]
    assert (await alice.expect("USER_ACCEPT"))["userID"] == "bob"
    begin = await alice.expect("ON_CALL_BEGIN")
    assert begin["callRole"] == "caller"
    assert (await alice.expect("USER_ENTER"))["userID"] == "bob"
    assert (await bob.expect("ON_CALL_BEGIN"))["callRole"] == "called"
    assert (await bob.expect("USER_ENTER"))["userID"] == "alice"

    offer = {"sdp": "v=0 offer"}
    assert await alice.call(
        "relay", {"callId": call_id, "to": "bob", "kind": "offer", "payload": offer}
    ) == {}
    relayed = await bob.expect_relay()
    assert (relayed.call_id, relayed.sender, relayed.kind, relayed.payload) == (
        call_id, "alice", "offer", offer,
    )
    await bob.call(
        "relay", {"callId": call_id, "to": "alice", "kind": "answer", "payload": {"sdp": "a"}}
    )
    answer = await alice.expect_relay()
    assert (answer.sender, answer.kind) == ("bob", "answer")
    await asyncio.sleep(0.2)
    assert alice.relays.empty() and bob.relays.empty() and carol.relays.empty()
    await carol.no_more_events(0)


async def test_reject(login: Login) -> None:
    """The callee rejects: caller gets REJECT then ON_CALL_CANCELED(reject)."""
    alice, bob = await login("alice"), await login("bob")
    call_id = await start_call(alice, ["bob"])
    await bob.expect("ON_CALL_RECEIVED")
    assert await bob.call("reject", {"callId": call_id}) == {"callId": call_id}
    assert (await bob.expect("ON_CALL_CANCELED"))["reason"] == "reject"
    assert (await alice.expect("REJECT"))["userID"] == "bob"
    canceled = await alice.expect("ON_CALL_CANCELED")
    assert (canceled["callId"], canceled["reason"]) == (call_id, "reject")
    # both are free again
    await start_call(bob, ["alice"])
    await alice.expect("ON_CALL_RECEIVED")


async def test_caller_cancels(login: Login) -> None:
    """The caller hangs up while it rings: both get ON_CALL_CANCELED(cancel)."""
    alice, bob = await login("alice"), await login("bob")
    call_id = await start_call(alice, ["bob"])
    await bob.expect("ON_CALL_RECEIVED")
    await alice.call("hangup", {"callId": call_id})
    assert (await bob.expect("ON_CALL_CANCELED"))["reason"] == "cancel"
    assert (await alice.expect("ON_CALL_CANCELED"))["reason"] == "cancel"
    late = await bob.request("accept", {"callId": call_id})
    assert not late.ok and late.code == 4040


async def test_ring_timeout(login: Login) -> None:
    """Nobody answers within the call's 1 s timeout: NO_RESP and ON_CALL_CANCELED(timeout)."""
    alice, bob = await login("alice"), await login("bob")
    loop = asyncio.get_running_loop()
    started = loop.time()
    call_id = await start_call(alice, ["bob"], timeout=1)
    assert (await bob.expect("ON_CALL_RECEIVED"))["timeout"] == 1
    no_resp = await alice.expect("NO_RESP", timeout=4)
    assert no_resp["userIDList"] == ["bob"]
    assert 0.9 <= loop.time() - started < 3
    assert (await alice.expect("ON_CALL_CANCELED"))["reason"] == "timeout"
    canceled = await bob.expect("ON_CALL_CANCELED")
    assert (canceled["callId"], canceled["reason"]) == (call_id, "timeout")


async def test_busy(login: Login) -> None:
    """Calling someone already in a call: LINE_BUSY, and the attempt ends as busy."""
    alice, bob, carol = await login("alice"), await login("bob"), await login("carol")
    first = await start_call(carol, ["bob"])
    await bob.expect("ON_CALL_RECEIVED")
    await bob.call("accept", {"callId": first})
    reply = await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1})
    assert reply["busyUserIDList"] == ["bob"]
    assert (await alice.expect("LINE_BUSY"))["userID"] == "bob"
    assert (await alice.expect("ON_CALL_CANCELED"))["reason"] == "busy"
    await bob.expect("ON_CALL_BEGIN")
    await bob.expect("USER_ENTER")
    await bob.no_more_events()


async def test_ignore(login: Login) -> None:
    """The callee ignores: the caller sees LINE_BUSY, then the attempt ends as busy."""
    alice, bob = await login("alice"), await login("bob")
    call_id = await start_call(alice, ["bob"])
    await bob.expect("ON_CALL_RECEIVED")
    await bob.call("ignore", {"callId": call_id})
    assert (await bob.expect("ON_CALL_CANCELED"))["reason"] == "ignore"
    assert (await alice.expect("LINE_BUSY"))["userID"] == "bob"
    assert (await alice.expect("ON_CALL_CANCELED"))["reason"] == "busy"


async def test_hangup_reports_total_time(login: Login) -> None:
    """A hangup after about a second: USER_LEAVE, and CALLING_END with totalTime >= 1."""
    alice, bob, call_id = await connected_pair(login)
    await asyncio.sleep(1.2)
    assert await bob.call("hangup", {"callId": call_id}) == {"callId": call_id}
    leave = await alice.expect("USER_LEAVE")
    assert (leave["userID"], leave["reason"]) == ("bob", "hangup")
    alice_end = await alice.expect("CALLING_END")
    bob_end = await bob.expect("CALLING_END")
    for end in (alice_end, bob_end):
        assert end["callId"] == call_id
        assert end["userID"] == "bob"
        assert 1 <= end["totalTime"] <= 3
    assert alice_end["callRole"] == "caller" and bob_end["callRole"] == "called"


async def test_group_call_one_accepts_one_rejects(login: Login) -> None:
    """alice calls bob and carol; bob accepts, carol rejects; the call goes on until hangup."""
    alice, bob, carol = await login("alice"), await login("bob"), await login("carol")
    call_id = await start_call(alice, ["bob", "carol"])
    for callee in (bob, carol):
        invitation = await callee.expect("ON_CALL_RECEIVED")
        assert invitation["userIDList"] == ["bob", "carol"]
        assert invitation["isFromGroup"] is True

    await bob.call("accept", {"callId": call_id})
    assert (await carol.expect("USER_ACCEPT"))["userID"] == "bob"
    assert (await alice.expect("USER_ACCEPT"))["userID"] == "bob"
    await alice.expect("ON_CALL_BEGIN")
    assert (await alice.expect("USER_ENTER"))["userID"] == "bob"
    await bob.expect("ON_CALL_BEGIN")
    assert (await bob.expect("USER_ENTER"))["userID"] == "alice"

    await carol.call("reject", {"callId": call_id})
    assert (await carol.expect("ON_CALL_CANCELED"))["reason"] == "reject"
    assert (await alice.expect("REJECT"))["userID"] == "carol"
    assert (await bob.expect("REJECT"))["userID"] == "carol"
    await alice.no_more_events()  # the call is still on

    await alice.call("hangup", {"callId": call_id})
    assert (await bob.expect("USER_LEAVE"))["userID"] == "alice"
    await bob.expect("CALLING_END")
    await alice.expect("CALLING_END")
    await carol.no_more_events(0)


async def test_invite_mid_call(login: Login) -> None:
    """Inviting carol into a connected call: list update for the others, then she enters."""
    alice, bob, call_id = await connected_pair(login)
    carol = await login("carol")
    reply = await alice.call("invite", {"callId": call_id, "userIDList": ["carol"]})
    assert reply == {"callId": call_id, "userIDList": ["carol"], "busyUserIDList": []}
    invitation = await carol.expect("ON_CALL_RECEIVED")
    assert invitation["sponsor"] == "alice" and invitation["isFromGroup"] is True
    for member in (alice, bob):
        update = await member.expect("GROUP_CALL_INVITEE_LIST_UPDATE")
        assert update["userIDList"] == ["bob", "carol"]

    joined = await carol.call("accept", {"callId": call_id})
    assert joined["userIDList"] == ["alice", "bob", "carol"]
    for member in (alice, bob):
        assert (await member.expect("USER_ACCEPT"))["userID"] == "carol"
        assert (await member.expect("USER_ENTER"))["userID"] == "carol"
    await carol.expect("ON_CALL_BEGIN")
    entered = {(await carol.expect("USER_ENTER"))["userID"] for _ in range(2)}
    assert entered == {"alice", "bob"}


async def test_join_by_call_id(login: Login) -> None:
    """carol rejected a group call, then joins it by its call id."""
    alice, bob, carol = await login("alice"), await login("bob"), await login("carol")
    call_id = await start_call(alice, ["bob", "carol"])
    await bob.expect("ON_CALL_RECEIVED")
    await carol.expect("ON_CALL_RECEIVED")
    await bob.call("accept", {"callId": call_id})
    await carol.call("reject", {"callId": call_id})
    for name in ("USER_ACCEPT", "ON_CALL_CANCELED"):
        await carol.expect(name)
    for name in ("USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER", "REJECT"):
        await alice.expect(name)
    for name in ("ON_CALL_BEGIN", "USER_ENTER", "REJECT"):
        await bob.expect(name)

    joined = await carol.call("join", {"callId": call_id})
    assert joined["userIDList"] == ["alice", "bob", "carol"]
    for member in (alice, bob):
        assert (await member.expect("USER_ENTER"))["userID"] == "carol"
    await carol.expect("ON_CALL_BEGIN")
    entered = {(await carol.expect("USER_ENTER"))["userID"] for _ in range(2)}
    assert entered == {"alice", "bob"}
    stranger = await login("dave")
    refused = await stranger.request("join", {"callId": call_id})
    assert not refused.ok and refused.code == -1101


async def test_switch_media_type(login: Login) -> None:
    """Switching audio to video: both sides get CALL_TYPE_CHANGED 1 -> 2."""
    alice, bob, call_id = await connected_pair(login)
    reply = await alice.call("switch_media_type", {"callId": call_id, "mediaType": 2})
    assert (reply["oldCallType"], reply["newCallType"]) == (1, 2)
    for member in (alice, bob):
        changed = await member.expect("CALL_TYPE_CHANGED")
        assert (changed["oldCallType"], changed["newCallType"], changed["userID"]) == (
            1, 2, "alice",
        )
    again = await bob.request("switch_media_type", {"callId": call_id, "mediaType": 2})
    assert not again.ok and again.code == -1204


async def test_second_login_kicks_the_first(login: Login) -> None:
    """A second login of alice: the first connection gets KICKED_OUT, then close 4001."""
    first = await login("alice")
    second = await login("alice")
    kicked = await first.expect("KICKED_OUT")
    assert kicked["userID"] == "alice"
    assert (await first.closed()).code == 4001
    assert "serverTime" in await second.call("ping")


async def test_multi_device_rings_every_device_and_answering_cancels_the_other(
    login: Login,
) -> None:
    """bob on two devices (two nodes in the cluster): a second multi-device login kicks
    nobody, both ring, answering on one cancels the other as answered_elsewhere."""
    alice = await login("alice")
    phone = await login("bob", multiDevice=True)
    laptop = await login("bob", multiDevice=True)
    call_id = await start_call(alice, ["bob"])
    for device in (phone, laptop):
        assert (await device.expect("ON_CALL_RECEIVED"))["callId"] == call_id
    await phone.call("accept", {"callId": call_id})
    canceled = await laptop.expect("ON_CALL_CANCELED")
    assert canceled["reason"] == "answered_elsewhere"
    assert (await alice.expect("USER_ACCEPT"))["userID"] == "bob"


async def test_a_dropped_member_comes_back_on_another_connection(login: Login) -> None:
    """bob's connection drops mid-call; he logs in again within the grace (on another node
    in the cluster) and resumes: the login reply names the call, relays reach him, alice saw
    nobody leave."""
    alice, bob, call_id = await connected_pair(login)
    bob.abort()
    again = await login("bob")
    assert again.login_reply["activeCall"]["callId"] == call_id
    await alice.call("relay", {"callId": call_id, "to": "bob", "kind": "offer",
                               "payload": {"sdp": "again"}})
    assert (await again.expect_relay()).payload == {"sdp": "again"}
    await alice.no_more_events()


async def test_invitee_logging_in_while_ringing_gets_the_invitation(login: Login) -> None:
    """bob is offline when called; logging in while it rings delivers ON_CALL_RECEIVED."""
    alice = await login("alice")
    call_id = await start_call(alice, ["bob"])
    bob = await login("bob")
    invitation = await bob.expect("ON_CALL_RECEIVED")
    assert (invitation["callId"], invitation["sponsor"]) == (call_id, "alice")
    await bob.call("accept", {"callId": call_id})
    assert (await alice.expect("USER_ACCEPT"))["userID"] == "bob"


async def test_user_sig_expiry_ends_the_session(server: SignalingServer | Cluster) -> None:
    """A userSig valid 2 s: USER_SIG_EXPIRED arrives during the session, then close 4003."""
    async with await WsClient.connect(server.url, "alice") as alice:
        reply = await alice.login("alice", user_sig=sig("alice", expire_s=2))
        assert reply["userSigExpiresAt"] > reply["serverTime"]
        expired = await alice.expect("USER_SIG_EXPIRED", timeout=5)
        assert expired["userID"] == "alice"
        closed = await alice.closed()
        assert closed.code == 4003


async def test_recent_calls_and_deletion(login: Login) -> None:
    """A finished call is in both users' records; deleting hides it from the deleter only."""
    alice, bob, call_id = await connected_pair(login)
    await bob.call("hangup", {"callId": call_id})
    await alice.expect("USER_LEAVE")
    await alice.expect("CALLING_END")

    records = (await alice.call("query_recent_calls"))["records"]
    assert [r["callId"] for r in records] == [call_id]
    mine = records[0]
    assert (mine["inviter"], mine["inviteList"], mine["role"], mine["result"]) == (
        "alice", ["bob"], 1, 3,
    )
    assert mine["callResult"] == "normal_end"
    theirs = (await bob.call("query_recent_calls", {"resultType": 2}))["records"]
    assert [r["callId"] for r in theirs] == [call_id]
    assert (await bob.call("query_recent_calls", {"resultType": 1}))["records"] == []

    deleted = await alice.call("delete_record_calls", {"callIds": [call_id, "no-such-call"]})
    assert deleted == {"deleted": [call_id]}
    assert (await alice.call("query_recent_calls"))["records"] == []
    assert len((await bob.call("query_recent_calls"))["records"]) == 1


async def test_notices_reach_the_sink() -> None:
    """The server hands every webhook notice of a call to its notice_sink, in order."""
    notices: list[Notice] = []
    config = ServerConfig(port=0, sdk_app_id=APP, secret_key=KEY, db=":memory:")
    async with (
        SignalingServer(config, notice_sink=notices.append) as server,
        await WsClient.connect(server.url) as alice,
        await WsClient.connect(server.url) as bob,
    ):
        await alice.login("alice")
        await bob.login("bob")
        call_id = await start_call(alice, ["bob"])
        await bob.expect("ON_CALL_RECEIVED")
        await bob.call("reject", {"callId": call_id})
        await alice.expect("REJECT")
    assert [(n.event, n.user_id, n.role) for n in notices] == [
        ("start_call", "alice", "caller"),
        ("receive_call", "bob", "called"),
        ("reject_call", "bob", "called"),
        ("call_rejected", "alice", "caller"),
    ]
    assert {n.call.call_id for n in notices} == {call_id}
    assert notices[-1].client_ip == "127.0.0.1"
