"""Typed payloads of what the server sends: every event, and the replies a client reads.

:func:`parse_event` turns an :class:`~callwire.protocol.Event` into one dataclass per event
name (the reference's TUICallEvent names, ``docs/protocol.md`` "Events"), checking the fields
a client acts on; a field that is missing or of the wrong type raises
:class:`~callwire.protocol.ProtocolViolation` naming the event and the field, so a malformed
event is a protocol error the client can log, never a ``KeyError`` in its handler. Fields a
client only displays (nicknames, reasons) default when absent. An event name this module does
not know parses to :class:`UnknownEvent` (a newer server may send more).

The ``parse_*_reply`` functions do the same for the reply data a client reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from callwire.codes import ErrorCode
from callwire.enums import CallMediaType, NetworkQuality
from callwire.protocol import Event, ProtocolViolation

__all__ = [
    "CallCreatedReply",
    "CallTypeChanged",
    "CallingEnd",
    "ErrorEvent",
    "GroupCall",
    "GroupCallInviteeListUpdate",
    "IceServerEntry",
    "IceServers",
    "InvitedReply",
    "JoinedReply",
    "KickedOut",
    "LineBusy",
    "NoResp",
    "OnCallBegin",
    "OnCallCanceled",
    "OnCallReceived",
    "OnUserNetworkQualityChanged",
    "Reject",
    "RoomValue",
    "SdkReady",
    "ServerEvent",
    "SfuRoom",
    "UnknownEvent",
    "UserAccept",
    "UserAudioAvailable",
    "UserEnter",
    "UserInfoChanged",
    "UserLeave",
    "UserProfile",
    "UserSigExpired",
    "UserVideoAvailable",
    "parse_call_created_reply",
    "parse_event",
    "parse_group_call_reply",
    "parse_ice_servers",
    "parse_invited_reply",
    "parse_joined_reply",
    "parse_user_info_reply",
]

RoomValue = int | str
"""A ``roomID`` as it travels: an int and a string room id are distinct rooms."""

_T = TypeVar("_T")


class _Reader:
    """Reads typed fields out of one payload; every failure names the payload and field."""

    def __init__(self, what: str, data: Mapping[str, Any]) -> None:
        self.what = what
        self.data = data

    def _fail(self, key: str, expected: str) -> ProtocolViolation:
        value = self.data.get(key)
        shown = "missing" if key not in self.data else f"{value!r:.60}"
        return ProtocolViolation(
            ErrorCode.MALFORMED_FRAME, f"{self.what}: field {key!r} must be {expected}, got {shown}"
        )

    def _get(self, key: str, check: Callable[[Any], bool], expected: str,
             default: _T | None) -> Any:
        if key not in self.data and default is not None:
            return default
        value = self.data.get(key)
        if not check(value):
            raise self._fail(key, expected)
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value: str = self._get(key, lambda v: isinstance(v, str), "a string", default)
        return value

    def user(self, key: str) -> str:
        value: str = self._get(key, lambda v: isinstance(v, str) and bool(v), "a user id", None)
        return value

    def users(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self._get(
            key,
            lambda v: isinstance(v, list) and all(isinstance(u, str) and u for u in v),
            "a list of user ids",
            default,
        )
        return list(value)

    def flag(self, key: str) -> bool:
        value: bool = self._get(key, lambda v: isinstance(v, bool), "true or false", None)
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value: int = self._get(
            key, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", default
        )
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(
            key,
            lambda v: isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v),
            "a finite number",
            default,
        )
        return float(value)

    def media(self, key: str) -> CallMediaType:
        value = self._get(key, lambda v: v in (1, 2) and not isinstance(v, bool),
                          "1 (audio) or 2 (video)", None)
        return CallMediaType(value)

    def room(self, key: str = "roomID") -> RoomValue:
        value: RoomValue = self._get(
            key,
            lambda v: (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str),
            "an integer or a string",
            0,
        )
        return value


# ------------------------------------------------------------------ session events


@dataclass(frozen=True)
class SdkReady:
    """``SDK_READY``: the login succeeded."""

    NAME: ClassVar[str] = "SDK_READY"
    user_id: str

    @classmethod
    def parse(cls, r: _Reader) -> SdkReady:
        return cls(r.text("userID", ""))


@dataclass(frozen=True)
class KickedOut:
    """``KICKED_OUT``: the same user logged in elsewhere; this session is over."""

    NAME: ClassVar[str] = "KICKED_OUT"
    reason: str

    @classmethod
    def parse(cls, r: _Reader) -> KickedOut:
        return cls(r.text("reason", ""))


@dataclass(frozen=True)
class UserSigExpired:
    """``USER_SIG_EXPIRED``: the userSig expired; this session is over."""

    NAME: ClassVar[str] = "USER_SIG_EXPIRED"
    message: str

    @classmethod
    def parse(cls, r: _Reader) -> UserSigExpired:
        return cls(r.text("msg", ""))


@dataclass(frozen=True)
class ErrorEvent:
    """``ERROR``: a server-side error not tied to a request (the connection may close next)."""

    NAME: ClassVar[str] = "ERROR"
    code: int
    message: str

    @classmethod
    def parse(cls, r: _Reader) -> ErrorEvent:
        return cls(r.integer("code", int(ErrorCode.INTERNAL)), r.text("msg", ""))


@dataclass(frozen=True)
class IceServerEntry:
    """One RTCIceServer of ``iceServers``: its URLs and, for TURN, the credentials."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class IceServers:
    """``ICE_SERVERS``: fresh STUN/TURN servers for this session (the login reply's
    ``iceServers`` and ``iceServersExpireAt``, renewed before they expire)."""

    NAME: ClassVar[str] = "ICE_SERVERS"
    servers: tuple[IceServerEntry, ...]
    expires_at: float | None

    @classmethod
    def parse(cls, r: _Reader) -> IceServers:
        return parse_ice_servers(r.data, r.what)


