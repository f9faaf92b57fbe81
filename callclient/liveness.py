"""Whether a remote peer is still heard: the rule, with no I/O (the clock is an argument).

A peer connection is alive while *anything* arrives from the peer: media (RTP), its reports
(RTCP), data-channel messages (the optional ``keepalive`` channel, docs/protocol.md) or a
``keepalive`` relay. So a client that never speaks the keepalive channel, such as a browser
following only the media rules, keeps counting as alive as long as it sends media or RTCP.

:class:`Liveness` turns "heard at t" and "checked at t" into transitions: a peer silent for
``dead_after`` seconds goes *silent* once (one report however long the silence lasts), and
the next thing heard makes it *heard* again, re-arming the rule so a later silence is
reported again. Before the connection is up nothing counts: negotiation has its own timeouts.

:func:`packets_received` reads the count of datagrams received on a connection through
aiortc's public statistics.
"""

from __future__ import annotations

from typing import Any

from callclient.media.receive import AiortcInternalsChanged

__all__ = ["Liveness", "packets_received"]


class Liveness:
    """The silent/heard state of one peer; see the module docstring."""

    def __init__(self, dead_after: float) -> None:
        self.dead_after = dead_after
        self.last_heard: float | None = None
        """When the peer was last heard (None until the connection is up)."""
        self.silent = False

    @property
    def started(self) -> bool:
        """Whether the connection came up (silence counts from then on)."""
        return self.last_heard is not None

    def connected(self, now: float) -> None:
        """The connection is up: silence is measured from ``now``."""
        if self.last_heard is None:
            self.last_heard = now

    def heard(self, now: float) -> bool:
        """Something arrived at ``now``; True if this ends a reported silence."""
        if self.last_heard is None:
            return False
        self.last_heard = max(self.last_heard, now)
        if self.silent:
            self.silent = False
            return True
        return False

    def check(self, now: float) -> bool:
        """True exactly when the peer has just become silent (reported once per silence)."""
        if self.last_heard is None or self.silent:
            return False
        if now - self.last_heard > self.dead_after:
            self.silent = True
            return True
        return False


async def packets_received(pc: Any) -> int:
    """Datagrams received so far on ``pc``'s transports (RTP, RTCP, DTLS and data channels).

    Read from the ``transport`` entries of ``pc.getStats()``, which aiortc fills from its DTLS
    transports. A connection with senders or receivers whose report has no such entry means
    aiortc changed: :class:`AiortcInternalsChanged`, rather than a peer wrongly taken as silent.
    """
    report = await pc.getStats()
    counts: dict[str, int] = {}
    for stats in report.values():
        if getattr(stats, "type", "") == "transport":
            counts[str(stats.id)] = int(stats.packetsReceived or 0)
    if not counts and (pc.getSenders() or pc.getReceivers()):
        raise AiortcInternalsChanged(
            "aiortc's getStats() no longer reports 'transport' statistics with packetsReceived;"
            " update callclient.liveness"
        )
    return sum(counts.values())
