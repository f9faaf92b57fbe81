"""Faults in SFU calls with real Janus subprocesses: the SFU killed mid-call, a participant
killed mid-call."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callclient.types import CallMediaType, CallParams
from signaling_server.core import CoreConfig
from signaling_server.janus_proc import JanusProcess
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty, eventually, frames_advance, sfu_transport
from tests.helpers.servers import APP, new_server, sig
from tests.helpers.waits import T

ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.helpers.engine_child"
LEAVING = ("on_user_leave", "on_call_end", "on_call_cancelled")


@pytest.fixture
async def janus_pair() -> AsyncIterator[tuple[JanusProcess, JanusProcess]]:
    async with JanusProcess() as first, JanusProcess() as second:
        yield first, second


@pytest.fixture
async def server(
    janus_pair: tuple[JanusProcess, JanusProcess],
) -> AsyncIterator[SignalingServer]:
    """The signaling server with two Janus instances."""
    urls = tuple(j.url for j in janus_pair)
    async with new_server(core=CoreConfig(sfu=urls)) as srv:
        yield srv



async def test_janus_killed_mid_call_moves_the_call_without_anyone_leaving(
    make_party: MakeParty, janus_pair: tuple[JanusProcess, JanusProcess]
) -> None:
    """SIGKILL of the call's Janus: the server moves the call to the other instance, every
    client publishes and subscribes there, media is back; nobody leaves, the call goes on."""
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
    first = sfu_transport(alice).room
    assert all(sfu_transport(p).room == first or sfu_transport(p).room.url == first.url
               for p in parties)
    hosting = next(j for j in janus_pair if j.url == first.url)
    other = next(j for j in janus_pair if j is not hosting)

    marks = [p.rec.mark() for p in parties]
    hosting.kill()
    killed_at = time.monotonic()
    for party in parties:
        await eventually(lambda party=party: sfu_transport(party).room.url == other.url,
                         f"{party.user_id} moves to the other Janus")
    await asyncio.gather(*(frames_advance(v, frames=3) for v in views))
    recovered = time.monotonic() - killed_at
    print(f"media back through the other Janus {recovered:.2f} s after the SIGKILL")
    # The target is 5 s; the bound here is generous for a loaded 2-core machine.
    assert recovered < 3 * T
    for party, mark in zip(parties, marks, strict=True):
        assert not [e for e in party.rec.events[mark:] if e.name in LEAVING], party.user_id
        assert party.engine.current_call is not None
        assert sfu_transport(party).room.epoch == first.epoch + 1


@pytest.fixture
async def child_dave(server: SignalingServer) -> AsyncIterator[asyncio.subprocess.Process]:
    """dave's engine in a subprocess that auto-accepts; logged in when the fixture returns."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", CHILD, server.url, str(APP), "dave", sig("dave"),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 3 * T)
        assert line.decode().strip() == "ready dave", f"child said {line!r}"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_participant_killed_mid_call_leaves_within_5_s(
    make_party: MakeParty, child_dave: asyncio.subprocess.Process
) -> None:
    """A participant's process dies (its Janus and signaling connections with it): the
    others get on_user_leave within 5 s and go on together."""
    alice, bob = await make_party("alice"), await make_party("bob")
    for party in (alice, bob):
        await party.engine.open_camera()
    await alice.engine.calls(["bob", "dave"], CallMediaType.VIDEO, CallParams(timeout=30))
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    for party in (alice, bob):
        await party.rec.wait_for("on_user_join", "dave")
    await asyncio.gather(frames_advance(alice.view_of("dave")),
                         frames_advance(bob.view_of("dave")))

    marks = [alice.rec.mark(), bob.rec.mark()]
    child_dave.kill()
    killed_at = time.monotonic()
    for party, mark in zip((alice, bob), marks, strict=True):
        await party.rec.wait_for("on_user_leave", "dave", start=mark, timeout=5.0)
    assert time.monotonic() - killed_at < 5.0
    await frames_advance(alice.view_of("bob"))
    assert "dave" not in sfu_transport(alice).peers


async def test_a_failed_subscriber_connection_is_replaced_without_anyone_leaving(
    make_party: MakeParty,
) -> None:
    """aioice closes a connection whose consent checks go unanswered six times in a row (a
    receiver too starved to read its socket loses the replies with its media: the 9-person
    call lost every subscriber connection ~35 s in). carol's subscriber connection closed
    that way is replaced by a new one: the others' media comes back, her publisher is kept,
    nobody leaves."""
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
    sfu = sfu_transport(carol)
    failed, publisher = sfu.subscriber_pc, sfu.publisher_pc
    assert failed is not None and publisher is not None

    marks = [p.rec.mark() for p in parties]
    # What an expired consent does (aioice's query_consent): close the ICE connection.
    ice = failed.getTransceivers()[0].receiver.transport.transport
    await ice._connection.close()
    await eventually(lambda: failed.connectionState in ("failed", "closed"),
                     "the subscriber connection fails")
    await eventually(
        lambda: sfu.subscriber_pc not in (None, failed)
        and sfu.subscriber_pc.connectionState == "connected",
        "carol subscribes again", timeout=2 * T)
    await asyncio.gather(frames_advance(carol.view_of("alice"), frames=3),
                         frames_advance(carol.view_of("bob"), frames=3),
                         frames_advance(alice.view_of("carol"), frames=3))
    assert sfu.resubscribes == 1
    assert sfu.publisher_pc is publisher  # only the broken connection was replaced
    for party, mark in zip(parties, marks, strict=True):
        assert not [e for e in party.rec.events[mark:] if e.name in LEAVING], party.user_id
