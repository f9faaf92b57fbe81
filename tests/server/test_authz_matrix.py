"""Authorization matrix over real websockets and HTTP: nobody acts on a call that is not theirs.

One scene per case, on a fresh server: alice and bob are connected (``c1``), carol calls dave
who is still ringing (``c2``), mallory and trent are connected (``c3``), eve is in no call.
Each case sends one request as one user and asserts the error code docs/protocol.md
documents: -1101 for a user who is not a member of the call (or a relay target that is not
another joined member), -1203 for a member whose state does not allow it, 4040 for a call
that does not exist. After each refusal nobody received anything (no event, no relay) and
every call is as it was.

Login: forged (tampered), expired, foreign-key, other-sdkappid and other-user userSigs are
refused with 70002 / 70003 and leave the connection logged out. REST (on the same server's
``http_port``): a non-administrator identifier is 70004, a bad userSig 70002, an expired one
70003 (docs/rest-api.md, checked in that order).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from callclient.errors import ErrorCode
from callwire import protocol
from callwire.usersig import generate_user_sig
from signaling_server.server import SignalingServer
from tests.helpers.servers import APP, KEY, new_server, sig
from tests.helpers.wsclient import WsClient

DENIED = ErrorCode.PERMISSION_DENIED
REFUSED = ErrorCode.REQUEST_REFUSED
NOT_FOUND = ErrorCode.CALL_NOT_FOUND
USERS = ("alice", "bob", "carol", "dave", "mallory", "trent", "eve")


@dataclass
class Scene:
    """The users, their websockets and the three calls of every case."""

    server: SignalingServer
    clients: dict[str, WsClient]
    calls: dict[str, str]  # "c1" | "c2" | "c3" -> callId

    def state(self) -> dict[str, Any]:
        """Every user's call and state in it, and each call's member states."""
        core = self.server.core
        return {
            "users": {u: core.user_call(u) for u in USERS},
            "calls": {
                cid: {m.user_id: m.state for m in call.members.values()}
                for cid, call in core.active_calls.items()
            },
        }


async def connected(a: WsClient, b: WsClient, media: int = 2) -> str:
    """``a`` calls ``b``, who accepts; returns the callId."""
    assert b.user_id is not None
    call_id: str = (await a.call("calls", {"userIDList": [b.user_id], "mediaType": media}))[
        "callId"
    ]
    await b.expect("ON_CALL_RECEIVED")
    await b.call("accept", {"callId": call_id})
    return call_id


async def drain(client: WsClient) -> None:
    """Forget every event and relay received so far."""
    while not client.events.empty():
        client.events.get_nowait()
    while not client.relays.empty():
        client.relays.get_nowait()


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    """The three calls, with every setup event drained."""
    async with new_server(http_port=0) as server:
        clients = {u: await WsClient.connect(server.url, u) for u in USERS}
        try:
            for user, client in clients.items():
                await client.login(user)
            c = clients
            calls = {"c1": await connected(c["alice"], c["bob"])}
            calls["c2"] = (await c["carol"].call("calls", {"userIDList": ["dave"],
                                                            "mediaType": 1}))["callId"]
            await c["dave"].expect("ON_CALL_RECEIVED")
            calls["c3"] = await connected(c["mallory"], c["trent"])
            for user, call in (("alice", "c1"), ("bob", "c1"), ("mallory", "c3"),
                               ("trent", "c3")):
                await c[user].call("media_state", {"callId": calls[call], "camera": True})
            # Every setup event has arrived once each client's ping is answered (see below).
            await asyncio.gather(*(client.call("ping") for client in clients.values()))
            for client in clients.values():
                await drain(client)
            yield Scene(server, clients, calls)
        finally:
            for client in clients.values():
                await client.close()


# (case, actor, request type, data; "c1"/"c2"/"c3" in values are replaced by callIds, code)
CASES: list[tuple[str, str, str, dict[str, Any], int]] = [
    # an outsider (in no call) acting on other people's calls
    ("outsider accepts a ringing call", "eve", "accept", {"callId": "c2"}, DENIED),
    ("outsider rejects a ringing call", "eve", "reject", {"callId": "c2"}, DENIED),
    ("outsider ignores a ringing call", "eve", "ignore", {"callId": "c2"}, DENIED),
    ("outsider hangs up a connected call", "eve", "hangup", {"callId": "c1"}, DENIED),
    ("outsider cancels a ringing call", "eve", "hangup", {"callId": "c2"}, DENIED),
    ("outsider invites herself", "eve", "invite", {"callId": "c1", "userIDList": ["eve"]},
     DENIED),
    ("outsider invites another user", "eve", "invite",
     {"callId": "c2", "userIDList": ["trent"]}, DENIED),
    ("outsider joins without an invitation", "eve", "join", {"callId": "c1"}, DENIED),
    ("outsider joins a ringing call", "eve", "join", {"callId": "c2"}, DENIED),
    ("outsider switches the media type", "eve", "switch_media_type",
     {"callId": "c1", "mediaType": 1}, DENIED),
    ("outsider reports a media state", "eve", "media_state",
     {"callId": "c1", "camera": False}, DENIED),
    ("outsider reports network quality", "eve", "network_quality",
     {"callId": "c1", "quality": 6}, DENIED),
    ("outsider relays SDP into a call", "eve", "relay",
     {"callId": "c1", "to": "alice", "kind": "offer", "payload": {"sdp": "v=0", "type": "offer"}},
     DENIED),
    ("outsider relays ICE into a call", "eve", "relay",
     {"callId": "c1", "to": "bob", "kind": "candidate", "payload": {"candidate": "x"}}, DENIED),
    # a member of another call acting on this one
    ("member of c3 accepts c2", "mallory", "accept", {"callId": "c2"}, DENIED),
    ("member of c3 hangs up c1", "mallory", "hangup", {"callId": "c1"}, DENIED),
    ("member of c3 invites into c1", "mallory", "invite",
     {"callId": "c1", "userIDList": ["eve"]}, DENIED),
    ("member of c3 switches c1", "mallory", "switch_media_type",
     {"callId": "c1", "mediaType": 1}, DENIED),
    ("member of c3 relays into c1", "mallory", "relay",
     {"callId": "c1", "to": "alice", "kind": "offer", "payload": {"sdp": "v=0"}}, DENIED),
    ("member of c3 relays to a user outside c3", "mallory", "relay",
     {"callId": "c3", "to": "alice", "kind": "offer", "payload": {"sdp": "v=0"}}, DENIED),
    ("member of c3 relays to an idle user", "mallory", "relay",
     {"callId": "c3", "to": "eve", "kind": "custom", "payload": {}}, DENIED),
    # busy users cannot join another call at all (state check comes first: -1203)
    ("member of c3 joins c1", "mallory", "join", {"callId": "c1"}, REFUSED),
    # inside a call, but not allowed in one's state or to that target
    ("ringing invitee relays to the caller", "dave", "relay",
     {"callId": "c2", "to": "carol", "kind": "offer", "payload": {}}, REFUSED),
    ("ringing invitee invites", "dave", "invite", {"callId": "c2", "userIDList": ["eve"]},
     REFUSED),
    ("ringing invitee switches the media type", "dave", "switch_media_type",
     {"callId": "c2", "mediaType": 2}, REFUSED),
    ("caller relays to a ringing invitee", "carol", "relay",
     {"callId": "c2", "to": "dave", "kind": "offer", "payload": {}}, DENIED),
    ("joined member relays to herself", "alice", "relay",
     {"callId": "c1", "to": "alice", "kind": "custom", "payload": {}}, DENIED),
    ("joined member accepts someone else's ringing call", "alice", "accept",
     {"callId": "c2"}, DENIED),
    # calls that do not exist
    ("outsider hangs up a made-up call", "eve", "hangup", {"callId": "no-such-call"},
     NOT_FOUND),
    ("member relays on a made-up call", "alice", "relay",
     {"callId": "no-such-call", "to": "bob", "kind": "offer", "payload": {}}, NOT_FOUND),
]


def with_ids(data: dict[str, Any], calls: dict[str, str]) -> dict[str, Any]:
    """``data`` with "c1".."c3" replaced by the scene's callIds."""
    return {k: calls.get(v, v) if isinstance(v, str) else v for k, v in data.items()}


