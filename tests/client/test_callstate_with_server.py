"""The client's call core against the server's core, in memory: every reference flow's order.

Each test runs whole call flows between :class:`~callclient.callstate.CallState` clients and
the real :class:`~signaling_server.core.CallCore` under one fake clock (no sockets, no media),
and asserts the observer callbacks each client's core asks for, in the reference's order
(``reference/observer-callbacks.txt``), with their arguments, and the media effects around
them. Every frame the server sends is parsed by the client's own parsers on the way, so a
malformed event fails the test.
"""

from __future__ import annotations

from callclient.callstate import (
    ConnectPeer,
    DisconnectPeer,
    EndCallMedia,
    Notify,
    StartCallMedia,
)
from callclient.types import CallMediaType, CallRole, CallStatus, RoomId, UserInfo
from callwire.codes import ErrorCode
from signaling_server.core import CoreConfig
from signaling_server.groups import Group, GroupDirectory
from tests.helpers.core import CoreHarness
from tests.helpers.paired import PairedWorld


def connected_pair(world: PairedWorld) -> str:
    alice, bob = world.client("alice"), world.client("bob")
    call_id = alice.calls(["bob"])
    bob.answer("accept")
    return call_id


def test_one_to_one_accepted_then_hung_up() -> None:
    """Caller: begin, join(callee), end. Callee: received, begin, join(caller), end."""
    world = PairedWorld()
    connected_pair(world)
    alice, bob = world.clients["alice"], world.clients["bob"]
    assert alice.names() == ["on_call_begin", "on_user_join"]
    assert bob.names() == ["on_call_received", "on_call_begin", "on_user_join"]
    assert bob.callbacks()[0].args == ("alice", ["bob"], "", CallMediaType.VIDEO)
    assert alice.callbacks()[0].args[1:] == (CallMediaType.VIDEO, CallRole.CALLER)
    assert bob.callbacks()[1].args[1:] == (CallMediaType.VIDEO, CallRole.CALLED)
    assert alice.callbacks()[1].args == ("bob",) and bob.callbacks()[2].args == ("alice",)
    # Media follows the call: started after on_call_begin, the peer before on_user_join.
    kinds = [type(e) for e in alice.effects]
    assert kinds.index(StartCallMedia) > 0
    assert ConnectPeer("bob") in alice.effects and ConnectPeer("alice") in bob.effects
    assert alice.effects.index(ConnectPeer("bob")) < len(alice.effects) - 1
    assert alice.state.call is not None and alice.state.call.status is CallStatus.ACCEPT
    world.advance(12.5)
    mark_a, mark_b = alice.mark(), bob.mark()
    alice.hangup()
    assert alice.names(mark_a) == ["on_call_end"]
    assert bob.names(mark_b) == ["on_user_leave", "on_call_end"]
    for client, mark in ((alice, mark_a), (bob, mark_b)):
        effects = client.effects[mark:]
        ends = [i for i, e in enumerate(effects)
                if isinstance(e, Notify) and e.notification.callback == "on_call_end"]
        assert effects.index(EndCallMedia()) < ends[0]  # media torn down before the callback
        end = client.callbacks(mark)[-1].args
        assert end[1] is CallMediaType.VIDEO and abs(end[3] - 12.5) < 1.0
        assert client.state.call is None


def test_caller_cancels() -> None:
    """Caller cancels: both get on_call_cancelled(caller)."""
    world = PairedWorld()
    alice, bob = world.client("alice"), world.client("bob")
    alice.calls(["bob"])
    alice.hangup()
    assert alice.names() == ["on_call_cancelled"] and alice.callbacks()[0].args == ("alice",)
    assert bob.names() == ["on_call_received", "on_call_cancelled"]
    assert bob.callbacks()[1].args == ("alice",)
    assert alice.state.call is None and bob.state.call is None


def test_callee_times_out() -> None:
    """Timeout: caller no_response(callee) then cancelled(itself); callee cancelled(itself)."""
    world = PairedWorld()
    alice, bob = world.client("alice"), world.client("bob")
    alice.calls(["bob"], timeout=5)
    world.advance(4.9)
    assert alice.names() == [] and bob.names() == ["on_call_received"]
    world.advance(0.2)
    assert alice.names() == ["on_user_no_response", "on_call_cancelled"]
    assert [e.args for e in alice.callbacks()] == [("bob",), ("alice",)]
    assert bob.names() == ["on_call_received", "on_call_cancelled"]
    assert bob.callbacks()[1].args == ("bob",)


