"""A headless call participant: virtual or file-backed devices, auto-accept, recording.

:class:`Bot` is the program behind ``callclient bot`` and a programmatic API too::

    bot = Bot(BotConfig("bob", server.url, auto_accept=True, record=Path("rec")))
    await bot.run(stop_event)        # or: await bot.start(); ...; await bot.close()

It logs in, answers invitations (``auto_accept``) and/or calls ``call`` users, records every
remote user (``record``: MP4 + WAV per user, see :mod:`callclient.apps.recorder`) and emits one
record per observer callback (:func:`~callclient.apps.events.event_record`) to ``emit``,
``bot_ready`` (the server URL it logged in to and the microphone processing that runs, e.g.
``"AEC NS"`` or ``"off"``) once logged in, and ``bot_media_path`` when the candidate pair of a
remote user's media is known or changes; a record naming users whose nickname the engine knows
also has ``"names": {user: nickname}``. It stops when ``stop`` is set, after ``seconds``, or,
when it placed a call and does not auto-accept, once that call is over; stopping hangs up,
finalizes the recordings and closes the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callclient.apps.events import CallbackObserver, event_record
from callclient.apps.recorder import Recorder, RecordingInfo
from callclient.engine import CallEngine
from callclient.errors import CallError
from callclient.media.deviceset import DeviceSet
from callclient.media.filesource import FileVideoSource, media_streams
from callclient.media.processing import AudioProcessing
from callclient.media.virtual import AudioFile, Program, Silence, Tone
from callclient.types import (
    CallMediaType,
    Camera,
    MediaPath,
    Resolution,
    VideoEncoderParams,
    resolution_size,
)
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.usersig import generate_user_sig

__all__ = ["Bot", "BotConfig", "EventSink"]

logger = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
"""Receives each log record (see :func:`~callclient.apps.events.event_record`)."""

_HANGUP_TIMEOUT = 3.0
_PATH_INTERVAL = 0.5
"""Seconds between looks at the candidate pairs, for ``bot_media_path`` records."""


@dataclass(frozen=True)
class BotConfig:
    """What a bot does; the fields mirror ``callclient bot``'s options."""

    user_id: str
    server_url: str | Sequence[str]
    """The signaling server's URL, or several (a cluster's nodes, tried in turn)."""
    sdk_app_id: int = DEV_SDK_APP_ID
    secret_key: str = DEV_SECRET_KEY
    user_sig: str | None = None
    """Given userSig; without it one is made from ``secret_key``."""
    auto_accept: bool = False
    call: tuple[str, ...] = ()
    """Users to call at start (a group call when several)."""
    media: CallMediaType = CallMediaType.VIDEO
    play: Path | None = None
    """Media file to send: its audio as the microphone, its video (if any) as the camera."""
    record: Path | None = None
    """Directory of the recordings of each remote user."""
    seconds: float | None = None
    """Stop this long after login."""
    resolution: Resolution = Resolution.RESOLUTION_640_360
    fps: float = 30.0
    tone_hz: float = 440.0
    """Tone of the virtual microphone when nothing is played."""
    audio_processing: AudioProcessing | None = None
    """Microphone processing; None: the engine's default (off: the bot's devices are virtual)."""
    nickname: str = ""
    """The bot's nickname, shown to the users it calls or answers."""


def build_devices(config: BotConfig) -> DeviceSet:
    """The bot's devices: virtual ones, with the microphone/camera from ``play`` if given."""
    width, height = resolution_size(config.resolution)
    program: Program = Tone(config.tone_hz, 0.3)
    has_video = False
    if config.play is not None:
        has_audio, has_video = media_streams(config.play)
        program = AudioFile(config.play, loop=True) if has_audio else Silence()
    devices = DeviceSet.virtual(
        config.user_id, width=width, height=height, fps=config.fps, program=program
    )
    if config.play is not None and has_video:
        devices.cameras[Camera.FRONT] = FileVideoSource(config.play)
    return devices


