"""``make demo`` / ``callclient demo``: alice calls bob, a real ``callclient bot`` subprocess.

An embedded signaling server on a free port; bob is started as ``python -m callclient bot
--auto-accept --record OUT/bob-recordings`` (a subprocess, so the demo shows the actual bot
program, its JSON event log and its recordings, not a second engine in the same process);
alice is a :class:`CallEngine` with virtual devices in this process. Both sides' events are
printed as they happen. After ``seconds`` of call the demo prints fps and glass-to-glass
latency in both directions (bob -> alice measured by alice's view, alice -> bob reported by
the bot when its recording of alice is finalized), writes ``OUT/alice-sees-bob.png``, hangs
up, stops the bot with SIGTERM and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import cv2

from callclient.apps.events import CallbackObserver, event_record, format_human
from callclient.apps.measure import StampView
from callclient.engine import CallEngine
from callclient.errors import CallError
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Tone
from callclient.types import CallMediaType
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.usersig import generate_user_sig
from signaling_server.server import ServerConfig, SignalingServer

__all__ = ["PNG_NAME", "BotProcess", "alice_calls_bob", "run_demo", "run_group_demo"]

PNG_NAME = "alice-sees-bob.png"
_BOT_START_TIMEOUT = 20.0
_MEDIA_TIMEOUT = 10.0
_BOT_EXIT_TIMEOUT = 10.0
_NOT_PRINTED = frozenset({"on_user_voice_volume_changed", "bot_recording"})
"""Events left out of the printed log: volume comes every 300 ms per side."""


class BotProcess:
    """The ``callclient bot`` subprocess (started with ``--json``) and a task printing its
    JSON lines as they come (human-formatted)."""

    def __init__(self, proc: asyncio.subprocess.Process, since: float) -> None:
        self.proc = proc
        self.since = since
        self.records: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                print(f"bob: {line}", flush=True)
                continue
            self.records.append(record)
            if record.get("event") not in _NOT_PRINTED:
                print(format_human(record, self.since), flush=True)
            if record.get("event") == "bot_ready":
                self.ready.set()
            self.changed.set()

    def recording_of(self, user: str) -> dict[str, Any] | None:
        for record in self.records:
            if record.get("event") == "bot_recording" and record["args"][0]["user"] == user:
                info: dict[str, Any] = record["args"][0]
                return info
        return None

    async def wait_for(self, predicate: Any, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``predicate()`` is true; False after ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.proc.returncode is not None and self.reader.done():
                        return bool(predicate())
                    self.changed.clear()
                    await self.changed.wait()
                return True
        return bool(predicate())

    async def stop(self) -> int:
        """SIGTERM, wait for the exit (kill after a timeout); the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_BOT_EXIT_TIMEOUT):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        return code


def _fmt_latency(median: float | None, p95: float | None) -> str:
    if median is None or p95 is None:
        return "latency n/a"
    return f"latency median {median:.1f} ms, p95 {p95:.1f} ms"


async def run_demo(seconds: float = 8.0, out: Path = Path("out")) -> int:
    """Run the demo; returns the exit status (0 when both directions carried video)."""
    since = time.time()
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    record_dir = out / "bob-recordings"

    def say(text: str) -> None:
        print(f"+{time.time() - since:6.3f}s {text}", flush=True)

    config = ServerConfig(port=0, sdk_app_id=DEV_SDK_APP_ID, secret_key=DEV_SECRET_KEY,
                          db=":memory:")
    async with SignalingServer(config) as server:
        say(f"signaling server listening on {server.url}")
        say("events print as they happen (per-user volume, every 300 ms, is left out)")
        say("starting bob: callclient bot --auto-accept --record "
            f"{record_dir} (a subprocess)")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callclient", "bot", "--user", "bob", "--server", server.url,
            "--auto-accept", "--record", str(record_dir), "--tone", "660", "--json",
            stdout=asyncio.subprocess.PIPE,
        )
        bob = BotProcess(proc, since)
        try:
            return await alice_calls_bob(server.url, bob, seconds, out, since, say)
        finally:
            code = await bob.stop()
            say(f"bob exited with status {code}")


