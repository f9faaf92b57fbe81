"""An engine given several server URLs (a cluster's nodes) moves on when one goes away, and a
1012 close (the cluster's call owner changed) is a reconnect that keeps the call."""

from __future__ import annotations

import asyncio
import socket

import pytest

from callclient.engine import CallEngine
from callclient.errors import ErrorCode
from callwire.codes import CloseCode
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty, Recorder, connect, frames_advance
from tests.helpers.servers import APP, new_server, sig
from tests.helpers.waits import eventually


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # released again: nothing listens there
    return f"ws://127.0.0.1:{port}"


async def test_the_first_server_stopped_the_engine_logs_in_to_the_second() -> None:
    """Two servers; the engine on the first; the first stops (1001): within a few seconds the
    engine is logged in on the second, which then serves its requests."""
    async with new_server() as first, new_server() as second:
        engine = CallEngine([first.url, second.url])
        rec = Recorder("alice")
        engine.add_observer(rec)
        try:
            await engine.login(APP, "alice", sig("alice"))
            assert engine.server_url == first.url and first.connection_count == 1
            mark = rec.mark()
            await first.stop()
            await rec.wait_for("on_error", ErrorCode.SERVER_SHUTTING_DOWN, start=mark)
            await eventually(lambda: engine.connected and engine.server_url == second.url,
                             "logged in again on the second server", timeout=5.0)
            assert second.connection_count == 1
            assert await engine.query_recent_calls() == []
        finally:
            await engine.close()


async def test_login_skips_an_unreachable_first_url(server: SignalingServer) -> None:
    """URLs ``[nothing listens, live server]``: login lands on the live one."""
    engine = CallEngine([_dead_url(), server.url])
    try:
        await engine.login(APP, "alice", sig("alice"))
        assert engine.connected and engine.server_url == server.url
    finally:
        await engine.close()


async def test_a_service_restart_close_mid_call_reconnects_at_once_and_keeps_the_call(
    make_party: MakeParty, server: SignalingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server closes both members' connections with 1012, as a cluster node does when
    its call owner changes: with the reconnect backoff made an hour long, both are back
    within the reconnect grace (3 s), the call goes on without an event, media flows."""
    monkeypatch.setattr("callclient.signaling._FIRST_DELAY", 3600.0)
    alice, bob = await make_party("alice"), await make_party("bob")
    await alice.engine.open_camera()
    call_id = await connect(alice, bob)
    view = bob.view_of("alice")
    await frames_advance(view)
    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()

    ws_server = server._ws_server
    assert ws_server is not None and len(ws_server.connections) == 2
    closing = list(ws_server.connections)
    await asyncio.gather(*(ws.close(CloseCode.SERVICE_RESTART, "call owner changed")
                           for ws in closing))
    await eventually(lambda: all(ws not in ws_server.connections for ws in closing),
                     "the old connections are gone")
    await eventually(lambda: len(ws_server.connections) == 2 and alice.engine.connected
                     and bob.engine.connected, "both logged in again")

    await frames_advance(view)
    assert alice.engine.current_call is not None and alice.engine.current_call.call_id == call_id
    assert bob.engine.current_call is not None and bob.engine.current_call.call_id == call_id
    assert alice.rec.names(mark_a) == [] and bob.rec.names(mark_b) == []
    await alice.engine.hangup()
    await bob.rec.wait_for("on_call_end", start=mark_b)
