"""CallCore sessions: login, its refusals, kick-out, userSig expiry and logout."""

from __future__ import annotations

from typing import Any

from callclient.errors import ErrorCode
from tests.helpers.core import APP_ID, CoreHarness


def login_data(user: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sdkAppId": APP_ID,
        "userID": user,
        "userSig": f"valid:{user}",
        "protocolVersion": "1.0",
    }
    data.update(overrides)
    return data


def test_login_replies_then_sdk_ready() -> None:
    """A good login gets its reply first, then SDK_READY, and nothing else."""
    h = CoreHarness()
    conn = h.open()
    reply = h.request(conn, "login", **login_data("alice", nickname="Alice"))
    assert reply["userID"] == "alice"
    assert reply["protocolVersion"] == "1.1"
    assert reply["serverTime"] == h.now
    assert reply["userSigExpiresAt"] == h.now + 86_400
    assert "activeCall" not in reply
    assert h.events(conn) == [("SDK_READY", {"userID": "alice", "serverTime": h.now})]
    assert h.core.is_online("alice")


def test_ping_allowed_before_login() -> None:
    """ping is the one request allowed before login."""
    h = CoreHarness()
    conn = h.open()
    assert h.request(conn, "ping") == {"serverTime": h.now}


def test_bad_sig_is_refused_70002() -> None:
    """A userSig that does not verify is refused with 70002 and the user stays offline."""
    h = CoreHarness()
    conn = h.open()
    h.request(conn, "login", expect_error=ErrorCode.USER_SIG_INVALID,
              **login_data("alice", userSig="garbage"))
    assert not h.core.is_online("alice")
    assert h.events(conn) == []
    # A sig made for another user is refused too.
    h.request(conn, "login", expect_error=ErrorCode.USER_SIG_INVALID,
              **login_data("alice", userSig="valid:bob"))
    # The connection stays usable: a good login now succeeds.
    h.login("alice", conn=conn)


def test_expired_sig_is_refused_70003() -> None:
    """An expired userSig is refused with 70003."""
    h = CoreHarness()
    conn = h.open()
    h.request(conn, "login", expect_error=ErrorCode.USER_SIG_EXPIRED,
              **login_data("alice", userSig="expired"))
    assert not h.core.is_online("alice")


def test_other_sdkappid_is_refused_70002() -> None:
    """A login for another sdkAppId is refused with 70002."""
    h = CoreHarness()
    conn = h.open()
    h.request(conn, "login", expect_error=ErrorCode.USER_SIG_INVALID,
              **login_data("alice", sdkAppId=APP_ID + 1))
    assert not h.core.is_online("alice")


def test_major_version_refused_minor_accepted() -> None:
    """A different major protocol version gets 4004; a different minor is accepted."""
    h = CoreHarness()
    conn = h.open()
    h.request(conn, "login", expect_error=ErrorCode.UNSUPPORTED_VERSION,
              **login_data("alice", protocolVersion="2.0"))
    h.request(conn, "login", expect_error=ErrorCode.UNSUPPORTED_VERSION,
              **login_data("alice", protocolVersion="0.9"))
    reply = h.request(conn, "login", **login_data("alice", protocolVersion="1.7"))
    assert reply["protocolVersion"] == "1.1"


def test_double_login_on_one_connection_is_1204() -> None:
    """A second login on an already logged-in connection is -1204, even as another user."""
    h = CoreHarness()
    conn = h.open()
    h.login("alice", conn=conn)
    h.request(conn, "login", expect_error=ErrorCode.REQUEST_REPEATED, **login_data("alice"))
    h.request(conn, "login", expect_error=ErrorCode.REQUEST_REPEATED, **login_data("bob"))
    assert h.events(conn) == []
    assert not h.core.is_online("bob")


def test_request_before_login_is_1201() -> None:
    """Call requests before login are refused with -1201."""
    h = CoreHarness()
    conn = h.open()
    h.request(conn, "calls", expect_error=ErrorCode.INIT_FAIL, userIDList=["bob"], mediaType=1)
    h.request(conn, "hangup", expect_error=ErrorCode.INIT_FAIL, callId="x")
    h.request(conn, "logout", expect_error=ErrorCode.INIT_FAIL)
    assert h.core.active_calls == {}


def test_second_login_kicks_the_first() -> None:
    """A second login of the same user sends KICKED_OUT to the older connection, then
    closes it with 4001; the new one works."""
    h = CoreHarness()
    old = h.open()
    h.login("alice", conn=old)
    new = h.open()
    h.login("alice", conn=new)
    events = h.events(old)
    assert [name for name, _ in events] == ["KICKED_OUT"]
    assert events[0][1]["userID"] == "alice"
    assert h.closes[old].code == 4001
    assert old not in h.open_conns
    assert h.request(new, "ping")["serverTime"] == h.now
    # The new login is fully online: presence-based requests and invitations work.
    assert h.core.is_online("alice")
    assert h.request(new, "self_info", nickname="Al")["nickname"] == "Al"
    h.login("bob")
    h.request("bob", "calls", userIDList=["alice"], mediaType=1)
    assert h.names(new) == ["ON_CALL_RECEIVED"]