async def alice_calls_bob(
    url: str | Sequence[str], bob: BotProcess, seconds: float, out: Path, since: float,
    say: Callable[[str], None], on_login: Callable[[str], None] | None = None,
    mid_call: Callable[[CallEngine], Awaitable[bool]] | None = None,
) -> int:
    """alice (an engine with virtual devices, on ``url``) calls ``bob`` for ``seconds``,
    prints the results of both directions and writes ``OUT/alice-sees-bob.png``; the exit
    status (0 when both directions carried video). ``on_login`` gets the URL alice logged
    in to; ``mid_call`` runs halfway through the call (with alice's engine) and says whether
    the call is still fine."""
    if not await bob.wait_for(bob.ready.is_set, _BOT_START_TIMEOUT):
        say("error: bob did not log in")
        return 1
    devices = DeviceSet.virtual("alice", program=Tone(440.0, 0.3))
    view = StampView()
    async with CallEngine(url, devices=devices) as alice:

        def show(name: str, args: tuple[Any, ...]) -> None:
            if name not in _NOT_PRINTED:
                print(format_human(event_record("alice", name, args), since), flush=True)

        alice.add_observer(CallbackObserver(show))
        alice.start_remote_view("bob", view)
        await alice.login(DEV_SDK_APP_ID, "alice",
                          generate_user_sig(DEV_SDK_APP_ID, DEV_SECRET_KEY, "alice"))
        say(f"alice logged in to {alice.server_url}; opening the camera and calling bob "
            "(video)")
        if on_login is not None:
            on_login(alice.server_url)
        await alice.open_camera()
        await alice.call("bob", CallMediaType.VIDEO)
        try:
            await view.wait_frames(1, _MEDIA_TIMEOUT)
        except TimeoutError:
            say("error: no video from bob")
            return 1
        say(f"first frame from bob; talking for {seconds:g} s")
        start = time.time()
        fine = True
        if mid_call is None:
            await asyncio.sleep(seconds)
        else:
            await asyncio.sleep(seconds / 2)
            fine = await mid_call(alice)
            await asyncio.sleep(seconds / 2)
        until = time.time()
        last = view.last
        png = out / PNG_NAME
        if last is not None:
            await asyncio.to_thread(cv2.imwrite, str(png), last.image)
        with contextlib.suppress(CallError):
            await alice.hangup()
        await asyncio.to_thread(view.close)
        got_recording = await bob.wait_for(lambda: bob.recording_of("alice") is not None, 5.0)
    seen = view.summary(start, until)
    print(flush=True)
    print("results", flush=True)
    print(f"  bob -> alice: {seen.frames} frames in {until - start:.1f} s, {seen.fps:.1f} fps, "
          f"{_fmt_latency(seen.latency_median_ms, seen.latency_p95_ms)}", flush=True)
    info = bob.recording_of("alice")
    if info is not None:
        print(f"  alice -> bob: {info['video_frames']} frames recorded, {info['fps']:.1f} fps, "
              f"{_fmt_latency(info['latency_median_ms'], info['latency_p95_ms'])}; "
              f"heard {info['dominant_hz']} Hz (alice sends 440)", flush=True)
        print(f"  bob's recordings: {info['video_path']}, {info['audio_path']}", flush=True)
    else:
        print("  alice -> bob: the bot reported no recording", flush=True)
    print(f"  what alice sees of bob: {png}" if last is not None else "  no frame to save",
          flush=True)
    return 0 if fine and last is not None and got_recording and seen.frames > 0 else 1