class Bot:
    """A logged-in engine that answers and/or places calls and records what it receives."""

    def __init__(self, config: BotConfig, emit: EventSink | None = None) -> None:
        self.config = config
        self._emit = emit
        self.engine = CallEngine(config.server_url, devices=build_devices(config),
                                 audio_processing=config.audio_processing)
        self.engine.set_video_encoder_params(VideoEncoderParams(resolution=config.resolution))
        self.recorder = (
            Recorder(config.record, on_finished=self._recorded)
            if config.record is not None else None
        )
        self.done = asyncio.Event()
        """Set when the bot has nothing more to do (its call is over, or it was stopped)."""
        self.exit_code = 0
        self.events: list[dict[str, Any]] = []
        """Every record emitted, in order."""
        self._observer = CallbackObserver(self._on_callback)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._placed_call = False
        self._call_over = asyncio.Event()
        self._closed = False
        self._paths: dict[str, MediaPath] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Log in, start recording, place the configured call. Raises :class:`CallError`."""
        config = self.config
        user_sig = config.user_sig or generate_user_sig(
            config.sdk_app_id, config.secret_key, config.user_id
        )
        self.engine.add_observer(self._observer)
        if self.recorder is not None:
            self.recorder.attach(self.engine)
        await self.engine.login(config.sdk_app_id, config.user_id, user_sig,
                                nickname=config.nickname)
        self.emit("bot_ready", self.engine.server_url, self.engine.audio_processing.label())
        self._spawn(self._watch_paths())
        if config.call:
            self._placed_call = True
            try:
                await self._open_devices(config.media)
                await self.engine.calls(list(config.call), config.media)
            except CallError as exc:
                self.emit("bot_error", int(exc.code), exc.message)
                if not config.auto_accept:
                    self.exit_code = 1
                    self.done.set()

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Start, wait for ``stop``, ``seconds`` or :attr:`done`, then close; the exit code."""
        try:
            try:
                await self.start()
            except CallError as exc:
                self.exit_code = 1
                self.emit("bot_error", int(exc.code), exc.message)
                raise
            waits = [asyncio.ensure_future(self.done.wait())]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, timeout=self.config.seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
        finally:
            await self.close()
        return self.exit_code

    async def close(self) -> list[RecordingInfo]:
        """Hang up, finalize the recordings, close the engine. Idempotent."""
        if self._closed:
            return self.recorder.finished if self.recorder is not None else []
        self._closed = True
        self.done.set()
        if self.engine.current_call is not None and self.engine.logged_in:
            with contextlib.suppress(CallError, TimeoutError):
                async with asyncio.timeout(_HANGUP_TIMEOUT):
                    await self.engine.hangup()
                    await self._call_over.wait()  # on_call_end / on_call_cancelled logged
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        infos: list[RecordingInfo] = []
        if self.recorder is not None:
            infos = await self.recorder.close()
        await self.engine.close()
        self.emit("bot_exit", self.exit_code)
        return infos

    # ------------------------------------------------------------------ events

    def emit(self, event: str, *args: Any) -> None:
        """Emit one record as this bot's user."""
        record = event_record(self.config.user_id, event, args)
        names = self._nicknames(args)
        if names:
            record["names"] = names
        self.events.append(record)
        if self._emit is not None:
            try:
                self._emit(record)
            except Exception:
                logger.exception("event sink failed")

    def _nicknames(self, args: tuple[Any, ...]) -> dict[str, str]:
        """The nicknames the engine knows of the user ids among ``args`` (and in lists)."""
        names: dict[str, str] = {}
        for arg in args:
            for item in arg if isinstance(arg, list | dict) else (arg,):
                if isinstance(item, str) and item not in names:
                    info = self.engine.user_info(item)
                    if info is not None and info.nickname:
                        names[item] = info.nickname
        return names

    def _on_callback(self, name: str, args: tuple[Any, ...]) -> None:
        self.emit(name, *args)
        if name in ("on_call_received", "on_call_begin"):
            self._call_over.clear()
        elif name in ("on_call_end", "on_call_cancelled"):
            self._call_over.set()
        if name == "on_call_received" and self.config.auto_accept:
            media = args[3] if len(args) > 3 else self.config.media
            self._spawn(self._accept(CallMediaType(media)))
        elif name in ("on_call_end", "on_call_cancelled"):
            if self._placed_call and not self.config.auto_accept:
                self.done.set()
        elif name in ("on_kicked_offline", "on_user_sig_expired"):
            self.exit_code = 1
            self.done.set()

    async def _watch_paths(self) -> None:
        """Emit ``bot_media_path USER LOCAL REMOTE TRANSPORT`` whenever the candidate pair a
        remote user's media flows on is first known or changes (host/srflx/prflx/relay)."""
        while True:
            await asyncio.sleep(_PATH_INTERVAL)
            for user_id, stats in self.engine.remote_stats.items():
                path = stats.path
                if path is not None and self._paths.get(user_id) != path:
                    self._paths[user_id] = path
                    logger.info("media with %s: %s", user_id, path.describe())
                    self.emit("bot_media_path", user_id, path.local, path.remote, path.transport)

    def _recorded(self, info: RecordingInfo) -> None:
        self.emit("bot_recording", info.to_dict())

    async def _accept(self, media: CallMediaType) -> None:
        try:
            await self._open_devices(media)
            await self.engine.accept()
        except CallError as exc:
            self.emit("bot_error", int(exc.code), exc.message)

    async def _open_devices(self, media: CallMediaType) -> None:
        if media is CallMediaType.VIDEO and self.config.media is CallMediaType.VIDEO:
            await self.engine.open_camera(Camera.FRONT)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

