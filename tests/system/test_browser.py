"""The browser client (``web/``) in headless Chromium against the Python engine and itself.

Each test runs a real server with the HTTP port (the page, its config and the development
login) and drives the page as a user would: it types, clicks Call, Accept, Hang up. The Python
side is the bot (:class:`callclient.apps.bot.Bot`, the program behind ``callclient bot``).
Media is checked at both ends: frames decoded and audio energy in the page (WebRTC statistics
and a WebAudio analyser), frames and the fake microphone's 660 Hz tone at the bot. Event order
is checked on the page's TUICallEvent log and the bot's callbacks. Every test saves a
screenshot into its ``tmp_path`` and prints its path.

One Chromium serves the whole module (a page per user); the calls run over the machine's own
interfaces like the other engine tests, with no STUN server and nothing leaving the host.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from callclient.apps.bot import Bot, BotConfig
from callclient.media.analysis import dominant_frequency
from signaling_server.server import SignalingServer
from tests.helpers.browser import MIC_HZ, Browser, CaptureFiles, make_capture_files
from tests.helpers.servers import new_server
from tests.helpers.waits import T, eventually
from tests.helpers.webuser import WebUser, names

pytestmark = pytest.mark.timeout(180)

BOT_HZ = 440.0


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> CaptureFiles:
    return make_capture_files(tmp_path_factory.mktemp("capture"))


@pytest.fixture(scope="module")
def chromium(capture: CaptureFiles) -> Iterator[Browser]:
    browser = Browser(capture)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
async def browser(chromium: Browser) -> AsyncIterator[Browser]:
    """The module's Chromium, its pages closed after the test (before the server stops);
    the test fails if a page logged an error."""
    chromium.console_errors()  # forget earlier tests' messages
    try:
        yield chromium
    finally:
        errors = await asyncio.to_thread(chromium.console_errors)
        await chromium.reset()
    assert errors == [], errors


@pytest.fixture
async def web_server() -> AsyncIterator[SignalingServer]:
    async with new_server(http_port=0) as server:
        yield server


class Heard:
    """The audio a bot receives from each remote user."""

    def __init__(self, bot: Bot) -> None:
        self.blocks: dict[str, list[npt.NDArray[np.int16]]] = {}
        bot.engine.add_audio_tap(self.tap)

    def tap(self, user_id: str, block: npt.NDArray[np.int16]) -> None:
        self.blocks.setdefault(user_id, []).append(block)

    def tone(self, user_id: str) -> tuple[float, float]:
        """Dominant frequency and RMS (0..1) of the last second from ``user_id``."""
        blocks = self.blocks.get(user_id, [])[-50:]
        if len(blocks) < 50:
            return 0.0, 0.0
        samples = np.concatenate(blocks)
        rms = float(np.sqrt(np.mean((samples / 32768.0) ** 2)))
        return dominant_frequency(samples), rms


async def start_bot(server: SignalingServer, user: str, **config: Any) -> tuple[Bot, Heard]:
    bot = Bot(BotConfig(user, server.url, tone_hz=BOT_HZ, **config))
    heard = Heard(bot)
    await bot.start()
    return bot, heard


async def bot_got_media(bot: Bot, heard: Heard, user: str) -> None:
    """The bot decoded ``user``'s video and hears the page's 660 Hz microphone."""
    engine = bot.engine
    await eventually(lambda: engine.remote_stats.get(user) is not None
                     and engine.remote_stats[user].video_frames >= 30,
                     f"{bot.config.user_id} decoded 30 frames of {user}", timeout=3 * T)
    await eventually(lambda: abs(heard.tone(user)[0] - MIC_HZ) < 15 and heard.tone(user)[1] > 0.005,
                     f"{bot.config.user_id} hears {user}'s {MIC_HZ:g} Hz tone "
                     f"(now {heard.tone(user)})", timeout=3 * T)


def bot_names(bot: Bot) -> list[str]:
    quiet = {"on_user_voice_volume_changed", "on_user_network_quality_changed", "bot_ready"}
    return [e["event"] for e in bot.events if e["event"] not in quiet]


def in_order(seen: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in ``seen`` in that order (other names may come between)."""
    it = iter(seen)
    return all(name in it for name in expected)


