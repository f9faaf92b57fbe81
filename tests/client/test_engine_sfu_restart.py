"""The only Janus of the server SIGKILLed and started again: the call's room is made anew
there and the clients come back to it, nobody leaving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from callclient.types import CallMediaType, CallParams
from signaling_server.core import CoreConfig
from signaling_server.janus_proc import JanusProcess
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty, eventually, frames_advance, sfu_transport
from tests.helpers.servers import new_server
from tests.helpers.waits import T


@pytest.fixture
async def janus() -> AsyncIterator[JanusProcess]:
    async with JanusProcess() as process:
        yield process


@pytest.fixture
async def server(janus: JanusProcess) -> AsyncIterator[SignalingServer]:
    async with new_server(core=CoreConfig(sfu=(janus.url,), sfu_wait_s=20.0)) as srv:
        yield srv



async def test_the_only_janus_restarted_mid_call(
    make_party: MakeParty, janus: JanusProcess
) -> None:
    """SIGKILL, then start again on the same port: room epoch 2 there, media back, no leave."""
    parties = [await make_party(u) for u in ("alice", "bob", "carol")]
    for party in parties:
        await party.engine.open_camera()
    alice, bob, carol = parties
    await alice.engine.calls(["bob", "carol"], CallMediaType.VIDEO, CallParams(timeout=30))
    for party in (bob, carol):
        await party.rec.wait_for("on_call_received")
        await party.engine.accept()
    views = [p.view_of(q.user_id) for p in parties for q in parties if p is not q]
    await asyncio.gather(*(frames_advance(v, frames=3) for v in views))

    marks = [p.rec.mark() for p in parties]
    janus.kill()
    killed_at = time.monotonic()
    await asyncio.sleep(1.5)  # the server notices (two missed health checks)
    await janus.start()  # same port, same configuration
    for party in parties:
        await eventually(lambda party=party: sfu_transport(party).room.epoch == 2,
                         f"{party.user_id} gets the re-created room", timeout=3 * T)
    await asyncio.gather(*(frames_advance(v, frames=3) for v in views))
    print(f"media back {time.monotonic() - killed_at:.2f} s after the SIGKILL (restart included)")
    for party, mark in zip(parties, marks, strict=True):
        assert not [e for e in party.rec.events[mark:]
                    if e.name in ("on_user_leave", "on_call_end")], party.user_id
        assert party.engine.current_call is not None
