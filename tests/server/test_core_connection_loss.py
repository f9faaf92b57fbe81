"""CallCore connection loss: reconnect grace, redelivered invitations, lost callers,
kick-out during a call, and server shutdown."""

from __future__ import annotations

from typing import Any

from callclient.errors import ErrorCode
from callclient.types import CallResultType
from tests.helpers.core import CoreHarness


def setup(*users: str) -> CoreHarness:
    h = CoreHarness()
    for user in users:
        h.login(user)
    return h


def connected_call(h: CoreHarness, caller: str, callee: str, **extra: Any) -> str:
    call_id = str(h.request(caller, "calls", userIDList=[callee], mediaType=2,
                            **extra)["callId"])
    h.request(callee, "accept", callId=call_id)
    h.events(caller)
    h.events(callee)
    return call_id


def test_joined_member_lost_after_grace() -> None:
    """A joined member's websocket closes: nothing happens during the 3 s grace; then the
    peer gets USER_LEAVE(offline) then CALLING_END(interrupted); the record is interrupt."""
    h = setup("alice", "bob")
    call_id = connected_call(h, "alice", "bob")
    h.advance(10)
    h.disconnect("bob")
    assert h.events("alice") == []
    h.advance(2.9)
    assert h.events("alice") == []
    assert call_id in h.core.active_calls
    h.advance(0.1)
    events = h.events("alice")
    assert [n for n, _ in events] == ["USER_LEAVE", "CALLING_END"]
    assert events[0][1] == {"callId": call_id, "userID": "bob", "reason": "offline"}
    assert events[1][1]["userID"] == "bob"
    assert events[1][1]["reason"] == "interrupted"
    assert events[1][1]["totalTime"] == 13
    record = h.records[call_id]
    assert record.result == "interrupt"
    assert record.accept_ts is not None
    assert record.end_ts == record.accept_ts + 13
    assert h.notice_names("bob", call_id)[-1] == "call_interrupted"
    assert h.notice_names("alice", call_id)[-1] == "call_interrupted"
    assert h.core.active_calls == {}
    assert h.core.user_call("alice") is None and h.core.user_call("bob") is None
    # Logging back in later finds no call.
    assert "activeCall" not in h.login("bob")


def test_reconnect_within_grace_rebinds_the_call() -> None:
    """A login within the grace gets activeCall in its reply and the peer sees nothing;
    relay reaches the new connection and the call is not ended later."""
    h = setup("alice", "bob")
    call_id = connected_call(h, "alice", "bob", roomId={"strRoomId": "room-1"})
    accept_ts = h.records[call_id].accept_ts
    h.advance(5)
    old = h.conn("bob")
    h.disconnect("bob")
    h.advance(2)
    reply = h.login("bob")
    new = h.conn("bob")
    assert new != old
    assert reply["activeCall"] == {
        "callId": call_id, "roomID": "room-1", "callMediaType": 2, "callRole": "called",
        "userIDList": ["alice", "bob"], "startTime": accept_ts,
    }
    assert h.events(new) == []
    h.advance(10)
    assert h.events("alice") == [] and h.events(new) == []
    assert call_id in h.core.active_calls
    h.request("alice", "relay", callId=call_id, to="bob", kind="offer", payload={})
    assert h.names(new) == ["relay"]
    h.request("bob", "hangup", callId=call_id)
    assert h.names("alice") == ["USER_LEAVE", "CALLING_END"]
    assert h.records[call_id].result == "normal_end"


def test_offline_invitee_gets_invitation_at_login() -> None:
    """An invitee offline at call time receives ON_CALL_RECEIVED right after SDK_READY
    when logging in before the timeout, and can accept."""
    h = setup("alice")
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1,
                        timeout=20)["callId"]
    assert h.core.user_call("bob") == call_id
    h.advance(10)
    conn = h.open()
    h.login("bob", conn=conn, drain_ready=False)
    events = h.events(conn)
    assert [n for n, _ in events] == ["SDK_READY", "ON_CALL_RECEIVED"]
    assert events[1][1]["callId"] == call_id
    assert events[1][1]["sponsor"] == "alice"
    assert events[1][1]["timeout"] == 20
    h.request("bob", "accept", callId=call_id)
    assert h.names("alice") == ["USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER"]


