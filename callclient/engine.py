"""CallEngine: the TUICallEngine-style API over signaling and WebRTC media.

One engine is one logged-in user. It turns API calls into signaling requests, server events
into :class:`~callclient.observer.CallObserver` callbacks, and runs the media of the current
call: one :class:`~callclient.peer.PeerLink` per remote participant, the local camera and
microphone tracks shared by every peer, remote audio mixed into the selected speaker, remote
video rendered into the views the application gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from callclient.errors import (
    CallError,
    DeviceError,
    ErrorCode,
    InvalidParameterError,
    NotLoggedInError,
    RequestRefusedError,
    RequestRepeatedError,
)
from callclient.media.audio_encoding import AudioEncoderSession
from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE, AudioSink, RenderedFrame, VideoView
from callclient.media.deviceset import DeviceSet
from callclient.media.encoding import VideoEncoderSession
from callclient.media.mixer import Mixer
from callclient.media.receive import recv_newest
from callclient.media.render import render
from callclient.media.tracks import AudioConverter, CameraTrack, MicrophoneTrack, frame_to_bgr
from callclient.monitor import CallMonitor
from callclient.observer import CallObserver, EventQueueObserver
from callclient.peer import IceServer, PeerConfig, PeerLink
from callclient.signaling import Credentials, SignalingClient
from callclient.types import (
    AudioPlaybackDevice,
    CallMediaType,
    CallParams,
    CallRecord,
    CallResultType,
    CallRole,
    CallScene,
    CallStatus,
    Camera,
    NetworkQuality,
    RecentCallsFilter,
    RoomId,
    VideoEncoderParams,
    VideoRenderParams,
    resolution_bitrate_kbps,
    resolution_size,
)
from callwire.protocol import Event, Relay

__all__ = ["AudioTap", "CallEngine", "CallInfo", "RemoteStats"]

logger = logging.getLogger(__name__)

_RELAY_RETRY_SECONDS = 4.0
"""How long a relay to a user who is reconnecting (4041) is retried: the server's grace + 1 s."""
_RELAY_RETRY_INTERVAL = 0.25

_CLEANUP_TIMEOUT = 5.0
"""Seconds :meth:`CallEngine.close` waits for peer connections and the speaker to close."""

_PLAYOUT_MAX_BLOCKS = 6
"""Most 20 ms blocks of one remote user queued for the speaker (the playout buffer keeps
only what the jitter needs, normally 1..2; this is the hard cap)."""
_MAX_GAP_BLOCKS = 25
"""A timestamp jump of more audio blocks than this is a restart of the stream, not loss."""


AudioTap = Callable[[str, npt.NDArray[np.int16]], None]
"""Called with ``(user_id, block)`` for each received 20 ms int16 mono block of a remote user."""


@dataclass
class CallInfo:
    """The current call as the engine knows it."""

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

    @property
    def scene(self) -> CallScene:
        """Single or group call."""
        if len(self.callees) == 1 and not self.group_id:
            return CallScene.SINGLE_CALL
        return CallScene.GROUP_CALL


@dataclass
class RemoteStats:
    """What has arrived from one remote user (for harnesses, bots and apps)."""

    video_frames: int = 0
    video_frames_skipped: int = 0
    """Received frames not rendered because a newer one was already waiting."""
    audio_blocks: int = 0
    audio_blocks_missing: int = 0
    """Blocks known lost (timestamp gaps): concealed by the playout buffer."""
    first_video_time: float | None = None
    last_video_time: float | None = None


def _render_frame(
    frame: av.VideoFrame, params: VideoRenderParams, size: tuple[int, int] | None
) -> npt.NDArray[np.uint8]:
    return render(frame_to_bgr(frame), params, size)


def _sample_position(frame: av.AudioFrame) -> int | None:
    """The frame's pts in 48 kHz samples, None without one."""
    if frame.pts is None or frame.time_base is None:
        return None
    return round(frame.pts * frame.time_base * SAMPLE_RATE)


