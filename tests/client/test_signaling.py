"""SignalingClient against a scripted websocket server the test drives frame by frame.

The server here is not the project's: it accepts connections into a queue and the test reads
each request and writes each reply, event, invalid frame or close itself, so every ordering
and failure the client must handle can be produced on purpose. Waits are for frames and
callbacks, never for an amount of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from callclient.errors import (
    CallError,
    ClusterUnavailableError,
    ConnectionClosedError,
    ErrorCode,
    InvalidParameterError,
    ProtocolError,
    RequestRefusedError,
    RequestRepeatedError,
    UserSigError,
)
from callclient.signaling import Credentials, SignalingClient
from callwire import protocol
from callwire.codes import CloseCode
from callwire.protocol import Event, Relay
from tests.helpers.waits import T, eventually

CREDS = Credentials(1400000001, "alice", "sig-of-alice", {"platform": "Python"})


# --------------------------------------------------------------------------- scripted server


class Peer:
    """One connection the client opened, driven by the test."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def frame(self) -> dict[str, Any]:
        """The next frame the client sent, parsed."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), T)
        except TimeoutError:
            pytest.fail(f"the client sent no frame within {T:g} s")
        value: dict[str, Any] = json.loads(raw)
        return value

    async def request(self, kind: str) -> dict[str, Any]:
        """The next frame, which must be a ``kind`` request."""
        frame = await self.frame()
        assert frame["type"] == kind, frame
        return frame

    async def send(self, *frames: str) -> None:
        """Send raw frames in order."""
        for frame in frames:
            await self.ws.send(frame)

    async def reply(self, request: dict[str, Any], data: dict[str, Any] | None = None) -> None:
        """Answer ``request`` with success."""
        await self.send(protocol.encode_reply_ok(request["id"], data or {}))

    async def refuse(self, request: dict[str, Any], code: int, message: str) -> None:
        """Answer ``request`` with an error."""
        await self.send(protocol.encode_reply_error(request["id"], code, message))

    async def event(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send an event."""
        await self.send(protocol.encode_event(name, data or {}))

    async def relay(self, sender: str, kind: str, payload: dict[str, Any]) -> None:
        """Send a relay from ``sender`` in call ``c1``."""
        await self.send(protocol.encode_relay("c1", sender, kind, payload))

    def drop(self) -> None:
        """Cut the TCP connection without a closing handshake (a network failure)."""
        transport = self.ws.transport
        assert transport is not None
        transport.abort()

    async def closed(self) -> None:
        """Wait until the client closed this connection."""
        try:
            await asyncio.wait_for(self.ws.wait_closed(), T)
        except TimeoutError:
            pytest.fail(f"the client did not close its connection within {T:g} s")


class ScriptedServer:
    """A websocket server on 127.0.0.1 that queues each connection for the test."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.server: Server | None = None

    async def _handle(self, ws: ServerConnection) -> None:
        await self.peers.put(Peer(ws))
        await ws.wait_closed()

    @property
    def url(self) -> str:
        """The server's ws:// address."""
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def accept(self) -> Peer:
        """The next connection the client opens."""
        try:
            return await asyncio.wait_for(self.peers.get(), T)
        except TimeoutError:
            pytest.fail(f"the client opened no connection within {T:g} s")


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    """A running scripted server."""
    server = ScriptedServer()
    async with serve(server._handle, "127.0.0.1", 0, compression=None) as ws_server:
        server.server = ws_server
        yield server


# --------------------------------------------------------------------------- client side


@dataclass
class Harness:
    """A client and everything its callbacks saw, in order."""

    client: SignalingClient
    log: list[tuple[Any, ...]] = field(default_factory=list)

    def entries(self, kind: str) -> list[tuple[Any, ...]]:
        """The log entries of one kind."""
        return [entry for entry in self.log if entry[0] == kind]

    async def wait(self, check: Callable[[], bool], what: str) -> None:
        """Wait until ``check`` holds."""
        await eventually(check, what, timeout=T)


MakeHarness = Callable[..., Harness]


@pytest.fixture
async def make(scripted: ScriptedServer) -> AsyncIterator[MakeHarness]:
    """Make clients of ``scripted`` whose callbacks write one log; all are closed after."""
    made: list[Harness] = []

    def factory(**kwargs: Any) -> Harness:
        harness: Harness

        def on_event(event: Event) -> None:
            harness.log.append(("event", event.name, event.data))

        def on_relay(relay: Relay) -> None:
            harness.log.append(("relay", relay.sender, relay.kind, relay.payload))

        def on_reconnected(reply: dict[str, Any]) -> None:
            harness.log.append(("reconnected", reply))

        def on_disconnected() -> None:
            harness.log.append(("disconnected",))

        settings: dict[str, Any] = {
            "on_event": on_event, "on_relay": on_relay, "on_reconnected": on_reconnected,
            "on_disconnected": on_disconnected, "request_timeout": T, **kwargs,
        }
        client = SignalingClient(settings.pop("url", scripted.url), **settings)
        harness = Harness(client)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.client.close()


