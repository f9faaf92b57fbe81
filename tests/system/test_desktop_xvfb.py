"""The desktop app in a real X server (Xvfb) against a bot: screenshots, keys, closing.

Needs the Debian packages ``xvfb`` (Xvfb), ``xdotool`` (find the window, type keys) and
``x11-apps`` (xwd, the screenshots); the test fails, not skips, when one is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from callclient.apps.desktop.drawing import Layout
from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from callclient.media.pattern import read_stamp
from callclient.observer import CallEvent, EventQueueObserver
from signaling_server.server import SignalingServer
from tests.helpers.servers import APP, sig

Image = npt.NDArray[np.uint8]
ROOT = Path(__file__).resolve().parents[2]
WINDOW = (1280, 720)
TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "xwd": "x11-apps"}

pytestmark = pytest.mark.timeout(180)


def _free_display() -> int:
    for number in range(90, 190):
        if not (Path(f"/tmp/.X{number}-lock").exists()
                or Path(f"/tmp/.X11-unix/X{number}").exists()):
            return number
    raise RuntimeError("no free X display number in :90..:189")


@pytest.fixture
def display(tmp_path: Path) -> Iterator[str]:
    """A fresh Xvfb 1280x800x24 display; fails with the packages to install if tools lack."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.fail(
            "the desktop app test needs an X server and X tools: "
            f"apt-get install -y {' '.join(missing)}"
        )
    number = _free_display()
    log = (tmp_path / "xvfb.log").open("wb")
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        socket = Path(f"/tmp/.X11-unix/X{number}")
        deadline = time.monotonic() + 10
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Xvfb :{number} did not start: {(tmp_path / 'xvfb.log').read_text()}")
            time.sleep(0.05)
        yield f":{number}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _x(display: str, *args: str) -> str:
    """Run an X tool on ``display``; its stdout."""
    env = dict(os.environ, DISPLAY=display)
    done = subprocess.run(args, env=env, capture_output=True, check=True, timeout=20)
    return done.stdout.decode()


def screenshot(display: str) -> Image:
    """The whole screen as a BGR image, from ``xwd -root`` (ZPixmap, 24/32 bits per pixel)."""
    env = dict(os.environ, DISPLAY=display)
    data = subprocess.run(["xwd", "-root", "-silent"], env=env, capture_output=True, check=True,
                          timeout=20).stdout
    fields = struct.unpack(">25I", data[:100])
    header_size, pixmap_format, width, height = fields[0], fields[2], fields[4], fields[5]
    byte_order, bits_per_pixel, bytes_per_line, ncolors = (
        fields[7], fields[11], fields[12], fields[19])
    assert pixmap_format == 2 and bits_per_pixel in (24, 32), (pixmap_format, bits_per_pixel)
    size = bits_per_pixel // 8
    start = header_size + 12 * ncolors
    pixels = np.frombuffer(data[start : start + height * bytes_per_line], np.uint8)
    rows = pixels.reshape(height, bytes_per_line)[:, : width * size].reshape(height, width, size)
    bgr = rows[:, :, :3] if byte_order == 0 else rows[:, :, size - 1 : size - 4 : -1]
    return np.ascontiguousarray(bgr)


def close_window(display: str, window: int) -> None:
    """Close ``window`` as a window manager's close button does (WM_DELETE_WINDOW)."""

    class ClientMessage(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong),
                    ("send_event", ctypes.c_int), ("display", ctypes.c_void_p),
                    ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                    ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]

    class XEvent(ctypes.Union):
        _fields_ = [("xclient", ClientMessage), ("pad", ctypes.c_long * 24)]

    x11 = ctypes.cdll.LoadLibrary("libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long,
                               ctypes.POINTER(XEvent)]
    x11.XFlush.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    conn = x11.XOpenDisplay(display.encode())
    assert conn, f"cannot open display {display}"
    try:
        event = XEvent()
        event.xclient.type = 33  # ClientMessage
        event.xclient.window = window
        event.xclient.message_type = x11.XInternAtom(conn, b"WM_PROTOCOLS", 0)
        event.xclient.format = 32
        event.xclient.data[0] = x11.XInternAtom(conn, b"WM_DELETE_WINDOW", 0)
        assert x11.XSendEvent(conn, window, 0, 0, ctypes.byref(event))
        x11.XFlush(conn)
    finally:
        x11.XCloseDisplay(conn)


class Bot:
    """A CallEngine with virtual devices whose callbacks the test waits for."""

    def __init__(self, engine: CallEngine) -> None:
        self.engine = engine
        self.stream: EventQueueObserver = engine.events()
        self.seen: list[CallEvent] = []

    async def wait(self, name: str, within: float = 20.0,
                   match: Callable[[CallEvent], bool] = lambda _: True) -> CallEvent:
        """The next ``name`` callback that ``match``es, within ``within`` seconds."""
        async with asyncio.timeout(within):
            while True:
                event = await self.stream.next()
                self.seen.append(event)
                if event.name == name and match(event):
                    return event


