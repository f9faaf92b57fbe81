"""Echo cancellation through the real sounddevice path: PortAudio, ALSA, PulseAudio.

A loopback carries what the ``speakerphone`` null sink plays into the ``room`` sink, whose
monitor is the ``roommic`` microphone: the speaker is heard in the microphone after the
devices' and the loopback's latencies (the echo canceller finds the delay). Far-end speech is
mixed into a :class:`SoundDeviceSpeaker` through the processor's tap, as the engine does; the
microphone is read by a processed :class:`MicrophoneTrack`; a near-end talker is played into
the room halfway (double talk).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest

from callclient.media.base import BLOCK_SAMPLES, BLOCK_SECONDS, AudioSource, Block
from callclient.media.devices import SoundDeviceMicrophone, SoundDeviceSpeaker
from callclient.media.mixer import Mixer
from callclient.media.processing import AudioProcessing, CaptureProcessor
from callclient.media.tracks import MicrophoneTrack
from tests.helpers.audio_metrics import FS, corr, db, find_lag, power, to_float
from tests.helpers.speech import speech, to_int16

if TYPE_CHECKING:
    from pulse_fixture import PulseServer

FAR_ONLY = (3.0, 10.0)
"""Seconds of far-end-only speech measured (after 3 s of convergence)."""
DOUBLE_TALK = (10.0, 16.0)
LOOPBACK_VOLUME = "50%"
"""The loopback's volume: about -18 dB, the echo well below the far end."""
ATTEMPTS = 3
SETTLE_SECONDS = 1.5
"""AEC3 reconverges within about a second after the echo path moves (with a margin)."""
MIN_MEASURED = 4.0
"""Seconds of far-end-only speech measured at least, after the last realignment."""


