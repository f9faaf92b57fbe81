"""The browser client (``signaling_server/webclient/``) in headless Chromium against the Python
engine and itself.

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
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from callclient.apps.bot import Bot, BotConfig
from callclient.media.analysis import dominant_frequency
from callclient.types import CallMediaType
from callwire import protocol
from callwire.codes import CloseCode, ErrorCode
from signaling_server.server import SignalingServer
from signaling_server.tls import TlsFiles
from tests.helpers.browser import MIC_HZ, Browser, CaptureFiles, make_capture_files, spki_hash
from tests.helpers.certs import make_self_signed
from tests.helpers.servers import new_server
from tests.helpers.waits import T, eventually
from tests.helpers.webuser import WebUser, names

pytestmark = pytest.mark.timeout(180)

BOT_HZ = 440.0

RAW = {"rawaudio": "1"}
"""For pages whose microphone another page measures: Chromium's noise suppression takes the
fake microphone's steady tone for noise and all but removes it (what reaches a page is at
about -48 dBFS); the bot tests keep the default processing and hear it still."""


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
        # The bot's preset is 640x360; on a loaded machine its CPU adaptation may send a
        # lower step of the same shape (docs: video adaptation), never another picture.
        width, height = stats["frameWidth"], stats["frameHeight"]
        assert 160 <= width <= 640 and abs(width / height - 16 / 9) < 0.02, (width, height)
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


async def test_browser_to_browser_then_the_callee_hangs_up(
    browser: Browser, web_server: SignalingServer, tmp_path: Path
) -> None:
    """Two pages (alice offers, both trickle): an audio call, switched to video by the callee,
    media both ways; carol's microphone off shows on alice's tile; carol hangs up."""
    alice = await WebUser.open(browser, web_server.http_url, "alice", nickname="Alice", **RAW)
    carol = await WebUser.open(browser, web_server.http_url, "carol", nickname="Carol", **RAW)
    await alice.call("carol", media="audio")
    assert await carol.ringing() == "Alice (alice) is calling you: audio call"
    await carol.click("accept-button")
    await alice.connected_to("carol")
    await carol.connected_to("alice")
    snap = await alice.wait(lambda s: s["members"][0]["video"] is False, "carol: camera off")
    assert snap["mediaType"] == 1 and not snap["camera"]
    await carol.click("switch-button")
    for me, other in ((alice, "carol"), (carol, "alice")):
        await me.wait(lambda s: s["mediaType"] == 2 and s["camera"], "switched to video")
        await me.media_from(other)
    await carol.click("mic-button")
    await alice.wait(lambda s: s["members"][0]["audio"] is False
                     and s["volumes"].get("carol") == 0, "carol's microphone off")
    await alice.screenshot(tmp_path, "alice-with-carol")
    await carol.click("hangup-button")
    for me in (alice, carol):
        snap = await me.idle()
        log = names(snap["log"])
        assert in_order(log, ["ON_CALL_BEGIN", "USER_ENTER", "CALL_TYPE_CHANGED",
                              "CALLING_END"]), log
    assert in_order(names(snap["log"]), ["ON_CALL_RECEIVED", "ON_CALL_BEGIN"])
    alice_log = names((await alice.snapshot())["log"])
    assert in_order(alice_log, ["USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER",
                                "USER_AUDIO_AVAILABLE", "USER_LEAVE", "CALLING_END"]), alice_log


async def test_group_call_of_two_browsers_and_the_bot(
    browser: Browser, web_server: SignalingServer, tmp_path: Path
) -> None:
    """alice calls carol (a page) and bob (the bot) in one group call: three connections,
    each member gets the other two's media; alice leaves, carol and bob go on; bob hangs up
    and the call ends for carol."""
    bot, heard = await start_bot(web_server, "bob", auto_accept=True)
    try:
        alice = await WebUser.open(browser, web_server.http_url, "alice", **RAW)
        carol = await WebUser.open(browser, web_server.http_url, "carol", **RAW)
        await alice.call("carol bob")
        assert await carol.ringing() == "alice is calling you: video call with carol, bob"
        await carol.click("accept-button")
        await alice.connected_to("bob", "carol")
        await carol.connected_to("alice", "bob")
        for me, others in ((alice, ("bob", "carol")), (carol, ("alice", "bob"))):
            for other in others:
                await me.media_from(other)
        for user in ("alice", "carol"):
            await bot_got_media(bot, heard, user)
        await carol.screenshot(tmp_path, "carol-in-the-group")

        await alice.click("hangup-button")
        await alice.idle()
        await carol.wait(lambda s: [m["userId"] for m in s["members"]] == ["bob"],
                         "alice gone, bob still there")
        await eventually(lambda: any(e["event"] == "on_user_leave" and e["args"] == ["alice"]
                                     for e in bot.events), "bob saw alice leave")
        await bot.engine.hangup()
        snap = await carol.idle()
        log = names(snap["log"])
        assert in_order(log, ["ON_CALL_RECEIVED", "ON_CALL_BEGIN", "USER_ENTER", "USER_ENTER",
                              "USER_LEAVE", "USER_LEAVE", "CALLING_END"]), log
        assert log.count("USER_ENTER") == 2
    finally:
        await bot.close()


async def test_server_restart_mid_call(
    browser: Browser, tmp_path: Path
) -> None:
    """The server stops in the middle of alice's call with bob and comes back on the same
    ports: the page gets ERROR 4503, reconnects and logs in again by itself, finds the call
    gone and ends it (as bob's engine does); a new call then connects."""
    first = new_server(http_port=0)
    await first.start()
    ports = {"port": first.port, "http_port": first.http_port}
    second: SignalingServer | None = None
    bot, _ = await start_bot(first, "bob", auto_accept=True)
    try:
        alice = await WebUser.open(browser, first.http_url, "alice")
        await alice.call("bob")
        await alice.connected_to("bob")
        await alice.media_from("bob")
        await first.stop()
        await alice.wait(lambda s: s["connection"] == "reconnecting", "connection lost")
        second = new_server(**ports)
        await second.start()
        snap = await alice.idle()
        log = [(e["source"], e["event"]) for e in snap["log"]]
        assert in_order(log, [("server", "ON_CALL_BEGIN"), ("server", "ERROR"),
                              ("client", "CONNECTION_LOST"), ("client", "RECONNECTED"),
                              ("client", "CALL_OVER")]), log
        error = next(e for e in snap["log"] if e["event"] == "ERROR")
        assert error["data"]["code"] == 4503
        await eventually(lambda: bot.engine.current_call is None and bot.engine.connected,
                         "bob's engine ended the call and is logged in again", timeout=3 * T)
        await alice.call("bob")
        await alice.connected_to("bob")
        await alice.media_from("bob")
        await alice.screenshot(tmp_path, "after-restart")
    finally:
        await bot.close()
        await browser.reset()
        for server in (second, first):
            if server is not None:
                await server.stop()


class LoginRefuser:
    """A websocket proxy in front of a server that closes its connections on demand and
    answers the next ``refuse`` login requests itself with 4505 (a cluster electing its
    call owner), as a cluster node does."""

    def __init__(self) -> None:
        self.upstream = ""
        self.refuse = 0
        self.refused = 0
        self.clients: set[ServerConnection] = set()
        self.url = ""

    async def handle(self, client: ServerConnection) -> None:
        self.clients.add(client)
        try:
            async with ws_connect(self.upstream, compression=None) as server:
                async def down() -> None:
                    async for frame in server:
                        await client.send(frame)

                pump = asyncio.create_task(down())
                try:
                    async for raw in client:
                        frame = json.loads(raw)
                        if frame.get("type") == "login" and self.refuse > 0:
                            self.refuse -= 1
                            self.refused += 1
                            await client.send(protocol.encode_reply_error(
                                frame["id"], ErrorCode.CLUSTER_UNAVAILABLE, "no call owner"))
                            continue
                        await server.send(raw)
                finally:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await pump
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)


