"""CallCore 1v1 flows: every outcome's events per user, in order, and its record."""

from __future__ import annotations

from typing import Any

from callclient.errors import ErrorCode
from callclient.types import CallResultType, CallRole, CallScene
from tests.helpers.core import CoreHarness


def setup(*users: str) -> CoreHarness:
    h = CoreHarness()
    for user in users:
        h.login(user)
    return h


def call(h: CoreHarness, caller: str, *callees: str, **extra: Any) -> str:
    reply = h.request(caller, "calls", userIDList=list(callees), mediaType=2, **extra)
    return str(reply["callId"])


def test_accept_then_hangup() -> None:
    """The accepted-then-hung-up flow: each side's exact frames, totalTime from the clock,
    the record normal_end with incoming/outgoing result types, and the notices."""
    h = setup("alice", "bob")
    reply = h.request(
        "alice", "calls", userIDList=["bob"], mediaType=2, roomId={"intRoomId": 42},
        userData="hello",
    )
    call_id = reply["callId"]
    assert reply == {"callId": call_id, "roomID": 42, "userIDList": ["bob"],
                     "busyUserIDList": []}
    assert h.events("alice") == []
    bob = h.events("bob")
    assert [n for n, _ in bob] == ["ON_CALL_RECEIVED"]
    invitation = bob[0][1]
    assert invitation["callId"] == invitation["inviteID"] == call_id
    assert invitation["sponsor"] == "alice"
    assert invitation["userIDList"] == ["bob"]
    assert invitation["callRole"] == "called"
    assert invitation["isFromGroup"] is False
    assert invitation["roomID"] == 42
    assert invitation["callMediaType"] == 2
    assert invitation["userData"] == "hello"
    assert invitation["timeout"] == 30
    assert invitation["inviteData"] == {"callType": 2, "roomID": 42}
    start = h.now

    h.advance(2)
    accepted = h.request("bob", "accept", callId=call_id)
    assert accepted == {"callId": call_id, "roomID": 42, "callMediaType": 2,
                        "userIDList": ["alice", "bob"], "sponsor": "alice", "groupID": "",
                        "inviteeIDList": ["bob"], "userData": "hello"}
    bob = h.events("bob")
    assert [n for n, _ in bob] == ["ON_CALL_BEGIN", "USER_ENTER"]
    assert bob[0][1]["callRole"] == "called"
    assert bob[1][1]["userID"] == "alice"
    alice = h.events("alice")
    assert [n for n, _ in alice] == ["USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER"]
    assert alice[0][1] == {"callId": call_id, "userID": "bob"}
    assert alice[1][1] == {"callId": call_id, "roomID": 42, "callMediaType": 2,
                           "callRole": "caller"}
    assert alice[2][1]["userID"] == "bob"

    h.advance(65)
    assert h.request("bob", "hangup", callId=call_id) == {"callId": call_id}
    bob = h.events("bob")
    assert [n for n, _ in bob] == ["CALLING_END"]
    assert bob[0][1]["userID"] == "bob"
    assert bob[0][1]["totalTime"] == bob[0][1]["callEnd"] == 65
    assert bob[0][1]["reason"] == "hangup"
    alice = h.events("alice")
    assert [n for n, _ in alice] == ["USER_LEAVE", "CALLING_END"]
    assert alice[0][1] == {"callId": call_id, "userID": "bob", "reason": "hangup"}
    assert alice[1][1]["userID"] == "bob"
    assert alice[1][1]["totalTime"] == 65
    assert alice[1][1]["callRole"] == "caller"

    record = h.records[call_id]
    assert record.result == "normal_end"
    assert record.scene == CallScene.SINGLE_CALL
    assert record.start_ts == start
    assert record.accept_ts == start + 2
    assert record.end_ts == start + 67
    assert record.caller == "alice"
    assert record.callees == ["bob"]
    assert record.participants["alice"].role == CallRole.CALLER
    assert record.participants["alice"].result_type == CallResultType.OUTGOING
    assert record.participants["bob"].role == CallRole.CALLED
    assert record.participants["bob"].result_type == CallResultType.INCOMING
    assert [s.result for s in h.saves if s.call_id == call_id][-1] == "normal_end"
    assert [s.result for s in h.saves if s.call_id == call_id][:-1] == [""] * (
        len([s for s in h.saves if s.call_id == call_id]) - 1
    )

    assert h.notice_names("alice") == ["start_call", "call_accepted", "call_end"]
    assert h.notice_names("bob") == ["receive_call", "accept_call", "call_end"]
    # Notices queued in the final batch carry the final record.
    last = [n for n in h.notices if n.event == "call_end"]
    assert all(n.call.result == "normal_end" for n in last)
    assert h.core.active_calls == {}
    assert h.core.user_call("alice") is None and h.core.user_call("bob") is None


