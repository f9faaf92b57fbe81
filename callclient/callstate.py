"""The client's call state and its rules, with no I/O: events and a clock in, effects out.

:class:`CallState` is to :class:`~callclient.engine.CallEngine` what
:class:`signaling_server.core.CallCore` is to the server: it holds the current call
(:class:`CallInfo`) and decides

* which request is allowed in which state (the ``check_*`` methods raise the reference's
  errors, ``ERROR_REQUEST_REFUSED`` naming the state, before anything is sent);
* what each server event does to the call, and which observer callbacks fire in which order
  (:meth:`CallState.receive` returns them as :class:`Notify` effects, in order);
* what reconnection and a peer going silent mean (:meth:`reconnected`,
  :meth:`peer_unresponsive`);
* when a remote user's camera and microphone count as available: what the user reported
  (``media_state``, relayed as ``USER_VIDEO_AVAILABLE`` / ``USER_AUDIO_AVAILABLE``) wins; a
  user who reported nothing about a kind within :data:`MEDIA_STATE_GRACE` seconds of its
  first frame of that kind is taken as available (:meth:`media_flowing`), so a client that
  never sends ``media_state`` still shows up; observers hear of each change once.

Every input returns a list of effects for the engine to carry out in order: notify observers,
connect or disconnect the media of a remote user, apply a relayed negotiation message, start
or end the call's media, close the camera, pass a quality report on, end the session. Nothing
here touches a socket, a device or the event loop, so the rules are tested with plain values
(``tests/client/test_callstate.py``) and paired with the server's core in memory under one
fake clock (``tests/client/test_callstate_with_server.py``).

Only this module changes :class:`CallInfo`; the engine reads it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from callclient import observer as note
from callclient.errors import (
    InvalidParameterError,
    NotLoggedInError,
    RequestRefusedError,
    RequestRepeatedError,
)
from callclient.types import (
    AudioDeviceInfo,
    CallMediaType,
    CallParams,
    CallRole,
    CallScene,
    CallStatus,
    CameraInfo,
    NetworkQuality,
    OfflinePushInfo,
    RoomId,
    UserInfo,
)
from callwire import messages as ev
from callwire.protocol import Relay

__all__ = [
    "MEDIA_STATE_GRACE",
    "ApplyRelay",
    "CallInfo",
    "CallState",
    "CloseCameraForAudio",
    "ConnectPeer",
    "DisconnectPeer",
    "Effect",
    "EndCallMedia",
    "EndSession",
    "MediaKind",
    "Notify",
    "RemoteAudioMuted",
    "RemoteUplinkReported",
    "StartCallMedia",
    "UseSfu",
    "UserInfoCache",
    "calls_request",
    "check_media_type",
    "invite_request",
    "join_in_group_call_request",
    "push_info_wire",
]

logger = logging.getLogger(__name__)

MEDIA_STATE_GRACE = 2.0
"""Seconds after a remote user's first frame of a kind (audio, video) that its own report of
that kind is waited for before the media that arrives counts as available."""

MediaKind = Literal["audio", "video"]
"""The kinds of media whose availability is reported."""

_KINDS: tuple[MediaKind, ...] = ("audio", "video")


@dataclass
class CallInfo:
    """The current call as the engine knows it (read it; :class:`CallState` changes it)."""

    call_id: str
    role: CallRole
    media_type: CallMediaType
    room_id: RoomId
    status: CallStatus
    caller: str
    callees: list[str]
    group_id: str = ""
    user_data: str = ""
    begin_time: float | None = None
    remote_users: list[str] = field(default_factory=list)
    """Users joined in the call besides this one, in the order they joined."""
    available: dict[tuple[str, MediaKind], bool] = field(default_factory=dict)
    """What observers were last told of each remote user's audio and video."""
    reported: set[tuple[str, MediaKind]] = field(default_factory=set)
    """The (user, kind) pairs the user reported itself (``media_state``)."""

    @property
    def scene(self) -> CallScene:
        """Single or group call."""
        if len(self.callees) == 1 and not self.group_id:
            return CallScene.SINGLE_CALL
        return CallScene.GROUP_CALL


