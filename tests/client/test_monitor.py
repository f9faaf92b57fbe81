"""CallMonitor driven by hand: audio blocks of known level, scripted statistics, a fake clock.

The monitor's clock is a :class:`FakeClock` the test sets, so levels, staleness, DOWN and the
report schedule depend only on the times the test chooses. Its peers are
:class:`ScriptedStats` objects whose ``getStats()`` waits for the test to hand over a report,
so the test runs the quality loop one sample at a time and counts reports per sample; it
never waits for an amount of time.
"""

from __future__ import annotations

import asyncio
import datetime
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCStatsReport,
)

from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE
from callclient.monitor import CallMonitor
from callclient.observer import Notification
from callclient.types import NetworkQuality, NetworkQualityInfo
from tests.helpers.waits import T, eventually

Q = NetworkQuality
VOLUME = "on_user_voice_volume_changed"
QUALITY = "on_user_network_quality_changed"


class FakeClock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sine(level_db: float) -> npt.NDArray[np.int16]:
    """One 20 ms block of a 1 kHz sine ``level_db`` below full scale."""
    t = np.arange(BLOCK_SAMPLES) / SAMPLE_RATE
    amplitude = 32767.0 * 10.0 ** (level_db / 20.0)
    return np.round(amplitude * np.sin(2 * math.pi * 1000.0 * t)).astype(np.int16)


SILENCE = np.zeros(BLOCK_SAMPLES, dtype=np.int16)


class ScriptedStats:
    """A peer connection's ``getStats``: each call waits until the test answers it."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[asyncio.Future[RTCStatsReport]] = asyncio.Queue()

    async def getStats(self) -> RTCStatsReport:  # aiortc's method name
        future: asyncio.Future[RTCStatsReport] = asyncio.get_running_loop().create_future()
        self.calls.put_nowait(future)
        return await future

    async def next_call(self) -> asyncio.Future[RTCStatsReport]:
        """The monitor's next ``getStats()`` call, once it is made."""
        try:
            return await asyncio.wait_for(self.calls.get(), T)
        except TimeoutError:
            pytest.fail(f"the monitor read no statistics within {T:g} s")


_STAMP = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def report(
    received: int,
    lost: int = 0,
    *,
    jitter: int = 0,
    receiver_report: tuple[int, float] | None = None,
    rtt: float = 0.05,
) -> RTCStatsReport:
    """Statistics of one link: ``received``/``lost`` audio packets from the peer so far, and,
    with ``receiver_report=(n, fraction_lost)``, the peer's n-th receiver report about us."""
    stats = RTCStatsReport()
    stats.add(RTCInboundRtpStreamStats(
        timestamp=_STAMP, type="inbound-rtp", id="in-audio", ssrc=1, kind="audio",
        transportId="t", packetsReceived=received, packetsLost=lost, jitter=jitter,
    ))
    if receiver_report is not None:
        number, fraction = receiver_report
        stats.add(RTCRemoteInboundRtpStreamStats(
            timestamp=_STAMP + datetime.timedelta(seconds=number), type="remote-inbound-rtp",
            id="rr-audio", ssrc=2, kind="audio", transportId="t", packetsReceived=number * 50,
            packetsLost=0, jitter=0, roundTripTime=rtt, fractionLost=round(fraction * 256),
        ))
    return stats


@dataclass
class Harness:
    """A monitor with a fake clock, what it fired and what it sent as our uplink."""

    monitor: CallMonitor
    clock: FakeClock
    fired: list[tuple[str, Any]] = field(default_factory=list)
    uplinks: list[NetworkQuality] = field(default_factory=list)
    peers: dict[str, ScriptedStats] = field(default_factory=dict)
    pending: dict[str, asyncio.Future[RTCStatsReport]] = field(default_factory=dict)

    def of(self, name: str) -> list[Any]:
        """The arguments of every ``name`` callback so far."""
        return [args for fired, args in self.fired if fired == name]

    def add_peer(self, user_id: str) -> ScriptedStats:
        """A remote user whose statistics the test scripts."""
        stats = ScriptedStats()
        self.peers[user_id] = stats
        self.monitor.add_peer(user_id, stats)  # type: ignore[arg-type]
        return stats

    async def sample(self, at: float, **reports: RTCStatsReport | Exception) -> None:
        """Run one sample at ``at``: each peer named gets its report (or fails), in join order;
        returns when the monitor has finished with that sample (it asks for the next one)."""
        for user_id in reports:
            future = self.pending.pop(user_id, None) or await self.peers[user_id].next_call()
            self.clock.now = at
            answer = reports[user_id]
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        first = next(iter(self.peers))
        self.pending[first] = await self.peers[first].next_call()

    async def volume_after_now(self) -> dict[str, int]:
        """The first volume map fired after this call (so computed from the current inputs)."""
        count = len(self.of(VOLUME))
        await eventually(lambda: len(self.of(VOLUME)) > count, "a volume report")
        volumes: dict[str, int] = self.of(VOLUME)[count]
        return volumes


