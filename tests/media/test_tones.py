"""Call-progress tones: the generated assets, TonePlayer looping, SharedSink priority."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from callclient.errors import DeviceError
from callclient.media.analysis import dominant_frequency
from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE
from callclient.media.tones import (
    SharedSink,
    TonePlayer,
    load_audio,
    ringback,
    write_default_tones,
)
from callclient.media.virtual import VirtualSpeaker

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def test_assets_are_small_and_match_the_generator(tmp_path: Path) -> None:
    """assets/ringtone.wav and ringback.wav exist, are < 200 KB and are what the script makes."""
    made = write_default_tones(tmp_path)
    for path in made:
        shipped = ASSETS / path.name
        assert shipped.stat().st_size < 200_000
        assert shipped.read_bytes() == path.read_bytes(), "regenerate with scripts/make-tones"


def test_ringback_is_425_hz_one_second_in_five() -> None:
    """The ringback: 425 Hz for 1 s, then 4 s of silence."""
    samples = load_audio(ASSETS / "ringback.wav")
    assert samples.size == 5 * SAMPLE_RATE
    assert abs(dominant_frequency(samples[: SAMPLE_RATE]) - 425) < 2
    assert int(np.abs(samples[SAMPLE_RATE + 480 :]).max()) == 0
    ringing = load_audio(ASSETS / "ringtone.wav")
    assert int(np.abs(ringing[: SAMPLE_RATE // 5]).max()) > 5000


def test_load_audio_rejects_bad_files(tmp_path: Path) -> None:
    """A file that is not audio raises DeviceError."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file")
    with pytest.raises(DeviceError):
        load_audio(bad)


async def test_tone_loops_and_call_preempts_it() -> None:
    """A tone loops on the output; the call's start stops it first; a tone never interrupts."""
    speaker = VirtualSpeaker()
    shared = SharedSink(speaker)
    player = TonePlayer(shared.tone)
    await player.start(ASSETS / "ringback.wav")
    assert shared.owner == "tone" and player.playing is not None
    await asyncio.sleep(0.3)
    played = speaker.samples()
    assert abs(dominant_frequency(played) - 425) < 5
    call_block = np.full(BLOCK_SAMPLES, 1234, np.int16)
    await shared.start(lambda: call_block)
    assert shared.owner == "call"
    await player.start(ASSETS / "ringtone.wav")  # stays silent: the call owns the output
    await asyncio.sleep(0.1)
    assert shared.owner == "call"
    assert (speaker.samples()[-BLOCK_SAMPLES:] == 1234).all()
    await player.stop()
    assert shared.owner == "call"
    await shared.stop()
    await shared.stop()
    assert shared.owner is None and not speaker.running


async def test_tone_moves_to_another_output() -> None:
    """set_sink moves a playing tone to the new output."""
    first, second = VirtualSpeaker(), VirtualSpeaker()
    player = TonePlayer(SharedSink(first).tone)
    await player.start(ASSETS / "ringtone.wav")
    await player.set_sink(SharedSink(second).tone)
    assert not first.running and second.running
    await player.stop()
    await player.stop()
    assert not second.running


def test_ringback_generator_cadence() -> None:
    """ringback(rate) has the same cadence at any rate."""
    samples = ringback(8000)
    assert samples.size == 5 * 8000
    assert int(np.abs(samples[8000 + 100 :]).max()) == 0
