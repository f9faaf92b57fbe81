"""Low-latency receiving over aiortc: the project's adapters over aiortc's receive internals.

aiortc's :class:`~aiortc.rtcrtpreceiver.RTCRtpReceiver` reassembles frames in a
:class:`~aiortc.jitterbuffer.JitterBuffer` it builds itself and exposes no way to configure:

* audio: ``JitterBuffer(capacity=16, prefetch=4)`` holds every packet until four more have
  arrived (80 ms at 20 ms per packet) and, when one is lost, holds everything behind the gap
  until 16 packets have piled up: under 20 % loss only 10..18 of 50 packets per second
  come out.
* video: a frame is only released when the first packet of the *next* frame arrives (it
  looks for a timestamp change and ignores the RTP marker bit that ends a frame), which
  adds one frame interval (33 ms at 30 fps) to every frame.

The decoded frames then wait in the track's unbounded ``asyncio.Queue``, so a consumer that
falls behind sees older and older frames.

This module replaces both buffers per receiver (:func:`install_low_latency_buffers`), bounds
the video decoder's input queue (:class:`BoundedDecoderQueue`: a decoder that falls behind
skips to a keyframe) and reads the newest decoded frame of a track (:func:`recv_newest`);
:func:`receive_drops` gives a remote video track's drop counters per stage. It is the only
place that touches these aiortc internals, and every access is checked: a receiver without
the private ``_RTCRtpReceiver__jitter_buffer`` (or ``__decoder_queue``) attribute, or a track
whose ``_queue`` is not an ``asyncio.Queue``, raises :class:`AiortcInternalsChanged` instead
of silently doing nothing (``tests/media/test_receive.py`` runs them over real connections).
Nothing is patched globally: only the receivers of this project's peer connections are changed.

Audio jitter is absorbed after decoding, in the adaptive playout buffer of the
:class:`~callclient.media.mixer.Mixer`, which knows when the speaker needs each block.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

__all__ = [
    "AiortcInternalsChanged",
    "BoundedDecoderQueue",
    "ImmediateAudioJitterBuffer",
    "MarkerVideoJitterBuffer",
    "ReceiveDrops",
    "connect_receivers",
    "install_low_latency_buffers",
    "is_keyframe",
    "receive_drops",
    "recv_newest",
]

_JITTER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
_DECODER_QUEUE_ATTRIBUTE = "_RTCRtpReceiver__decoder_queue"
_DECODER_ERROR_ATTRIBUTE = "_RTCRtpReceiver__decoder_error"
DECODE_BACKLOG = 30
"""Encoded video frames the decoder may fall behind before it skips (whatever their span)."""
DECODE_SPAN = 0.25
"""Seconds of media (RTP timestamps) the decoder may fall behind before it skips."""
_VIDEO_CLOCK = 90000
_HALF_SEQ = 1 << 15
_KEYFRAME_ASK_EVERY = 10
"""Frames dropped while waiting for a keyframe between two keyframe requests."""
_KEYFRAME_WAIT_LIMIT = 30
"""Frames dropped at most while waiting for a keyframe (1 s at 30 fps, 3 s at 10 fps)."""


class AiortcInternalsChanged(RuntimeError):
    """An aiortc internal this module relies on is gone or changed (update this module)."""


class ImmediateAudioJitterBuffer:
    """An audio jitter buffer that hands over every packet as soon as it arrives.

    Each Opus RTP packet is a whole frame, so nothing needs reassembling: a packet newer than
    the last one handed over goes to the decoder at once; a late (older) or duplicate one is
    dropped and counted. Gaps are not waited out: the playout buffer conceals them. Same
    interface as aiortc's ``JitterBuffer.add``.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self.packets = 0
        """Packets handed to the decoder."""
        self.late = 0
        """Packets dropped because a newer one was already handed over (or duplicates)."""

    @property
    def capacity(self) -> int:
        """Packets held: always 0 (kept for aiortc's interface)."""
        return 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """The frame of ``packet`` at once, or None for a late or duplicate packet."""
        seq = packet.sequence_number
        if self._last is not None:
            ahead = uint16_add(seq, -self._last)
            if ahead == 0 or ahead >= _HALF_SEQ:
                self.late += 1
                return False, None
        self._last = seq
        self.packets += 1
        data: bytes = getattr(packet, "_data", packet.payload)
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


class MarkerVideoJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, releasing a frame as soon as its last packet arrives,
    and never waiting more than ``max_wait`` seconds for a lost packet.

    Senders set the RTP marker bit on the last packet of each video frame (aiortc does, as
    RFC 7741 and RFC 6184 require). aiortc's buffer ignores it and waits for a packet of the
    next frame; this one releases a frame once every packet from the first to the marked
    one is present.

    A packet that is lost for good (its retransmission lost too, or beyond the sender's
    history) stalls aiortc's buffer until ``capacity`` newer packets have arrived: at a low
    bitrate that is tens of seconds of frozen video. Here, once the newest packet is
    ``max_wait`` seconds of media time (RTP timestamps) newer than the oldest one waiting
    behind the gap, the incomplete frame is dropped (counted in :attr:`frames_dropped`), the
    frames after it are released and a PLI is asked for (the sender's next keyframe repairs
    the picture). Other loss handling and capacity are aiortc's.
    """

    def __init__(
        self, capacity: int = 512, max_wait: float = 0.4, *, wait_keyframe: bool = False
    ) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self._max_wait_ticks = int(max_wait * _VIDEO_CLOCK)
        self.frames_dropped = 0
        """Incomplete frames given up on (a packet lost for good)."""
        self.waiting_keyframe = wait_keyframe
        """Drop frames until the first keyframe (set for a stream joined midway, through an
        SFU: a delta frame without its reference decodes to garbage)."""
        self.dropped_before_keyframe = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """aiortc's ``add``, then give up on a gap older than ``max_wait``, then hold frames
        back until a keyframe while :attr:`waiting_keyframe`."""
        pli, frame = super().add(packet)
        if frame is None and self._origin is not None and self._skip_stale_gap(packet.timestamp):
            pli, frame = True, self._remove_frame(packet.sequence_number)
        if frame is not None and self.waiting_keyframe:
            if self.dropped_before_keyframe >= _KEYFRAME_WAIT_LIMIT:
                # No keyframe recognised for that long (lost, or not recognisable): decode
                # anyway; the decoder's errors ask for one as they do for any stream.
                self.waiting_keyframe = False
                self.dropped_before_keyframe = 0
                return pli, frame
            if not is_keyframe(frame.data):
                self.dropped_before_keyframe += 1
                # Ask for a keyframe (the SFU forwards it to the sender), and again every
                # few frames: the one answering the first request may be lost.
                return pli or self.dropped_before_keyframe % _KEYFRAME_ASK_EVERY == 1, None
            self.waiting_keyframe = False
        return pli, frame

    def _skip_stale_gap(self, newest: int) -> bool:
        """After a stale gap in the oldest frame, drop everything before the newest frame
        start.

        Frames behind a lost packet cannot be decoded correctly anyway (they reference the
        lost one) and only the keyframe the PLI brings repairs the picture; releasing them
        one per arriving packet would keep the video that many frames late. True if done.
        """
        assert self._origin is not None
        previous: RtpPacket | None = None
        stale_checked = False
        start: int | None = None
        seen: list[tuple[int, int]] = []  # (position, timestamp) of the packets present
        head_lost = self._packets[self._origin % self._capacity] is None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is not None and not stale_checked:
                stale_checked = True
                if (newest - packet.timestamp) % (1 << 32) <= self._max_wait_ticks:
                    return False  # not stale yet (the modulo handles timestamp wrap)
            if packet is not None and previous is not None and (
                packet.timestamp != previous.timestamp
            ):
                # Right after a packet of another frame: ``packet`` starts a frame.
                start = count
            if packet is not None:
                seen.append((count, packet.timestamp))
            previous = packet
        if start is None:
            return False
        self.remove(start)
        # The frames given up: the one with the lost packet and every one after it.
        self.frames_dropped += int(head_lost) + len({ts for count, ts in seen if count < start})
        return True

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._origin is None:
            return None
        packets: list[RtpPacket] = []
        timestamp: int | None = None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                # The previous frame ended without a marker: complete all the same.
                return self._take(packets, timestamp, count)
            packets.append(packet)
            if packet.marker:
                return self._take(packets, timestamp, count + 1)
        return None

    def _take(self, packets: list[RtpPacket], timestamp: int, count: int) -> JitterFrame:
        data = b"".join(getattr(p, "_data", b"") for p in packets)
        self.remove(count)
        return JitterFrame(data=data, timestamp=timestamp)


def is_keyframe(data: bytes) -> bool:
    """Whether a depayloaded VP8 or H.264 (Annex B) frame is a keyframe.

    H.264: an IDR slice (NAL type 5) or an SPS (7) among its NAL units. VP8 (RFC 6386 9.1): the
    inverse key-frame bit of the first byte is 0 (and bytes 3..5 are the start code 9d 01 2a);
    a frame with that bit 0 but no start code is not VP8 and counts as a keyframe, so nothing
    unrecognised is held back.
    """
    if data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        index = data.find(b"\x00\x00\x01")
        while index != -1 and index + 3 < len(data):
            if data[index + 3] & 0x1F in (5, 7):
                return True
            index = data.find(b"\x00\x00\x01", index + 3)
        return False
    return not data or not data[0] & 1


class BoundedDecoderQueue(queue.Queue[Any]):
    """aiortc's decoder input queue, skipping to a keyframe when the decoder falls behind.

    aiortc decodes in one thread per receiver, fed by an unbounded queue: on a starved
    machine encoded frames pile up there and the video falls seconds behind. Here, when
    ``backlog`` frames are already waiting, or the waiting frames span more than ``span``
    seconds of media (at a low frame rate a few frames are already long), they are dropped,
    a PLI is asked for (through the receiver's decode-error event, which aiortc turns into a
    PLI) and frames are dropped until a keyframe arrives; the decoder then goes on from it.
    Counted in :attr:`frames_dropped`. The end-of-track ``None`` always goes through.
    """

    def __init__(
        self,
        request_keyframe: threading.Event,
        backlog: int = DECODE_BACKLOG,
        span: float = DECODE_SPAN,
    ) -> None:
        super().__init__()
        self.backlog = backlog
        self._span_ticks = int(span * _VIDEO_CLOCK)
        self._request_keyframe = request_keyframe
        self._awaiting_keyframe = False
        self.frames_dropped = 0
        """Encoded frames not decoded because the decoder was too far behind."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``(codec, frame)`` (or None), skipping as the class docstring says."""
        if item is not None:
            _codec, frame = item
            if self._awaiting_keyframe:
                if not is_keyframe(frame.data):
                    self.frames_dropped += 1
                    return
                self._awaiting_keyframe = False
            elif self.qsize() >= self.backlog or self._behind(frame.timestamp):
                with self.mutex:
                    dropped = [i for i in self.queue if i is not None]
                    self.queue = type(self.queue)(i for i in self.queue if i is None)
                self.frames_dropped += len(dropped)
                self._request_keyframe.set()
                if not is_keyframe(frame.data):
                    self.frames_dropped += 1
                    self._awaiting_keyframe = True
                    return
        super().put(item, block, timeout)


    def _behind(self, timestamp: int) -> bool:
        with self.mutex:
            oldest = next((i for i in self.queue if i is not None), None)
        if oldest is None:
            return False
        return bool((timestamp - oldest[1].timestamp) % (1 << 32) > self._span_ticks)