MakeHarness = Callable[..., Harness]


@pytest.fixture
async def make() -> AsyncIterator[MakeHarness]:
    """Make started monitors for alice (stopped after); keyword arguments go to CallMonitor."""
    made: list[Harness] = []

    def factory(**kwargs: Any) -> Harness:
        clock = FakeClock()
        harness: Harness

        def fire(notification: Notification) -> None:
            args = notification.args
            harness.fired.append((notification.callback, args[0] if len(args) == 1 else args))

        async def send_uplink(quality: NetworkQuality) -> None:
            harness.uplinks.append(quality)

        send = kwargs.pop("send_uplink", send_uplink)
        settings: dict[str, Any] = {"volume_interval": 3600.0, "sample_interval": 0.001,
                                    "clock": clock, **kwargs}
        harness = Harness(CallMonitor("alice", fire, send, **settings), clock)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.monitor.stop()


def monitor_tasks(monitor: CallMonitor) -> list[asyncio.Task[Any]]:
    """The monitor's running tasks (named after its user)."""
    names = {f"volume {monitor.local_id}", f"quality {monitor.local_id}"}
    return [t for t in asyncio.all_tasks() if t.get_name() in names and not t.done()]


# --------------------------------------------------------------------------- volume


async def test_volume_reports_map_every_user_to_its_level(make: MakeHarness) -> None:
    """Each report has the local user then every remote user in join order, 0..100:
    full scale 100, -30 dB 50, silence and a user with no audio 0."""
    harness = make(volume_interval=0.001)
    monitor = harness.monitor
    for user in ("bob", "carol", "dave"):
        monitor.add_peer(user, ScriptedStats())  # type: ignore[arg-type]
    monitor.start()
    assert await harness.volume_after_now() == {"alice": 0, "bob": 0, "carol": 0, "dave": 0}
    monitor.local_audio(sine(0.0))
    monitor.remote_audio("bob", sine(-30.0))
    monitor.remote_audio("carol", SILENCE)
    volumes = await harness.volume_after_now()
    assert list(volumes) == ["alice", "bob", "carol", "dave"]
    assert volumes == {"alice": 100, "bob": 50, "carol": 0, "dave": 0}
    monitor.remote_audio("carol", sine(-75.0))  # below the -60 dB floor
    assert (await harness.volume_after_now())["carol"] == 0
    assert all(isinstance(v, int) and 0 <= v <= 100 for m in harness.of(VOLUME) for v in m.values())


async def test_a_muted_user_reads_zero_at_once(make: MakeHarness) -> None:
    """``audio_muted`` drops the user's level to 0 in the next report, local or remote; audio
    after it counts again."""
    harness = make(volume_interval=0.001)
    monitor = harness.monitor
    monitor.add_peer("bob", ScriptedStats())  # type: ignore[arg-type]
    monitor.start()
    monitor.local_audio(sine(0.0))
    monitor.remote_audio("bob", sine(0.0))
    assert await harness.volume_after_now() == {"alice": 100, "bob": 100}
    monitor.audio_muted("alice")
    monitor.audio_muted("bob")
    assert await harness.volume_after_now() == {"alice": 0, "bob": 0}
    monitor.remote_audio("bob", sine(-30.0))
    assert await harness.volume_after_now() == {"alice": 0, "bob": 50}


