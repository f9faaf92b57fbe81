"""VirtualMicrophone plays audio files, resampled to 48 kHz mono, once or looping."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

from callclient.errors import DeviceError
from callclient.media.analysis import dominant_frequency
from callclient.media.virtual import AudioFile, VirtualMicrophone


def _write_wav(path: Path, freq: float, seconds: float, rate: int = 44100) -> None:
    t = np.arange(round(rate * seconds)) / rate
    mono = np.rint(0.5 * 32767 * np.sin(2 * math.pi * freq * t)).astype("<i2")
    stereo = np.stack([mono, mono], axis=1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(stereo.tobytes())


async def test_plays_resampled_file_then_silence(tmp_path: Path) -> None:
    """A 44.1 kHz stereo 1 kHz WAV plays at 1 kHz for its length, then silence."""
    path = tmp_path / "tone.wav"
    _write_wav(path, 1000, 0.2)
    mic = VirtualMicrophone(AudioFile(path))
    await mic.start()
    samples = np.concatenate([await mic.read() for _ in range(15)])
    await mic.stop()
    assert dominant_frequency(samples[:9000]) == pytest.approx(1000, abs=3)
    nonzero = np.flatnonzero(samples)
    assert 9500 <= nonzero[-1] + 1 <= 9700  # 0.2 s at 48 kHz is 9600 samples
    assert not samples[9700:].any()


async def test_looping_file(tmp_path: Path) -> None:
    """With loop=True the file plays again after its end."""
    path = tmp_path / "short.wav"
    _write_wav(path, 2000, 0.05)
    mic = VirtualMicrophone(AudioFile(path, loop=True))
    await mic.start()
    samples = np.concatenate([await mic.read() for _ in range(10)])
    await mic.stop()
    assert samples[-2000:].any()
    assert dominant_frequency(samples[5000:9000]) == pytest.approx(2000, abs=5)


def test_unreadable_file_raises_device_error(tmp_path: Path) -> None:
    """A missing or undecodable file raises DeviceError at set_program."""
    mic = VirtualMicrophone()
    with pytest.raises(DeviceError, match="cannot play"):
        mic.set_program(AudioFile(tmp_path / "missing.wav"))
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    with pytest.raises(DeviceError):
        mic.set_program(AudioFile(garbage))
