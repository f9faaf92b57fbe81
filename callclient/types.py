"""Enums and records of the call SDK, with exactly the reference's values.

Every enum here mirrors ``reference/types.txt``: the integer values are part of the
wire protocol and of the public API, so they never change.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from callwire.enums import CallMediaType, CallResultType, CallRole, CallScene, NetworkQuality

__all__ = [
    "AudioDeviceInfo",
    "AudioPlaybackDevice",
    "CallIOSOfflinePushType",
    "CallMediaType",
    "CallParams",
    "CallRecord",
    "CallResultType",
    "CallRole",
    "CallScene",
    "CallStatus",
    "Camera",
    "CameraInfo",
    "DeviceList",
    "FillMode",
    "GroupCallInfo",
    "MediaPath",
    "NetworkQuality",
    "NetworkQualityInfo",
    "OfflinePushInfo",
    "RecentCallsFilter",
    "Resolution",
    "ResolutionMode",
    "RoomId",
    "Rotation",
    "UserInfo",
    "VideoEncoderParams",
    "VideoRenderParams",
    "resolution_bitrate_kbps",
    "resolution_size",
]


class CallStatus(enum.IntEnum):
    """TUICallStatus."""

    NONE = 0
    WAITING = 1
    ACCEPT = 2


class FillMode(enum.IntEnum):
    """FillMode: FILL covers the view and crops; FIT shows everything with black bars."""

    FILL = 0
    FIT = 1


class Rotation(enum.IntEnum):
    """Rotation, clockwise."""

    ROTATION_0 = 0
    ROTATION_90 = 1
    ROTATION_180 = 2
    ROTATION_270 = 3

    @property
    def degrees(self) -> int:
        """The clockwise angle in degrees."""
        return int(self) * 90


class ResolutionMode(enum.IntEnum):
    """ResolutionMode: landscape is w x h, portrait is h x w."""

    LANDSCAPE = 0
    PORTRAIT = 1


class Resolution(enum.IntEnum):
    """Resolution presets; see :func:`resolution_size` and :func:`resolution_bitrate_kbps`."""

    RESOLUTION_640_360 = 0
    RESOLUTION_640_480 = 1
    RESOLUTION_960_540 = 2
    RESOLUTION_960_720 = 3
    RESOLUTION_1280_720 = 4
    RESOLUTION_1920_1080 = 5


_PRESETS: dict[Resolution, tuple[int, int, int]] = {
    Resolution.RESOLUTION_640_360: (640, 360, 500),
    Resolution.RESOLUTION_640_480: (640, 480, 600),
    Resolution.RESOLUTION_960_540: (960, 540, 850),
    Resolution.RESOLUTION_960_720: (960, 720, 1000),
    Resolution.RESOLUTION_1280_720: (1280, 720, 1200),
    Resolution.RESOLUTION_1920_1080: (1920, 1080, 2000),
}


def resolution_size(
    resolution: Resolution, mode: ResolutionMode = ResolutionMode.LANDSCAPE
) -> tuple[int, int]:
    """Frame (width, height) of a preset: landscape is w x h, portrait h x w."""
    width, height, _ = _PRESETS[Resolution(resolution)]
    if ResolutionMode(mode) is ResolutionMode.PORTRAIT:
        return height, width
    return width, height


def resolution_bitrate_kbps(resolution: Resolution) -> int:
    """The preset's recommended bitrate in kbit/s."""
    return _PRESETS[Resolution(resolution)][2]


class CallIOSOfflinePushType(enum.IntEnum):
    """TUICallIOSOfflinePushType."""

    APNS = 0
    VOIP = 1


class Camera(enum.IntEnum):
    """TUICamera."""

    FRONT = 0
    BACK = 1


class AudioPlaybackDevice(enum.IntEnum):
    """TUIAudioPlaybackDevice."""

    SPEAKERPHONE = 0
    EARPIECE = 1


@dataclass(frozen=True)
class RoomId:
    """TUIRoomId: an int and a string room id are distinct; int wins when both are set.

    ``RoomId(int_room_id=123)`` and ``RoomId(str_room_id="123")`` are different rooms.
    """

    int_room_id: int = 0
    str_room_id: str = ""

    @property
    def value(self) -> int | str:
        """The effective room id: the int id when non-zero, else the string id."""
        if self.int_room_id:
            return self.int_room_id
        return self.str_room_id

    @property
    def is_set(self) -> bool:
        """Whether either id is set."""
        return bool(self.int_room_id) or bool(self.str_room_id)

    @classmethod
    def from_value(cls, value: int | str | None) -> RoomId:
        """Build from a wire value: an int is an int room id, a string a string room id."""
        if value is None or value == "" or value == 0:
            return cls()
        if isinstance(value, bool):
            raise TypeError("room id must be int or str, not bool")
        if isinstance(value, int):
            return cls(int_room_id=value)
        return cls(str_room_id=str(value))


@dataclass(frozen=True)
class VideoRenderParams:
    """How one user's video is drawn into a view."""

    fill_mode: FillMode = FillMode.FILL
    rotation: Rotation = Rotation.ROTATION_0


