"""Joining a group's call through CallEngines: a member sees the call and joins it with media;
the others see the member enter; a non-member is refused."""

from __future__ import annotations

import pytest

from callclient.errors import ErrorCode, PermissionDeniedError, RequestRefusedError
from callclient.types import CallMediaType, CallRole, CallStatus, RoomId
from signaling_server.groups import Group
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty, frames_advance

VIDEO = CallMediaType.VIDEO
AVAILABILITY = ["on_user_audio_available", "on_user_video_available"]
CURRENT_STATE = ["on_user_video_available", "on_user_audio_available"]


async def test_a_member_joins_the_groups_call_with_media(
    make_party: MakeParty, server: SignalingServer
) -> None:
    """alice group-calls bob in "team"; carol (a member) asks for the group's call and joins
    it: carol gets on_call_begin then, for each member, on_user_join and its current media
    state; alice and bob get on_user_join(carol) and carol's media state; carol receives
    alice's video. dave, no member, is refused; after the call the group has none."""
    server.groups.put(Group("team", "Team", 0.0, dict.fromkeys(["alice", "bob", "carol"], 0.0)))
    alice, bob, carol, dave = [await make_party(u) for u in ("alice", "bob", "carol", "dave")]
    assert await carol.engine.group_call_in_progress("team") is None
    for party in (alice, bob):
        await party.engine.open_camera()
    call_id = await alice.engine.group_call("team", ["bob"], VIDEO)
    received = await bob.rec.wait_for("on_call_received")
    assert received.args == ("alice", ["bob"], "team", VIDEO)
    await bob.engine.accept()
    await alice.rec.wait_names(["on_call_begin", "on_user_join", *AVAILABILITY])
    await bob.rec.wait_names(["on_call_received", "on_call_begin", "on_user_join",
                              *AVAILABILITY])

    info = await carol.engine.group_call_in_progress("team")
    assert info is not None
    assert (info.call_id, info.caller, info.user_ids, info.media_type) == (
        call_id, "alice", ["alice", "bob"], VIDEO)
    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    assert await carol.engine.join_in_group_call(info.room_id, "team", VIDEO) == call_id
    await carol.rec.wait_names(["on_call_begin", "on_user_join", *CURRENT_STATE,
                                "on_user_join", *CURRENT_STATE])
    begin = carol.rec.signal()[0]
    assert begin.args == (info.room_id, VIDEO, CallRole.CALLED)
    assert [e.args[0] for e in carol.rec.signal() if e.name == "on_user_join"] == [
        "alice", "bob"]
    call = carol.engine.current_call
    assert call is not None and call.status is CallStatus.ACCEPT and call.caller == "alice"
    assert call.group_id == "team" and call.remote_users == ["alice", "bob"]
    for party, mark in ((alice, mark_a), (bob, mark_b)):
        await party.rec.wait_names(["on_user_join", *AVAILABILITY], start=mark)
        assert party.rec.signal(mark)[0].args == ("carol",)
    await frames_advance(carol.view_of("alice"))

    with pytest.raises(PermissionDeniedError, match="not a member of group 'team'") as caught:
        await dave.engine.join_in_group_call(RoomId(), "team", VIDEO)
    assert caught.value.code == ErrorCode.PERMISSION_DENIED and dave.engine.current_call is None
    with pytest.raises(PermissionDeniedError):
        await dave.engine.group_call_in_progress("team")
    with pytest.raises(RequestRefusedError, match="already in call"):
        await carol.engine.join_in_group_call(RoomId(), "team", VIDEO)

    await carol.engine.hangup()
    await alice.engine.hangup()
    await bob.rec.wait_for("on_call_end", start=mark_b)
    assert await carol.engine.group_call_in_progress("team") is None
    with pytest.raises(RequestRefusedError, match="has no call in progress") as gone:
        await carol.engine.join_in_group_call(RoomId(), "team", VIDEO)
    assert gone.value.code == ErrorCode.CALL_NOT_FOUND and carol.engine.current_call is None
