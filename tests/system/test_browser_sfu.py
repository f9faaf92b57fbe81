"""The browser client in group calls through a real Janus subprocess (docs/protocol.md,
"Group media through an SFU"): headless Chromium and Python bots in one VideoRoom.

The page talks to Janus's HTTP API itself (a cross-origin fetch from the server's HTTP port
to Janus's: Janus answers with CORS headers, the server's Content-Security-Policy names the
Janus origin). Media is checked as in test_browser.py: frames decoded and the fake
microphone's tone in the page, frames and the tone at the bots; that the page and the bots
use the SFU (no mesh) is checked on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from callclient.apps.bot import Bot
from callclient.sfu import SfuTransport
from signaling_server.core import CoreConfig
from signaling_server.janus_proc import JanusProcess
from signaling_server.server import SignalingServer
from tests.helpers.browser import MIC_HZ, Browser, CaptureFiles, make_capture_files
from tests.helpers.servers import new_server
from tests.helpers.waits import T, eventually
from tests.helpers.webuser import WebUser, names
from tests.system.test_browser import RAW, Heard, bot_got_media, start_bot

pytestmark = pytest.mark.timeout(240)


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
    """The module's Chromium, its pages closed after the test; a page's error fails it."""
    chromium.console_errors()
    try:
        yield chromium
    finally:
        errors = await asyncio.to_thread(chromium.console_errors)
        await chromium.reset()
    assert errors == [], errors


@pytest.fixture
async def janus() -> AsyncIterator[JanusProcess]:
    async with JanusProcess() as process:
        yield process


@pytest.fixture
async def sfu_server(janus: JanusProcess) -> AsyncIterator[SignalingServer]:
    async with new_server(http_port=0, core=CoreConfig(sfu=(janus.url,))) as server:
        yield server


def sfu_of(bot: Bot) -> SfuTransport:
    """The SFU transport of ``bot``'s call (fails if the call is meshed)."""
    transport = bot.engine._media.transport
    assert isinstance(transport, SfuTransport), transport
    return transport


async def frames_from(user: WebUser, other: str) -> int:
    stats = (await user.tab.js_async("callApp.mediaStats()")).get(other, {})
    return int(stats.get("framesDecoded", 0))


async def video_advances(user: WebUser, other: str, frames: int = 20) -> None:
    """``other``'s video keeps being decoded on ``user``'s page."""
    start = await frames_from(user, other)
    deadline = asyncio.get_running_loop().time() + 3 * T
    while (now := await frames_from(user, other)) < start + frames:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{user.user_id}'s page: {other}'s video stalled at {now} "
                        f"(from {start})")
        await asyncio.sleep(0.3)


async def test_browser_in_an_sfu_group_call_with_two_bots(
    browser: Browser, sfu_server: SignalingServer, tmp_path: Path
) -> None:
    """bob (a bot) group-calls alice (the page) and carol (a bot) through Janus: the page
    publishes once and subscribes to both bots on one connection, media everyone to
    everyone; dave (a bot) invited mid-call is subscribed to, carol leaving is unsubscribed
    from while bob's and dave's video goes on; bob hangs up and dave too: the call ends."""
    alice = await WebUser.open(browser, sfu_server.http_url, "alice", **RAW)
    carol, carol_heard = await start_bot(sfu_server, "carol", auto_accept=True)
    dave, dave_heard = await start_bot(sfu_server, "dave", auto_accept=True)
    bob, bob_heard = await start_bot(sfu_server, "bob", call=("alice", "carol"))
    bots: list[tuple[Bot, Heard]] = [(bob, bob_heard), (carol, carol_heard)]
    try:
        await alice.ringing()
        await alice.click("accept-button")
        snap = await alice.connected_to("bob", "carol")
        assert snap["transport"] == "sfu", snap["transport"]
        for other in ("bob", "carol"):
            await alice.media_from(other)
        for bot, heard in bots:
            await bot_got_media(bot, heard, "alice")
            transport = sfu_of(bot)
            assert transport.published.is_set()
        # The tiles: each member's quality (rated from that member's receivers), volume,
        # camera and microphone, as in a mesh call.
        await alice.wait(
            lambda s: all(m["quality"] in (1, 2) and s["volumes"].get(m["userId"], 0) > 0
                          and m["video"] is True and m["audio"] is True
                          for m in s["members"]) and len(s["members"]) == 2,
            "bob's and carol's tiles: quality, volume, camera and microphone on")
        await alice.screenshot(tmp_path, "alice-with-bob-and-carol")
        # One subscriber connection carries both members.
        pcs = await alice.tab.js(
            "[...callApp.client.call.transport.connections().values()]"
            ".map((pc) => pc === callApp.client.call.transport.subscriber)")
        assert pcs == [True, True], pcs

        await bob.engine.invite_user(["dave"])
        await alice.connected_to("bob", "carol", "dave")
        await alice.media_from("dave")
        await bot_got_media(dave, dave_heard, "alice")

        await carol.engine.hangup()
        await alice.wait(lambda s: sorted(m["userId"] for m in s["members"]) == ["bob", "dave"],
                         "carol gone, bob and dave still there")
        for other in ("bob", "dave"):
            await video_advances(alice, other)
        await eventually(lambda: "carol" not in sfu_of(bob).peers, "bob stopped receiving carol")
        await alice.screenshot(tmp_path, "alice-with-bob-and-dave")

        await bob.engine.hangup()
        await dave.engine.hangup()
        snap = await alice.idle()
        log = names(snap["log"])
        assert log.count("SFU_ROOM") == 1, log
        assert log.index("SFU_ROOM") < log.index("ON_CALL_BEGIN") < log.index("USER_ENTER")
        assert log.count("USER_ENTER") == 3 and log[-1] == "CALLING_END", log
    finally:
        for bot in (bob, carol, dave):
            await bot.close()


