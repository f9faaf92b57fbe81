"""CallObserver: every callback of TUICallObserver, as methods and as values.

Subclass :class:`CallObserver` and override what you need; every method is a no-op by default.
Callbacks run on the engine's event loop and must not block. An observer that raises is logged
and the engine goes on.

Each callback also exists as a value, a :class:`Notification` (``CallBegin(room_id, ...)``):
the engine's call core decides *which* callbacks fire in *which* order by returning these, and
the engine delivers them (:meth:`Notification.deliver`), so mypy checks every callback's name
and arguments. :class:`EventRecorder` is the base of observers that want every callback as one
:class:`CallEvent` record (name and arguments); bots that prefer ``async for`` use
:meth:`CallEngine.events`, an :class:`EventQueueObserver`. Each record also names the web
SDK's TUICallEvent it corresponds to (:attr:`CallEvent.web_event`: ``USER_VOICE_VOLUME``,
``DEVICED_UPDATED``, ...), so a stream can be read in the web vocabulary.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from callclient.types import (
    AudioDeviceInfo,
    CallMediaType,
    CallRole,
    CameraInfo,
    NetworkQualityInfo,
    RoomId,
)

__all__ = [
    "CALLBACK_NAMES",
    "NOTIFICATION_TYPES",
    "WEB_EVENTS",
    "CallBegin",
    "CallCancelled",
    "CallEnd",
    "CallEvent",
    "CallMediaTypeChanged",
    "CallObserver",
    "CallReceived",
    "DevicesUpdated",
    "Error",
    "EventQueueObserver",
    "EventRecorder",
    "KickedOffline",
    "Notification",
    "UserAudioAvailable",
    "UserInfoChanged",
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
        else its own id (rejected, timed out, ignored, answered on another device, or the call
        interrupted: the caller vanished, this engine logged out or was kicked offline).
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
        """The call ended (also when this engine logs out or is kicked offline during it);
        ``total_time`` is its duration in seconds, to the millisecond."""

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

    def on_user_info_changed(self, user_id: str, nickname: str, avatar: str) -> None:
        """What the engine knows of a user's nickname or avatar changed (extension).

        Fired when an invitation, a user entering the call, a change the user made, or
        :meth:`CallEngine.get_users_info` tells something new; read the whole cache with
        :meth:`CallEngine.user_info`.
        """

    def on_devices_updated(
        self,
        microphone_list: list[AudioDeviceInfo],
        camera_list: list[CameraInfo],
        current_microphone_id: str,
        current_camera_id: str,
        speaker_list: list[AudioDeviceInfo],
        current_speaker_id: str,
    ) -> None:
        """A camera, microphone or speaker was plugged in or removed (web ``DEVICED_UPDATED``).

        The lists are the devices present now; the current ids are those of the devices the
        engine uses (``""``: the system default or none); ``speaker_list`` and
        ``current_speaker_id`` extend the web event's fields.
        """


CALLBACK_NAMES: tuple[str, ...] = tuple(
    name for name in vars(CallObserver) if name.startswith("on_")
)
"""The names of every observer callback, in declaration order."""


@dataclass(frozen=True)
class CallEvent:
    """One observer callback as a record: its name and its arguments in order."""

    name: str
    args: tuple[Any, ...]

    @property
    def web_event(self) -> str:
        """The web SDK's TUICallEvent name of this callback (``USER_VOICE_VOLUME`` for
        ``on_user_voice_volume_changed``, ...); see :data:`WEB_EVENTS`."""
        return WEB_EVENTS.get(self.name, "")


# ------------------------------------------------------------------ callbacks as values


@dataclass(frozen=True)
class Notification:
    """One observer callback with its arguments; the fields are the arguments, in order."""

    callback: ClassVar[str]
    """The :class:`CallObserver` method this notification calls."""
    web_event: ClassVar[str]
    """The web SDK's TUICallEvent of the same meaning."""

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
    web_event: ClassVar[str] = "ERROR"
    code: int
    message: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_error(self.code, self.message)


@dataclass(frozen=True)
class CallReceived(Notification):
    """:meth:`CallObserver.on_call_received`."""

    callback: ClassVar[str] = "on_call_received"
    web_event: ClassVar[str] = "ON_CALL_RECEIVED"
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
    web_event: ClassVar[str] = "ON_CALL_CANCELED"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_cancelled(self.user_id)


@dataclass(frozen=True)
class CallBegin(Notification):
    """:meth:`CallObserver.on_call_begin`."""

    callback: ClassVar[str] = "on_call_begin"
    web_event: ClassVar[str] = "ON_CALL_BEGIN"
    room_id: RoomId
    call_media_type: CallMediaType
    call_role: CallRole

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_begin(self.room_id, self.call_media_type, self.call_role)


@dataclass(frozen=True)
class CallEnd(Notification):
    """:meth:`CallObserver.on_call_end`."""

    callback: ClassVar[str] = "on_call_end"
    web_event: ClassVar[str] = "CALLING_END"
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
    web_event: ClassVar[str] = "CALL_TYPE_CHANGED"
    old_call_media_type: CallMediaType
    new_call_media_type: CallMediaType

    def deliver(self, observer: CallObserver) -> None:
        observer.on_call_media_type_changed(self.old_call_media_type, self.new_call_media_type)


