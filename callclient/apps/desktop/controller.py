"""The app's logic on the event loop: engine callbacks and key commands in, window state out.

:class:`DesktopApp` observes a call engine (anything :class:`EngineLike`), runs the
:class:`~callclient.apps.desktop.keys.Command` of each key against it (accept, reject, hang
up, dial, microphone, camera, routes, tiles), plays the ringtone and the ringback, and after
every change publishes an immutable :class:`~callclient.apps.desktop.state.AppState` for the
window to draw. Tiles show users' nicknames (the engine's user info cache); with a group id
the app asks every ``group_poll_s`` seconds, while idle, whether the group has a call in
progress and offers ``j`` to join it; device list changes are shown and listed in the help.

The call phase is never kept here: :attr:`DesktopApp.phase` is
:func:`~callclient.apps.desktop.phase.phase_of` the engine's current call, which the engine
updates before it fires the callback that reports the change; so are the call's media type,
caller and start time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from callclient.apps.desktop.keys import Command, KeyBindings
from callclient.apps.desktop.phase import CallLike, Phase, phase_of
from callclient.apps.desktop.state import AppState, TileState, TileView, duration_text
from callclient.assets import RINGBACK, RINGTONE, asset_path
from callclient.errors import CallError, PermissionDeniedError
from callclient.media.base import AudioSink, VideoView
from callclient.media.deviceset import DeviceSet
from callclient.media.encoding import LocalVideoStats
from callclient.media.processing import AudioProcessing
from callclient.media.remote import RemoteStats
from callclient.media.tones import SharedSink, TonePlayer
from callclient.observer import CallObserver
from callclient.types import (
    AudioDeviceInfo,
    AudioPlaybackDevice,
    CallMediaType,
    CallParams,
    CallRole,
    Camera,
    CameraInfo,
    DeviceList,
    FillMode,
    GroupCallInfo,
    NetworkQuality,
    NetworkQualityInfo,
    RoomId,
    Rotation,
    UserInfo,
    VideoRenderParams,
)

__all__ = ["AppConfig", "DesktopApp", "EngineLike", "receiving_text", "sending_text"]

logger = logging.getLogger(__name__)

_HANGUP_TIMEOUT = 3.0


def sending_text(stats: LocalVideoStats | None) -> str:
    """The local tile's line about the video sent: size, fps, bitrate and why it is lower."""
    if stats is None or not stats.sending.width:
        return ""
    s = stats.sending
    text = f"sending {s.width}x{s.height} {s.fps:.0f} fps {s.bitrate // 1000} kbit/s"
    return text if s.reason == "none" else f"{text} ({s.reason} limited)"


def receiving_text(stats: RemoteStats | None) -> str:
    """A remote tile's line about the video received: size and frame rate."""
    if stats is None or not stats.video_width:
        return ""
    return f"{stats.video_width}x{stats.video_height} {stats.video_fps:.0f} fps"


class EngineLike(Protocol):
    """The part of :class:`~callclient.engine.CallEngine` the app uses (fakes implement it)."""

    @property
    def devices(self) -> DeviceSet: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def current_call(self) -> CallLike | None: ...

    @property
    def audio_processing(self) -> AudioProcessing: ...

    @property
    def local_video_stats(self) -> LocalVideoStats | None: ...

    @property
    def remote_stats(self) -> Mapping[str, RemoteStats]: ...

    def set_audio_processing(
        self,
        processing: AudioProcessing | None = None,
        *,
        echo_cancellation: bool | None = None,
        noise_suppression: bool | None = None,
        auto_gain: bool | None = None,
        high_pass_filter: bool | None = None,
    ) -> AudioProcessing: ...

    def add_observer(self, observer: CallObserver) -> None: ...

    def remove_observer(self, observer: CallObserver) -> None: ...

    async def calls(
        self,
        user_ids: list[str],
        media_type: CallMediaType,
        params: CallParams | None = None,
        *,
        group_id: str = "",
    ) -> str: ...

    async def accept(self) -> None: ...

    async def reject(self) -> None: ...

    async def hangup(self) -> None: ...

    async def open_camera(
        self, camera: Camera = Camera.FRONT, view: VideoView | None = None
    ) -> None: ...

    async def close_camera(self) -> None: ...

    async def switch_camera(self, camera: Camera) -> None: ...

    async def open_microphone(self) -> None: ...

    async def close_microphone(self) -> None: ...

    async def select_audio_playback_device(self, device: AudioPlaybackDevice) -> None: ...

    def start_remote_view(self, user_id: str, view: VideoView) -> None: ...

    def stop_remote_view(self, user_id: str) -> None: ...

    def set_video_render_params(self, user_id: str, params: VideoRenderParams) -> None: ...

    async def switch_call_media_type(self, media_type: CallMediaType) -> None: ...

    def user_info(self, user_id: str) -> UserInfo | None: ...

    async def group_call_in_progress(self, group_id: str) -> GroupCallInfo | None: ...

    async def join_in_group_call(
        self, room_id: RoomId, group_id: str, media_type: CallMediaType
    ) -> str: ...