class _Remote:
    """Per remote user media state inside the engine."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.peer: PeerLink | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.stats = RemoteStats()
        self.video_available = False
        self.audio_available = False


class CallEngine:
    """An asyncio call client with the operations of TUICallEngine.

    ``server_url`` is the signaling server (``ws://host:port``). ``devices`` defaults to a
    virtual device set; pass real devices (:mod:`callclient.media.devices`) for hardware.
    During a call, volumes are reported every ``volume_interval`` seconds and network quality
    every ``quality_interval`` seconds (:mod:`callclient.monitor`).
    Use as ``async with CallEngine(...) as engine:`` or call :meth:`close`.
    """

    def __init__(
        self,
        server_url: str,
        *,
        devices: DeviceSet | None = None,
        ice_servers: Iterable[IceServer] = (),
        video_codec: str = "VP8",
        reconnect: bool = True,
        request_timeout: float = 10.0,
        volume_interval: float = 0.3,
        quality_interval: float = 2.0,
    ) -> None:
        if video_codec.upper() not in ("VP8", "H264"):
            raise InvalidParameterError(f"video_codec must be VP8 or H264, not {video_codec!r}")
        self.server_url = server_url
        self.devices = devices if devices is not None else DeviceSet.virtual()
        self.peer_config = PeerConfig(
            ice_servers=list(ice_servers), video_codec=video_codec.upper()
        )
        self._reconnect = reconnect
        self._request_timeout = request_timeout
        self._observers: list[CallObserver] = []
        self._audio_taps: list[AudioTap] = []
        self._signaling: SignalingClient | None = None
        self._user_id: str | None = None
        self._call: CallInfo | None = None
        self._remotes: dict[str, _Remote] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: set[asyncio.Task[Any]] = set()
        """Tasks releasing media (peer connections, speaker): awaited, not cancelled, by close."""
        self._views: dict[str, VideoView] = {}
        self._render_params: dict[str, VideoRenderParams] = {}
        self._encoder_params = VideoEncoderParams()
        self._mixer = Mixer(_PLAYOUT_MAX_BLOCKS, adaptive=True)
        self._camera_track: CameraTrack | None = None
        self._video_encoder: VideoEncoderSession | None = None
        self._audio_encoder: AudioEncoderSession | None = None
        self._mic_track: MicrophoneTrack | None = None
        self._camera: Camera | None = None
        self._local_view: VideoView | None = None
        self._mic_open = False
        self._mic_wanted = True
        self._playback = AudioPlaybackDevice.SPEAKERPHONE
        self._speaker: AudioSink | None = None
        self._monitor: CallMonitor | None = None
        self.volume_interval = volume_interval
        self.quality_interval = quality_interval
        self._speaker_stopping: asyncio.Task[Any] | None = None
        self._closed = False
        self._generation = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> CallEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def user_id(self) -> str | None:
        """The logged-in user id."""
        return self._user_id

    @property
    def logged_in(self) -> bool:
        """Whether login succeeded and no logout/kick happened since."""
        return self._signaling is not None and self._user_id is not None

    @property
    def connected(self) -> bool:
        """Whether the signaling connection is up right now (False while reconnecting)."""
        return self._signaling is not None and self._signaling.connected

    @property
    def current_call(self) -> CallInfo | None:
        """The call in progress (ringing or connected), if any."""
        return self._call

    @property
    def remote_stats(self) -> dict[str, RemoteStats]:
        """Per remote user counters of the current call."""
        return {user_id: remote.stats for user_id, remote in self._remotes.items()}

    @property
    def mixer(self) -> Mixer:
        """The mixer that feeds the speaker (per-user gains live here)."""
        return self._mixer

    def add_observer(self, observer: CallObserver) -> None:
        """Receive callbacks. Adding the same observer twice has no effect."""
        if observer not in self._observers:
            self._observers.append(observer)

    def remove_observer(self, observer: CallObserver) -> None:
        """Stop receiving callbacks; unknown observers are ignored."""
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)

    def add_audio_tap(self, tap: AudioTap) -> None:
        """Also hand each remote user's received audio blocks to ``tap`` (before mixing).

        ``tap(user_id, block)`` runs on the event loop for every 20 ms block (int16 mono,
        48 kHz; do not modify it) and must return at once. Adding a tap twice has no effect.
        """
        if tap not in self._audio_taps:
            self._audio_taps.append(tap)

    def remove_audio_tap(self, tap: AudioTap) -> None:
        """Stop calling ``tap``; unknown taps are ignored."""
        with contextlib.suppress(ValueError):
            self._audio_taps.remove(tap)

    def events(self, maxsize: int = 1000) -> EventQueueObserver:
        """An async iterator of every callback from now on (``async for ev in engine.events()``)."""
        stream = EventQueueObserver(maxsize)
        self.add_observer(stream)
        return stream

    async def login(
        self,
        sdk_app_id: int,
        user_id: str,
        user_sig: str,
        *,
        nickname: str = "",
        avatar: str = "",
    ) -> None:
        """Connect to the server and log in. Raises :class:`CallError` on refusal."""
        self._check_open()
        if self._signaling is not None:
            raise RequestRepeatedError(f"login: already logged in as {self._user_id!r}")
        extra: dict[str, Any] = {"platform": "Python"}
        if nickname:
            extra["nickname"] = nickname
        if avatar:
            extra["avatar"] = avatar
        signaling = SignalingClient(
            self.server_url,
            self._on_event,
            self._on_relay,
            on_reconnected=self._on_reconnected,
            on_disconnected=self._on_disconnected,
            request_timeout=self._request_timeout,
            reconnect=self._reconnect,
        )
        self._signaling = signaling
        try:
            await signaling.login(Credentials(sdk_app_id, user_id, user_sig, extra))
        except BaseException:
            self._signaling = None
            await signaling.close()
            raise
        self._user_id = user_id

    async def logout(self) -> None:
        """End any call and log out. Idempotent."""
        self._drop_call()
        signaling, self._signaling = self._signaling, None
        if signaling is not None:
            await signaling.logout()
        self._user_id = None

    async def close(self) -> None:
        """Log out, release every device and cancel every task. Idempotent."""
        if self._closed:
            return
        await self.logout()
        self._closed = True
        # Let the last call's teardown finish: cancelled, it would leave peer connections
        # (and their UDP sockets) open.
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=_CLEANUP_TIMEOUT)
        await self._close_devices()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for track in (self._camera_track, self._mic_track):
            if track is not None:
                track.stop()
        if self._video_encoder is not None:
            await self._video_encoder.aclose()
        if self._audio_encoder is not None:
            await self._audio_encoder.aclose()
        if self._camera_track is not None:
            await self._camera_track.aclose()
        for stream in self._observers:
            if isinstance(stream, EventQueueObserver):
                stream.close()

    # ------------------------------------------------------------------ call operations

    async def calls(
        self,
        user_ids: list[str],
        media_type: CallMediaType,
        params: CallParams | None = None,
        *,
        group_id: str = "",
    ) -> str:
        """Call one user (1v1) or several (group call); returns the call id."""
        signaling = self._require_login("calls")
        if self._call is not None:
            raise RequestRefusedError(
                f"cannot call: already in call {self._call.call_id} "
                f'(status "{self._call.status.name.lower()}")'
            )
        media = self._media_type(media_type)
        if not user_ids:
            raise InvalidParameterError("calls: user_ids must not be empty")
        params = params or CallParams()
        data: dict[str, Any] = {
            "userIDList": list(user_ids),
            "mediaType": int(media),
            "timeout": int(params.timeout),
            "userData": params.user_data,
        }
        if params.room_id.is_set:
            data["roomId"] = {
                "intRoomId": params.room_id.int_room_id,
                "strRoomId": params.room_id.str_room_id,
            }
        if group_id:
            data["groupId"] = group_id
        caller = self._user_id or ""

        def created(reply: dict[str, Any]) -> None:
            # Runs before the events this request causes are dispatched.
            self._call = CallInfo(
                call_id=reply["callId"],
                role=CallRole.CALLER,
                media_type=media,
                room_id=RoomId.from_value(reply["roomID"]),
                status=CallStatus.WAITING,
                caller=caller,
                callees=list(user_ids),
                group_id=group_id,
                user_data=params.user_data if params else "",
            )

        reply = await signaling.request("calls", on_reply=created, **data)
        return str(reply["callId"])

    async def call(
        self, user_id: str, media_type: CallMediaType, params: CallParams | None = None
    ) -> str:
        """Call one user; returns the call id."""
        return await self.calls([user_id], media_type, params)

    async def group_call(
        self,
        group_id: str,
        user_ids: list[str],
        media_type: CallMediaType,
        params: CallParams | None = None,
    ) -> str:
        """Call several users as a group call tied to ``group_id``; returns the call id."""
        return await self.calls(user_ids, media_type, params, group_id=group_id)

    async def accept(self) -> None:
        """Accept the ringing invitation."""
        call = self._require_call("accept", CallStatus.WAITING, role=CallRole.CALLED)
        await self._require_login("accept").request("accept", callId=call.call_id)

    async def reject(self) -> None:
        """Reject the ringing invitation."""
        call = self._require_call("reject", CallStatus.WAITING, role=CallRole.CALLED)
        await self._require_login("reject").request("reject", callId=call.call_id)

    async def ignore(self) -> None:
        """Ignore the ringing invitation (the caller sees the line busy)."""
        call = self._require_call("ignore", CallStatus.WAITING, role=CallRole.CALLED)
        await self._require_login("ignore").request("ignore", callId=call.call_id)

    async def hangup(self) -> None:
        """Hang up: cancel a call still ringing, reject an invitation, or leave the call."""
        signaling = self._require_login("hangup")
        call = self._call
        if call is None:
            raise RequestRefusedError('cannot hang up: call status is "none"')
        try:
            # The server answers with CALLING_END / ON_CALL_CANCELED, which end the call here.
            await signaling.request("hangup", callId=call.call_id)
        except CallError as exc:
            if exc.code != ErrorCode.CALL_NOT_FOUND:
                raise
            self._drop_call()

    async def invite_user(self, user_ids: list[str], params: CallParams | None = None) -> list[str]:
        """Invite more users into the connected call; returns those now ringing."""
        call = self._require_call("invite", CallStatus.ACCEPT, CallStatus.WAITING)
        if call.status is CallStatus.WAITING and call.role is not CallRole.CALLER:
            raise RequestRefusedError('cannot invite: call status is "waiting"')
        params = params or CallParams()
        reply = await self._require_login("invite").request(
            "invite", callId=call.call_id, userIDList=list(user_ids),
            timeout=int(params.timeout), userData=params.user_data,
        )
        invited: list[str] = reply["userIDList"]
        call.callees.extend(u for u in invited if u not in call.callees)
        return invited

    async def join(self, call_id: str) -> None:
        """Join a call in progress by its id (you must have been invited to it)."""
        signaling = self._require_login("join")
        if self._call is not None and self._call.call_id != call_id:
            raise RequestRefusedError(
                f"cannot join: already in call {self._call.call_id} "
                f'(status "{self._call.status.name.lower()}")'
            )
        if self._call is not None and self._call.status is CallStatus.ACCEPT:
            raise RequestRepeatedError("cannot join: already in this call")
        if self._call is None:
            self._call = CallInfo(
                call_id=call_id, role=CallRole.CALLED, media_type=CallMediaType.AUDIO,
                room_id=RoomId(), status=CallStatus.WAITING, caller="", callees=[],
            )
        try:
            reply = await signaling.request("join", callId=call_id)
        except CallError:
            if self._call is not None and self._call.status is CallStatus.WAITING:
                self._call = None
            raise
        if self._call is not None:
            self._call.media_type = CallMediaType(reply["callMediaType"])
            self._call.room_id = RoomId.from_value(reply["roomID"])

    async def switch_call_media_type(self, media_type: CallMediaType) -> None:
        """Switch the connected call between audio and video."""
        call = self._require_call("switch media type", CallStatus.ACCEPT)
        media = self._media_type(media_type)
        if media is call.media_type:
            raise RequestRepeatedError(f"the call is already {media.name.lower()}")
        await self._require_login("switch_media_type").request(
            "switch_media_type", callId=call.call_id, mediaType=int(media)
        )

    # ------------------------------------------------------------------ devices

    async def open_camera(
        self, camera: Camera = Camera.FRONT, view: VideoView | None = None
    ) -> None:
        """Open a camera and preview it in ``view``; others see the video in a call."""
        self._check_open()
        source = self.devices.cameras.get(Camera(camera))
        if source is None:
            raise DeviceError(f"no {Camera(camera).name.lower()} camera is configured",
                              ErrorCode.CAMERA_START_FAIL)
        track = self._ensure_camera_track()
        self._generation += 1  # a teardown still running must not close this camera
        previous = self._camera
        # Start the new camera before stopping the old one: the track switches without a gap,
        # the old source's end is not reported as an error, and a failed start keeps the old.
        await source.start()
        track.set_source(source)
        self._camera = Camera(camera)
        if previous is not None and previous != camera:
            await self.devices.cameras[previous].stop()
        if view is not None:
            if self._local_view is not None and self._local_view is not view:
                track.remove_local_view(self._local_view)
            self._local_view = view
            track.add_local_view(view, self._render_params.get(self._user_id or "", None))
        await self._report_media_state(camera=True)

    async def close_camera(self) -> None:
        """Close the camera; others get video unavailable."""
        if self._camera is None:
            return
        await self._release_camera()
        await self._report_media_state(camera=False)

    async def _release_camera(self) -> None:
        """Detach and stop the open camera and its local preview."""
        if self._camera is None:
            return
        source = self.devices.cameras.get(self._camera)
        self._camera = None
        if self._camera_track is not None:
            self._camera_track.set_source(None)
            if self._local_view is not None:
                self._camera_track.remove_local_view(self._local_view)
        self._local_view = None
        if source is not None:
            await source.stop()

    async def switch_camera(self, camera: Camera) -> None:
        """Switch between front and back camera without renegotiation."""
        if self._camera is None:
            raise RequestRefusedError("cannot switch camera: the camera is closed")
        if Camera(camera) == self._camera:
            return
        await self.open_camera(camera, self._local_view)

    async def open_microphone(self) -> None:
        """Open the microphone; others get audio available."""
        self._check_open()
        self._mic_wanted = True
        self._generation += 1  # a teardown still running must not close this microphone
        await self._start_microphone()

    async def close_microphone(self) -> None:
        """Close the microphone; others get audio unavailable."""
        self._mic_wanted = False
        await self._stop_microphone()
        if self._monitor is not None and self._user_id is not None:
            self._monitor.audio_muted(self._user_id)

    async def select_audio_playback_device(self, device: AudioPlaybackDevice) -> None:
        """Route remote audio to the speakerphone or the earpiece (switchable mid-call)."""
        route = AudioPlaybackDevice(device)
        if route not in self.devices.speakers:
            raise DeviceError(f"no {route.name.lower()} output is configured",
                              ErrorCode.SPEAKER_START_FAIL)
        previous = self._playback
        self._playback = route
        if self._speaker is not None and route != previous:
            await self._speaker.stop()
            self._speaker = None
        call = self._call
        if self._speaker is None and call is not None and call.status is CallStatus.ACCEPT:
            # Also retries a route whose output failed to open earlier in this call.
            await self._start_speaker()

    def start_remote_view(self, user_id: str, view: VideoView) -> None:
        """Render ``user_id``'s video into ``view``."""
        self._views[user_id] = view

    def stop_remote_view(self, user_id: str) -> None:
        """Stop rendering ``user_id``'s video."""
        self._views.pop(user_id, None)

    def set_video_render_params(self, user_id: str, params: VideoRenderParams) -> None:
        """Fill mode and rotation for one user's view (the local user's id for the preview)."""
        self._render_params[user_id] = params
        if user_id == self._user_id and self._camera_track is not None and self._local_view:
            self._camera_track.add_local_view(self._local_view, params)

    def set_video_encoder_params(self, params: VideoEncoderParams) -> None:
        """Resolution preset of the video sent (takes effect at the next frame)."""
        self._encoder_params = params
        if self._camera_track is not None:
            self._camera_track.set_size(
                resolution_size(params.resolution, params.resolution_mode)
            )
        if self._video_encoder is not None:
            self._video_encoder.set_bitrate(resolution_bitrate_kbps(params.resolution) * 1000)

    async def set_self_info(self, nickname: str, avatar: str = "") -> None:
        """Set the nickname and avatar others see."""
        await self._require_login("set_self_info").request(
            "self_info", nickname=nickname, avatar=avatar
        )

    async def enable_multi_device_ability(self, enable: bool) -> None:
        """Allow this user to stay logged in when it logs in elsewhere too."""
        await self._require_login("multi_device").request("multi_device", enable=bool(enable))

    async def query_recent_calls(self, filter: RecentCallsFilter | None = None) -> list[CallRecord]:
        """This user's recent call records, newest first."""
        filter = filter or RecentCallsFilter()
        data: dict[str, Any] = {}
        if filter.begin is not None:
            data["begin"] = filter.begin
        if filter.end is not None:
            data["end"] = filter.end
        if filter.result_type is not None:
            data["resultType"] = int(filter.result_type)
        reply = await self._require_login("query_recent_calls").request(
            "query_recent_calls", **data
        )
        return [
            CallRecord(
                call_id=r["callId"],
                inviter=r["inviter"],
                invite_list=list(r["inviteList"]),
                scene=CallScene(r["scene"]),
                media_type=CallMediaType(r["mediaType"]),
                group_id=r["groupId"],
                role=CallRole(r["role"]),
                result=CallResultType(r["result"]),
                begin_time=int(r["beginTime"]),
                total_time=int(r["totalTime"]),
                call_result=str(r.get("callResult", "")),
            )
            for r in reply["records"]
        ]

    async def delete_record_calls(self, call_ids: list[str]) -> list[str]:
        """Delete this user's records of these calls; returns the ids deleted."""
        reply = await self._require_login("delete_record_calls").request(
            "delete_record_calls", callIds=list(call_ids)
        )
        return list(reply["deleted"])

    # ------------------------------------------------------------------ checks

    def _check_open(self) -> None:
        if self._closed:
            raise RequestRefusedError("the engine is closed")

    def _require_login(self, action: str) -> SignalingClient:
        self._check_open()
        if self._signaling is None or self._user_id is None:
            raise NotLoggedInError(f"cannot {action}: not logged in")
        return self._signaling

    def _require_call(
        self, action: str, *statuses: CallStatus, role: CallRole | None = None
    ) -> CallInfo:
        self._require_login(action)
        call = self._call
        if call is None:
            raise RequestRefusedError(f'cannot {action}: call status is "none"')
        if call.status not in statuses:
            raise RequestRefusedError(
                f'cannot {action}: call status is "{call.status.name.lower()}"'
            )
        if role is not None and call.role is not role:
            raise RequestRefusedError(
                f'cannot {action}: you are the {call.role.name.lower()} of this call'
            )
        return call

    @staticmethod
    def _media_type(value: CallMediaType | int) -> CallMediaType:
        try:
            media = CallMediaType(value)
        except ValueError as exc:
            raise InvalidParameterError(
                f"media type must be 1 (audio) or 2 (video), not {value!r}"
            ) from exc
        if media is CallMediaType.NONE:
            raise InvalidParameterError("media type must be audio or video, not none")
        return media

    # ------------------------------------------------------------------ observers

    def _fire(self, name: str, *args: Any) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, name)(*args)
            except Exception:
                logger.exception("observer %r raised in %s", observer, name)

    # ------------------------------------------------------------------ server events

    def _on_event(self, event: Event) -> None:
        handler = getattr(self, f"_ev_{event.name.lower()}", None)
        if handler is None:
            logger.debug("unhandled event %s", event.name)
            return
        handler(event.data)

    def _this_call(self, data: dict[str, Any]) -> CallInfo | None:
        call = self._call
        if call is None or data.get("callId") != call.call_id:
            return None
        return call

    def _ev_sdk_ready(self, data: dict[str, Any]) -> None:
        logger.info("logged in as %s", data.get("userID"))

    def _ev_error(self, data: dict[str, Any]) -> None:
        self._fire("on_error", int(data.get("code", ErrorCode.INTERNAL)), str(data.get("msg", "")))

    def _ev_kicked_out(self, data: dict[str, Any]) -> None:
        self._spawn(self._lost_session("on_kicked_offline"))

    def _ev_user_sig_expired(self, data: dict[str, Any]) -> None:
        self._spawn(self._lost_session("on_user_sig_expired"))

    async def _lost_session(self, callback: str) -> None:
        self._drop_call()
        signaling, self._signaling = self._signaling, None
        self._user_id = None
        self._fire(callback)
        if signaling is not None:
            await signaling.close()

    def _ev_on_call_received(self, data: dict[str, Any]) -> None:
        if self._call is not None:
            logger.warning("invitation %s while in call %s", data.get("callId"),
                           self._call.call_id)
            return
        media = CallMediaType(data["callMediaType"])
        self._call = CallInfo(
            call_id=data["callId"],
            role=CallRole.CALLED,
            media_type=media,
            room_id=RoomId.from_value(data.get("roomID")),
            status=CallStatus.WAITING,
            caller=data["sponsor"],
            callees=list(data.get("userIDList", [])),
            group_id=data.get("groupID", ""),
            user_data=data.get("userData", ""),
        )
        self._fire(
            "on_call_received", data["sponsor"], list(data.get("userIDList", [])),
            data.get("groupID", ""), media,
        )

    def _ev_on_call_canceled(self, data: dict[str, Any]) -> None:
        call = self._this_call(data)
        if call is None:
            return
        if call.role is CallRole.CALLER:
            user_id = call.caller
        elif data.get("reason") in ("cancel", "interrupted"):
            user_id = data.get("sponsor", call.caller)
        else:
            user_id = self._user_id or ""
        self._drop_call()
        self._fire("on_call_cancelled", user_id)

    def _ev_on_call_begin(self, data: dict[str, Any]) -> None:
        call = self._this_call(data)
        if call is None:
            return
        call.status = CallStatus.ACCEPT
        call.begin_time = time.time()
        call.media_type = CallMediaType(data["callMediaType"])
        call.room_id = RoomId.from_value(data.get("roomID"))
        self._fire("on_call_begin", call.room_id, call.media_type, call.role)
        self._start_monitor()
        self._spawn(self._start_call_media())

    def _ev_user_accept(self, data: dict[str, Any]) -> None:
        pass  # TUICallObserver has no callback for it; USER_ENTER follows for joined users

    def _ev_user_enter(self, data: dict[str, Any]) -> None:
        call = self._this_call(data)
        user_id = data.get("userID")
        if call is None or not isinstance(user_id, str) or user_id == self._user_id:
            return
        if user_id not in call.remote_users:
            call.remote_users.append(user_id)
        self._ensure_peer(user_id)
        self._fire("on_user_join", user_id)

    def _ev_user_leave(self, data: dict[str, Any]) -> None:
        call = self._this_call(data)
        user_id = data.get("userID")
        if call is None or not isinstance(user_id, str):
            return
        self._remote_left(call, user_id)

    def _remote_left(self, call: CallInfo, user_id: str) -> None:
        if user_id in call.remote_users:
            call.remote_users.remove(user_id)
        remote = self._remotes.pop(user_id, None)
        if remote is not None:
            self._spawn(self._close_remote(remote), cleanup=True)
        self._mixer.remove(user_id)
        if self._monitor is not None:
            self._monitor.remove_peer(user_id)
        self._fire("on_user_leave", user_id)

    def _ev_reject(self, data: dict[str, Any]) -> None:
        if self._this_call(data) is not None:
            self._fire("on_user_reject", data["userID"])

    def _ev_no_resp(self, data: dict[str, Any]) -> None:
        if self._this_call(data) is not None:
            for user_id in data.get("userIDList", []):
                self._fire("on_user_no_response", user_id)

    def _ev_line_busy(self, data: dict[str, Any]) -> None:
        if self._this_call(data) is not None:
            self._fire("on_user_line_busy", data["userID"])

    def _ev_calling_end(self, data: dict[str, Any]) -> None:
        call = self._this_call(data)
        if call is None:
            return
        self._drop_call()
        self._fire(
            "on_call_end", call.room_id, call.media_type, call.role,
            float(data.get("totalTime", 0)),
        )

    def _ev_call_type_changed(self, data: dict[str, Any]) -> None:
        call = self._this_call(data)
        if call is None:
            return
        old = CallMediaType(data["oldCallType"])
        new = CallMediaType(data["newCallType"])
        call.media_type = new
        if new is CallMediaType.AUDIO and self._camera is not None:
            self._spawn(self.close_camera())
        self._fire("on_call_media_type_changed", old, new)

    def _ev_user_video_available(self, data: dict[str, Any]) -> None:
        if self._this_call(data) is None:
            return
        remote = self._remotes.get(data["userID"])
        if remote is not None:
            remote.video_available = bool(data["isVideoAvailable"])
        self._fire("on_user_video_available", data["userID"], bool(data["isVideoAvailable"]))

    def _ev_user_audio_available(self, data: dict[str, Any]) -> None:
        if self._this_call(data) is None:
            return
        remote = self._remotes.get(data["userID"])
        if remote is not None:
            remote.audio_available = bool(data["isAudioAvailable"])
        if not data["isAudioAvailable"] and self._monitor is not None:
            self._monitor.audio_muted(data["userID"])
        self._fire("on_user_audio_available", data["userID"], bool(data["isAudioAvailable"]))

    def _ev_on_user_network_quality_changed(self, data: dict[str, Any]) -> None:
        # Others report their uplink; the monitor combines it with what we measure and
        # reports everyone's quality every 2 s.
        if self._this_call(data) is None or self._monitor is None:
            return
        for item in data.get("networkQualityList", []):
            self._monitor.remote_reported(str(item["userID"]), NetworkQuality(item["quality"]))

    def _ev_group_call_invitee_list_update(self, data: dict[str, Any]) -> None:
        call = self._this_call(data)
        if call is not None:
            call.callees = list(data.get("userIDList", call.callees))

    # ------------------------------------------------------------------ reconnection

    def _on_disconnected(self) -> None:
        logger.info("signaling connection lost; reconnecting")

    def _on_reconnected(self, reply: dict[str, Any]) -> None:
        call = self._call
        if call is None:
            return
        active = reply.get("activeCall")
        if active is not None and active.get("callId") == call.call_id:
            logger.info("call %s resumed after reconnect", call.call_id)
            return
        # The server no longer knows the call (it restarted): end it here too.
        logger.info("call %s is gone after reconnect; ending it", call.call_id)
        self._drop_call()
        if call.status is CallStatus.ACCEPT:
            total = time.time() - (call.begin_time or time.time())
            self._fire("on_call_end", call.room_id, call.media_type, call.role, total)
        else:
            self._fire("on_call_cancelled", call.caller if call.role is CallRole.CALLED
                       else self._user_id or "")

    # ------------------------------------------------------------------ media

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], *, cleanup: bool = False
    ) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        if cleanup:
            self._cleanups.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("engine task failed", exc_info=task.exception())

    def _ensure_camera_track(self) -> CameraTrack:
        if self._camera_track is None:
            self._camera_track = CameraTrack(
                size=resolution_size(
                    self._encoder_params.resolution, self._encoder_params.resolution_mode
                ),
                user_id=self._user_id or "",
                on_error=self._device_failed,
            )
        return self._camera_track

    def _ensure_video_encoder(self) -> VideoEncoderSession:
        """The one encoder of the camera track, shared by every peer's video sender."""
        if self._video_encoder is None:
            self._video_encoder = VideoEncoderSession(
                self._ensure_camera_track(),
                self.peer_config.video_codec,
                resolution_bitrate_kbps(self._encoder_params.resolution) * 1000,
            )
        return self._video_encoder

    def _ensure_audio_encoder(self) -> AudioEncoderSession:
        """The one Opus encoder of the microphone track, shared by every peer's sender."""
        if self._audio_encoder is None:
            self._audio_encoder = AudioEncoderSession(self._ensure_mic_track())
        return self._audio_encoder

    def _ensure_mic_track(self) -> MicrophoneTrack:
        if self._mic_track is None:
            self._mic_track = MicrophoneTrack(on_error=self._device_failed)
            self._mic_track.on_block = self._local_audio
        return self._mic_track

    def _local_audio(self, block: npt.NDArray[np.int16]) -> None:
        if self._monitor is not None and self._mic_open:
            self._monitor.local_audio(block)

    def _start_monitor(self) -> None:
        """Volume and network-quality reports for the call that just connected."""
        if self._monitor is not None or self._user_id is None:
            return
        call_id = self._call.call_id if self._call else ""

        async def send_uplink(quality: NetworkQuality) -> None:
            signaling = self._signaling
            if signaling is not None and signaling.connected:
                await signaling.request("network_quality", callId=call_id, quality=int(quality))

        self._monitor = CallMonitor(
            self._user_id,
            self._fire,
            send_uplink,
            volume_interval=self.volume_interval,
            quality_interval=self.quality_interval,
        )
        for user_id, remote in self._remotes.items():
            if remote.peer is not None:
                self._monitor.add_peer(user_id, remote.peer.pc)
        self._monitor.start()

    def _device_failed(self, error: DeviceError) -> None:
        self._fire("on_error", error.code, error.message)

    async def _start_microphone(self) -> None:
        source = self.devices.microphone
        if source is None:
            raise DeviceError("no microphone is configured", ErrorCode.MIC_START_FAIL)
        await source.start()
        self._ensure_mic_track().set_source(source)
        self._mic_open = True
        await self._report_media_state(microphone=True)

    async def _stop_microphone(self) -> None:
        if not self._mic_open:
            return
        self._mic_open = False
        if self._mic_track is not None:
            self._mic_track.set_source(None)
        if self.devices.microphone is not None:
            await self.devices.microphone.stop()
        await self._report_media_state(microphone=False)

    async def _start_speaker(self) -> None:
        stopping = self._speaker_stopping
        if stopping is not None and not stopping.done():
            # The last call's speaker is still stopping and may be the sink wanted now.
            await asyncio.wait([stopping])
        if self._speaker is not None:
            return
        sink = self.devices.speakers.get(self._playback)
        if sink is None:
            return
        await sink.start(self._mixer.pull)
        self._speaker = sink

    async def _report_media_state(
        self, camera: bool | None = None, microphone: bool | None = None
    ) -> None:
        call = self._call
        signaling = self._signaling
        if call is None or call.status is not CallStatus.ACCEPT or signaling is None:
            return
        data: dict[str, Any] = {}
        if camera is not None:
            data["camera"] = camera
        if microphone is not None:
            data["microphone"] = microphone
        try:
            await signaling.request("media_state", callId=call.call_id, **data)
        except CallError as exc:
            logger.info("media state not reported: %s", exc)

    async def _start_call_media(self) -> None:
        """The call connected: speaker on, microphone on unless closed, state to others."""
        try:
            await self._start_speaker()
        except DeviceError as exc:  # e.g. no sound card: the call goes on without sound
            self._fire("on_error", exc.code, exc.message)
        if self._mic_wanted and not self._mic_open and self.devices.microphone is not None:
            try:
                await self._start_microphone()
            except DeviceError as exc:
                self._fire("on_error", exc.code, exc.message)
        else:
            await self._report_media_state(microphone=self._mic_open)
        await self._report_media_state(camera=self._camera is not None)

    def _ensure_peer(self, user_id: str) -> _Remote:
        remote = self._remotes.get(user_id)
        if remote is None:
            remote = _Remote(user_id)
            self._remotes[user_id] = remote
        if remote.peer is None and self._user_id is not None and self._call is not None:
            call_id = self._call.call_id
            video_encoder = self._ensure_video_encoder()

            async def send_relay(kind: str, payload: dict[str, Any]) -> None:
                deadline = time.monotonic() + _RELAY_RETRY_SECONDS
                while True:
                    signaling = self._signaling
                    if signaling is None:
                        raise CallError("relay: not connected")
                    try:
                        await signaling.request(
                            "relay", callId=call_id, to=user_id, kind=kind, payload=payload
                        )
                        return
                    except CallError as exc:
                        if exc.code in (ErrorCode.CALL_NOT_FOUND, ErrorCode.PERMISSION_DENIED):
                            # The call ended or the user left while negotiating: moot.
                            logger.debug("%s relay to %s dropped: %s", kind, user_id, exc)
                            return
                        if exc.code != ErrorCode.USER_OFFLINE or time.monotonic() > deadline:
                            raise
                    await asyncio.sleep(_RELAY_RETRY_INTERVAL)  # reconnecting: retry

            remote.peer = PeerLink(
                self._user_id,
                user_id,
                self.peer_config,
                send_relay,
                self._ensure_audio_encoder().subscribe(),
                video_encoder.subscribe(),
                self._on_remote_track,
                self._on_peer_unresponsive,
            )
            self._spawn(remote.peer.start())
            if self._monitor is not None:
                self._monitor.add_peer(user_id, remote.peer.pc)
        return remote

    def _on_relay(self, relay: Relay) -> None:
        call = self._call
        if call is None or relay.call_id != call.call_id:
            logger.debug("relay for another call %s ignored", relay.call_id)
            return
        remote = self._ensure_peer(relay.sender)
        peer = remote.peer
        if peer is not None:
            self._spawn(peer.handle_relay(relay.kind, relay.payload))

    def _on_peer_unresponsive(self, user_id: str) -> None:
        call = self._call
        signaling = self._signaling
        if call is None:
            return
        if signaling is not None and signaling.connected:
            return  # the server knows whether the user left; wait for USER_LEAVE
        logger.info("%s unresponsive while signaling is down: treating as left", user_id)
        self._remote_left(call, user_id)
        if not call.remote_users:
            self._drop_call()
            total = time.time() - (call.begin_time or time.time())
            self._fire("on_call_end", call.room_id, call.media_type, call.role, total)

    def _on_remote_track(self, user_id: str, track: MediaStreamTrack) -> None:
        remote = self._remotes.get(user_id)
        if remote is None:
            return
        if track.kind == "audio":
            coro: Coroutine[Any, Any, None] = self._consume_audio(remote, track)
        else:
            coro = self._consume_video(remote, track)
        task = asyncio.get_running_loop().create_task(coro, name=f"{track.kind} from {user_id}")
        remote.tasks.add(task)
        task.add_done_callback(remote.tasks.discard)

    async def _consume_audio(self, remote: _Remote, track: MediaStreamTrack) -> None:
        converter = AudioConverter()
        pending = np.zeros(0, dtype=np.int16)
        block = BLOCK_SAMPLES
        next_pts: int | None = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            # Packets go to the decoder as they arrive (callclient.media.receive): a gap in
            # the timestamps is loss, which the playout buffer conceals instead of waiting.
            start = _sample_position(frame)
            if start is not None:
                if next_pts is not None and start > next_pts:
                    missing = round((start - next_pts) / block)
                    pending = pending[:0]
                    if 0 < missing <= _MAX_GAP_BLOCKS:
                        remote.stats.audio_blocks_missing += missing
                        self._mixer.push_missing(remote.user_id, missing)
                next_pts = start + round(frame.samples * SAMPLE_RATE / frame.sample_rate)
            samples = converter.convert(frame)
            pending = np.concatenate([pending, samples]) if pending.size else samples
            while pending.size >= block:
                samples = pending[:block].copy()
                self._mixer.push(remote.user_id, samples)
                pending = pending[block:]
                remote.stats.audio_blocks += 1
                if self._monitor is not None:
                    self._monitor.remote_audio(remote.user_id, samples)
                for tap in list(self._audio_taps):
                    try:
                        tap(remote.user_id, samples)
                    except Exception:
                        logger.exception("audio tap %r failed", tap)

    async def _consume_video(self, remote: _Remote, track: MediaStreamTrack) -> None:
        """Render the newest received frame; frames that arrive meanwhile are skipped.

        Rendering (colour conversion, scaling) runs in a worker thread, so the event loop
        never waits for it, and a consumer that falls behind drops stale frames instead of
        queueing them (:func:`~callclient.media.receive.recv_newest`).
        """
        while True:
            try:
                frame, skipped = await recv_newest(track)
            except MediaStreamError:
                return
            assert isinstance(frame, av.VideoFrame)
            now = time.time()
            stats = remote.stats
            stats.video_frames += 1 + skipped
            stats.video_frames_skipped += skipped
            stats.last_video_time = now
            if stats.first_video_time is None:
                stats.first_video_time = now
            view = self._views.get(remote.user_id)
            if view is None:
                continue
            params = self._render_params.get(remote.user_id, VideoRenderParams())
            image = await asyncio.to_thread(_render_frame, frame, params, view.size)
            if self._views.get(remote.user_id) is not view:
                continue  # the view was stopped or replaced while rendering
            try:
                view.on_frame(RenderedFrame(remote.user_id, image, now))
            except Exception:
                logger.exception("view of %s failed", remote.user_id)

    async def _close_remote(self, remote: _Remote) -> None:
        for task in list(remote.tasks):
            task.cancel()
        if remote.peer is not None:
            await remote.peer.close()
        for task in list(remote.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _drop_call(self) -> None:
        """Forget the current call and tear its media down in the background.

        What belongs to the call is detached now, so a call that starts right after is not
        touched by the teardown.
        """
        self._call = None
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            self._spawn(monitor.stop(), cleanup=True)
        remotes = list(self._remotes.values())
        self._remotes.clear()
        for remote in remotes:
            self._mixer.remove(remote.user_id)
        speaker, self._speaker = self._speaker, None
        if speaker is not None:
            self._speaker_stopping = self._spawn(speaker.stop(), cleanup=True)
        generation = self._generation = self._generation + 1
        self._spawn(self._teardown(remotes, generation), cleanup=True)

    async def _teardown(self, remotes: list[_Remote], generation: int) -> None:
        for remote in remotes:
            await self._close_remote(remote)
        # Devices are closed unless a call started or a device was opened since the drop.
        if generation == self._generation and self._call is None:
            await self._close_devices()

    async def _close_devices(self) -> None:
        await self._release_camera()
        if self._mic_open:
            self._mic_open = False
            if self._mic_track is not None:
                self._mic_track.set_source(None)
            if self.devices.microphone is not None:
                await self.devices.microphone.stop()
        self._mic_wanted = True
