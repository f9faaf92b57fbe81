"""One audio+video call on a given address, driven through stdin, reported on stdout.

Run inside a network namespace by :mod:`test_quality_impairment` (``ip netns exec NS python
tests/impair_child.py --host 198.18.0.1``): it starts a signaling server on ``--host``, logs in
two engines (``alice`` calls ``bob``) with virtual devices (cameras, microphones playing tones),
connects an audio+video call and then prints one JSON object per line:

- ``{"ev": "ready", "t": ..., "call_id": ...}`` once media flows both ways;
- ``{"ev": <callback name>, "who": <engine's user>, "t": ..., "args": [...]}`` for every
  observer callback (network quality lists become ``{user: level}``, enums their ints);
- ``{"ev": "stats", "t": ..., "who": ..., "call_id": ..., "audio_blocks": ..., "video_frames":
  ...}`` for each engine every 0.5 s and on ``report``;
- ``{"ev": "ok", "cmd": ...}`` after each command, ``{"ev": "error", ...}`` if one failed.

``t`` is ``time.monotonic()``: CLOCK_MONOTONIC is system-wide, so the test compares it with its
own clock. Commands, one JSON object per line on stdin: ``{"cmd": "report"}``,
``{"cmd": "set_program", "who": "alice", "program": [{"tone": 440, "amplitude": 0.5,
"seconds": 1}, {"silence": true, "seconds": 1}]}``, ``{"cmd": "mute", "who": ...}`` (closes
the microphone), ``{"cmd": "unmute", "who": ...}`` and ``{"cmd": "quit"}`` (also on end of input).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Program, Sequence, Silence, Tone, VirtualMicrophone
from callclient.observer import CallEvent
from callclient.types import CallMediaType
from callwire.usersig import generate_user_sig
from signaling_server.server import ServerConfig, SignalingServer
from tests.helpers.childlines import emit, plain

APP = 1400000001
KEY = "impairment-tests-secret-key-0123456789"
TONES = {"alice": 440.0, "bob": 660.0}




def program_of(items: list[dict[str, Any]]) -> Program:
    """A microphone program from the ``set_program`` command's items."""
    parts: list[tuple[Program, float]] = []
    for item in items:
        seconds = float(item.get("seconds", 3600.0))
        if "tone" in item:
            parts.append((Tone(float(item["tone"]), float(item.get("amplitude", 0.5))), seconds))
        else:
            parts.append((Silence(), seconds))
    return Sequence(tuple(parts))


def stats(engine: CallEngine) -> None:
    """Print the engine's receive counters."""
    call = engine.current_call
    remote = next(iter(engine.remote_stats.values()), None)
    emit(
        "stats",
        who=engine.user_id,
        call_id=call.call_id if call else None,
        audio_blocks=remote.audio_blocks if remote else 0,
        video_frames=remote.video_frames if remote else 0,
    )


async def forward(engine: CallEngine, user_id: str, ringing: asyncio.Event) -> None:
    """Print every callback of ``engine``; set ``ringing`` on ``on_call_received``."""
    event: CallEvent
    async for event in engine.events(maxsize=10000):
        emit(event.name, who=user_id, args=plain(list(event.args)))
        if event.name == "on_call_received":
            ringing.set()


async def report_loop(engines: list[CallEngine]) -> None:
    """Receive counters of every engine twice a second."""
    while True:
        await asyncio.sleep(0.5)
        for engine in engines:
            stats(engine)


async def command(engines: dict[str, CallEngine], line: str) -> bool:
    """Apply one command line; False on ``quit``."""
    cmd = json.loads(line)
    name = cmd.get("cmd")
    if name == "quit":
        return False
    if name == "report":
        for engine in engines.values():
            stats(engine)
    elif name == "set_program":
        microphone = engines[cmd["who"]].devices.microphone
        assert isinstance(microphone, VirtualMicrophone)
        microphone.set_program(program_of(cmd["program"]))
    elif name == "mute":
        await engines[cmd["who"]].close_microphone()
    elif name == "unmute":
        await engines[cmd["who"]].open_microphone()
    else:
        raise ValueError(f"unknown command {name!r}")
    emit("ok", cmd=name)
    return True


async def wait_media(engines: list[CallEngine], timeout: float) -> None:  # noqa: ASYNC109
    """Until audio and video arrive on every engine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counters = [next(iter(e.remote_stats.values()), None) for e in engines]
        if all(c is not None and c.audio_blocks > 10 and c.video_frames > 3 for c in counters):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no media both ways within {timeout} s")


async def main(host: str, width: int, height: int, fps: float) -> None:
    """Server, two engines, one call; then commands until ``quit``."""
    config = ServerConfig(host=host, port=0, sdk_app_id=APP, secret_key=KEY, db=":memory:")
    async with SignalingServer(config) as server:
        engines = {
            user: CallEngine(
                server.url,
                devices=DeviceSet.virtual(
                    user, width=width, height=height, fps=fps, program=Tone(freq, 0.5)
                ),
            )
            for user, freq in TONES.items()
        }
        tasks: list[asyncio.Task[None]] = []
        ringing = asyncio.Event()
        try:
            for user, engine in engines.items():
                await engine.login(APP, user, generate_user_sig(APP, KEY, user))
                tasks.append(asyncio.create_task(forward(engine, user, ringing)))
                await engine.open_camera()
            alice, bob = engines["alice"], engines["bob"]
            call_id = await alice.call("bob", CallMediaType.VIDEO)
            await asyncio.wait_for(ringing.wait(), 10.0)
            await bob.accept()
            await wait_media([alice, bob], 20.0)
            emit("ready", call_id=call_id)
            tasks.append(asyncio.create_task(report_loop([alice, bob])))
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    if not await command(engines, line):
                        break
                except Exception as exc:
                    emit("error", message=repr(exc))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*(engine.close() for engine in engines.values()))
            await asyncio.gather(*tasks, return_exceptions=True)
    emit("exit")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="address to listen and gather on")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.width, args.height, args.fps))