async def logged_in(
    scripted: ScriptedServer, harness: Harness, reply: dict[str, Any] | None = None
) -> Peer:
    """Log ``harness`` in as alice on a new connection; returns the server side of it."""
    login = asyncio.create_task(harness.client.login(CREDS))
    peer = await scripted.accept()
    await peer.reply(await peer.request("login"), reply or {"userID": "alice"})
    await asyncio.wait_for(login, T)
    return peer


def client_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still running code of a client or of its websocket connection (not the server's)."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        frame = getattr(task.get_coro(), "cr_frame", None)
        owner = frame.f_locals.get("self") if frame is not None else None
        if task.get_name().startswith("signaling-") or isinstance(
            owner, SignalingClient | ClientConnection
        ):
            found.append(task)
    return found


async def no_client_tasks_left() -> None:
    """Wait until no task of the client (or its connection) is left running."""
    await eventually(lambda: not client_tasks(), "every client task ended")


async def _answer_requests(peer: Peer) -> None:
    """Answer every request on ``peer`` with ``{"echo": type}`` until it closes."""
    with contextlib.suppress(ConnectionClosed):
        async for raw in peer.ws:
            frame = json.loads(raw)
            await peer.reply(frame, {"echo": frame["type"]})


# --------------------------------------------------------------------------- login


async def test_login_sends_the_credentials_and_returns_the_reply_data(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """The login request carries app, user, sig, protocol version and extras; reply data back."""
    harness = make()
    login = asyncio.create_task(harness.client.login(CREDS))
    peer = await scripted.accept()
    request = await peer.request("login")
    assert request["data"] == {
        "sdkAppId": 1400000001,
        "userID": "alice",
        "userSig": "sig-of-alice",
        "protocolVersion": protocol.PROTOCOL_VERSION,
        "platform": "Python",
    }
    assert not harness.client.connected
    await peer.reply(request, {"userID": "alice", "serverTime": 12.5})
    assert await asyncio.wait_for(login, T) == {"userID": "alice", "serverTime": 12.5}
    assert harness.client.connected
    assert harness.client.user_id == "alice"


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (ErrorCode.USER_SIG_INVALID, UserSigError),
        (ErrorCode.USER_SIG_EXPIRED, UserSigError),
        (ErrorCode.UNSUPPORTED_VERSION, ProtocolError),
        (ErrorCode.PARAM_INVALID, InvalidParameterError),
        (ErrorCode.RATE_LIMITED, CallError),
    ],
)
async def test_a_refused_login_raises_the_error_class_of_its_code(
    scripted: ScriptedServer, make: MakeHarness, code: int, error_class: type[CallError]
) -> None:
    """An error reply raises its class with code and message; nothing sent before is dispatched.

    The client closes the refused connection and can try again.
    """
    harness = make()
    login = asyncio.create_task(harness.client.login(CREDS))
    peer = await scripted.accept()
    request = await peer.request("login")
    await peer.event("SDK_READY", {"userID": "alice"})
    await peer.refuse(request, code, "the server says no")
    with pytest.raises(CallError) as caught:
        await asyncio.wait_for(login, T)
    assert type(caught.value) is error_class
    assert caught.value.code == code
    assert caught.value.message == "the server says no"
    await peer.closed()
    assert harness.log == []
    assert not harness.client.connected
    await no_client_tasks_left()
    await logged_in(scripted, harness)  # a second try on the same client is allowed
    assert harness.client.connected


