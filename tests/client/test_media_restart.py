"""A member's media connection replaced by a fresh one in the same call (mesh restart).

The NAT test (tests/system/test_nat_calls.py) kills a real path; here both engines run on
one host and the restart is asked for directly, from either side: the offerer restarts at
once, the answerer asks the offerer (a keepalive relay with ``restart``). Either way both
links move to generation 1, media keeps arriving and nobody leaves. A restart asked for while
the first negotiation is still running drops that negotiation's late relays.
"""

from __future__ import annotations

import pytest

from callclient.engine import CallEngine
from callclient.peer import PeerLink
from tests.helpers.engine import MakeParty, connect
from tests.helpers.waits import T, eventually


def _link(engine: CallEngine, user: str) -> PeerLink:
    mesh = engine._media.mesh
    assert mesh is not None
    return mesh.peers[user]


@pytest.mark.parametrize("who", ["alice", "bob"])
async def test_restart_from_either_side_keeps_the_call(make_party: MakeParty, who: str) -> None:
    alice, bob = await make_party("alice"), await make_party("bob")
    await connect(alice, bob)
    for party, remote in ((alice, "bob"), (bob, "alice")):
        await eventually(lambda p=party, r=remote: _link(p.engine, r).connected.is_set()
                         and p.engine.remote_stats[r].audio_blocks > 10,
                         f"{party.user_id}: media from {remote}")
    old = {"alice": _link(alice.engine, "bob"), "bob": _link(bob.engine, "alice")}
    marks = {p.user_id: p.rec.mark() for p in (alice, bob)}
    asking, other = (alice, "bob") if who == "alice" else (bob, "alice")
    mesh = asking.engine._media.mesh
    assert mesh is not None
    mesh.restart(other)
    for party, remote in ((alice, "bob"), (bob, "alice")):
        await eventually(lambda p=party, r=remote: _link(p.engine, r).generation == 1,
                         f"{party.user_id}'s link with {remote} restarted")
        link = _link(party.engine, remote)
        assert link is not old[party.user_id]
        await eventually(link.connected.is_set, f"{party.user_id}: new link connected")
        before = party.engine.remote_stats[remote].audio_blocks
        await eventually(
            lambda p=party, r=remote, b=before: p.engine.remote_stats[r].audio_blocks > b + 25,
            f"{party.user_id}: audio from {remote} on the new link", timeout=2 * T)
    for party in (alice, bob):
        names = party.rec.names(marks[party.user_id])
        assert "on_user_leave" not in names and "on_call_end" not in names, names
        assert "on_error" not in names, names


async def test_restart_during_the_first_negotiation(make_party: MakeParty) -> None:
    """bob asks for a restart before his first answer went out: alice's new link ignores
    that stale answer (generation 0) and connects with the restarted one."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await connect(alice, bob)
    mesh = bob.engine._media.mesh
    assert mesh is not None
    mesh.restart("alice")
    for party, remote in ((alice, "bob"), (bob, "alice")):
        await eventually(lambda p=party, r=remote: _link(p.engine, r).generation == 1
                         and _link(p.engine, r).connected.is_set(),
                         f"{party.user_id}: restarted link connected", timeout=2 * T)
    assert "on_error" not in alice.rec.names() + bob.rec.names()