@dataclass(frozen=True)
class VideoEncoderParams:
    """The local video's encoding preset."""

    resolution: Resolution = Resolution.RESOLUTION_640_360
    resolution_mode: ResolutionMode = ResolutionMode.LANDSCAPE


@dataclass(frozen=True)
class OfflinePushInfo:
    """TUIOfflinePushInfo: how an invitee with no connection is told through a phone push.

    The server hands it, with the invitation, to the business backend's push endpoint
    (``docs/webhooks.md`` "Offline call push"), which sends the APNs/FCM/vendor push.
    ``is_disable_push`` asks for no push at all.
    """

    title: str = ""
    desc: str = ""
    ignore_ios_badge: bool = False
    """iOS: the push does not increase the app icon's badge."""
    ios_sound: str = ""
    """iOS sound file name (with extension); the reference's no-sound / default-sound values
    pass through as given."""
    android_sound: str = ""
    android_oppo_channel_id: str = ""
    android_vivo_classification: int = 1
    """VIVO: 0 operational message, 1 system message."""
    android_xiaomi_channel_id: str = ""
    android_fcm_channel_id: str = ""
    android_huawei_category: str = ""
    is_disable_push: bool = False
    ios_push_type: CallIOSOfflinePushType = CallIOSOfflinePushType.APNS


@dataclass(frozen=True)
class CallParams:
    """TUICallParams: room id, ring timeout in seconds (default 30) and user data."""

    room_id: RoomId = field(default_factory=RoomId)
    timeout: int = 30
    user_data: str = ""
    offline_push_info: OfflinePushInfo | None = None


@dataclass(frozen=True)
class RecentCallsFilter:
    """TUICallRecentCallsFilter: begin/end are Unix seconds; None means unbounded."""

    begin: float | None = None
    end: float | None = None
    result_type: CallResultType | None = None


@dataclass(frozen=True)
class CallRecord:
    """TUICallRecords: one call as seen by the querying user."""

    call_id: str
    inviter: str
    invite_list: list[str]
    scene: CallScene
    media_type: CallMediaType
    group_id: str
    role: CallRole
    result: CallResultType
    begin_time: int
    total_time: int
    call_result: str = ""
    """How the call ended (extension, the protocol's ``callResult``): ``normal_end``,
    ``cancel``, ``reject``, ``not_answer``, ``call_busy``, ``interrupt``; ``""`` while running."""


@dataclass(frozen=True)
class MediaPath:
    """The ICE candidate pair a peer connection's media flows on (``remote_stats``).

    ``local``/``remote`` are candidate types: ``host`` (an interface's own address),
    ``srflx`` (the address a NAT maps it to, learnt from STUN), ``prflx`` (learnt from a
    connectivity check) or ``relay`` (a TURN allocation). ``transport`` is how this side
    reaches the other: ``udp`` directly, or, through a TURN relay of ours, ``turn/udp``,
    ``turn/tcp`` or ``turn/tls``.
    """

    local: str
    remote: str
    transport: str
    local_address: str
    remote_address: str

    @property
    def relayed(self) -> bool:
        """Whether a TURN relay is on the path (either side's)."""
        return "relay" in (self.local, self.remote)

    def describe(self) -> str:
        """``"srflx -> srflx over udp"``: for logs and tile details."""
        return f"{self.local} -> {self.remote} over {self.transport}"


@dataclass(frozen=True)
class NetworkQualityInfo:
    """One user's network quality."""

    user_id: str
    quality: NetworkQuality


@dataclass(frozen=True)
class UserInfo:
    """A user's nickname and avatar (``""`` when unset), as others see them."""

    user_id: str
    nickname: str = ""
    avatar: str = ""

    @property
    def display_name(self) -> str:
        """The nickname, or the user id when there is none."""
        return self.nickname or self.user_id


@dataclass(frozen=True)
class GroupCallInfo:
    """The call a group has in progress (``CallEngine.group_call_in_progress``)."""

    group_id: str
    call_id: str
    room_id: RoomId
    media_type: CallMediaType
    caller: str
    user_ids: list[str]
    """Users in the call now."""
    start_time: float


@dataclass(frozen=True)
class CameraInfo:
    """A camera: its OpenCV index (None if unknown), its device path and its name.

    Its id (``DEVICED_UPDATED``'s camera ids) is ``path``.
    """

    index: int | None
    path: str
    name: str


@dataclass(frozen=True)
class AudioDeviceInfo:
    """A PortAudio device as sounddevice lists it; its id is ``name``."""

    index: int
    name: str
    host_api: str
    channels: int
    default_samplerate: float
    is_default: bool


@dataclass(frozen=True)
class DeviceList:
    """Cameras, microphones and speakers; ``audio_error`` says why audio could not be listed."""

    cameras: list[CameraInfo] = field(default_factory=list)
    microphones: list[AudioDeviceInfo] = field(default_factory=list)
    speakers: list[AudioDeviceInfo] = field(default_factory=list)
    audio_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)
