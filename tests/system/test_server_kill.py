"""The signaling server process is SIGKILLed mid-call and restarted on the same port and database.

Unlike tests/test_engine_faults.py (a graceful stop in the test's own process), here the
server is a real ``python -m signaling_server`` subprocess killed with SIGKILL: no shutdown
frames, no final records, no flush. Two CallEngines in this process (virtual devices, real
WebRTC) are in a video call when it dies:

* video frames keep arriving at both remote views for over 2 s while the server is dead;
* after a restart on the same port and database both engines log in again within 5 s of
  the restart, find the call gone and end it (``on_call_end``);
* the killed call's record (left open by the kill) is ``interrupt``, and the three calls
  finished before the kill are all still there as ``normal_end``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callclient.engine import CallEngine
from callclient.media.base import MemoryView
from callclient.media.deviceset import DeviceSet
from callclient.types import CallMediaType
from signaling_server.store import CallStore
from tests.helpers.engine import Party, Recorder, connect, frames_advance
from tests.helpers.serverproc import ServerProcess
from tests.helpers.servers import APP, sig

DEAD_FOR_S = 2.5


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A started server subprocess, stopped at the end whatever happened."""
    proc = ServerProcess(tmp_path / "records.db")
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


async def party(url: str, user_id: str) -> Party:
    """A logged-in engine with virtual devices and a recorder."""
    engine = CallEngine(url, devices=DeviceSet.virtual(user_id))
    rec = Recorder(user_id)
    engine.add_observer(rec)
    await engine.login(APP, user_id, sig(user_id))
    return Party(user_id, engine, rec)


async def test_server_sigkill_mid_call(server: ServerProcess) -> None:
    """SIGKILL mid-call: media flows while the server is dead; both engines log in again
    within 5 s of the restart; the call ends as "interrupt"; earlier records all survive."""
    alice, bob = await party(server.url, "alice"), await party(server.url, "bob")
    try:
        earlier = []
        for _ in range(3):
            earlier.append(await connect(alice, bob, CallMediaType.AUDIO))
            mark = bob.rec.mark()
            await alice.engine.hangup()
            await bob.rec.wait_for("on_call_end", start=mark)

        await alice.engine.open_camera()
        await bob.engine.open_camera()
        killed_call = await connect(alice, bob, CallMediaType.VIDEO)
        views: list[MemoryView] = [alice.view_of("bob"), bob.view_of("alice")]
        for view in views:
            await frames_advance(view)
        marks = (alice.rec.mark(), bob.rec.mark())

        await server.kill()
        killed_at = time.monotonic()
        counts = [v.count for v in views]
        await asyncio.sleep(DEAD_FOR_S)
        for view in views:
            await frames_advance(view, frames=5, timeout=2.0)
        dead_for = time.monotonic() - killed_at
        arrived = [v.count - c for v, c in zip(views, counts, strict=True)]
        assert dead_for >= 2.0
        assert min(arrived) >= 10 * DEAD_FOR_S, f"frames while the server was dead: {arrived}"
        assert alice.engine.current_call is not None and bob.engine.current_call is not None
        assert not alice.engine.connected and not bob.engine.connected

        restarted_at = time.monotonic()
        await server.start()  # same port, same database
        relogin = []
        for me, mark in zip((alice, bob), marks, strict=True):
            await me.rec.wait_for("on_call_end", start=mark, timeout=5.0)
            relogin.append(time.monotonic() - restarted_at)
            assert me.engine.connected and me.engine.current_call is None
        assert max(relogin) < 5.0, relogin
        print(f"frames while dead {arrived} in {dead_for:.1f} s; "
              f"logged in again {[round(t, 2) for t in relogin]} s after the restart")

        for me in (alice, bob):
            records = {r.call_id: r.call_result for r in await me.engine.query_recent_calls()}
            assert records == {killed_call: "interrupt", **dict.fromkeys(earlier, "normal_end")}
    finally:
        await asyncio.gather(alice.engine.close(), bob.engine.close())

    await server.stop()
    store = CallStore(str(server.db))
    try:
        killed = store.get_call(APP, killed_call)
        assert killed is not None and killed.result == "interrupt"
        assert killed.accept_ts is not None and killed.end_ts is not None
        for call_id in earlier:
            call = store.get_call(APP, call_id)
            assert call is not None and call.result == "normal_end", call_id
        assert store.open_calls() == []
    finally:
        store.close()
