"""CallObserver: every callback of TUICallObserver, as methods and as values.

Subclass :class:`CallObserver` and override what you need; every method is a no-op by default.
Callbacks run on the engine's event loop and must not block. An observer that raises is logged
and the engine goes on.

Each callback also exists as a value, a :class:`Notification` (``CallBegin(room_id, ...)``):
the engine's call core decides *which* callbacks fire in *which* order by returning these, and
the engine delivers them (:meth:`Notification.deliver`), so mypy checks every callback's name
and arguments. :class:`EventRecorder` is the base of observers that want every callback as one
:class:`CallEvent` record (name and arguments); bots that prefer ``async for`` use
:meth:`CallEngine.events`, an :class:`EventQueueObserver`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from callclient.types import CallMediaType, CallRole, NetworkQualityInfo, RoomId

__all__ = [
    "CALLBACK_NAMES",
    "NOTIFICATION_TYPES",
    "CallBegin",
    "CallCancelled",
    "CallEnd",
    "CallEvent",
    "CallMediaTypeChanged",
    "CallObserver",
    "CallReceived",
    "Error",
    "EventQueueObserver",
    "EventRecorder",
    "KickedOffline",
    "Notification",
    "UserAudioAvailable",
    "UserJoin",
    "UserLeave",
    "UserLineBusy",
    "UserNetworkQualityChanged",
    "UserNoResponse",
    "UserReject",
    "UserSigExpired",
    "UserVideoAvailable",
    "UserVoiceVolumeChanged",
]

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


# ------------------------------------------------------------------ callbacks as values


@dataclass(frozen=True)
class Notification:
    """One observer callback with its arguments; the fields are the arguments, in order."""

    callback: ClassVar[str]
    """The :class:`CallObserver` method this notification calls."""

    def deliver(self, observer: CallObserver) -> None:
        """Call the observer's callback with the arguments."""
        raise NotImplementedError

    @property
    def args(self) -> tuple[Any, ...]:
        """The callback's arguments in order."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def as_event(self) -> CallEvent:
        """This notification as a :class:`CallEvent` record."""
        return CallEvent(self.callback, self.args)


@dataclass(frozen=True)
class Error(Notification):
    """:meth:`CallObserver.on_error`."""

    callback: ClassVar[str] = "on_error"
    code: int
    message: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_error(self.code, self.message)


@dataclass(frozen=True)
class CallReceived(Notification):
    """:meth:`CallObserver.on_call_received`."""

    callback: ClassVar[str] = "on_call_received"
    caller_id: str
    callee_id_list: list[str]
    group_id: str
    call_media_type: CallMediaType

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_received(
            self.caller_id, self.callee_id_list, self.group_id, self.call_media_type
        )


@dataclass(frozen=True)
class CallCancelled(Notification):
    """:meth:`CallObserver.on_call_cancelled`."""

    callback: ClassVar[str] = "on_call_cancelled"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_cancelled(self.user_id)


@dataclass(frozen=True)
class CallBegin(Notification):
    """:meth:`CallObserver.on_call_begin`."""

    callback: ClassVar[str] = "on_call_begin"
    room_id: RoomId
    call_media_type: CallMediaType
    call_role: CallRole

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_begin(self.room_id, self.call_media_type, self.call_role)


@dataclass(frozen=True)
class CallEnd(Notification):
    """:meth:`CallObserver.on_call_end`."""

    callback: ClassVar[str] = "on_call_end"
    room_id: RoomId
    call_media_type: CallMediaType
    call_role: CallRole
    total_time: float

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_end(self.room_id, self.call_media_type, self.call_role, self.total_time)


@dataclass(frozen=True)
class CallMediaTypeChanged(Notification):
    """:meth:`CallObserver.on_call_media_type_changed`."""

    callback: ClassVar[str] = "on_call_media_type_changed"
    old_call_media_type: CallMediaType
    new_call_media_type: CallMediaType

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_media_type_changed(self.old_call_media_type, self.new_call_media_type)


@dataclass(frozen=True)
class UserReject(Notification):
    """:meth:`CallObserver.on_user_reject`."""

    callback: ClassVar[str] = "on_user_reject"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_reject(self.user_id)


@dataclass(frozen=True)
class UserNoResponse(Notification):
    """:meth:`CallObserver.on_user_no_response`."""

    callback: ClassVar[str] = "on_user_no_response"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_no_response(self.user_id)


@dataclass(frozen=True)
class UserLineBusy(Notification):
    """:meth:`CallObserver.on_user_line_busy`."""

    callback: ClassVar[str] = "on_user_line_busy"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_line_busy(self.user_id)


@dataclass(frozen=True)
class UserJoin(Notification):
    """:meth:`CallObserver.on_user_join`."""

    callback: ClassVar[str] = "on_user_join"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_join(self.user_id)


@dataclass(frozen=True)
class UserLeave(Notification):
    """:meth:`CallObserver.on_user_leave`."""

    callback: ClassVar[str] = "on_user_leave"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_leave(self.user_id)


@dataclass(frozen=True)
class UserVideoAvailable(Notification):
    """:meth:`CallObserver.on_user_video_available`."""

    callback: ClassVar[str] = "on_user_video_available"
    user_id: str
    is_video_available: bool

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_video_available(self.user_id, self.is_video_available)


@dataclass(frozen=True)
class UserAudioAvailable(Notification):
    """:meth:`CallObserver.on_user_audio_available`."""

    callback: ClassVar[str] = "on_user_audio_available"
    user_id: str
    is_audio_available: bool

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_audio_available(self.user_id, self.is_audio_available)


@dataclass(frozen=True)
class UserVoiceVolumeChanged(Notification):
    """:meth:`CallObserver.on_user_voice_volume_changed`."""

    callback: ClassVar[str] = "on_user_voice_volume_changed"
    volume_map: dict[str, int]

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_voice_volume_changed(self.volume_map)


@dataclass(frozen=True)
class UserNetworkQualityChanged(Notification):
    """:meth:`CallObserver.on_user_network_quality_changed`."""

    callback: ClassVar[str] = "on_user_network_quality_changed"
    network_quality_list: list[NetworkQualityInfo]

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_network_quality_changed(self.network_quality_list)


@dataclass(frozen=True)
class KickedOffline(Notification):
    """:meth:`CallObserver.on_kicked_offline`."""

    callback: ClassVar[str] = "on_kicked_offline"

    def deliver(self, observer: CallObserver) -> None:
        observer.on_kicked_offline()


@dataclass(frozen=True)
class UserSigExpired(Notification):
    """:meth:`CallObserver.on_user_sig_expired`."""

    callback: ClassVar[str] = "on_user_sig_expired"

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_sig_expired()


NOTIFICATION_TYPES: tuple[type[Notification], ...] = (
    Error, CallReceived, CallCancelled, CallBegin, CallEnd, CallMediaTypeChanged, UserReject,
    UserNoResponse, UserLineBusy, UserJoin, UserLeave, UserVideoAvailable, UserAudioAvailable,
    UserVoiceVolumeChanged, UserNetworkQualityChanged, KickedOffline, UserSigExpired,
)
"""One notification per callback, in :data:`CALLBACK_NAMES` order."""


# ------------------------------------------------------------------ recording observers


class EventRecorder(CallObserver):
    """An observer that turns every callback into one :class:`CallEvent` for :meth:`record`.

    Subclass it and override :meth:`record` (bots logging JSON lines, test recorders, the
    :meth:`CallEngine.events` stream). The engine hands it each notification as one record.
    """

    def record(self, event: CallEvent) -> None:
        """Handle one callback; called on the engine's event loop, must not block."""
        raise NotImplementedError


def _recording(name: str) -> Callable[..., None]:
    def callback(self: EventRecorder, *args: Any) -> None:
        self.record(CallEvent(name, args))

    callback.__name__ = name
    callback.__doc__ = getattr(CallObserver, name).__doc__
    return callback


for _name in CALLBACK_NAMES:
    setattr(EventRecorder, _name, _recording(_name))
del _name


class EventQueueObserver(EventRecorder):
    """An observer that queues every callback as a :class:`CallEvent` for ``async for``.

    The queue is bounded (``maxsize``); when a consumer falls behind, the oldest events are
    dropped with a warning, so a stalled bot cannot make the engine grow without bound.
    """

    def __init__(self, maxsize: int = 1000) -> None:
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue(maxsize)
        self._dropped = 0

    def record(self, event: CallEvent) -> None:
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