def test_callee_rejects() -> None:
    """Reject: caller user_reject(callee) then cancelled(itself); callee cancelled(itself)."""
    world = PairedWorld()
    alice, bob = world.client("alice"), world.client("bob")
    alice.calls(["bob"])
    bob.answer("reject")
    assert alice.names() == ["on_user_reject", "on_call_cancelled"]
    assert [e.args for e in alice.callbacks()] == [("bob",), ("alice",)]
    assert bob.names() == ["on_call_received", "on_call_cancelled"]
    assert bob.callbacks()[1].args == ("bob",)


def test_callee_busy_and_ignore() -> None:
    """Busy (in another call) and ignore: caller line_busy(callee) then cancelled(itself)."""
    world = PairedWorld()
    connected_pair(world)
    carol = world.client("carol")
    carol.calls(["bob"])
    assert carol.names() == ["on_user_line_busy", "on_call_cancelled"]
    assert [e.args for e in carol.callbacks()] == [("bob",), ("carol",)]
    dave, erin = world.client("dave"), world.client("erin")
    dave.calls(["erin"])
    erin.answer("ignore")
    assert dave.names() == ["on_user_line_busy", "on_call_cancelled"]
    assert erin.names() == ["on_call_received", "on_call_cancelled"]
    assert erin.callbacks()[1].args == ("erin",)


def test_group_reject_and_no_answer_keep_the_call() -> None:
    """A group call goes on when one invitee rejects and another does not answer."""
    world = PairedWorld()
    alice, bob, carol, dave = (world.client(u) for u in ("alice", "bob", "carol", "dave"))
    alice.calls(["bob", "carol", "dave"], timeout=10)
    bob.answer("accept")
    carol.answer("reject")
    world.advance(11)
    assert alice.names() == ["on_call_begin", "on_user_join", "on_user_reject",
                             "on_user_no_response"]
    assert [e.args for e in alice.callbacks()[1:]] == [("bob",), ("carol",), ("dave",)]
    assert bob.names() == ["on_call_received", "on_call_begin", "on_user_join",
                           "on_user_reject", "on_user_no_response"]
    assert dave.names() == ["on_call_received", "on_user_reject", "on_call_cancelled"]
    assert dave.callbacks()[2].args == ("dave",)
    assert alice.state.call is not None and alice.state.call.status is CallStatus.ACCEPT
    mark = alice.mark()
    bob.hangup()
    assert alice.names(mark) == ["on_user_leave", "on_call_end"]
    assert DisconnectPeer("bob") in alice.effects[mark:]


def test_group_member_leaves_and_invitee_joins_midcall() -> None:
    """Mid-call invite: the new member joins everyone; a leaver is left by everyone."""
    world = PairedWorld()
    alice, bob, carol = (world.client(u) for u in ("alice", "bob", "carol"))
    alice.calls(["bob"])
    bob.answer("accept")
    mark_a, mark_b = alice.mark(), bob.mark()
    assert alice.invite(["carol"]) == ["carol"]
    carol.answer("accept")
    assert alice.names(mark_a) == ["on_user_join"] and bob.names(mark_b) == ["on_user_join"]
    assert carol.names() == ["on_call_received", "on_call_begin", "on_user_join",
                             "on_user_join"]
    assert sorted(e.args[0] for e in carol.callbacks()[2:]) == ["alice", "bob"]
    assert alice.state.call is not None and "carol" in alice.state.call.callees
    mark_a, mark_c = alice.mark(), carol.mark()
    bob.hangup()
    assert alice.names(mark_a) == ["on_user_leave"] == carol.names(mark_c)
    assert alice.state.call is not None and alice.state.call.remote_users == ["carol"]


