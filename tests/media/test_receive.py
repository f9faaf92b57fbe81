"""The low-latency receive adapters over aiortc internals (callclient.media.receive).

They reach into aiortc's private receiver state; these tests run them over real peer
connections so that an aiortc change that moves those internals fails here, loudly.
"""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket

from callclient.media.receive import (
    AiortcInternalsChanged,
    BoundedDecoderQueue,
    ImmediateAudioJitterBuffer,
    MarkerVideoJitterBuffer,
    install_low_latency_buffers,
    is_keyframe,
    recv_newest,
)

_JITTER = "_RTCRtpReceiver__jitter_buffer"


def _packet(seq: int, timestamp: int, marker: int = 0, data: bytes = b"x") -> RtpPacket:
    packet = RtpPacket(sequence_number=seq, timestamp=timestamp, marker=marker)
    packet._data = data  # type: ignore[attr-defined]  # what aiortc's depayload sets
    return packet


def test_immediate_audio_buffer_hands_over_at_once_and_drops_late() -> None:
    """Every newer packet comes out at once; older or duplicate ones are dropped."""
    buffer = ImmediateAudioJitterBuffer()
    out = [buffer.add(_packet(seq, seq * 960))[1] for seq in (65534, 65535, 1, 0, 1, 2)]
    assert [f.timestamp if f else None for f in out] == [
        65534 * 960, 65535 * 960, 960, None, None, 1920
    ]
    assert buffer.late == 2 and buffer.packets == 4


def test_marker_video_buffer_releases_a_frame_on_its_last_packet() -> None:
    """A frame comes out when its marked last packet arrives, not one frame later."""
    buffer = MarkerVideoJitterBuffer(capacity=64)
    assert buffer.add(_packet(10, 3000, data=b"a"))[1] is None
    frame = buffer.add(_packet(11, 3000, marker=1, data=b"b"))[1]
    assert frame is not None and frame.data == b"ab" and frame.timestamp == 3000
    # A gap (packet 13 missing) holds the next frame back, as aiortc's buffer does.
    assert buffer.add(_packet(12, 6000, data=b"c"))[1] is None
    assert buffer.add(_packet(14, 6000, marker=1, data=b"e"))[1] is None
    frame = buffer.add(_packet(13, 6000, data=b"d"))[1]
    assert frame is not None and frame.data == b"cde"
    # Without a marker the frame still completes when the next one starts.
    assert buffer.add(_packet(15, 9000, data=b"f"))[1] is None
    frame = buffer.add(_packet(16, 12000, data=b"g"))[1]
    assert frame is not None and frame.data == b"f"


VP8_KEY = b"\x10\x02\x00\x9d\x01\x2a\x80\x02"
VP8_DELTA = b"\x31\x02\x00\x11\x22"