def parse_ice_servers(data: Mapping[str, Any], what: str = "login reply") -> IceServers:
    """``iceServers``/``iceServersExpireAt`` of a login reply or an ``ICE_SERVERS`` event
    (both absent: no servers); raises :class:`ProtocolViolation` when malformed."""

    def bad(text: str) -> ProtocolViolation:
        return ProtocolViolation(ErrorCode.MALFORMED_FRAME, f"{what}: {text}")

    raw = data.get("iceServers", [])
    if not isinstance(raw, list):
        raise bad("iceServers must be a list")
    servers = []
    for index, item in enumerate(raw):
        urls = item.get("urls") if isinstance(item, dict) else None
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list or not all(
            isinstance(u, str) and u for u in url_list
        ):
            raise bad(f"iceServers[{index}].urls must be URL strings")
        username, credential = item.get("username"), item.get("credential")
        if not isinstance(username, str | None) or not isinstance(credential, str | None):
            raise bad(f"iceServers[{index}] username and credential must be strings")
        servers.append(IceServerEntry(tuple(url_list), username, credential))
    expires = data.get("iceServersExpireAt")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
        raise bad("iceServersExpireAt must be a number")
    return IceServers(tuple(servers), None if expires is None else float(expires))


# ------------------------------------------------------------------ call events


@dataclass(frozen=True)
class OnCallReceived:
    """``ON_CALL_RECEIVED``: an invitation to a call."""

    NAME: ClassVar[str] = "ON_CALL_RECEIVED"
    call_id: str
    sponsor: str
    user_ids: list[str]
    """Invitees ringing or joined."""
    group_id: str
    media_type: CallMediaType
    room_id: RoomValue
    user_data: str
    sponsor_nickname: str
    sponsor_avatar: str

    @classmethod
    def parse(cls, r: _Reader) -> OnCallReceived:
        return cls(
            r.text("callId"), r.user("sponsor"), r.users("userIDList", []), r.text("groupID", ""),
            r.media("callMediaType"), r.room(), r.text("userData", ""),
            r.text("sponsorNickname", ""), r.text("sponsorAvatar", ""),
        )


@dataclass(frozen=True)
class OnCallCanceled:
    """``ON_CALL_CANCELED``: the call ended before it connected (for this member)."""

    NAME: ClassVar[str] = "ON_CALL_CANCELED"
    call_id: str
    user_id: str
    sponsor: str
    reason: str
    """``cancel``, ``reject``, ``ignore``, ``timeout``, ``busy``, ``interrupted`` or
    ``answered_elsewhere``."""

    @classmethod
    def parse(cls, r: _Reader) -> OnCallCanceled:
        return cls(r.text("callId"), r.text("userID", ""), r.text("sponsor", ""),
                   r.text("reason", ""))


