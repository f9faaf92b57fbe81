"""Call-progress tones: the shipped files, TonePlayer looping, SharedSink priority."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from callclient.assets import RINGBACK, RINGTONE, asset_names, asset_path
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


def test_shipped_tones_are_small_and_match_the_generator(tmp_path: Path) -> None:
    """The package ships exactly ringtone.wav and ringback.wav, each < 200 KB and what
    scripts/make-tones makes."""
    made = write_default_tones(tmp_path)
    assert asset_names() == sorted(path.name for path in made) == [RINGBACK, RINGTONE]
    for path in made:
        shipped = asset_path(path.name)
        assert shipped.stat().st_size < 200_000
        assert shipped.read_bytes() == path.read_bytes(), "regenerate with scripts/make-tones"


def test_unknown_asset_names_the_shipped_ones() -> None:
    """Asking for a file the package does not ship says which ones it does."""
    with pytest.raises(FileNotFoundError, match=r"no file 'motion.mp4' .*ringback.wav"):
        asset_path("motion.mp4")


def test_ringback_is_425_hz_one_second_in_five() -> None:
    """The ringback: 425 Hz for 1 s, then 4 s of silence."""
    samples = load_audio(asset_path(RINGBACK))
    assert samples.size == 5 * SAMPLE_RATE
    assert abs(dominant_frequency(samples[: SAMPLE_RATE]) - 425) < 2
    assert int(np.abs(samples[SAMPLE_RATE + 480 :]).max()) == 0
    ringing = load_audio(asset_path(RINGTONE))
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
    await player.start(asset_path(RINGBACK))
    assert shared.owner == "tone" and player.playing is not None
    await asyncio.sleep(0.3)
    played = speaker.samples()
    assert abs(dominant_frequency(played) - 425) < 5
    call_block = np.full(BLOCK_SAMPLES, 1234, np.int16)
    await shared.start(lambda: call_block)
    assert shared.owner == "call"
    await player.start(asset_path(RINGTONE))  # stays silent: the call owns the output
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
    await player.start(asset_path(RINGTONE))
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