# ------------------------------------------------------------------ effects


@dataclass(frozen=True)
class Notify:
    """Deliver one observer callback."""

    notification: note.Notification


@dataclass(frozen=True)
class ConnectPeer:
    """Make sure media flows with ``user_id`` (a peer connection in a mesh call)."""

    user_id: str


@dataclass(frozen=True)
class DisconnectPeer:
    """Stop the media with ``user_id`` and forget what was received from them."""

    user_id: str


@dataclass(frozen=True)
class ApplyRelay:
    """Hand a relayed negotiation message (offer, answer, candidate) to its peer."""

    relay: Relay


@dataclass(frozen=True)
class UseSfu:
    """The call's media goes through this SFU room (a new epoch: the room moved)."""

    room: ev.SfuRoom


@dataclass(frozen=True)
class StartCallMedia:
    """The call connected: speaker and microphone on, volume and quality reports started."""


@dataclass(frozen=True)
class EndCallMedia:
    """The call is over here: tear down every peer, the speaker and the reports."""


@dataclass(frozen=True)
class CloseCameraForAudio:
    """The call became audio-only: close the camera if it is open."""


@dataclass(frozen=True)
class RemoteAudioMuted:
    """``user_id`` closed the microphone: their volume is 0 from now on."""

    user_id: str


@dataclass(frozen=True)
class RemoteUplinkReported:
    """``user_id`` reported the quality of its uplink."""

    user_id: str
    quality: NetworkQuality


@dataclass(frozen=True)
class EndSession:
    """The server ended this login (kicked out, userSig expired): drop the connection."""


Effect = (
    Notify | ConnectPeer | DisconnectPeer | ApplyRelay | UseSfu | StartCallMedia | EndCallMedia
    | CloseCameraForAudio | RemoteAudioMuted | RemoteUplinkReported | EndSession
)


def check_media_type(value: CallMediaType | int) -> CallMediaType:
    """``value`` as a call media type; audio or video, else ERROR_PARAM_INVALID."""
    try:
        media = CallMediaType(value)
    except ValueError as exc:
        raise InvalidParameterError(
            f"media type must be 1 (audio) or 2 (video), not {value!r}"
        ) from exc
    if media is CallMediaType.NONE:
        raise InvalidParameterError("media type must be audio or video, not none")
    return media


def push_info_wire(info: OfflinePushInfo) -> dict[str, Any]:
    """An ``offlinePushInfo`` object with the reference's field names (``docs/protocol.md``)."""
    return {
        "title": info.title,
        "desc": info.desc,
        "ignoreIOSBadge": info.ignore_ios_badge,
        "iOSSound": info.ios_sound,
        "androidSound": info.android_sound,
        "androidOPPOChannelID": info.android_oppo_channel_id,
        "androidVIVOClassification": int(info.android_vivo_classification),
        "androidXiaoMiChannelID": info.android_xiaomi_channel_id,
        "androidFCMChannelID": info.android_fcm_channel_id,
        "androidHuaWeiCategory": info.android_huawei_category,
        "isDisablePush": info.is_disable_push,
        "iOSPushType": int(info.ios_push_type),
    }


def _invitation_fields(params: CallParams) -> dict[str, Any]:
    data: dict[str, Any] = {"timeout": int(params.timeout), "userData": params.user_data}
    if params.offline_push_info is not None:
        data["offlinePushInfo"] = push_info_wire(params.offline_push_info)
    return data


def _room_wire(room_id: RoomId) -> dict[str, Any]:
    return {"intRoomId": room_id.int_room_id, "strRoomId": room_id.str_room_id}


