"""The window image: pure functions that draw an :class:`~.state.AppState`.

:class:`Layout` computes the grid of tiles, :func:`compose_frame` draws the tiles (video or a
placeholder, name, state and timer, volume meter, quality bars), the banner, the status bar
and the help overlay into a new image. No window, no engine: safe on any thread, tested by
reading pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from callclient.apps.desktop.state import AppState, TileState, duration_text
from callclient.media.render import render
from callclient.types import NetworkQuality, Rotation, VideoRenderParams

__all__ = [
    "BARS_HEIGHT",
    "BAR_MARGIN",
    "BAR_STEP",
    "BAR_WIDTH",
    "GAP",
    "METER_HEIGHT",
    "METER_MARGIN",
    "METER_WIDTH",
    "STATUS_HEIGHT",
    "Image",
    "Layout",
    "Rect",
    "compose_frame",
    "grid_shape",
    "quality_bars",
]

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


def quality_bars(quality: NetworkQuality) -> int:
    """Bars lit for a quality: EXCELLENT 5 ... VBAD 1; DOWN and UNKNOWN 0."""
    quality = NetworkQuality(quality)
    if quality in (NetworkQuality.UNKNOWN, NetworkQuality.DOWN):
        return 0
    return 6 - int(quality)


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
    detail_y = 32
    if state.path:
        _text(tile, state.path, (8, detail_y), 0.4)
        detail_y += 18
    if state.video_info:
        _text(tile, state.video_info, (8, detail_y), 0.45)
    footer = state.status
    if state.since is not None:
        footer = f"{footer} {duration_text(now - state.since)}".strip()
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
