"""Desktop app UI logic without a window: layout, compose_frame, key bindings, call flow."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import numpy.typing as npt
import pytest

from callclient.apps.desktop import (
    GAP,
    METER_HEIGHT,
    METER_MARGIN,
    METER_WIDTH,
    STATUS_HEIGHT,
    AppConfig,
    AppState,
    DesktopApp,
    KeyBindings,
    Layout,
    TileState,
    TileView,
    compose_frame,
    grid_shape,
    main,
    quality_bars,
)
from callclient.errors import RequestRefusedError
from callclient.media.base import RenderedFrame, VideoView
from callclient.media.deviceset import DeviceSet
from callclient.media.tones import SharedSink
from callclient.media.virtual import VirtualSpeaker
from callclient.observer import CallObserver
from callclient.types import (
    AudioPlaybackDevice,
    CallMediaType,
    CallParams,
    CallRole,
    Camera,
    FillMode,
    NetworkQuality,
    RoomId,
    Rotation,
    VideoRenderParams,
)

Image = npt.NDArray[np.uint8]
SIZE = (1280, 720)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200),
          (30, 200, 200), (120, 60, 0), (0, 60, 120), (90, 150, 210)]


def _solid(color: tuple[int, int, int], width: int = 640, height: int = 360) -> Image:
    image = np.empty((height, width, 3), np.uint8)
    image[...] = color
    return image


def _tile(user: str, image: Image | None, **kwargs: object) -> TileState:
    view = TileView()
    if image is not None:
        view.on_frame(RenderedFrame(user, image, time.time()))
    return TileState(user_id=user, name=user, view=view, **kwargs)  # type: ignore[arg-type]


def _centre(rect: tuple[int, int, int, int]) -> tuple[int, int]:
    x, y, w, h = rect
    return x + w // 2, y + h // 2


@pytest.mark.parametrize(("count", "grid"), [(1, (1, 1)), (2, (2, 1)), (4, (2, 2)), (9, (3, 3))])
def test_grid_for_tile_counts(count: int, grid: tuple[int, int]) -> None:
    """1/2/4/9 tiles make 1x1/2x1/2x2/3x3 grids, each tile shows its own user's frame."""
    assert grid_shape(count) == grid
    layout = Layout(SIZE, count)
    rects = layout.rects
    assert len(rects) == count
    cols, rows = grid
    cell_w, cell_h = SIZE[0] // cols, (SIZE[1] - STATUS_HEIGHT) // rows
    for x, y, w, h in rects:
        assert abs(w - (cell_w - 2 * GAP)) <= 1 and abs(h - (cell_h - 2 * GAP)) <= 1
        assert x + w <= SIZE[0] and y + h <= SIZE[1] - STATUS_HEIGHT
    tiles = tuple(_tile(f"u{i}", _solid(COLORS[i])) for i in range(count))
    image = compose_frame(AppState(size=SIZE, tiles=tiles))
    assert image.shape == (SIZE[1], SIZE[0], 3)
    for index, rect in enumerate(rects):
        cx, cy = _centre(rect)
        assert tuple(int(v) for v in image[cy, cx]) == COLORS[index]
    # Between two neighbouring tiles lies background, not video.
    if count > 1:
        x, y, w, h = rects[0]
        assert tuple(int(v) for v in image[y + h // 2, x + w + GAP - 1]) == (24, 24, 24)


def test_other_counts_fill_rows_first() -> None:
    """3 tiles use a 2x2 grid, 5 a 3x2 grid; rectangles never overlap."""
    assert grid_shape(3) == (2, 2)
    assert grid_shape(5) == (3, 2)
    rects = Layout(SIZE, 5).rects
    for i, (x0, y0, w0, h0) in enumerate(rects):
        for x1, y1, w1, h1 in rects[i + 1:]:
            assert x0 + w0 <= x1 or x1 + w1 <= x0 or y0 + h0 <= y1 or y1 + h1 <= y0


def test_fill_and_fit_in_a_tile() -> None:
    """A 16:9 frame in a tall tile: FIT leaves black bars above and below, FILL covers it."""
    color = (40, 180, 220)
    rect = Layout(SIZE, 2).rects[1]
    x, y, w, h = rect
    frame = _solid(color)
    for mode, bars in ((FillMode.FIT, True), (FillMode.FILL, False)):
        tiles = (
            _tile("me", None),
            _tile("bob", frame, params=VideoRenderParams(mode, Rotation.ROTATION_0)),
        )
        image = compose_frame(AppState(size=SIZE, tiles=tiles))
        top = image[y + h // 8, x + w // 2]
        bottom = image[y + h - h // 8, x + w // 2]
        assert tuple(int(v) for v in image[y + h // 2, x + w // 2]) == color
        if bars:
            assert top.tolist() == [0, 0, 0] and bottom.tolist() == [0, 0, 0]
        else:
            assert tuple(int(v) for v in top) == color
            assert tuple(int(v) for v in bottom) == color


def test_tile_without_video_shows_placeholder() -> None:
    """No frame (or video off) shows the grey placeholder, not a stale frame."""
    rect = Layout(SIZE, 1).rects[0]
    stale = _tile("me", _solid((0, 0, 255)), video=False)
    image = compose_frame(AppState(size=SIZE, tiles=(stale,)))
    x, y, w, h = rect
    assert image[y + h // 4, x + w // 2].tolist() == [48, 48, 48]


def _meter_row(image: Image, rect: tuple[int, int, int, int]) -> Image:
    x, y, w, h = rect
    row = y + h - METER_MARGIN - METER_HEIGHT // 2
    left = x + w - METER_MARGIN - METER_WIDTH
    return image[row, left : left + METER_WIDTH]


def test_volume_meter_follows_volume() -> None:
    """Volume v lights the meter's first v pixels (one per step)."""
    rect = Layout(SIZE, 1).rects[0]
    lit = {}
    for volume in (0, 30, 100):
        image = compose_frame(AppState(size=SIZE, tiles=(_tile("me", None, volume=volume),)))
        row = _meter_row(image, rect)
        lit[volume] = int(np.count_nonzero(row[:, 1] > 150))
    assert lit == {0: 0, 30: 30, 100: 100}


def test_quality_bars_follow_quality() -> None:
    """EXCELLENT lights 5 bars, BAD 2, DOWN/UNKNOWN none; the pixels differ accordingly."""
    assert [quality_bars(q) for q in NetworkQuality] == [0, 5, 4, 3, 2, 1, 0]
    rect = Layout(SIZE, 1).rects[0]
    x, y, w, _ = rect
    region = (slice(y + 6, y + 32), slice(x + w - 60, x + w - 4))
    shots = {
        q: compose_frame(AppState(size=SIZE, tiles=(_tile("me", None, quality=q),)))[region]
        for q in (NetworkQuality.EXCELLENT, NetworkQuality.BAD, NetworkQuality.UNKNOWN)
    }
    lit = {q: int(np.count_nonzero(img.max(axis=2) > 150)) for q, img in shots.items()}
    assert lit[NetworkQuality.EXCELLENT] > lit[NetworkQuality.BAD] > lit[NetworkQuality.UNKNOWN]
    assert lit[NetworkQuality.UNKNOWN] == 0


def test_help_overlay_toggles() -> None:
    """The help overlay darkens the centre and lists the keys only when shown."""
    tiles = (_tile("me", _solid((250, 250, 250))),)
    lines = KeyBindings().help_lines()
    base = AppState(size=SIZE, tiles=tiles, help_lines=lines)
    hidden = compose_frame(base)
    shown = compose_frame(dataclasses.replace(base, show_help=True))
    centre = (slice(300, 420), slice(500, 780))
    assert float(shown[centre].mean()) < float(hidden[centre].mean()) - 60
    assert any("hang up" in line for line in lines)


def test_timer_and_state_text_drawn() -> None:
    """State and timer are drawn at the tile's bottom-left and change with time."""
    tile = _tile("me", None, status="connected", since=1000.0)
    one = compose_frame(AppState(size=SIZE, tiles=(tile,), now=1001.0))
    two = compose_frame(AppState(size=SIZE, tiles=(tile,), now=1075.0))
    x, y, _, h = Layout(SIZE, 1).rects[0]
    footer = (slice(y + h - 30, y + h - 4), slice(x, x + 200))
    assert not np.array_equal(one[footer], two[footer])


def test_key_table() -> None:
    """Every key of the table maps to its action; letters ignore case; unknown keys do not."""
    bindings = KeyBindings()
    expected = {"h": "hangup", "a": "accept", "r": "reject", "m": "microphone", "c": "camera",
                "s": "switch_camera", "p": "route", "f": "fill_mode", "o": "rotate",
                "v": "media_type", "?": "help", "q": "quit", "d": "dial", "\t": "select"}
    for key, action in expected.items():
        binding = bindings.lookup(ord(key))
        assert binding is not None and binding.action == action
    assert bindings.lookup(ord("M")) == bindings.lookup(ord("m"))
    assert bindings.lookup(27) == bindings.lookup(ord("q"))
    assert bindings.lookup(ord("z")) is None and bindings.lookup(-1) is None


class FakeEngine:
    """Just the engine methods the app calls; records each call."""

    def __init__(self) -> None:
        self.devices = DeviceSet.virtual("fake")
        self.calls_made: list[tuple[object, ...]] = []
        self.observers: list[CallObserver] = []
        self.views: dict[str, VideoView] = {}
        self.refuse: set[str] = set()

    @property
    def user_id(self) -> str | None:
        return "alice"

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


async def _press(app: DesktopApp, engine: FakeEngine, key: str) -> list[tuple[object, ...]]:
    before = len(engine.calls_made)
    await app.handle_key(ord(key))
    return engine.calls_made[before:]


async def test_keys_call_engine_methods() -> None:
    """Each key of a connected call calls the right engine method with the right arguments."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", call=("bob",)))
    await app.start()
    assert engine.calls_made[:2] == [("open_camera", Camera.FRONT),
                                     ("calls", ["bob"], CallMediaType.VIDEO)]
    assert app.phase == "calling" and "bob" in engine.views
    app.on_call_begin(RoomId(1), CallMediaType.VIDEO, CallRole.CALLER)
    app.on_user_join("bob")
    assert app.phase == "connected"

    assert await _press(app, engine, "m") == [("close_microphone",)]
    assert await _press(app, engine, "m") == [("open_microphone",)]
    assert await _press(app, engine, "c") == [("close_camera",)]
    assert await _press(app, engine, "c") == [("open_camera", Camera.FRONT)]
    assert await _press(app, engine, "s") == [("switch_camera", Camera.BACK)]
    assert await _press(app, engine, "p") == [
        ("select_audio_playback_device", AudioPlaybackDevice.EARPIECE)]
    fit = VideoRenderParams(FillMode.FIT, Rotation.ROTATION_0)
    assert await _press(app, engine, "f") == [("set_video_render_params", "bob", fit)]
    assert await _press(app, engine, "o") == [
        ("set_video_render_params", "bob", VideoRenderParams(FillMode.FIT, Rotation.ROTATION_90))]
    assert await _press(app, engine, "\t") == []
    assert await _press(app, engine, "f") == [("set_video_render_params", "alice", fit)]
    assert await _press(app, engine, "v") == [("switch_call_media_type", CallMediaType.AUDIO)]
    assert not app.state.show_help
    assert await _press(app, engine, "?") == []
    assert app.state.show_help
    assert await _press(app, engine, "z") == []
    assert await _press(app, engine, "h") == [("hangup",)]
    assert app.state.tiles[1].params.fill_mode is FillMode.FIT
    app.press(ord("q"))
    assert app.quit_requested
    await app.close()


async def test_incoming_call_rings_until_accepted() -> None:
    """An incoming call shows the caller and rings through the speaker until accepted."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice"))
    await app.start()
    shared = engine.devices.speakers[AudioPlaybackDevice.SPEAKERPHONE]
    assert isinstance(shared, SharedSink)
    speaker = shared.inner
    assert isinstance(speaker, VirtualSpeaker)
    app.on_call_received("carol", ["alice"], "", CallMediaType.VIDEO)
    assert "carol" in app.state.banner and app.state.tiles[1].user_id == "carol"
    for _ in range(100):
        if speaker.played_samples >= 48000 * 0.3:
            break
        await asyncio.sleep(0.05)
    assert shared.owner == "tone"
    assert int(np.abs(speaker.samples()).max()) > 5000
    assert await _press(app, engine, "a") == [("accept",)]
    assert shared.owner is None and not speaker.running
    app.on_call_begin(RoomId(2), CallMediaType.VIDEO, CallRole.CALLED)
    await shared.start(lambda: np.zeros(960, np.int16))  # the engine takes the output
    assert shared.owner == "call"
    await shared.stop()
    app.on_call_end(RoomId(2), CallMediaType.VIDEO, CallRole.CALLED, 3.0)
    assert app.phase == "idle" and len(app.state.tiles) == 1
    await app.close()


async def test_mute_mode_and_reject() -> None:
    """With mute mode an incoming call does not ring; 'r' rejects it; refusals are shown."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", mute_ringtone=True))
    await app.start()
    app.on_call_received("carol", ["alice"], "", CallMediaType.AUDIO)
    await asyncio.sleep(0.2)
    shared = engine.devices.speakers[AudioPlaybackDevice.SPEAKERPHONE]
    assert isinstance(shared, SharedSink) and shared.owner is None
    assert await _press(app, engine, "r") == [("reject",)]
    app.on_call_cancelled("alice")
    assert app.phase == "idle"
    assert await _press(app, engine, "h") == []
    assert "no call" in app.state.status
    engine.refuse.add("calls")
    app2 = DesktopApp(engine, AppConfig("alice", call=("bob",)))
    await app2.perform("dial")
    assert app2.phase == "idle" and "cannot calls" in app2.state.status
    await app.close()
    await app2.close()


async def test_close_hangs_up_and_is_idempotent() -> None:
    """Closing during a call hangs up once and leaves the engine; a second close does nothing."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", call=("bob",)))
    await app.start()
    await app.close()
    await app.close()
    assert engine.calls_made.count(("hangup",)) == 1
    assert engine.observers == []


def test_main_without_display_fails(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Without DISPLAY the app says so and exits 2 instead of crashing in Qt."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["--user", "alice", "--server", "ws://127.0.0.1:1"]) == 2
    assert "no display" in capsys.readouterr().err