def test_multi_device_login_does_not_kick() -> None:
    """With multiDevice at login, or the multi_device request, older connections stay."""
    h = CoreHarness()
    first = h.open()
    h.login("alice", conn=first)
    second = h.open()
    h.login("alice", conn=second, multiDevice=True)
    assert first not in h.closes
    assert h.events(first) == []
    # The multi_device request enables it for later logins too.
    h.login("bob")
    assert h.request("bob", "multi_device", enable=True) == {"enabled": True}
    bob_first = h.conn("bob")
    h.login("bob")
    assert bob_first not in h.closes


def test_multi_device_both_connections_ring_and_answer_elsewhere() -> None:
    """A multi-device invitee rings on every connection; answering on one cancels the
    other with reason answered_elsewhere."""
    h = CoreHarness()
    h.login("alice")
    c1 = h.open()
    h.login("bob", conn=c1, multiDevice=True)
    c2 = h.open()
    h.login("bob", conn=c2, multiDevice=True)
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1)["callId"]
    assert h.names(c1) == ["ON_CALL_RECEIVED"]
    assert h.names(c2) == ["ON_CALL_RECEIVED"]
    h.request(c1, "accept", callId=call_id)
    assert h.names(c1) == ["ON_CALL_BEGIN", "USER_ENTER"]
    events = h.events(c2)
    assert [n for n, _ in events] == ["ON_CALL_CANCELED"]
    assert events[0][1]["reason"] == "answered_elsewhere"


def test_user_sig_expiry_during_session() -> None:
    """When the userSig expires, the connection gets USER_SIG_EXPIRED and Close 4003."""
    h = CoreHarness()
    h.sig_lifetime["alice"] = 5
    conn = h.open()
    reply = h.login("alice", conn=conn)
    assert reply["userSigExpiresAt"] == h.now + 5
    h.advance(4)
    assert h.events(conn) == []
    assert conn in h.open_conns
    h.advance(2)
    events = h.events(conn)
    assert [n for n, _ in events] == ["USER_SIG_EXPIRED"]
    assert events[0][1]["userID"] == "alice"
    assert h.closes[conn].code == 4003
    assert not h.core.is_online("alice")


def test_relogin_on_same_connection_renews_sig() -> None:
    """After logout, a new login on the same connection with a longer sig is not expired
    by the first sig's timer."""
    h = CoreHarness()
    h.sig_lifetime["alice"] = 5
    conn = h.open()
    h.login("alice", conn=conn)
    h.request(conn, "logout")
    h.sig_lifetime["alice"] = 100
    h.login("alice", conn=conn)
    h.advance(10)
    assert conn in h.open_conns
    assert h.events(conn) == []


def test_logout_leaves_the_call() -> None:
    """logout of a joined member hangs up: the peer gets USER_LEAVE then CALLING_END, and
    the connection stays open but logged out."""
    h = CoreHarness()
    h.login("alice")
    h.login("bob")
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=2)["callId"]
    h.request("bob", "accept", callId=call_id)
    h.events("alice")
    h.events("bob")
    h.advance(10)
    bob = h.conn("bob")
    assert h.request(bob, "logout") == {"userID": "bob"}
    bob_events = h.events(bob)
    assert [n for n, _ in bob_events] == ["CALLING_END"]
    alice_events = h.events("alice")
    assert [n for n, _ in alice_events] == ["USER_LEAVE", "CALLING_END"]
    assert alice_events[0][1] == {"callId": call_id, "userID": "bob", "reason": "hangup"}
    assert alice_events[1][1]["totalTime"] == 10
    assert h.records[call_id].result == "normal_end"
    assert h.core.active_calls == {}
    assert bob in h.open_conns
    assert not h.core.is_online("bob")
    h.request(bob, "calls", expect_error=ErrorCode.INIT_FAIL, userIDList=["alice"], mediaType=1)


def test_caller_logout_while_ringing_cancels() -> None:
    """The caller's logout while ringing cancels the call for the invitee."""
    h = CoreHarness()
    h.login("alice")
    h.login("bob")
    call_id = h.request("alice", "calls", userIDList=["bob"], mediaType=1)["callId"]
    h.events("bob")
    alice = h.conn("alice")
    h.request(alice, "logout")
    alice_events = h.events(alice)
    assert [n for n, _ in alice_events] == ["ON_CALL_CANCELED"]
    assert alice_events[0][1]["reason"] == "cancel"
    events = h.events("bob")
    assert [n for n, _ in events] == ["ON_CALL_CANCELED"]
    assert events[0][1]["reason"] == "cancel"
    assert h.records[call_id].result == "cancel"
