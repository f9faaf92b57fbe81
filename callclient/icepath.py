"""What aiortc's ICE does on one peer connection: the pair it chose, and a preference for
direct pairs over relayed ones.

aiortc exposes neither a ``selectedCandidatePair`` statistic nor a nomination policy; both are
reached here through aioice's :class:`~aioice.ice.Connection` of the peer connection's ICE
transport (private attributes, each access checked: if aiortc or aioice change them these
functions do nothing rather than fail a call).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aioice.ice import CandidatePair, Connection
from aiortc import RTCPeerConnection

from callclient.types import MediaPath

__all__ = ["RELAY_CHECK_DELAY", "prefer_direct", "selected_path"]

RELAY_CHECK_DELAY = 1.5
"""Seconds relay pairs wait before their first connectivity check (see :func:`prefer_direct`):
a direct pair through two NATs needs the other side's first check to open its NAT, then one
STUN retransmission (0.5 s) to get through."""


def selected_path(pc: RTCPeerConnection) -> MediaPath | None:
    """The candidate pair ``pc``'s media uses now, None before ICE has chosen one.

    This reads aioice's nominated pair of the peer connection's ICE transport (this project
    bundles everything on one). A relay's own transport is the TURN client protocol's
    ``repr`` (``turn/udp``, ``turn/tcp``; over TLS the TCP one with an SSL transport).
    """
    connections = _connections(pc)
    if not connections:
        return None
    nominated = getattr(connections[0], "_nominated", None)
    if not isinstance(nominated, dict) or not nominated:
        return None
    pair = nominated.get(1) or next(iter(nominated.values()))
    local, remote = pair.local_candidate, pair.remote_candidate
    transport = local.transport.lower()
    if local.type == "relay":
        inner = getattr(pair.protocol.transport, "_TurnTransport__inner_protocol", None)
        transport = repr(inner) if inner is not None else "turn/?"
        sock_ssl = getattr(getattr(inner, "transport", None), "get_extra_info", None)
        if transport == "turn/tcp" and sock_ssl is not None and sock_ssl("ssl_object"):
            transport = "turn/tls"
    return MediaPath(local.type, remote.type, transport, f"{local.host}:{local.port}",
                     f"{remote.host}:{remote.port}")


def _connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice connections of ``pc``'s ICE transports (one: everything is bundled)."""
    transports: Any = getattr(pc, "_RTCPeerConnection__iceTransports", ())
    found = []
    for transport in transports:
        connection = getattr(transport.iceGatherer, "_connection", None)
        if isinstance(connection, Connection):
            found.append(connection)
    return found


def prefer_direct(pc: RTCPeerConnection, delay: float = RELAY_CHECK_DELAY) -> None:
    """Make ``pc``'s ICE prefer direct pairs to relayed ones, as a browser's does.

    aioice nominates aggressively: the controlling side sends USE-CANDIDATE with every check,
    so the *first* pair that answers wins, and a relay pair often answers before a direct pair
    through two NATs (whose first check is dropped until the other side's check opens its NAT).
    Here every pair with a relay candidate waits ``delay`` before its first check; a direct
    pair that succeeds meanwhile completes ICE and the waiting relay checks are cancelled. Where
    no direct path exists the relay pairs are checked ``delay`` later. Idempotent; a no-op if
    aioice's internals are not the expected ones (the first pair then wins, as before).
    """
    for connection in _connections(pc):
        if getattr(connection, "_callclient_prefer_direct", False):
            continue
        original = connection.check_start

        async def check_start(pair: CandidatePair, original: Any = original,
                              connection: Connection = connection) -> None:
            if "relay" in (pair.local_candidate.type, pair.remote_candidate.type):
                # In progress while waiting, so the pacing timer moves on to other pairs.
                connection.check_state(pair, CandidatePair.State.IN_PROGRESS)
                await asyncio.sleep(delay)
            await original(pair)

        connection.check_start = check_start  # type: ignore[method-assign]
        connection._callclient_prefer_direct = True  # type: ignore[attr-defined]