@pytest.mark.parametrize(
    ("case", "actor", "kind", "data", "code"), CASES, ids=[c[0] for c in CASES]
)
async def test_request_on_a_call_that_is_not_yours_is_refused(
    scene: Scene, case: str, actor: str, kind: str, data: dict[str, Any], code: int
) -> None:
    """The documented error code; no event or relay reaches anyone; no call changes."""
    before = scene.state()
    reply = await scene.clients[actor].request(kind, with_ids(data, scene.calls))
    assert not reply.ok, f"{case}: accepted"
    assert reply.code == code, f"{case}: [{reply.code}] {reply.message}"
    # Wait once for everyone: the server handles frames in order and queues a request's
    # events before it reads the next frame, so once each client's own ping is answered,
    # anything the refused request sent that client has arrived (no sleep to guess at).
    await asyncio.gather(*(c.call("ping") for c in scene.clients.values()))
    for client in scene.clients.values():
        assert client.events.empty(), f"{case}: events reached {client.name}"
        assert client.relays.empty(), f"{case}: a relay reached {client.name}"
    assert scene.state() == before, case
    assert "serverTime" in await scene.clients[actor].call("ping")


async def test_members_can_do_what_outsiders_cannot(scene: Scene) -> None:
    """Control: the refused requests work for the rightful members (so the refusals above are
    about who asks, not about a broken request)."""
    c, ids = scene.clients, scene.calls
    await c["alice"].call("relay", {"callId": ids["c1"], "to": "bob", "kind": "offer",
                                    "payload": {"sdp": "v=0"}})
    relay = await c["bob"].expect_relay()
    assert (relay.call_id, relay.sender, relay.payload) == (ids["c1"], "alice", {"sdp": "v=0"})
    await c["alice"].call("invite", {"callId": ids["c1"], "userIDList": ["eve"]})
    assert (await c["eve"].expect("ON_CALL_RECEIVED"))["callId"] == ids["c1"]
    await c["eve"].call("join", {"callId": ids["c1"]})
    await c["dave"].call("accept", {"callId": ids["c2"]})
    await c["trent"].call("hangup", {"callId": ids["c3"]})
    assert (await c["mallory"].expect("USER_LEAVE"))["userID"] == "trent"


