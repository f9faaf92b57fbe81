"""Measures for the audio-processing tests: levels, echo return loss, lag, correlation, SNR.

All signals are float at 48 kHz with full scale 1.0 (int16 arrays are converted).

* ERLE = 10 log10(power of the echo at the microphone / power of the output) over a window.
* Lag: the delay of an output against a reference maximising their cross-correlation.
* SNR improvement (Hagerman and Olofsson's phase inversion): the processor runs twice from a
  fresh state, on s + n and on s - n; half the sum of the outputs is the processed speech,
  half the difference the processed noise. Exact for a processor applying the same
  time-varying gains to both (what a spectral suppressor does, closely).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "FRAME",
    "FS",
    "active_level_db",
    "active_mask",
    "corr",
    "db",
    "erle_db",
    "find_lag",
    "level_db",
    "power",
    "to_float",
]

FS = 48000
FRAME = 480
"""10 ms at 48 kHz: the frames levels are computed over."""

Signal = npt.NDArray[np.float64]


def to_float(x: npt.NDArray[np.int16] | Signal) -> Signal:
    """int16 (or float) samples as float64 with full scale 1.0."""
    array = np.asarray(x)
    if array.dtype == np.int16:
        return array.astype(np.float64) / 32767.0
    return array.astype(np.float64)


def db(x: float) -> float:
    """10 log10 of a power (floored at -200 dB)."""
    return 10.0 * float(np.log10(max(float(x), 1e-20)))


def power(x: Signal) -> float:
    """Mean square."""
    x = to_float(x)
    return float(np.mean(x * x)) if x.size else 0.0


def _frame_power(x: Signal) -> Signal:
    n = x.size // FRAME
    frames = to_float(x)[: n * FRAME].reshape(n, FRAME)
    return np.asarray(np.mean(frames * frames, axis=1), dtype=np.float64)


def active_mask(clean: Signal, range_db: float = 35.0) -> npt.NDArray[np.bool_]:
    """The 10 ms frames of clean speech that are active (within ``range_db`` of the loudest)."""
    levels = 10.0 * np.log10(_frame_power(clean) + 1e-20)
    return np.asarray((levels > levels.max() - range_db) & (levels > -80.0))


def level_db(x: Signal, mask: npt.NDArray[np.bool_]) -> float:
    """RMS level in dBFS over the frames ``mask`` selects."""
    frames = _frame_power(x)
    n = min(frames.size, mask.size)
    return db(float(np.mean(frames[:n][mask[:n]])))


def active_level_db(x: Signal) -> float:
    """The active level of speech ``x`` (its own active frames)."""
    return level_db(x, active_mask(x))


def _window(x: Signal, start: float, end: float, lag: int = 0) -> Signal:
    return to_float(x)[round(start * FS) + lag : round(end * FS) + lag]


def erle_db(echo: Signal, out: Signal, start: float, end: float, lag: int = 0) -> float:
    """Echo return loss enhancement over ``[start, end)`` s (``out`` taken ``lag`` later)."""
    return db(power(_window(echo, start, end))) - db(power(_window(out, start, end, lag)))


def find_lag(ref: Signal, out: Signal, max_ms: float = 60.0, min_ms: float = -5.0) -> int:
    """Samples by which ``out`` lags ``ref`` (cross-correlation peak within the range)."""
    a, b = to_float(ref), to_float(out)
    size = 1 << int(np.ceil(np.log2(a.size + b.size)))
    c = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.arange(round(min_ms * FS / 1000), round(max_ms * FS / 1000) + 1)
    return int(lags[np.argmax(c[lags % size])])


def corr(a: Signal, b: Signal) -> float:
    """Pearson correlation of two signals (cut to the shorter)."""
    n = min(len(a), len(b))
    x = to_float(a)[:n] - np.mean(to_float(a)[:n])
    y = to_float(b)[:n] - np.mean(to_float(b)[:n])
    den = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y)) / den if den > 0 else 0.0
