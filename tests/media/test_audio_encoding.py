"""The shared Opus encoder: one encode per frame for every peer, decodable, bounded queues."""

from __future__ import annotations

import asyncio

import av
import numpy as np

from callclient.media.analysis import dominant_frequency
from callclient.media.audio_encoding import AudioEncoderSession
from callclient.media.tracks import MicrophoneTrack
from callclient.media.virtual import Tone, VirtualMicrophone


async def _session() -> tuple[AudioEncoderSession, VirtualMicrophone, MicrophoneTrack]:
    mic = VirtualMicrophone(Tone(600.0, 0.5))
    await mic.start()
    track = MicrophoneTrack(mic)
    return AudioEncoderSession(track), mic, track


async def test_one_encode_per_frame_for_three_subscribers() -> None:
    """Three subscribers get the same packets; the session encodes each frame once."""
    session, mic, track = await _session()
    subs = [session.subscribe() for _ in range(3)]
    got = await asyncio.gather(*(asyncio.gather(*(s.recv() for _ in range(25))) for s in subs))
    assert [p.pts for p in got[0]] == [p.pts for p in got[1]] == [p.pts for p in got[2]]
    assert all(a is b for a, b in zip(got[0], got[1], strict=True))
    assert session.encodes <= 27  # 25 read, at most a couple more already in flight
    assert [p.pts for p in got[0]] == [960 * i for i in range(25)]
    await session.aclose()
    track.stop()
    await mic.stop()


async def test_packets_decode_to_the_tone() -> None:
    """The packets are Opus at 48 kHz that decode to the microphone's tone."""
    session, mic, track = await _session()
    sub = session.subscribe()
    packets = [await sub.recv() for _ in range(50)]
    decoder = av.CodecContext.create("opus", "r")
    samples = []
    for packet in packets:
        for frame in decoder.decode(packet):
            data = frame.to_ndarray()
            channels = frame.layout.nb_channels
            samples.append(data[0] if frame.format.is_planar else data.reshape(-1, channels)[:, 0])
    audio = np.concatenate(samples)
    assert audio.size >= 40 * 960
    assert abs(dominant_frequency(audio[4800:]) - 600.0) < 10.0
    await session.aclose()
    track.stop()
    await mic.stop()


async def test_a_stalled_subscriber_keeps_only_the_newest_packets() -> None:
    """A subscriber that stops reading holds at most 200 ms; the others are not held back."""
    session, mic, track = await _session()
    reader, stalled = session.subscribe(), session.subscribe()
    await stalled.recv()  # active, then never read again
    for _ in range(30):
        await reader.recv()
    assert len(stalled._queue) == 10
    newest = stalled._queue[-1].pts
    assert newest is not None and newest >= 960 * 28
    stalled.stop()
    assert session.subscribers == 1
    await session.aclose()
    assert reader.readyState == "ended"
    await session.aclose()  # idempotent
    track.stop()
    await mic.stop()