def test_media_type_switch_and_availability() -> None:
    """Switching to audio closes the camera; availability reaches the others."""
    world = PairedWorld()
    connected_pair(world)
    alice, bob = world.clients["alice"], world.clients["bob"]
    mark_a, mark_b = alice.mark(), bob.mark()
    alice.media_state(camera=False, microphone=True)
    assert bob.names(mark_b) == ["on_user_video_available", "on_user_audio_available"]
    assert [e.args for e in bob.callbacks(mark_b)] == [("alice", False), ("alice", True)]
    mark_b = bob.mark()
    alice.switch_media_type(CallMediaType.AUDIO)
    for client, mark in ((alice, mark_a), (bob, mark_b)):
        assert "on_call_media_type_changed" in client.names(mark)
        assert client.state.call is not None
        assert client.state.call.media_type is CallMediaType.AUDIO


def test_caller_interrupted_while_ringing() -> None:
    """The caller's connection is lost past the grace: the invitee's call is cancelled."""
    world = PairedWorld(CoreHarness(CoreConfig(reconnect_grace_s=3.0)))
    alice, bob = world.client("alice"), world.client("bob")
    alice.calls(["bob"])
    world.drop_connection("alice")
    world.advance(3.5)
    assert bob.names() == ["on_call_received", "on_call_cancelled"]
    # An abnormal interruption: the callee's on_call_cancelled carries its own id.
    assert bob.callbacks()[1].args == ("bob",)
    assert bob.state.call is None


def test_reconnect_within_grace_resumes_silently() -> None:
    """A connection lost and logged in again within the grace keeps the call, no callback."""
    world = PairedWorld(CoreHarness(CoreConfig(reconnect_grace_s=3.0)))
    connected_pair(world)
    alice, bob = world.clients["alice"], world.clients["bob"]
    mark_a, mark_b = alice.mark(), bob.mark()
    world.drop_connection("alice")
    world.advance(1.0)
    alice.reconnect()
    world.advance(5.0)
    assert alice.names(mark_a) == [] and bob.names(mark_b) == []
    assert alice.state.call is not None and alice.state.call.status is CallStatus.ACCEPT


def test_reconnect_after_the_call_is_gone_ends_it() -> None:
    """After the grace the server ended the call: the other side got on_user_leave and
    on_call_end; the returning client ends its call on reconnect."""
    world = PairedWorld(CoreHarness(CoreConfig(reconnect_grace_s=3.0)))
    connected_pair(world)
    alice, bob = world.clients["alice"], world.clients["bob"]
    mark_a, mark_b = alice.mark(), bob.mark()
    world.drop_connection("alice")
    world.advance(4.0)
    assert bob.names(mark_b) == ["on_user_leave", "on_call_end"]
    alice.reconnect()
    assert alice.names(mark_a) == ["on_call_end"]
    assert alice.state.call is None


def test_server_restart_ends_a_ringing_call_as_cancelled() -> None:
    """A new server (restarted) knows no call: a ringing caller gets on_call_cancelled(self)."""
    world = PairedWorld()
    alice = world.client("alice")
    world.client("bob")
    alice.calls(["bob"])
    restarted = PairedWorld()
    restarted.clients["alice"] = alice
    alice.world = restarted
    alice.reconnect()
    assert alice.names()[-1] == "on_call_cancelled" and alice.callbacks()[-1].args == ("alice",)


def test_peer_silent_while_signaling_is_down_ends_the_call() -> None:
    """A silent peer while signaling is down: on_user_leave, then on_call_end when alone."""
    world = PairedWorld()
    connected_pair(world)
    alice = world.clients["alice"]
    mark = alice.mark()
    assert alice.state.peer_unresponsive("bob", signaling_up=True, now=world.harness.now) == []
    effects = alice.state.peer_unresponsive("bob", signaling_up=False, now=world.harness.now)
    names = [e.notification.callback for e in effects if isinstance(e, Notify)]
    assert names == ["on_user_leave", "on_call_end"]
    assert effects[0] == DisconnectPeer("bob") and EndCallMedia() in effects
    assert alice.mark() == mark and alice.state.call is None