@dataclass(frozen=True)
class OnCallBegin:
    """``ON_CALL_BEGIN``: this member is connected."""

    NAME: ClassVar[str] = "ON_CALL_BEGIN"
    call_id: str
    room_id: RoomValue
    media_type: CallMediaType

    @classmethod
    def parse(cls, r: _Reader) -> OnCallBegin:
        return cls(r.text("callId"), r.room(), r.media("callMediaType"))


@dataclass(frozen=True)
class CallingEnd:
    """``CALLING_END``: the call ended for this member."""

    NAME: ClassVar[str] = "CALLING_END"
    call_id: str
    user_id: str
    """Who ended it."""
    total_time: float
    reason: str

    @classmethod
    def parse(cls, r: _Reader) -> CallingEnd:
        return cls(r.text("callId"), r.text("userID", ""), r.number("totalTime", 0.0),
                   r.text("reason", ""))


@dataclass(frozen=True)
class UserAccept:
    """``USER_ACCEPT``: an invitee accepted (``USER_ENTER`` follows for joined members)."""

    NAME: ClassVar[str] = "USER_ACCEPT"
    call_id: str
    user_id: str

    @classmethod
    def parse(cls, r: _Reader) -> UserAccept:
        return cls(r.text("callId"), r.user("userID"))


@dataclass(frozen=True)
class UserEnter:
    """``USER_ENTER``: a member joined the call."""

    NAME: ClassVar[str] = "USER_ENTER"
    call_id: str
    user_id: str
    nickname: str
    avatar: str

    @classmethod
    def parse(cls, r: _Reader) -> UserEnter:
        return cls(r.text("callId"), r.user("userID"), r.text("nickname", ""),
                   r.text("avatar", ""))


@dataclass(frozen=True)
class UserLeave:
    """``USER_LEAVE``: a member left the call."""

    NAME: ClassVar[str] = "USER_LEAVE"
    call_id: str
    user_id: str
    reason: str

    @classmethod
    def parse(cls, r: _Reader) -> UserLeave:
        return cls(r.text("callId"), r.user("userID"), r.text("reason", ""))


@dataclass(frozen=True)
class Reject:
    """``REJECT``: an invitee rejected."""

    NAME: ClassVar[str] = "REJECT"
    call_id: str
    user_id: str

    @classmethod
    def parse(cls, r: _Reader) -> Reject:
        return cls(r.text("callId"), r.user("userID"))


@dataclass(frozen=True)
class NoResp:
    """``NO_RESP``: invitees did not answer in time."""

    NAME: ClassVar[str] = "NO_RESP"
    call_id: str
    user_ids: list[str]

    @classmethod
    def parse(cls, r: _Reader) -> NoResp:
        return cls(r.text("callId"), r.users("userIDList"))


@dataclass(frozen=True)
class LineBusy:
    """``LINE_BUSY``: an invitee was busy, or ignored the call."""

    NAME: ClassVar[str] = "LINE_BUSY"
    call_id: str
    user_id: str

    @classmethod
    def parse(cls, r: _Reader) -> LineBusy:
        return cls(r.text("callId"), r.user("userID"))


@dataclass(frozen=True)
class CallTypeChanged:
    """``CALL_TYPE_CHANGED``: the call switched between audio and video."""

    NAME: ClassVar[str] = "CALL_TYPE_CHANGED"
    call_id: str
    old: CallMediaType
    new: CallMediaType
    user_id: str

    @classmethod
    def parse(cls, r: _Reader) -> CallTypeChanged:
        return cls(r.text("callId"), r.media("oldCallType"), r.media("newCallType"),
                   r.text("userID", ""))


@dataclass(frozen=True)
class UserVideoAvailable:
    """``USER_VIDEO_AVAILABLE``: a member's camera turned on or off."""

    NAME: ClassVar[str] = "USER_VIDEO_AVAILABLE"
    call_id: str
    user_id: str
    available: bool

    @classmethod
    def parse(cls, r: _Reader) -> UserVideoAvailable:
        return cls(r.text("callId"), r.user("userID"), r.flag("isVideoAvailable"))