@pytest.fixture
async def janus_pair() -> AsyncIterator[tuple[JanusProcess, JanusProcess]]:
    async with JanusProcess() as first, JanusProcess() as second:
        yield first, second


async def test_two_browsers_and_a_bot_move_with_the_call_when_its_janus_dies(
    browser: Browser, janus_pair: tuple[JanusProcess, JanusProcess], tmp_path: Path
) -> None:
    """alice and carol (pages) and bob (a bot) in an SFU call, media everyone to everyone;
    SIGKILL of the call's Janus: the server moves the call to the other instance (SFU_ROOM
    with a higher epoch), both pages publish and subscribe there and media comes back both
    ways; nobody left (no USER_LEAVE), the call goes on."""
    urls = tuple(j.url for j in janus_pair)
    async with new_server(http_port=0, core=CoreConfig(sfu=urls)) as server:
        alice = await WebUser.open(browser, server.http_url, "alice", **RAW)
        carol = await WebUser.open(browser, server.http_url, "carol", **RAW)
        bob, bob_heard = await start_bot(server, "bob", auto_accept=True)
        try:
            await alice.call("bob carol")
            await carol.ringing()
            await carol.click("accept-button")
            pages = ((alice, ("bob", "carol")), (carol, ("alice", "bob")))
            for me, others in pages:
                snap = await me.connected_to(*others)
                assert snap["transport"] == "sfu"
                for other in others:
                    await me.media_from(other)
            for user in ("alice", "carol"):
                await bot_got_media(bob, bob_heard, user)
            first = sfu_of(bob).room
            hosting = next(j for j in janus_pair if j.url == first.url)
            other_url = next(j.url for j in janus_pair if j is not hosting)

            hosting.kill()
            for me, others in pages:
                await me.wait(lambda s: names(s["log"]).count("SFU_ROOM") == 2,
                              "a second SFU_ROOM (the call moved)")
                room = await me.tab.js("callApp.client.call.transport.room")
                assert room["url"] == other_url and room["epoch"] == first.epoch + 1, room
                for other in others:
                    await me.media_from(other)  # counted on the new subscriber connection
            frames = {u: bob.engine.remote_stats[u].video_frames for u in ("alice", "carol")}
            for user in ("alice", "carol"):
                await eventually(
                    lambda user=user: bob.engine.remote_stats[user].video_frames
                    >= frames[user] + 30, f"bob decodes {user} again", timeout=3 * T)
            await alice.screenshot(tmp_path, "alice-after-the-move")
            for me, _ in pages:
                log = names((await me.snapshot())["log"])
                assert "USER_LEAVE" not in log and "CALLING_END" not in log, log
            assert not [e for e in bob.events if e["event"] == "on_user_leave"]
        finally:
            await bob.close()
            await browser.reset()
    # The pages' requests to the killed Janus failed (Chromium logs each one: refused once
    # it is gone, reset for a long poll in flight when it died); any other error fails the
    # test (the fixture checks what is left).
    errors = await asyncio.to_thread(browser.console_errors)
    unexpected = [e for e in errors
                  if not (e.startswith(hosting.url) and (
                      "ERR_CONNECTION_REFUSED" in e or "ERR_CONNECTION_RESET" in e))]
    assert unexpected == [], unexpected


async def test_an_audio_sfu_call_switched_to_video_publishes_the_new_camera(
    browser: Browser, sfu_server: SignalingServer
) -> None:
    """alice (the page) audio-calls bob and carol (bots) through Janus: she publishes a
    video transceiver with no track, the bots hear her; she switches to video: the camera
    she opens replaces the track (no new negotiation) and both bots decode it."""
    alice = await WebUser.open(browser, sfu_server.http_url, "alice", **RAW)
    bob, bob_heard = await start_bot(sfu_server, "bob", auto_accept=True)
    carol, carol_heard = await start_bot(sfu_server, "carol", auto_accept=True)
    try:
        await alice.call("bob carol", media="audio")
        await alice.connected_to("bob", "carol")
        for bot, heard in ((bob, bob_heard), (carol, carol_heard)):
            await eventually(lambda heard=heard: abs(heard.tone("alice")[0] - MIC_HZ) < 15,
                             f"{bot.config.user_id} hears alice", timeout=3 * T)
            stats = bot.engine.remote_stats.get("alice")
            assert stats is None or stats.video_frames == 0, stats
        for other in ("bob", "carol"):
            await eventually_async(lambda other=other: audio_from(alice, other),
                                   f"alice hears {other}")
        offers = await alice.tab.js("callApp.client.call.transport.publisher"
                                    ".getTransceivers().map((t) => t.sender.track?.kind ?? null)")
        assert offers == ["audio", None], offers
        await alice.click("switch-button")
        await alice.wait(lambda s: s["mediaType"] == 2 and s["camera"], "switched to video")
        for bot in (bob, carol):
            await eventually(
                lambda bot=bot: (stats := bot.engine.remote_stats.get("alice")) is not None
                and stats.video_frames >= 30, f"{bot.config.user_id} decodes alice's camera",
                timeout=3 * T)
    finally:
        for bot in (bob, carol):
            await bot.close()


async def audio_from(user: WebUser, other: str) -> bool:
    stats = (await user.tab.js_async("callApp.mediaStats()")).get(other, {})
    return bool(stats.get("audioPackets", 0) > 0 and stats.get("rms", 0.0) > 0.01)


async def eventually_async(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 3 * T
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not true within {3 * T:g} s: {what}")
        await asyncio.sleep(0.3)