async def test_levels_fall_by_the_release_rate_and_go_stale(make: MakeHarness) -> None:
    """By the monitor's clock: a quieter block 0.1 s after a loud one reads 100 - 15; a user
    who sent nothing for more than 0.5 s reads 0."""
    harness = make(volume_interval=0.001)
    monitor, clock = harness.monitor, harness.clock
    monitor.start()
    monitor.local_audio(sine(0.0))
    clock.now += 0.1
    monitor.local_audio(SILENCE)
    assert (await harness.volume_after_now())["alice"] == 85
    clock.now += 0.6
    assert (await harness.volume_after_now())["alice"] == 0


async def test_a_user_who_left_is_no_longer_reported(make: MakeHarness) -> None:
    """``remove_peer`` takes the user out of both reports; others stay."""
    harness = make(volume_interval=0.001)
    monitor = harness.monitor
    harness.add_peer("bob")
    monitor.add_peer("carol", ScriptedStats())  # type: ignore[arg-type]
    monitor.start()
    monitor.remote_audio("bob", sine(0.0))
    assert await harness.volume_after_now() == {"alice": 0, "bob": 100, "carol": 0}
    monitor.remove_peer("bob")
    assert await harness.volume_after_now() == {"alice": 0, "carol": 0}
    assert [info.user_id for info in monitor.quality_list()] == ["alice", "carol"]
    monitor.remove_peer("nobody")  # unknown users are ignored


# --------------------------------------------------------------------------- network quality


async def test_quality_is_rated_from_statistics_and_reported_every_interval(
    make: MakeHarness,
) -> None:
    """Counters rate the downlink, receiver reports the uplink; a report lists the local
    uplink and each remote user, once per ``quality_interval`` of the clock, and our uplink is
    sent to the others with each report."""
    harness = make(quality_interval=2.0)
    harness.add_peer("bob")
    harness.monitor.start()
    t0 = harness.clock.now
    await harness.sample(t0 + 0.1, bob=report(50, receiver_report=(1, 0.0)))
    await harness.sample(t0 + 1.2, bob=report(100, receiver_report=(1, 0.0)))
    assert harness.of(QUALITY) == []  # not yet an interval
    await harness.sample(t0 + 2.05, bob=report(110, receiver_report=(2, 0.0)))
    assert harness.of(QUALITY) == [
        [NetworkQualityInfo("alice", Q.EXCELLENT), NetworkQualityInfo("bob", Q.EXCELLENT)]
    ]
    assert harness.uplinks == [Q.EXCELLENT]
    await harness.sample(t0 + 2.5, bob=report(120, receiver_report=(2, 0.0)))
    assert len(harness.of(QUALITY)) == 1  # the next one is due at t0 + 4.05
    # Since the last rating (t0 + 1.2): 10 of 60 packets from bob lost; bob's report about us
    # says about 10 % lost.
    await harness.sample(t0 + 3.3, bob=report(150, 10, receiver_report=(3, 0.1)))
    await harness.sample(t0 + 4.1, bob=report(160, 10, receiver_report=(3, 0.1)))
    assert harness.of(QUALITY)[1] == [
        NetworkQualityInfo("alice", Q.BAD), NetworkQualityInfo("bob", Q.VBAD)
    ]
    assert harness.uplinks == [Q.EXCELLENT, Q.BAD]


async def test_a_remote_users_reported_uplink_counts_when_worse(make: MakeHarness) -> None:
    """A remote user's quality is the worse of what we receive and what it reports."""
    harness = make(quality_interval=1.0)
    harness.add_peer("bob")
    harness.monitor.start()
    t0 = harness.clock.now
    harness.monitor.remote_reported("bob", Q.POOR)
    harness.monitor.remote_reported("nobody", Q.BAD)  # not in the call: ignored
    await harness.sample(t0 + 0.1, bob=report(50, receiver_report=(1, 0.0)))
    await harness.sample(t0 + 1.2, bob=report(100, receiver_report=(2, 0.0)))
    assert harness.of(QUALITY)[-1] == [
        NetworkQualityInfo("alice", Q.EXCELLENT), NetworkQualityInfo("bob", Q.POOR)
    ]


