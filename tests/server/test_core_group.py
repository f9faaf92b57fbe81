"""CallCore group calls: mixed outcomes, the end rule, invite/join, media type and state."""

from __future__ import annotations

from typing import Any

from callclient.errors import ErrorCode
from callclient.types import CallResultType, CallScene
from tests.helpers.core import CoreHarness


def setup(*users: str) -> CoreHarness:
    h = CoreHarness()
    for user in users:
        h.login(user)
    return h


def call(h: CoreHarness, caller: str, *callees: str, **extra: Any) -> str:
    reply = h.request(caller, "calls", userIDList=list(callees), mediaType=2, **extra)
    return str(reply["callId"])


def drain(h: CoreHarness, *users: str) -> None:
    for user in users:
        h.events(user)


def test_accept_reject_timeout_mix() -> None:
    """A calls B, C, D: B accepts, C rejects, D times out; each user's exact events; the
    call goes on between A and B, and the record and notices reflect every outcome."""
    h = setup("A", "B", "C", "D")
    call_id = call(h, "A", "B", "C", "D", timeout=10)
    assert h.events("A") == []
    for user in ("B", "C", "D"):
        events = h.events(user)
        assert [n for n, _ in events] == ["ON_CALL_RECEIVED"]
        assert events[0][1]["userIDList"] == ["B", "C", "D"]
        assert events[0][1]["isFromGroup"] is True
        assert events[0][1]["sponsor"] == "A"

    h.advance(1)
    assert h.request("B", "accept", callId=call_id)["userIDList"] == ["A", "B"]
    assert [(n, d.get("userID")) for n, d in h.events("B")] == [
        ("ON_CALL_BEGIN", None), ("USER_ENTER", "A")]
    assert [(n, d.get("userID")) for n, d in h.events("A")] == [
        ("USER_ACCEPT", "B"), ("ON_CALL_BEGIN", None), ("USER_ENTER", "B")]
    for user in ("C", "D"):
        assert h.events(user) == [("USER_ACCEPT", {"callId": call_id, "userID": "B"})]

    h.request("C", "reject", callId=call_id)
    assert [(n, d["userID"], d["reason"]) for n, d in h.events("C")] == [
        ("ON_CALL_CANCELED", "C", "reject")]
    for user in ("A", "B", "D"):
        assert h.events(user) == [("REJECT", {"callId": call_id, "userID": "C"})]

    h.advance(8.5)  # D's ring started at t=0 with a 10 s timeout; now t=9.5
    assert h.events("D") == []
    h.advance(0.5)
    for user in ("A", "B"):
        assert h.events(user) == [
            ("NO_RESP", {"callId": call_id, "sponsor": "A", "userIDList": ["D"]})]
    assert [(n, d["userID"], d["reason"]) for n, d in h.events("D")] == [
        ("ON_CALL_CANCELED", "D", "timeout")]

    # The call goes on between A and B.
    assert call_id in h.core.active_calls
    assert h.core.user_call("A") == h.core.user_call("B") == call_id
    assert h.core.user_call("C") is None and h.core.user_call("D") is None
    assert h.records[call_id].result == ""
    h.request("A", "relay", callId=call_id, to="B", kind="offer", payload={"x": 1})
    assert h.names("B") == ["relay"]

    h.advance(20)
    h.request("A", "hangup", callId=call_id)
    assert [(n, d["userID"], d["totalTime"]) for n, d in h.events("A")] == [
        ("CALLING_END", "A", 29)]
    assert [n for n, _ in h.events("B")] == ["USER_LEAVE", "CALLING_END"]
    assert h.events("C") == [] and h.events("D") == []

    record = h.records[call_id]
    assert record.result == "normal_end"
    assert record.scene == CallScene.GROUP_CALL
    assert record.callees == ["B", "C", "D"]
    assert record.accept_ts == record.start_ts + 1
    assert record.end_ts == record.start_ts + 30
    results = {u: p.result_type for u, p in record.participants.items()}
    assert results == {"A": CallResultType.OUTGOING, "B": CallResultType.INCOMING,
                       "C": CallResultType.MISSED, "D": CallResultType.MISSED}
    assert h.notice_names("A") == [
        "start_call", "call_accepted", "call_rejected", "call_missed", "call_end"]
    assert h.notice_names("B") == ["receive_call", "accept_call", "call_end"]
    assert h.notice_names("C") == ["receive_call", "reject_call"]
    assert h.notice_names("D") == ["receive_call", "not_answer_call"]


