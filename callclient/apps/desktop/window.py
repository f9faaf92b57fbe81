"""The two threads of the app: the OpenCV window on this one, the event loop in a worker.

OpenCV's highgui (Qt) is not thread-safe and ``waitKey(1)`` takes 2-3 ms, with spikes of
25 ms, so it never runs on the event loop. :class:`Window` owns every highgui call on one
thread (the main thread, as Qt prefers); the asyncio loop with the engine and the
:class:`~callclient.apps.desktop.controller.DesktopApp` runs in a worker thread
(:func:`run_app`). The GUI thread draws the app's latest immutable state with the tiles'
newest frames at 30 Hz, and :class:`Bridge` hands key codes and the window's closing to the
loop with ``call_soon_threadsafe`` (the app queues keys and runs them in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2

from callclient.apps.desktop.controller import AppConfig, DesktopApp
from callclient.apps.desktop.drawing import Image, compose_frame
from callclient.apps.desktop.state import AppState
from callclient.errors import CallError
from callclient.media.deviceset import DeviceSet

__all__ = ["Bridge", "Login", "Window", "run_app"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Login:
    """Where and as whom the app logs in."""

    server_url: str | Sequence[str]
    """One URL, or several (a cluster's nodes, tried in turn)."""
    sdk_app_id: int
    user_sig: str


class Bridge:
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
        """Called on the loop thread once the app exists (a quit asked for before is kept)."""
        with self._lock:
            self._loop, self._app = loop, app
            quit_early = self._quit_early
        if quit_early:
            app.quit()

    def frame(self, now: float) -> Image:
        """The window image for ``now`` (any thread)."""
        app = self._app
        if app is None:
            return compose_frame(AppState(size=self.config.window, now=now,
                                          status=f"{self.config.user_id} | connecting ..."))
        return compose_frame(dataclasses.replace(app.state, now=now))

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


async def _serve(config: AppConfig, login: Login, devices: DeviceSet, bridge: Bridge) -> int:
    """The loop side: engine, login, app, until quit; returns the exit status."""
    from callclient.engine import CallEngine

    async with CallEngine(login.server_url, devices=devices,
                          audio_processing=config.audio_processing) as engine:
        app = DesktopApp(engine, config)
        bridge.attach(asyncio.get_running_loop(), app)
        app.set_message("logging in ...")
        try:
            await engine.login(login.sdk_app_id, config.user_id, login.user_sig)
        except (CallError, OSError) as exc:
            print(f"callclient app: login failed: {exc}", file=sys.stderr)
            await app.close()
            return 1
        app.set_message(f"logged in to {engine.server_url}")
        try:
            if not app.quit_requested:
                await app.start()
            await app.wait_quit()
        finally:
            await app.close()
    return 0


def run_app(config: AppConfig, login: Login, devices: DeviceSet) -> int:
    """Run the app: the window on this thread, the engine's event loop in a worker thread.

    Returns when the user quits or closes the window, after hanging up and closing the
    engine: 0, or 1 when login failed.
    """
    bridge = Bridge(config)
    status: list[int] = []

    def serve() -> None:
        try:
            status.append(asyncio.run(_serve(config, login, devices, bridge)))
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
