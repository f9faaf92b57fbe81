"""A fake call engine for the desktop app's controller tests: calls recorded, events scripted."""

from __future__ import annotations

from dataclasses import dataclass

from callclient.errors import PermissionDeniedError, RequestRefusedError
from callclient.media.base import VideoView
from callclient.media.deviceset import DeviceSet
from callclient.media.encoding import LocalVideoStats
from callclient.media.processing import AudioProcessing
from callclient.media.remote import RemoteStats
from callclient.observer import CallObserver
from callclient.types import (
    AudioDeviceInfo,
    AudioPlaybackDevice,
    CallMediaType,
    CallParams,
    CallRole,
    CallStatus,
    Camera,
    CameraInfo,
    GroupCallInfo,
    RoomId,
    UserInfo,
    VideoRenderParams,
)

__all__ = ["FakeCall", "FakeEngine"]


@dataclass
class FakeCall:
    """The fields of the engine's ``CallInfo`` the app reads."""

    status: CallStatus
    role: CallRole
    media_type: CallMediaType = CallMediaType.VIDEO
    caller: str = "alice"
    begin_time: float | None = None


class FakeEngine:
    """The engine methods the app calls, recorded; server events scripted by the test.

    Like the engine, each scripted event changes :attr:`current_call` first and then fires
    the callback.
    """

    def __init__(self) -> None:
        self.devices = DeviceSet.virtual("fake")
        self.current_call: FakeCall | None = None
        self.calls_made: list[tuple[object, ...]] = []
        self.observers: list[CallObserver] = []
        self.views: dict[str, VideoView] = {}
        self.refuse: set[str] = set()
        self.audio_processing = AudioProcessing()
        self.users: dict[str, UserInfo] = {}
        self.group_calls: dict[str, GroupCallInfo] = {}
        """What group_call_in_progress answers, by group id."""
        self.group_asks = 0
        self.remote_stats: dict[str, RemoteStats] = {}
        """What arrived per remote user, with its media path (set by the test)."""
        self.video_stats: LocalVideoStats | None = None

    def set_audio_processing(
        self,
        processing: AudioProcessing | None = None,
        *,
        echo_cancellation: bool | None = None,
        noise_suppression: bool | None = None,
        auto_gain: bool | None = None,
        high_pass_filter: bool | None = None,
    ) -> AudioProcessing:
        self._record("set_audio_processing", noise_suppression)
        self.audio_processing = (processing or self.audio_processing).with_changes(
            echo_cancellation=echo_cancellation, noise_suppression=noise_suppression,
            auto_gain=auto_gain, high_pass_filter=high_pass_filter,
        )
        return self.audio_processing

    @property
    def user_id(self) -> str | None:
        return "alice"

    @property
    def local_video_stats(self) -> LocalVideoStats | None:
        return self.video_stats

    def _record(self, *call: object) -> None:
        if call[0] in self.refuse:
            raise RequestRefusedError(f"cannot {call[0]}")
        self.calls_made.append(call)

    def add_observer(self, observer: CallObserver) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: CallObserver) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    async def calls(self, user_ids: list[str], media_type: CallMediaType,
                    params: CallParams | None = None, *, group_id: str = "") -> str:
        self._record("calls", list(user_ids), media_type)
        self.current_call = FakeCall(CallStatus.WAITING, CallRole.CALLER, media_type)
        return "call-1"

    async def accept(self) -> None:
        self._record("accept")

    async def reject(self) -> None:
        self._record("reject")

    async def hangup(self) -> None:
        self._record("hangup")

    async def open_camera(self, camera: Camera = Camera.FRONT,
                          view: VideoView | None = None) -> None:
        self._record("open_camera", camera)

    async def close_camera(self) -> None:
        self._record("close_camera")

    async def switch_camera(self, camera: Camera) -> None:
        self._record("switch_camera", camera)

    async def open_microphone(self) -> None:
        self._record("open_microphone")

    async def close_microphone(self) -> None:
        self._record("close_microphone")

    async def select_audio_playback_device(self, device: AudioPlaybackDevice) -> None:
        self._record("select_audio_playback_device", device)

    def start_remote_view(self, user_id: str, view: VideoView) -> None:
        self.views[user_id] = view

    def stop_remote_view(self, user_id: str) -> None:
        self.views.pop(user_id, None)

    def set_video_render_params(self, user_id: str, params: VideoRenderParams) -> None:
        self._record("set_video_render_params", user_id, params)

    async def switch_call_media_type(self, media_type: CallMediaType) -> None:
        self._record("switch_call_media_type", media_type)

    def user_info(self, user_id: str) -> UserInfo | None:
        return self.users.get(user_id)

    async def group_call_in_progress(self, group_id: str) -> GroupCallInfo | None:
        self.group_asks += 1
        if "group_call_in_progress" in self.refuse:
            raise PermissionDeniedError(f"not a member of group {group_id!r}")
        return self.group_calls.get(group_id)

    async def join_in_group_call(self, room_id: RoomId, group_id: str,
                                 media_type: CallMediaType) -> str:
        self._record("join_in_group_call", room_id, group_id, media_type)
        info = self.group_calls[group_id]
        self.current_call = FakeCall(CallStatus.WAITING, CallRole.CALLED, media_type,
                                     info.caller)
        return info.call_id

    # -- scripted server events

    def ring_in(self, caller: str, media: CallMediaType) -> None:
        """An invitation from ``caller``."""
        self.current_call = FakeCall(CallStatus.WAITING, CallRole.CALLED, media, caller)
        for observer in list(self.observers):
            observer.on_call_received(caller, ["alice"], "", media)

    def begin(self) -> None:
        """The call connects."""
        call = self.current_call
        assert call is not None
        call.status, call.begin_time = CallStatus.ACCEPT, 1000.0
        for observer in list(self.observers):
            observer.on_call_begin(RoomId(1), call.media_type, call.role)

    def end(self, total_time: float) -> None:
        """The connected call ends."""
        call, self.current_call = self.current_call, None
        assert call is not None
        for observer in list(self.observers):
            observer.on_call_end(RoomId(1), call.media_type, call.role, total_time)

    def cancel(self, user_id: str) -> None:
        """The call ends before it connected."""
        self.current_call = None
        for observer in list(self.observers):
            observer.on_call_cancelled(user_id)

    def join(self, user_id: str) -> None:
        """A remote user joins."""
        for observer in list(self.observers):
            observer.on_user_join(user_id)

    def learn(self, user_id: str, nickname: str, avatar: str = "") -> None:
        """The engine learns a user's nickname."""
        self.users[user_id] = UserInfo(user_id, nickname, avatar)
        for observer in list(self.observers):
            observer.on_user_info_changed(user_id, nickname, avatar)

    def plug(self, cameras: list[CameraInfo], microphones: list[AudioDeviceInfo]) -> None:
        """The device list changes."""
        for observer in list(self.observers):
            observer.on_devices_updated(microphones, cameras, "", "", [], "")