@dataclass(frozen=True)
class UserReject(Notification):
    """:meth:`CallObserver.on_user_reject`."""

    callback: ClassVar[str] = "on_user_reject"
    web_event: ClassVar[str] = "REJECT"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_reject(self.user_id)


@dataclass(frozen=True)
class UserNoResponse(Notification):
    """:meth:`CallObserver.on_user_no_response`."""

    callback: ClassVar[str] = "on_user_no_response"
    web_event: ClassVar[str] = "NO_RESP"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_no_response(self.user_id)


@dataclass(frozen=True)
class UserLineBusy(Notification):
    """:meth:`CallObserver.on_user_line_busy`."""

    callback: ClassVar[str] = "on_user_line_busy"
    web_event: ClassVar[str] = "LINE_BUSY"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_line_busy(self.user_id)


@dataclass(frozen=True)
class UserJoin(Notification):
    """:meth:`CallObserver.on_user_join`."""

    callback: ClassVar[str] = "on_user_join"
    web_event: ClassVar[str] = "USER_ENTER"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_join(self.user_id)


@dataclass(frozen=True)
class UserLeave(Notification):
    """:meth:`CallObserver.on_user_leave`."""

    callback: ClassVar[str] = "on_user_leave"
    web_event: ClassVar[str] = "USER_LEAVE"
    user_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_leave(self.user_id)


@dataclass(frozen=True)
class UserVideoAvailable(Notification):
    """:meth:`CallObserver.on_user_video_available`."""

    callback: ClassVar[str] = "on_user_video_available"
    web_event: ClassVar[str] = "USER_VIDEO_AVAILABLE"
    user_id: str
    is_video_available: bool

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_video_available(self.user_id, self.is_video_available)


@dataclass(frozen=True)
class UserAudioAvailable(Notification):
    """:meth:`CallObserver.on_user_audio_available`."""

    callback: ClassVar[str] = "on_user_audio_available"
    web_event: ClassVar[str] = "USER_AUDIO_AVAILABLE"
    user_id: str
    is_audio_available: bool

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_audio_available(self.user_id, self.is_audio_available)


@dataclass(frozen=True)
class UserVoiceVolumeChanged(Notification):
    """:meth:`CallObserver.on_user_voice_volume_changed`."""

    callback: ClassVar[str] = "on_user_voice_volume_changed"
    web_event: ClassVar[str] = "USER_VOICE_VOLUME"
    volume_map: dict[str, int]

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_voice_volume_changed(self.volume_map)


@dataclass(frozen=True)
class UserNetworkQualityChanged(Notification):
    """:meth:`CallObserver.on_user_network_quality_changed`."""

    callback: ClassVar[str] = "on_user_network_quality_changed"
    web_event: ClassVar[str] = "ON_USER_NETWORK_QUALITY_CHANGED"
    network_quality_list: list[NetworkQualityInfo]

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_network_quality_changed(self.network_quality_list)


@dataclass(frozen=True)
class KickedOffline(Notification):
    """:meth:`CallObserver.on_kicked_offline`."""

    callback: ClassVar[str] = "on_kicked_offline"
    web_event: ClassVar[str] = "KICKED_OUT"

    def deliver(self, observer: CallObserver) -> None:
        observer.on_kicked_offline()


@dataclass(frozen=True)
class UserSigExpired(Notification):
    """:meth:`CallObserver.on_user_sig_expired`."""

    callback: ClassVar[str] = "on_user_sig_expired"
    web_event: ClassVar[str] = "USER_SIG_EXPIRED"

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_sig_expired()


@dataclass(frozen=True)
class UserInfoChanged(Notification):
    """:meth:`CallObserver.on_user_info_changed`."""

    callback: ClassVar[str] = "on_user_info_changed"
    web_event: ClassVar[str] = "USER_INFO_CHANGED"
    user_id: str
    nickname: str
    avatar: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_user_info_changed(self.user_id, self.nickname, self.avatar)


@dataclass(frozen=True)
class DevicesUpdated(Notification):
    """:meth:`CallObserver.on_devices_updated`."""

    callback: ClassVar[str] = "on_devices_updated"
    web_event: ClassVar[str] = "DEVICED_UPDATED"
    microphone_list: list[AudioDeviceInfo]
    camera_list: list[CameraInfo]
    current_microphone_id: str
    current_camera_id: str
    speaker_list: list[AudioDeviceInfo]
    current_speaker_id: str

    def deliver(self, observer: CallObserver) -> None:
        observer.on_devices_updated(
            self.microphone_list, self.camera_list, self.current_microphone_id,
            self.current_camera_id, self.speaker_list, self.current_speaker_id,
        )


NOTIFICATION_TYPES: tuple[type[Notification], ...] = (
    Error, CallReceived, CallCancelled, CallBegin, CallEnd, CallMediaTypeChanged, UserReject,
    UserNoResponse, UserLineBusy, UserJoin, UserLeave, UserVideoAvailable, UserAudioAvailable,
    UserVoiceVolumeChanged, UserNetworkQualityChanged, KickedOffline, UserSigExpired,
    UserInfoChanged, DevicesUpdated,
)
"""One notification per callback, in :data:`CALLBACK_NAMES` order."""

WEB_EVENTS: dict[str, str] = {kind.callback: kind.web_event for kind in NOTIFICATION_TYPES}
"""Callback name -> the web SDK's TUICallEvent name (``USER_SIG_EXPIRED`` and
``USER_INFO_CHANGED`` are this project's wire events, not web SDK events)."""


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