# --------------------------------------------------------------------------- userSigs


def tampered(user_sig: str, **changes: Any) -> str:
    """``user_sig`` with fields of its JSON document changed and the signature kept."""
    packed = base64.b64decode(user_sig.translate(str.maketrans("*-_", "+/=")))
    doc = json.loads(zlib.decompress(packed))
    doc.update(changes)
    raw = zlib.compress(json.dumps(doc, separators=(",", ":")).encode())
    return base64.b64encode(raw).decode().translate(str.maketrans("+/=", "*-_"))


def expired(user: str) -> str:
    """A genuine userSig of ``user`` that expired an hour ago."""
    return generate_user_sig(APP, KEY, user, 60, now=time.time() - 3600)


SIG_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("signature bytes replaced",
     {"userSig": tampered(sig("eve"), **{"TLS.sig": base64.b64encode(bytes(32)).decode()})},
     ErrorCode.USER_SIG_INVALID),
    ("identifier changed to another user", {"userSig": tampered(sig("alice"),
                                                                **{"TLS.identifier": "eve"})},
     ErrorCode.USER_SIG_INVALID),
    ("expired sig with its expiry extended",
     {"userSig": tampered(expired("eve"), **{"TLS.expire": 10**6})}, ErrorCode.USER_SIG_INVALID),
    ("made with another secret key", {"userSig": generate_user_sig(APP, "not-the-key", "eve")},
     ErrorCode.USER_SIG_INVALID),
    ("issued for another sdkappid", {"userSig": generate_user_sig(APP + 1, KEY, "eve")},
     ErrorCode.USER_SIG_INVALID),
    ("login to another sdkappid", {"sdkAppId": APP + 1,
                                   "userSig": generate_user_sig(APP + 1, KEY, "eve")},
     ErrorCode.USER_SIG_INVALID),
    ("sig of another user", {"userSig": sig("alice")}, ErrorCode.USER_SIG_INVALID),
    ("not a userSig at all", {"userSig": "eJyrVkrLz1eyUkpKLFKqBQA"},
     ErrorCode.USER_SIG_INVALID),
    ("expired", {"userSig": expired("eve")}, ErrorCode.USER_SIG_EXPIRED),
]


