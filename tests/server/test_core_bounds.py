"""The core's memory stays bounded under churn and hostile clients (issue 12).

Timers, members of a call, connections that never log in: each structure that a client can
grow is checked against the bound the core documents, through the core's entry points.
"""

from __future__ import annotations

import json

from callwire import protocol
from callwire.codes import CloseCode, ErrorCode
from signaling_server.core import CallCore, Close, CoreConfig, Send
from tests.helpers.core import APP_ID, START, CoreHarness

SIG_LIFETIME = 180 * 86_400.0  # the default userSig lifetime


def _verify(user_sig: str, user_id: str, now: float) -> float:
    return now + SIG_LIFETIME


def _frame(kind: str, rid: int, data: dict[str, object]) -> str:
    return json.dumps({"type": kind, "id": rid, "data": data})


def _login(user: str, rid: int) -> str:
    return _frame("login", rid, {
        "sdkAppId": APP_ID, "userID": user, "userSig": "any",
        "protocolVersion": protocol.PROTOCOL_VERSION,
    })


def test_login_logout_churn_leaves_the_timer_heap_bounded() -> None:
    """100,000 login/logout cycles over 4 connections, 3 sessions staying logged in: the
    heap holds at most twice the live timers plus the rebuild threshold (before the fix it
    held one entry per login, 100,003), and the sessions that stayed still expire."""
    core = CallCore(APP_ID, _verify)
    now = START
    for conn in range(1, 8):
        core.open(conn, now, "198.51.100.1")
    for conn in (5, 6, 7):
        core.receive(conn, _login(f"stay{conn}", 1), now)
    cycles = 100_000
    peak = 0
    for i in range(cycles):
        conn = 1 + i % 4
        now += 0.01  # 1,000 s in all: under the rate limit of each connection
        out = core.receive(conn, _login(f"churn{conn}", 2 * i), now)
        assert any(isinstance(o, Send) and '"ok":true' in o.text for o in out), out
        core.receive(conn, _frame("logout", 2 * i + 1, {}), now)
        peak = max(peak, core.timer_count)
    live = 3 + 4  # three userSig timers, a login deadline per logged-out churning connection
    assert peak <= 2 * live + 65, peak
    # The three sessions that stayed logged in still get their expiry; the four churning
    # connections, logged out, their login deadline.
    out = core.tick(now + SIG_LIFETIME + 1.0)
    closes = {o.conn: o.code for o in out if isinstance(o, Close)}
    assert closes == {
        1: CloseCode.LOGIN_TIMEOUT, 2: CloseCode.LOGIN_TIMEOUT, 3: CloseCode.LOGIN_TIMEOUT,
        4: CloseCode.LOGIN_TIMEOUT,
        5: CloseCode.SIG_EXPIRED, 6: CloseCode.SIG_EXPIRED, 7: CloseCode.SIG_EXPIRED,
    }
    assert core.timer_count == 0


def test_closed_and_kicked_sessions_do_not_keep_their_timers() -> None:
    """Connections that log in and close, or are kicked by a second login, release their
    userSig timer the same way logout does."""
    core = CallCore(APP_ID, _verify)
    now = START
    for i in range(5_000):
        conn = i + 1
        core.open(conn, now, "198.51.100.2")
        core.receive(conn, _login(f"u{i % 50}", 1), now)  # the 51st login kicks the 1st
        if i % 3 == 0:
            core.closed(conn, now)
        now += 0.001
    live = core.connection_count
    assert live <= 50
    assert core.timer_count <= 2 * live + 65, (core.timer_count, live)


# --------------------------------------------------------------------------- connections


def test_connection_not_logged_in_within_the_deadline_is_closed_4010() -> None:
    """A connection that only pings is closed 10 s after it opened, with an ERROR first; one
    that logs in in time stays; after a logout the deadline starts again."""
    h = CoreHarness()
    idle = h.open()
    h.request(idle, "ping")
    h.advance(5.0)
    user = h.open()
    h.login("alice", conn=user)
    h.advance(5.1)
    assert h.closes[idle].code == CloseCode.LOGIN_TIMEOUT
    assert [f.body["data"]["code"] for f in h.inbox[idle]] == [ErrorCode.INIT_FAIL]
    h.advance(60.0)
    assert user in h.open_conns  # logged in: no deadline
    h.request(user, "logout")
    h.advance(9.9)
    assert user in h.open_conns
    h.advance(0.2)
    assert h.closes[user].code == CloseCode.LOGIN_TIMEOUT
    assert h.core.connection_count == 0


def test_login_deadline_is_configurable_and_can_be_off() -> None:
    h = CoreHarness(CoreConfig(login_timeout_s=2.0))
    conn = h.open()
    h.advance(2.0)
    assert h.closes[conn].code == CloseCode.LOGIN_TIMEOUT
    h = CoreHarness(CoreConfig(login_timeout_s=None))
    conn = h.open()
    h.advance(86_400.0)
    assert conn in h.open_conns


