"""A 720p video call on a given address, for the constrained-path tests; JSON lines on stdout.

Run inside a network namespace by ``tests/system/test_netns_adaptation.py`` (``ip netns exec
NS python -m tests.helpers.constrained_child --host 198.18.0.1``): it starts a signaling server
on ``--host`` and two engines; ``alice`` (virtual camera at 1280x720, 30 fps, the 720p preset)
calls ``bob``, who sends audio only (his camera stays closed), so the link carries one video
stream. Every 0.25 s it prints ``{"ev": "stats", "t": ..., "sending": {...alice's send
state...}, "steps": N, "received": {"frames": ..., "fps": ..., "width": ..., "height": ...,
"last": ...}}`` (bob's counters of alice's video; ``t`` and ``last`` are ``time.monotonic()``
and ``time.time()``). ``--no-adaptation`` switches alice's adaptation off. With
``--latency`` bob renders alice's video into a :class:`~callclient.apps.measure.StampView`
and every stats line also has ``"g2g": {"frames": ..., "latency_ms": [...]}``: the frames
rendered in the 0.25 s that ended :data:`G2G_LAG` s before the line and their glass-to-glass
latencies (render - capture, read from the virtual camera's stamp in the view's thread: the
lag lets it read the newest frames first; ``bench.constrained`` uses them). It runs until its stdin
closes (or a ``{"cmd": "quit"}`` line).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time

from callclient.apps.measure import StampView
from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Tone
from callclient.types import CallMediaType, Resolution, VideoEncoderParams
from callwire.usersig import generate_user_sig
from signaling_server.server import ServerConfig, SignalingServer
from tests.helpers.childlines import emit

APP = 1400000001
KEY = "adaptation-tests-secret-key-0123456789"
G2G_LAG = 0.5
"""Seconds the ``g2g`` window of a stats line lags behind it."""


def local_requests(engine: CallEngine) -> int:
    """Keyframe requests the shared encoder got (PLI/FIR): a private counter, test only."""
    session = getattr(engine._local, "_video_encoder", None)
    return int(getattr(session, "keyframe_requests", 0))


def report(alice: CallEngine, bob: CallEngine, view: StampView | None = None,
           since: float = 0.0, until: float = 0.0) -> None:
    """Alice's send state and bob's counters of her video (and, with ``view``, what it
    rendered from ``since`` to ``until``, ``time.time()``)."""
    local = alice.local_video_stats
    remote = bob.remote_stats.get("alice")
    extra = {}
    if view is not None:
        rendered = view.window(since, until)
        extra["g2g"] = {"frames": rendered["frames"], "latency_ms": rendered["latency_ms"]}
    emit(
        "stats",
        sending=None if local is None else dataclasses.asdict(local.sending),
        steps=[] if local is None else [dataclasses.asdict(s) for s in local.steps],
        encoded=None if local is None else {
            "frames": local.frames_encoded, "keyframes": local.keyframes,
            "reopens": local.reopens, "keyframe_requests": local_requests(alice),
        },
        received=None if remote is None else {
            "frames": remote.video_frames, "fps": remote.video_fps,
            "width": remote.video_width, "height": remote.video_height,
            "last": remote.last_video_time,
            "dropped_jitter": remote.video_frames_dropped_jitter,
            "dropped_decode": remote.video_frames_dropped_decode,
        },
        **extra,
    )


async def main(host: str, adaptation: bool, latency: bool = False) -> None:
    """Server, two engines, one call; stats until stdin closes."""
    config = ServerConfig(host=host, port=0, sdk_app_id=APP, secret_key=KEY, db=":memory:")
    async with SignalingServer(config) as server:
        alice = CallEngine(
            server.url, video_adaptation=adaptation,
            devices=DeviceSet.virtual("alice", width=1280, height=720, fps=30.0,
                                      program=Tone(440.0, 0.5)),
        )
        bob = CallEngine(server.url, devices=DeviceSet.virtual("bob", program=Tone(660.0, 0.5)))
        try:
            alice.set_video_encoder_params(
                VideoEncoderParams(resolution=Resolution.RESOLUTION_1280_720))
            for user, engine in (("alice", alice), ("bob", bob)):
                await engine.login(APP, user, generate_user_sig(APP, KEY, user))
            await alice.open_camera()
            ringing = asyncio.Event()

            async def wait_ring() -> None:
                async for event in bob.events(maxsize=1000):
                    if event.name == "on_call_received":
                        ringing.set()
                        return

            waiter = asyncio.create_task(wait_ring())
            await alice.call("bob", CallMediaType.VIDEO)
            await asyncio.wait_for(ringing.wait(), 15.0)
            await waiter
            view = StampView() if latency else None
            if view is not None:
                bob.start_remote_view("alice", view)
            await bob.accept()
            emit("ready")

            async def reports() -> None:
                since = time.time() - G2G_LAG
                while True:
                    until = time.time() - G2G_LAG
                    report(alice, bob, view, since, until)
                    since = until
                    await asyncio.sleep(0.25)

            reporter = asyncio.create_task(reports())
            try:
                while True:
                    line = await asyncio.to_thread(sys.stdin.readline)
                    if not line or line.strip() == '{"cmd": "quit"}':
                        break
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
                if view is not None:
                    view.close()
        finally:
            await asyncio.gather(alice.close(), bob.close())
    emit("exit")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="address to listen and gather on")
    parser.add_argument("--no-adaptation", action="store_true")
    parser.add_argument("--latency", action="store_true",
                        help="render into a stamp reader and report glass-to-glass latency")
    args = parser.parse_args()
    asyncio.run(main(args.host, not args.no_adaptation, args.latency))
