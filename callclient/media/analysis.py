"""Audio measurements for tests and the loopback harness: pitch and level."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from callclient.media.base import SAMPLE_RATE

__all__ = ["dominant_frequency", "rms_dbfs", "tone_present"]

Samples = npt.NDArray[np.int16] | npt.NDArray[np.floating]


def _as_unit_float(samples: Samples) -> npt.NDArray[np.float64]:
    """Samples as float64 in -1..1 (int16 is divided by 32768; floats are taken as is)."""
    values = np.asarray(samples)
    if values.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {values.shape}")
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float64) / 32768.0
    return values.astype(np.float64)


def rms_dbfs(samples: Samples) -> float:
    """RMS level in dBFS (a full-scale sine is about -3 dBFS); ``-inf`` for digital silence."""
    values = _as_unit_float(samples)
    if values.size == 0:
        return float("-inf")
    rms = math.sqrt(float(np.mean(values * values)))
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def dominant_frequency(samples: Samples, sample_rate: int = SAMPLE_RATE) -> float:
    """The strongest frequency in Hz (Hann window, FFT, parabolic peak interpolation).

    Returns 0.0 for fewer than 16 samples or silence.
    """
    values = _as_unit_float(samples)
    if values.size < 16:
        return 0.0
    values = values - values.mean()
    spectrum = np.abs(np.fft.rfft(values * np.hanning(values.size)))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if spectrum[peak] <= 0.0:
        return 0.0
    offset = 0.0
    if 0 < peak < spectrum.size - 1:
        left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-20)
        denominator = left - 2 * centre + right
        if denominator < 0:
            offset = 0.5 * (left - right) / denominator
    return float((peak + offset) * sample_rate / values.size)


def tone_present(
    samples: Samples,
    freq: float,
    tolerance_hz: float = 20.0,
    min_dbfs: float = -50.0,
    sample_rate: int = SAMPLE_RATE,
) -> bool:
    """Whether ``samples`` are louder than ``min_dbfs`` and dominated by ``freq`` +- tolerance."""
    if rms_dbfs(samples) < min_dbfs:
        return False
    return abs(dominant_frequency(samples, sample_rate) - freq) <= tolerance_hz