async def test_browser_calls_the_bot_which_hangs_up(
    browser: Browser, web_server: SignalingServer, tmp_path: Path
) -> None:
    """alice (the page, lower id: it offers, trickling) calls bob (the bot, auto-accept):
    media flows both ways, each side sees the other's camera and microphone available, the
    tiles show the volume and quality; bob hangs up: the page gets USER_LEAVE, CALLING_END."""
    bot, heard = await start_bot(web_server, "bob", auto_accept=True)
    try:
        alice = await WebUser.open(browser, web_server.http_url, "alice")
        await alice.call("bob")
        await alice.connected_to("bob")
        stats = await alice.media_from("bob")
        assert (stats["frameWidth"], stats["frameHeight"]) == (640, 360)
        await bot_got_media(bot, heard, "alice")
        engine = bot.engine
        assert engine.current_call is not None
        snap = await alice.wait(
            lambda s: s["members"][0]["quality"] in (1, 2) and s["volumes"].get("bob", 0) > 0
            and s["members"][0]["video"] is True and s["members"][0]["audio"] is True,
            "bob's tile: quality, volume, camera and microphone on")
        assert snap["timer"] != "00:00" or await alice.wait(
            lambda s: s["timer"] != "00:00", "the call timer runs")
        await alice.screenshot(tmp_path, "alice-calls-bob")
        assert ("on_user_video_available", ["alice", True]) in [
            (e["event"], e["args"]) for e in bot.events]

        await engine.hangup()
        snap = await alice.idle()
        log = names(snap["log"])
        assert in_order(log, ["SDK_READY", "USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER",
                              "USER_LEAVE", "CALLING_END"]), log
        assert log.count("USER_ENTER") == 1
        assert in_order(bot_names(bot), ["on_call_received", "on_call_begin", "on_user_join",
                                         "on_call_end"]), bot_names(bot)
    finally:
        await bot.close()


async def test_the_bot_calls_the_browser_which_answers_and_hangs_up(
    browser: Browser, web_server: SignalingServer, tmp_path: Path
) -> None:
    """bob (the bot, lower id: it offers) calls dave (the page, sending complete SDP without
    trickling): the page rings with the caller's name, Accept connects with media both ways;
    dave's Hang up ends it for bob (on_user_leave, on_call_end)."""
    dave = await WebUser.open(browser, web_server.http_url, "dave", trickle="0",
                              nickname="Dave")
    bot, heard = await start_bot(web_server, "bob", call=("dave",))
    try:
        text = await dave.ringing()
        assert text == "bob is calling you: video call"
        await dave.screenshot(tmp_path, "dave-ringing")
        await dave.click("accept-button")
        await dave.connected_to("bob")
        await dave.media_from("bob")
        await bot_got_media(bot, heard, "dave")
        await dave.screenshot(tmp_path, "dave-with-bob")
        mark = len(bot.events)
        await dave.click("hangup-button")
        snap = await dave.idle()
        await eventually(lambda: "on_call_end" in [e["event"] for e in bot.events[mark:]],
                         "bob's call ended")
        after = [e["event"] for e in bot.events[mark:]
                 if e["event"].startswith("on_user_leave") or e["event"] == "on_call_end"]
        assert after == ["on_user_leave", "on_call_end"], after
        log = names(snap["log"])
        assert in_order(log, ["SDK_READY", "ON_CALL_RECEIVED", "ON_CALL_BEGIN", "USER_ENTER",
                              "CALLING_END"]), log
        assert any(e["event"] == "on_user_join" and e["args"] == ["dave"] for e in bot.events)
    finally:
        await bot.close()
