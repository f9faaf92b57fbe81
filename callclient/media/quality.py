"""Network quality from RTCP statistics: a documented score, thresholds and hysteresis.

Inputs are what aiortc keeps per RTP stream: packets received and lost (inbound, from sequence
numbers), interarrival jitter, and from the peer's RTCP receiver reports the fraction lost and
the round-trip time of what we send.

Score (lower is better), for one measurement interval::

    score = 4 * loss_percent + max(0, rtt_ms - 100) / 20 + max(0, jitter_ms - 20) / 4

Thresholds: score < 4 EXCELLENT (about 1 % loss on a good path), < 10 GOOD (2.5 %),
< 30 POOR (7.5 %), < 60 BAD (15 %), else VBAD. So 5 % loss rates POOR and 20 % VBAD.
RTT only counts above 100 ms and jitter above 20 ms, where they start to be heard.

Like LiveKit's connection-quality scorer, the rating falls fast and rises slowly: a worse
rating applies at once; a better one only after ``rise_after`` consecutive better intervals,
and then by one level at a time. DOWN: nothing (no RTP and no RTCP) arrived for ``down_after``
seconds. UNKNOWN until the first data.
"""

from __future__ import annotations

from dataclasses import dataclass

from callclient.types import NetworkQuality

__all__ = ["QualityRater", "level_for_score", "quality_score", "worst"]

_THRESHOLDS: tuple[tuple[float, NetworkQuality], ...] = (
    (4.0, NetworkQuality.EXCELLENT),
    (10.0, NetworkQuality.GOOD),
    (30.0, NetworkQuality.POOR),
    (60.0, NetworkQuality.BAD),
)


def quality_score(loss_fraction: float, rtt_ms: float | None, jitter_ms: float | None) -> float:
    """The score of one interval (see the module docstring); lower is better."""
    score = 400.0 * max(0.0, min(1.0, loss_fraction))
    if rtt_ms is not None:
        score += max(0.0, rtt_ms - 100.0) / 20.0
    if jitter_ms is not None:
        score += max(0.0, jitter_ms - 20.0) / 4.0
    return score


def level_for_score(score: float) -> NetworkQuality:
    """The quality level of a score."""
    for limit, level in _THRESHOLDS:
        if score < limit:
            return level
    return NetworkQuality.VBAD


def worst(*levels: NetworkQuality) -> NetworkQuality:
    """The worst of several levels; UNKNOWN only when all are UNKNOWN."""
    known = [level for level in levels if level is not NetworkQuality.UNKNOWN]
    return max(known) if known else NetworkQuality.UNKNOWN


@dataclass
class QualityRater:
    """The rating of one link over time: feed counters or fractions, read the level."""

    down_after: float = 3.0
    rise_after: int = 2
    level: NetworkQuality = NetworkQuality.UNKNOWN
    last_heard: float | None = None
    _received: int | None = None
    _lost: int | None = None
    _better_streak: int = 0

    def heard(self, now: float) -> None:
        """Something (RTP or RTCP) arrived on the link at ``now``."""
        self.last_heard = now

    def update_counters(
        self,
        packets_received: int,
        packets_lost: int,
        jitter_ms: float | None,
        rtt_ms: float | None,
        now: float,
    ) -> NetworkQuality:
        """Feed cumulative inbound counters; the interval is since the previous call."""
        if self._received is None or self._lost is None:
            self._received, self._lost = packets_received, packets_lost
            if packets_received > 0:
                self.heard(now)
            return self.current(now)
        received = packets_received - self._received
        lost = max(0, packets_lost - self._lost)
        self._received, self._lost = packets_received, packets_lost
        if received > 0:
            self.heard(now)
        if received + lost == 0:
            return self.current(now)
        return self._rate(quality_score(lost / (received + lost), rtt_ms, jitter_ms), now)

    def update_fraction(
        self,
        fraction_lost: float,
        rtt_ms: float | None,
        jitter_ms: float | None,
        now: float,
    ) -> NetworkQuality:
        """Feed a receiver report's fraction lost for the interval (0..1)."""
        self.heard(now)
        return self._rate(quality_score(fraction_lost, rtt_ms, jitter_ms), now)

    def current(self, now: float) -> NetworkQuality:
        """The level at ``now``: DOWN when the link has been silent too long."""
        if self.last_heard is None:
            return NetworkQuality.UNKNOWN
        if now - self.last_heard >= self.down_after:
            self.level = NetworkQuality.DOWN
            self._better_streak = 0
        return self.level

    def _rate(self, score: float, now: float) -> NetworkQuality:
        measured = level_for_score(score)
        if self.level in (NetworkQuality.UNKNOWN, NetworkQuality.DOWN) and (
            self.level is NetworkQuality.UNKNOWN or self._better_streak + 1 >= self.rise_after
        ):
            # First data, or a link back from DOWN that stayed up long enough.
            self.level = measured if self.level is NetworkQuality.UNKNOWN else max(
                measured, NetworkQuality.VBAD
            )
            self._better_streak = 0
            return self.level
        if self.level is NetworkQuality.DOWN:
            self._better_streak += 1
            return self.level
        if measured >= self.level:
            self.level = measured  # falls fast
            self._better_streak = 0
        else:
            self._better_streak += 1
            if self._better_streak >= self.rise_after:
                self.level = NetworkQuality(self.level - 1)  # rises slowly, one step
                self._better_streak = 0
        return self.level