def calls_request(
    user_ids: list[str], media: CallMediaType, params: CallParams, group_id: str = ""
) -> dict[str, Any]:
    """The data of a ``calls`` request (``docs/protocol.md``)."""
    if not user_ids:
        raise InvalidParameterError("calls: user_ids must not be empty")
    data: dict[str, Any] = {
        "userIDList": list(user_ids),
        "mediaType": int(media),
        **_invitation_fields(params),
    }
    if params.room_id.is_set:
        data["roomId"] = _room_wire(params.room_id)
    if group_id:
        data["groupId"] = group_id
    return data


def invite_request(call_id: str, user_ids: list[str], params: CallParams) -> dict[str, Any]:
    """The data of an ``invite`` request: its userData and push info reach the invitees."""
    if not user_ids:
        raise InvalidParameterError("invite: user_ids must not be empty")
    return {"callId": call_id, "userIDList": list(user_ids), **_invitation_fields(params)}


def join_in_group_call_request(
    room_id: RoomId, group_id: str, media: CallMediaType
) -> dict[str, Any]:
    """The data of a ``join_in_group_call`` request."""
    if not group_id:
        raise InvalidParameterError("join_in_group_call: group_id must not be empty")
    data: dict[str, Any] = {"groupId": group_id, "mediaType": int(media)}
    if room_id.is_set:
        data["roomId"] = _room_wire(room_id)
    return data


USER_CACHE_SIZE: Final = 1024
"""Users whose nickname and avatar :class:`UserInfoCache` keeps (least recently seen go)."""


class UserInfoCache:
    """What the engine knows of users' nicknames and avatars, the most recently seen first.

    :meth:`learn` returns the :class:`~callclient.observer.UserInfoChanged` notification when
    it tells something new; a user first seen with neither nickname nor avatar is kept
    silently (nothing changed for an application that showed the user id).
    """

    def __init__(self, limit: int = USER_CACHE_SIZE) -> None:
        self.limit = limit
        self._users: OrderedDict[str, UserInfo] = OrderedDict()

    def get(self, user_id: str) -> UserInfo | None:
        """The user's info, or None when never seen."""
        return self._users.get(user_id)

    def learn(self, user_id: str, nickname: str, avatar: str) -> list[Effect]:
        """Keep what an event or a reply says of a user; notify when it changed."""
        info = UserInfo(user_id, nickname, avatar)
        before = self._users.pop(user_id, None)
        self._users[user_id] = info
        while len(self._users) > self.limit:
            self._users.popitem(last=False)
        if info == (before or UserInfo(user_id)):
            return []
        return [Notify(note.UserInfoChanged(user_id, nickname, avatar))]


def _status_name(call: CallInfo | None) -> str:
    return "none" if call is None else call.status.name.lower()