def test_reject() -> None:
    """B rejects: A gets REJECT then ON_CALL_CANCELED(reject); B reply then
    ON_CALL_CANCELED(reject); record reject, B missed."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob")
    h.events("bob")
    assert h.request("bob", "reject", callId=call_id) == {"callId": call_id}
    bob = h.events("bob")
    assert bob == [("ON_CALL_CANCELED", {
        "callId": call_id, "userID": "bob", "sponsor": "alice", "reason": "reject",
        "roomID": bob[0][1]["roomID"], "callMediaType": 2, "callRole": "called"})]
    alice = h.events("alice")
    assert [n for n, _ in alice] == ["REJECT", "ON_CALL_CANCELED"]
    assert alice[0][1] == {"callId": call_id, "userID": "bob"}
    assert alice[1][1]["userID"] == "alice"
    assert alice[1][1]["reason"] == "reject"
    assert alice[1][1]["callRole"] == "caller"
    record = h.records[call_id]
    assert record.result == "reject"
    assert record.accept_ts is None
    assert record.participants["bob"].result_type == CallResultType.MISSED
    assert record.participants["alice"].result_type == CallResultType.OUTGOING
    assert h.notice_names("alice") == ["start_call", "call_rejected"]
    assert h.notice_names("bob") == ["receive_call", "reject_call"]
    assert h.core.active_calls == {}


def test_hangup_while_ringing_is_reject() -> None:
    """An invitee's hangup while ringing is the same as reject."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob")
    h.events("bob")
    h.request("bob", "hangup", callId=call_id)
    assert [(n, d["reason"]) for n, d in h.events("bob")] == [("ON_CALL_CANCELED", "reject")]
    assert h.names("alice") == ["REJECT", "ON_CALL_CANCELED"]
    assert h.records[call_id].result == "reject"


def test_ignore() -> None:
    """B ignores: A gets LINE_BUSY then ON_CALL_CANCELED(busy); B ON_CALL_CANCELED(ignore);
    record call_busy."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob")
    h.events("bob")
    h.request("bob", "ignore", callId=call_id)
    bob = h.events("bob")
    assert [(n, d["userID"], d["reason"]) for n, d in bob] == [
        ("ON_CALL_CANCELED", "bob", "ignore")]
    alice = h.events("alice")
    assert [n for n, _ in alice] == ["LINE_BUSY", "ON_CALL_CANCELED"]
    assert alice[0][1] == {"callId": call_id, "userID": "bob"}
    assert (alice[1][1]["userID"], alice[1][1]["reason"]) == ("alice", "busy")
    assert h.records[call_id].result == "call_busy"
    assert h.records[call_id].participants["bob"].result_type == CallResultType.MISSED
    assert h.notice_names("bob") == ["receive_call", "ignore_call"]
    assert h.notice_names("alice") == ["start_call", "call_busy"]


def test_busy_callee_in_another_call() -> None:
    """Calling a user who is connected in another call: the reply lists them busy, then
    LINE_BUSY and ON_CALL_CANCELED(busy); the busy user receives nothing."""
    h = setup("alice", "bob", "carol")
    first = call(h, "carol", "bob")
    h.request("bob", "accept", callId=first)
    h.events("bob")
    h.events("carol")
    reply = h.request("alice", "calls", userIDList=["bob"], mediaType=1)
    assert reply["busyUserIDList"] == ["bob"]
    call_id = reply["callId"]
    alice = h.events("alice")
    assert [n for n, _ in alice] == ["LINE_BUSY", "ON_CALL_CANCELED"]
    assert alice[0][1]["userID"] == "bob"
    assert (alice[1][1]["userID"], alice[1][1]["reason"]) == ("alice", "busy")
    assert h.events("bob") == []
    assert h.events("carol") == []
    assert h.records[call_id].result == "call_busy"
    assert h.notice_names("alice") == ["start_call", "call_busy"]
    assert h.notice_names("bob", call_id) == []
    # Bob's own call is untouched.
    assert h.core.user_call("bob") == first
    assert h.core.user_call("alice") is None


def test_busy_callee_ringing_in_another_call() -> None:
    """A user whose phone is ringing for another call is busy too."""
    h = setup("alice", "bob", "carol")
    first = call(h, "carol", "bob")
    h.events("bob")
    reply = h.request("alice", "calls", userIDList=["bob"], mediaType=1)
    assert reply["busyUserIDList"] == ["bob"]
    assert h.names("alice") == ["LINE_BUSY", "ON_CALL_CANCELED"]
    assert h.events("bob") == []
    assert h.records[reply["callId"]].result == "call_busy"
    assert h.core.user_call("bob") == first
    # Bob can still answer the first call.
    h.request("bob", "accept", callId=first)


def test_timeout() -> None:
    """No answer within a 5 s timeout: A gets NO_RESP then ON_CALL_CANCELED(timeout), B gets
    ON_CALL_CANCELED(timeout); record not_answer, B missed."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob", timeout=5)
    assert h.events("bob")[0][1]["timeout"] == 5
    start = h.now
    h.advance(4.9)
    assert h.events("alice") == [] and h.events("bob") == []
    assert h.core.user_call("bob") == call_id
    h.advance(0.2)
    alice = h.events("alice")
    assert [n for n, _ in alice] == ["NO_RESP", "ON_CALL_CANCELED"]
    assert alice[0][1] == {"callId": call_id, "sponsor": "alice", "userIDList": ["bob"]}
    assert (alice[1][1]["userID"], alice[1][1]["reason"]) == ("alice", "timeout")
    bob = h.events("bob")
    assert [(n, d["userID"], d["sponsor"], d["reason"]) for n, d in bob] == [
        ("ON_CALL_CANCELED", "bob", "alice", "timeout")]
    record = h.records[call_id]
    assert record.result == "not_answer"
    assert record.end_ts == start + 5
    assert record.participants["bob"].result_type == CallResultType.MISSED
    assert h.notice_names("bob") == ["receive_call", "not_answer_call"]
    assert h.notice_names("alice") == ["start_call", "call_missed"]
    assert h.core.active_calls == {}
    h.request("bob", "accept", callId=call_id, expect_error=ErrorCode.CALL_NOT_FOUND)


