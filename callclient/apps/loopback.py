"""One-command end-to-end measurement: an embedded server, N engines, one call, a report.

``await run_loopback(users=3, seconds=5)`` starts a :class:`SignalingServer` on a free port and
N engines with virtual devices (user *i*'s microphone plays a ``300 + 100 * i`` Hz tone, its
camera stamps every frame). ``user0`` calls the others (a group call when N > 2) and each
accepts. Once media flows both ways, every engine measures for ``seconds`` what it receives
from every other user: frames and fps, glass-to-glass latency (stamp capture time to
received time, read from every frame in a thread; see :mod:`callclient.apps.measure`), audio
blocks and the dominant frequency heard, and the setup time (accept to first frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from callclient.apps.events import CallbackObserver, event_record, jsonable
from callclient.apps.measure import AudioMeter, StampView
from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Tone
from callclient.types import (
    CallMediaType,
    Resolution,
    VideoEncoderParams,
    resolution_size,
)
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.usersig import generate_user_sig
from signaling_server.server import ServerConfig, SignalingServer

__all__ = ["LoopbackReport", "StreamReport", "run_loopback", "tone_for"]

EventSink = Callable[[dict[str, Any]], None]

_FREQ_TOLERANCE_HZ = 10.0


def tone_for(index: int) -> float:
    """The tone user ``index`` plays, in Hz."""
    return 300.0 + 100.0 * index


@dataclass(frozen=True)
class StreamReport:
    """What ``receiver`` got from ``sender`` during the measurement window."""

    receiver: str
    sender: str
    frames: int
    fps: float
    latency_median_ms: float | None
    latency_p95_ms: float | None
    stamps_read: int
    audio_blocks: int
    audio_seconds: float
    dominant_hz: float | None
    expected_hz: float
    setup_ms: float | None
    """From the (later) accept of the two users to the first frame (audio block if audio)."""

    @property
    def heard(self) -> bool:
        """Whether the sender's tone was the dominant frequency heard from it."""
        return (
            self.dominant_hz is not None
            and abs(self.dominant_hz - self.expected_hz) <= _FREQ_TOLERANCE_HZ
        )


