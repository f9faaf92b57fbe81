"""Bad input over real websockets: each gets its error code and harms nobody else."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callclient.errors import ErrorCode
from callwire import protocol
from callwire.codes import CloseCode
from callwire.usersig import generate_user_sig
from signaling_server.core import CoreConfig
from signaling_server.server import SignalingServer
from tests.helpers.servers import APP, KEY, new_server, sig
from tests.helpers.wsclient import WsClient

Frame = str | bytes


def req(kind: str, request_id: int | str | None, data: Any = None, **extra: Any) -> str:
    """A hand-made request frame; ``request_id`` None leaves the id out."""
    frame: dict[str, Any] = {"type": kind, "data": {} if data is None else data, **extra}
    if request_id is not None:
        frame["id"] = request_id
    return json.dumps(frame)


# (name, frame, request id the reply carries, expected error code)
LOGGED_IN_CASES: list[tuple[str, Frame, int | str | None, int]] = [
    ("non-JSON", "this is not json", None, ErrorCode.MALFORMED_FRAME),
    ("JSON array", "[1, 2, 3]", None, ErrorCode.MALFORMED_FRAME),
    ("unknown type", req("teleport", 1), 1, ErrorCode.UNKNOWN_TYPE),
    ("missing id", req("ping", None), None, ErrorCode.PARAM_INVALID),
    ("missing field", req("accept", 2), 2, ErrorCode.PARAM_INVALID),
    (
        "wrong-typed field",
        req("calls", 3, {"userIDList": ["bob"], "mediaType": "video"}),
        3,
        ErrorCode.PARAM_INVALID,
    ),
    ("unknown field", req("ping", 4, {"loud": True}), 4, ErrorCode.PARAM_INVALID),
    (
        "100 KiB frame",
        req("ping", 5, pad="x" * (100 * 1024)),
        None,
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("binary frame", b"\x00\x01\x02 not text", None, ErrorCode.MALFORMED_FRAME),
    ("binary frame holding JSON", req("ping", 8).encode(), None, ErrorCode.MALFORMED_FRAME),
    ("accept of a non-existent call", req("accept", 6, {"callId": "nope"}), 6,
     ErrorCode.CALL_NOT_FOUND),
    (
        "relay on a call one is not in",
        req("relay", 7, {"callId": "nope", "to": "bob", "kind": "offer", "payload": {}}),
        7,
        ErrorCode.CALL_NOT_FOUND,
    ),
]


def login_frame(request_id: int, user_id: str, **changes: Any) -> str:
    """A login request for ``user_id`` with some fields replaced."""
    data = {
        "sdkAppId": APP,
        "userID": user_id,
        "userSig": sig(user_id),
        "protocolVersion": protocol.PROTOCOL_VERSION,
        **changes,
    }
    return req("login", request_id, data)


OTHER_APP = APP + 1

LOGIN_CASES: list[tuple[str, Frame, int]] = [
    ("request before login", req("calls", 1, {"userIDList": ["bob"], "mediaType": 1}),
     ErrorCode.INIT_FAIL),
    ("wrong protocol major version", login_frame(1, "eve", protocolVersion="2.0"),
     ErrorCode.UNSUPPORTED_VERSION),
    ("bad userSig", login_frame(1, "eve", userSig="bm90IGEgc2ln"), ErrorCode.USER_SIG_INVALID),
    ("userSig of another user", login_frame(1, "eve", userSig=sig("alice")),
     ErrorCode.USER_SIG_INVALID),
    (
        "expired userSig",
        login_frame(
            1, "eve", userSig=generate_user_sig(APP, KEY, "eve", 10, now=time.time() - 100)
        ),
        ErrorCode.USER_SIG_EXPIRED,
    ),
    (
        "other sdkappid",
        login_frame(
            1, "eve", sdkAppId=OTHER_APP, userSig=generate_user_sig(OTHER_APP, KEY, "eve", 60)
        ),
        ErrorCode.USER_SIG_INVALID,
    ),
]


@pytest.fixture
async def server() -> AsyncIterator[SignalingServer]:
    """A server with a short reconnect grace."""
    async with new_server(core=CoreConfig(reconnect_grace_s=0.3)) as srv:
        yield srv


async def reply_to(client: WsClient, frame: Frame, request_id: int | str | None) -> Any:
    """Send ``frame`` and return the reply to it (one without an id when it had none)."""
    if request_id is not None:
        return await client.raw_request(frame, request_id)
    await client.send_raw(frame)
    async with asyncio.timeout(5):
        return await client.unmatched.get()


async def normal_call_works(server: SignalingServer, caller: str, callee: str) -> None:
    """Two fresh users can still call, answer and hang up."""
    async with (
        await WsClient.connect(server.url) as a,
        await WsClient.connect(server.url) as b,
    ):
        await a.login(caller)
        await b.login(callee)
        call_id = (await a.call("calls", {"userIDList": [callee], "mediaType": 1}))["callId"]
        await b.expect("ON_CALL_RECEIVED")
        await b.call("accept", {"callId": call_id})
        await a.expect("USER_ACCEPT")
        await b.call("hangup", {"callId": call_id})
        assert (await a.expect("ON_CALL_BEGIN"))["callId"] == call_id


async def test_each_bad_input_gets_its_error_code(server: SignalingServer) -> None:
    """Every bad frame is answered with its error code; the server keeps serving."""
    seen: dict[str, int] = {}
    async with await WsClient.connect(server.url, "mallory") as mallory:
        await mallory.login("mallory")
        for name, frame, request_id, _ in LOGGED_IN_CASES:
            reply = await reply_to(mallory, frame, request_id)
            assert not reply.ok, name
            assert reply.id == request_id, name
            seen[name] = reply.code
            assert "serverTime" in await mallory.call("ping"), f"unusable after {name}"

        # relay to someone who is not a joined participant of mallory's own call
        call_id = (await mallory.call("calls", {"userIDList": ["trent"], "mediaType": 1}))[
            "callId"
        ]
        for to in ("trent", "eve"):
            refused = await mallory.request(
                "relay", {"callId": call_id, "to": to, "kind": "offer", "payload": {}}
            )
            seen[f"relay to non-participant {to}"] = refused.code
        await mallory.call("hangup", {"callId": call_id})
        assert (await mallory.expect("ON_CALL_CANCELED"))["reason"] == "cancel"

    for name, frame, _ in LOGIN_CASES:
        async with await WsClient.connect(server.url, name) as fresh:
            reply = await fresh.raw_request(frame, 1)
            assert not reply.ok, name
            seen[name] = reply.code
            assert "serverTime" in await fresh.call("ping"), f"unusable after {name}"

    expected_codes = {name: int(code) for name, _, _, code in LOGGED_IN_CASES}
    expected_codes |= {name: int(code) for name, _, code in LOGIN_CASES}
    expected_codes["relay to non-participant trent"] = ErrorCode.PERMISSION_DENIED
    expected_codes["relay to non-participant eve"] = ErrorCode.PERMISSION_DENIED
    assert seen == expected_codes
    await normal_call_works(server, "bob", "carol")


async def test_frame_over_max_size_closes_with_1009(server: SignalingServer) -> None:
    """A frame beyond the server's ``max_size`` (128 KiB) closes that connection with 1009
    only."""
    async with (
        await WsClient.connect(server.url) as big,
        await WsClient.connect(server.url) as other,
    ):
        await big.login("big")
        await other.login("other")
        assert server.config.max_size == 128 * 1024
        await big.send_raw("x" * (server.config.max_size + 1))
        assert (await big.closed()).code == 1009
        assert "serverTime" in await other.call("ping")


async def test_flood_closes_only_the_flooder() -> None:
    """Going past the rate limit closes that connection with 4008; others are unaffected."""
    core = CoreConfig(rate_per_s=20.0, rate_burst=40.0)
    async with (
        new_server(core=core) as server,
        await WsClient.connect(server.url) as flooder,
        await WsClient.connect(server.url) as calm,
    ):
        await flooder.login("flooder")
        await calm.login("calm")
        for i in range(200):
            try:
                await flooder.send_raw(protocol.encode_request("ping", f"f{i}", {}))
            except Exception:
                break  # the server already closed it
        error = await flooder.expect("ERROR")
        assert error["code"] == ErrorCode.TOO_MANY_MESSAGES
        closed = await flooder.closed()
        assert closed.code == 4008
        for _ in range(5):
            assert "serverTime" in await calm.call("ping")
        assert server.connection_count == 1


async def slow_connection(url: str) -> WsClient:
    """A client with a tiny receive buffer, so it backs up fast once it stops reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    port = int(url.rsplit(":", 1)[1])
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await WsClient.connect(url, "slow", sock=sock, max_queue=1)


