"""The desktop window's image without a window: layout, tiles, meters, bars, timer, help."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import numpy.typing as npt
import pytest

from callclient.apps.desktop.drawing import (
    GAP,
    METER_HEIGHT,
    METER_MARGIN,
    METER_WIDTH,
    STATUS_HEIGHT,
    Layout,
    compose_frame,
    grid_shape,
    quality_bars,
)
from callclient.apps.desktop.keys import KeyBindings
from callclient.apps.desktop.state import AppState, TileState, TileView, duration_text
from callclient.media.base import RenderedFrame
from callclient.types import FillMode, NetworkQuality, Rotation, VideoRenderParams

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


def test_cleared_view_shows_placeholder() -> None:
    """A view cleared after a frame (the remote camera went off) draws the placeholder."""
    tile = _tile("me", _solid((0, 0, 255)))
    assert tile.view is not None and tile.view.count == 1
    tile.view.clear()
    x, y, w, h = Layout(SIZE, 1).rects[0]
    image = compose_frame(AppState(size=SIZE, tiles=(tile,)))
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


def test_timer_and_state_text_drawn() -> None:
    """State and timer are drawn at the tile's bottom-left and change with time."""
    tile = _tile("me", None, status="connected", since=1000.0)
    one = compose_frame(AppState(size=SIZE, tiles=(tile,), now=1001.0))
    two = compose_frame(AppState(size=SIZE, tiles=(tile,), now=1075.0))
    x, y, _, h = Layout(SIZE, 1).rects[0]
    footer = (slice(y + h - 30, y + h - 4), slice(x, x + 200))
    assert not np.array_equal(one[footer], two[footer])


def test_media_path_drawn_under_the_name() -> None:
    """The tile details: the candidate pair, under the name, only when known."""
    plain = compose_frame(AppState(size=SIZE, tiles=(_tile("bob", None),)))
    with_path = compose_frame(AppState(size=SIZE, tiles=(
        _tile("bob", None, path="srflx -> relay over turn/udp"),)))
    x, y, _, _ = Layout(SIZE, 1).rects[0]
    details = (slice(y + 28, y + 48), slice(x, x + 200))
    assert not np.array_equal(plain[details], with_path[details])


def test_banner_and_status_bar_drawn() -> None:
    """A banner is drawn over the top of the grid; status text lights the status bar."""
    tiles = (_tile("me", None),)
    plain = compose_frame(AppState(size=SIZE, tiles=tiles))
    busy = compose_frame(AppState(size=SIZE, tiles=tiles, banner="Incoming call from carol",
                                  status="alice | incoming"))
    banner = (slice(30, 60), slice(0, SIZE[0]))
    status = (slice(SIZE[1] - STATUS_HEIGHT, SIZE[1]), slice(0, 300))
    assert not np.array_equal(plain[banner], busy[banner])
    assert int(plain[status].max()) == 0 and int(busy[status].max()) > 200


@pytest.mark.parametrize(("seconds", "text"),
                         [(0, "00:00"), (65.9, "01:05"), (3599, "59:59"), (3723, "1:02:03"),
                          (-5, "00:00")])
def test_duration_text(seconds: float, text: str) -> None:
    """Timers read MM:SS, H:MM:SS from an hour on; a clock running backwards shows 00:00."""
    assert duration_text(seconds) == text