def test_ringing_invitation_survives_lost_connection() -> None:
    """A ringing invitee's lost connection keeps the invitation until its timeout; it is
    redelivered at the next login; after the timeout the call is not_answer."""
    h = setup("alice", "bob")
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1,
                        timeout=15)["callId"]
    h.events("bob")
    h.disconnect("bob")
    h.advance(5)
    assert h.events("alice") == []
    h.login("bob")
    assert h.names("bob") == ["ON_CALL_RECEIVED"]
    h.disconnect("bob")
    h.advance(10)
    assert h.names("alice") == ["NO_RESP", "ON_CALL_CANCELED"]
    assert h.records[call_id].result == "not_answer"
    h.login("bob")
    assert h.events("bob") == []


def test_offline_invitee_after_timeout_sees_nothing() -> None:
    """An invitee who logs in after the timeout gets no invitation."""
    h = setup("alice")
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1,
                        timeout=5)["callId"]
    h.advance(6)
    assert h.names("alice") == ["NO_RESP", "ON_CALL_CANCELED"]
    h.login("bob")
    assert h.events("bob") == []
    assert h.records[call_id].participants["bob"].result_type == CallResultType.MISSED


def test_caller_lost_while_ringing() -> None:
    """The caller's connection is lost before anyone answered: after the grace, invitees
    get ON_CALL_CANCELED(interrupted); the record is interrupt."""
    h = setup("alice", "bob", "carol")
    call_id = h.request("alice", "calls", userIDList=["bob", "carol"],
                        mediaType=1)["callId"]
    h.events("bob")
    h.events("carol")
    h.disconnect("alice")
    h.advance(2)
    assert h.events("bob") == [] and h.events("carol") == []
    h.advance(1)
    for user in ("bob", "carol"):
        events = h.events(user)
        assert [(n, d["userID"], d["sponsor"], d["reason"]) for n, d in events] == [
            ("ON_CALL_CANCELED", user, "alice", "interrupted")]
    assert h.records[call_id].result == "interrupt"
    assert h.notice_names("alice") == ["start_call", "call_interrupted"]
    assert h.notice_names("bob") == ["receive_call", "call_canceled"]
    assert h.core.active_calls == {}


def test_caller_reconnects_while_ringing() -> None:
    """A caller who reconnects within the grace keeps the ringing call (activeCall) and gets
    the accept events."""
    h = setup("alice", "bob")
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1)["callId"]
    h.disconnect("alice")
    h.advance(1)
    reply = h.login("alice")
    assert reply["activeCall"]["callId"] == call_id
    assert reply["activeCall"]["callRole"] == "caller"
    h.advance(5)
    h.request("bob", "accept", callId=call_id)
    assert h.names("alice") == ["USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER"]


def test_kicked_member_call_moves_to_new_login() -> None:
    """A second login of a joined member kicks the old connection (4001) and the new login
    gets the call as activeCall; the peer sees nothing and the call does not expire."""
    h = setup("alice", "bob")
    call_id = connected_call(h, "alice", "bob")
    old = h.conn("bob")
    reply = h.login("bob")
    assert reply["activeCall"]["callId"] == call_id
    assert h.names(old) == ["KICKED_OUT"]
    assert h.closes[old].code == 4001
    h.advance(30)
    assert h.events("alice") == []
    assert call_id in h.core.active_calls
    h.request("alice", "relay", callId=call_id, to="bob", kind="offer", payload={})
    assert h.names("bob") == ["relay"]


def test_shutdown_interrupts_everything() -> None:
    """Shutdown: every active call gets a final record interrupt; every connection (logged
    in or not) gets ERROR 4503 then Close 1001."""
    h = setup("alice", "bob", "carol", "dave", "erin")
    connected = connected_call(h, "alice", "bob")
    ringing = h.request("carol", "calls", userIDList=["dave"], mediaType=1)["callId"]
    h.events("dave")
    anonymous = h.open()
    conns = sorted(h.open_conns)
    h.shutdown()
    for conn in conns:
        events = h.events(conn)
        assert [n for n, _ in events] == ["ERROR"], conn
        assert events[0][1]["code"] == ErrorCode.SERVER_SHUTTING_DOWN
        assert h.closes[conn].code == 1001
    assert anonymous in h.closes
    assert h.records[connected].result == "interrupt"
    assert h.records[ringing].result == "interrupt"
    assert h.records[connected].end_ts == h.now
    finals = [s for s in h.saves if s.result]
    assert sorted(s.call_id for s in finals) == sorted([connected, ringing])
    for user in ("alice", "bob", "carol", "dave"):
        assert h.notice_names(user)[-1] == "call_interrupted"
    assert h.notice_names("erin") == []
    assert h.core.active_calls == {}
    assert h.core.connection_count == 0
