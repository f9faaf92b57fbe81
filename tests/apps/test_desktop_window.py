"""The desktop app's thread hand-off without a window: Bridge, and OpenCV loaded before PyAV.

The real window (highgui under Xvfb) is tested in ``tests/system/test_desktop_xvfb.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import numpy as np

from callclient.apps.desktop.controller import AppConfig, DesktopApp
from callclient.apps.desktop.drawing import STATUS_HEIGHT
from callclient.apps.desktop.window import Bridge
from callclient.types import CallMediaType
from tests.helpers.desktop import FakeEngine
from tests.helpers.waits import eventually

CONFIG = AppConfig("alice", media_type=CallMediaType.AUDIO, window=(320, 240))


def test_importing_the_app_loads_opencv_before_pyav() -> None:
    """Any module of the package loads cv2 before av (the other way round the window hangs)."""
    code = (
        "import sys, callclient.apps.desktop.controller\n"
        "names = list(sys.modules)\n"
        "print(names.index('cv2') < names.index('av'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "True", done.stderr


async def test_quit_before_the_app_exists_is_kept() -> None:
    """Closing the window while the loop side still logs in quits the app once it exists."""
    bridge = Bridge(CONFIG)
    bridge.request_quit()
    bridge.key(ord("?"))  # nobody to tell yet: dropped, not an error
    app = DesktopApp(FakeEngine(), CONFIG)
    bridge.attach(asyncio.get_running_loop(), app)
    assert app.quit_requested
    await app.close()


async def test_keys_and_quit_cross_from_another_thread() -> None:
    """Keys typed on the GUI thread reach the app on the loop, in order; so does closing."""
    engine = FakeEngine()
    app = DesktopApp(engine, CONFIG)
    bridge = Bridge(CONFIG)
    bridge.attach(asyncio.get_running_loop(), app)
    await app.start()

    def gui() -> None:
        for key in "?cc":
            bridge.key(ord(key))

    thread = threading.Thread(target=gui)
    thread.start()
    thread.join()
    await eventually(lambda: len(engine.calls_made) == 2, "both camera keys ran")
    assert app.state.show_help
    assert engine.calls_made[0][0] == "open_camera" and engine.calls_made[1] == ("close_camera",)
    assert not app.quit_requested
    threading.Thread(target=bridge.request_quit).start()
    await asyncio.wait_for(app.wait_quit(), 10)
    await app.close()


async def test_frame_draws_the_app_state_at_the_given_time() -> None:
    """Before the app exists the window shows a status line; after, the app's state."""
    bridge = Bridge(CONFIG)
    connecting = bridge.frame(0.0)
    assert connecting.shape == (240, 320, 3)
    assert int(connecting[-STATUS_HEIGHT:].max()) > 200  # "alice | connecting ..."
    app = DesktopApp(FakeEngine(), CONFIG)
    bridge.attach(asyncio.get_running_loop(), app)
    shown = bridge.frame(5.0)
    assert shown.shape == (240, 320, 3)
    assert not np.array_equal(connecting, shown)  # a tile appears
    await app.close()
