"""A private X server (Xvfb) for the desktop app's tests, and the X tools they drive it with.

Needs the Debian packages ``xvfb`` (Xvfb), ``xdotool`` (find windows, type keys) and
``x11-apps`` (xwd, screenshots); :func:`xvfb_display` fails the test, never skips it, naming
the packages to install when a tool is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

__all__ = ["TOOLS", "close_window", "find_window", "run_x", "screenshot", "xvfb_display"]

Image = npt.NDArray[np.uint8]
TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "xwd": "x11-apps"}
"""Program -> the Debian package that has it."""


def _free_display() -> int:
    for number in range(90, 190):
        if not (Path(f"/tmp/.X{number}-lock").exists()
                or Path(f"/tmp/.X11-unix/X{number}").exists()):
            return number
    raise RuntimeError("no free X display number in :90..:189")


@contextlib.contextmanager
def xvfb_display(log_dir: Path) -> Iterator[str]:
    """A fresh Xvfb 1280x800x24 display (``":N"``), stopped on exit; its log in ``log_dir``."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.fail(
            "the desktop app test needs an X server and X tools: "
            f"apt-get install -y {' '.join(missing)}"
        )
    number = _free_display()
    log_path = log_dir / "xvfb.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        socket = Path(f"/tmp/.X11-unix/X{number}")
        deadline = time.monotonic() + 10
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Xvfb :{number} did not start: {log_path.read_text()}")
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


def run_x(display: str, *args: str) -> str:
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


async def find_window(display: str, title: str) -> tuple[int, int, int]:
    """``(window id, x, y)`` of the window named ``title`` (a regex), waiting for it."""
    for _ in range(100):
        with contextlib.suppress(subprocess.CalledProcessError):
            ids = (await asyncio.to_thread(run_x, display, "xdotool", "search", "--name",
                                           title)).split()
            if ids:
                window = int(ids[0])
                shell = await asyncio.to_thread(run_x, display, "xdotool", "getwindowgeometry",
                                                "--shell", str(window))
                geometry = dict(line.split("=", 1) for line in shell.split())
                return window, int(geometry["X"]), int(geometry["Y"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no window named {title!r} appeared")
