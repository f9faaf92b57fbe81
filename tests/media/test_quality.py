"""Network quality: the documented score, thresholds, fast fall, slow rise and DOWN."""

from __future__ import annotations

from callclient.media.quality import QualityRater, level_for_score, quality_score, worst
from callclient.types import NetworkQuality as Q


def test_thresholds_by_loss() -> None:
    """0 % loss is EXCELLENT, 2 % GOOD, 5 % POOR, 10 % BAD, 20 % VBAD."""
    assert level_for_score(quality_score(0.0, 20, 5)) is Q.EXCELLENT
    assert level_for_score(quality_score(0.02, 20, 5)) is Q.GOOD
    assert level_for_score(quality_score(0.05, 20, 5)) is Q.POOR
    assert level_for_score(quality_score(0.10, 20, 5)) is Q.BAD
    assert level_for_score(quality_score(0.20, 20, 5)) is Q.VBAD


def test_rtt_and_jitter_count_only_above_audible_limits() -> None:
    """RTT under 100 ms and jitter under 20 ms cost nothing; large ones lower the level."""
    assert quality_score(0.0, 99, 19) == 0.0
    assert level_for_score(quality_score(0.0, 600, 5)) is Q.POOR
    assert level_for_score(quality_score(0.0, 50, 50)) is Q.GOOD


def _feed(rater: QualityRater, loss: float, now: float, state: list[int]) -> Q:
    state[0] += round(100 * (1 - loss))
    state[1] += round(100 * loss)
    return rater.update_counters(state[0], state[1], 5.0, 20.0, now)


def test_unknown_until_data_then_rated() -> None:
    """UNKNOWN before anything arrives; the first interval sets the level directly."""
    rater = QualityRater()
    assert rater.current(0.0) is Q.UNKNOWN
    state = [0, 0]
    _feed(rater, 0.0, 0.0, state)
    assert _feed(rater, 0.0, 2.0, state) is Q.EXCELLENT


def test_falls_fast_and_rises_slowly() -> None:
    """A bad interval applies at once; recovery takes rise_after good intervals per step."""
    rater = QualityRater(rise_after=2)
    state = [0, 0]
    _feed(rater, 0.0, 0.0, state)
    _feed(rater, 0.0, 2.0, state)
    assert _feed(rater, 0.2, 4.0, state) is Q.VBAD
    assert _feed(rater, 0.0, 6.0, state) is Q.VBAD
    assert _feed(rater, 0.0, 8.0, state) is Q.BAD
    assert _feed(rater, 0.0, 10.0, state) is Q.BAD
    assert _feed(rater, 0.0, 12.0, state) is Q.POOR


def test_down_after_silence_and_recovery() -> None:
    """No packets for down_after seconds is DOWN; packets again leave DOWN after rise_after."""
    rater = QualityRater(down_after=3.0, rise_after=2)
    state = [0, 0]
    _feed(rater, 0.0, 0.0, state)
    _feed(rater, 0.0, 1.0, state)
    assert rater.update_counters(state[0], state[1], 5.0, 20.0, 2.0) is Q.EXCELLENT
    assert rater.current(4.1) is Q.DOWN
    assert _feed(rater, 0.0, 5.0, state) is Q.DOWN
    assert _feed(rater, 0.0, 6.0, state) is not Q.DOWN


def test_worst_ignores_unknown() -> None:
    """worst() picks the worst known level and is UNKNOWN only when nothing is known."""
    assert worst(Q.UNKNOWN, Q.GOOD, Q.POOR) is Q.POOR
    assert worst(Q.UNKNOWN, Q.UNKNOWN) is Q.UNKNOWN
    assert worst(Q.DOWN, Q.EXCELLENT) is Q.DOWN
