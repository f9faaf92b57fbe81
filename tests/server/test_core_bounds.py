"""The core's memory stays bounded under churn and hostile clients (issue 12).

Timers, members of a call, connections that never log in: each structure that a client can
grow is checked against the bound the core documents, through the core's entry points.
"""

from __future__ import annotations

import json

from callwire import protocol
from callwire.codes import CloseCode
from signaling_server.core import CallCore, Close, Send
from tests.helpers.core import APP_ID, START

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
    live = 3
    assert peak <= 2 * live + 65, peak
    # The three sessions that stayed logged in still get their expiry.
    out = core.tick(now + SIG_LIFETIME + 1.0)
    closed = sorted(o.conn for o in out if isinstance(o, Close))
    assert closed == [5, 6, 7]
    assert all(
        o.code == CloseCode.SIG_EXPIRED for o in out if isinstance(o, Close)
    )
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
