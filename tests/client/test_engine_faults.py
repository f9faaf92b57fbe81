"""Calls that lose a participant's process or the server mid-call end cleanly and are recorded."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callclient.errors import ErrorCode
from callclient.types import CallMediaType, CallResultType, CallRole
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty, connect, frames_advance
from tests.helpers.servers import APP, new_server, sig
from tests.helpers.waits import T

ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.helpers.engine_child"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[SignalingServer]:
    """This module's server keeps its records in a file, so a restarted server has them."""
    async with new_server(db=str(tmp_path / "records.db")) as srv:
        yield srv


@pytest.fixture
async def child_bob(server: SignalingServer) -> AsyncIterator[asyncio.subprocess.Process]:
    """bob's engine in a subprocess that auto-accepts; logged in when the fixture returns."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", CHILD, server.url, str(APP), "bob", sig("bob"),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 3 * T)
        assert line.decode().strip() == "ready bob", f"child said {line!r}"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_participant_killed_mid_call(
    make_party: MakeParty, child_bob: asyncio.subprocess.Process
) -> None:
    """SIGKILL of the callee's process: on_user_leave within 5 s, on_call_end, "interrupt"."""
    alice = await make_party("alice")
    call_id = await alice.engine.call("bob", CallMediaType.VIDEO)
    await alice.rec.wait_names(["on_call_begin", "on_user_join", "on_user_audio_available",
                                "on_user_video_available"])
    await frames_advance(alice.view_of("bob"))

    mark = alice.rec.mark()
    child_bob.kill()
    killed_at = time.monotonic()
    await alice.rec.wait_for("on_user_leave", "bob", start=mark, timeout=5.0)
    assert time.monotonic() - killed_at < 5.0
    await alice.rec.wait_names(["on_user_leave", "on_call_end"], start=mark)
    end = alice.rec.signal()[-1].args
    assert end[1:3] == (CallMediaType.VIDEO, CallRole.CALLER)
    assert alice.engine.current_call is None

    records = await alice.engine.query_recent_calls()
    assert [(r.call_id, r.call_result) for r in records] == [(call_id, "interrupt")]
    assert records[0].role is CallRole.CALLER
    assert records[0].result is CallResultType.OUTGOING


async def test_server_restarted_mid_call(make_party: MakeParty, server: SignalingServer) -> None:
    """Server restart: media goes on, both log in again within 5 s, the old call is interrupted."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await alice.engine.open_camera()
    old_call = await connect(alice, bob)
    view = bob.view_of("alice")
    await frames_advance(view)
    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()

    port = server.port
    await server.stop()
    for party, mark in ((alice, mark_a), (bob, mark_b)):
        await party.rec.wait_for("on_error", ErrorCode.SERVER_SHUTTING_DOWN, start=mark)
    # Peer-to-peer media does not need the server.
    await frames_advance(view)

    restarted = new_server(db=server.config.db, port=port)
    await restarted.start()
    try:
        started = time.monotonic()
        # Logged in again: the engines learn that their call is gone and end it.
        for party, mark in ((alice, mark_a), (bob, mark_b)):
            await party.rec.wait_for("on_call_end", start=mark, timeout=5.0)
        assert time.monotonic() - started < 5.0
        assert alice.rec.names(mark_a) == ["on_error", "on_call_end"]
        assert bob.rec.names(mark_b) == ["on_error", "on_call_end"]
        assert alice.engine.logged_in and bob.engine.logged_in
        assert alice.engine.current_call is None and bob.engine.current_call is None

        # A new call between them works, media included.
        await alice.engine.open_camera()
        new_call = await connect(alice, bob)
        assert new_call != old_call
        await frames_advance(bob.view_of("alice"))
        await alice.engine.hangup()
        await bob.rec.wait_for("on_call_end", start=mark_b + 2)

        for party, role, result in (
            (alice, CallRole.CALLER, CallResultType.OUTGOING),
            (bob, CallRole.CALLED, CallResultType.INCOMING),
        ):
            records = {r.call_id: r for r in await party.engine.query_recent_calls()}
            assert records[old_call].call_result == "interrupt"
            assert records[old_call].role is role and records[old_call].result is result
            assert records[new_call].call_result == "normal_end"
    finally:
        await asyncio.gather(alice.engine.close(), bob.engine.close())
        await restarted.stop()
