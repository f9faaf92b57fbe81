"""The liveness rule on a fake clock, and the packet counter it reads from aiortc."""

from __future__ import annotations

from typing import Any

import pytest

from callclient.liveness import Liveness, packets_received
from callclient.media.receive import AiortcInternalsChanged


def test_nothing_counts_before_the_connection_is_up() -> None:
    """Before ``connected`` no silence is reported and hearing changes nothing."""
    live = Liveness(dead_after=4.0)
    assert not live.started
    assert not live.check(100.0)
    assert not live.heard(100.0)
    live.connected(200.0)
    assert live.started
    assert not live.check(203.9)
    assert live.check(204.1)


def test_a_silence_is_reported_once_and_re_armed_by_the_next_packet() -> None:
    """Silent past ``dead_after``: one report however long it lasts; heard again ends it
    (``heard`` says so once), and a second silence is reported again."""
    live = Liveness(dead_after=4.0)
    live.connected(0.0)
    live.heard(1.0)
    assert not live.check(5.0)
    assert live.check(5.5) and live.silent
    assert not any(live.check(t) for t in (6.0, 10.0, 60.0))
    assert live.heard(61.0) and not live.silent
    assert not live.heard(61.5)
    assert not live.check(65.0)
    assert live.check(65.6)


def test_a_late_stamp_never_moves_last_heard_back() -> None:
    live = Liveness(dead_after=1.0)
    live.connected(10.0)
    live.heard(12.0)
    live.heard(11.0)
    assert live.last_heard == 12.0


class _Stats:
    def __init__(self, type: str, id: str, packets: int | None) -> None:
        self.type, self.id, self.packetsReceived = type, id, packets


class _FakePc:
    def __init__(self, stats: list[_Stats], senders: int = 1) -> None:
        self.stats, self.senders = stats, senders

    async def getStats(self) -> dict[str, Any]:
        return {f"s{i}": s for i, s in enumerate(self.stats)}

    def getSenders(self) -> list[object]:
        return [object()] * self.senders

    def getReceivers(self) -> list[object]:
        return []


async def test_packets_of_every_transport_are_summed() -> None:
    """Each DTLS transport's count once (aiortc repeats it per sender and receiver)."""
    pc = _FakePc([_Stats("transport", "t1", 5), _Stats("inbound-rtp", "r", 99),
                  _Stats("transport", "t1", 5), _Stats("transport", "t2", 7),
                  _Stats("transport", "t3", None)])
    assert await packets_received(pc) == 12


async def test_no_transport_statistics_means_aiortc_changed() -> None:
    """A connection with senders but no ``transport`` entry fails loudly; one with nothing
    to send or receive has nothing to count."""
    with pytest.raises(AiortcInternalsChanged, match=r"update callclient\.liveness"):
        await packets_received(_FakePc([_Stats("inbound-rtp", "r", 3)]))
    assert await packets_received(_FakePc([], senders=0)) == 0