@dataclass(frozen=True)
class AppConfig:
    """What the app does; the fields mirror the command line."""

    user_id: str
    call: tuple[str, ...] = ()
    """Users to call at start and with ``d`` (one: a 1v1 call, several: a group call)."""
    media_type: CallMediaType = CallMediaType.VIDEO
    window: tuple[int, int] = (1280, 720)
    ringtone: Path = field(default_factory=lambda: asset_path(RINGTONE))
    ringback: Path = field(default_factory=lambda: asset_path(RINGBACK))
    mute_ringtone: bool = False
    """Mute mode: an incoming call does not ring (the ringback still plays)."""
    title: str = ""
    """The window title (default ``callclient - USER``)."""
    audio_processing: AudioProcessing | None = None
    """Microphone processing; None: the engine's default (on for real devices)."""
    group_id: str = ""
    """The group whose calls ``d`` places and ``j`` joins ("" : none)."""
    group_poll_s: float = 2.0
    """How often an idle app asks whether the group has a call in progress."""

    @property
    def window_name(self) -> str:
        """The window's title."""
        return self.title or f"callclient - {self.user_id}"


class _NullSink(AudioSink):
    """Where tones go when the route has no output: nowhere."""

    name = "no output"

    async def start(self, pull: Callable[[], npt.NDArray[np.int16]]) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""


@dataclass
class _Remote:
    """A remote user's tile while the call lasts."""

    user_id: str
    view: TileView
    status: str
    since: float | None = None
    video: bool = True
    audio: bool = True


@dataclass
class _Model:
    """What the app itself decides; the call's phase, media and caller are the engine's."""

    remotes: dict[str, _Remote] = field(default_factory=dict)
    volumes: dict[str, int] = field(default_factory=dict)
    quality: dict[str, NetworkQuality] = field(default_factory=dict)
    params: dict[str, VideoRenderParams] = field(default_factory=dict)
    selected: str | None = None
    mic_on: bool = True
    camera_on: bool = False
    camera_wanted: bool = True
    """The user did not turn the camera off: video calls open it."""
    camera: Camera = Camera.FRONT
    route: AudioPlaybackDevice = AudioPlaybackDevice.SPEAKERPHONE
    show_help: bool = False
    message: str = ""
    group_call: GroupCallInfo | None = None
    """The group's call in progress, as last asked (None: none, or in a call)."""
    devices: DeviceList | None = None
    """The device list as the engine last reported a change of it."""


_LOCAL_STATUS = {Phase.IDLE: "preview", Phase.CALLING: "calling", Phase.INCOMING: "ringing"}
"""The local tile's caption per phase (else the phase's name)."""


