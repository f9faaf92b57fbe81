"""The SDK on a cluster of three real ``signaling-server --cluster`` processes: a video call
between engines on different nodes goes on, media and all, when a node is SIGKILLed.

Each engine is given every node's URL, its own node first (``CallEngine(server_url=[...])``):
when its node dies it logs in on the next one and resumes the call there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from callclient.types import CallMediaType
from signaling_server.devservices import LocalRedis
from tests.helpers.cluster import fresh_redis_db
from tests.helpers.engine import MakeParty, connect, frames_advance
from tests.helpers.postgres import PostgresServer, db_rows
from tests.helpers.serverproc import ServerProcess

RECOVER_WITHIN_S = 5.0


class NodeProcesses:
    """Three node processes; :attr:`url` hands each caller every URL, a different one first."""

    def __init__(self, nodes: list[ServerProcess]) -> None:
        self.nodes = nodes
        self._turn = 1  # the first party starts on node 2, the next on node 3 (node 1 leads)

    @property
    def url(self) -> list[str]:
        urls = [node.url for node in self.nodes]
        first, self._turn = self._turn, (self._turn + 1) % len(urls)
        return urls[first:] + urls[:first]


@pytest.fixture
async def server(postgres: PostgresServer, redis_server: LocalRedis,
                 request: pytest.FixtureRequest) -> AsyncIterator[NodeProcesses]:
    """Overrides the single server of tests/conftest.py: ``make_party`` uses this one."""
    redis_url = fresh_redis_db(redis_server, 12)
    db = postgres.new_database()
    nodes = [ServerProcess(db, "--cluster", redis_url, "--node-name", f"n{i + 1}")
             for i in range(3)]
    try:
        await nodes[0].start()
        await asyncio.sleep(0.8)
        await asyncio.gather(*(node.start() for node in nodes[1:]))
        await asyncio.sleep(0.8)
        yield NodeProcesses(nodes)
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


@pytest.mark.parametrize("victim", ["leader", "caller's node"])
async def test_a_call_survives_a_node_killed(
    make_party: MakeParty, server: NodeProcesses, postgres: PostgresServer, victim: str,
) -> None:
    """A node SIGKILLed mid-call: the engines that lose their signaling log in again on
    another node within 5 s and keep the call (no on_call_end, the same call id); video keeps
    flowing meanwhile; the hangup afterwards ends it for both with one normal record."""
    alice = await make_party("alice")  # on node 2
    bob = await make_party("bob")  # on node 3
    await alice.engine.open_camera()
    call_id = await connect(alice, bob, CallMediaType.VIDEO)
    view = bob.view_of("alice")
    await frames_advance(view)
    marks = {p.user_id: p.rec.mark() for p in (alice, bob)}

    killed = server.nodes[0] if victim == "leader" else server.nodes[1]
    killed_at = time.monotonic()
    await killed.kill()
    deadline = killed_at + RECOVER_WITHIN_S
    affected = [alice, bob] if victim == "leader" else [alice]
    lost: set[str] = set()
    while len(lost) < len(affected) or not all(p.engine.connected for p in affected):
        # Each affected engine loses its signaling (its node died, or the new leader's
        # node closed its connection with 1012), then is back on another node.
        lost |= {p.user_id for p in affected if not p.engine.connected}
        assert time.monotonic() < deadline, f"not all back within 5 s (lost: {lost})"
        await asyncio.sleep(0.02)
    await frames_advance(view)  # media is peer to peer: it did not wait for signaling
    await asyncio.sleep(0.5)  # the login replies' activeCall are applied
    for party in (alice, bob):
        assert party.engine.current_call is not None
        assert party.engine.current_call.call_id == call_id
        assert "on_call_end" not in party.rec.names(marks[party.user_id])
    await frames_advance(view)

    await alice.engine.hangup()
    await bob.rec.wait_for("on_call_end", start=marks["bob"], timeout=10.0)
    rows = db_rows(server.nodes[1].db, "SELECT call_id, result FROM calls")  # type: ignore[arg-type]
    assert rows == [(call_id, "normal_end")]
