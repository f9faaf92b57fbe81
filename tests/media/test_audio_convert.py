"""Received frames convert to BGR images and to int16 48 kHz mono blocks."""

from __future__ import annotations

import fractions
import math

import av
import numpy as np
import pytest

from callclient.media.analysis import dominant_frequency
from callclient.media.tracks import AudioConverter, audio_frame_to_mono, frame_to_bgr


def _sine(freq: float, count: int, rate: int, start: int = 0) -> np.ndarray:
    t = (np.arange(count) + start) / rate
    return 0.5 * np.sin(2 * math.pi * freq * t)


def test_frame_to_bgr_round_trip() -> None:
    """A bgr24 frame converts back to the same array."""
    image = np.random.default_rng(0).integers(0, 256, (36, 64, 3), dtype=np.uint8)
    assert np.array_equal(frame_to_bgr(av.VideoFrame.from_ndarray(image, format="bgr24")), image)


def test_stereo_s16_48k_downmixes_exactly() -> None:
    """aiortc's Opus output (s16 stereo 48 kHz) with equal channels converts sample-exact."""
    block = np.rint(_sine(440, 960, 48000) * 32767).astype(np.int16)
    stereo = np.stack([block, block], axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = 48000
    out = audio_frame_to_mono(frame)
    assert out.dtype == np.int16
    assert np.array_equal(out, block)


def test_stream_resampled_to_48k() -> None:
    """A 44.1 kHz float stream converts to 48 kHz mono with the same pitch and duration."""
    converter = AudioConverter()
    chunks = []
    for n in range(50):
        data = _sine(1000, 882, 44100, start=n * 882).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="flt", layout="mono")
        frame.sample_rate = 44100
        frame.pts = n * 882
        frame.time_base = fractions.Fraction(1, 44100)
        chunks.append(converter.convert(frame))
    out = np.concatenate(chunks)
    assert out.dtype == np.int16
    assert abs(out.size - 48000) <= 200  # one second, minus the resampler's delay
    assert dominant_frequency(out) == pytest.approx(1000, abs=3)