async def test_the_page_retries_a_cluster_unavailable_login_after_a_service_restart(
    browser: Browser,
) -> None:
    """The node closes the page's websocket with 1012 and refuses its next two logins with
    4505: the page keeps reconnecting (4505 is retryable) and is back online, logged in."""
    refuser = LoginRefuser()
    async with ws_serve(refuser.handle, "127.0.0.1", 0, compression=None) as proxy:
        port = next(iter(proxy.sockets)).getsockname()[1]
        refuser.url = f"ws://127.0.0.1:{port}/"
        async with new_server(http_port=0, public_ws_url=refuser.url) as server:
            refuser.upstream = server.url
            alice = await WebUser.open(browser, server.http_url, "alice")
            assert len(refuser.clients) == 1
            refuser.refuse = 2
            await asyncio.gather(*(c.close(CloseCode.SERVICE_RESTART, "call owner changed")
                                   for c in list(refuser.clients)))
            await eventually(lambda: refuser.refused == 2, "two logins refused with 4505",
                             timeout=3 * T)
            snap = await alice.wait(lambda s: s["connection"] == "online"
                                    and any(e["event"] == "RECONNECTED" for e in s["log"]),
                                    "alice logged in again")
            log = [(e["source"], e["event"]) for e in snap["log"]]
            assert in_order(log, [("client", "CONNECTION_LOST"), ("client", "RECONNECTED")]), log
            assert server.connection_count == 1
            await browser.reset()