async def test_a_silent_link_is_reported_down_at_once_and_once(make: MakeHarness) -> None:
    """Nothing from bob for ``down_after``: the very next sample reports bob (and our uplink,
    whose receiver reports stopped too) DOWN without waiting for the interval; the samples
    after it add no report until the interval; a link back to life is no longer DOWN."""
    harness = make(quality_interval=10.0, down_after=2.5)
    harness.add_peer("bob")
    harness.monitor.start()
    t0 = harness.clock.now
    await harness.sample(t0 + 0.1, bob=report(50, receiver_report=(1, 0.0)))
    await harness.sample(t0 + 1.2, bob=report(100, receiver_report=(2, 0.0)))
    await harness.sample(t0 + 3.6, bob=report(100, receiver_report=(2, 0.0)))
    assert harness.of(QUALITY) == []  # silent 2.4 s: not yet
    await harness.sample(t0 + 3.8, bob=report(100, receiver_report=(2, 0.0)))
    assert harness.of(QUALITY) == [
        [NetworkQualityInfo("alice", Q.DOWN), NetworkQualityInfo("bob", Q.DOWN)]
    ]
    assert harness.uplinks == [Q.DOWN]
    for step in range(1, 6):
        await harness.sample(t0 + 3.8 + step, bob=report(100, receiver_report=(2, 0.0)))
    assert len(harness.of(QUALITY)) == 1
    for step in range(6):  # packets and receiver reports again
        await harness.sample(t0 + 9.0 + 1.1 * step,
                             bob=report(150 + 50 * step, receiver_report=(3 + step, 0.0)))
        assert len(harness.of(QUALITY)) == (1 if step < 5 else 2)  # next due at t0 + 13.8
    reports = harness.of(QUALITY)
    assert all(info.quality is not Q.DOWN for info in reports[-1])


async def test_unavailable_statistics_and_a_failing_uplink_send_stop_nothing(
    make: MakeHarness,
) -> None:
    """``getStats()`` raising and ``send_uplink`` raising are skipped; sampling goes on."""
    sent: list[NetworkQuality] = []

    async def failing_send(quality: NetworkQuality) -> None:
        sent.append(quality)
        raise ConnectionError("signaling down")

    harness = make(quality_interval=1.0, send_uplink=failing_send)
    harness.add_peer("bob")
    harness.monitor.start()
    t0 = harness.clock.now
    await harness.sample(t0 + 0.1, bob=RuntimeError("transport closed"))
    await harness.sample(t0 + 0.2, bob=report(50, receiver_report=(1, 0.0)))
    await harness.sample(t0 + 1.3, bob=report(100, receiver_report=(2, 0.0)))
    await harness.sample(t0 + 2.4, bob=report(150, receiver_report=(3, 0.0)))
    assert len(harness.of(QUALITY)) == 2
    assert sent == [Q.EXCELLENT, Q.EXCELLENT]


async def test_a_peer_added_after_start_is_sampled_and_reported(make: MakeHarness) -> None:
    """Users joining a running call enter the next reports, in join order."""
    harness = make(quality_interval=1.0)
    harness.add_peer("bob")
    harness.monitor.start()
    t0 = harness.clock.now
    await harness.sample(t0 + 0.1, bob=report(50))
    harness.add_peer("carol")
    await harness.sample(t0 + 0.2, bob=report(60))  # a sample already under way: bob only
    await harness.sample(t0 + 0.3, bob=report(70), carol=report(10))
    await harness.sample(t0 + 1.4, bob=report(120), carol=report(60))
    assert [info.user_id for info in harness.of(QUALITY)[-1]] == ["alice", "bob", "carol"]
    assert harness.of(QUALITY)[-1][2] == NetworkQualityInfo("carol", Q.EXCELLENT)


# --------------------------------------------------------------------------- start and stop


async def test_start_and_stop_are_idempotent_and_leave_no_task(make: MakeHarness) -> None:
    """start() twice runs one pair of loops; stop() ends them, also mid-sample; twice is fine;
    no report comes after stop()."""
    harness = make(volume_interval=0.001)
    stats = harness.add_peer("bob")
    monitor = harness.monitor
    monitor.start()
    monitor.start()
    assert len(monitor_tasks(monitor)) == 2
    pending = await stats.next_call()  # the quality loop is inside getStats()
    await harness.volume_after_now()
    await monitor.stop()
    assert monitor_tasks(monitor) == []
    assert pending.cancelled()
    fired = len(harness.fired)
    await monitor.stop()
    monitor.local_audio(sine(0.0))  # inputs after stop are harmless
    assert len(harness.fired) == fired
    assert monitor_tasks(monitor) == []
