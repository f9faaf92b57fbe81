"""Voice levels: the documented dB mapping, attack/release smoothing and staleness."""

from __future__ import annotations

import numpy as np

from callclient.media.levels import LevelMeter, VolumeTracker, block_level


def _sine(amplitude: float, freq: float = 440.0, n: int = 960) -> np.ndarray:
    t = np.arange(n) / 48000.0
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_silence_is_zero() -> None:
    """Digital silence reads 0."""
    assert block_level(np.zeros(960, np.int16)) == 0.0


def test_full_scale_sine_is_about_one_hundred() -> None:
    """A full-scale sine reads 100 (within rounding)."""
    assert block_level(_sine(1.0)) > 99.0


def test_mapping_is_linear_in_db() -> None:
    """A sine 30 dB below full scale reads 50; 60 dB below reads about 0."""
    assert abs(block_level(_sine(10 ** (-30 / 20))) - 50.0) < 1.0
    assert block_level(_sine(10 ** (-61 / 20))) == 0.0


def test_attack_is_immediate_and_release_is_bounded() -> None:
    """Loud after quiet jumps up at once; quiet after loud falls at most release_per_s."""
    meter = LevelMeter(release_per_s=100.0)
    meter.update(np.zeros(960, np.int16), 0.0)
    assert meter.update(_sine(1.0), 0.02) > 99.0
    after = meter.update(np.zeros(960, np.int16), 0.12)
    assert 89.0 <= after <= 91.0


def test_stale_meter_reads_zero() -> None:
    """A stream that stopped sending reads 0 after stale_after."""
    meter = LevelMeter(stale_after=0.5)
    meter.update(_sine(1.0), 10.0)
    assert meter.read(10.1) > 95
    assert meter.read(10.6) == 0


def test_tracker_snapshot_holds_every_user() -> None:
    """The snapshot has every asked user; users without audio and muted users read 0."""
    tracker = VolumeTracker()
    tracker.update("alice", _sine(0.5), 1.0)
    tracker.update("bob", _sine(0.5), 1.0)
    tracker.reset("bob")
    snap = tracker.snapshot(["alice", "bob", "carol"], 1.01)
    assert set(snap) == {"alice", "bob", "carol"}
    assert snap["alice"] > 80
    assert snap["bob"] == 0
    assert snap["carol"] == 0
