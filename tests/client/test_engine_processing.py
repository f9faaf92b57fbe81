"""The engine's capture processing: defaults, the runtime switch, and a call with echo.

In the call, alice's speaker and microphone are one simulated room (:mod:`tests.helpers.room`):
whatever alice's engine plays (bob's voice, espeak-ng speech) comes back into her microphone
100 ms later through a room response. Bob's speaker records what he hears.
"""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np

from callclient import AudioProcessing, ProcessingStats
from callclient.engine import CallEngine
from callclient.media.devices import SoundDeviceMicrophone
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import AudioFile, VirtualSpeaker
from callclient.types import AudioPlaybackDevice, CallMediaType
from tests.helpers.audio_metrics import db, power
from tests.helpers.engine import MakeParty, connect, eventually
from tests.helpers.room import Room
from tests.helpers.speech import room_ir, speech, to_int16

ECHO_ATTENUATION_DB = 25.0


async def test_processing_is_off_for_virtual_devices_and_on_for_real_ones() -> None:
    """Virtual microphone: off (bit-exact harness); a sounddevice microphone: every stage;
    an explicit configuration wins."""
    async with CallEngine("ws://127.0.0.1:9") as engine:
        assert engine.audio_processing == AudioProcessing.off()
    devices = DeviceSet.virtual("x")
    devices.microphone = SoundDeviceMicrophone("not opened")
    async with CallEngine("ws://127.0.0.1:9", devices=devices) as engine:
        assert engine.audio_processing == AudioProcessing()
    async with CallEngine("ws://127.0.0.1:9", devices=devices,
                          audio_processing=AudioProcessing(auto_gain=False)) as engine:
        assert engine.audio_processing == AudioProcessing(auto_gain=False)


async def test_set_audio_processing_switches_single_stages() -> None:
    """Each keyword switches one stage; a whole configuration replaces; stats are typed."""
    async with CallEngine("ws://127.0.0.1:9", audio_processing=AudioProcessing()) as engine:
        assert engine.set_audio_processing(noise_suppression=False) == AudioProcessing(
            noise_suppression=False
        )
        assert engine.audio_processing == AudioProcessing(noise_suppression=False)
        engine.set_audio_processing(AudioProcessing.off(), auto_gain=True)
        assert engine.audio_processing.label() == "AGC"
        assert isinstance(engine.audio_processing_stats, ProcessingStats)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(samples.astype("<i2").tobytes())


async def test_echo_of_the_far_end_is_cancelled_in_a_call(
    make_party: MakeParty, tmp_path: Path
) -> None:
    """Bob talks; alice's speaker leaks into her microphone. With alice's processing off bob
    hears his voice back; switched on mid-call, 3 s later he hears it >= 25 dB quieter, and
    alice's own volume meter, which the echo lit, reads (almost) nothing."""
    voice = tmp_path / "bob.wav"
    _write_wav(voice, to_int16(speech("far", -26.0, seconds=20.0)))
    room = Room(room_ir(seed=7), 100.0, -6.0, realtime=True)
    alice_devices = DeviceSet.virtual("alice")
    alice_devices.microphone = room.microphone
    alice_devices.speakers[AudioPlaybackDevice.SPEAKERPHONE] = room.speaker
    alice = await make_party("alice", devices=alice_devices,
                             audio_processing=AudioProcessing.off())
    bob = await make_party("bob", devices=DeviceSet.virtual(
        "bob", program=AudioFile(voice, loop=True)))
    await connect(alice, bob, CallMediaType.AUDIO)
    bob_hears = bob.speaker()
    assert isinstance(bob_hears, VirtualSpeaker)
    await eventually(lambda: len(room.played) > 50 and any(b.any() for b in room.played[-25:]),
                     "alice's speaker plays bob's voice")

    async def window(seconds: float) -> tuple[float, int]:
        """Echo return (dB: bob hears / alice played) and alice's loudest volume."""
        played_from, heard_from = len(room.played), bob_hears.played_samples
        volumes: list[int] = []
        mark = alice.rec.mark()
        await asyncio.sleep(seconds)
        played = np.concatenate(room.played[played_from:])
        heard = bob_hears.samples()[-(bob_hears.played_samples - heard_from):]
        for event in alice.rec.events[mark:]:
            if event.name == "on_user_voice_volume_changed":
                volumes.append(event.args[0].get("alice", 0))
        return db(power(heard)) - db(power(played)), max(volumes, default=0)

    await asyncio.sleep(1.0)
    echo_off, volume_off = await window(5.0)
    started = time.monotonic()
    alice.engine.set_audio_processing(AudioProcessing())
    await asyncio.sleep(3.0)
    echo_on, volume_on = await window(5.0)
    stats = alice.engine.audio_processing_stats
    assert stats.blocks >= round((time.monotonic() - started) / 0.02 * 0.5), stats
    assert stats.unprocessed == 0, stats
    assert echo_off > -12.0, f"the echo did not reach bob: {echo_off:.1f} dB"
    assert echo_off - echo_on >= ECHO_ATTENUATION_DB, (
        f"echo return {echo_off:.1f} dB off, {echo_on:.1f} dB on"
    )
    assert volume_off >= 40, volume_off
    assert volume_on <= 10, volume_on
    assert room.speaker.starts == 1
    # Each capture block was processed against the blocks played, in order, none skipped.
    assert stats.reference["discarded"] == stats.reference["realigned"] == 0, stats
    print(f"echo return off {echo_off:.1f} dB, on {echo_on:.1f} dB; alice volume "
          f"{volume_off} -> {volume_on}; {stats}")
