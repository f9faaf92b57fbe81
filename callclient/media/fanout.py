"""Subscriber bookkeeping shared by the encoders that serve several peers at once.

The video and the audio encoder sessions (:mod:`callclient.media.encoding`,
:mod:`callclient.media.audio_encoding`) each encode a local track once and hand the packets to
one subscriber track per peer. This base keeps the subscriber list, creates subscriptions and
closes them together with the session's pump task.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, Protocol, TypeVar

__all__ = ["FanoutSession"]


class _Subscriber(Protocol):
    def stop(self) -> None: ...


T = TypeVar("T", bound=_Subscriber)


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