@dataclass
class ReceiveDrops:
    """The receive-side frame drops of one remote video track, per stage."""

    jitter: MarkerVideoJitterBuffer
    decoder: BoundedDecoderQueue

    @property
    def jitter_frames(self) -> int:
        """Incomplete frames given up on (a packet lost for good)."""
        return self.jitter.frames_dropped

    @property
    def decode_frames(self) -> int:
        """Encoded frames skipped because the decoder fell behind."""
        return self.decoder.frames_dropped


_DROPS: weakref.WeakKeyDictionary[MediaStreamTrack, ReceiveDrops] = weakref.WeakKeyDictionary()


def receive_drops(track: MediaStreamTrack) -> ReceiveDrops | None:
    """The drop counters of a remote video track set up by :func:`install_low_latency_buffers`."""
    return _DROPS.get(track)


def _check_receiver(receiver: RTCRtpReceiver) -> None:
    current = getattr(receiver, _JITTER_ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer | ImmediateAudioJitterBuffer):
        raise AiortcInternalsChanged(
            f"aiortc's RTCRtpReceiver no longer has a JitterBuffer in {_JITTER_ATTRIBUTE} "
            f"(found {type(current).__name__}); update callclient.media.receive"
        )


def install_low_latency_buffers(
    receiver: RTCRtpReceiver, kind: str, *, wait_keyframe: bool = False
) -> None:
    """Give ``receiver`` the low-latency jitter buffer for ``kind`` ("audio" or "video").

    Call it before media arrives (from the connection's ``track`` event, which aiortc fires
    in ``setRemoteDescription``, before it connects). Installing twice keeps the first (with
    ``wait_keyframe`` it waits for a keyframe again: an SFU reused the receiver).
    ``wait_keyframe`` (video) drops frames until the first keyframe: for a stream joined
    midway, as an SFU forwards it.
    Raises :class:`AiortcInternalsChanged` if aiortc's receiver no longer looks as expected.
    """
    _check_receiver(receiver)
    current = getattr(receiver, _JITTER_ATTRIBUTE)
    if isinstance(current, ImmediateAudioJitterBuffer | MarkerVideoJitterBuffer):
        if wait_keyframe and isinstance(current, MarkerVideoJitterBuffer):
            current.waiting_keyframe = True  # the receiver now carries another stream
        return
    replacement: Any
    if kind == "audio":
        replacement = ImmediateAudioJitterBuffer()
    elif kind == "video":
        replacement = MarkerVideoJitterBuffer(current.capacity, wait_keyframe=wait_keyframe)
        error = getattr(receiver, _DECODER_ERROR_ATTRIBUTE, None)
        old_queue = getattr(receiver, _DECODER_QUEUE_ATTRIBUTE, None)
        if not isinstance(error, threading.Event) or type(old_queue) is not queue.Queue:
            raise AiortcInternalsChanged(
                f"aiortc's RTCRtpReceiver no longer has a queue.Queue in "
                f"{_DECODER_QUEUE_ATTRIBUTE} and an Event in {_DECODER_ERROR_ATTRIBUTE}; "
                "update callclient.media.receive"
            )
        decoder_queue = BoundedDecoderQueue(error)
        setattr(receiver, _DECODER_QUEUE_ATTRIBUTE, decoder_queue)
        _DROPS[receiver.track] = ReceiveDrops(replacement, decoder_queue)
    else:
        raise ValueError(f"kind must be audio or video, not {kind!r}")
    setattr(receiver, _JITTER_ATTRIBUTE, replacement)