async def test_login_over_a_connection_lost_before_the_reply(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """A connection that ends before the login reply raises ConnectionClosedError."""
    harness = make()
    login = asyncio.create_task(harness.client.login(CREDS))
    peer = await scripted.accept()
    await peer.request("login")
    await peer.ws.close()
    with pytest.raises(ConnectionClosedError, match="login: connection lost before the reply"):
        await asyncio.wait_for(login, T)
    assert not harness.client.connected


async def test_login_to_an_unreachable_server_or_a_bad_url() -> None:
    """Nothing listening: ConnectionClosedError naming the URL; a bad URL: PARAM_INVALID."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    client = SignalingClient(f"ws://127.0.0.1:{port}", lambda e: None, lambda r: None)
    with pytest.raises(ConnectionClosedError, match=f"ws://127.0.0.1:{port}") as caught:
        await client.login(CREDS)
    assert caught.value.code == ErrorCode.SIGNALING_SEND_FAIL
    await client.close()
    bad = SignalingClient("http:/nowhere", lambda e: None, lambda r: None)
    with pytest.raises(CallError, match="bad server URL") as caught:
        await bad.login(CREDS)
    assert caught.value.code == ErrorCode.PARAM_INVALID
    await bad.close()


async def test_login_twice_is_repeated_and_login_after_close_is_refused(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """A second login while logged in is REQUEST_REPEATED; a closed client refuses login."""
    harness = make()
    await logged_in(scripted, harness)
    with pytest.raises(RequestRepeatedError):
        await harness.client.login(CREDS)
    await harness.client.close()
    with pytest.raises(ConnectionClosedError, match="closed"):
        await harness.client.login(CREDS)
    assert scripted.peers.empty()  # neither attempt opened a connection


async def test_frames_sent_with_the_login_reply_are_dispatched_after_it_in_order(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """Events and relays before the reply wait for it, then go out in arrival order.

    When they are dispatched the client is already logged in, and the frames that follow the
    reply come after them.
    """
    seen_connected: list[bool] = []
    harness: Harness

    def on_event(event: Event) -> None:
        seen_connected.append(harness.client.connected)
        harness.log.append(("event", event.name, event.data))

    harness = make(on_event=on_event)
    login = asyncio.create_task(harness.client.login(CREDS))
    peer = await scripted.accept()
    request = await peer.request("login")
    await peer.event("SDK_READY", {"n": 1})
    await peer.relay("bob", "offer", {"sdp": "v=0"})
    await peer.event("ON_CALL_RECEIVED", {"n": 2})
    await peer.reply(request, {"userID": "alice"})
    await peer.event("USER_ENTER", {"n": 3})
    await asyncio.wait_for(login, T)
    await harness.wait(lambda: len(harness.log) == 4, "four frames dispatched")
    assert harness.log == [
        ("event", "SDK_READY", {"n": 1}),
        ("relay", "bob", "offer", {"sdp": "v=0"}),
        ("event", "ON_CALL_RECEIVED", {"n": 2}),
        ("event", "USER_ENTER", {"n": 3}),
    ]
    assert seen_connected == [True, True, True]


# --------------------------------------------------------------------------- requests


async def test_a_request_returns_the_reply_data(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """The request frame has the kind, a fresh id and the keyword data; the reply data returns."""
    harness = make()
    peer = await logged_in(scripted, harness)
    call = asyncio.create_task(harness.client.request("call", userID="bob", timeout=30))
    frame = await peer.request("call")
    assert frame["data"] == {"userID": "bob", "timeout": 30}
    await peer.reply(frame, {"callId": "c1"})
    assert await asyncio.wait_for(call, T) == {"callId": "c1"}
    second = asyncio.create_task(harness.client.request("hangup", callId="c1"))
    frame2 = await peer.request("hangup")
    assert frame2["id"] != frame["id"]
    await peer.reply(frame2)
    assert await asyncio.wait_for(second, T) == {}


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (ErrorCode.REQUEST_REFUSED, RequestRefusedError),
        (ErrorCode.CALL_NOT_FOUND, RequestRefusedError),
        (ErrorCode.REQUEST_REPEATED, RequestRepeatedError),
        (ErrorCode.PARAM_INVALID, InvalidParameterError),
        (ErrorCode.INTERNAL, CallError),
    ],
)
async def test_an_error_reply_raises_the_class_of_its_code(
    scripted: ScriptedServer, make: MakeHarness, code: int, error_class: type[CallError]
) -> None:
    """An error reply raises its class with the server's code and message; the session goes on."""
    harness = make()
    peer = await logged_in(scripted, harness)
    call = asyncio.create_task(harness.client.request("accept", callId="c1"))
    await peer.refuse(await peer.request("accept"), code, "not now")
    with pytest.raises(CallError) as caught:
        await asyncio.wait_for(call, T)
    assert type(caught.value) is error_class
    assert (caught.value.code, caught.value.message) == (code, "not now")
    assert harness.client.connected


async def test_a_request_without_a_connection_raises_connection_closed(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """Before login and after close, a request fails at once and says it is not connected."""
    harness = make()
    with pytest.raises(ConnectionClosedError, match="call: not connected"):
        await harness.client.request("call", userID="bob")
    await logged_in(scripted, harness)
    await harness.client.close()
    with pytest.raises(ConnectionClosedError, match="call: not connected"):
        await harness.client.request("call", userID="bob")


async def test_on_reply_runs_before_the_frames_that_follow_the_reply(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """``on_reply`` sees the reply data before the event behind it; not run for an error."""
    harness = make()
    peer = await logged_in(scripted, harness)

    def on_reply(data: dict[str, Any]) -> None:
        harness.log.append(("reply", data))

    call = asyncio.create_task(harness.client.request("call", on_reply, userID="bob"))
    frame = await peer.request("call")
    await peer.event("USER_ENTER", {"before": True})
    await peer.reply(frame, {"callId": "c1"})
    await peer.event("USER_ACCEPT", {"after": True})
    assert await asyncio.wait_for(call, T) == {"callId": "c1"}
    await harness.wait(lambda: len(harness.log) == 3, "event, reply, event")
    assert harness.log == [
        ("event", "USER_ENTER", {"before": True}),
        ("reply", {"callId": "c1"}),
        ("event", "USER_ACCEPT", {"after": True}),
    ]
    refused = asyncio.create_task(harness.client.request("call", on_reply, userID="bob"))
    await peer.refuse(await peer.request("call"), ErrorCode.USER_OFFLINE, "bob is offline")
    with pytest.raises(CallError):
        await asyncio.wait_for(refused, T)
    assert len(harness.entries("reply")) == 1


async def test_a_failing_on_reply_is_logged_and_the_request_still_returns(
    scripted: ScriptedServer, make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in ``on_reply`` is logged; the caller still gets the reply data."""
    harness = make()
    peer = await logged_in(scripted, harness)

    def on_reply(data: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    call = asyncio.create_task(harness.client.request("call", on_reply, userID="bob"))
    await peer.reply(await peer.request("call"), {"callId": "c1"})
    with caplog.at_level(logging.ERROR, logger="callclient.signaling"):
        assert await asyncio.wait_for(call, T) == {"callId": "c1"}
    assert "reply callback failed" in caplog.text


async def test_a_request_without_a_reply_times_out_with_a_clear_message(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """No reply within ``request_timeout``: ConnectionClosedError saying so; a late reply is
    ignored and the connection goes on."""
    harness = make(request_timeout=2.0)
    peer = await logged_in(scripted, harness)
    call = asyncio.create_task(harness.client.request("call", userID="bob"))
    frame = await peer.request("call")
    with pytest.raises(ConnectionClosedError) as caught:
        await asyncio.wait_for(call, 3 * T)
    assert caught.value.message == "call: no reply within 2 s"
    assert caught.value.code == ErrorCode.SIGNALING_SEND_FAIL
    await peer.reply(frame, {"late": True})
    await peer.event("USER_ENTER", {"n": 1})
    await harness.wait(lambda: len(harness.log) == 1, "the event after the late reply")
    assert harness.log == [("event", "USER_ENTER", {"n": 1})]
    again = asyncio.create_task(harness.client.request("hangup", callId="c1"))
    await peer.reply(await peer.request("hangup"), {"ok": 1})
    assert await asyncio.wait_for(again, T) == {"ok": 1}
    assert harness.client.connected


# --------------------------------------------------------------------------- incoming frames


async def test_invalid_frames_from_the_server_are_logged_and_ignored(
    scripted: ScriptedServer, make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Each invalid frame is one warning; the frames around them and the session are unharmed."""
    harness = make()
    peer = await logged_in(scripted, harness)
    invalid = [
        "not json",
        "[1, 2]",
        json.dumps({"type": "bogus", "data": {}}),
        json.dumps({"type": "event", "data": {}}),
        json.dumps({"type": "event", "event": "X", "data": []}),
        json.dumps({"type": "relay", "data": {"callId": "c1"}}),
        json.dumps({"type": "reply", "id": 1, "ok": False}),
    ]
    with caplog.at_level(logging.WARNING, logger="callclient.signaling"):
        await peer.event("USER_ENTER", {"n": 1})
        await peer.send(*invalid)
        await peer.event("USER_LEAVE", {"n": 2})
        await harness.wait(lambda: len(harness.log) == 2, "both valid events")
    assert harness.log == [
        ("event", "USER_ENTER", {"n": 1}),
        ("event", "USER_LEAVE", {"n": 2}),
    ]
    warnings = [r for r in caplog.records if "ignoring an invalid frame" in r.getMessage()]
    assert len(warnings) == len(invalid)
    assert harness.client.connected
    call = asyncio.create_task(harness.client.request("hangup", callId="c1"))
    await peer.reply(await peer.request("hangup"))
    assert await asyncio.wait_for(call, T) == {}


async def test_an_unmatched_error_reply_is_logged(
    scripted: ScriptedServer, make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """An error reply for no pending request (e.g. to a frame the server could not read) is a
    warning with its code; unmatched success replies are dropped silently."""
    harness = make()
    peer = await logged_in(scripted, harness)
    with caplog.at_level(logging.WARNING, logger="callclient.signaling"):
        await peer.send(protocol.encode_reply_ok(777, {}))
        await peer.send(protocol.encode_reply_error(None, ErrorCode.MALFORMED_FRAME, "bad"))
        await peer.event("USER_ENTER", {})
        await harness.wait(lambda: len(harness.log) == 1, "the event")
    messages = [r.getMessage() for r in caplog.records if r.name == "callclient.signaling"]
    assert messages == ["server error 4000: bad"]


async def test_relays_and_events_are_dispatched_in_arrival_order(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """Relays go to ``on_relay`` with their fields, interleaved with events as they came."""
    harness = make()
    peer = await logged_in(scripted, harness)
    await peer.relay("bob", "offer", {"sdp": "v=0"})
    await peer.event("USER_ENTER", {"userID": "bob"})
    await peer.relay("bob", "candidate", {"candidate": ""})
    await harness.wait(lambda: len(harness.log) == 3, "three frames")
    assert harness.log == [
        ("relay", "bob", "offer", {"sdp": "v=0"}),
        ("event", "USER_ENTER", {"userID": "bob"}),
        ("relay", "bob", "candidate", {"candidate": ""}),
    ]


async def test_a_failing_callback_is_logged_and_later_frames_still_arrive(
    scripted: ScriptedServer, make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in ``on_event`` is logged; the reader goes on with the next frame."""
    names: list[str] = []

    def on_event(event: Event) -> None:
        names.append(event.name)
        if event.name == "USER_ENTER":
            raise RuntimeError("observer bug")

    harness = make(on_event=on_event)
    peer = await logged_in(scripted, harness)
    with caplog.at_level(logging.ERROR, logger="callclient.signaling"):
        await peer.event("USER_ENTER", {})
        await peer.event("USER_LEAVE", {})
        await harness.wait(lambda: len(names) == 2, "both events")
    assert names == ["USER_ENTER", "USER_LEAVE"]
    assert "signaling callback failed" in caplog.text
    assert harness.client.connected


# --------------------------------------------------------------------------- reconnection


@pytest.mark.parametrize("how", ["abort", "going_away", "internal_error"])
async def test_a_dropped_connection_fails_pending_requests_and_logs_in_again(
    scripted: ScriptedServer, make: MakeHarness, how: str
) -> None:
    """A drop fails the pending request, calls ``on_disconnected``, and the client logs in
    again with the same credentials; ``on_reconnected`` gets the new login reply."""
    harness = make()
    peer = await logged_in(scripted, harness)
    pending = asyncio.create_task(harness.client.request("call", userID="bob"))
    await peer.request("call")
    if how == "abort":
        peer.drop()
    else:
        await peer.ws.close(1001 if how == "going_away" else 1011)
    with pytest.raises(ConnectionClosedError, match="connection to the signaling server lost"):
        await asyncio.wait_for(pending, T)
    again = await scripted.accept()
    login = await again.request("login")
    assert login["data"] == {
        "sdkAppId": CREDS.sdk_app_id, "userID": CREDS.user_id, "userSig": CREDS.user_sig,
        "protocolVersion": protocol.PROTOCOL_VERSION, **CREDS.extra,
    }
    assert not harness.client.connected
    with pytest.raises(ConnectionClosedError, match="not connected"):
        await harness.client.request("hangup", callId="c1")
    await again.reply(login, {"userID": "alice", "activeCall": {"callId": "c1"}})
    await harness.wait(lambda: bool(harness.entries("reconnected")), "on_reconnected")
    assert harness.log == [
        ("disconnected",),
        ("reconnected", {"userID": "alice", "activeCall": {"callId": "c1"}}),
    ]
    assert harness.client.connected
    call = asyncio.create_task(harness.client.request("hangup", callId="c1"))
    await again.reply(await again.request("hangup"), {"done": 1})
    assert await asyncio.wait_for(call, T) == {"done": 1}
    await again.event("USER_LEAVE", {})
    await harness.wait(lambda: len(harness.log) == 3, "the event on the new connection")


async def test_reconnection_retries_until_a_login_succeeds(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """Failed attempts (connection closed before the reply, a transient error) are retried
    with the same credentials; ``on_disconnected`` and ``on_reconnected`` run once each."""
    harness = make()
    peer = await logged_in(scripted, harness)
    peer.drop()
    logins = []
    attempt = await scripted.accept()
    logins.append(await attempt.request("login"))
    await attempt.ws.close()  # no reply at all
    attempt = await scripted.accept()
    logins.append(await attempt.request("login"))
    await attempt.refuse(logins[-1], ErrorCode.SERVER_SHUTTING_DOWN, "restarting")
    attempt = await scripted.accept()
    logins.append(await attempt.request("login"))
    assert not harness.client.connected
    await attempt.reply(logins[-1], {"userID": "alice", "attempt": 3})
    await harness.wait(lambda: bool(harness.entries("reconnected")), "on_reconnected")
    assert [entry["data"] for entry in logins] == [logins[0]["data"]] * 3
    assert logins[0]["data"]["userSig"] == CREDS.user_sig
    assert harness.log == [("disconnected",), ("reconnected", {"userID": "alice", "attempt": 3})]
    assert harness.client.connected


async def test_frames_sent_with_a_relogin_reply_follow_on_reconnected(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """On a re-login, as on the first, frames that came before the reply are dispatched after
    it: ``on_reconnected`` first, then those frames in order, then the ones behind the reply."""
    harness = make()
    peer = await logged_in(scripted, harness)
    peer.drop()
    again = await scripted.accept()
    login = await again.request("login")
    await again.event("ON_CALL_RECEIVED", {"n": 1})
    await again.reply(login, {"userID": "alice"})
    await again.event("SDK_READY", {"n": 2})
    await harness.wait(lambda: len(harness.log) == 4, "disconnect, reconnect and two events")
    assert harness.log == [
        ("disconnected",),
        ("reconnected", {"userID": "alice"}),
        ("event", "ON_CALL_RECEIVED", {"n": 1}),
        ("event", "SDK_READY", {"n": 2}),
    ]


async def test_a_failing_on_disconnected_does_not_stop_the_reconnection(
    scripted: ScriptedServer, make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in ``on_disconnected`` is logged and the client still logs in again."""

    def on_disconnected() -> None:
        raise RuntimeError("observer bug")

    harness = make(on_disconnected=on_disconnected)
    peer = await logged_in(scripted, harness)
    with caplog.at_level(logging.ERROR, logger="callclient.signaling"):
        peer.drop()
        again = await scripted.accept()
        await again.reply(await again.request("login"), {"userID": "alice"})
        await harness.wait(lambda: bool(harness.entries("reconnected")), "on_reconnected")
    assert "on_disconnected callback failed" in caplog.text
    assert harness.client.connected


@pytest.mark.parametrize("code", [CloseCode.KICKED, CloseCode.SIG_EXPIRED])
async def test_a_kicked_or_expired_session_is_not_resumed(
    scripted: ScriptedServer, make: MakeHarness, code: int
) -> None:
    """Close codes 4001 and 4003 end the session: no reconnection; a new login still works."""
    harness = make()
    peer = await logged_in(scripted, harness)
    await peer.event("KICKED_OUT" if code == CloseCode.KICKED else "USER_SIG_EXPIRED", {})
    await peer.ws.close(code, "bye")
    await harness.wait(lambda: bool(harness.entries("disconnected")), "on_disconnected")
    await no_client_tasks_left()
    # With no task of the client left, nothing can reconnect later.
    assert scripted.peers.empty()
    assert [entry[0] for entry in harness.log] == ["event", "disconnected"]
    assert not harness.client.connected
    with pytest.raises(ConnectionClosedError, match="not connected"):
        await harness.client.request("hangup", callId="c1")
    await logged_in(scripted, harness)
    assert harness.client.connected


async def test_without_reconnect_a_drop_ends_the_session(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """``reconnect=False``: a drop calls ``on_disconnected`` and nothing else happens."""
    harness = make(reconnect=False)
    peer = await logged_in(scripted, harness)
    peer.drop()
    await harness.wait(lambda: bool(harness.entries("disconnected")), "on_disconnected")
    await no_client_tasks_left()
    assert scripted.peers.empty()
    assert harness.log == [("disconnected",)]


@pytest.mark.parametrize("code", [ErrorCode.USER_SIG_INVALID, ErrorCode.USER_SIG_EXPIRED])
async def test_a_refused_relogin_reports_user_sig_expired(
    scripted: ScriptedServer, make: MakeHarness, code: int
) -> None:
    """A re-login refused for the userSig is a USER_SIG_EXPIRED event; no more attempts."""
    harness = make()
    peer = await logged_in(scripted, harness)
    peer.drop()
    again = await scripted.accept()
    await again.refuse(await again.request("login"), code, "userSig expired at 12:00")
    await harness.wait(lambda: bool(harness.entries("event")), "the USER_SIG_EXPIRED event")
    await again.closed()
    await no_client_tasks_left()
    assert scripted.peers.empty()
    assert harness.log == [
        ("disconnected",),
        ("event", "USER_SIG_EXPIRED", {"msg": "userSig expired at 12:00"}),
    ]
    assert not harness.client.connected


# --------------------------------------------------------------------------- logout and close


async def test_logout_says_logout_then_closes_and_is_idempotent(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """``logout()`` sends a logout request, closes the connection and leaves no task; again
    it does nothing, and so does ``close()`` after it."""
    harness = make()
    peer = await logged_in(scripted, harness)
    answering = asyncio.create_task(_answer_requests(peer))
    await harness.client.logout()
    await peer.closed()
    await asyncio.wait_for(answering, T)
    await no_client_tasks_left()
    assert not harness.client.connected
    await harness.client.logout()
    await harness.client.close()
    assert scripted.peers.empty()
    assert harness.log == []  # a requested close is no disconnection


async def test_close_fails_pending_requests_and_is_idempotent(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """``close()`` fails a pending request, closes the connection, leaves no task; twice is fine."""
    harness = make()
    peer = await logged_in(scripted, harness)
    pending = asyncio.create_task(harness.client.request("call", userID="bob"))
    await peer.request("call")
    await harness.client.close()
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(pending, T)
    await peer.closed()
    await harness.client.close()
    await no_client_tasks_left()
    assert harness.log == []


async def test_close_during_a_relogin_stops_reconnecting(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """Closed while a re-login waits for its reply: that connection is closed too, no task is
    left, ``on_reconnected`` never runs and the client stays closed."""
    harness = make()
    peer = await logged_in(scripted, harness)
    peer.drop()
    again = await scripted.accept()
    await again.request("login")  # never answered
    await harness.client.close()
    await again.closed()
    await no_client_tasks_left()
    assert scripted.peers.empty()
    assert harness.log == [("disconnected",)]
    await harness.client.close()
    with pytest.raises(ConnectionClosedError):
        await harness.client.login(CREDS)


async def test_close_during_the_reconnect_backoff_stops_reconnecting(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """Closed while the server is unreachable and the client keeps retrying: no task is left."""
    harness = make()
    peer = await logged_in(scripted, harness)
    assert scripted.server is not None
    scripted.server.close(close_connections=False)  # stop listening: every retry fails
    peer.drop()
    await scripted.server.wait_closed()
    await harness.wait(lambda: bool(harness.entries("disconnected")), "on_disconnected")
    assert client_tasks()  # the reconnect loop is trying
    await harness.client.close()
    await no_client_tasks_left()
    assert harness.log == [("disconnected",)]
    assert scripted.peers.empty()


# --------------------------------------------------------------------------- several URLs


@pytest.fixture
async def scripted_b() -> AsyncIterator[ScriptedServer]:
    """A second scripted server (another node of a cluster)."""
    server = ScriptedServer()
    async with serve(server._handle, "127.0.0.1", 0, compression=None) as ws_server:
        server.server = ws_server
        yield server


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # released again: nothing listens there
    return f"ws://127.0.0.1:{port}"


async def test_login_goes_on_to_the_next_url_when_one_is_unreachable(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """URLs ``[dead, live]``: the login lands on the live one, which is then :attr:`url`."""
    dead = _dead_url()
    harness = make(url=[dead, scripted.url])
    assert harness.client.urls == (dead, scripted.url) and harness.client.url == dead
    await logged_in(scripted, harness)
    assert harness.client.connected and harness.client.url == scripted.url


async def test_a_login_no_url_accepts_names_every_url() -> None:
    """No URL answers: ConnectionClosedError (-1406) naming each URL and its reason."""
    urls = [_dead_url(), _dead_url()]
    client = SignalingClient(urls, lambda e: None, lambda r: None)
    with pytest.raises(ConnectionClosedError) as caught:
        await client.login(CREDS)
    assert caught.value.code == ErrorCode.SIGNALING_SEND_FAIL
    assert "no signaling server accepted" in caught.value.message
    assert all(f"{url}: cannot reach" in caught.value.message for url in urls)
    await client.close()
    with pytest.raises(InvalidParameterError, match="non-empty"):
        SignalingClient([], lambda e: None, lambda r: None)


async def test_a_cluster_unavailable_login_is_retried_until_the_server_accepts(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """Login refused with 4505 (the cluster elects its call owner): the client closes that
    connection and tries again on a new one, with the same credentials, until one accepts."""
    harness = make()
    login = asyncio.create_task(harness.client.login(CREDS))
    requests = []
    for _ in range(3):
        peer = await scripted.accept()
        requests.append(await peer.request("login"))
        await peer.refuse(requests[-1], ErrorCode.CLUSTER_UNAVAILABLE, "no call owner")
        await peer.closed()
    assert not login.done()
    peer = await scripted.accept()
    requests.append(await peer.request("login"))
    await peer.reply(requests[-1], {"userID": "alice"})
    assert await asyncio.wait_for(login, T) == {"userID": "alice"}
    assert [r["data"] for r in requests] == [requests[0]["data"]] * 4
    assert harness.client.connected


async def test_cluster_unavailable_past_the_request_timeout_raises_it(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """A 4505 that lasts beyond the request timeout: ClusterUnavailableError (code 4505)."""
    harness = make(request_timeout=0.5)
    login = asyncio.create_task(harness.client.login(CREDS))

    async def refuse_all() -> None:
        while True:
            peer = await scripted.peers.get()
            await peer.refuse(await peer.request("login"), ErrorCode.CLUSTER_UNAVAILABLE,
                              "no call owner")

    refusing = asyncio.create_task(refuse_all())
    try:
        with pytest.raises(ClusterUnavailableError, match="no call owner") as caught:
            await asyncio.wait_for(login, T)
        assert caught.value.code == ErrorCode.CLUSTER_UNAVAILABLE == 4505
    finally:
        refusing.cancel()
    assert not harness.client.connected


async def test_reconnect_attempts_rotate_through_the_urls(
    scripted: ScriptedServer, scripted_b: ScriptedServer, make: MakeHarness
) -> None:
    """Logged in on A, A drops: the next attempt goes to B; B refuses with 4505 and the one
    after goes to A again, which accepts. Each attempt is a fresh login."""
    harness = make(url=[scripted.url, scripted_b.url])
    peer = await logged_in(scripted, harness)
    peer.drop()
    on_b = await scripted_b.accept()
    await on_b.refuse(await on_b.request("login"), ErrorCode.CLUSTER_UNAVAILABLE, "electing")
    back_on_a = await scripted.accept()
    await back_on_a.reply(await back_on_a.request("login"), {"userID": "alice", "node": "a"})
    await harness.wait(lambda: bool(harness.entries("reconnected")), "on_reconnected")
    assert harness.client.url == scripted.url
    assert harness.log == [("disconnected",), ("reconnected", {"userID": "alice", "node": "a"})]
    peer = back_on_a
    peer.drop()
    on_b = await scripted_b.accept()
    await on_b.reply(await on_b.request("login"), {"userID": "alice", "node": "b"})
    await harness.wait(lambda: len(harness.entries("reconnected")) == 2, "on_reconnected")
    assert harness.client.url == scripted_b.url and harness.client.connected


async def test_a_service_restart_close_reconnects_without_the_backoff(
    scripted: ScriptedServer, make: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed with 1012 (the cluster's call owner changed): the first attempt skips the
    backoff. With the backoff made an hour long, the client is back well within the wait."""
    monkeypatch.setattr("callclient.signaling._FIRST_DELAY", 3600.0)
    harness = make()
    peer = await logged_in(scripted, harness)
    await peer.ws.close(CloseCode.SERVICE_RESTART, "call owner changed")
    again = await scripted.accept()
    await again.reply(await again.request("login"), {"userID": "alice"})
    await harness.wait(lambda: bool(harness.entries("reconnected")), "on_reconnected")
    assert harness.client.connected
    assert CloseCode.SERVICE_RESTART == 1012


async def test_a_login_on_a_connection_already_closed_is_connection_closed(
    scripted: ScriptedServer, make: MakeHarness
) -> None:
    """A node that closes a new connection at once (1012) before the login goes out: the
    failed send is a ConnectionClosedError (one more failed attempt to retry), not a crash of
    the reconnect loop."""
    harness = make()
    ws = await harness.client._open()
    server_side = await scripted.accept()
    await server_side.ws.close(CloseCode.SERVICE_RESTART, "call owner changed")
    await asyncio.wait_for(ws.wait_closed(), T)
    with pytest.raises(ConnectionClosedError, match="login: connection lost before the reply"):
        await harness.client._login_on(ws, CREDS)
