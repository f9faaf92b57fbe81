"""set_self_info and the login nickname: what another client sees of the caller."""

from __future__ import annotations

import pytest

from callclient.errors import InvalidParameterError, NotLoggedInError
from callclient.types import CallMediaType, UserInfo
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


async def test_user_info_cache_through_engines(make_party: MakeParty) -> None:
    """A caller's nickname and avatar reach the callee's engine with the invitation
    (on_user_info_changed right after on_call_received, user_info() filled); a change without
    an avatar keeps the avatar; get_users_info answers for users online, offline with a stored
    profile, and never seen, and fills the cache."""
    dave = await make_party("dave", login=False)
    await dave.engine.login(APP, "dave", sig("dave"), nickname="Dave", avatar="d.png")
    await dave.engine.logout()  # offline: the server keeps dave's profile
    alice = await make_party("alice", login=False)
    await alice.engine.login(APP, "alice", sig("alice"), nickname="Alice", avatar="a.png")
    carol = await make_party("carol", login=False)
    await carol.engine.login(APP, "carol", sig("carol"), nickname="Carol")
    bob = await make_party("bob")
    assert bob.engine.user_info("alice") is None
    await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_names(["on_call_received", "on_user_info_changed"])
    assert bob.rec.signal()[1].args == ("alice", "Alice", "a.png")
    assert bob.engine.user_info("alice") == UserInfo("alice", "Alice", "a.png")
    await bob.engine.accept()
    await bob.rec.wait_for("on_user_join", "alice")
    mark = bob.rec.mark()
    await alice.engine.set_self_info("Alicia")  # no avatar given: it stays
    await bob.rec.wait_for("on_user_info_changed", "alice", start=mark)
    assert bob.rec.find("on_user_info_changed", start=mark).args == (  # type: ignore[union-attr]
        "alice", "Alicia", "a.png")
    assert alice.engine.user_info("alice") == UserInfo("alice", "Alicia", "a.png")

    infos = await bob.engine.get_users_info(["carol", "dave", "zed", "carol"])
    assert infos == [UserInfo("carol", "Carol", ""), UserInfo("dave", "Dave", "d.png"),
                     UserInfo("zed", "", "")]
    assert bob.engine.user_info("dave") == UserInfo("dave", "Dave", "d.png")
    assert bob.engine.user_info("zed") == UserInfo("zed")
    changed = [e.args[0] for e in bob.rec.signal(mark) if e.name == "on_user_info_changed"]
    assert changed == ["alice", "carol", "dave"]  # zed: nothing new to tell
    with pytest.raises(InvalidParameterError):
        await bob.engine.get_users_info(["not valid!"])
