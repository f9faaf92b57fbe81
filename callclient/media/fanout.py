"""Subscriber bookkeeping shared by the encoders that serve several peers at once.

The video and the audio encoder sessions (:mod:`callclient.media.encoding`,
:mod:`callclient.media.audio_encoding`) each encode a local track once and hand the packets to
one subscriber track per peer. This base keeps the subscriber list, creates subscriptions and
closes them together with the session's pump task; :class:`PacketSubscriber` is the per-peer
track.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, Generic, Protocol, TypeVar

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

__all__ = ["FanoutSession", "PacketSubscriber"]


class _Session(Protocol):
    def _activated(self, track: Any) -> None: ...

    def _unsubscribe(self, track: Any) -> None: ...


T = TypeVar("T", bound="PacketSubscriber")


class FanoutSession(Generic[T]):
    """A session with subscriber tracks of type ``T`` and one pump task."""

    kind = "encoder"

    def __init__(self) -> None:
        self._subscribers: list[T] = []
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def subscribers(self) -> int:
        """Subscribed tracks not yet stopped."""
        return len(self._subscribers)

    def _new_subscriber(self) -> T:
        raise NotImplementedError

    def subscribe(self) -> T:
        """A new subscriber track of this session."""
        if self._closed:
            raise RuntimeError(f"the {self.kind} session is closed")
        track = self._new_subscriber()
        self._subscribers.append(track)
        return track

    async def _stop_fanout(self) -> bool:
        """Stop every subscriber and the pump; False when the session was already closed."""
        if self._closed:
            return False
        self._closed = True
        for track in list(self._subscribers):
            track.stop()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return True


class PacketSubscriber(MediaStreamTrack):
    """One peer's subscription to a fan-out session: a track that yields encoded packets.

    aiortc's sender only packetizes what such a track yields. The track becomes active on its
    first ``recv()`` (:meth:`_activate` tells the session); ``stop()`` leaves the session.
    Subclasses decide in ``_offer`` what to queue.
    """

    def __init__(self, session: _Session, maxlen: int | None = None) -> None:
        super().__init__()
        self._session = session
        self._queue: collections.deque[av.Packet[Any]] = collections.deque(maxlen=maxlen)
        self._ready = asyncio.Event()
        self._active = False
        self.packets_sent = 0
        """Packets returned by ``recv()``."""

    @property
    def active(self) -> bool:
        """Whether the track is being read (and so receives packets)."""
        return self._active

    def _activate(self) -> None:
        self._active = True
        self._session._activated(self)

    async def recv(self) -> av.Packet[Any]:
        """The next packet."""
        if self.readyState != "live":
            raise MediaStreamError
        if not self._active:
            self._activate()
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
            if self.readyState != "live":
                raise MediaStreamError
        self.packets_sent += 1
        return self._queue.popleft()

    def stop(self) -> None:
        """End the subscription. Idempotent."""
        if self.readyState == "live":
            super().stop()
            self._active = False
            self._queue.clear()
            self._session._unsubscribe(self)
        self._ready.set()

    def _push(self, packet: av.Packet[Any]) -> None:
        self._queue.append(packet)
        self._ready.set()