@dataclass(frozen=True)
class UserAudioAvailable:
    """``USER_AUDIO_AVAILABLE``: a member's microphone turned on or off."""

    NAME: ClassVar[str] = "USER_AUDIO_AVAILABLE"
    call_id: str
    user_id: str
    available: bool

    @classmethod
    def parse(cls, r: _Reader) -> UserAudioAvailable:
        return cls(r.text("callId"), r.user("userID"), r.flag("isAudioAvailable"))


@dataclass(frozen=True)
class GroupCallInviteeListUpdate:
    """``GROUP_CALL_INVITEE_LIST_UPDATE``: the invitees ringing or joined, after an invite."""

    NAME: ClassVar[str] = "GROUP_CALL_INVITEE_LIST_UPDATE"
    call_id: str
    user_ids: list[str]

    @classmethod
    def parse(cls, r: _Reader) -> GroupCallInviteeListUpdate:
        return cls(r.text("callId"), r.users("userIDList"))


@dataclass(frozen=True)
class OnUserNetworkQualityChanged:
    """``ON_USER_NETWORK_QUALITY_CHANGED``: other members report their uplink quality."""

    NAME: ClassVar[str] = "ON_USER_NETWORK_QUALITY_CHANGED"
    call_id: str
    qualities: list[tuple[str, NetworkQuality]]

    @classmethod
    def parse(cls, r: _Reader) -> OnUserNetworkQualityChanged:
        items = r.data.get("networkQualityList", [])
        if not isinstance(items, list):
            raise r._fail("networkQualityList", "a list")
        qualities: list[tuple[str, NetworkQuality]] = []
        for index, item in enumerate(items):
            entry = _Reader(f"{r.what} networkQualityList[{index}]",
                            item if isinstance(item, dict) else {})
            quality = entry._get("quality", lambda v: v in range(7) and not isinstance(v, bool),
                                 "a quality 0..6", None)
            qualities.append((entry.user("userID"), NetworkQuality(quality)))
        return cls(r.text("callId"), qualities)


@dataclass(frozen=True)
class UserInfoChanged:
    """``USER_INFO_CHANGED``: a member changed its nickname or avatar."""

    NAME: ClassVar[str] = "USER_INFO_CHANGED"
    call_id: str
    user_id: str
    nickname: str
    avatar: str

    @classmethod
    def parse(cls, r: _Reader) -> UserInfoChanged:
        return cls(r.text("callId"), r.user("userID"), r.text("nickname", ""),
                   r.text("avatar", ""))


@dataclass(frozen=True)
class SfuRoom:
    """``SFU_ROOM``: the call's media goes through this Janus VideoRoom (an extension).

    A new ``epoch`` replaces the room the client had (the call moved to another instance).
    """

    NAME: ClassVar[str] = "SFU_ROOM"
    call_id: str
    url: str
    """The Janus HTTP API root, like ``http://127.0.0.1:8088/janus``."""
    room: int
    pin: str
    token: str
    """This member's own token for the room's ``allowed`` list."""
    epoch: int

    @classmethod
    def parse(cls, r: _Reader) -> SfuRoom:
        return cls(r.text("callId"), r.text("url"), r.integer("room"), r.text("pin"),
                   r.text("token"), r.integer("epoch"))


@dataclass(frozen=True)
class UnknownEvent:
    """An event this version does not know (a newer server may send more); ignorable."""

    name: str
    data: dict[str, Any]


ServerEvent = (
    SdkReady | KickedOut | UserSigExpired | ErrorEvent | OnCallReceived | OnCallCanceled
    | OnCallBegin | CallingEnd | UserAccept | UserEnter | UserLeave | Reject | NoResp | LineBusy
    | CallTypeChanged | UserVideoAvailable | UserAudioAvailable | GroupCallInviteeListUpdate
    | OnUserNetworkQualityChanged | UserInfoChanged | IceServers | SfuRoom | UnknownEvent
)

_EVENT_TYPES: dict[str, Any] = {
    cls.NAME: cls
    for cls in (
        SdkReady, KickedOut, UserSigExpired, ErrorEvent, OnCallReceived, OnCallCanceled,
        OnCallBegin, CallingEnd, UserAccept, UserEnter, UserLeave, Reject, NoResp, LineBusy,
        CallTypeChanged, UserVideoAvailable, UserAudioAvailable, GroupCallInviteeListUpdate,
        OnUserNetworkQualityChanged, UserInfoChanged, IceServers, SfuRoom,
    )
}