@dataclass(frozen=True)
class LoopbackReport:
    """Per receiver, per sender results of one loopback run."""

    users: tuple[str, ...]
    media: CallMediaType
    resolution: Resolution
    width: int
    height: int
    fps: float
    seconds: float
    """Length of the measurement window."""
    dial_ms: float
    """From the ``calls()`` request to media flowing between every pair."""
    streams: tuple[StreamReport, ...]

    def stream(self, receiver: str, sender: str) -> StreamReport:
        """The report of ``receiver`` <- ``sender``."""
        for item in self.streams:
            if item.receiver == receiver and item.sender == sender:
                return item
        raise KeyError((receiver, sender))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form: settings, then ``users[receiver][sender]``."""
        per_user: dict[str, dict[str, Any]] = {user: {} for user in self.users}
        for item in self.streams:
            fields = jsonable(item)
            del fields["receiver"], fields["sender"]
            fields["heard"] = item.heard
            per_user[item.receiver][item.sender] = fields
        return {
            "media": self.media.name,
            "resolution": self.resolution.name,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "seconds": round(self.seconds, 3),
            "dial_ms": round(self.dial_ms, 1),
            "users": per_user,
        }

    def format_table(self) -> str:
        """A human table, one row per receiver <- sender."""
        video = self.media is CallMediaType.VIDEO
        lines = [
            f"loopback: {len(self.users)} users, {self.media.name.lower()}"
            + (f" {self.width}x{self.height} @ {self.fps:g} fps" if video else "")
            + f", measured {self.seconds:.1f} s, dial to media {self.dial_ms:.0f} ms",
            f"{'receiver':<10} {'sender':<10} {'frames':>6} {'fps':>5} "
            f"{'latency med/p95 ms':>19} {'setup ms':>8} {'audio s':>7} "
            f"{'heard Hz':>8} {'sent Hz':>7}",
        ]
        for s in self.streams:
            latency = (
                f"{s.latency_median_ms:.1f} / {s.latency_p95_ms:.1f}"
                if s.latency_median_ms is not None and s.latency_p95_ms is not None
                else "-"
            )
            setup = f"{s.setup_ms:.0f}" if s.setup_ms is not None else "-"
            heard = f"{s.dominant_hz:.1f}" if s.dominant_hz is not None else "-"
            lines.append(
                f"{s.receiver:<10} {s.sender:<10} {s.frames:>6} {s.fps:>5.1f} "
                f"{latency:>19} {setup:>8} {s.audio_seconds:>7.2f} {heard:>8} "
                f"{s.expected_hz:>7.0f}{'' if s.heard else '  NOT HEARD'}"
            )
        return "\n".join(lines)


class _Participant:
    """One engine of the loopback and what it measures of the others."""

    def __init__(
        self, name: str, index: int, devices: DeviceSet, url: str, sink: EventSink | None
    ) -> None:
        self.name = name
        self.index = index
        self.engine = CallEngine(url, devices=devices)
        self.views: dict[str, StampView] = {}
        self.meters: dict[str, AudioMeter] = {}
        self.invited = asyncio.Event()
        self.accept_time: float | None = None
        self._sink = sink
        self.engine.add_observer(CallbackObserver(self._on_callback))
        self.engine.add_audio_tap(self._on_audio)

    def watch(self, others: list[str]) -> None:
        for other in others:
            view = self.views[other] = StampView()
            self.meters[other] = AudioMeter()
            self.engine.start_remote_view(other, view)

    def _on_callback(self, name: str, args: tuple[Any, ...]) -> None:
        if name == "on_call_received":
            self.invited.set()
        if self._sink is not None:
            self._sink(event_record(self.name, name, args))

    def _on_audio(self, user_id: str, block: Any) -> None:
        meter = self.meters.get(user_id)
        if meter is not None:
            meter.add(block, time.time())

    def first_time(self, sender: str, video: bool) -> float | None:
        if video:
            return self.views[sender].meter.first_frame_time
        return self.meters[sender].first_time


async def run_loopback(
    users: int = 2,
    seconds: float = 5.0,
    resolution: Resolution = Resolution.RESOLUTION_640_360,
    media: CallMediaType = CallMediaType.VIDEO,
    *,
    fps: float = 30.0,
    connect_timeout: float = 20.0,
    on_event: EventSink | None = None,
) -> LoopbackReport:
    """Run one loopback call and return what every user received from every other.

    ``connect_timeout`` bounds the wait for media between every pair; pairs still silent
    after it are reported with zero frames. ``on_event`` receives every observer callback of
    every engine as a log record.
    """
    if users < 2:
        raise ValueError(f"users must be at least 2, got {users}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    media = CallMediaType(media)
    if media is CallMediaType.NONE:
        raise ValueError("media must be audio or video")
    resolution = Resolution(resolution)
    width, height = resolution_size(resolution)
    video = media is CallMediaType.VIDEO
    names = [f"user{i}" for i in range(users)]
    config = ServerConfig(port=0, sdk_app_id=DEV_SDK_APP_ID, secret_key=DEV_SECRET_KEY,
                          db=":memory:")
    async with SignalingServer(config) as server, contextlib.AsyncExitStack() as stack:
        people: list[_Participant] = []
        for index, name in enumerate(names):
            devices = DeviceSet.virtual(
                name, width=width, height=height, fps=fps, program=Tone(tone_for(index), 0.3)
            )
            person = _Participant(name, index, devices, server.url, on_event)
            stack.push_async_callback(_close_participant, person)
            person.engine.set_video_encoder_params(VideoEncoderParams(resolution=resolution))
            person.watch([other for other in names if other != name])
            people.append(person)
        await asyncio.gather(*(
            p.engine.login(DEV_SDK_APP_ID, p.name,
                           generate_user_sig(DEV_SDK_APP_ID, DEV_SECRET_KEY, p.name))
            for p in people
        ))
        caller, callees = people[0], people[1:]
        if video:
            await caller.engine.open_camera()

        async def answer(person: _Participant) -> None:
            await person.invited.wait()
            if video:
                await person.engine.open_camera()
            person.accept_time = time.time()
            await person.engine.accept()

        answering = [asyncio.create_task(answer(p)) for p in callees]
        stack.push_async_callback(_cancel_all, answering)
        dial_time = time.time()
        await caller.engine.calls([p.name for p in callees], media)
        async with asyncio.timeout(connect_timeout):
            await asyncio.gather(*answering)
        waiters = [
            asyncio.ensure_future(
                p.views[other].wait_frames(1, connect_timeout) if video
                else p.meters[other].started.wait()
            )
            for p in people for other in p.views
        ]
        await asyncio.wait(waiters, timeout=connect_timeout)
        await _cancel_all(waiters)
        connected = time.time()
        since = connected
        await asyncio.sleep(seconds)
        until = time.time()
        # Let the analysers catch up on the frames of the window.
        await asyncio.gather(*(
            asyncio.to_thread(view.close) for p in people for view in p.views.values()
        ))
        accept_times = {p.name: p.accept_time for p in callees}
        streams = [
            _stream_report(p, sender, since, until, accept_times, video,
                           tone_for(names.index(sender)))
            for p in people for sender in p.views
        ]
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await caller.engine.hangup()
        return LoopbackReport(
            users=tuple(names),
            media=media,
            resolution=resolution,
            width=width,
            height=height,
            fps=fps,
            seconds=until - since,
            dial_ms=(connected - dial_time) * 1000.0,
            streams=tuple(streams),
        )


def _stream_report(
    person: _Participant,
    sender: str,
    since: float,
    until: float,
    accept_times: dict[str, float | None],
    video: bool,
    expected_hz: float,
) -> StreamReport:
    summary = person.views[sender].summary(since, until)
    audio = person.meters[sender].summary(since, until)
    accepted = [t for t in (accept_times.get(person.name), accept_times.get(sender)) if t]
    first = person.first_time(sender, video)
    setup_ms = (first - max(accepted)) * 1000.0 if first is not None and accepted else None
    return StreamReport(
        receiver=person.name,
        sender=sender,
        frames=summary.frames,
        fps=summary.fps,
        latency_median_ms=summary.latency_median_ms,
        latency_p95_ms=summary.latency_p95_ms,
        stamps_read=summary.stamps_read,
        audio_blocks=audio.blocks,
        audio_seconds=audio.seconds,
        dominant_hz=audio.dominant_hz,
        expected_hz=expected_hz,
        setup_ms=setup_ms,
    )


async def _close_participant(person: _Participant) -> None:
    await person.engine.close()
    await asyncio.gather(*(asyncio.to_thread(v.close) for v in person.views.values()))


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
