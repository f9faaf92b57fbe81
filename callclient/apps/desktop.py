"""The desktop app: an OpenCV window with a tile per call participant, driven by keys.

``callclient app --user ID --server URL [--call ID | --group ID,ID] [--virtual]`` (or
``python -m callclient.apps.desktop``) logs in, previews the camera, places or answers calls
and draws a grid of tiles: the local preview and one per remote user, each with the user's
name, call state and timer, a volume meter and network-quality bars. Keys drive the engine
(``?`` shows them). Incoming calls ring (a ringtone through the selected output), the caller
hears a ringback until the call connects; closing the window hangs up and exits.

The UI logic is pure and testable: :func:`compose_frame` draws an :class:`AppState` into an
image, :class:`Layout` computes the grid, :class:`KeyBindings` maps keys to actions and
:class:`DesktopApp` turns engine callbacks into states and keys into engine calls.

Threading: OpenCV's highgui (Qt) is not thread-safe and ``waitKey(1)`` takes 2-3 ms, with
spikes of 25 ms, so it never runs on the event loop. :class:`Window` owns every highgui call
on one thread (the main thread, as Qt prefers); the asyncio loop with the engine and the
app runs in a worker thread. The GUI thread composes a frame from the app's latest immutable
:class:`AppState` and the tiles' :class:`TileView` (thread-safe, newest frame only) at 30 Hz
and hands key codes and the window's closing to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from callclient.assets import RINGBACK, RINGTONE, asset_path
from callclient.errors import CallError
from callclient.media.base import AudioSink, RenderedFrame, VideoView
from callclient.media.deviceset import DeviceSet
from callclient.media.render import render
from callclient.media.tones import SharedSink, TonePlayer
from callclient.observer import CallObserver
from callclient.types import (
    AudioPlaybackDevice,
    CallMediaType,
    CallParams,
    CallRole,
    Camera,
    FillMode,
    NetworkQuality,
    NetworkQualityInfo,
    RoomId,
    Rotation,
    VideoRenderParams,
)

__all__ = [
    "AppConfig",
    "AppState",
    "Binding",
    "DesktopApp",
    "EngineLike",
    "KeyBindings",
    "Layout",
    "TileState",
    "TileView",
    "Window",
    "compose_frame",
    "grid_shape",
    "main",
    "quality_bars",
    "run_app",
]

logger = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
Rect = tuple[int, int, int, int]
"""``(x, y, width, height)`` in window pixels."""

STATUS_HEIGHT = 24
"""Height of the status bar at the bottom of the window."""
GAP = 2
"""Pixels of background around each tile (so 2 * GAP between neighbours)."""
METER_WIDTH = 100
"""Width of a tile's volume meter: one pixel per volume step."""
METER_HEIGHT = 8
METER_MARGIN = 8
"""The meter's distance from a tile's right and bottom edges."""
BAR_WIDTH = 6
BAR_STEP = 9
BAR_MARGIN = 8
"""The quality bars sit BAR_MARGIN from a tile's top and right edges, 5 bars BAR_STEP apart."""
BARS_HEIGHT = 20