class RecordedSource(AudioSource):
    """A microphone whose raw blocks are kept (the processing's input)."""

    def __init__(self, inner: AudioSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.blocks: list[Block] = []

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def read(self) -> Block:
        block = await self.inner.read()
        self.blocks.append(np.array(block))
        return block


def _write_wav(path: Path, samples: npt.NDArray[np.int16]) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(FS)
        out.writeframes(samples.astype("<i2").tobytes())


@contextlib.contextmanager
def _loopback(pulse: PulseServer) -> object:
    """The echo path: speakerphone's monitor into the room sink, at LOOPBACK_VOLUME."""
    module = pulse.pactl(
        "load-module", "module-loopback", "source=speakerphone.monitor",
        f"sink={pulse.room}", "latency_msec=40", "source_dont_move=true",
        "sink_dont_move=true",
    ).strip()
    try:
        inputs = pulse.pactl("list", "sink-inputs").split("Sink Input #")[1:]
        owned = [text.split()[0] for text in inputs if f"Owner Module: {module}\n" in text]
        assert len(owned) == 1, f"no sink input of the loopback module {module}: {inputs}"
        pulse.pactl("set-sink-input-volume", owned[0], LOOPBACK_VOLUME)
        yield module
    finally:
        pulse.pactl("unload-module", module)


async def test_echo_cancelled_through_pulseaudio_loopback(
    pulse: PulseServer, tmp_path: Path
) -> None:
    """Speech played on the speakerphone sink comes back through the loopback into the
    microphone; processed, the far-end-only stretch is >= 25 dB quieter than the
    microphone, and the near-end talker keeps >= 0.8 correlation during double talk."""
    disturbed = []
    for _ in range(ATTEMPTS):
        result = await _run(pulse, tmp_path)
        # A run is disturbed when the card starved, or when the pairing skipped reference (a
        # standing backlog: PortAudio's prefill, or the speaker's callbacks late in a burst)
        # too late to leave MIN_MEASURED s of far-end-only speech after SETTLE_SECONDS of
        # reconvergence. A skip shifts the echo path under AEC3, which reconverges for about a
        # second (docs/audio.md, known limits); the ERLE is measured from then on. One skip of
        # one block (960 samples) in every attempt was seen on CI and on a loaded machine.
        if result["starved"] == 0 and result["late_skips"] == 0:
            break
        disturbed.append((result["starved"], result["late_skips"]))
    else:
        pytest.fail(f"every run was disturbed ((underflows/overflows, reference samples "
                    f"skipped): {disturbed}): the machine is too busy to measure echo "
                    "cancellation in real time")
    print(f"pulseaudio: {result}")
    assert result["unprocessed"] == 0, result
    assert result["echo_dbfs"] > -50.0, f"no echo reached the microphone: {result}"
    assert result["erle"] >= 25.0, result
    assert result["double_talk"] >= 0.8, result


async def _run(pulse: PulseServer, tmp_path: Path) -> dict[str, float]:
    """One real-time run: ERLE, double-talk correlation and how often the card starved."""
    far = to_int16(speech("far", -26.0, seconds=DOUBLE_TALK[1] + 1.0))
    near = speech("near", -26.0, seconds=DOUBLE_TALK[1] - DOUBLE_TALK[0])
    near_wav = tmp_path / "near.wav"
    _write_wav(near_wav, to_int16(near))
    processor = CaptureProcessor(AudioProcessing())
    mixer = Mixer()
    speaker = SoundDeviceSpeaker("speakerphone")
    device = SoundDeviceMicrophone(pulse.room_mic)
    microphone = RecordedSource(device)
    track = MicrophoneTrack(microphone)
    track.process = processor.process
    sent: list[Block] = []

    async def read() -> None:
        while True:
            frame = await track.recv()
            sent.append(frame.to_ndarray().reshape(-1).astype(np.int16))

    async def feed() -> None:
        due = time.monotonic()
        for offset in range(0, far.size - BLOCK_SAMPLES + 1, BLOCK_SAMPLES):
            mixer.push("far", far[offset : offset + BLOCK_SAMPLES])
            due += BLOCK_SECONDS
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    with _loopback(pulse):
        await microphone.start()
        reader = asyncio.create_task(read())
        feeder = asyncio.create_task(feed())
        await asyncio.sleep(0.1)
        await speaker.start(processor.tap(mixer.pull))
        started = len(microphone.blocks)
        talker: asyncio.subprocess.Process | None = None
        skips: list[float] = []  # seconds after the speaker started, when reference was skipped

        async def watch_skips() -> None:
            seen, begun = 0, time.monotonic()
            while True:
                await asyncio.sleep(0.05)
                now = processor.stats.reference["discarded"]
                if now > seen:
                    skips.append(time.monotonic() - begun)
                    seen = now

        watcher = asyncio.create_task(watch_skips())
        try:
            await asyncio.sleep(DOUBLE_TALK[0])
            talker = await asyncio.create_subprocess_exec(
                "paplay", "-d", pulse.room, str(near_wav), env=pulse.env)
            await asyncio.sleep(DOUBLE_TALK[1] - DOUBLE_TALK[0] + 0.5)
        finally:
            if talker is not None:
                async with asyncio.timeout(10.0):
                    await talker.wait()
            feeder.cancel()
            reader.cancel()
            watcher.cancel()
            await asyncio.gather(feeder, reader, watcher, return_exceptions=True)
            await speaker.stop()
            track.stop()
            await microphone.stop()
            await processor.aclose()

    raw = to_float(np.concatenate(microphone.blocks[started:]))
    out = to_float(np.concatenate(sent[started:]))
    n = min(raw.size, out.size)
    raw, out = raw[:n], out[:n]

    def window(x: npt.NDArray[np.float64], span: tuple[float, float]) -> npt.NDArray[
        np.float64
    ]:
        return x[round(span[0] * FS) : round(span[1] * FS)]

    measured = (max([FAR_ONLY[0], *(t + SETTLE_SECONDS for t in skips)]), FAR_ONLY[1])
    late = [t for t in skips if t + SETTLE_SECONDS > FAR_ONLY[1] - MIN_MEASURED]
    echo_db = db(power(window(raw, measured)))
    # Where the near-end talker starts in the microphone (paplay's start is not exact).
    start = find_lag(near, window(raw, (DOUBLE_TALK[0] - 1.0, DOUBLE_TALK[1] + 1.0)),
                     max_ms=2000.0, min_ms=0.0) + round((DOUBLE_TALK[0] - 1.0) * FS)
    heard = out[start : start + near.size]
    lag = find_lag(near[: heard.size], heard, max_ms=60.0, min_ms=0.0)
    stats = processor.stats
    return {
        "echo_dbfs": round(echo_db, 1),
        "erle": round(echo_db - db(power(window(out, measured))), 1),
        "measured_from_s": round(measured[0], 2),
        "skips_at_s": [round(t, 2) for t in skips],
        "late_skips": len(late),
        "double_talk": round(corr(near[: heard.size - lag], heard[lag:]), 3),
        "starved": speaker.underflows + device.overflows + device.dropped,
        "unprocessed": stats.unprocessed,
        "cpu_ms_per_block": round(stats.cpu_seconds * 1000 / max(stats.blocks, 1), 3),
        **{f"reference_{k}": v for k, v in stats.reference.items()},
    }