def test_caller_cancels() -> None:
    """The caller hangs up while ringing: A reply then ON_CALL_CANCELED(cancel); B gets
    ON_CALL_CANCELED with userID B, sponsor A; record cancel."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob")
    h.events("bob")
    h.request("alice", "hangup", callId=call_id)
    alice = h.events("alice")
    assert [(n, d["userID"], d["reason"]) for n, d in alice] == [
        ("ON_CALL_CANCELED", "alice", "cancel")]
    bob = h.events("bob")
    assert [(n, d["userID"], d["sponsor"], d["reason"]) for n, d in bob] == [
        ("ON_CALL_CANCELED", "bob", "alice", "cancel")]
    assert h.records[call_id].result == "cancel"
    assert h.notice_names("alice") == ["start_call", "cancel_call"]
    assert h.notice_names("bob") == ["receive_call", "call_canceled"]
    assert h.core.active_calls == {}


def test_relay_goes_only_to_the_peer() -> None:
    """A relay reaches the named joined peer only, with callId/from/kind/payload."""
    h = setup("alice", "bob", "carol")
    call_id = call(h, "alice", "bob")
    h.request("bob", "accept", callId=call_id)
    h.events("alice")
    h.events("bob")
    payload = {"sdp": "v=0...", "type": "offer"}
    assert h.request("alice", "relay", callId=call_id, to="bob", kind="offer",
                     payload=payload) == {}
    assert h.events("bob") == [("relay", {"callId": call_id, "from": "alice", "kind": "offer",
                                          "payload": payload})]
    assert h.events("alice") == []
    assert h.events("carol") == []


def test_relay_refusals() -> None:
    """Relay is refused: -1101 from a non-member or to a non-member/non-joined member or to
    oneself; -1203 from a member who is only ringing. Nothing is delivered."""
    h = setup("alice", "bob", "carol", "dave")
    call_id = call(h, "alice", "bob", "carol")
    h.request("bob", "accept", callId=call_id)
    for user in ("alice", "bob", "carol"):
        h.events(user)
    h.request("dave", "relay", callId=call_id, to="bob", kind="offer", payload={},
              expect_error=ErrorCode.PERMISSION_DENIED)
    h.request("alice", "relay", callId=call_id, to="dave", kind="offer", payload={},
              expect_error=ErrorCode.PERMISSION_DENIED)
    h.request("alice", "relay", callId=call_id, to="carol", kind="offer", payload={},
              expect_error=ErrorCode.PERMISSION_DENIED)  # carol only rings
    h.request("alice", "relay", callId=call_id, to="alice", kind="offer", payload={},
              expect_error=ErrorCode.PERMISSION_DENIED)
    h.request("carol", "relay", callId=call_id, to="alice", kind="offer", payload={},
              expect_error=ErrorCode.REQUEST_REFUSED)  # not joined
    for user in ("alice", "bob", "carol", "dave"):
        assert h.events(user) == []


def test_relay_to_reconnecting_peer_is_4041() -> None:
    """A relay to a joined member whose connection dropped (within grace) is 4041."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob")
    h.request("bob", "accept", callId=call_id)
    h.disconnect("bob")
    h.request("alice", "relay", callId=call_id, to="bob", kind="candidate", payload={},
              expect_error=ErrorCode.USER_OFFLINE)


