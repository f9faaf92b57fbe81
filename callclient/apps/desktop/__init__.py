"""The desktop app: an OpenCV window with a tile per call participant, driven by keys.

``callclient app --user ID --server URL [--call ID | --group ID,ID] [--virtual]`` (or
``python -m callclient.apps.desktop``) logs in, previews the camera, places or answers calls
and draws a grid of tiles: the local preview and one per remote user, each with the user's
name, call state and timer, a volume meter and network-quality bars. Keys drive the engine
(``?`` shows them). Incoming calls ring (a ringtone through the selected output), the caller
hears a ringback until the call connects; closing the window hangs up and exits.

One module per concern, each importing only those above it in this list:

- :mod:`~callclient.apps.desktop.state`: what the window shows, as immutable data.
- :mod:`~callclient.apps.desktop.drawing`: pure functions that draw a state into an image.
- :mod:`~callclient.apps.desktop.keys`: the key table, key codes to commands.
- :mod:`~callclient.apps.desktop.phase`: the call phase, from the engine's call status.
- :mod:`~callclient.apps.desktop.controller`: :class:`DesktopApp`, engine callbacks and
  commands in, states out.
- :mod:`~callclient.apps.desktop.window`: the OpenCV window thread, the event-loop thread and
  the hand-off between them.
- :mod:`~callclient.apps.desktop.cli`: the command line, :func:`main`.
"""

from __future__ import annotations

# OpenCV before PyAV: with av imported first, cv2.namedWindow never returns (both wheels
# bundle their own libxcb and FFmpeg). Importing any module of this package runs this
# line before the modules below load av (through the devices and the tones).
import cv2  # noqa: F401

from callclient.apps.desktop.cli import main
from callclient.apps.desktop.controller import AppConfig, DesktopApp
from callclient.apps.desktop.drawing import Layout, compose_frame
from callclient.apps.desktop.keys import Command, KeyBindings
from callclient.apps.desktop.phase import Phase
from callclient.apps.desktop.state import AppState, TileState, TileView
from callclient.apps.desktop.window import run_app

__all__ = [
    "AppConfig",
    "AppState",
    "Command",
    "DesktopApp",
    "KeyBindings",
    "Layout",
    "Phase",
    "TileState",
    "TileView",
    "compose_frame",
    "main",
    "run_app",
]
