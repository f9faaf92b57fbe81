"""VirtualMicrophone plays tones, silence and sequences in paced 20 ms blocks."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from callclient.errors import DeviceError
from callclient.media import virtual
from callclient.media.analysis import dominant_frequency, rms_dbfs, tone_present
from callclient.media.base import BLOCK_SAMPLES
from callclient.media.virtual import Sequence, Silence, Tone, VirtualMicrophone
from tests.helpers.fakeclock import FakeClock


async def _read(mic: VirtualMicrophone, blocks: int) -> np.ndarray:
    return np.concatenate([await mic.read() for _ in range(blocks)])


async def test_tone_frequency_and_level() -> None:
    """A 440 Hz tone at amplitude 0.5 is found at 440 Hz and about -9 dBFS."""
    mic = VirtualMicrophone(Tone(440, 0.5))
    await mic.start()
    samples = await _read(mic, 10)
    await mic.stop()
    assert samples.dtype == np.int16 and samples.size == 10 * BLOCK_SAMPLES
    assert dominant_frequency(samples) == pytest.approx(440, abs=2)
    assert rms_dbfs(samples) == pytest.approx(-9.03, abs=0.1)


async def test_phase_continuous_across_blocks_and_program_change() -> None:
    """No sample jump exceeds a sine's slope, across blocks and a live change of tone."""
    mic = VirtualMicrophone(Tone(1000, 0.8))
    await mic.start()
    first = await _read(mic, 3)
    mic.set_program(Tone(1200, 0.8))
    second = await _read(mic, 3)
    await mic.stop()
    joined = np.concatenate([first, second]).astype(np.int32)
    max_step = 0.8 * 32767 * 2 * math.pi * 1200 / 48000 + 2
    assert np.abs(np.diff(joined)).max() <= max_step
    assert dominant_frequency(second) == pytest.approx(1200, abs=5)


async def test_sequence_tone_silence_tone() -> None:
    """A sequence switches at exact sample positions and is silent after its end."""
    program = Sequence(((Tone(500), 0.1), (Silence(), 0.1), (Tone(800), 0.1)))
    mic = VirtualMicrophone(program)
    await mic.start()
    samples = await _read(mic, 20)
    await mic.stop()
    part = 4800
    assert tone_present(samples[:part], 500)
    assert not samples[part : 2 * part].any()
    assert samples[part - 50 : part].any()
    assert tone_present(samples[2 * part : 3 * part], 800)
    assert not samples[3 * part :].any()


async def test_looping_sequence() -> None:
    """A looping sequence starts over."""
    mic = VirtualMicrophone(Sequence(((Tone(700), 0.02), (Silence(), 0.02)), loop=True))
    await mic.start()
    blocks = [await mic.read() for _ in range(6)]
    await mic.stop()
    assert [bool(b.any()) for b in blocks] == [True, False] * 3


async def test_mute_keeps_time_running() -> None:
    """Muted blocks are silent; after unmute the sequence has moved on meanwhile."""
    mic = VirtualMicrophone(Sequence(((Tone(400), 0.06), (Tone(900), 1.0))))
    await mic.start()
    mic.mute()
    muted = await _read(mic, 3)
    mic.unmute()
    after = await _read(mic, 3)
    await mic.stop()
    assert not muted.any()
    assert dominant_frequency(after) == pytest.approx(900, abs=10)


async def test_paced_in_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock: the first block at once, then one per 20 ms exactly (26 blocks end at
    0.5 s), even with 3 ms of work after each block."""
    clock = FakeClock().install(monkeypatch, virtual)
    mic = VirtualMicrophone(Silence())
    await mic.start()
    start = clock.now
    for _ in range(26):
        await mic.read()
        clock.advance(0.003)
    await mic.stop()
    assert clock.now - start == pytest.approx(0.5 + 0.003)
    assert len(clock.sleeps) == 25 and mic.blocks == 26


async def test_paced_on_the_real_clock_never_early() -> None:
    mic = VirtualMicrophone(Silence())
    await mic.start()
    start = time.monotonic()
    for _ in range(11):
        await mic.read()
    elapsed = time.monotonic() - start
    await mic.stop()
    assert elapsed >= 0.2 - 0.005  # no upper bound: a loaded machine may be late


async def test_not_started() -> None:
    """read() before start() raises DeviceError; bad amplitude is rejected."""
    with pytest.raises(DeviceError, match="not started"):
        await VirtualMicrophone().read()
    with pytest.raises(ValueError, match="amplitude"):
        VirtualMicrophone(Tone(440, 1.5))
