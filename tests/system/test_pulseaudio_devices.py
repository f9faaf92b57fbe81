"""sounddevice microphone and speakers for real, through PortAudio, ALSA and a PulseAudio server.

Playback is checked by recording the null sinks' monitors; the speaker switch is measured by
locating what each sink played inside the known signal that was pulled.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest

from callclient.apps.devices_cmd import main
from callclient.errors import DeviceError, ErrorCode
from callclient.media.analysis import dominant_frequency, rms_dbfs, tone_present
from callclient.media.base import BLOCK_SAMPLES, BLOCK_SECONDS, SAMPLE_RATE
from callclient.media.devices import SoundDeviceMicrophone, SoundDeviceSpeaker, list_devices
from callclient.media.deviceset import DeviceSet
from callclient.media.mixer import Mixer
from callclient.media.virtual import Silence, Tone
from callclient.types import AudioPlaybackDevice, CallMediaType
from tests.helpers.engine import MakeParty
from tests.helpers.waits import eventually

if TYPE_CHECKING:
    from pulse_fixture import PulseServer, Recording

T = 10.0
SILENT_DBFS = -70.0
Samples = npt.NDArray[np.int16]


def reference_signal(seconds: float, seed: int = 7) -> Samples:
    """A 440 Hz tone with low-level noise: every stretch of it can be located exactly."""
    n = round(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(seed)
    tone = 0.3 * 32767 * np.sin(2 * np.pi * 440.0 * np.arange(n) / SAMPLE_RATE)
    return np.clip(np.rint(tone + rng.normal(0.0, 300.0, n)), -32768, 32767).astype(np.int16)


def locate(reference: Samples, chunk: Samples) -> int:
    """Where ``chunk`` starts in ``reference`` (cross-correlation of second differences,
    which suppresses the tone so the noise pins the position down)."""
    ref = np.diff(reference.astype(np.float64), 2)
    sub = np.diff(chunk.astype(np.float64), 2)
    size = 1 << int(np.ceil(np.log2(ref.size + sub.size)))
    corr = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(sub, size)), size)
    return int(np.argmax(corr[: ref.size - sub.size + 1]))


def played_runs(reference: Samples, recorded: Samples) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges of ``reference`` that ``recorded`` contains, in order.

    The recording is split at silences (1 ms or more of zeros); each piece is located in the
    reference and must match it sample for sample (the path to the sink is bit-exact).
    """
    loud = np.flatnonzero(recorded != 0)
    if loud.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(loud) > SAMPLE_RATE // 1000)
    starts = np.r_[loud[0], loud[breaks + 1]]
    ends = np.r_[loud[breaks] + 1, loud[-1] + 1]
    runs = []
    for first, last in zip(starts.tolist(), ends.tolist(), strict=True):
        if last - first < 2 * BLOCK_SAMPLES:
            continue  # too short to locate reliably (a fragment at a recording's edge)
        start = locate(reference, recorded[first : first + 2 * BLOCK_SAMPLES])
        piece = recorded[first:last]
        assert np.array_equal(piece, reference[start : start + piece.size]), (
            f"recorded samples {first}..{last} are not a stretch of the signal"
        )
        runs.append((start, start + piece.size))
    return runs


async def feed(mixer: Mixer, signal: Samples, pushed: list[int]) -> None:
    """Push ``signal`` into ``mixer`` one block per 20 ms, like a remote user's audio."""
    due = time.monotonic()
    for offset in range(0, signal.size - BLOCK_SAMPLES + 1, BLOCK_SAMPLES):
        mixer.push("remote", signal[offset : offset + BLOCK_SAMPLES])
        pushed.append(offset)
        due += BLOCK_SECONDS
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def record_both(pulse: PulseServer) -> dict[str, Recording]:
    """Start recording both sinks' monitors."""
    recordings = {sink: pulse.recording(sink) for sink in pulse.sinks}
    for recording in recordings.values():
        await recording.start()
    return recordings