@pytest.fixture
async def bot(server: SignalingServer) -> AsyncIterator[Bot]:
    """User ``bot``: logged in, camera on (stamped frames), answering nothing by itself."""
    engine = CallEngine(server.url, devices=DeviceSet.virtual("bot"))
    try:
        await engine.login(APP, "bot", sig("bot"))
        await engine.open_camera()
        yield Bot(engine)
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def app_process(display: str, server: SignalingServer, log: Path,
                      *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m callclient.apps.desktop --user alice --virtual ARGS`` on ``display``."""
    env = dict(os.environ, DISPLAY=display)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callclient.apps.desktop", "--user", "alice",
            "--server", server.url, "--virtual", "--window", f"{WINDOW[0]}x{WINDOW[1]}", *args,
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def find_window(display: str) -> tuple[int, int, int]:
    """``(window id, x, y)`` of the app's window, waiting for it to appear."""
    for _ in range(100):
        with contextlib.suppress(subprocess.CalledProcessError):
            ids = (await asyncio.to_thread(_x, display, "xdotool", "search", "--name",
                                           "^callclient - alice$")).split()
            if ids:
                window = int(ids[0])
                shell = await asyncio.to_thread(_x, display, "xdotool", "getwindowgeometry",
                                                "--shell", str(window))
                geometry = dict(line.split("=", 1) for line in shell.split())
                return window, int(geometry["X"]), int(geometry["Y"])
        await asyncio.sleep(0.2)
    raise AssertionError("the app's window did not appear")


async def press(display: str, window: int, *keys: str) -> None:
    """Focus the window and type ``keys`` (xdotool key names)."""
    await asyncio.to_thread(_x, display, "xdotool", "windowfocus", "--sync", str(window),
                            "key", "--delay", "50", *keys)


async def tile_until(display: str, origin: tuple[int, int], index: int,
                     ok: Callable[[Image], bool], within: float = 15.0) -> Image:
    """Screenshots of tile ``index`` until ``ok(tile)``; the last tile."""
    x, y, w, h = Layout(WINDOW, 2).rects[index]
    deadline = time.monotonic() + within
    while True:
        shot = await asyncio.to_thread(screenshot, display)
        tile = shot[origin[1] + y : origin[1] + y + h, origin[0] + x : origin[0] + x + w]
        if ok(tile) or time.monotonic() > deadline:
            return tile
        await asyncio.sleep(0.2)


def _has_bars(tile: Image) -> bool:
    h, w = tile.shape[:2]
    band = tile[h // 8 - 10 : h // 8 + 10, w // 3 : 2 * w // 3]
    return int(band.max()) < 20


async def test_app_shows_bot_video_and_keys_act(display: str, server: SignalingServer,
                                                bot: Bot, tmp_path: Path) -> None:
    """The app calls the bot: the remote tile shows the bot's live stamp; f, m, h, d act;
    closing the window ends the call and the app exits 0."""
    async with app_process(display, server, tmp_path / "app.log", "--call", "bot") as proc:
        received = await bot.wait("on_call_received")
        assert received.args[0] == "alice"
        await bot.engine.accept()
        await bot.wait("on_call_begin")
        window, *origin_list = await find_window(display)
        origin = (origin_list[0], origin_list[1])

        tile = await tile_until(display, origin, 1, lambda t: read_stamp(t) is not None)
        first = read_stamp(tile)
        assert first is not None, f"no stamp readable in the remote tile (see {tmp_path})"
        cv2.imwrite(str(tmp_path / "remote-tile.png"), tile)
        cv2.imwrite(str(tmp_path / "screen.png"), await asyncio.to_thread(screenshot, display))
        await asyncio.sleep(1.0)
        tile = await tile_until(display, origin, 1,
                                lambda t: (read_stamp(t) or (0, 0.0))[0] > first[0] + 5)
        second = read_stamp(tile)
        assert second is not None and second[0] > first[0] + 5, (first, second)
        assert not _has_bars(tile)

        await press(display, window, "f")
        tile = await tile_until(display, origin, 1, _has_bars)
        assert _has_bars(tile), "fit mode shows no black bars in the remote tile"
        assert read_stamp(tile) is not None
        cv2.imwrite(str(tmp_path / "remote-tile-fit.png"), tile)

        await press(display, window, "m")
        await bot.wait("on_user_audio_available", match=lambda e: e.args == ("alice", False))

        await press(display, window, "h")
        await bot.wait("on_call_end")
        tiles_gone = await tile_until(display, origin, 1, lambda t: read_stamp(t) is None)
        assert read_stamp(tiles_gone) is None

        await press(display, window, "d")
        await bot.wait("on_call_received")
        await bot.engine.accept()
        await bot.wait("on_call_begin")
        await tile_until(display, origin, 1, lambda t: read_stamp(t) is not None)

        await asyncio.to_thread(close_window, display, window)
        await bot.wait("on_call_end")
        async with asyncio.timeout(15):
            assert await proc.wait() == 0, (tmp_path / "app.log").read_text()


async def test_app_quits_on_q_while_ringing(display: str, server: SignalingServer, bot: Bot,
                                            tmp_path: Path) -> None:
    """'q' while the call still rings cancels it (the bot sees it cancelled) and exits 0."""
    async with app_process(display, server, tmp_path / "app.log", "--call", "bot") as proc:
        await bot.wait("on_call_received")
        window, _, _ = await find_window(display)
        await press(display, window, "q")
        await bot.wait("on_call_cancelled")
        async with asyncio.timeout(15):
            assert await proc.wait() == 0, (tmp_path / "app.log").read_text()
