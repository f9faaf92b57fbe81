"""The desktop app in a real X server (Xvfb) against a bot: screenshots, keys, closing.

Needs the Debian packages ``xvfb``, ``xdotool`` and ``x11-apps`` (:mod:`tests.helpers.xvfb`);
the test fails, not skips, when one is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
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
from callclient.sfu import SfuTransport
from signaling_server.core import CoreConfig
from signaling_server.janus_proc import JanusProcess
from signaling_server.server import SignalingServer
from tests.helpers.apps import logged_process
from tests.helpers.servers import APP, new_server, sig
from tests.helpers.xvfb import close_window, find_window, run_x, screenshot

Image = npt.NDArray[np.uint8]
ROOT = Path(__file__).resolve().parents[2]
WINDOW = (1280, 720)
ALICE_WINDOW = "^callclient - alice$"

pytestmark = pytest.mark.timeout(180)


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
    async with logged_process(
        sys.executable, "-m", "callclient.apps.desktop", "--user", "alice",
        "--server", server.url, "--virtual", "--window", f"{WINDOW[0]}x{WINDOW[1]}", *args,
        log=log, env=dict(os.environ, DISPLAY=display), cwd=ROOT,
    ) as proc:
        yield proc


async def press(display: str, window: int, *keys: str) -> None:
    """Focus the window and type ``keys`` (xdotool key names)."""
    await asyncio.to_thread(run_x, display, "xdotool", "windowfocus", "--sync", str(window),
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
        window, *origin_list = await find_window(display, ALICE_WINDOW)
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
        window, _, _ = await find_window(display, ALICE_WINDOW)
        await press(display, window, "q")
        await bot.wait("on_call_cancelled")
        async with asyncio.timeout(15):
            assert await proc.wait() == 0, (tmp_path / "app.log").read_text()


@pytest.fixture
async def sfu_server() -> AsyncIterator[SignalingServer]:
    """A signaling server carrying group calls through a Janus subprocess."""
    async with JanusProcess() as janus, new_server(core=CoreConfig(sfu=(janus.url,))) as srv:
        yield srv


async def test_app_in_a_four_person_sfu_call_shows_a_live_tile_per_member(
    display: str, sfu_server: SignalingServer, tmp_path: Path
) -> None:
    """The app group-calls three engines through Janus (``--group bob,carol,dave``): the
    window has four tiles, and each of the three remote tiles shows that member's stamp
    advancing; a member hanging up leaves three tiles, still live; 'h' leaves the call."""
    users = ("bob", "carol", "dave")
    bots: list[Bot] = []
    try:
        for user in users:
            engine = CallEngine(sfu_server.url, devices=DeviceSet.virtual(user, fps=15.0))
            bots.append(Bot(engine))
            await engine.login(APP, user, sig(user))
            await engine.open_camera()
        async with app_process(display, sfu_server, tmp_path / "app.log",
                               "--group", ",".join(users)) as proc:
            for bot in bots:
                await bot.wait("on_call_received")
                await bot.engine.accept()
            for bot in bots:
                await bot.wait("on_call_begin")
                assert isinstance(bot.engine._media.transport, SfuTransport)
            window, *origin_list = await find_window(display, ALICE_WINDOW)
            origin = (origin_list[0], origin_list[1])
            await live_tiles(display, origin, 4, tmp_path, "four")

            await bots[2].engine.hangup()
            await live_tiles(display, origin, 3, tmp_path, "three")

            await press(display, window, "h")  # bob and carol go on without alice
            for bot in bots[:2]:
                await bot.wait("on_user_leave", match=lambda e: e.args == ("alice",))
            await asyncio.to_thread(close_window, display, window)
            async with asyncio.timeout(15):
                assert await proc.wait() == 0, (tmp_path / "app.log").read_text()
    finally:
        for bot in bots:
            await bot.engine.close()


async def live_tiles(display: str, origin: tuple[int, int], count: int, out: Path,
                     name: str, within: float = 40.0) -> None:
    """Every remote tile of a ``count``-tile window shows a stamp that advances by 5 frames."""
    first: dict[int, int] = {}
    advanced: set[int] = set()
    rects = Layout(WINDOW, count).rects
    deadline = time.monotonic() + within
    while len(advanced) < count - 1:
        shot = await asyncio.to_thread(screenshot, display)
        for index in range(1, count):
            x, y, w, h = rects[index]
            found = read_stamp(shot[origin[1] + y : origin[1] + y + h,
                                    origin[0] + x : origin[0] + x + w])
            if found is None:
                continue
            first.setdefault(index, found[0])
            if found[0] > first[index] + 5:
                advanced.add(index)
        if time.monotonic() > deadline:
            cv2.imwrite(str(out / f"{name}-screen.png"), shot)
            pytest.fail(f"{count} tiles: only tiles {sorted(advanced)} advanced, stamps first "
                        f"seen {first} (screenshot {out / f'{name}-screen.png'})")
        await asyncio.sleep(0.3)
    cv2.imwrite(str(out / f"{name}-screen.png"), shot)