async def test_speaker_switch_moves_audio_and_loses_at_most_one_block(
    pulse: PulseServer,
) -> None:
    """A Mixer's audio plays on the speakerphone sink only, then after stop/start on the
    earpiece only; the two sinks together played the pulled signal with at most one block
    missing at the switch."""
    signal = reference_signal(4.0)
    mixer = Mixer()
    pushed: list[int] = []
    recordings = await record_both(pulse)
    speakerphone = SoundDeviceSpeaker("speakerphone")
    earpiece = SoundDeviceSpeaker("earpiece")
    feeder = asyncio.create_task(feed(mixer, signal, pushed))
    try:
        await asyncio.sleep(0.1)  # a few blocks queued, as in a call (no underrun at start)
        await speakerphone.start(mixer.pull)
        await asyncio.sleep(1.5)
        # The engine's order on select_audio_playback_device: stop the old, start the new.
        await speakerphone.stop()
        await earpiece.start(mixer.pull)
        await feeder
        await asyncio.sleep(0.5)
    finally:
        feeder.cancel()
        await speakerphone.stop()
        await earpiece.stop()
        samples = {sink: await rec.stop() for sink, rec in recordings.items()}

    assert speakerphone.pull_errors == earpiece.pull_errors == 0
    first = played_runs(signal, samples["speakerphone"])
    second = played_runs(signal, samples["earpiece"])
    assert first, "nothing reached the speakerphone sink"
    assert second, "nothing reached the earpiece sink"
    assert tone_present(samples["speakerphone"], 440.0)
    assert tone_present(samples["earpiece"], 440.0)
    # The speakerphone went silent when the earpiece took over: no overlap.
    assert first[-1][1] <= second[0][0], f"speakerphone {first}, earpiece {second}"
    lost = second[0][0] - first[-1][1]
    assert lost <= BLOCK_SAMPLES, (
        f"the switch lost {lost} samples (speakerphone played {first}, earpiece {second})"
    )
    assert second[-1][1] == pushed[-1] + BLOCK_SAMPLES, "the earpiece did not play to the end"


async def test_speaker_plays_through_an_engine_call_and_follows_the_route(
    pulse: PulseServer, make_party: MakeParty
) -> None:
    """A call's remote 440 Hz tone plays on the speakerphone sink (earpiece silent); after
    select_audio_playback_device(EARPIECE) mid-call it plays on the earpiece (speakerphone
    silent), with at most one mixer block lost at the switch."""
    speakers = {
        AudioPlaybackDevice.SPEAKERPHONE: SoundDeviceSpeaker("speakerphone"),
        AudioPlaybackDevice.EARPIECE: SoundDeviceSpeaker("earpiece"),
    }
    devices = DeviceSet.virtual("bob", program=Silence())
    devices.speakers = dict(speakers)
    alice = await make_party("alice", devices=DeviceSet.virtual("alice", program=Tone(440, 0.3)))
    bob = await make_party("bob", devices=devices)
    await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    mixer = bob.engine.mixer
    await eventually(lambda: mixer.pushed > 25, "bob's mixer gets alice's audio")

    async def phase() -> dict[str, Samples]:
        recordings = await record_both(pulse)
        await asyncio.sleep(1.5)
        return {sink: await rec.stop() for sink, rec in recordings.items()}

    before = await phase()
    assert tone_present(before["speakerphone"][-SAMPLE_RATE:], 440.0), (
        f"speakerphone: {dominant_frequency(before['speakerphone'][-SAMPLE_RATE:]):.0f} Hz at "
        f"{rms_dbfs(before['speakerphone'][-SAMPLE_RATE:]):.1f} dBFS"
    )
    assert rms_dbfs(before["earpiece"]) < SILENT_DBFS

    assert speakers[AudioPlaybackDevice.EARPIECE].blocks == 0
    dropped = mixer.dropped
    await bob.engine.select_audio_playback_device(AudioPlaybackDevice.EARPIECE)
    assert not speakers[AudioPlaybackDevice.SPEAKERPHONE].running
    assert speakers[AudioPlaybackDevice.EARPIECE].running
    await asyncio.sleep(0.2)
    assert mixer.dropped - dropped <= 1, f"{mixer.dropped - dropped} blocks dropped at the switch"

    after = await phase()
    assert tone_present(after["earpiece"][-SAMPLE_RATE:], 440.0)
    assert rms_dbfs(after["speakerphone"]) < SILENT_DBFS
    await alice.engine.hangup()
    await eventually(lambda: not any(s.running for s in speakers.values()), "speakers stopped")


