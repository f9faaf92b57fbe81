"""``callclient app``: the desktop app's command line.

:func:`main` parses the arguments into an :class:`~callclient.apps.desktop.controller.AppConfig`
and a :class:`~callclient.apps.desktop.window.Login`, checks that a display and the sound
files exist, picks real or virtual devices and runs the window.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from callclient.apps.desktop.controller import AppConfig
from callclient.apps.desktop.keys import KeyBindings
from callclient.apps.desktop.window import Login, run_app
from callclient.assets import RINGBACK, RINGTONE, asset_path
from callclient.media.deviceset import DeviceSet
from callclient.media.processing import AudioProcessing
from callclient.types import CallMediaType
from callwire.argtypes import websocket_urls

__all__ = ["main"]

logger = logging.getLogger(__name__)


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
        epilog="Keys: " + KeyBindings().summary(),
    )
    parser.add_argument("--user", required=True, help="the user id to log in as")
    parser.add_argument("--server", required=True, type=websocket_urls, metavar="URL[,URL...]",
                        help="signaling server URL (ws://host:port); several, comma-separated, "
                        "for a cluster's nodes")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--call", metavar="ID", help="call this user at start (and with 'd')")
    target.add_argument("--group", metavar="ID,ID", help="call these users as a group call")
    parser.add_argument("--group-id", default="", metavar="GROUP",
                        help="the group whose calls 'd' places and 'j' joins (shows when it "
                        "has a call in progress)")
    parser.add_argument("--audio", action="store_true", help="place audio calls (default video)")
    parser.add_argument("--virtual", action="store_true",
                        help="virtual camera/microphone/speakers instead of real devices")
    parser.add_argument("--audio-processing", choices=("on", "off"), default=None,
                        help="echo cancellation, noise suppression and gain control of the "
                        "microphone (default: on with real devices, off with --virtual)")
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
        audio_processing=None if args.audio_processing is None
        else AudioProcessing() if args.audio_processing == "on" else AudioProcessing.off(),
        group_id=args.group_id,
    )
    return run_app(config, Login(args.server, args.sdkappid, user_sig),
                   _devices(args.virtual, args.user))