def test_keyframes_are_recognised_for_vp8_and_h264() -> None:
    assert is_keyframe(VP8_KEY) and not is_keyframe(VP8_DELTA)
    assert is_keyframe(b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x65\x88")  # SPS + IDR
    assert not is_keyframe(b"\x00\x00\x00\x01\x41\x9a")  # a non-IDR slice


def test_a_stream_joined_midway_waits_for_its_first_keyframe() -> None:
    """Through an SFU the first frames may be deltas: dropped (one PLI asked) until a key."""
    buffer = MarkerVideoJitterBuffer(capacity=64, wait_keyframe=True)
    pli, frame = buffer.add(_packet(1, 3000, marker=1, data=VP8_DELTA))
    assert frame is None and pli
    pli, frame = buffer.add(_packet(2, 6000, marker=1, data=VP8_DELTA))
    assert frame is None and not pli
    # Still no keyframe ten frames on: asked again (the first one may have been lost).
    asked = [buffer.add(_packet(seq, seq * 3000, marker=1, data=VP8_DELTA))[0]
             for seq in range(3, 13)]
    assert asked == [False] * 8 + [True, False]
    assert buffer.add(_packet(13, 39000, marker=1, data=VP8_KEY))[1] is not None
    assert buffer.add(_packet(14, 42000, marker=1, data=VP8_DELTA))[1] is not None
    assert buffer.dropped_before_keyframe == 12


def test_the_keyframe_wait_is_bounded() -> None:
    """30 frames without a recognisable keyframe: frames are decoded anyway."""
    buffer = MarkerVideoJitterBuffer(capacity=64, wait_keyframe=True)
    out = [buffer.add(_packet(seq, seq * 3000, marker=1, data=VP8_DELTA))[1]
           for seq in range(1, 33)]
    assert out[:30] == [None] * 30 and out[30] is not None and out[31] is not None
    assert not buffer.waiting_keyframe


class _FakeReceiver:
    pass


def test_install_fails_loudly_when_aiortc_internals_move() -> None:
    """A receiver without aiortc's private jitter buffer raises, it is not silently skipped."""
    with pytest.raises(AiortcInternalsChanged, match=r"update callclient\.media\.receive"):
        install_low_latency_buffers(_FakeReceiver(), "audio")  # type: ignore[arg-type]


async def test_recv_newest_fails_loudly_without_a_queue() -> None:
    """A track without aiortc's ``_queue`` raises instead of reading stale frames."""
    with pytest.raises(AiortcInternalsChanged, match="_queue"):
        await recv_newest(VideoStreamTrack())


def _frame(pts: int) -> av.VideoFrame:
    frame = av.VideoFrame(16, 16, "yuv420p")
    frame.pts = pts
    return frame


async def test_slow_consumer_sees_the_newest_frame() -> None:
    """With five frames waiting, recv_newest returns the fifth and reports four skipped;
    the end of the track still raises after the last frame."""
    track = RemoteStreamTrack(kind="video")
    queue = track._queue
    for pts in range(5):
        queue.put_nowait(_frame(pts))
    frame, skipped = await recv_newest(track)
    assert frame.pts == 4 and skipped == 4
    queue.put_nowait(_frame(5))
    queue.put_nowait(None)  # what aiortc's decoder thread sends at the end
    frame, skipped = await recv_newest(track)
    assert frame.pts == 5 and skipped == 0
    with pytest.raises(MediaStreamError):
        await recv_newest(track)


async def _pair(*tracks: MediaStreamTrack) -> tuple[RTCPeerConnection, RTCPeerConnection,
                                                    dict[str, MediaStreamTrack]]:
    """Two in-process connections; the receiver installs the buffers on its track event."""
    sender_pc, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    received: dict[str, MediaStreamTrack] = {}
    both = asyncio.Event()

    @receiver_pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        for transceiver in receiver_pc.getTransceivers():
            if transceiver.receiver.track is track:
                install_low_latency_buffers(transceiver.receiver, track.kind)
        received[track.kind] = track
        if len(received) == len(tracks):
            both.set()

    for track in tracks:
        sender_pc.addTrack(track)
    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)
    await both.wait()
    return sender_pc, receiver_pc, received


