"""A 9-participant group call, the protocol's maximum, over real websockets.

The caller invites 8 users at once and all accept, one after another. Every participant must
get every event: ON_CALL_BEGIN once, USER_ENTER once for each of the 8 others,
USER_VIDEO_AVAILABLE / USER_AUDIO_AVAILABLE for each other's media state, every relay sent to
it, USER_LEAVE for each member who leaves while it is in the call, and CALLING_END at its own
end. A 10th user cannot be invited (4090) nor join (-1101).

Raw protocol clients keep this fast; the real-media variant (a mesh of 36 aiortc peer
connections with VP8 encoding on 2 CPU cores) is too heavy to run here, see
docs/reliability.md; tests/test_engine_group.py covers real media in smaller groups.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from callclient.errors import ErrorCode
from callwire import protocol
from callwire.protocol import Event
from signaling_server.server import SignalingServer
from tests.helpers.servers import new_server
from tests.helpers.wsclient import WsClient

USERS = [f"p{i}" for i in range(protocol.MAX_PARTICIPANTS)]
TENTH = "p9"


async def take(client: WsClient, count: int, timeout: float = 5.0) -> list[Event]:  # noqa: ASYNC109
    """Exactly the next ``count`` events (fails if fewer arrive), then none for 0.1 s."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{client.name}: {len(events)}/{count} events: " + str(
            [(e.name, e.data.get("userID")) for e in events]
        )
        try:
            events.append(await asyncio.wait_for(client.events.get(), remaining))
        except TimeoutError:
            continue
    await client.no_more_events(0.1)
    return events


def about(events: list[Event]) -> Counter[tuple[str, str | None]]:
    """(event name, userID) of each event, counted."""
    return Counter((e.name, e.data.get("userID")) for e in events)


@pytest.fixture
async def nine() -> AsyncIterator[tuple[SignalingServer, dict[str, WsClient]]]:
    """A server and ten logged-in users: the nine participants and a tenth."""
    async with new_server() as server:
        clients = {u: await WsClient.connect(server.url, u) for u in [*USERS, TENTH]}
        try:
            for user, client in clients.items():
                await client.login(user)
            yield server, clients
        finally:
            for client in clients.values():
                await client.close()


async def test_nine_participants_get_every_event(
    nine: tuple[SignalingServer, dict[str, WsClient]],
) -> None:
    """Caller + 8 invitees: entries, media states, relays and leaves reach every member."""
    server, c = nine
    caller, invitees = USERS[0], USERS[1:]
    created = await c[caller].call("calls", {"userIDList": invitees, "mediaType": 2})
    call_id = created["callId"]
    assert created["busyUserIDList"] == []
    for user in invitees:
        received = await c[user].expect("ON_CALL_RECEIVED")
        assert received["userIDList"] == invitees and received["isFromGroup"] is True

    for user in invitees:
        joined = await c[user].call("accept", {"callId": call_id})
        assert joined["userIDList"] == USERS[: USERS.index(user) + 1]
    # Per participant: ON_CALL_BEGIN, USER_ENTER x 8, and USER_ACCEPT for each invitee who
    # accepted while it was ringing or joined (the caller: all 8; invitee k: all but itself).
    for user in USERS:
        accepts = 8 if user == caller else 7
        events = await take(c[user], 1 + 8 + accepts)
        counted = about(events)
        others = [u for u in USERS if u != user]
        assert counted[("ON_CALL_BEGIN", None)] == 1, user
        assert {u: counted[("USER_ENTER", u)] for u in others} == dict.fromkeys(others, 1), user
        assert sum(counted.values()) == 1 + 8 + accepts, (user, counted)
        assert all(e.data["callId"] == call_id for e in events)
    assert sorted(m.user_id for m in server.core.active_calls[call_id].members.values()
                  if m.state == "joined") == sorted(USERS)

    # No tenth member.
    full = await c[caller].request("invite", {"callId": call_id, "userIDList": [TENTH]})
    assert (full.ok, full.code) == (False, ErrorCode.CALL_FULL)
    intruder = await c[TENTH].request("join", {"callId": call_id})
    assert (intruder.ok, intruder.code) == (False, ErrorCode.PERMISSION_DENIED)
    await c[TENTH].no_more_events(0.1)

    # Media states: everyone hears about everyone else's camera and microphone.
    for user in USERS:
        await c[user].call("media_state", {"callId": call_id, "camera": True,
                                           "microphone": True})
    for user in USERS:
        counted = about(await take(c[user], 16))
        others = [u for u in USERS if u != user]
        assert counted == Counter(
            {(name, u): 1 for u in others
             for name in ("USER_VIDEO_AVAILABLE", "USER_AUDIO_AVAILABLE")}
        ), user

    # A full mesh of relays: 72 messages, each to its one recipient.
    for sender in USERS:
        for to in USERS:
            if to != sender:
                await c[sender].call("relay", {"callId": call_id, "to": to, "kind": "custom",
                                               "payload": {"from": sender, "to": to}})
    for user in USERS:
        relays = [await c[user].expect_relay() for _ in range(8)]
        assert sorted(r.sender for r in relays) == sorted(u for u in USERS if u != user)
        assert all(r.payload == {"from": r.sender, "to": user} for r in relays)
        assert c[user].relays.empty()

    # Everyone but the caller leaves, last invitee first: USER_LEAVE to each one still in
    # the call, CALLING_END to the leaver; the caller's CALLING_END comes with the last leave.
    present = list(USERS)
    for leaver in reversed(invitees):
        await c[leaver].call("hangup", {"callId": call_id})
        present.remove(leaver)
        end = await c[leaver].expect("CALLING_END")
        assert (end["userID"], end["reason"]) == (leaver, "hangup")
        await c[leaver].no_more_events(0.0)
        for user in present:
            leave = await c[user].expect("USER_LEAVE")
            assert (leave["userID"], leave["reason"]) == (leaver, "hangup")
    end = await c[caller].expect("CALLING_END")
    assert end["userID"] == USERS[1] and end["callId"] == call_id
    for user in USERS:
        await c[user].no_more_events(0.1)
    assert call_id not in server.core.active_calls