def test_calling_yourself_is_1202() -> None:
    """Calling yourself is a parameter error; no call is created, no record is saved, and the
    business backend gets the attempt as caller_call_failed (a fresh callId, EndTs set)."""
    h = setup("alice")
    h.request("alice", "calls", userIDList=["alice"], mediaType=1,
              expect_error=ErrorCode.PARAM_INVALID)
    assert h.core.active_calls == {}
    assert h.saves == []
    assert [(n.event, n.user_id, n.role) for n in h.notices] == [
        ("call_failed", "alice", "caller")]
    failed = h.notices[0].call
    assert failed.end_ts == h.now and failed.result == "" and failed.total_users == 1


def test_calling_while_in_a_call_is_1203() -> None:
    """A user in a call (ringing or joined) cannot start another."""
    h = setup("alice", "bob", "carol")
    call_id = call(h, "alice", "bob")
    h.request("alice", "calls", userIDList=["carol"], mediaType=1,
              expect_error=ErrorCode.REQUEST_REFUSED)
    h.request("bob", "calls", userIDList=["carol"], mediaType=1,
              expect_error=ErrorCode.REQUEST_REFUSED)
    assert list(h.core.active_calls) == [call_id]
    assert h.events("carol") == []


def test_accepting_twice_is_1204() -> None:
    """A second accept of the same call is -1204 and sends nothing."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob")
    h.request("bob", "accept", callId=call_id)
    h.events("alice")
    h.events("bob")
    h.request("bob", "accept", callId=call_id, expect_error=ErrorCode.REQUEST_REPEATED)
    h.request("bob", "join", callId=call_id, expect_error=ErrorCode.REQUEST_REPEATED)
    assert h.events("alice") == [] and h.events("bob") == []


def test_accepting_someone_elses_call_is_1101() -> None:
    """A user who is not a member of a call cannot accept, reject or hang it up."""
    h = setup("alice", "bob", "carol")
    call_id = call(h, "alice", "bob")
    for kind in ("accept", "reject", "ignore", "hangup", "join"):
        h.request("carol", kind, callId=call_id, expect_error=ErrorCode.PERMISSION_DENIED)
    assert h.core.active_calls[call_id].members["bob"].state == "ringing"
    assert h.events("alice") == []


def test_caller_cannot_accept_own_call_1203() -> None:
    """The caller is already joined: accept is -1204, reject is refused by state (-1203)."""
    h = setup("alice", "bob")
    call_id = call(h, "alice", "bob")
    h.request("alice", "accept", callId=call_id, expect_error=ErrorCode.REQUEST_REPEATED)
    h.request("alice", "reject", callId=call_id, expect_error=ErrorCode.REQUEST_REFUSED)


def test_unknown_call_id_is_4040() -> None:
    """Requests naming a call that does not exist are 4040."""
    h = setup("alice")
    for kind in ("accept", "reject", "ignore", "hangup", "join"):
        h.request("alice", kind, callId="no-such-call", expect_error=ErrorCode.CALL_NOT_FOUND)
    h.request("alice", "switch_media_type", callId="nope", mediaType=1,
              expect_error=ErrorCode.CALL_NOT_FOUND)


def test_room_id_rules() -> None:
    """intRoomId wins when non-zero; otherwise strRoomId; otherwise the server picks an int."""
    h = setup("alice", "bob")
    reply = h.request("alice", "calls", userIDList=["bob"], mediaType=1,
                      roomId={"intRoomId": 0, "strRoomId": "123"})
    assert reply["roomID"] == "123"
    h.request("alice", "hangup", callId=reply["callId"])
    reply = h.request("alice", "calls", userIDList=["bob"], mediaType=1,
                      roomId={"intRoomId": 7, "strRoomId": "abc"})
    assert reply["roomID"] == 7
    h.request("alice", "hangup", callId=reply["callId"])
    reply = h.request("alice", "calls", userIDList=["bob"], mediaType=1)
    assert isinstance(reply["roomID"], int) and reply["roomID"] > 0