def test_third_invitee_accepts_later() -> None:
    """C accepting after B: C gets ON_CALL_BEGIN and USER_ENTER for A then B; A and B get
    USER_ACCEPT then USER_ENTER about C (no second ON_CALL_BEGIN)."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    drain(h, "A", "B", "C")
    assert h.request("C", "accept", callId=call_id)["userIDList"] == ["A", "B", "C"]
    assert [(n, d.get("userID")) for n, d in h.events("C")] == [
        ("ON_CALL_BEGIN", None), ("USER_ENTER", "A"), ("USER_ENTER", "B")]
    for user in ("A", "B"):
        assert [(n, d["userID"]) for n, d in h.events(user)] == [
            ("USER_ACCEPT", "C"), ("USER_ENTER", "C")]
    assert h.notice_names("A").count("call_accepted") == 1


def test_all_decline_caller_canceled_after_the_last() -> None:
    """Nobody answers: the caller's ON_CALL_CANCELED follows the REJECT/LINE_BUSY about the
    last invitee; the reason follows the record result (reject beats busy)."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    drain(h, "B", "C")
    h.request("B", "reject", callId=call_id)
    assert h.events("A") == [("REJECT", {"callId": call_id, "userID": "B"})]
    assert h.events("C") == [("REJECT", {"callId": call_id, "userID": "B"})]
    h.request("C", "ignore", callId=call_id)
    a_events = h.events("A")
    assert [n for n, _ in a_events] == ["LINE_BUSY", "ON_CALL_CANCELED"]
    assert (a_events[1][1]["userID"], a_events[1][1]["reason"]) == ("A", "reject")
    assert h.records[call_id].result == "reject"
    assert h.core.active_calls == {}


def test_all_decline_with_a_timeout_is_not_answer() -> None:
    """One reject and one timeout: the caller gets NO_RESP then ON_CALL_CANCELED(timeout);
    the record is not_answer."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C", timeout=5)
    drain(h, "B", "C")
    h.request("B", "reject", callId=call_id)
    drain(h, "A", "C")
    h.advance(5)
    a_events = h.events("A")
    assert [n for n, _ in a_events] == ["NO_RESP", "ON_CALL_CANCELED"]
    assert a_events[0][1]["userIDList"] == ["C"]
    assert a_events[1][1]["reason"] == "timeout"
    assert h.records[call_id].result == "not_answer"
    assert h.notice_names("A") == ["start_call", "call_rejected", "call_missed"]


def test_caller_leaves_call_continues_with_ringing_invitee() -> None:
    """A leaves while B is joined and C rings: one joined member plus a ringing one keeps
    the call alive; B gets only USER_LEAVE. When C accepts, B and C talk."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    drain(h, "A", "B", "C")
    h.request("A", "hangup", callId=call_id)
    assert h.names("A") == ["CALLING_END"]
    assert h.events("B") == [("USER_LEAVE", {"callId": call_id, "userID": "A",
                                             "reason": "hangup"})]
    assert h.events("C") == []
    assert call_id in h.core.active_calls
    assert h.core.user_call("A") is None
    h.request("C", "accept", callId=call_id)
    assert [(n, d.get("userID")) for n, d in h.events("C")] == [
        ("ON_CALL_BEGIN", None), ("USER_ENTER", "B")]
    assert [(n, d["userID"]) for n, d in h.events("B")] == [
        ("USER_ACCEPT", "C"), ("USER_ENTER", "C")]
    h.request("C", "hangup", callId=call_id)
    assert [(n, d["userID"]) for n, d in h.events("B")] == [
        ("USER_LEAVE", "C"), ("CALLING_END", "C")]
    assert h.records[call_id].result == "normal_end"
    assert h.core.active_calls == {}


