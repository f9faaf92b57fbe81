"""Audio analysis: dominant frequency, tone detection and RMS level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from callclient.media.analysis import dominant_frequency, rms_dbfs, tone_present


def _tone(freq: float, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(48000 * seconds)) / 48000
    return np.rint(amplitude * 32767 * np.sin(2 * math.pi * freq * t)).astype(np.int16)


@pytest.mark.parametrize("freq", [97.0, 440.0, 1000.0, 3333.3, 12000.0])
def test_dominant_frequency_finds_tone(freq: float) -> None:
    """The peak frequency of a pure tone is found within 1 Hz (interpolated, not bin-quantized)."""
    assert dominant_frequency(_tone(freq)) == pytest.approx(freq, abs=1.0)


def test_dominant_frequency_picks_the_strongest() -> None:
    """Of two tones, the louder one wins; noise does not move it."""
    rng = np.random.default_rng(1)
    mix = _tone(600, amplitude=0.2).astype(np.int32) + _tone(1500, amplitude=0.5)
    noisy = mix + rng.normal(0, 500, mix.size)
    assert dominant_frequency(noisy.astype(np.int16)) == pytest.approx(1500, abs=2)


def test_silence_and_short_input() -> None:
    """Silence and too-short input give 0 Hz and no tone."""
    assert dominant_frequency(np.zeros(4800, dtype=np.int16)) == 0.0
    assert dominant_frequency(np.zeros(3, dtype=np.int16)) == 0.0
    assert not tone_present(np.zeros(4800, dtype=np.int16), 440)


def test_tone_present_tolerance_and_level() -> None:
    """tone_present checks frequency within tolerance and a minimum level."""
    tone = _tone(440)
    assert tone_present(tone, 440)
    assert tone_present(tone, 455, tolerance_hz=20)
    assert not tone_present(tone, 500)
    quiet = _tone(440, amplitude=0.001)
    assert not tone_present(quiet, 440)
    assert tone_present(quiet, 440, min_dbfs=-70)


def test_rms_dbfs() -> None:
    """A full-scale sine is about -3 dBFS, half scale -9, silence -inf; floats are full scale 1."""
    assert rms_dbfs(_tone(1000, amplitude=1.0)) == pytest.approx(-3.01, abs=0.05)
    assert rms_dbfs(_tone(1000, amplitude=0.5)) == pytest.approx(-9.03, abs=0.05)
    assert rms_dbfs(np.zeros(100, dtype=np.int16)) == float("-inf")
    assert rms_dbfs(np.full(100, 0.1)) == pytest.approx(-20.0)
