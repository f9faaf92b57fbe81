"""set_self_info and the login nickname: what another client sees of the caller."""

from __future__ import annotations

import pytest

from callclient.errors import NotLoggedInError
from callclient.types import CallMediaType
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty
from tests.helpers.servers import APP, sig
from tests.helpers.wsclient import WsClient


async def test_self_info_reaches_the_callee(make_party: MakeParty, server: SignalingServer) -> None:
    """The nickname set before a call is the invitation's sponsor; a change mid-call is sent."""
    alice = await make_party("alice")
    await alice.engine.set_self_info("Alice", "https://example.com/alice.png")
    async with await WsClient.connect(server.url) as bob:
        await bob.login("bob", sig("bob"), sdkAppId=APP)
        call_id = await alice.engine.call("bob", CallMediaType.AUDIO)
        received = await bob.expect("ON_CALL_RECEIVED")
        assert received["sponsorNickname"] == "Alice"
        assert received["sponsorAvatar"] == "https://example.com/alice.png"

        await bob.call("accept", {"callId": call_id})
        await bob.expect("ON_CALL_BEGIN")
        entered = await bob.expect("USER_ENTER")
        assert (entered["userID"], entered["nickname"]) == ("alice", "Alice")
        await alice.rec.wait_for("on_call_begin")

        await alice.engine.set_self_info("Alicia")
        while (event := await bob.events.get()).name != "USER_INFO_CHANGED":
            pass
        assert (event.data["userID"], event.data["nickname"]) == ("alice", "Alicia")
        assert event.data["callId"] == call_id


async def test_login_nickname(make_party: MakeParty, server: SignalingServer) -> None:
    """A nickname given at login is the sponsor's nickname of that user's invitations."""
    alice = await make_party("alice", login=False)
    await alice.engine.login(APP, "alice", sig("alice"), nickname="Al")
    async with await WsClient.connect(server.url) as bob:
        await bob.login("bob", sig("bob"), sdkAppId=APP)
        await alice.engine.call("bob", CallMediaType.AUDIO)
        assert (await bob.expect("ON_CALL_RECEIVED"))["sponsorNickname"] == "Al"


async def test_self_info_needs_login(make_party: MakeParty) -> None:
    """set_self_info before login raises NotLoggedInError."""
    alice = await make_party("alice", login=False)
    with pytest.raises(NotLoggedInError):
        await alice.engine.set_self_info("Alice")