_BACKGROUND = (24, 24, 24)
_NO_VIDEO = (48, 48, 48)
_TEXT = (240, 240, 240)
_DIM = (150, 150, 150)
_LABEL_BG = (0, 0, 0)
_SELECTED = (0, 215, 255)
_METER_ON = (80, 200, 80)
_METER_OFF = (70, 70, 70)
_BANNER_BG = (110, 50, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_HANGUP_TIMEOUT = 3.0


# ---------------------------------------------------------------------------- layout


def grid_shape(count: int) -> tuple[int, int]:
    """``(columns, rows)`` of the grid for ``count`` tiles: 1x1, 2x1, 2x2, 3x2, 3x3, ..."""
    if count <= 1:
        return 1, 1
    cols = math.ceil(math.sqrt(count))
    return cols, math.ceil(count / cols)


@dataclass(frozen=True)
class Layout:
    """The tiles' rectangles for ``count`` tiles in a window of ``size`` (w, h).

    The grid fills the window above the status bar; each cell keeps :data:`GAP` pixels of
    background on every side.
    """

    size: tuple[int, int]
    count: int

    @property
    def grid(self) -> tuple[int, int]:
        """``(columns, rows)``."""
        return grid_shape(self.count)

    @property
    def rects(self) -> tuple[Rect, ...]:
        """One rectangle per tile, row by row."""
        width, height = self.size
        area = max(1, height - STATUS_HEIGHT)
        cols, rows = self.grid
        rects = []
        for index in range(self.count):
            col, row = index % cols, index // cols
            x0, x1 = col * width // cols, (col + 1) * width // cols
            y0, y1 = row * area // rows, (row + 1) * area // rows
            rects.append((x0 + GAP, y0 + GAP, x1 - x0 - 2 * GAP, y1 - y0 - 2 * GAP))
        return tuple(rects)


# ---------------------------------------------------------------------------- tiles


class TileView(VideoView):
    """A view that keeps only the newest frame (no queue); thread-safe.

    Its ``size`` is None: the engine only rotates frames, and :func:`compose_frame` fills or
    fits them into the tile on the GUI thread, off the event loop.
    """

    def __init__(self) -> None:
        self.size = None
        self._lock = threading.Lock()
        self._frame: RenderedFrame | None = None
        self._count = 0

    def on_frame(self, frame: RenderedFrame) -> None:
        """Replace the stored frame."""
        with self._lock:
            self._frame = frame
            self._count += 1

    @property
    def latest(self) -> RenderedFrame | None:
        """The newest frame, or None."""
        with self._lock:
            return self._frame

    @property
    def count(self) -> int:
        """Frames received since creation."""
        with self._lock:
            return self._count

    def clear(self) -> None:
        """Forget the stored frame (the tile shows its placeholder again)."""
        with self._lock:
            self._frame = None


@dataclass(frozen=True)
class TileState:
    """What one tile shows."""

    user_id: str
    name: str
    view: TileView | None = None
    params: VideoRenderParams = field(default_factory=VideoRenderParams)
    status: str = ""
    """``"preview"``, ``"calling"``, ``"ringing"``, ``"incoming"``, ``"connected"``, ..."""
    since: float | None = None
    """Start of the tile's timer (``time.time()``), or None for no timer."""
    volume: int = 0
    quality: NetworkQuality = NetworkQuality.UNKNOWN
    video: bool = True
    """Whether video is expected (False shows "video off" instead of a stale frame)."""
    audio: bool = True
    selected: bool = False


@dataclass(frozen=True)
class AppState:
    """Everything :func:`compose_frame` draws; immutable, so another thread can draw it."""

    size: tuple[int, int] = (1280, 720)
    tiles: tuple[TileState, ...] = ()
    banner: str = ""
    status: str = ""
    show_help: bool = False
    help_lines: tuple[str, ...] = ()
    now: float = 0.0
    """The time the timers are drawn for (``time.time()``)."""


def quality_bars(quality: NetworkQuality) -> int:
    """Bars lit for a quality: EXCELLENT 5 ... VBAD 1; DOWN and UNKNOWN 0."""
    quality = NetworkQuality(quality)
    if quality in (NetworkQuality.UNKNOWN, NetworkQuality.DOWN):
        return 0
    return 6 - int(quality)


def _timer(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60:02d}:{rest % 60:02d}"


def _text(
    image: Image,
    text: str,
    origin: tuple[int, int],
    scale: float = 0.5,
    color: tuple[int, int, int] = _TEXT,
    background: tuple[int, int, int] | None = _LABEL_BG,
) -> int:
    """Draw ``text`` with its top-left at ``origin`` on a box; returns the text width."""
    (width, height), base = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = origin
    if background is not None:
        cv2.rectangle(image, (x - 3, y - 3), (x + width + 3, y + height + base + 1), background,
                      cv2.FILLED)
    cv2.putText(image, text, (x, y + height), _FONT, scale, color, 1, cv2.LINE_AA)
    return int(width)


def _draw_bars(tile: Image, quality: NetworkQuality) -> None:
    width = tile.shape[1]
    lit = quality_bars(quality)
    color = (80, 200, 80) if lit >= 4 else (0, 200, 230) if lit == 3 else (60, 60, 230)
    if quality is NetworkQuality.DOWN:
        color = (60, 60, 230)
    left = width - BAR_MARGIN - 4 * BAR_STEP - BAR_WIDTH
    bottom = BAR_MARGIN + BARS_HEIGHT
    for bar in range(5):
        x = left + bar * BAR_STEP
        top = bottom - (bar + 1) * BARS_HEIGHT // 5
        if bar < lit:
            cv2.rectangle(tile, (x, top), (x + BAR_WIDTH - 1, bottom - 1), color, cv2.FILLED)
        else:
            outline = color if quality is NetworkQuality.DOWN else _METER_OFF
            cv2.rectangle(tile, (x, top), (x + BAR_WIDTH - 1, bottom - 1), outline, 1)


def _draw_meter(tile: Image, volume: int) -> None:
    height, width = tile.shape[:2]
    x = width - METER_MARGIN - METER_WIDTH
    y = height - METER_MARGIN - METER_HEIGHT
    level = max(0, min(100, int(volume))) * METER_WIDTH // 100
    tile[y : y + METER_HEIGHT, x : x + METER_WIDTH] = _METER_OFF
    if level:
        tile[y : y + METER_HEIGHT, x : x + level] = _METER_ON


def _draw_tile(tile: Image, state: TileState, now: float) -> None:
    height, width = tile.shape[:2]
    frame = state.view.latest if state.view is not None and state.video else None
    if frame is not None:
        params = VideoRenderParams(state.params.fill_mode, Rotation.ROTATION_0)
        tile[...] = render(frame.image, params, (width, height))
    else:
        tile[...] = _NO_VIDEO
        caption = state.name if state.video else f"{state.name} (video off)"
        (text_w, _), _ = cv2.getTextSize(caption, _FONT, 0.8, 2)
        cv2.putText(tile, caption, ((width - text_w) // 2, height // 2), _FONT, 0.8, _DIM, 2,
                    cv2.LINE_AA)
    _text(tile, state.name, (8, 8))
    footer = state.status
    if state.since is not None:
        footer = f"{footer} {_timer(now - state.since)}".strip()
    if not state.audio:
        footer = f"{footer} | mic off".strip(" |")
    if footer:
        _text(tile, footer, (8, height - 26))
    _draw_bars(tile, state.quality)
    _draw_meter(tile, state.volume)
    if state.selected:
        cv2.rectangle(tile, (0, 0), (width - 1, height - 1), _SELECTED, 2)


def _draw_help(image: Image, lines: Sequence[str]) -> None:
    height, width = image.shape[:2]
    rows = ["Keys", *lines]
    box_w = min(width - 20, 460)
    box_h = min(height - 20, 22 * len(rows) + 20)
    x, y = (width - box_w) // 2, (height - box_h) // 2
    region = image[y : y + box_h, x : x + box_w]
    region[...] = (region.astype(np.uint16) // 4).astype(np.uint8)
    cv2.rectangle(image, (x, y), (x + box_w - 1, y + box_h - 1), _SELECTED, 1)
    for row, line in enumerate(rows):
        _text(image, line, (x + 14, y + 10 + 22 * row), 0.55,
              _SELECTED if row == 0 else _TEXT, None)


def compose_frame(state: AppState) -> Image:
    """Draw the whole window: the grid of tiles, the banner, the status bar and the help.

    Pure apart from reading each tile's newest frame; safe on any thread.
    """
    width, height = state.size
    image = np.empty((height, width, 3), np.uint8)
    image[...] = _BACKGROUND
    for tile_state, (x, y, w, h) in zip(
        state.tiles, Layout(state.size, len(state.tiles)).rects, strict=True
    ):
        if w > 0 and h > 0:
            _draw_tile(image[y : y + h, x : x + w], tile_state, state.now)
    if state.banner:
        (text_w, text_h), _ = cv2.getTextSize(state.banner, _FONT, 0.6, 1)
        left = max(4, (width - text_w) // 2)
        cv2.rectangle(image, (left - 10, 30), (left + text_w + 10, 30 + text_h + 16), _BANNER_BG,
                      cv2.FILLED)
        cv2.putText(image, state.banner, (left, 38 + text_h), _FONT, 0.6, _TEXT, 1, cv2.LINE_AA)
    bar_top = height - STATUS_HEIGHT
    image[bar_top:] = _LABEL_BG
    if state.status:
        _text(image, state.status, (6, bar_top + 6), 0.45, _TEXT, None)
    if state.show_help and state.help_lines:
        _draw_help(image, state.help_lines)
    return image


# ---------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Binding:
    """One key of the table: the keys that trigger it, the action name, a description."""

    keys: str
    """The characters that trigger it (the first is shown in the help)."""
    action: str
    """The name of the :class:`DesktopApp` action (``DesktopApp.actions``)."""
    description: str
    codes: tuple[int, ...] = ()
    """Extra key codes (Tab, Esc) besides the characters."""


_DEFAULT_BINDINGS = (
    Binding("a", "accept", "accept the incoming call"),
    Binding("r", "reject", "reject the incoming call"),
    Binding("h", "hangup", "hang up / cancel"),
    Binding("d", "dial", "call the --call/--group users (again)"),
    Binding("m", "microphone", "microphone on/off"),
    Binding("c", "camera", "camera on/off"),
    Binding("s", "switch_camera", "switch front/back camera"),
    Binding("p", "route", "speakerphone/earpiece"),
    Binding("f", "fill_mode", "fill/fit the selected tile"),
    Binding("o", "rotate", "rotate the selected tile by 90 deg"),
    Binding("\t", "select", "select the next tile (Tab)"),
    Binding("v", "media_type", "switch the call audio/video"),
    Binding("?", "help", "show/hide this help"),
    Binding("q", "quit", "hang up and quit (also Esc)", codes=(27,)),
)


class KeyBindings:
    """The key table: key codes (``cv2.waitKey``) to action names."""

    def __init__(self, bindings: Sequence[Binding] = _DEFAULT_BINDINGS) -> None:
        self.bindings = tuple(bindings)
        self._by_code: dict[int, Binding] = {}
        for binding in self.bindings:
            for code in (*(ord(k) for k in binding.keys), *binding.codes):
                if code in self._by_code:
                    raise ValueError(f"key {code} is bound twice")
                self._by_code[code] = binding

    def lookup(self, code: int) -> Binding | None:
        """The binding of a key code (upper-case letters count as lower-case), or None."""
        if code < 0:
            return None
        code &= 0xFF
        binding = self._by_code.get(code)
        if binding is None and ord("A") <= code <= ord("Z"):
            binding = self._by_code.get(code + 32)
        return binding

    def help_lines(self) -> tuple[str, ...]:
        """One line per binding, for the help overlay."""
        names = {"\t": "Tab"}
        return tuple(
            f"{names.get(b.keys[0], b.keys[0]):>4}   {b.description}" for b in self.bindings
        )


# ---------------------------------------------------------------------------- app


class EngineLike(Protocol):
    """The part of :class:`~callclient.engine.CallEngine` the app uses (fakes implement it)."""

    devices: DeviceSet

    @property
    def user_id(self) -> str | None: ...

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
    user_id: str
    view: TileView
    status: str
    since: float | None = None
    video: bool = True
    audio: bool = True


@dataclass
class _Model:
    phase: str = "idle"
    """``idle``, ``calling`` (outgoing, ringing), ``incoming`` or ``connected``."""
    media: CallMediaType = CallMediaType.VIDEO
    caller: str = ""
    begin: float | None = None
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


class DesktopApp(CallObserver):
    """The app's logic on the event loop: engine callbacks in, :class:`AppState` out, keys in.

    ``await start()`` (opens the camera preview, places the configured call), then
    :meth:`press` key codes (from any thread via ``loop.call_soon_threadsafe``), :meth:`quit`
    or :meth:`wait_quit`; ``await close()`` hangs up and releases everything (idempotent).
    :meth:`frame` composes the current window image and is safe on any thread.
    """

    def __init__(
        self, engine: EngineLike, config: AppConfig, bindings: KeyBindings | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.bindings = bindings or KeyBindings()
        self.local_view = TileView()
        self._model = _Model()
        self._state = AppState(size=config.window, help_lines=self.bindings.help_lines())
        self._keys: asyncio.Queue[int] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._quit = asyncio.Event()
        self._closed = False
        self._started = False
        for route, sink in list(engine.devices.speakers.items()):
            if not isinstance(sink, SharedSink):
                engine.devices.speakers[route] = SharedSink(sink)
        self.tones = TonePlayer(self._tone_sink())
        self.actions: dict[str, Callable[[], Awaitable[None]]] = {
            "accept": self.accept,
            "reject": self.reject,
            "hangup": self.hangup,
            "dial": self.dial,
            "microphone": self.toggle_microphone,
            "camera": self.toggle_camera,
            "switch_camera": self.switch_camera,
            "route": self.toggle_route,
            "fill_mode": self.toggle_fill_mode,
            "rotate": self.rotate,
            "select": self.select_next,
            "media_type": self.toggle_media_type,
            "help": self.toggle_help,
            "quit": self.request_quit,
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
    def phase(self) -> str:
        """``idle``, ``calling``, ``incoming`` or ``connected``."""
        return self._model.phase

    @property
    def quit_requested(self) -> bool:
        """Whether quitting was asked for (key, window closed, :meth:`quit`)."""
        return self._quit.is_set()

    def frame(self, now: float | None = None) -> Image:
        """The window image for ``now`` (default: the current time); any thread."""
        state = self._state
        return compose_frame(dataclasses.replace(state, now=time.time() if now is None else now))

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
        self._worker = asyncio.get_running_loop().create_task(self._run_keys(), name="app keys")
        if self.config.media_type is CallMediaType.VIDEO:
            await self._open_camera()
        if self.config.call:
            await self.dial()
        self._publish()

    def press(self, code: int) -> None:
        """Handle a key code (on the loop; actions run in order, quit at once)."""
        binding = self.bindings.lookup(code)
        if binding is None:
            return
        if binding.action == "quit":
            self.quit()
        else:
            self._keys.put_nowait(code)

    async def handle_key(self, code: int) -> None:
        """Run the action bound to a key code now (unbound keys do nothing)."""
        binding = self.bindings.lookup(code)
        if binding is not None:
            await self.perform(binding.action)

    async def perform(self, action: str) -> None:
        """Run one action by name; a refused engine call becomes a status message."""
        try:
            await self.actions[action]()
        except CallError as exc:
            logger.info("%s: %s", action, exc)
            self._model.message = f"{action}: {exc}"
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
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._tasks:  # tone and device changes in flight: let them finish, briefly
            await asyncio.wait(list(self._tasks), timeout=_HANGUP_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._model.phase != "idle":
            try:
                async with asyncio.timeout(_HANGUP_TIMEOUT):
                    if self._model.phase == "incoming":
                        await self.engine.reject()
                    else:
                        await self.engine.hangup()
            except (CallError, TimeoutError) as exc:
                logger.info("hangup on close: %s", exc)
        await self.tones.stop()
        self.engine.remove_observer(self)
        for user_id in list(self._model.remotes):
            self.engine.stop_remote_view(user_id)

    # -------------------------------------------------------------- actions

    async def accept(self) -> None:
        """Accept the incoming call."""
        if self._model.phase != "incoming":
            self._model.message = "no incoming call to accept"
            return
        await self.tones.stop()
        await self._camera_for_call()
        await self.engine.accept()

    async def reject(self) -> None:
        """Reject the incoming call."""
        if self._model.phase != "incoming":
            self._model.message = "no incoming call to reject"
            return
        await self.tones.stop()
        await self.engine.reject()

    async def hangup(self) -> None:
        """Hang up the call (or cancel it while it rings)."""
        if self._model.phase == "idle":
            self._model.message = "no call to hang up"
            return
        await self.tones.stop()
        await self.engine.hangup()

    async def dial(self) -> None:
        """Call the configured users (a group call when there are several)."""
        model = self._model
        targets = list(self.config.call)
        if not targets:
            model.message = "nobody to call: start with --call or --group"
            return
        if model.phase != "idle":
            model.message = "already in a call"
            return
        model.phase = "calling"
        model.media = self.config.media_type
        model.caller = self.user_id
        for user_id in targets:
            self._add_remote(user_id, "ringing")
        self._publish()
        self._play(self.config.ringback)
        try:
            await self._camera_for_call()
            await self.engine.calls(targets, self.config.media_type)
        except CallError:
            if model.phase == "calling":
                self._end_call()
            await self.tones.stop()
            raise

    async def toggle_microphone(self) -> None:
        """Microphone off/on; between calls it says whether the next call starts muted."""
        model = self._model
        if model.phase != "connected":
            model.mic_on = not model.mic_on
        elif model.mic_on:
            await self.engine.close_microphone()
            model.mic_on = False
        else:
            await self.engine.open_microphone()
            model.mic_on = True

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
        if self._model.phase != "connected":
            self._model.message = "no connected call to switch"
            return
        media = self._model.media
        new = CallMediaType.AUDIO if media is CallMediaType.VIDEO else CallMediaType.VIDEO
        await self.engine.switch_call_media_type(new)

    async def toggle_help(self) -> None:
        """Show/hide the key table."""
        self._model.show_help = not self._model.show_help

    async def request_quit(self) -> None:
        """Quit (as an action)."""
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
        model = self._model
        model.phase = "incoming"
        model.media = CallMediaType(call_media_type)
        model.caller = caller_id
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
        model.phase = "connected"
        model.begin = time.time()
        model.media = CallMediaType(call_media_type)
        if call_role is CallRole.CALLED and model.caller in model.remotes:
            model.remotes[model.caller].status = "connecting"
        if model.media is CallMediaType.AUDIO and model.camera_on:
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
        self.set_message(f"call ended after {_timer(total_time)}")

    def on_call_media_type_changed(
        self, old_call_media_type: CallMediaType, new_call_media_type: CallMediaType
    ) -> None:
        """Audio <-> video: the camera follows."""
        model = self._model
        model.media = CallMediaType(new_call_media_type)
        if model.media is CallMediaType.VIDEO and not model.camera_on:
            self._spawn(self._open_camera())
        elif model.media is CallMediaType.AUDIO:
            model.camera_on = False  # the engine closes the camera
            self.local_view.clear()
        self.set_message(f"switched to {model.media.name.lower()}")

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

    # -------------------------------------------------------------- internals

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
        if model.media is CallMediaType.VIDEO and model.camera_wanted and not model.camera_on:
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
        model.phase = "idle"
        model.begin = None
        model.caller = ""
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
        now = time.time()
        selected = self._selected_user()
        local = TileState(
            user_id=self.user_id,
            name=f"{self.user_id} (me)",
            view=self.local_view,
            params=self._params(self.user_id),
            status={"idle": "preview", "calling": "calling", "incoming": "ringing"}.get(
                model.phase, model.phase
            ),
            since=model.begin,
            volume=model.volumes.get(self.user_id, 0),
            quality=model.quality.get(self.user_id, NetworkQuality.UNKNOWN),
            video=model.camera_on,
            audio=model.mic_on,
            selected=selected == self.user_id,
        )
        tiles = [local]
        for remote in model.remotes.values():
            tiles.append(
                TileState(
                    user_id=remote.user_id,
                    name=remote.user_id,
                    view=remote.view,
                    params=self._params(remote.user_id),
                    status=remote.status,
                    since=remote.since,
                    volume=model.volumes.get(remote.user_id, 0),
                    quality=model.quality.get(remote.user_id, NetworkQuality.UNKNOWN),
                    video=remote.video and model.media is CallMediaType.VIDEO,
                    audio=remote.audio,
                    selected=selected == remote.user_id,
                )
            )
        self._state = AppState(
            size=self.config.window,
            tiles=tuple(tiles),
            banner=self._banner(),
            status=self._status_line(),
            show_help=model.show_help,
            help_lines=self.bindings.help_lines(),
            now=now,
        )

    def _banner(self) -> str:
        model = self._model
        media = model.media.name.lower()
        if model.phase == "incoming":
            return f"Incoming {media} call from {model.caller}   [a] accept   [r] reject"
        if model.phase == "calling":
            return f"Calling {', '.join(model.remotes)} ...   [h] cancel"
        return ""

    def _status_line(self) -> str:
        model = self._model
        camera = model.camera.name.lower() if model.camera_on else "off"
        parts = [
            self.user_id,
            model.phase,
            f"mic {'on' if model.mic_on else 'off'}",
            f"camera {camera}",
            model.route.name.lower(),
            "? help",
        ]
        if model.message:
            parts.append(model.message)
        return " | ".join(parts)


# ---------------------------------------------------------------------------- GUI thread


class _Bridge:
    """What the GUI thread and the loop thread share: the app, the loop and a done flag."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.done = threading.Event()
        """Set when the loop side has finished: the window closes."""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: DesktopApp | None = None
        self._quit_early = False

    def attach(self, loop: asyncio.AbstractEventLoop, app: DesktopApp) -> None:
        """Called on the loop thread once the app exists."""
        with self._lock:
            self._loop, self._app = loop, app
            quit_early = self._quit_early
        if quit_early:
            app.quit()

    def frame(self, now: float) -> Image:
        """The window image (any thread)."""
        app = self._app
        if app is None:
            return compose_frame(AppState(size=self.config.window, now=now,
                                          status=f"{self.config.user_id} | connecting ..."))
        return app.frame(now)

    def _post(self, callback: Callable[[DesktopApp], None]) -> bool:
        with self._lock:
            loop, app = self._loop, self._app
        if loop is None or app is None:
            return False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
            loop.call_soon_threadsafe(callback, app)
        return True

    def key(self, code: int) -> None:
        """Hand a key code to the app."""
        self._post(lambda app: app.press(code))

    def request_quit(self) -> None:
        """Ask the app to hang up and exit (the window closed, Ctrl-C, a GUI failure)."""
        if not self._post(DesktopApp.quit):
            with self._lock:
                self._quit_early = True


class Window:
    """The OpenCV window; every highgui call happens in :meth:`run`, on the calling thread."""

    def __init__(self, name: str, fps: float = 30.0) -> None:
        self.name = name
        self.period = 1.0 / fps

    def closed(self) -> bool:
        """Whether the user closed the window (Qt destroys it, so an error means closed)."""
        try:
            return bool(cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1)
        except cv2.error:
            return True

    def run(
        self,
        frame: Callable[[float], Image],
        on_key: Callable[[int], None],
        on_closed: Callable[[], None],
        done: threading.Event,
    ) -> None:
        """Show ``frame(now)`` at ``fps`` and report keys until ``done`` or the window closes."""
        cv2.namedWindow(self.name, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        try:
            while not done.is_set():
                started = time.monotonic()
                cv2.imshow(self.name, frame(time.time()))
                left_ms = int((self.period - (time.monotonic() - started)) * 1000)
                code = int(cv2.waitKey(max(1, left_ms)))
                if code != -1:
                    on_key(code & 0xFF)
                if self.closed():
                    on_closed()
                    return
        finally:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(self.name)
                cv2.waitKey(1)


async def _serve(config: AppConfig, login: _Login, devices: DeviceSet, bridge: _Bridge) -> int:
    """The loop side: engine, login, app, until quit; returns the exit status."""
    from callclient.engine import CallEngine

    async with CallEngine(login.server_url, devices=devices) as engine:
        app = DesktopApp(engine, config)
        bridge.attach(asyncio.get_running_loop(), app)
        app.set_message("logging in ...")
        try:
            await engine.login(login.sdk_app_id, config.user_id, login.user_sig)
        except (CallError, OSError) as exc:
            print(f"callclient app: login failed: {exc}", file=sys.stderr)
            await app.close()
            return 1
        app.set_message(f"logged in to {login.server_url}")
        try:
            if not app.quit_requested:
                await app.start()
            await app.wait_quit()
        finally:
            await app.close()
    return 0


@dataclass(frozen=True)
class _Login:
    server_url: str
    sdk_app_id: int
    user_sig: str


def run_app(
    config: AppConfig, server_url: str, sdk_app_id: int, user_sig: str, devices: DeviceSet
) -> int:
    """Run the app: the window on this thread, the engine's event loop in a worker thread.

    Returns when the user quits or closes the window, after hanging up and closing the
    engine: 0, or 1 when login failed.
    """
    bridge = _Bridge(config)
    status: list[int] = []

    def serve() -> None:
        try:
            status.append(
                asyncio.run(_serve(config, _Login(server_url, sdk_app_id, user_sig), devices,
                                   bridge))
            )
        except Exception:
            logger.exception("the app failed")
        finally:
            bridge.done.set()

    worker = threading.Thread(target=serve, name="callclient-app-loop")
    worker.start()
    try:
        Window(config.window_name).run(bridge.frame, bridge.key, bridge.request_quit,
                                       bridge.done)
    except KeyboardInterrupt:
        pass
    finally:
        bridge.request_quit()
        worker.join()
    return status[0] if status else 1


# ---------------------------------------------------------------------------- command line


def _window_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 1280x720, not {text!r}") from None
    if width < 160 or height < 120:
        raise argparse.ArgumentTypeError(f"window {text} is too small (at least 160x120)")
    return width, height


def _parser() -> argparse.ArgumentParser:
    from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY

    parser = argparse.ArgumentParser(
        prog="callclient app",
        description="Desktop call app: an OpenCV window with a tile per participant.",
        epilog="Keys: " + "; ".join(
            f"{'Tab' if b.keys == chr(9) else b.keys} {b.description}" for b in _DEFAULT_BINDINGS
        ),
    )
    parser.add_argument("--user", required=True, help="the user id to log in as")
    parser.add_argument("--server", required=True, help="signaling server URL (ws://host:port)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--call", metavar="ID", help="call this user at start (and with 'd')")
    target.add_argument("--group", metavar="ID,ID", help="call these users as a group call")
    parser.add_argument("--audio", action="store_true", help="place audio calls (default video)")
    parser.add_argument("--virtual", action="store_true",
                        help="virtual camera/microphone/speakers instead of real devices")
    parser.add_argument("--ringtone", type=Path, default=asset_path(RINGTONE),
                        help="sound file for incoming calls (default: the bundled ringtone)")
    parser.add_argument("--ringback", type=Path, default=asset_path(RINGBACK),
                        help=argparse.SUPPRESS)
    parser.add_argument("--mute-ringtone", action="store_true",
                        help="mute mode: incoming calls do not ring")
    parser.add_argument("--window", type=_window_size, default=(1280, 720), metavar="WxH",
                        help="window size (default 1280x720)")
    parser.add_argument("--sdkappid", type=int, default=DEV_SDK_APP_ID)
    parser.add_argument("--secret-key", default=DEV_SECRET_KEY,
                        help="sign a userSig with this key (development)")
    parser.add_argument("--usersig", help="a ready userSig (instead of --secret-key)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _devices(virtual: bool, user_id: str) -> DeviceSet:
    if not virtual:
        try:
            from callclient.media.devices import real_devices
        except ImportError:
            logger.warning("real devices are not available; using virtual devices")
        else:
            return real_devices()
    return DeviceSet.virtual(user_id)


def main(argv: list[str] | None = None) -> int:
    """``callclient app``: parse ``argv`` and run the app; returns the exit status."""
    args = _parser().parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("callclient app: no display (set DISPLAY, or run under Xvfb)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for tone in (args.ringtone, args.ringback):
        if not tone.is_file():
            print(f"callclient app: no such sound file: {tone}", file=sys.stderr)
            return 2
    fonts = Path("/usr/share/fonts/truetype/dejavu")
    if fonts.is_dir():
        os.environ.setdefault("QT_QPA_FONTDIR", str(fonts))  # opencv's Qt ships no fonts
    if args.usersig:
        user_sig = args.usersig
    else:
        from callwire.usersig import generate_user_sig

        user_sig = generate_user_sig(args.sdkappid, args.secret_key, args.user)
    targets = tuple(args.group.split(",")) if args.group else (args.call,) if args.call else ()
    config = AppConfig(
        user_id=args.user,
        call=tuple(t.strip() for t in targets if t.strip()),
        media_type=CallMediaType.AUDIO if args.audio else CallMediaType.VIDEO,
        window=args.window,
        ringtone=args.ringtone,
        ringback=args.ringback,
        mute_ringtone=args.mute_ringtone,
    )
    return run_app(config, args.server, args.sdkappid, user_sig,
                   _devices(args.virtual, args.user))


if __name__ == "__main__":
    raise SystemExit(main())