def test_total_time_is_to_the_millisecond() -> None:
    """on_call_end's total_time is a float of seconds with millisecond precision."""
    world = PairedWorld()
    connected_pair(world)
    alice, bob = world.clients["alice"], world.clients["bob"]
    world.advance(12.3456)
    mark_a, mark_b = alice.mark(), bob.mark()
    bob.hangup()
    for client, mark in ((alice, mark_a), (bob, mark_b)):
        total = client.callbacks(mark)[-1].args[3]
        assert isinstance(total, float) and total == 12.346


def test_logout_during_a_call_ends_it_with_on_call_end() -> None:
    """Logging out mid-call: on_call_end here (the local duration); the other side sees the
    user leave and its own call end, as for a hangup."""
    world = PairedWorld()
    connected_pair(world)
    alice, bob = world.clients["alice"], world.clients["bob"]
    world.advance(5.0)
    mark_a, mark_b = alice.mark(), bob.mark()
    alice.logout()
    assert alice.names(mark_a) == ["on_call_end"]
    assert alice.callbacks(mark_a)[0].args[2:] == (CallRole.CALLER, 5.0)
    assert bob.names(mark_b) == ["on_user_leave", "on_call_end"]
    assert alice.state.call is None and alice.state.user_id is None


def test_kicked_offline_during_a_call_ends_it_first() -> None:
    """Kicked offline mid-call (the same user logged in elsewhere): on_call_end, then
    on_kicked_offline; the new login takes the call over, the other side sees nothing."""
    world = PairedWorld()
    connected_pair(world)
    alice, bob = world.clients["alice"], world.clients["bob"]
    mark_a, mark_b = alice.mark(), bob.mark()
    reply = world.harness.login("bob")  # bob on another device
    world.pump()
    assert bob.names(mark_b) == ["on_call_end", "on_kicked_offline"]
    assert bob.state.call is None
    assert reply["activeCall"]["callId"] == alice.state.call.call_id  # type: ignore[union-attr]
    assert alice.names(mark_a) == []


def test_user_data_of_a_midcall_invitation_reaches_the_invitee() -> None:
    """userData given to calls reaches the invitees; the userData of a later invite reaches
    the users it invites."""
    world = PairedWorld()
    alice, bob, carol = (world.client(u) for u in ("alice", "bob", "carol"))
    alice.calls(["bob"], userData="first")
    assert bob.state.call is not None and bob.state.call.user_data == "first"
    bob.answer("accept")
    alice.invite(["carol"], userData="second")
    assert carol.state.call is not None and carol.state.call.user_data == "second"


def test_nicknames_and_avatars_reach_the_other_side() -> None:
    """A login nickname reaches the callee's cache with the invitation (on_user_info_changed
    after on_call_received); a change without an avatar keeps the avatar; the profile outlives
    the session (a later login without a nickname is shown with the stored one)."""
    world = PairedWorld()
    alice = world.client("alice", login=False)
    alice.login(nickname="Alice", avatar="a.png")
    bob = world.client("bob")
    alice.calls(["bob"])
    assert bob.names() == ["on_call_received", "on_user_info_changed"]
    assert bob.callbacks()[1].args == ("alice", "Alice", "a.png")
    assert bob.state.users.get("alice") == UserInfo("alice", "Alice", "a.png")
    bob.answer("accept")
    mark = bob.mark()
    alice.set_self_info("Alicia")  # no avatar: it stays
    assert bob.names(mark) == ["on_user_info_changed"]
    assert bob.callbacks(mark)[0].args == ("alice", "Alicia", "a.png")
    assert alice.state.users.get("alice") == UserInfo("alice", "Alicia", "a.png")
    alice.hangup()
    alice.logout()
    alice.login()  # no nickname: the stored profile is shown
    carol = world.client("carol")
    alice.calls(["carol"])
    assert carol.callbacks()[1].args == ("alice", "Alicia", "a.png")


def team_world(*members: str) -> PairedWorld:
    groups = GroupDirectory([Group("team", "Team", 0.0, dict.fromkeys(members, 0.0))])
    return PairedWorld(CoreHarness(groups=groups))