def test_last_joined_leaves_ringing_invitee_canceled() -> None:
    """When no joined member remains, invitees still ringing get ON_CALL_CANCELED(cancel)."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    h.request("A", "hangup", callId=call_id)
    drain(h, "A", "B", "C")
    h.request("B", "hangup", callId=call_id)
    assert h.names("B") == ["CALLING_END"]
    assert [(n, d["userID"], d["reason"]) for n, d in h.events("C")] == [
        ("ON_CALL_CANCELED", "C", "cancel")]
    assert h.records[call_id].result == "normal_end"
    assert h.notice_names("C") == ["receive_call", "call_canceled"]
    assert h.core.active_calls == {}


def test_lone_joined_member_ends_when_last_invitee_times_out() -> None:
    """After A left, B waits for ringing C; C's timeout leaves B alone: NO_RESP then
    CALLING_END."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C", timeout=8)
    h.request("B", "accept", callId=call_id)
    h.request("A", "hangup", callId=call_id)
    drain(h, "A", "B", "C")
    h.advance(8)
    assert h.names("B") == ["NO_RESP", "CALLING_END"]
    assert h.names("C") == ["ON_CALL_CANCELED"]
    assert h.records[call_id].result == "normal_end"


def test_nine_member_limit() -> None:
    """A call holds at most 9 ringing or joined members: a 10th invite is 4090 (CALL_FULL);
    after one declines, there is room again. 9 invitees in one calls request is -1202."""
    users = [f"u{i}" for i in range(11)]
    h = setup(*users)
    h.request("u0", "calls", userIDList=users[1:10], mediaType=1,
              expect_error=ErrorCode.PARAM_INVALID)
    call_id = call(h, "u0", *users[1:9])
    h.request("u1", "accept", callId=call_id)
    drain(h, *users)
    h.request("u1", "invite", callId=call_id, userIDList=["u9"],
              expect_error=ErrorCode.CALL_FULL)
    assert h.events("u9") == []
    h.request("u2", "reject", callId=call_id)
    drain(h, *users)
    assert h.request("u1", "invite", callId=call_id, userIDList=["u9"])["userIDList"] == ["u9"]
    assert h.names("u9") == ["ON_CALL_RECEIVED"]
    # u2 (rejected) cannot join back into a full call.
    h.request("u2", "join", callId=call_id, expect_error=ErrorCode.CALL_FULL)


def test_invite_mid_call_turns_1v1_into_group() -> None:
    """Inviting into a 1v1: the new invitee gets ON_CALL_RECEIVED (group, the full list),
    the members already in the call get GROUP_CALL_INVITEE_LIST_UPDATE, the record becomes
    scene 0, invite_user names the inviter (the operating user) and receive_call the new
    invitee, in that order."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B")
    h.request("B", "accept", callId=call_id)
    drain(h, "A", "B")
    assert h.records[call_id].scene == CallScene.SINGLE_CALL
    reply = h.request("A", "invite", callId=call_id, userIDList=["C"])
    assert reply == {"callId": call_id, "userIDList": ["C"], "busyUserIDList": []}
    c_events = h.events("C")
    assert [n for n, _ in c_events] == ["ON_CALL_RECEIVED"]
    assert c_events[0][1]["userIDList"] == ["B", "C"]
    assert c_events[0][1]["isFromGroup"] is True
    assert c_events[0][1]["sponsor"] == "A"
    for user in ("A", "B"):
        assert h.events(user) == [("GROUP_CALL_INVITEE_LIST_UPDATE",
                                   {"callId": call_id, "userIDList": ["B", "C"]})]
    assert h.records[call_id].scene == CallScene.GROUP_CALL
    assert h.notice_names("C") == ["receive_call"]
    invite = [(n.event, n.user_id, n.role) for n in h.notices
              if n.event in ("invite_user", "receive_call") and n.user_id != "B"]
    assert invite == [("invite_user", "A", "caller"), ("receive_call", "C", "called")]
    # Re-inviting a ringing or joined user is -1204; a ringing member cannot invite.
    h.request("B", "invite", callId=call_id, userIDList=["C"],
              expect_error=ErrorCode.REQUEST_REPEATED)
    h.request("C", "invite", callId=call_id, userIDList=["A"],
              expect_error=ErrorCode.REQUEST_REFUSED)
    h.request("C", "accept", callId=call_id)
    assert [(n, d.get("userID")) for n, d in h.events("C")] == [
        ("ON_CALL_BEGIN", None), ("USER_ENTER", "A"), ("USER_ENTER", "B")]
    h.request("A", "hangup", callId=call_id)
    h.request("B", "hangup", callId=call_id)
    record = h.records[call_id]
    assert record.result == "normal_end"
    assert record.scene == CallScene.GROUP_CALL
    assert record.participants["C"].result_type == CallResultType.INCOMING


def test_invite_busy_user() -> None:
    """Inviting a user busy in another call lists them busy and sends LINE_BUSY to the
    members; the call goes on."""
    h = setup("A", "B", "C", "D")
    call_id = call(h, "A", "B")
    h.request("B", "accept", callId=call_id)
    other = call(h, "C", "D")
    drain(h, "A", "B", "C", "D")
    reply = h.request("A", "invite", callId=call_id, userIDList=["D"])
    assert reply["userIDList"] == [] and reply["busyUserIDList"] == ["D"]
    # The doc does not fix the order of these two; the core sends LINE_BUSY first.
    for user in ("A", "B"):
        events = h.events(user)
        assert [n for n, _ in events] == ["LINE_BUSY", "GROUP_CALL_INVITEE_LIST_UPDATE"]
        assert events[0][1]["userID"] == "D"
        assert events[1][1]["userIDList"] == ["B"]
    assert h.events("D") == []
    assert h.core.user_call("D") == other
    assert call_id in h.core.active_calls


def test_join_by_previously_rejected_member() -> None:
    """A member who rejected can join later by callId: reply with the joined list, then
    ON_CALL_BEGIN and USER_ENTER per joined member; the others get USER_ENTER only."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    h.request("C", "reject", callId=call_id)
    drain(h, "A", "B", "C")
    reply = h.request("C", "join", callId=call_id)
    assert reply["userIDList"] == ["A", "B", "C"]
    assert [(n, d.get("userID")) for n, d in h.events("C")] == [
        ("ON_CALL_BEGIN", None), ("USER_ENTER", "A"), ("USER_ENTER", "B")]
    for user in ("A", "B"):
        assert [(n, d["userID"]) for n, d in h.events(user)] == [("USER_ENTER", "C")]
    assert h.notice_names("C") == ["receive_call", "reject_call", "join_in_group_call"]
    assert h.core.user_call("C") == call_id
    h.request("A", "hangup", callId=call_id)
    h.request("B", "hangup", callId=call_id)
    assert h.records[call_id].participants["C"].result_type == CallResultType.INCOMING