async def run_group_demo(seconds: float = 8.0, out: Path = Path("out")) -> int:
    """``make demo-group``: alice group-calls two bots through a Janus subprocess.

    A Janus gateway is started on a free loopback port with a generated configuration and the
    embedded server carries the group call through it (``--sfu``); bob and carol are
    ``callclient bot`` subprocesses recording what they receive. Prints what alice receives
    from each and what each bot recorded of alice; 0 when every direction carried video.
    """
    from signaling_server.core import CoreConfig
    from signaling_server.janus_proc import JanusProcess

    since = time.time()
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(f"+{time.time() - since:6.3f}s {text}", flush=True)

    async with JanusProcess() as janus:
        say(f"janus (VideoRoom) at {janus.url}")
        config = ServerConfig(port=0, sdk_app_id=DEV_SDK_APP_ID, secret_key=DEV_SECRET_KEY,
                              db=":memory:", core=CoreConfig(sfu=(janus.url,)))
        async with SignalingServer(config) as server:
            say(f"signaling server listening on {server.url}, group calls through janus")
            bots: dict[str, BotProcess] = {}
            try:
                for name, tone in (("bob", "660"), ("carol", "880")):
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "callclient", "bot", "--user", name,
                        "--server", server.url, "--auto-accept", "--record",
                        str(out / f"{name}-recordings"), "--tone", tone, "--json",
                        stdout=asyncio.subprocess.PIPE,
                    )
                    bots[name] = BotProcess(proc, since)
                return await _alice_group(server.url, bots, seconds, since, say)
            finally:
                for name, bot in bots.items():
                    say(f"{name} exited with status {await bot.stop()}")


async def _alice_group(
    url: str, bots: dict[str, BotProcess], seconds: float, since: float, say: Any
) -> int:
    for name, bot in bots.items():
        if not await bot.wait_for(bot.ready.is_set, _BOT_START_TIMEOUT):
            say(f"error: {name} did not log in")
            return 1
    devices = DeviceSet.virtual("alice", program=Tone(440.0, 0.3))
    views = {name: StampView() for name in bots}
    async with CallEngine(url, devices=devices) as alice:

        def show(name: str, args: tuple[Any, ...]) -> None:
            if name not in _NOT_PRINTED:
                print(format_human(event_record("alice", name, args), since), flush=True)

        alice.add_observer(CallbackObserver(show))
        for name, view in views.items():
            alice.start_remote_view(name, view)
        await alice.login(DEV_SDK_APP_ID, "alice",
                          generate_user_sig(DEV_SDK_APP_ID, DEV_SECRET_KEY, "alice"))
        say("alice logged in; opening the camera and group-calling bob and carol (video)")
        await alice.open_camera()
        await alice.calls(list(bots), CallMediaType.VIDEO)
        try:
            await asyncio.gather(*(v.wait_frames(1, 3 * _MEDIA_TIMEOUT) for v in views.values()))
        except TimeoutError:
            say("error: no video from every bot")
            return 1
        say(f"video from every bot (through janus); talking for {seconds:g} s")
        start = time.time()
        await asyncio.sleep(seconds)
        until = time.time()
        with contextlib.suppress(CallError):
            await alice.hangup()
        await asyncio.gather(*(asyncio.to_thread(v.close) for v in views.values()))
        recorded = [await bot.wait_for(lambda bot=bot: bot.recording_of("alice") is not None,
                                       5.0) for bot in bots.values()]
    print(flush=True)
    print("results (group call through janus)", flush=True)
    ok = all(recorded)
    for name, view in views.items():
        seen = view.summary(start, until)
        ok = ok and seen.frames > 0
        print(f"  {name} -> alice: {seen.frames} frames, {seen.fps:.1f} fps, "
              f"{_fmt_latency(seen.latency_median_ms, seen.latency_p95_ms)}", flush=True)
        info = bots[name].recording_of("alice")
        if info is not None:
            print(f"  alice -> {name}: {info['video_frames']} frames recorded, "
                  f"{info['fps']:.1f} fps; heard {info['dominant_hz']} Hz (alice sends 440)",
                  flush=True)
    return 0 if ok else 1
