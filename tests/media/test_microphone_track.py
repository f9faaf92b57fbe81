"""MicrophoneTrack sends s16 mono 48 kHz 20 ms frames from a swappable source."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from callclient.errors import DeviceError
from callclient.media import tracks
from callclient.media.analysis import dominant_frequency
from callclient.media.base import BLOCK_SAMPLES, AudioSource
from callclient.media.tracks import MicrophoneTrack
from callclient.media.virtual import Tone, VirtualMicrophone
from tests.helpers.fakeclock import FakeClock


class BrokenMicrophone(AudioSource):
    """A fake microphone that fails on the first read."""

    name = "broken"

    async def start(self) -> None:
        """Nothing to open."""

    async def read(self) -> np.ndarray:
        """Always fails."""
        await asyncio.sleep(0)
        raise DeviceError("no device")

    async def stop(self) -> None:
        """Nothing to close."""


async def test_frame_format_and_pts() -> None:
    """Frames are s16 mono 48 kHz with 960 samples, pts counting samples, time_base 1/48000."""
    mic = VirtualMicrophone(Tone(440))
    await mic.start()
    track = MicrophoneTrack(mic)
    frames = [await track.recv() for _ in range(5)]
    await mic.stop()
    for n, frame in enumerate(frames):
        assert frame.format.name == "s16"
        assert frame.layout.nb_channels == 1
        assert frame.sample_rate == 48000
        assert frame.samples == BLOCK_SAMPLES
        assert frame.pts == n * BLOCK_SAMPLES
        assert str(frame.time_base) == "1/48000"
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert dominant_frequency(samples) == pytest.approx(440, abs=3)


async def test_no_source_sends_paced_silence_then_swap(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a source: silence paced at 20 ms (on a fake clock: the first at once, then one
    per 20 ms exactly); set_source switches to the source's blocks."""
    clock = FakeClock().install(monkeypatch, tracks)
    track = MicrophoneTrack()
    start = clock.now
    frames = [await track.recv() for _ in range(11)]
    assert clock.now - start == pytest.approx(0.2)
    assert len([d for d in clock.sleeps if d > 0]) == 10
    assert [f.pts for f in frames] == [n * BLOCK_SAMPLES for n in range(11)]
    assert not any(f.to_ndarray().any() for f in frames)
    mic = VirtualMicrophone(Tone(1000))
    await mic.start()
    track.set_source(mic)
    frame = await track.recv()
    assert frame.to_ndarray().any()
    assert frame.pts == 11 * BLOCK_SAMPLES
    track.muted = True
    assert not (await track.recv()).to_ndarray().any()
    await mic.stop()
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_failing_source_reports_and_falls_back_to_silence() -> None:
    """A failing source is reported once through on_error; frames continue as silence."""
    errors: list[DeviceError] = []
    track = MicrophoneTrack(BrokenMicrophone(), on_error=errors.append)
    frames = [await track.recv() for _ in range(3)]
    assert len(errors) == 1 and track.source is None
    assert [f.pts for f in frames] == [0, 960, 1920]
    track.stop()