def test_join_refusals() -> None:
    """join by a non-member is -1101; by a member busy in another call -1203."""
    h = setup("A", "B", "C", "D", "E")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    h.request("C", "reject", callId=call_id)
    drain(h, "A", "B", "C")
    h.request("D", "join", callId=call_id, expect_error=ErrorCode.PERMISSION_DENIED)
    call(h, "C", "E")
    h.request("C", "join", callId=call_id, expect_error=ErrorCode.REQUEST_REFUSED)
    assert h.events("A") == [] and h.events("B") == []


def test_switch_media_type() -> None:
    """switch_media_type: reply, then CALL_TYPE_CHANGED to every ringing or joined member,
    the requester included; the same type again is -1204; a ringing member is refused."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    drain(h, "A", "B", "C")
    reply = h.request("B", "switch_media_type", callId=call_id, mediaType=1)
    assert reply == {"callId": call_id, "oldCallType": 2, "newCallType": 1}
    expected = [("CALL_TYPE_CHANGED", {"callId": call_id, "oldCallType": 2, "newCallType": 1,
                                       "userID": "B"})]
    for user in ("A", "B", "C"):
        assert h.events(user) == expected
    h.request("A", "switch_media_type", callId=call_id, mediaType=1,
              expect_error=ErrorCode.REQUEST_REPEATED)
    h.request("C", "switch_media_type", callId=call_id, mediaType=2,
              expect_error=ErrorCode.REQUEST_REFUSED)
    assert h.records[call_id].media_type == 1
    h.request("C", "accept", callId=call_id)
    assert h.events("C")[0][1]["callMediaType"] == 1


def test_media_state_on_change_and_replayed_to_late_joiners() -> None:
    """media_state events go to the other joined members only when a value changes, and a
    member who joins later gets the current values right after USER_ENTER."""
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    drain(h, "A", "B", "C")
    assert h.request("A", "media_state", callId=call_id, camera=True,
                     microphone=False) == {"callId": call_id}
    assert h.events("B") == [
        ("USER_VIDEO_AVAILABLE", {"callId": call_id, "userID": "A", "isVideoAvailable": True}),
        ("USER_AUDIO_AVAILABLE", {"callId": call_id, "userID": "A", "isAudioAvailable": False}),
    ]
    assert h.events("A") == [] and h.events("C") == []
    h.request("A", "media_state", callId=call_id, camera=True, microphone=False)
    assert h.events("B") == []
    h.request("A", "media_state", callId=call_id, microphone=True)
    assert h.events("B") == [
        ("USER_AUDIO_AVAILABLE", {"callId": call_id, "userID": "A", "isAudioAvailable": True})]
    h.request("C", "media_state", callId=call_id, camera=False,
              expect_error=ErrorCode.REQUEST_REFUSED)
    h.request("C", "accept", callId=call_id)
    assert [(n, d.get("userID"), d.get("isVideoAvailable", d.get("isAudioAvailable")))
            for n, d in h.events("C")] == [
        ("ON_CALL_BEGIN", None, None),
        ("USER_ENTER", "A", None),
        ("USER_VIDEO_AVAILABLE", "A", True),
        ("USER_AUDIO_AVAILABLE", "A", True),
        ("USER_ENTER", "B", None),
    ]


def test_network_quality_to_other_joined_members() -> None:
    """network_quality reaches the other joined members only."""
    h = setup("A", "B", "C", "D")
    call_id = call(h, "A", "B", "C", "D")
    h.request("B", "accept", callId=call_id)
    h.request("C", "accept", callId=call_id)
    drain(h, "A", "B", "C", "D")
    h.request("A", "network_quality", callId=call_id, quality=3)
    expected = [("ON_USER_NETWORK_QUALITY_CHANGED",
                 {"callId": call_id, "networkQualityList": [{"userID": "A", "quality": 3}]})]
    assert h.events("B") == expected
    assert h.events("C") == expected
    assert h.events("A") == [] and h.events("D") == []
    h.request("D", "network_quality", callId=call_id, quality=1,
              expect_error=ErrorCode.REQUEST_REFUSED)


def test_self_info_changes() -> None:
    """self_info: reply, USER_INFO_CHANGED to the other ringing or joined members; the new
    nickname is used in later USER_ENTER events."""
    h = setup("A", "B", "C")
    assert h.request("A", "self_info", nickname="Ann") == {"nickname": "Ann", "avatar": ""}
    assert h.events("A") == []
    call_id = call(h, "A", "B", "C")
    assert h.events("B")[0][1]["sponsorNickname"] == "Ann"
    h.request("B", "accept", callId=call_id)
    drain(h, "A", "B", "C")
    reply = h.request("B", "self_info", nickname="Bobby", avatar="https://x/b.png")
    assert reply == {"nickname": "Bobby", "avatar": "https://x/b.png"}
    expected = [("USER_INFO_CHANGED", {"callId": call_id, "userID": "B", "nickname": "Bobby",
                                       "avatar": "https://x/b.png"})]
    assert h.events("A") == expected
    assert h.events("C") == expected
    assert h.events("B") == []
    h.request("C", "accept", callId=call_id)
    enters = {d["userID"]: d["nickname"] for n, d in h.events("C") if n == "USER_ENTER"}
    assert enters == {"A": "Ann", "B": "Bobby"}


def test_reinvited_former_members_keep_their_record_outcome() -> None:
    """Re-inviting someone who already took part keeps their record entry: a member who
    answered stays INCOMING even if the second invitation times out, and a re-invited
    caller stays the caller (role 1, OUTGOING)."""
    h = setup("A", "B", "C", "D")
    call_id = call(h, "A", "B", "C", "D")
    for user in ("B", "C", "D"):
        h.request(user, "accept", callId=call_id)
    h.request("B", "hangup", callId=call_id)
    h.request("A", "invite", callId=call_id, userIDList=["B"], timeout=5)
    h.advance(5)  # B does not answer the second invitation
    h.request("A", "hangup", callId=call_id)
    drain(h, "A", "B", "C", "D")
    h.request("C", "invite", callId=call_id, userIDList=["A"], timeout=5)
    invitation = h.events("A")
    assert [n for n, _ in invitation] == ["ON_CALL_RECEIVED"]
    assert invitation[0][1]["callRole"] == "called"
    h.request("A", "accept", callId=call_id)
    for user in ("A", "C"):
        h.request(user, "hangup", callId=call_id)  # then D is alone: the call ends
    record = h.records[call_id]
    assert record.result == "normal_end"
    assert record.caller == "A"
    assert record.callees == ["B", "C", "D"]
    assert record.participants["A"].role == 1
    assert record.participants["A"].result_type == CallResultType.OUTGOING
    for user in ("B", "C", "D"):
        assert record.participants[user].result_type == CallResultType.INCOMING, user
