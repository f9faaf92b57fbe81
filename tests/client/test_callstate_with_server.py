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
from callclient.types import CallMediaType, CallRole, CallStatus
from signaling_server.core import CoreConfig
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

