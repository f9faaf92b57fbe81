"""CallCore frame handling: malformed frames, the malformed-frame limit and the rate limit."""

from __future__ import annotations

import json

import pytest

from callclient.errors import ErrorCode
from tests.helpers.core import CoreHarness

MALFORMED: list[tuple[str, str | bytes, int, int | str | None]] = [
    ("not json", "{not json", ErrorCode.MALFORMED_FRAME, None),
    ("array", "[1, 2, 3]", ErrorCode.MALFORMED_FRAME, None),
    ("string", '"ping"', ErrorCode.MALFORMED_FRAME, None),
    ("unknown type", '{"type": "dance", "id": 7}', ErrorCode.UNKNOWN_TYPE, 7),
    ("missing id", '{"type": "ping"}', ErrorCode.PARAM_INVALID, None),
    ("bool id", '{"type": "ping", "id": true}', ErrorCode.PARAM_INVALID, None),
    ("data not object", '{"type": "ping", "id": "a", "data": []}', ErrorCode.PARAM_INVALID, "a"),
    ("wrong field type",
     '{"type": "calls", "id": 8, "data": {"userIDList": "bob", "mediaType": 1}}',
     ErrorCode.PARAM_INVALID, 8),
    ("missing field", '{"type": "calls", "id": 9, "data": {"mediaType": 1}}',
     ErrorCode.PARAM_INVALID, 9),
    ("unknown field", '{"type": "ping", "id": 10, "data": {"x": 1}}',
     ErrorCode.PARAM_INVALID, 10),
    ("too large", json.dumps({"type": "ping", "id": 11, "data": {"pad": "x" * 70 * 1024}}),
     ErrorCode.FRAME_TOO_LARGE, None),
    ("binary", b'{"type": "ping", "id": 12}', ErrorCode.MALFORMED_FRAME, None),
]


@pytest.mark.parametrize(("raw", "code", "request_id"),
                         [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_frame_gets_error_and_connection_stays(
    raw: str | bytes, code: int, request_id: int | str | None
) -> None:
    """Each malformed frame gets one error reply with the right code and id; the connection
    stays open and usable, before and after login."""
    h = CoreHarness()
    h.login("alice")
    conn = h.conn("alice")
    h.send_raw(conn, raw)
    frames = h.frames(conn)
    assert len(frames) == 1
    assert frames[0]["type"] == "reply"
    assert frames[0]["ok"] is False
    assert frames[0]["error"]["code"] == code
    assert frames[0]["id"] == request_id
    assert conn in h.open_conns
    assert h.request(conn, "ping")["serverTime"] == h.now
    assert h.core.is_online("alice")


def test_malformed_before_login_keeps_connection() -> None:
    """Malformed frames before login are answered too and login still works after."""
    h = CoreHarness()
    conn = h.open()
    for _, raw, code, _ in MALFORMED:
        h.send_raw(conn, raw)
        (frame,) = h.frames(conn)
        assert frame["error"]["code"] == code
    h.login("alice", conn=conn)


def test_too_many_malformed_frames_in_a_row_close_1008() -> None:
    """More than 100 malformed frames in a row close the connection with 1008; a valid
    frame in between resets the count."""
    h = CoreHarness()
    conn = h.open()
    for _ in range(100):
        h.send_raw(conn, "nope")
    h.request(conn, "ping")
    for _ in range(100):
        h.send_raw(conn, "nope")
    assert conn in h.open_conns
    h.send_raw(conn, "nope")
    assert h.closes[conn].code == 1008
    assert conn not in h.open_conns


def test_rate_limit_closes_only_the_flooding_connection() -> None:
    """500 frames at one instant: the burst (400) is answered, then ERROR 4003 and Close
    4008; another connection is unaffected and the flooder's call partner sees the normal
    grace behaviour."""
    h = CoreHarness()
    h.login("alice")
    h.login("bob")
    flooder = h.conn("alice")
    other = h.conn("bob")
    # The two logins took one token each from their own buckets.
    replies = 0
    for i in range(500):
        if flooder not in h.open_conns:
            break
        h.send_raw(flooder, json.dumps({"type": "ping", "id": i}))
    frames = h.frames(flooder)
    replies = sum(1 for f in frames if f["type"] == "reply")
    assert replies == 399
    assert frames[-1] == {"type": "event", "event": "ERROR",
                          "data": {"code": ErrorCode.TOO_MANY_MESSAGES,
                                   "msg": frames[-1]["data"]["msg"]}}
    assert h.closes[flooder].code == 4008
    assert not h.core.is_online("alice")
    assert other in h.open_conns
    assert h.request(other, "ping")["serverTime"] == h.now


def test_rate_limit_refills_over_time() -> None:
    """The bucket refills at 200/s: after draining the burst, one second later 200 more
    frames pass."""
    h = CoreHarness()
    conn = h.open()
    for i in range(400):
        h.request_frame(conn, "ping", request_id=i)
    h.advance(1)
    for i in range(200):
        h.request_frame(conn, "ping", request_id=f"r{i}")
    assert conn in h.open_conns
    h.send_raw(conn, '{"type": "ping", "id": 1}')
    assert h.closes[conn].code == 4008


def test_a_handler_bug_gets_an_internal_error_reply_and_keeps_the_connection() -> None:
    """An unexpected exception in a handler becomes a 4500 reply; the connection keeps working."""
    import json

    from signaling_server.core import CallCore, Close, Send

    core = CallCore(1, lambda sig, user, now: now + 100)
    core.open(1, 0.0)
    core.receive(1, json.dumps({"type": "login", "id": 1, "data": {
        "sdkAppId": 1, "userID": "alice", "userSig": "x", "protocolVersion": "1.0"}}), 0.0)

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    core._handlers["ping"] = broken  # a stand-in for a future bug in any handler
    out = core.receive(1, json.dumps({"type": "ping", "id": 7}), 1.0)
    replies = [json.loads(o.text) for o in out if isinstance(o, Send)]
    assert replies == [{"type": "reply", "id": 7, "ok": False,
                        "error": {"code": 4500, "message": "ping: internal server error"}}]
    assert not any(isinstance(o, Close) for o in out)
    out = core.receive(1, json.dumps({"type": "self_info", "id": 8,
                                      "data": {"nickname": "A"}}), 2.0)
    assert json.loads(out[0].text)["ok"] is True