def parse_event(event: Event) -> ServerEvent:
    """The typed form of ``event``; raises :class:`ProtocolViolation` when it is malformed."""
    kind = _EVENT_TYPES.get(event.name)
    if kind is None:
        return UnknownEvent(event.name, event.data)
    parsed: ServerEvent = kind.parse(_Reader(event.name, event.data))
    return parsed


# ------------------------------------------------------------------ replies


@dataclass(frozen=True)
class CallCreatedReply:
    """The reply to ``calls``."""

    call_id: str
    room_id: RoomValue
    busy: list[str]


@dataclass(frozen=True)
class JoinedReply:
    """The reply to ``accept``, ``join`` and ``join_in_group_call``."""

    call_id: str
    room_id: RoomValue
    media_type: CallMediaType
    user_ids: list[str]
    """Members joined, the requester included."""
    sponsor: str = ""
    """The caller (empty from a server older than protocol 1.1)."""
    group_id: str = ""
    invitees: list[str] | None = None
    """Invitees ringing or joined (None from an older server)."""
    user_data: str = ""


@dataclass(frozen=True)
class InvitedReply:
    """The reply to ``invite``: who rings now, who was busy."""

    user_ids: list[str]
    busy: list[str]


def parse_call_created_reply(data: Mapping[str, Any]) -> CallCreatedReply:
    """The typed ``calls`` reply; raises :class:`ProtocolViolation` when malformed."""
    r = _Reader("calls reply", data)
    return CallCreatedReply(r.text("callId"), r.room(), r.users("busyUserIDList", []))


def parse_joined_reply(data: Mapping[str, Any]) -> JoinedReply:
    """The typed ``accept``/``join`` reply; raises :class:`ProtocolViolation` when malformed."""
    r = _Reader("join reply", data)
    invitees = r.users("inviteeIDList") if "inviteeIDList" in data else None
    return JoinedReply(r.text("callId"), r.room(), r.media("callMediaType"),
                       r.users("userIDList", []), r.text("sponsor", ""), r.text("groupID", ""),
                       invitees, r.text("userData", ""))


@dataclass(frozen=True)
class UserProfile:
    """One user's nickname and avatar as the server knows them (``""`` when unset)."""

    user_id: str
    nickname: str
    avatar: str


def parse_user_info_reply(data: Mapping[str, Any]) -> list[UserProfile]:
    """The typed ``get_user_info`` reply; raises :class:`ProtocolViolation` when malformed."""
    items = data.get("users")
    if not isinstance(items, list):
        raise _Reader("get_user_info reply", data)._fail("users", "a list")
    profiles = []
    for index, item in enumerate(items):
        r = _Reader(f"get_user_info reply users[{index}]", item if isinstance(item, dict) else {})
        profiles.append(UserProfile(r.user("userID"), r.text("nickname", ""),
                                    r.text("avatar", "")))
    return profiles


@dataclass(frozen=True)
class GroupCall:
    """The call a group has in progress (the ``get_group_call`` reply's ``call``)."""

    group_id: str
    call_id: str
    room_id: RoomValue
    media_type: CallMediaType
    sponsor: str
    user_ids: list[str]
    """Members joined now."""
    start_time: float


def parse_group_call_reply(data: Mapping[str, Any]) -> GroupCall | None:
    """The typed ``get_group_call`` reply (None: no call in progress); raises
    :class:`ProtocolViolation` when malformed."""
    group = _Reader("get_group_call reply", data).text("groupId")
    call = data.get("call")
    if call is None:
        return None
    if not isinstance(call, dict):
        raise _Reader("get_group_call reply", data)._fail("call", "an object or null")
    r = _Reader("get_group_call reply call", call)
    return GroupCall(group, r.text("callId"), r.room(), r.media("callMediaType"),
                     r.user("sponsor"), r.users("userIDList", []), r.number("startTime", 0.0))


def parse_invited_reply(data: Mapping[str, Any]) -> InvitedReply:
    """The typed ``invite`` reply; raises :class:`ProtocolViolation` when malformed."""
    r = _Reader("invite reply", data)
    return InvitedReply(r.users("userIDList"), r.users("busyUserIDList", []))