class DesktopApp(CallObserver):
    """The app's logic on the event loop: engine callbacks in, :class:`AppState` out, keys in.

    ``await start()`` (opens the camera preview, places the configured call), then
    :meth:`press` key codes (from any thread via ``loop.call_soon_threadsafe``), :meth:`quit`
    or :meth:`wait_quit`; ``await close()`` hangs up and releases everything (idempotent).
    :attr:`state` is the latest window state, safe to read on any thread.
    """

    def __init__(
        self, engine: EngineLike, config: AppConfig, bindings: KeyBindings | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.bindings = bindings or KeyBindings()
        self.local_view = TileView()
        self._model = _Model()
        self._dialing = False
        """A ``calls`` request is on its way (the engine has no call for it yet)."""
        self._state = AppState(size=config.window, help_lines=self.bindings.help_lines())
        self._keys: asyncio.Queue[int] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._group_watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._quit = asyncio.Event()
        self._closed = False
        self._started = False
        for route, sink in list(engine.devices.speakers.items()):
            if not isinstance(sink, SharedSink):
                engine.devices.speakers[route] = SharedSink(sink)
        self.tones = TonePlayer(self._tone_sink())
        self.actions: dict[Command, Callable[[], Awaitable[None]]] = {
            Command.ACCEPT: self.accept,
            Command.REJECT: self.reject,
            Command.HANGUP: self.hangup,
            Command.DIAL: self.dial,
            Command.JOIN: self.join_group_call,
            Command.MICROPHONE: self.toggle_microphone,
            Command.NOISE_SUPPRESSION: self.toggle_noise_suppression,
            Command.CAMERA: self.toggle_camera,
            Command.SWITCH_CAMERA: self.switch_camera,
            Command.ROUTE: self.toggle_route,
            Command.FILL_MODE: self.toggle_fill_mode,
            Command.ROTATE: self.rotate,
            Command.SELECT: self.select_next,
            Command.MEDIA_TYPE: self.toggle_media_type,
            Command.HELP: self.toggle_help,
            Command.QUIT: self.request_quit,
        }
        self._publish()

    # -------------------------------------------------------------- outside world

    @property
    def user_id(self) -> str:
        """The local user."""
        return self.engine.user_id or self.config.user_id

    @property
    def state(self) -> AppState:
        """The latest state (immutable; its ``now`` is when it was built)."""
        return self._state

    @property
    def phase(self) -> Phase:
        """The call's phase, from the engine's current call."""
        return phase_of(self.engine.current_call, dialing=self._dialing)

    @property
    def quit_requested(self) -> bool:
        """Whether quitting was asked for (key, window closed, :meth:`quit`)."""
        return self._quit.is_set()

    def set_message(self, message: str) -> None:
        """Show ``message`` in the status bar."""
        self._model.message = message
        self._publish()

    async def start(self) -> None:
        """Register with the engine, open the camera preview and place the configured call."""
        if self._started:
            return
        self._started = True
        self.engine.add_observer(self)
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._run_keys(), name="app keys")
        if self.config.group_id:
            self._group_watch = loop.create_task(self._watch_group(), name="app group watch")
        if self.config.media_type is CallMediaType.VIDEO:
            await self._open_camera()
        if self.config.call:
            await self.dial()
        self._publish()

    def press(self, code: int) -> None:
        """Handle a key code (on the loop; commands run in order, quit at once)."""
        binding = self.bindings.lookup(code)
        if binding is None:
            return
        if binding.command is Command.QUIT:
            self.quit()
        else:
            self._keys.put_nowait(code)

    async def handle_key(self, code: int) -> None:
        """Run the command bound to a key code now (unbound keys do nothing)."""
        binding = self.bindings.lookup(code)
        if binding is not None:
            await self.perform(binding.command)

    async def perform(self, command: Command) -> None:
        """Run one command; a refused engine call becomes a status message."""
        try:
            await self.actions[command]()
        except CallError as exc:
            logger.info("%s: %s", command, exc)
            self._model.message = f"{command}: {exc}"
        if self.phase is Phase.IDLE and self._model.remotes:
            # The engine forgot the call without a callback (it hung up a call the server
            # no longer knew): its tiles go too.
            self._end_call()
        self._publish()

    def quit(self) -> None:
        """Ask the app to hang up and exit (the window was closed or ``q`` pressed)."""
        self._quit.set()

    async def wait_quit(self) -> None:
        """Wait until quitting was asked for."""
        await self._quit.wait()

    async def close(self) -> None:
        """Hang up a call, stop the tones and the key worker, leave the engine. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._quit.set()
        for task in (self._worker, self._group_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._tasks:  # tone and device changes in flight: let them finish, briefly
            await asyncio.wait(list(self._tasks), timeout=_HANGUP_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        phase = self.phase
        if phase is not Phase.IDLE:
            try:
                async with asyncio.timeout(_HANGUP_TIMEOUT):
                    if phase is Phase.INCOMING:
                        await self.engine.reject()
                    else:
                        await self.engine.hangup()
            except (CallError, TimeoutError) as exc:
                logger.info("hangup on close: %s", exc)
        await self.tones.stop()
        self.engine.remove_observer(self)
        for user_id in list(self._model.remotes):
            self.engine.stop_remote_view(user_id)

    # -------------------------------------------------------------- commands

    async def accept(self) -> None:
        """Accept the incoming call."""
        if self.phase is not Phase.INCOMING:
            self._model.message = "no incoming call to accept"
            return
        await self.tones.stop()
        await self._camera_for_call()
        await self.engine.accept()

    async def reject(self) -> None:
        """Reject the incoming call."""
        if self.phase is not Phase.INCOMING:
            self._model.message = "no incoming call to reject"
            return
        await self.tones.stop()
        await self.engine.reject()

    async def hangup(self) -> None:
        """Hang up the call (or cancel it while it rings)."""
        if self.phase is Phase.IDLE:
            self._model.message = "no call to hang up"
            return
        await self.tones.stop()
        await self.engine.hangup()

    async def dial(self) -> None:
        """Call the configured users (a group call when there are several)."""
        targets = list(self.config.call)
        if not targets:
            self._model.message = "nobody to call: start with --call or --group"
            return
        if self.phase is not Phase.IDLE:
            self._model.message = "already in a call"
            return
        self._dialing = True
        try:
            for user_id in targets:
                self._add_remote(user_id, "ringing")
            self._publish()
            self._play(self.config.ringback)
            await self._camera_for_call()
            await self.engine.calls(targets, self.config.media_type,
                                    group_id=self.config.group_id)
        except CallError:
            self._dialing = False
            if self.phase is Phase.IDLE:
                self._end_call()
            await self.tones.stop()
            raise
        finally:
            self._dialing = False

    async def join_group_call(self) -> None:
        """Join the call the configured group has in progress."""
        group_call = self._model.group_call
        if not self.config.group_id:
            self._model.message = "no group: start with --group-id"
            return
        if self.phase is not Phase.IDLE:
            self._model.message = "already in a call"
            return
        if group_call is None:
            self._model.message = f"group {self.config.group_id} has no call in progress"
            return
        self._model.group_call = None
        if group_call.media_type is CallMediaType.VIDEO:
            await self._camera_for_call()
        await self.engine.join_in_group_call(group_call.room_id, self.config.group_id,
                                             group_call.media_type)

    async def toggle_microphone(self) -> None:
        """Microphone off/on; between calls it says whether the next call starts muted."""
        model = self._model
        if self.phase is not Phase.CONNECTED:
            model.mic_on = not model.mic_on
        elif model.mic_on:
            await self.engine.close_microphone()
            model.mic_on = False
        else:
            await self.engine.open_microphone()
            model.mic_on = True

    async def toggle_noise_suppression(self) -> None:
        """Noise suppression off/on (the microphone's other processing stays as it is)."""
        on = not self.engine.audio_processing.noise_suppression
        self.engine.set_audio_processing(noise_suppression=on)
        self._model.message = f"noise suppression {'on' if on else 'off'}"

    async def toggle_camera(self) -> None:
        """Camera off/on (the preview follows); off also keeps it off for the next call."""
        model = self._model
        if model.camera_on:
            model.camera_on = False
            model.camera_wanted = False
            await self.engine.close_camera()
            self.local_view.clear()
        else:
            model.camera_wanted = True
            await self._open_camera()

    async def switch_camera(self) -> None:
        """Front/back camera."""
        model = self._model
        other = Camera.BACK if model.camera is Camera.FRONT else Camera.FRONT
        if model.camera_on:
            await self.engine.switch_camera(other)
        model.camera = other

    async def toggle_route(self) -> None:
        """Speakerphone/earpiece; a ringing tone moves along."""
        model = self._model
        other = (
            AudioPlaybackDevice.EARPIECE
            if model.route is AudioPlaybackDevice.SPEAKERPHONE
            else AudioPlaybackDevice.SPEAKERPHONE
        )
        await self.engine.select_audio_playback_device(other)
        model.route = other
        await self.tones.set_sink(self._tone_sink())

    async def toggle_fill_mode(self) -> None:
        """Fill/fit for the selected tile."""
        user_id = self._selected_user()
        params = self._params(user_id)
        mode = FillMode.FIT if params.fill_mode is FillMode.FILL else FillMode.FILL
        self._set_params(user_id, VideoRenderParams(mode, params.rotation))

    async def rotate(self) -> None:
        """Rotate the selected tile by 90 degrees clockwise."""
        user_id = self._selected_user()
        params = self._params(user_id)
        self._set_params(
            user_id, VideoRenderParams(params.fill_mode, Rotation((params.rotation + 1) % 4))
        )

    async def select_next(self) -> None:
        """Select the next tile (for fill/fit and rotation)."""
        users = self._tile_users()
        current = self._selected_user()
        self._model.selected = users[(users.index(current) + 1) % len(users)]

    async def toggle_media_type(self) -> None:
        """Switch the connected call between audio and video."""
        if self.phase is not Phase.CONNECTED:
            self._model.message = "no connected call to switch"
            return
        media = self._media()
        new = CallMediaType.AUDIO if media is CallMediaType.VIDEO else CallMediaType.VIDEO
        await self.engine.switch_call_media_type(new)

    async def toggle_help(self) -> None:
        """Show/hide the key table."""
        self._model.show_help = not self._model.show_help

    async def request_quit(self) -> None:
        """Quit (as a command)."""
        self.quit()

    # -------------------------------------------------------------- callbacks

    def on_error(self, code: int, message: str) -> None:
        """Show engine errors."""
        self.set_message(f"error {code}: {message}")

    def on_call_received(
        self,
        caller_id: str,
        callee_id_list: list[str],
        group_id: str,
        call_media_type: CallMediaType,
    ) -> None:
        """Ring and show the caller."""
        self._add_remote(caller_id, "incoming")
        for user_id in callee_id_list:
            if user_id != self.user_id:
                self._add_remote(user_id, "ringing")
        if not self.config.mute_ringtone:
            self._play(self.config.ringtone)
        self._publish()

    def on_call_cancelled(self, user_id: str) -> None:
        """The call ended before it connected."""
        self._stop_tones()
        self._end_call()
        self.set_message("call cancelled" if user_id == self.user_id
                         else f"call from {user_id} cancelled")

    def on_call_begin(
        self, room_id: RoomId, call_media_type: CallMediaType, call_role: CallRole
    ) -> None:
        """The call connected: tones stop (the engine takes the output over)."""
        self._stop_tones()
        model = self._model
        call = self.engine.current_call
        if call_role is CallRole.CALLED and call is not None and call.caller in model.remotes:
            model.remotes[call.caller].status = "connecting"
        if CallMediaType(call_media_type) is CallMediaType.AUDIO and model.camera_on:
            self._spawn(self._close_camera_quietly())
        if not model.mic_on:
            self._spawn(self.engine.close_microphone())  # before the engine opens it
        model.message = ""
        self._publish()

    def on_call_end(
        self,
        room_id: RoomId,
        call_media_type: CallMediaType,
        call_role: CallRole,
        total_time: float,
    ) -> None:
        """The call ended."""
        self._stop_tones()
        self._end_call()
        self.set_message(f"call ended after {duration_text(total_time)}")

    def on_call_media_type_changed(
        self, old_call_media_type: CallMediaType, new_call_media_type: CallMediaType
    ) -> None:
        """Audio <-> video: the camera follows."""
        model = self._model
        media = CallMediaType(new_call_media_type)
        if media is CallMediaType.VIDEO and not model.camera_on:
            self._spawn(self._open_camera())
        elif media is CallMediaType.AUDIO:
            model.camera_on = False  # the engine closes the camera
            self.local_view.clear()
        self.set_message(f"switched to {media.name.lower()}")

    def on_user_reject(self, user_id: str) -> None:
        """A callee rejected."""
        self._drop_remote(user_id)
        self.set_message(f"{user_id} rejected the call")

    def on_user_no_response(self, user_id: str) -> None:
        """A callee did not answer."""
        self._drop_remote(user_id)
        self.set_message(f"{user_id} did not answer")

    def on_user_line_busy(self, user_id: str) -> None:
        """A callee was busy."""
        self._drop_remote(user_id)
        self.set_message(f"{user_id} is busy")

    def on_user_join(self, user_id: str) -> None:
        """A user joined: its tile is connected and its timer starts."""
        remote = self._add_remote(user_id, "connected")
        remote.status = "connected"
        remote.since = time.time()
        self._publish()

    def on_user_leave(self, user_id: str) -> None:
        """A user left: its tile goes."""
        self._drop_remote(user_id)
        self.set_message(f"{user_id} left")

    def on_user_video_available(self, user_id: str, is_video_available: bool) -> None:
        """A remote camera turned on or off."""
        remote = self._model.remotes.get(user_id)
        if remote is not None:
            remote.video = is_video_available
            if not is_video_available:
                remote.view.clear()
            self._publish()

    def on_user_audio_available(self, user_id: str, is_audio_available: bool) -> None:
        """A remote microphone turned on or off."""
        remote = self._model.remotes.get(user_id)
        if remote is not None:
            remote.audio = is_audio_available
            self._publish()

    def on_user_voice_volume_changed(self, volume_map: dict[str, int]) -> None:
        """Volume meters."""
        self._model.volumes = dict(volume_map)
        self._publish()

    def on_user_network_quality_changed(
        self, network_quality_list: list[NetworkQualityInfo]
    ) -> None:
        """Quality bars."""
        for info in network_quality_list:
            self._model.quality[info.user_id] = NetworkQuality(info.quality)
        self._publish()

    def on_kicked_offline(self) -> None:
        """Logged in elsewhere."""
        self._stop_tones()
        self._end_call()
        self.set_message("logged out: this user logged in elsewhere")

    def on_user_sig_expired(self) -> None:
        """The userSig expired."""
        self._stop_tones()
        self._end_call()
        self.set_message("logged out: the userSig expired")

    def on_user_info_changed(self, user_id: str, nickname: str, avatar: str) -> None:
        """A nickname changed: the tiles show it."""
        self._publish()

    def on_devices_updated(
        self,
        microphone_list: list[AudioDeviceInfo],
        camera_list: list[CameraInfo],
        current_microphone_id: str,
        current_camera_id: str,
        speaker_list: list[AudioDeviceInfo],
        current_speaker_id: str,
    ) -> None:
        """A device was plugged in or removed: the help lists the devices present now."""
        self._model.devices = DeviceList(list(camera_list), list(microphone_list),
                                         list(speaker_list))
        self.set_message(
            f"devices changed: {len(camera_list)} camera(s), {len(microphone_list)} "
            f"microphone(s), {len(speaker_list)} speaker(s)"
        )

    # -------------------------------------------------------------- internals

    def _media(self) -> CallMediaType:
        """The call's media type, or the configured one between calls."""
        call = self.engine.current_call
        return CallMediaType(call.media_type) if call is not None else self.config.media_type

    def _tone_sink(self) -> AudioSink:
        sink = self.engine.devices.speakers.get(self._model.route)
        return sink.tone if isinstance(sink, SharedSink) else _NullSink()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, CallError):
            self.set_message(str(exc))
        elif exc is not None:
            logger.error("app task failed", exc_info=exc)

    def _play(self, path: Path) -> None:
        self._spawn(self.tones.start(path))

    def _stop_tones(self) -> None:
        self._spawn(self.tones.stop())

    async def _camera_for_call(self) -> None:
        model = self._model
        if (self._media() is CallMediaType.VIDEO and model.camera_wanted
                and not model.camera_on):
            await self._open_camera()

    async def _open_camera(self) -> None:
        model = self._model
        await self.engine.open_camera(model.camera, self.local_view)
        model.camera_on = True

    async def _close_camera_quietly(self) -> None:
        self._model.camera_on = False
        await self.engine.close_camera()
        self.local_view.clear()

    async def _run_keys(self) -> None:
        while True:
            await self.handle_key(await self._keys.get())

    async def _watch_group(self) -> None:
        """While idle, ask now and then whether the group has a call to join."""
        group_id = self.config.group_id
        # Python 3.11's wait_for (inside the engine's request) can swallow a cancellation
        # that races its result: the loop also stops on its own once the app is closed.
        while not self._closed:
            found: GroupCallInfo | None = None
            if self.phase is Phase.IDLE:
                try:
                    found = await self.engine.group_call_in_progress(group_id)
                except PermissionDeniedError as exc:
                    self.set_message(f"group {group_id}: {exc.message}")
                    return
                except CallError as exc:  # not logged in yet, reconnecting: ask again later
                    logger.debug("group call of %s: %s", group_id, exc)
            if found != self._model.group_call:
                self._model.group_call = found
                self._publish()
            await asyncio.sleep(self.config.group_poll_s)

    def _name(self, user_id: str) -> str:
        """What a tile calls a user: the nickname when the engine knows one."""
        info = self.engine.user_info(user_id)
        return info.display_name if info is not None else user_id

    def _add_remote(self, user_id: str, status: str) -> _Remote:
        remote = self._model.remotes.get(user_id)
        if remote is None:
            remote = _Remote(user_id, TileView(), status)
            self._model.remotes[user_id] = remote
            self.engine.start_remote_view(user_id, remote.view)
        return remote

    def _drop_remote(self, user_id: str) -> None:
        if self._model.remotes.pop(user_id, None) is not None:
            self.engine.stop_remote_view(user_id)
        if self._model.selected == user_id:
            self._model.selected = None

    def _end_call(self) -> None:
        model = self._model
        for user_id in list(model.remotes):
            self._drop_remote(user_id)
        model.volumes.clear()
        model.quality.clear()
        # The engine closes the camera when a call ends; the next call reopens it.
        model.camera_on = False
        self.local_view.clear()
        self._publish()

    def _tile_users(self) -> list[str]:
        return [self.user_id, *self._model.remotes]

    def _selected_user(self) -> str:
        users = self._tile_users()
        selected = self._model.selected
        if selected in users:
            return selected
        return users[1] if len(users) > 1 else users[0]

    def _params(self, user_id: str) -> VideoRenderParams:
        return self._model.params.get(user_id, VideoRenderParams())

    def _set_params(self, user_id: str, params: VideoRenderParams) -> None:
        self._model.params[user_id] = params
        self.engine.set_video_render_params(user_id, params)

    def _publish(self) -> None:
        """Build the immutable state the GUI thread draws."""
        model = self._model
        call = self.engine.current_call
        phase = self.phase
        media = self._media()
        selected = self._selected_user()
        local = TileState(
            user_id=self.user_id,
            name=f"{self._name(self.user_id)} (me)",
            view=self.local_view,
            params=self._params(self.user_id),
            status=_LOCAL_STATUS.get(phase, phase.value),
            since=call.begin_time if call is not None else None,
            volume=model.volumes.get(self.user_id, 0),
            quality=model.quality.get(self.user_id, NetworkQuality.UNKNOWN),
            video=model.camera_on,
            audio=model.mic_on,
            selected=selected == self.user_id,
            video_info=sending_text(self.engine.local_video_stats) if model.camera_on else "",
        )
        received = self.engine.remote_stats
        tiles = [local]
        paths = {user: stats.path for user, stats in received.items()
                 if stats.path is not None}
        for remote in model.remotes.values():
            tiles.append(
                TileState(
                    user_id=remote.user_id,
                    name=self._name(remote.user_id),
                    view=remote.view,
                    params=self._params(remote.user_id),
                    status=remote.status,
                    since=remote.since,
                    volume=model.volumes.get(remote.user_id, 0),
                    quality=model.quality.get(remote.user_id, NetworkQuality.UNKNOWN),
                    video=remote.video and media is CallMediaType.VIDEO,
                    audio=remote.audio,
                    selected=selected == remote.user_id,
                    path=paths[remote.user_id].describe() if remote.user_id in paths else "",
                    video_info=receiving_text(received.get(remote.user_id)),
                )
            )
        self._state = AppState(
            size=self.config.window,
            tiles=tuple(tiles),
            banner=self._banner(phase, media, call),
            status=self._status_line(phase),
            show_help=model.show_help,
            help_lines=self.bindings.help_lines() + self._device_lines(),
            now=time.time(),
        )

    def _device_lines(self) -> tuple[str, ...]:
        devices = self._model.devices
        if devices is None:
            return ()
        return (
            "",
            "cameras: " + (", ".join(c.name for c in devices.cameras) or "none"),
            "microphones: " + (", ".join(m.name for m in devices.microphones) or "none"),
            "speakers: " + (", ".join(s.name for s in devices.speakers) or "none"),
        )

    def _banner(self, phase: Phase, media: CallMediaType, call: CallLike | None) -> str:
        kind = media.name.lower()
        if phase is Phase.INCOMING and call is not None:
            return (f"Incoming {kind} call from {self._name(call.caller)}   [a] accept   "
                    "[r] reject")
        group_call = self._model.group_call
        if phase is Phase.IDLE and group_call is not None:
            people = ", ".join(self._name(u) for u in group_call.user_ids)
            return f"Group {group_call.group_id} has a call with {people}   [j] join"
        if phase is Phase.CALLING:
            people = ", ".join(self._name(u) for u in self._model.remotes)
            return f"Calling {people} ...   [h] cancel"
        return ""

    def _status_line(self, phase: Phase) -> str:
        model = self._model
        camera = model.camera.name.lower() if model.camera_on else "off"
        parts = [
            self.user_id,
            phase.value,
            f"mic {'on' if model.mic_on else 'off'}",
            f"audio {self.engine.audio_processing.label()}",
            f"camera {camera}",
            model.route.name.lower(),
            "? help",
        ]
        if model.message:
            parts.append(model.message)
        return " | ".join(parts)
