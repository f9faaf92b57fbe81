"""CallObserver: every callback of TUICallObserver, and an async-iterator form for bots.

Subclass :class:`CallObserver` and override what you need; every method is a no-op by default.
Callbacks run on the engine's event loop and must not block. An observer that raises is logged
and the engine goes on.

Bots that prefer ``async for`` use :meth:`CallEngine.events`, which yields :class:`CallEvent`
records named after the callbacks (``"on_call_received"``, ...) with their arguments.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from callclient.types import CallMediaType, CallRole, NetworkQualityInfo, RoomId

__all__ = ["CALLBACK_NAMES", "CallEvent", "CallObserver", "EventQueueObserver"]

logger = logging.getLogger(__name__)


class CallObserver:
    """Override the callbacks you need. Arguments follow reference/observer-callbacks.txt."""

    def on_error(self, code: int, message: str) -> None:
        """An error the engine could not recover from on its own (device, signaling, media)."""

    def on_call_received(
        self,
        caller_id: str,
        callee_id_list: list[str],
        group_id: str,
        call_media_type: CallMediaType,
    ) -> None:
        """An invitation arrived (invitee only). Accept, reject or ignore it.

        The invitation's ``userData`` is on :attr:`CallEngine.current_call`.
        """

    def on_call_cancelled(self, user_id: str) -> None:
        """The call ended before it connected: cancelled, rejected, timed out or busy.

        The caller gets its own id. An invitee gets the caller's id when the caller cancelled,
        else its own id (rejected, timed out, ignored, answered on another device).
        """

    def on_call_begin(
        self, room_id: RoomId, call_media_type: CallMediaType, call_role: CallRole
    ) -> None:
        """The call connected (both caller and invitees)."""

    def on_call_end(
        self,
        room_id: RoomId,
        call_media_type: CallMediaType,
        call_role: CallRole,
        total_time: float,
    ) -> None:
        """The call ended; ``total_time`` is its duration in seconds."""

    def on_call_media_type_changed(
        self, old_call_media_type: CallMediaType, new_call_media_type: CallMediaType
    ) -> None:
        """The call switched between audio and video."""

    def on_user_reject(self, user_id: str) -> None:
        """An invitee rejected the call."""

    def on_user_no_response(self, user_id: str) -> None:
        """An invitee did not answer before the timeout."""

    def on_user_line_busy(self, user_id: str) -> None:
        """An invitee was busy (or ignored the call)."""

    def on_user_join(self, user_id: str) -> None:
        """A user joined the call."""

    def on_user_leave(self, user_id: str) -> None:
        """A user left the call (hung up, or their connection was lost)."""

    def on_user_video_available(self, user_id: str, is_video_available: bool) -> None:
        """A user's camera turned on or off."""

    def on_user_audio_available(self, user_id: str, is_audio_available: bool) -> None:
        """A user's microphone turned on or off."""

    def on_user_voice_volume_changed(self, volume_map: dict[str, int]) -> None:
        """Every user's volume, 0..100, periodically during a call."""

    def on_user_network_quality_changed(
        self, network_quality_list: list[NetworkQualityInfo]
    ) -> None:
        """Network quality of the local user (uplink) and of remote users."""

    def on_kicked_offline(self) -> None:
        """The same user logged in elsewhere; this engine is logged out."""

    def on_user_sig_expired(self) -> None:
        """The userSig expired; log in again with a new one."""


CALLBACK_NAMES: tuple[str, ...] = tuple(
    name for name in vars(CallObserver) if name.startswith("on_")
)
"""The names of every observer callback, in declaration order."""


@dataclass(frozen=True)
class CallEvent:
    """One observer callback as a record: its name and its arguments in order."""

    name: str
    args: tuple[Any, ...]


class EventQueueObserver(CallObserver):
    """An observer that queues every callback as a :class:`CallEvent` for ``async for``.

    The queue is bounded (``maxsize``); when a consumer falls behind, the oldest events are
    dropped with a warning, so a stalled bot cannot make the engine grow without bound.
    """

    def __init__(self, maxsize: int = 1000) -> None:
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue(maxsize)
        self._dropped = 0

    def put(self, event: CallEvent) -> None:
        """Queue an event without blocking."""
        if self._queue.full():
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 100 == 0:
                logger.warning("event consumer is behind; %d events dropped", self._dropped)
            # asyncio.Queue has no "drop a chosen item": drop the oldest.
            self._queue.get_nowait()
        self._queue.put_nowait(event)

    def close(self) -> None:
        """End the iteration after the queued events."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[CallEvent]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def next(self) -> CallEvent:
        """The next event (wrap in ``asyncio.timeout`` to bound the wait)."""
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") and name in CALLBACK_NAMES:
            def record(*args: Any) -> None:
                self.put(CallEvent(name, args))

            return record
        return super().__getattribute__(name)