def test_connection_caps_per_address_and_in_all_close_4029() -> None:
    """Beyond the per-address cap a connection from that address is closed at once (others
    are not affected); beyond the total cap any is; closing one frees its place."""
    h = CoreHarness(CoreConfig(max_connections=5, max_connections_per_ip=3))
    first = [h.open("198.51.100.1") for _ in range(3)]
    extra = h.open("198.51.100.1")
    assert h.closes[extra].code == CloseCode.TOO_MANY_CONNECTIONS
    assert "your address" in h.closes[extra].reason
    assert all(c in h.open_conns for c in first)
    other = [h.open("198.51.100.2") for _ in range(2)]
    full = h.open("198.51.100.3")
    assert h.closes[full].code == CloseCode.TOO_MANY_CONNECTIONS
    assert "server full" in h.closes[full].reason
    h.disconnect(first[0])
    again = h.open("198.51.100.1")
    assert again in h.open_conns
    h.login("bob", conn=again)
    assert h.core.connection_count == 5 and all(c in h.open_conns for c in other)


def test_kicked_and_timed_out_connections_free_their_place() -> None:
    """The per-address count follows every way a session ends (logout kept, close, kick,
    login deadline, userSig expiry): 1,000 rounds through a cap of 2 never refuse."""
    h = CoreHarness(CoreConfig(max_connections_per_ip=2))
    for i in range(1_000):
        conn = h.open("192.0.2.9")
        assert conn in h.open_conns, i
        way = i % 3
        if way == 0:
            h.login("carol", conn=conn)  # kicks the previous carol, if any
        elif way == 1:
            h.advance(10.0)  # the login deadline
        else:
            h.disconnect(conn)
    assert h.core.connection_count <= 2


def test_loopback_is_exempt_from_the_per_address_cap_but_not_the_total() -> None:
    h = CoreHarness(CoreConfig(max_connections=6, max_connections_per_ip=2))
    local = [h.open("127.0.0.1") for _ in range(6)]
    assert all(c in h.open_conns for c in local)
    over = h.open("::1")
    assert h.closes[over].code == CloseCode.TOO_MANY_CONNECTIONS


# --------------------------------------------------------------------------- call members


def _two_in_a_call(h: CoreHarness) -> str:
    h.login("A")
    h.login("B")
    call_id = str(h.request("A", "calls", userIDList=["B"], mediaType=1)["callId"])
    h.request("B", "accept", callId=call_id)
    return call_id


def test_distinct_members_of_a_call_are_capped() -> None:
    """Two members inviting 7 made-up ids that time out, again and again (the issue's
    attack; the rate limit is lifted here): the call stops at MAX_CALL_MEMBERS distinct users
    with 4091, while re-inviting an earlier member still works, and the record's participant
    list stays at the cap."""
    h = CoreHarness(CoreConfig(invite_rate_per_s=1e6, invite_burst=1e6))
    call_id = _two_in_a_call(h)
    invited = 0
    refused: dict[str, object] | None = None
    for round_ in range(20):
        batch = [f"ghost{round_}_{i}" for i in range(7)]
        reply = h.request_frame("AB"[round_ % 2], "invite", {
            "callId": call_id, "userIDList": batch, "timeout": 1})
        if not reply["ok"]:
            refused = reply["error"]
            break
        invited += len(batch)
        h.advance(1.1)  # they time out
    assert refused is not None and refused["code"] == ErrorCode.CALL_MEMBER_LIMIT
    assert 2 + invited <= protocol.MAX_CALL_MEMBERS < 2 + invited + 7
    assert len(h.records[call_id].participants) == 2 + invited
    # Fitting the last places, and re-inviting a ghost, are still allowed.
    last = [f"late{i}" for i in range(protocol.MAX_CALL_MEMBERS - 2 - invited)]
    if last:
        h.request("A", "invite", callId=call_id, userIDList=last, timeout=1)
    h.advance(1.1)
    h.request("A", "invite", callId=call_id, userIDList=["ghost0_0"], timeout=1)
    h.request("A", "invite", callId=call_id, userIDList=["one_more"],
              expect_error=ErrorCode.CALL_MEMBER_LIMIT)
    assert len(h.core.active_calls[call_id].members) == protocol.MAX_CALL_MEMBERS


def test_invite_rate_per_user() -> None:
    """32 invitees at once, then one per 2 s: the 33rd within the burst is refused with 4291
    (its message says when to retry); the other member has a bucket of its own; waiting
    refills it."""
    h = CoreHarness()
    call_id = _two_in_a_call(h)
    for i in range(4):
        batch = [f"g{i}_{k}" for k in range(7)]
        h.request("A", "invite", callId=call_id, userIDList=batch, timeout=1)
        h.advance(1.0)  # they time out; 0.5 tokens come back per second
    # 28 spent, 2 refilled: 6 left.
    error = h.request("A", "invite", callId=call_id, userIDList=[f"x{k}" for k in range(7)],
                      timeout=1, expect_error=ErrorCode.INVITE_RATE_LIMITED)
    assert "retry in" in error["message"]
    h.request("B", "invite", callId=call_id, userIDList=[f"y{k}" for k in range(7)], timeout=1)
    h.advance(2.0)  # the y's time out; A has 7 tokens
    h.request("A", "invite", callId=call_id, userIDList=[f"x{k}" for k in range(7)], timeout=1)
    h.advance(1.1)  # the x's time out; 0.55 of a token back
    h.request("A", "invite", callId=call_id, userIDList=["z"],
              expect_error=ErrorCode.INVITE_RATE_LIMITED)