async def test_tls_page_websocket_and_bot_with_a_self_signed_certificate(
    capture: CaptureFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server on TLS (https page, wss signaling) with a certificate the test made: a
    Chromium told to trust exactly that key (its SPKI hash) loads the page over https, logs in
    over wss and takes a call from the bot, which trusts it through ``SSL_CERT_FILE``."""
    cert = make_self_signed(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert))
    tls = TlsFiles(str(cert.cert), str(cert.key))
    trusting = await Browser.start(
        capture, (f"--ignore-certificate-errors-spki-list={spki_hash(cert.pem)}",))
    try:
        async with new_server(http_port=0, tls=tls) as server:
            assert server.url.startswith("wss://") and server.http_url.startswith("https://")
            erin = await WebUser.open(trusting, server.http_url, "erin")
            assert await erin.tab.js("location.protocol + ' ' + window.isSecureContext") == (
                "https: true")
            bot, heard = await start_bot(server, "bob", call=("erin",))
            try:
                await erin.ringing()
                await erin.click("accept-button")
                await erin.connected_to("bob")
                await erin.media_from("bob")
                await bot_got_media(bot, heard, "erin")
                await erin.screenshot(tmp_path, "erin-over-tls")
                server_url = await erin.tab.js("callApp.client.serverUrl")
                assert server_url == f"wss://127.0.0.1:{server.port}/"
            finally:
                await bot.close()
                await trusting.reset()
            assert await asyncio.to_thread(trusting.console_errors) == []
    finally:
        await trusting.quit()


async def test_the_browser_rejects_a_call(browser: Browser, web_server: SignalingServer) -> None:
    """Reject on the ringing page: the bot hears on_user_reject, the page stops ringing."""
    frank = await WebUser.open(browser, web_server.http_url, "frank")
    bot, _ = await start_bot(web_server, "bob", call=("frank",), media=CallMediaType.AUDIO)
    try:
        assert await frank.ringing() == "bob is calling you: audio call"
        await frank.click("reject-button")
        snap = await frank.idle()
        assert names(snap["log"])[-2:] == ["ON_CALL_RECEIVED", "ON_CALL_CANCELED"]
        await eventually(lambda: "on_user_reject" in bot_names(bot), "bob saw the reject")
        assert bot_names(bot)[-2:] == ["on_user_reject", "on_call_cancelled"], bot_names(bot)
        assert await frank.tab.js("document.getElementById('incoming').hidden")
    finally:
        await bot.close()
