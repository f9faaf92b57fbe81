"""One call participant in its own process (and network namespace), for the NAT tests.

``python -m tests.helpers.netpeer_child --server ws://H:P --user U [--relay-only]`` logs in with
virtual devices (a camera and a microphone playing a tone), answers every invitation, and
prints one JSON object per line on stdout:

- ``{"ev": "ice", "servers": [...], "probes": [...], "t": ...}`` once the server's TURN URLs
  have been tried (or at once without any);
- ``{"ev": <callback name>, "args": [...], "t": ...}`` for every observer callback but the
  volume one;
- ``{"ev": "stats", "remote": {user: {"audio": blocks, "video": frames, "path": [local,
  remote, transport] | null}}, "t": ...}`` every 0.25 s during a call;
- ``{"ev": "ok", "cmd": ...}`` after each command, ``{"ev": "error", ...}`` if one failed.

``--connect-timeout S`` reports a peer without a path after S seconds (default 20).

Commands on stdin: ``{"cmd": "call", "users": [...], "media": "audio"|"video"}``,
``{"cmd": "hangup"}``, ``{"cmd": "quit"}`` (also on end of input). ``t`` is
``time.monotonic()`` (CLOCK_MONOTONIC, shared with the test process).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys

from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Tone
from callclient.observer import CallEvent
from callclient.types import CallMediaType
from callwire.dev import DEV_SDK_APP_ID
from callwire.usersig import generate_user_sig
from tests.helpers.childlines import emit, plain

NAT_TEST_KEY = "nat-tests-secret-key-0123456789"
"""The server's key in these tests: it listens off loopback, where the development key is
refused."""

_QUIET = frozenset({"on_user_voice_volume_changed"})




async def forward(engine: CallEngine) -> None:
    """Print every callback; accept every invitation."""
    event: CallEvent
    async for event in engine.events(maxsize=10000):
        if event.name not in _QUIET:
            emit(event.name, args=plain(list(event.args)))
        if event.name == "on_call_received":
            try:
                await engine.accept()
            except Exception as exc:  # reported, the test decides
                emit("error", message=f"accept: {exc!r}")


async def report(engine: CallEngine) -> None:
    """Receive counters and media paths, four times a second during a call."""
    while True:
        await asyncio.sleep(0.25)
        if engine.current_call is None:
            continue
        remote = {}
        for user, stats in engine.remote_stats.items():
            path = stats.path
            remote[user] = {
                "audio": stats.audio_blocks,
                "video": stats.video_frames,
                "path": [path.local, path.remote, path.transport] if path else None,
            }
        emit("stats", remote=remote)


async def command(engine: CallEngine, line: str) -> bool:
    """Apply one command line; False on ``quit``."""
    cmd = json.loads(line)
    name = cmd.get("cmd")
    if name == "quit":
        return False
    if name == "call":
        media = CallMediaType.VIDEO if cmd.get("media") == "video" else CallMediaType.AUDIO
        await engine.calls(list(cmd["users"]), media)
    elif name == "hangup":
        await engine.hangup()
    else:
        raise ValueError(f"unknown command {name!r}")
    emit("ok", cmd=name)
    return True


async def main(server: str, user: str, relay_only: bool, connect_timeout: float | None) -> None:
    """Log in, report, obey commands until ``quit``."""
    engine = CallEngine(server, devices=DeviceSet.virtual(user, width=160, height=120, fps=10,
                                                          program=Tone(440.0, 0.5)),
                        relay_only=relay_only)
    if connect_timeout is not None:
        engine.peer_config = dataclasses.replace(engine.peer_config,
                                                 connect_timeout=connect_timeout)
    tasks: list[asyncio.Task[None]] = []
    try:
        tasks.append(asyncio.create_task(forward(engine)))
        await engine.login(DEV_SDK_APP_ID, user, generate_user_sig(DEV_SDK_APP_ID,
                                                                   NAT_TEST_KEY, user))
        await engine.open_camera()
        await asyncio.wait_for(engine.ice.checked.wait(), 30.0)
        emit("ice", servers=[s.urls for s in engine.ice.servers],
             probes=[[p.url, p.ok, p.refused, p.reason] for p in engine.ice.probes])
        tasks.append(asyncio.create_task(report(engine)))
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            try:
                if not await command(engine, line):
                    break
            except Exception as exc:
                emit("error", message=repr(exc))
    finally:
        for task in tasks:
            task.cancel()
        await engine.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    emit("exit")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument("--connect-timeout", type=float)
    args = parser.parse_args()
    if os.environ.get("NETPEER_LOG"):  # e.g. NETPEER_LOG=aioice.ice to see the ICE checks
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        logging.getLogger(os.environ["NETPEER_LOG"]).setLevel(logging.INFO)
    asyncio.run(main(args.server, args.user, args.relay_only, args.connect_timeout))
