"""CallEngine: the TUICallEngine-style API, a thin façade over the call core and the media.

One engine is one logged-in user. Each operation asks the call core
(:class:`~callclient.callstate.CallState`) whether it is allowed now, sends the signaling
request, and hands the reply back to the core; each server event goes to the core, which
returns the effects to carry out, in order: notify observers, connect or drop a remote user's
media, start or end the call's media. The engine carries them out with its parts, each in its
own module:

* :class:`~callclient.localmedia.LocalMedia`: devices, the shared encoders, the speaker;
* :class:`~callclient.callmedia.CallMedia`: the current call's transport to the other members
  (a :class:`~callclient.mesh.PeerMesh`), its volume and network-quality monitor, teardown;
* :class:`~callclient.media.remote.RemoteMedia`: what arrives, mixed into the speaker and
  rendered into the application's views;
* a :class:`~callclient.media.devicewatch.DeviceWatcher` while logged in, when the devices
  can change (real devices): device list changes become ``on_devices_updated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from callclient.callmedia import CallMedia
from callclient.callstate import (
    MEDIA_STATE_GRACE,
    ApplyRelay,
    CallInfo,
    CallState,
    CloseCameraForAudio,
    ConnectPeer,
    DisconnectPeer,
    Effect,
    EndCallMedia,
    EndSession,
    MediaKind,
    Notify,
    RemoteAudioMuted,
    RemoteUplinkReported,
    StartCallMedia,
    UseSfu,
    calls_request,
    check_media_type,
    invite_request,
    join_in_group_call_request,
)
from callclient.errors import (
    CallError,
    DeviceError,
    ErrorCode,
    InvalidParameterError,
    NotLoggedInError,
    ProtocolError,
    RequestRefusedError,
    RequestRepeatedError,
)
from callclient.ice import IceChooser
from callclient.icepath import selected_path
from callclient.localmedia import LocalMedia
from callclient.media.base import VideoView
from callclient.media.deviceset import DeviceSet
from callclient.media.devicewatch import DeviceWatcher
from callclient.media.encoding import LocalVideoStats
from callclient.media.mixer import Mixer
from callclient.media.processing import AudioProcessing, ProcessingStats
from callclient.media.remote import AudioTap, RemoteMedia, RemoteStats
from callclient.observer import CallObserver, Error, EventQueueObserver, Notification
from callclient.peer import IceServer, PeerConfig
from callclient.records import parse_records, recent_calls_request
from callclient.signaling import Credentials, SignalingClient, server_urls
from callclient.tasks import TaskOwner
from callclient.types import (
    AudioPlaybackDevice,
    CallMediaType,
    CallParams,
    CallRecord,
    CallStatus,
    Camera,
    DeviceList,
    GroupCallInfo,
    RecentCallsFilter,
    RoomId,
    UserInfo,
    VideoEncoderParams,
    VideoRenderParams,
)
from callwire import messages, protocol
from callwire.protocol import Event, ProtocolViolation, Relay

__all__ = ["CallEngine"]

logger = logging.getLogger(__name__)

_CLEANUP_TIMEOUT = 5.0
"""Seconds :meth:`CallEngine.close` waits for peer connections and the speaker to close."""

_PLAYOUT_MAX_BLOCKS = 6
"""Most 20 ms blocks of one remote user queued for the speaker (the playout buffer keeps
only what the jitter needs, normally 1..2; this is the hard cap)."""

_R = TypeVar("_R")


def _parsed(parse: Callable[[Mapping[str, Any]], _R], data: Mapping[str, Any]) -> _R:
    """A reply parsed by ``parse``; a malformed one is a :class:`ProtocolError`."""
    try:
        return parse(data)
    except ProtocolViolation as exc:
        raise ProtocolError(f"the server sent a malformed reply: {exc.message}") from exc


class CallEngine:
    """An asyncio call client with the operations of TUICallEngine.

    ``server_url`` is the signaling server (``ws://host:port``), or several: the nodes of a
    cluster, tried in turn at login and on each reconnect attempt
    (:mod:`callclient.signaling`). ``devices`` defaults to a
    virtual device set; pass real devices (:mod:`callclient.media.devices`) for hardware.
    During a call, volumes are reported every ``volume_interval`` seconds and network quality
    every ``quality_interval`` seconds (:mod:`callclient.monitor`). ``audio_processing`` says
    which capture processing stages run (:mod:`callclient.media.processing`); by default all
    of them for a real microphone and none for a virtual one (bit-exact test audio). While
    logged in, devices that can change (``devices.probe``) are checked every
    ``device_watch_interval`` seconds. Peer connections use the STUN/TURN servers the
    signaling server hands out (:mod:`callclient.ice`) unless ``ice_servers`` is given;
    ``relay_only`` restricts them to TURN relays. ``video_adaptation`` lets the video sent lower its
    frame rate and size when the CPU or the path cannot carry the preset
    (:mod:`callclient.media.adaptation`; :attr:`local_video_stats` says what is sent).
    Use as ``async with CallEngine(...) as engine:`` or call :meth:`close`.
    """

    def __init__(
        self,
        server_url: str | Sequence[str],
        *,
        devices: DeviceSet | None = None,
        ice_servers: Iterable[IceServer] = (),
        relay_only: bool = False,
        video_codec: str = "VP8",
        reconnect: bool = True,
        request_timeout: float = 10.0,
        volume_interval: float = 0.3,
        quality_interval: float = 2.0,
        audio_processing: AudioProcessing | None = None,
        device_watch_interval: float = 1.0,
        video_adaptation: bool = True,
    ) -> None:
        if video_codec.upper() not in ("VP8", "H264"):
            raise InvalidParameterError(f"video_codec must be VP8 or H264, not {video_codec!r}")
        self.server_urls = server_urls(server_url)
        """Every signaling server URL, in the order they are tried."""
        self.peer_config = PeerConfig(
            ice_servers=list(ice_servers), relay_only=relay_only, video_codec=video_codec.upper()
        )
        self._reconnect = reconnect
        self._request_timeout = request_timeout
        self._state = CallState()
        self._tasks = TaskOwner()
        self._observers: list[CallObserver] = []
        self._signaling: SignalingClient | None = None
        self._mixer = Mixer(_PLAYOUT_MAX_BLOCKS, adaptive=True)
        self._remote = RemoteMedia(self._mixer)
        self._remote.on_media = self._media_arrived
        self._local = LocalMedia(
            devices if devices is not None else DeviceSet.virtual(),
            self.peer_config.video_codec,
            lambda camera, microphone: self._media.report_state(camera, microphone),
            self._device_failed,
            audio_processing,
            video_adaptation,
        )
        self._ice = IceChooser(list(ice_servers), self._tasks, self._notify)
        self._media = CallMedia(
            self._local, self._remote, self._tasks,
            lambda: dataclasses.replace(self.peer_config, ice_servers=self._ice.servers),
            signaling=lambda: self._signaling,
            notify=self._notify,
            on_unresponsive=self._peer_unresponsive,
            current_call=lambda: self._state.call,
            volume_interval=volume_interval,
            quality_interval=quality_interval,
        )
        self._device_watch_interval = device_watch_interval
        self._watcher: DeviceWatcher | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> CallEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def server_url(self) -> str:
        """The signaling server URL in use (logged in: the one connected to, or being
        reconnected to; else the first)."""
        signaling = self._signaling
        return signaling.url if signaling is not None else self.server_urls[0]

    @property
    def devices(self) -> DeviceSet:
        """The cameras, microphone and speakers this engine uses."""
        return self._local.devices

    @property
    def ice(self) -> IceChooser:
        """The STUN/TURN servers peer connections use now (``ice.servers``): the explicit
        ``ice_servers``, else the signaling server's, TURN URLs tried (:mod:`callclient.ice`)."""
        return self._ice

    @property
    def user_id(self) -> str | None:
        """The logged-in user id."""
        return self._state.user_id

    @property
    def logged_in(self) -> bool:
        """Whether login succeeded and no logout/kick happened since."""
        return self._signaling is not None and self._state.user_id is not None

    @property
    def connected(self) -> bool:
        """Whether the signaling connection is up right now (False while reconnecting)."""
        return self._signaling is not None and self._signaling.connected

    @property
    def current_call(self) -> CallInfo | None:
        """The call in progress (ringing or connected), if any."""
        return self._state.call

    @property
    def remote_stats(self) -> dict[str, RemoteStats]:
        """Per remote user counters of the current call, and the candidate pair (``path``)
        each one's media flows on."""
        stats = self._remote.stats
        mesh = self._media.mesh
        for user_id, counters in stats.items():
            peer = mesh.peers.get(user_id) if mesh is not None else None
            counters.path = selected_path(peer.pc) if peer is not None else None
        return stats

    @property
    def local_video_stats(self) -> LocalVideoStats | None:
        """The video this engine sends: size, frame rate, bitrate, why (CPU or bandwidth
        adaptation), the adaptation steps taken and the frames dropped per stage; None
        before a call sent video."""
        return self._local.video_stats

    @property
    def mixer(self) -> Mixer:
        """The mixer that feeds the speaker (per-user gains live here)."""
        return self._mixer

    @property
    def audio_processing(self) -> AudioProcessing:
        """The capture processing stages that run now."""
        return self._local.processor.config

    @property
    def audio_processing_stats(self) -> ProcessingStats:
        """Counters of the capture processing (blocks, CPU, time added, reference)."""
        return self._local.processor.stats

    def set_audio_processing(
        self,
        processing: AudioProcessing | None = None,
        *,
        echo_cancellation: bool | None = None,
        noise_suppression: bool | None = None,
        auto_gain: bool | None = None,
        high_pass_filter: bool | None = None,
    ) -> AudioProcessing:
        """Switch capture processing stages at once, mid-call too; returns what runs now.

        ``processing`` replaces the whole configuration; each keyword switches one stage of
        it (or of the current one). A stage switched on starts fresh (the echo canceller
        converges again within about a second of far-end speech).
        """
        base = processing if processing is not None else self._local.processor.config
        config = base.with_changes(
            echo_cancellation=echo_cancellation, noise_suppression=noise_suppression,
            auto_gain=auto_gain, high_pass_filter=high_pass_filter,
        )
        self._local.processor.configure(config)
        return config

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
        self._remote.add_tap(tap)

    def remove_audio_tap(self, tap: AudioTap) -> None:
        """Stop calling ``tap``; unknown taps are ignored."""
        self._remote.remove_tap(tap)

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
            raise RequestRepeatedError(f"login: already logged in as {self._state.user_id!r}")
        extra: dict[str, Any] = {"platform": "Python"}
        if nickname:
            extra["nickname"] = nickname
        if avatar:
            extra["avatar"] = avatar
        signaling = SignalingClient(
            self.server_urls,
            self._on_event,
            self._on_relay,
            on_reconnected=self._on_reconnected,
            on_disconnected=self._on_disconnected,
            request_timeout=self._request_timeout,
            reconnect=self._reconnect,
        )
        self._signaling = signaling
        # Logged in for the core before the reply: frames that come with it (a ringing
        # invitation) are dispatched before login() returns.
        self._state.logged_in(user_id)
        self._local.user_id = user_id
        try:
            reply = await signaling.login(Credentials(sdk_app_id, user_id, user_sig, extra))
            self._ice.update(_parsed(messages.parse_ice_servers, reply))
        except BaseException:
            self._signaling = None
            self._apply(self._state.logged_out(time.time()))
            await signaling.close()
            raise
        self._watch_devices()

    async def logout(self) -> None:
        """End any call (``on_call_end``, or ``on_call_cancelled`` while it rings) and log
        out. Idempotent."""
        self._apply(self._state.logged_out(time.time()))
        self._ice.clear()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        signaling, self._signaling = self._signaling, None
        if signaling is not None:
            await signaling.logout()

    async def close(self) -> None:
        """Log out, release every device and cancel every task. Idempotent."""
        if self._closed:
            return
        await self.logout()
        self._closed = True
        # Let the last call's teardown finish: cancelled, it would leave peer connections
        # (and their UDP sockets) open.
        await self._tasks.finish_cleanups(_CLEANUP_TIMEOUT)
        await self._local.close_devices()
        await self._tasks.cancel_all()
        await self._local.aclose()
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
        signaling = self._session("calls")
        self._state.check_new_call()
        media = check_media_type(media_type)
        params = params or CallParams()
        data = calls_request(user_ids, media, params, group_id)

        def created(reply: dict[str, Any]) -> None:
            # Runs before the events this request causes are dispatched.
            self._state.call_created(
                _parsed(messages.parse_call_created_reply, reply), media, list(user_ids),
                group_id, params.user_data,
            )

        reply = await signaling.request("calls", on_reply=created, **data)
        return _parsed(messages.parse_call_created_reply, reply).call_id

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
        await self._answer("accept")

    async def reject(self) -> None:
        """Reject the ringing invitation."""
        await self._answer("reject")

    async def ignore(self) -> None:
        """Ignore the ringing invitation (the caller sees the line busy)."""
        await self._answer("ignore")

    async def _answer(self, action: str) -> None:
        signaling = self._session(action)
        call = self._state.check_answer(action)
        await signaling.request(action, callId=call.call_id)

    async def hangup(self) -> None:
        """Hang up: cancel a call still ringing, reject an invitation, or leave the call."""
        signaling = self._session("hangup")
        call = self._state.check_hangup()
        try:
            # The server answers with CALLING_END / ON_CALL_CANCELED, which end the call here.
            await signaling.request("hangup", callId=call.call_id)
        except CallError as exc:
            if exc.code != ErrorCode.CALL_NOT_FOUND:
                raise
            self._apply(self._state.hangup_found_no_call())

    async def invite_user(self, user_ids: list[str], params: CallParams | None = None) -> list[str]:
        """Invite more users into the connected call; returns those now ringing."""
        signaling = self._session("invite")
        call = self._state.check_invite()
        data = invite_request(call.call_id, list(user_ids), params or CallParams())
        reply = await signaling.request("invite", **data)
        return self._state.invited(_parsed(messages.parse_invited_reply, reply))

    async def join(self, call_id: str) -> None:
        """Join a call in progress by its id (you must have been invited to it)."""
        signaling = self._session("join")
        self._state.begin_join(call_id)
        try:
            reply = await signaling.request("join", callId=call_id)
        except CallError:
            self._state.join_failed(call_id)
            raise
        self._state.joined(_parsed(messages.parse_joined_reply, reply))

    async def join_in_group_call(
        self, room_id: RoomId, group_id: str, media_type: CallMediaType
    ) -> str:
        """Join the call group ``group_id`` has in progress (you must be a member of the
        group; ``room_id``, when set, must be that call's room); returns the call id.

        The others see you as a user who joined (``on_user_join``); you get ``on_call_begin``
        and ``on_user_join`` for each of them. The call's media type is the one in force.
        """
        signaling = self._session("join a group call")
        self._state.check_group_join()
        data = join_in_group_call_request(room_id, group_id, check_media_type(media_type))

        def joined(reply: dict[str, Any]) -> None:
            # Runs before the events this request causes are dispatched.
            self._state.group_call_joined(_parsed(messages.parse_joined_reply, reply))

        reply = await signaling.request("join_in_group_call", on_reply=joined, **data)
        return _parsed(messages.parse_joined_reply, reply).call_id

    async def group_call_in_progress(self, group_id: str) -> GroupCallInfo | None:
        """The call group ``group_id`` has in progress, or None (you must be a member)."""
        reply = await self._session("get_group_call").request("get_group_call", groupId=group_id)
        call = _parsed(messages.parse_group_call_reply, reply)
        if call is None:
            return None
        return GroupCallInfo(call.group_id, call.call_id, RoomId.from_value(call.room_id),
                             call.media_type, call.sponsor, call.user_ids, call.start_time)

    async def switch_call_media_type(self, media_type: CallMediaType) -> None:
        """Switch the connected call between audio and video."""
        signaling = self._session("switch media type")
        call, media = self._state.check_switch_media_type(media_type)
        await signaling.request("switch_media_type", callId=call.call_id, mediaType=int(media))

    # ------------------------------------------------------------------ devices

    async def open_camera(
        self, camera: Camera = Camera.FRONT, view: VideoView | None = None
    ) -> None:
        """Open a camera and preview it in ``view``; others see the video in a call."""
        self._check_open()
        await self._local.open_camera(
            camera, view, self._remote.render_params(self._state.user_id or "")
        )

    async def close_camera(self) -> None:
        """Close the camera; others get video unavailable."""
        await self._local.close_camera()

    async def switch_camera(self, camera: Camera) -> None:
        """Switch between front and back camera without renegotiation."""
        await self._local.switch_camera(camera)

    async def open_microphone(self) -> None:
        """Open the microphone; others get audio available."""
        self._check_open()
        await self._local.open_microphone()

    async def close_microphone(self) -> None:
        """Close the microphone; others get audio unavailable."""
        await self._local.close_microphone()
        if self._state.user_id is not None:
            self._media.audio_muted(self._state.user_id)

    async def select_audio_playback_device(self, device: AudioPlaybackDevice) -> None:
        """Route remote audio to the speakerphone or the earpiece (switchable mid-call)."""
        call = self._state.call
        await self._local.select_playback(
            device, self._mixer.pull, call is not None and call.status is CallStatus.ACCEPT
        )

    def start_remote_view(self, user_id: str, view: VideoView) -> None:
        """Render ``user_id``'s video into ``view``."""
        self._remote.start_view(user_id, view)

    def stop_remote_view(self, user_id: str) -> None:
        """Stop rendering ``user_id``'s video."""
        self._remote.stop_view(user_id)

    def set_video_render_params(self, user_id: str, params: VideoRenderParams) -> None:
        """Fill mode and rotation for one user's view (the local user's id for the preview)."""
        self._remote.set_render_params(user_id, params)
        if user_id == self._state.user_id:
            self._local.set_preview_params(params)

    def set_video_encoder_params(self, params: VideoEncoderParams) -> None:
        """Resolution preset of the video sent (takes effect at the next frame)."""
        self._local.set_encoder_params(params)

    # ------------------------------------------------------------------ user and records

    async def set_self_info(self, nickname: str, avatar: str | None = None) -> None:
        """Set the nickname (and the avatar, when given) others see; kept by the server
        across sessions. Without ``avatar`` the stored avatar stays."""
        data: dict[str, Any] = {"nickname": nickname}
        if avatar is not None:
            data["avatar"] = avatar
        reply = await self._session("set_self_info").request("self_info", **data)
        self._apply(self._state.self_info_set(str(reply.get("nickname", nickname)),
                                              str(reply.get("avatar", avatar or ""))))

    def user_info(self, user_id: str) -> UserInfo | None:
        """What this engine knows of a user's nickname and avatar, or None if never seen.

        Filled from invitations, users entering the call, their changes and
        :meth:`get_users_info`; ``on_user_info_changed`` tells when it changes.
        """
        return self._state.users.get(user_id)

    async def get_users_info(self, user_ids: list[str]) -> list[UserInfo]:
        """Ask the server for users' nicknames and avatars (batches of 100); the cache
        learns them. Users never seen by the server come back with empty fields."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return []
        signaling = self._session("get_users_info")
        infos: list[UserInfo] = []
        for start in range(0, len(ids), protocol.MAX_USER_INFO_BATCH):
            batch = ids[start : start + protocol.MAX_USER_INFO_BATCH]
            reply = await signaling.request("get_user_info", userIDList=batch)
            profiles = _parsed(messages.parse_user_info_reply, reply)
            self._apply(self._state.users_info_received(profiles))
            infos += [UserInfo(p.user_id, p.nickname, p.avatar) for p in profiles]
        return infos

    async def enable_multi_device_ability(self, enable: bool) -> None:
        """Allow this user to stay logged in when it logs in elsewhere too."""
        await self._session("multi_device").request("multi_device", enable=bool(enable))

    async def query_recent_calls(self, filter: RecentCallsFilter | None = None) -> list[CallRecord]:
        """This user's recent call records, newest first."""
        reply = await self._session("query_recent_calls").request(
            "query_recent_calls", **recent_calls_request(filter or RecentCallsFilter())
        )
        return parse_records(reply)

    async def delete_record_calls(self, call_ids: list[str]) -> list[str]:
        """Delete this user's records of these calls; returns the ids deleted."""
        reply = await self._session("delete_record_calls").request(
            "delete_record_calls", callIds=list(call_ids)
        )
        return [str(call_id) for call_id in reply.get("deleted", [])]

    # ------------------------------------------------------------------ checks

    def _check_open(self) -> None:
        if self._closed:
            raise RequestRefusedError("the engine is closed")

    def _session(self, action: str) -> SignalingClient:
        """The signaling session, for an operation that needs one."""
        self._check_open()
        self._state.require_login(action)
        if self._signaling is None:
            raise NotLoggedInError(f"cannot {action}: not logged in")
        return self._signaling

    # ------------------------------------------------------------------ inputs

    def _on_event(self, event: Event) -> None:
        try:
            parsed = messages.parse_event(event)
        except ProtocolViolation as exc:
            logger.warning("ignoring a malformed %s event: %s", event.name, exc.message)
            return
        if isinstance(parsed, messages.IceServers):  # ICE_SERVERS: renewed credentials
            self._ice.update(parsed)
            return
        self._apply(self._state.receive(parsed, time.time()))

    def _on_relay(self, relay: Relay) -> None:
        self._apply(self._state.relay(relay))

    def _on_disconnected(self) -> None:
        logger.info("signaling connection lost; reconnecting")

    def _on_reconnected(self, reply: dict[str, Any]) -> None:
        try:
            self._ice.update(messages.parse_ice_servers(reply))
        except ProtocolViolation as exc:
            logger.warning("ignoring the malformed iceServers of a re-login: %s", exc.message)
        active = reply.get("activeCall")
        active_id = active.get("callId") if isinstance(active, dict) else None
        self._apply(self._state.reconnected(
            active_id if isinstance(active_id, str) else None, time.time()
        ))

    def _peer_unresponsive(self, user_id: str) -> None:
        self._apply(self._state.peer_unresponsive(user_id, self.connected, time.time()))

    def _media_arrived(self, user_id: str, kind: str) -> None:
        call = self._state.call
        if call is None or kind not in ("audio", "video"):
            return
        media: MediaKind = "video" if kind == "video" else "audio"

        async def infer_after_grace(call_id: str) -> None:
            # A client that reports its media_state has done so by then; one that never
            # does is shown as available from what it sends (docs/protocol.md).
            await asyncio.sleep(MEDIA_STATE_GRACE)
            self._apply(self._state.media_flowing(call_id, user_id, media))

        self._tasks.spawn(infer_after_grace(call.call_id), name=f"{kind} state of {user_id}")

    def _device_failed(self, error: DeviceError) -> None:
        self._notify(Error(error.code, error.message))

    def _watch_devices(self) -> None:
        probe = self._local.devices.probe
        if probe is None or self._watcher is not None:
            return
        self._watcher = DeviceWatcher(probe, self._devices_changed, self._device_watch_interval)
        self._tasks.spawn(self._watcher.run(), name="device watcher")

    def _devices_changed(self, listing: DeviceList) -> None:
        devices = self._local.devices
        camera = devices.cameras.get(self._local.camera) if self._local.camera else None
        speaker = devices.speakers.get(self._local.playback)
        self._apply(self._state.devices_updated(
            listing.microphones, listing.cameras,
            devices.microphone.device_id if devices.microphone is not None else "",
            camera.device_id if camera is not None else "",
            listing.speakers,
            speaker.device_id if speaker is not None else "",
        ))

    # ------------------------------------------------------------------ effects

    def _apply(self, effects: list[Effect]) -> None:
        """Carry out the call core's effects, in order."""
        for effect in effects:
            match effect:
                case Notify():
                    self._notify(effect.notification)
                case ConnectPeer():
                    call, local_id = self._state.call, self._state.user_id
                    if call is not None and local_id is not None:
                        self._media.connect(call.call_id, local_id, effect.user_id)
                case DisconnectPeer():
                    self._media.disconnect(effect.user_id)
                case ApplyRelay():
                    self._media.apply_relay(effect.relay)
                case UseSfu():
                    self._media.use_sfu(effect.room)
                case StartCallMedia():
                    call, local_id = self._state.call, self._state.user_id
                    if call is not None and local_id is not None:
                        self._media.start(call.call_id, local_id)
                case EndCallMedia():
                    self._media.end()
                case CloseCameraForAudio():
                    if self._local.camera is not None:
                        self._tasks.spawn(self._local.close_camera(), name="close camera")
                case RemoteAudioMuted():
                    self._media.audio_muted(effect.user_id)
                case RemoteUplinkReported():
                    self._media.uplink_reported(effect.user_id, effect.quality)
                case EndSession():
                    signaling, self._signaling = self._signaling, None
                    if signaling is not None:
                        self._tasks.spawn(signaling.close(), name="close signaling")

    def _notify(self, notification: Notification) -> None:
        for observer in list(self._observers):
            try:
                notification.deliver(observer)
            except Exception:
                logger.exception("observer %r raised in %s", observer, notification.callback)