@pytest.mark.parametrize(("case", "changes", "code"), SIG_CASES, ids=[c[0] for c in SIG_CASES])
async def test_bad_usersig_login_is_refused(case: str, changes: dict[str, Any], code: int) -> None:
    """Forged, foreign and expired userSigs: 70002 / 70003; the connection stays logged out
    (a call request afterwards is -1201) and the user is not online."""
    async with new_server() as server, await WsClient.connect(server.url) as client:
        data = {"sdkAppId": APP, "userID": "eve", "userSig": sig("eve"),
                "protocolVersion": protocol.PROTOCOL_VERSION, **changes}
        reply = await client.request("login", data)
        assert (reply.ok, reply.code) == (False, code), f"{case}: {reply.message}"
        assert not server.core.is_online("eve")
        after = await client.request("calls", {"userIDList": ["alice"], "mediaType": 1})
        assert after.code == ErrorCode.INIT_FAIL


# --------------------------------------------------------------------------- REST


REST_CASES: list[tuple[str, str, str, int]] = [
    ("non-administrator with a valid sig", "alice", sig("alice"), 70004),
    ("non-administrator with the admin's sig", "alice", sig("administrator"), 70004),
    ("non-administrator with a bad sig", "alice", "garbage", 70004),
    ("administrator with a garbled sig", "administrator", "garbage", 70002),
    ("administrator with a user's sig", "administrator", sig("alice"), 70002),
    ("administrator with a tampered sig", "administrator",
     tampered(sig("alice"), **{"TLS.identifier": "administrator"}), 70002),
    ("administrator sig of another sdkappid", "administrator",
     generate_user_sig(APP + 1, KEY, "administrator"), 70002),
    ("administrator sig made with another key", "administrator",
     generate_user_sig(APP, "not-the-key", "administrator"), 70002),
    ("administrator with an expired sig", "administrator", expired("administrator"), 70003),
    ("administrator with a valid sig (control)", "administrator", sig("administrator"), 0),
]


@pytest.mark.parametrize(
    ("case", "identifier", "usersig", "code"), REST_CASES, ids=[c[0] for c in REST_CASES]
)
async def test_rest_api_refuses_non_administrators_and_bad_sigs(
    case: str, identifier: str, usersig: str, code: int
) -> None:
    """The records API of a running server: the documented code, and no data when refused."""
    async with new_server(http_port=0) as server, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.http_port}/v1/records/get_records"
        params = {"sdkappid": str(APP), "identifier": identifier, "usersig": usersig,
                  "random": "42", "contenttype": "json"}
        async with session.post(url, params=params, data=b"{}") as response:
            assert response.status == 200
            body = await response.json()
        assert body["errorCode"] == code, f"{case}: {body['errorMessage']}"
        if code:
            assert body["data"] == {}
        else:
            assert body["data"] == {"records": [], "nextCursor": ""}
