"""What the window shows, as data: the tiles' frame holders and the immutable window state.

The controller builds an :class:`AppState` on the event loop; the GUI thread draws it with
:func:`~callclient.apps.desktop.drawing.compose_frame`. Nothing here draws or touches OpenCV.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from callclient.media.base import RenderedFrame, VideoView
from callclient.types import NetworkQuality, VideoRenderParams

__all__ = ["AppState", "TileState", "TileView", "duration_text"]


class TileView(VideoView):
    """A view that keeps only the newest frame (no queue); thread-safe.

    Its ``size`` is None: the engine only rotates frames, and the drawing fills or fits them
    into the tile on the GUI thread, off the event loop.
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
    path: str = ""
    """The tile details' media path (``"srflx -> relay over turn/udp"``), "" while unknown."""
    video_info: str = ""
    """The video sent (local tile: size, fps, bitrate, why it is lowered) or received."""


@dataclass(frozen=True)
class AppState:
    """Everything the window draws; immutable, so another thread can draw it."""

    size: tuple[int, int] = (1280, 720)
    tiles: tuple[TileState, ...] = ()
    banner: str = ""
    status: str = ""
    show_help: bool = False
    help_lines: tuple[str, ...] = ()
    now: float = 0.0
    """The time the timers are drawn for (``time.time()``)."""


def duration_text(seconds: float) -> str:
    """A duration as the window writes it: ``MM:SS``, or ``H:MM:SS`` from an hour on."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60:02d}:{rest % 60:02d}"