class CallState:
    """The call state of one logged-in user; see the module docstring."""

    def __init__(self) -> None:
        self.user_id: str | None = None
        self.call: CallInfo | None = None
        self.users = UserInfoCache()
        """Nicknames and avatars of the users seen (kept across calls and logins)."""

    # ------------------------------------------------------------------ session

    def logged_in(self, user_id: str) -> None:
        """The login succeeded."""
        self.user_id = user_id

    def logged_out(self, now: float) -> list[Effect]:
        """The application logged out or closed the engine: a call in progress ends here
        (``on_call_end``, or ``on_call_cancelled`` with our id while it rang)."""
        effects = self._interrupt_call(now)
        self.user_id = None
        return effects

    # ------------------------------------------------------------------ request rules

    def require_login(self, action: str) -> str:
        """The logged-in user id, or ERROR_INIT_FAIL."""
        if self.user_id is None:
            raise NotLoggedInError(f"cannot {action}: not logged in")
        return self.user_id

    def check_new_call(self, action: str = "call") -> None:
        """A new call may start only when there is none."""
        self.require_login(action)
        call = self.call
        if call is not None:
            raise RequestRefusedError(
                f"cannot {action}: already in call {call.call_id} "
                f'(status "{_status_name(call)}")'
            )

    def require_call(
        self, action: str, *statuses: CallStatus, role: CallRole | None = None
    ) -> CallInfo:
        """The current call, if it is in one of ``statuses`` (and ``role``), else refused."""
        self.require_login(action)
        call = self.call
        if call is None or call.status not in statuses:
            raise RequestRefusedError(f'cannot {action}: call status is "{_status_name(call)}"')
        if role is not None and call.role is not role:
            raise RequestRefusedError(
                f"cannot {action}: you are the {call.role.name.lower()} of this call"
            )
        return call

    def check_answer(self, action: str) -> CallInfo:
        """accept / reject / ignore: only a ringing invitee."""
        return self.require_call(action, CallStatus.WAITING, role=CallRole.CALLED)

    def check_hangup(self) -> CallInfo:
        """hangup: any call, ringing or connected."""
        self.require_login("hang up")
        if self.call is None:
            raise RequestRefusedError('cannot hang up: call status is "none"')
        return self.call

    def check_invite(self) -> CallInfo:
        """invite: a connected member, or the caller while the call rings."""
        call = self.require_call("invite", CallStatus.ACCEPT, CallStatus.WAITING)
        if call.status is CallStatus.WAITING and call.role is not CallRole.CALLER:
            raise RequestRefusedError('cannot invite: call status is "waiting"')
        return call

    def check_switch_media_type(
        self, media_type: CallMediaType | int
    ) -> tuple[CallInfo, CallMediaType]:
        """switch_media_type: a connected call, to the other media type."""
        call = self.require_call("switch media type", CallStatus.ACCEPT)
        media = check_media_type(media_type)
        if media is call.media_type:
            raise RequestRepeatedError(f"the call is already {media.name.lower()}")
        return call, media

    # ------------------------------------------------------------------ request outcomes

    def call_created(
        self,
        reply: ev.CallCreatedReply,
        media_type: CallMediaType,
        callees: list[str],
        group_id: str = "",
        user_data: str = "",
    ) -> CallInfo:
        """The server made our call (runs before the events the request caused)."""
        self.call = CallInfo(
            call_id=reply.call_id,
            role=CallRole.CALLER,
            media_type=media_type,
            room_id=RoomId.from_value(reply.room_id),
            status=CallStatus.WAITING,
            caller=self.user_id or "",
            callees=list(callees),
            group_id=group_id,
            user_data=user_data,
        )
        return self.call

    def invited(self, reply: ev.InvitedReply) -> list[str]:
        """More users ring in the call; returns them."""
        call = self.call
        if call is not None:
            call.callees.extend(u for u in reply.user_ids if u not in call.callees)
        return reply.user_ids

    def begin_join(self, call_id: str) -> None:
        """join(call_id): allowed when in no call, or ringing in that call."""
        self.require_login("join")
        call = self.call
        if call is not None and call.call_id != call_id:
            raise RequestRefusedError(
                f"cannot join: already in call {call.call_id} "
                f'(status "{_status_name(call)}")'
            )
        if call is not None and call.status is CallStatus.ACCEPT:
            raise RequestRepeatedError("cannot join: already in this call")
        if call is None:
            # What the call is becomes known from the reply and ON_CALL_BEGIN.
            self.call = CallInfo(
                call_id=call_id, role=CallRole.CALLED, media_type=CallMediaType.AUDIO,
                room_id=RoomId(), status=CallStatus.WAITING, caller="", callees=[],
            )

    def join_failed(self, call_id: str) -> None:
        """The join was refused: forget a call that never connected."""
        call = self.call
        if call is not None and call.call_id == call_id and call.status is CallStatus.WAITING:
            self.call = None

    def joined(self, reply: ev.JoinedReply) -> None:
        """The join (or accept) was granted."""
        call = self.call
        if call is not None and call.call_id == reply.call_id:
            call.media_type = reply.media_type
            call.room_id = RoomId.from_value(reply.room_id)
            call.caller = reply.sponsor or call.caller
            call.group_id = reply.group_id or call.group_id
            if reply.invitees is not None:
                call.callees = list(reply.invitees)
            call.user_data = reply.user_data or call.user_data

    def check_group_join(self) -> None:
        """join_in_group_call: only when in no call (a ringing invitee accepts instead)."""
        self.check_new_call("join a group call")

    def group_call_joined(self, reply: ev.JoinedReply) -> CallInfo:
        """The server let us into a group's call (runs before the events it causes)."""
        self.call = CallInfo(
            call_id=reply.call_id,
            role=CallRole.CALLED,
            media_type=reply.media_type,
            room_id=RoomId.from_value(reply.room_id),
            status=CallStatus.WAITING,
            caller=reply.sponsor,
            callees=list(reply.invitees or []),
            group_id=reply.group_id,
            user_data=reply.user_data,
        )
        return self.call

    def users_info_received(self, profiles: list[ev.UserProfile]) -> list[Effect]:
        """The ``get_user_info`` reply: the cache learns every user in it."""
        effects: list[Effect] = []
        for profile in profiles:
            effects += self.users.learn(profile.user_id, profile.nickname, profile.avatar)
        return effects

    def self_info_set(self, nickname: str, avatar: str) -> list[Effect]:
        """Our own ``self_info`` was stored (the reply's values)."""
        if self.user_id is None:
            return []
        return self.users.learn(self.user_id, nickname, avatar)

    def devices_updated(
        self,
        microphones: list[AudioDeviceInfo],
        cameras: list[CameraInfo],
        current_microphone: str,
        current_camera: str,
        speakers: list[AudioDeviceInfo],
        current_speaker: str,
    ) -> list[Effect]:
        """The device watcher saw the device list change (web ``DEVICED_UPDATED``)."""
        return [Notify(note.DevicesUpdated(microphones, cameras, current_microphone,
                                           current_camera, speakers, current_speaker))]

    def hangup_found_no_call(self) -> list[Effect]:
        """The server no longer knows our call (4040 to hangup): end it here."""
        return self._end_call()

    # ------------------------------------------------------------------ server input

    def receive(self, event: ev.ServerEvent, now: float) -> list[Effect]:
        """What a server event does; ``now`` is wall-clock seconds (``time.time()``)."""
        match event:
            case ev.SdkReady():  # SDK_READY
                logger.info("logged in as %s", event.user_id)
                return []
            case ev.ErrorEvent():  # ERROR
                return [Notify(note.Error(event.code, event.message))]
            case ev.KickedOut():  # KICKED_OUT
                return self._lose_session(note.KickedOffline(), now)
            case ev.UserSigExpired():  # USER_SIG_EXPIRED
                return self._lose_session(note.UserSigExpired(), now)
            case ev.OnCallReceived():  # ON_CALL_RECEIVED
                return self._call_received(event)
            case ev.UnknownEvent():
                logger.debug("unhandled event %s", event.name)
                return []
        call = self.call
        if call is None or getattr(event, "call_id", None) != call.call_id:
            return []  # about another call (an old one, or one we are not in)
        match event:
            case ev.OnCallCanceled():  # ON_CALL_CANCELED
                return self._call_canceled(call, event)
            case ev.OnCallBegin():  # ON_CALL_BEGIN
                call.status = CallStatus.ACCEPT
                call.begin_time = now
                call.media_type = event.media_type
                call.room_id = RoomId.from_value(event.room_id)
                return [Notify(note.CallBegin(call.room_id, call.media_type, call.role)),
                        StartCallMedia()]
            case ev.CallingEnd():  # CALLING_END
                return [*self._end_call(), Notify(note.CallEnd(
                    call.room_id, call.media_type, call.role, event.total_time))]
            case ev.UserEnter():  # USER_ENTER
                # The one trigger of a member's media (the lower id offers, docs/protocol.md);
                # one's own id, and a member already joined, change nothing.
                if event.user_id == self.user_id or event.user_id in call.remote_users:
                    return []
                call.remote_users.append(event.user_id)
                return [ConnectPeer(event.user_id), Notify(note.UserJoin(event.user_id)),
                        *self.users.learn(event.user_id, event.nickname, event.avatar)]
            case ev.UserLeave():  # USER_LEAVE
                return self._remote_left(call, event.user_id)
            case ev.UserAccept():  # USER_ACCEPT: no callback; USER_ENTER follows
                return []
            case ev.Reject():  # REJECT
                return [Notify(note.UserReject(event.user_id))]
            case ev.NoResp():  # NO_RESP
                return [Notify(note.UserNoResponse(user)) for user in event.user_ids]
            case ev.LineBusy():  # LINE_BUSY
                return [Notify(note.UserLineBusy(event.user_id))]
            case ev.CallTypeChanged():  # CALL_TYPE_CHANGED
                call.media_type = event.new
                effects: list[Effect] = []
                if event.new is CallMediaType.AUDIO:
                    effects.append(CloseCameraForAudio())
                effects.append(Notify(note.CallMediaTypeChanged(event.old, event.new)))
                return effects
            case ev.UserVideoAvailable():  # USER_VIDEO_AVAILABLE
                call.reported.add((event.user_id, "video"))
                return self._availability(call, event.user_id, "video", event.available)
            case ev.UserAudioAvailable():  # USER_AUDIO_AVAILABLE
                call.reported.add((event.user_id, "audio"))
                return self._availability(call, event.user_id, "audio", event.available)
            case ev.OnUserNetworkQualityChanged():  # ON_USER_NETWORK_QUALITY_CHANGED
                # Others report their uplink; the monitor combines it with what we measure.
                return [RemoteUplinkReported(user, quality) for user, quality in event.qualities]
            case ev.GroupCallInviteeListUpdate():  # GROUP_CALL_INVITEE_LIST_UPDATE
                call.callees = list(event.user_ids)
                return []
            case ev.UserInfoChanged():  # USER_INFO_CHANGED
                return self.users.learn(event.user_id, event.nickname, event.avatar)
            case ev.SfuRoom():  # SFU_ROOM: before any USER_ENTER of this call
                return [UseSfu(event)]
        return []

    def relay(self, relay: Relay) -> list[Effect]:
        """A negotiation message from another member: only the current call's count."""
        call = self.call
        if call is None or relay.call_id != call.call_id:
            logger.debug("relay for another call %s ignored", relay.call_id)
            return []
        return [ConnectPeer(relay.sender), ApplyRelay(relay)]

    def media_flowing(self, call_id: str, user_id: str, kind: MediaKind) -> list[Effect]:
        """``user_id``'s ``kind`` media has been arriving for :data:`MEDIA_STATE_GRACE` s.

        Without a report of its own about that kind, the user's camera (or microphone) counts
        as available.
        """
        call = self.call
        if (
            call is None
            or call.call_id != call_id
            or user_id not in call.remote_users
            or (user_id, kind) in call.reported
        ):
            return []
        return self._availability(call, user_id, kind, True)

    def reconnected(self, active_call_id: str | None, now: float) -> list[Effect]:
        """Signaling came back; ``active_call_id`` is the call the server still has for us."""
        call = self.call
        if call is None:
            return []
        if active_call_id == call.call_id:
            logger.info("call %s resumed after reconnect", call.call_id)
            return []
        # The server no longer knows the call (it restarted): end it here too.
        logger.info("call %s is gone after reconnect; ending it", call.call_id)
        return self._interrupt_call(now)

    def peer_unresponsive(self, user_id: str, signaling_up: bool, now: float) -> list[Effect]:
        """``user_id``'s media went silent.

        While signaling is up the server knows whether the user left (USER_LEAVE follows if
        so; a silent path alone is a quality problem, reported DOWN). With signaling down too,
        the user is taken as gone, and the call ends when nobody is left.
        """
        call = self.call
        if call is None or signaling_up:
            return []
        logger.info("%s unresponsive while signaling is down: treating as left", user_id)
        effects = self._remote_left(call, user_id)
        if not call.remote_users:
            effects += self._interrupt_call(now)
        return effects

    # ------------------------------------------------------------------ rules

    def _call_received(self, event: ev.OnCallReceived) -> list[Effect]:
        if self.call is not None:
            logger.warning("invitation %s while in call %s", event.call_id, self.call.call_id)
            return []
        self.call = CallInfo(
            call_id=event.call_id,
            role=CallRole.CALLED,
            media_type=event.media_type,
            room_id=RoomId.from_value(event.room_id),
            status=CallStatus.WAITING,
            caller=event.sponsor,
            callees=list(event.user_ids),
            group_id=event.group_id,
            user_data=event.user_data,
        )
        return [Notify(note.CallReceived(
            event.sponsor, list(event.user_ids), event.group_id, event.media_type)),
            *self.users.learn(event.sponsor, event.sponsor_nickname, event.sponsor_avatar)]

    def _call_canceled(self, call: CallInfo, event: ev.OnCallCanceled) -> list[Effect]:
        # The caller gets its own id; an invitee the caller's when the caller cancelled, else
        # its own (it rejected, timed out, answered elsewhere, or the call was interrupted:
        # "the callee failed to receive the call, he receives this callback (userId is his
        # own ID)").
        if call.role is CallRole.CALLER:
            user_id = call.caller
        elif event.reason == "cancel":
            user_id = event.sponsor or call.caller
        else:
            user_id = self.user_id or ""
        return [*self._end_call(), Notify(note.CallCancelled(user_id))]

    def _availability(
        self, call: CallInfo, user_id: str, kind: MediaKind, available: bool
    ) -> list[Effect]:
        """Tell observers that ``user_id``'s ``kind`` is (un)available, if that is news."""
        if call.available.get((user_id, kind)) is available:
            return []
        call.available[(user_id, kind)] = available
        if kind == "video":
            return [Notify(note.UserVideoAvailable(user_id, available))]
        muted: list[Effect] = [] if available else [RemoteAudioMuted(user_id)]
        return [*muted, Notify(note.UserAudioAvailable(user_id, available))]

    def _remote_left(self, call: CallInfo, user_id: str) -> list[Effect]:
        if user_id in call.remote_users:
            call.remote_users.remove(user_id)
        for kind in _KINDS:
            call.available.pop((user_id, kind), None)
            call.reported.discard((user_id, kind))
        return [DisconnectPeer(user_id), Notify(note.UserLeave(user_id))]

    def _lose_session(self, notification: note.Notification, now: float) -> list[Effect]:
        # The call ends first (on_call_end / on_call_cancelled), then the session's callback.
        effects = self._interrupt_call(now)
        self.user_id = None
        return [*effects, EndSession(), Notify(notification)]

    def _interrupt_call(self, now: float) -> list[Effect]:
        """End the call here without the server's word: ``on_call_end`` for a connected call
        (its duration to the millisecond), ``on_call_cancelled`` with our id for one that
        rang (an abnormal interruption, as the reference names it)."""
        call = self.call
        if call is None:
            return []
        effects = self._end_call()
        if call.status is CallStatus.ACCEPT:
            total = round(max(0.0, now - (call.begin_time or now)), 3)
            effects.append(Notify(note.CallEnd(call.room_id, call.media_type, call.role, total)))
        else:
            effects.append(Notify(note.CallCancelled(self.user_id or "")))
        return effects

    def _end_call(self) -> list[Effect]:
        if self.call is None:
            return []
        self.call = None
        return [EndCallMedia()]
