"""``callclient``: the headless bot, the loopback measurement and the demo.

``callclient bot --user ID --server URL [--auto-accept] [--call IDS] [--play FILE]
[--record DIR] ...`` logs events as JSON lines on stdout and stops on SIGINT/SIGTERM with its
recordings finalized. ``callclient loopback [--users N] [--seconds S] [--resolution R]`` runs a
whole call between virtual-device engines (one process each from 3 users, through a Janus
subprocess with --sfu) and prints what each user received and the frames dropped.
``callclient demo`` is ``make demo`` (``--group``: ``make demo-group``, ``--cluster``:
``make cluster-demo``); ``callclient --version`` prints the version. Errors are
one line on stderr: exit 2 for bad usage, 1 for failures (unreachable server, refused login,
unreadable file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from callclient.errors import CallError
from callclient.media.processing import AudioProcessing
from callclient.types import CallMediaType, Resolution, resolution_size
from callwire.argtypes import LOG_LEVELS, positive_float, positive_int, websocket_urls
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.version import __version__

__all__ = ["main", "parse_audio_processing", "parse_resolution"]

logger = logging.getLogger(__name__)

PROG = "callclient"


def parse_resolution(text: str) -> Resolution:
    """A :class:`Resolution` from its name (``RESOLUTION_1280_720``), ``1280x720``,
    ``1280_720``, a height with ``p`` (``720p``: the widest) or its numeric value (``4``)."""
    value = text.strip().upper()
    for res in Resolution:
        width, height = resolution_size(res)
        if value in (res.name, res.name.removeprefix("RESOLUTION_"), f"{width}X{height}",
                     str(int(res))):
            return res
    if value.endswith("P") and value[:-1].isdigit():
        matches = [r for r in Resolution if resolution_size(r)[1] == int(value[:-1])]
        if matches:  # 720p: the widest (16:9) preset of that height
            return max(matches, key=lambda r: resolution_size(r)[0])
    choices = ", ".join(f"{w}x{h}" for w, h in (resolution_size(r) for r in Resolution))
    raise argparse.ArgumentTypeError(f"unknown resolution {text!r} (choose from {choices})")


def _media(text: str) -> CallMediaType:
    try:
        media = CallMediaType[text.strip().upper()]
    except KeyError:
        media = CallMediaType.NONE
    if media is CallMediaType.NONE:
        raise argparse.ArgumentTypeError(f"media must be audio or video, not {text!r}")
    return media


def _users(text: str) -> int:
    value = positive_int(text)
    if not 2 <= value <= 9:
        raise argparse.ArgumentTypeError(f"--users must be between 2 and 9, not {value}")
    return value


def _user_list(text: str) -> list[str]:
    users = [u.strip() for u in text.split(",") if u.strip()]
    if not users:
        raise argparse.ArgumentTypeError(f"{text!r} names no user")
    return users


_STAGES = {"aec": "echo_cancellation", "ns": "noise_suppression", "agc": "auto_gain",
           "hpf": "high_pass_filter"}


def parse_audio_processing(text: str) -> AudioProcessing:
    """``all`` / ``on``, ``off``, or the stages to run, e.g. ``aec,ns`` (of aec, ns, agc, hpf)."""
    value = text.strip().lower()
    if value in ("all", "on"):
        return AudioProcessing()
    if value in ("off", "none"):
        return AudioProcessing.off()
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in _STAGES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown audio processing {text!r}: give all, off or stages from "
            f"{', '.join(_STAGES)} (e.g. aec,ns)"
        )
    return AudioProcessing.off().with_changes(**{_STAGES[name]: True for name in names})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="callclient programs: a headless bot, a loopback measurement, "
        "the demo."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{bot,loopback,demo,app,devices}",
                                     required=True)
    # `app` and `devices` have their own parsers (see _DELEGATED); listed here for --help.
    commands.add_parser("app", help="the desktop app: a call window (see `callclient app -h`)",
                        add_help=False)
    commands.add_parser("devices", help="list cameras, microphones and speakers",
                        add_help=False)

    bot = commands.add_parser(
        "bot", help="a headless call participant that can record what it receives",
        description="Log in, answer (--auto-accept) and/or place (--call) calls with virtual "
        "or file-backed devices, record each remote user (--record), log every event on "
        "stdout. Stops on SIGINT/SIGTERM, after --seconds, or when the call it placed ends "
        "(unless --auto-accept).",
    )
    bot.add_argument("--user", required=True, help="user id to log in as")
    bot.add_argument("--server", required=True, type=websocket_urls, metavar="URL[,URL...]",
                     help="signaling server URL, e.g. ws://127.0.0.1:8765; several, "
                     "comma-separated, for a cluster's nodes (tried in turn)")
    bot.add_argument("--sdkappid", type=positive_int, default=DEV_SDK_APP_ID,
                     help="application id (default: the development one, %(default)s)")
    secret = bot.add_mutually_exclusive_group()
    secret.add_argument("--secret-key", default=DEV_SECRET_KEY,
                        help="key to make the userSig with (default: the development key)")
    secret.add_argument("--usersig", help="a ready userSig instead of --secret-key")
    bot.add_argument("--auto-accept", action="store_true", help="accept every invitation")
    bot.add_argument("--call", type=_user_list, action="extend", default=[], metavar="IDS",
                     help="comma-separated users to call at start (several: a group call)")
    bot.add_argument("--media", type=_media, default=CallMediaType.VIDEO,
                     metavar="{audio,video}", help="media of the calls placed (default video)")
    bot.add_argument("--play", type=Path, metavar="FILE",
                     help="media file to send (its audio as microphone, its video as camera), "
                     "looped; default: a tone and the stamped test pattern")
    bot.add_argument("--record", type=Path, metavar="DIR",
                     help="record each remote user to DIR/<user>.mp4 and DIR/<user>.wav")
    bot.add_argument("--seconds", type=positive_float,
                     help="hang up and exit after this many seconds")
    bot.add_argument("--resolution", type=parse_resolution,
                     default=Resolution.RESOLUTION_640_360,
                     help="video sent: preset name or value, e.g. 1280x720 (default 640x360)")
    bot.add_argument("--tone", type=positive_float, default=440.0, metavar="HZ",
                     help="tone of the virtual microphone (default %(default)s Hz)")
    bot.add_argument("--audio-processing", type=parse_audio_processing, nargs="?",
                     const=AudioProcessing(), default=None, metavar="STAGES",
                     help="process the microphone: echo cancellation, noise suppression, "
                     "gain control, high-pass filter (all, off, or e.g. aec,ns; alone: all; "
                     "default off, the bot's devices being virtual)")
    bot.add_argument("--nickname", default="", help="the nickname others see for the bot")
    fmt = bot.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="human", action="store_false", default=False,
                     help="log events as JSON lines (default)")
    fmt.add_argument("--human", dest="human", action="store_true",
                     help="log events as readable lines")
    _add_log_level(bot)

    loop = commands.add_parser(
        "loopback", help="a whole call between virtual-device engines, with measurements",
        description="Start an embedded server and N engines with virtual devices; user0 calls "
        "the others; report per user and per remote: frames, fps, glass-to-glass latency, "
        "setup time and the tone heard.",
    )
    loop.add_argument("--users", type=_users, default=2, help="participants, 2..9 (default 2)")
    loop.add_argument("--seconds", type=positive_float, default=5.0,
                      help="measurement window (default %(default)s)")
    loop.add_argument("--resolution", type=parse_resolution,
                      default=Resolution.RESOLUTION_640_360,
                      help="video resolution (default 640x360)")
    loop.add_argument("--media", type=_media, default=CallMediaType.VIDEO,
                      metavar="{audio,video}", help="call media (default video)")
    loop.add_argument("--fps", type=positive_float, default=30.0,
                      help="camera frame rate (default %(default)s)")
    procs = loop.add_mutually_exclusive_group()
    procs.add_argument("--processes", dest="processes", action="store_true", default=None,
                       help="each engine in its own process (default with 3 users or more)")
    procs.add_argument("--one-process", dest="processes", action="store_false",
                       help="every engine in this process")
    loop.add_argument("--sfu", action="store_true",
                      help="start a Janus subprocess and carry the call through it")
    loop.add_argument("--json", action="store_true", help="print the report as JSON")
    loop.add_argument("--events", action="store_true", help="print events as they happen")
    _add_log_level(loop)

    demo = commands.add_parser(
        "demo", help="alice calls bob (a bot); events, fps, latency and a PNG",
        description="Embedded server; alice calls a `callclient bot` (bob) with virtual "
        "devices; prints the events, then fps and latency both ways; writes what alice "
        "sees of bob to OUT/alice-sees-bob.png.",
    )
    _add_demo_arguments(demo)
    return parser


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=positive_float, default=8.0,
                        help="length of the call (default %(default)s)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--group", action="store_true",
                      help="alice group-calls two bots through a Janus subprocess (the SFU)")
    kind.add_argument("--cluster", action="store_true",
                      help="a 3-node cluster (local Redis and PostgreSQL, make cluster-demo); "
                      "alice and bob on different nodes")
    parser.add_argument("--kill-leader", action="store_true",
                        help="with --cluster: SIGKILL the call owner's node mid-call; the call "
                        "goes on")
    parser.add_argument("--out", type=Path, default=Path("out"),
                        help="output directory (default %(default)s)")
    _add_log_level(parser)


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="WARNING",
                        help="library logging on stderr (default %(default)s)")


def _delegated(command: str) -> Callable[[list[str]], int]:
    if command == "app":
        from callclient.apps.desktop import main as app_main

        return app_main
    from callclient.apps.devices_cmd import main as devices_main

    return devices_main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``callclient``; returns the process exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in ("app", "devices"):
        return _delegated(arguments[0])(arguments[1:])
    parser = _parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "bot":
            return asyncio.run(_bot(args))
        if args.command == "loopback":
            return asyncio.run(_loopback(args))
        from callclient.apps.demo import run_demo, run_group_demo

        if args.cluster:
            from callclient.apps.cluster_demo import run_cluster_demo

            return asyncio.run(run_cluster_demo(seconds=args.seconds, out=args.out,
                                                kill_leader=args.kill_leader))
        if args.kill_leader:
            print(f"{PROG} demo: error: --kill-leader needs --cluster", file=sys.stderr)
            return 2
        if args.group:
            return asyncio.run(run_group_demo(seconds=args.seconds, out=args.out))
        return asyncio.run(run_demo(seconds=args.seconds, out=args.out))
    except CallError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _bot(args: argparse.Namespace) -> int:
    from callclient.apps.bot import Bot, BotConfig
    from callclient.apps.events import format_human, format_json

    config = BotConfig(
        user_id=args.user,
        server_url=args.server,
        sdk_app_id=args.sdkappid,
        secret_key=args.secret_key,
        user_sig=args.usersig,
        auto_accept=args.auto_accept,
        call=tuple(args.call),
        media=args.media,
        play=args.play,
        record=args.record,
        seconds=args.seconds,
        resolution=args.resolution,
        tone_hz=args.tone,
        audio_processing=args.audio_processing,
        nickname=args.nickname,
    )
    out: TextIO = sys.stdout

    def emit(record: dict[str, Any]) -> None:
        line = format_human(record) if args.human else format_json(record)
        print(line, file=out, flush=True)

    bot = Bot(config, emit)
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        return await bot.run(stop)


async def _loopback(args: argparse.Namespace) -> int:
    from callclient.apps.events import format_human
    from callclient.apps.loopback import run_loopback

    def show(record: dict[str, Any]) -> None:
        print(format_human(record), flush=True)

    stop = asyncio.Event()
    with _stop_on_signals(stop):
        run = asyncio.ensure_future(run_loopback(
            users=args.users, seconds=args.seconds, resolution=args.resolution,
            media=args.media, fps=args.fps, on_event=show if args.events else None,
            processes=args.processes, sfu=args.sfu,
        ))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([run, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            return 130
        report = run.result()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM while inside the block."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