class _StampedVideo(VideoStreamTrack):
    """Small frames carrying their send time in pts (microseconds)."""

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / 30)
        image = np.full((64, 64, 3), 128, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = round(time.time() * 1e6) % (1 << 31)
        frame.time_base = fractions.Fraction(1, 1_000_000)
        return frame


async def test_installed_over_a_real_connection() -> None:
    """Over a real connection both buffers are in place, used, and media flows; a slow
    consumer of the real remote track gets a recent frame, not a queued old one."""
    sender_pc, receiver_pc, received = await _pair(AudioStreamTrack(), _StampedVideo())
    try:
        async with asyncio.timeout(10):
            audio = await received["audio"].recv()
            assert isinstance(audio, av.AudioFrame)
            await received["video"].recv()
        buffers: dict[str, Any] = {
            r.track.kind: getattr(r, _JITTER) for r in receiver_pc.getReceivers()
        }
        assert isinstance(buffers["audio"], ImmediateAudioJitterBuffer)
        assert buffers["audio"].packets > 0
        assert isinstance(buffers["video"], MarkerVideoJitterBuffer)
        assert isinstance(buffers["video"], JitterBuffer)
        # Installing again keeps the installed buffers.
        for receiver in receiver_pc.getReceivers():
            install_low_latency_buffers(receiver, receiver.track.kind)
            assert getattr(receiver, _JITTER) is buffers[receiver.track.kind]
        await asyncio.sleep(0.5)  # a slow consumer: ~15 frames pile up
        _, skipped = await recv_newest(received["video"])
        assert skipped >= 5
        queue = received["video"]._queue  # type: ignore[attr-defined]
        assert queue.qsize() == 0
    finally:
        await sender_pc.close()
        await receiver_pc.close()


def test_marker_video_buffer_gives_up_on_a_packet_lost_for_good() -> None:
    """A gap older than max_wait: the frames behind it are dropped, the newest complete frame
    comes out and a PLI is asked for, instead of a freeze until the buffer is full."""
    buffer = MarkerVideoJitterBuffer(capacity=512, max_wait=0.4)
    assert buffer.add(_packet(0, 0, marker=1, data=b"k"))[1] is not None
    # Packet 1 (all of the frame at 3000) is lost for good; one packet per frame follows.
    released = []
    plis = []
    for index in range(1, 30):
        pli, frame = buffer.add(_packet(index + 1, 3000 * (index + 1), marker=1,
                                        data=bytes([index])))
        plis.append(pli)
        released.append(frame)
    # Nothing while the gap is younger than 0.4 s of media (12 frames at 30 fps)...
    first = next(i for i, f in enumerate(released) if f is not None)
    assert 11 <= first <= 14
    assert plis[first] and not any(plis[:first])
    # ...then the newest frame at once, and every frame after it as it completes.
    assert released[first] is not None and released[first].timestamp == 3000 * (first + 2)
    assert all(f is not None for f in released[first:])
    assert buffer.frames_dropped == first + 1  # the lost one and those waiting behind it


class _Codec:
    name = "VP8"


def test_decoder_queue_skips_to_a_keyframe_when_the_decoder_falls_behind() -> None:
    """Past the backlog: the queued frames go, a PLI is asked for, deltas wait for a key."""
    keyframe_wanted = threading.Event()
    decoder_queue = BoundedDecoderQueue(keyframe_wanted, backlog=3)
    delta, key = JitterFrame(b"\x01delta", 0), JitterFrame(b"\x00key", 0)
    for _ in range(3):
        decoder_queue.put((_Codec, delta))
    assert decoder_queue.qsize() == 3 and not keyframe_wanted.is_set()
    decoder_queue.put((_Codec, delta))  # the decoder is 3 behind: skip
    assert decoder_queue.qsize() == 0 and keyframe_wanted.is_set()
    decoder_queue.put((_Codec, delta))  # not decodable without what was dropped
    assert decoder_queue.qsize() == 0
    decoder_queue.put((_Codec, key))
    decoder_queue.put((_Codec, delta))
    decoder_queue.put(None)  # the end of the track always goes through
    assert [decoder_queue.get_nowait() for _ in range(3)] == [(_Codec, key), (_Codec, delta),
                                                             None]
    assert decoder_queue.frames_dropped == 5


def test_marker_video_buffer_gives_up_on_a_gap_inside_the_oldest_frame() -> None:
    """The frame's first packet arrived, a middle one is lost for good: same recovery."""
    buffer = MarkerVideoJitterBuffer(capacity=512, max_wait=0.4)
    assert buffer.add(_packet(0, 3000, data=b"a"))[1] is None  # packet 1 (its end) is lost
    out = [buffer.add(_packet(seq, 3000 * seq, marker=1)) for seq in range(2, 30)]
    first = next(i for i, (_pli, frame) in enumerate(out) if frame is not None)
    assert out[first][0] and 10 <= first <= 14
    assert all(frame is not None for _pli, frame in out[first:])
    assert buffer.frames_dropped == first + 1


def test_decoder_queue_skips_when_the_waiting_frames_span_too_long() -> None:
    """At a low frame rate a few frames are already long: the span bounds the wait too."""
    keyframe_wanted = threading.Event()
    decoder_queue = BoundedDecoderQueue(keyframe_wanted, backlog=30, span=0.25)
    for index in range(3):  # 10 fps: 0.2 s of media waiting
        decoder_queue.put((_Codec, JitterFrame(b"\x01", 9000 * index)))
    assert decoder_queue.qsize() == 3 and not keyframe_wanted.is_set()
    decoder_queue.put((_Codec, JitterFrame(b"\x00key", 9000 * 3)))  # 0.3 s behind: skip
    assert keyframe_wanted.is_set()
    assert [decoder_queue.get_nowait()[1].data for _ in range(decoder_queue.qsize())] == [
        b"\x00key"]
    assert decoder_queue.frames_dropped == 3