async def test_client_that_stops_reading_is_dropped() -> None:
    """A callee that stops reading is dropped once its queue overflows; others keep going."""
    core = CoreConfig(rate_per_s=10_000.0, rate_burst=10_000.0, reconnect_grace_s=0.3)
    async with (
        new_server(core=core, send_queue_limit=256 * 1024) as server,
        await WsClient.connect(server.url) as alice,
        await WsClient.connect(server.url) as carol,
    ):
        slow = await slow_connection(server.url)
        try:
            await alice.login("alice")
            await carol.login("carol")
            await slow.login("slow")
            call_id = (await alice.call("calls", {"userIDList": ["slow"], "mediaType": 1}))[
                "callId"
            ]
            await slow.expect("ON_CALL_RECEIVED")
            await slow.call("accept", {"callId": call_id})
            for name in ("USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER"):
                await alice.expect(name)
            slow.stop_reading()

            payload = {"blob": "y" * 60_000}
            refused = None
            for sent in range(1000):
                reply = await alice.request(
                    "relay",
                    {"callId": call_id, "to": "slow", "kind": "custom", "payload": payload},
                )
                if not reply.ok:
                    refused = reply
                    break
                if sent % 20 == 0:
                    async with asyncio.timeout(1):
                        assert "serverTime" in await carol.call("ping")
            assert refused is not None, "the stuck client was never dropped"
            assert refused.code == ErrorCode.USER_OFFLINE  # detached, in its grace period
            assert sent > 10  # it was accepted until the queue overflowed
            leave = await alice.expect("USER_LEAVE")
            assert (leave["userID"], leave["reason"]) == ("slow", "offline")
            assert "serverTime" in await carol.call("ping")
            assert server.connection_count == 2
        finally:
            slow.abort()
            await slow.close()


async def test_idle_connections_closed_and_capped_over_real_sockets() -> None:
    """Over real websockets: a connection that does not log in within the deadline is closed
    with 4010 after an ERROR event; past the per-address cap a new connection is closed with
    4029 while the others go on; one that logs in in time keeps working."""
    core = CoreConfig(login_timeout_s=1.0, max_connections_per_ip=3, per_ip_exempt=frozenset())
    async with new_server(core=core) as server:
        idle = await WsClient.connect(server.url, "idle")
        user = await WsClient.connect(server.url, "user")
        await user.login("dave")
        third = await WsClient.connect(server.url, "third")
        fourth = await WsClient.connect(server.url, "fourth")
        closed = await fourth.closed()
        assert (closed.code, "your address" in closed.reason) == (
            CloseCode.TOO_MANY_CONNECTIONS, True)
        error = await idle.expect("ERROR")
        assert error["code"] == ErrorCode.INIT_FAIL
        assert (await idle.closed()).code == CloseCode.LOGIN_TIMEOUT
        assert (await third.closed()).code == CloseCode.LOGIN_TIMEOUT
        assert "serverTime" in await user.call("ping")
        assert server.connection_count == 1
        await user.close()