def test_a_group_member_joins_the_groups_call() -> None:
    """A member of the group joins the call in progress: the others get on_user_join, the
    joiner on_call_begin then on_user_join for each member; a non-member is refused (-1101);
    the webhook is callee_join_in_group_call; after the call the group has none."""
    world = team_world("alice", "bob", "carol")
    alice, bob, carol = (world.client(u) for u in ("alice", "bob", "carol"))
    dave = world.client("dave")
    call_id = alice.calls(["bob"], groupId="team")
    bob.answer("accept")
    seen = carol.request("get_group_call", groupId="team")["call"]
    assert (seen["callId"], seen["sponsor"], seen["userIDList"]) == (
        call_id, "alice", ["alice", "bob"])
    mark_a, mark_b = alice.mark(), bob.mark()
    world.harness.clear_notices()
    assert carol.join_in_group_call("team") == call_id
    assert carol.names() == ["on_call_begin", "on_user_join", "on_user_join"]
    assert [e.args[0] for e in carol.callbacks()[1:]] == ["alice", "bob"]
    assert carol.state.call is not None and carol.state.call.caller == "alice"
    assert carol.state.call.status is CallStatus.ACCEPT and carol.state.call.group_id == "team"
    assert alice.names(mark_a) == ["on_user_join"] == bob.names(mark_b)
    assert alice.callbacks(mark_a)[0].args == ("carol",)
    assert [(n.event, n.user_id, n.role) for n in world.harness.notices] == [
        ("join_in_group_call", "carol", "called")]
    error = dave.request("join_in_group_call", groupId="team", mediaType=2,
                         expect_error=ErrorCode.PERMISSION_DENIED)
    assert "not a member of group 'team'" in error["message"]
    dave.request("get_group_call", groupId="team", expect_error=ErrorCode.PERMISSION_DENIED)
    error = carol.request("join_in_group_call", groupId="team", mediaType=2,
                          roomId={"strRoomId": "elsewhere"},
                          expect_error=ErrorCode.CALL_NOT_FOUND)
    assert "no call in room 'elsewhere'" in error["message"]
    carol.request("join_in_group_call", groupId="team", mediaType=2,
                  expect_error=ErrorCode.REQUEST_REPEATED)
    alice.hangup()
    bob.hangup()  # carol is alone: the call ends
    assert carol.names()[-2:] == ["on_user_leave", "on_call_end"]
    assert carol.request("get_group_call", groupId="team") == {"groupId": "team", "call": None}
    carol.request("join_in_group_call", groupId="team", mediaType=2,
                  expect_error=ErrorCode.CALL_NOT_FOUND)


def test_group_rules_for_starting_a_call() -> None:
    """In an existing group only members call and are called, and a group has one call at a
    time; a refused call is reported as call_failed. A group id no group has only labels the
    call (nobody can join it through the group)."""
    world = team_world("alice", "bob", "carol")
    alice, bob, carol = (world.client(u) for u in ("alice", "bob", "carol"))
    dave = world.client("dave")
    world.harness.clear_notices()
    error = dave.request("calls", userIDList=["alice"], mediaType=1, groupId="team",
                         expect_error=ErrorCode.PERMISSION_DENIED)
    assert error["message"] == "cannot call: dave is not a member of group 'team'"
    alice.request("calls", userIDList=["bob", "dave"], mediaType=1, groupId="team",
                  expect_error=ErrorCode.PERMISSION_DENIED)
    assert [(n.event, n.user_id) for n in world.harness.notices] == [
        ("call_failed", "dave"), ("call_failed", "alice")]
    call_id = alice.calls(["bob"], groupId="team")
    error = carol.request("calls", userIDList=["bob"], mediaType=1, groupId="team",
                          expect_error=ErrorCode.REQUEST_REFUSED)
    assert call_id in error["message"] and "join_in_group_call" in error["message"]
    bob.answer("accept")
    alice.request("invite", callId=call_id, userIDList=["dave"],
                  expect_error=ErrorCode.PERMISSION_DENIED)
    dave.calls(["carol"], groupId="no-such-group")  # only a label
    carol.answer("accept")
    assert carol.state.call is not None and carol.state.call.group_id == "no-such-group"
    dave.request("get_group_call", groupId="no-such-group",
                 expect_error=ErrorCode.PERMISSION_DENIED)
    assert RoomId.from_value(alice.request("get_group_call", groupId="team")["call"]["roomID"])
