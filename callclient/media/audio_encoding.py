"""One Opus encode of the microphone for every peer.

aiortc's RTP sender encodes what its track yields, so in a mesh call the same 20 ms of audio
would be encoded once per peer (and its level computed once per peer for the RTP header
extension). :class:`AudioEncoderSession` reads the microphone track once, encodes each frame
once, and hands the packets to a :class:`EncodedAudioTrack` per peer; aiortc's sender then only
packetizes them (``OpusEncoder.pack``), as it does for the shared video encoder
(:mod:`callclient.media.encoding`).

Opus is encoded mono at 48 kHz, 20 ms per packet, on the event loop: a frame costs tens of
microseconds, less than a thread hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE
from callclient.media.fanout import FanoutSession, PacketSubscriber

__all__ = ["AudioEncoderSession", "EncodedAudioTrack"]

logger = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_QUEUE_LIMIT = 10
"""Packets (200 ms) a subscriber may leave unread; older ones are dropped, never queued up."""


class AudioEncoderSession(FanoutSession["EncodedAudioTrack"]):
    """Encodes the frames of an audio ``source`` track once for every subscriber.

    The source must give s16 mono 48 kHz frames of 20 ms (what
    :class:`~callclient.media.tracks.MicrophoneTrack` gives). It is read only while some
    subscriber is reading. The session never stops ``source``: its owner does.
    """

    kind = "audio encoder"

    def __init__(self, source: MediaStreamTrack, bitrate: int = 32_000) -> None:
        super().__init__()
        self.source = source
        self.bitrate = bitrate
        self._codec: Any = None
        self._demand = asyncio.Event()
        self._samples = 0
        self._next_pts = 0
        self.encodes = 0
        """Frames encoded (one per frame read, whatever the number of subscribers)."""

    def _new_subscriber(self) -> EncodedAudioTrack:
        return EncodedAudioTrack(self)

    async def aclose(self) -> None:
        """Stop every subscriber and the pump task. Idempotent."""
        if await self._stop_fanout():
            self._codec = None

    def _activated(self, track: EncodedAudioTrack) -> None:
        self._demand.set()
        if self._pump is None and not self._closed:
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name="audio encoder session"
            )

    def _unsubscribe(self, track: EncodedAudioTrack) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(track)
        if not any(s.active for s in self._subscribers):
            self._demand.clear()

    def _encode(self, frame: av.AudioFrame) -> list[av.Packet[Any]]:
        if self._codec is None:
            codec = av.CodecContext.create("libopus", "w")
            codec.bit_rate = self.bitrate
            codec.sample_rate = SAMPLE_RATE
            codec.layout = "mono"
            codec.format = "s16"
            codec.time_base = _TIME_BASE
            # Speech tuning: what a call carries, and about half the CPU of the default.
            codec.options = {"application": "voip"}
            self._codec = codec
        frame.pts = self._samples
        frame.time_base = _TIME_BASE
        packets: list[av.Packet[Any]] = list(self._codec.encode(frame))
        for packet in packets:
            # Each packet holds 20 ms: number them on that clock from 0, so RTP timestamps
            # advance by 960 per packet (libopus' own pts start at minus its pre-skip).
            packet.pts = self._next_pts
            packet.time_base = _TIME_BASE
            self._next_pts += BLOCK_SAMPLES
        self._samples += frame.samples
        self.encodes += 1
        return packets

    async def _run(self) -> None:
        try:
            while True:
                await self._demand.wait()
                frame = await self.source.recv()
                if not isinstance(frame, av.AudioFrame):
                    raise TypeError(f"audio source gave {type(frame).__name__}, not a frame")
                for packet in self._encode(frame):
                    for track in list(self._subscribers):
                        track._offer(packet)
        except MediaStreamError:
            logger.info("audio source ended; ending %d subscribers", len(self._subscribers))
        except Exception:
            logger.exception("audio encoder session failed")
        self._pump = None
        for track in list(self._subscribers):
            track.stop()


class EncodedAudioTrack(PacketSubscriber):
    """One peer's subscription to an :class:`AudioEncoderSession`: yields Opus packets.

    It becomes active on its first ``recv()``. A subscriber that falls more than 200 ms
    behind loses its oldest packets: audio that late is useless to a call.
    """

    kind = "audio"

    def __init__(self, session: AudioEncoderSession) -> None:
        super().__init__(session, maxlen=_QUEUE_LIMIT)

    def _offer(self, packet: av.Packet[Any]) -> None:
        if self.active:
            self._push(packet)