async def connect_receivers(pc: Any) -> None:
    """Start the receivers a renegotiation added, before the remote side sends to them.

    aiortc starts them in a task it schedules from ``setLocalDescription``; until it runs, the
    packets of a new stream whose payload type one started receiver already has are routed
    to that receiver (and its SSRC stays mapped there), mixing two streams in one decoder.
    An SFU starts the new streams as soon as it has the answer, so the caller awaits this
    between ``setLocalDescription`` and sending the answer, on a connection already
    connected (on a new one it would wait for the handshake the answer starts).
    """
    connect = getattr(pc, "_RTCPeerConnection__connect", None)
    if connect is None:
        raise AiortcInternalsChanged(
            "aiortc's RTCPeerConnection no longer has __connect; update callclient.media.receive"
        )
    await connect()


def _track_queue(track: MediaStreamTrack) -> asyncio.Queue[Any]:
    queue = getattr(track, "_queue", None)
    if not isinstance(queue, asyncio.Queue):
        raise AiortcInternalsChanged(
            f"{type(track).__name__} has no asyncio.Queue in _queue (found "
            f"{type(queue).__name__}); update callclient.media.receive.recv_newest"
        )
    return queue


async def recv_newest(track: MediaStreamTrack) -> tuple[Any, int]:
    """Wait for a frame of a remote ``track``; return the newest one queued and how many
    older ones were skipped.

    aiortc's ``RemoteStreamTrack`` queues every decoded frame without bound; a consumer
    that renders slower than frames arrive would fall further and further behind. This
    waits like ``track.recv()`` and then takes the rest of the queue, keeping the newest.
    Raises ``MediaStreamError`` when the track ended (after the newest frame, if any, was
    returned by an earlier call). Tracks that are not aiortc remote tracks (no ``_queue``)
    raise :class:`AiortcInternalsChanged`.
    """
    queue = _track_queue(track)
    frame = await track.recv()
    skipped = 0
    while True:
        try:
            newer = queue.get_nowait()
        except asyncio.QueueEmpty:
            return frame, skipped
        if newer is None:
            # The end of the track: put it back for the next call, return what we have.
            queue.put_nowait(None)
            return frame, skipped
        frame = newer
        skipped += 1