async def test_microphone_reads_the_source_tone(pulse: PulseServer) -> None:
    """SoundDeviceMicrophone on the sine source delivers 20 ms int16 blocks of its 660 Hz."""
    mic = SoundDeviceMicrophone(pulse.mic)
    await mic.start()
    try:
        blocks = [await asyncio.wait_for(mic.read(), T) for _ in range(50)]
    finally:
        await mic.stop()
    assert all(b.dtype == np.int16 and b.shape == (BLOCK_SAMPLES,) for b in blocks)
    samples = np.concatenate(blocks[10:])
    assert tone_present(samples, pulse.mic_freq), f"{dominant_frequency(samples):.0f} Hz"
    with pytest.raises(DeviceError) as info:
        await mic.read()
    assert info.value.code == ErrorCode.MIC_START_FAIL
    await mic.stop()  # idempotent


async def test_microphone_keeps_a_bounded_queue(pulse: PulseServer) -> None:
    """A reader that falls behind finds at most ``queue_blocks`` blocks, the oldest dropped."""
    mic = SoundDeviceMicrophone(pulse.mic, queue_blocks=3)
    await mic.start()
    try:
        await asyncio.sleep(0.5)
        assert mic.dropped > 0
        queued = 0
        while True:
            try:
                await asyncio.wait_for(mic.read(), 0.001)
            except TimeoutError:
                break
            queued += 1
        assert queued <= 4
    finally:
        await mic.stop()


async def test_microphone_in_a_call_reaches_the_remote(
    pulse: PulseServer, make_party: MakeParty
) -> None:
    """An engine whose microphone is the sine source sends its 660 Hz to the remote speaker."""
    devices = DeviceSet.virtual("alice")
    devices.microphone = SoundDeviceMicrophone(pulse.mic)
    alice = await make_party("alice", devices=devices)
    bob = await make_party("bob")
    await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    speaker = bob.speaker()

    def hears_mic() -> bool:
        return tone_present(speaker.samples()[-SAMPLE_RATE // 2 :], pulse.mic_freq)

    await eventually(hears_mic, "bob's speaker plays alice's 660 Hz microphone")
    await alice.engine.hangup()


async def test_unknown_devices_fail_with_codes(pulse: PulseServer) -> None:
    """An unknown speaker or microphone name gives DeviceError -1321 / -1302 naming it."""
    speaker = SoundDeviceSpeaker("no-such-speaker")
    with pytest.raises(DeviceError) as info:
        await speaker.start(Mixer().pull)
    assert info.value.code == ErrorCode.SPEAKER_START_FAIL
    assert "no-such-speaker" in info.value.message
    assert not speaker.running
    mic = SoundDeviceMicrophone("no-such-mic")
    with pytest.raises(DeviceError) as info:
        await mic.start()
    assert info.value.code == ErrorCode.MIC_START_FAIL
    assert "no-such-mic" in info.value.message


async def test_list_devices_shows_the_test_devices(pulse: PulseServer) -> None:
    """list_devices() lists the sinks as speakers and the sine source as a microphone."""
    listed = list_devices()
    assert listed.audio_error is None
    speakers = {d.name for d in listed.speakers}
    assert {"speakerphone", "earpiece"} <= speakers
    assert pulse.mic in {d.name for d in listed.microphones}


def test_devices_command_prints_the_test_devices(
    pulse: PulseServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``callclient devices`` prints the sinks and the sine source; ``--json`` parses."""
    assert main([]) == 0
    table = capsys.readouterr().out
    assert "Speakers:" in table and "speakerphone" in table and pulse.mic in table
    assert main(["--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "earpiece" in {d["name"] for d in listed["speakers"]}
    assert listed["audio_error"] is None


async def test_speaker_that_cannot_open_reports_on_error_and_the_call_goes_on(
    pulse: PulseServer, make_party: MakeParty
) -> None:
    """A call whose speaker cannot be opened fires on_error(-1321) and still connects."""
    devices = DeviceSet.virtual("bob", program=Silence())
    devices.speakers = {
        AudioPlaybackDevice.SPEAKERPHONE: SoundDeviceSpeaker("no-such-speaker"),
        AudioPlaybackDevice.EARPIECE: SoundDeviceSpeaker("earpiece"),
    }
    alice = await make_party("alice")
    bob = await make_party("bob", devices=devices)
    await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    error = await bob.rec.wait_for("on_error", int(ErrorCode.SPEAKER_START_FAIL))
    assert "no-such-speaker" in error.args[1]
    await bob.rec.wait_for("on_user_audio_available", "alice", True)
    await eventually(lambda: bob.engine.mixer.pushed > 25, "bob still receives alice's audio")
    await alice.engine.hangup()
