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
import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from callclient.apps.events import CallbackObserver, event_record, jsonable
from callclient.apps.measure import AudioMeter, StampView
from callclient.apps.udpstats import udp_receive_drops
from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Tone
from callclient.sfu import SfuTransport
from callclient.types import (
    CallMediaType,
    Resolution,
    VideoEncoderParams,
    resolution_size,
)
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.usersig import generate_user_sig
from signaling_server.core import CoreConfig
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
    frames_dropped: int = 0
    """Decoded frames of the sender that the receiver dropped in the window (newest wins)."""
    jitter_drops: int = 0
    """Incomplete frames given up on in the window (a packet lost for good)."""
    decode_drops: int = 0
    """Encoded frames skipped in the window: the decoder fell behind, or waited for a keyframe."""

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
    processes: bool = False
    """Whether each engine ran in its own process."""
    sfu: bool = False
    """Whether the call went through a Janus SFU."""
    uplink_kbps: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per user, the RTP payload+header bytes it sent in the window (every connection)."""
    cpu_percent: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per user, its process's CPU in the window (% of one core; one process: the same)."""
    udp_drops: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per user, UDP datagrams the kernel dropped in the window because its process read its
    sockets too slowly (receive buffer full; one process: the whole process's)."""

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
            "processes": self.processes,
            "sfu": self.sfu,
            "uplink_kbps": {u: round(v, 1) for u, v in self.uplink_kbps.items()},
            "cpu_percent": {u: round(v, 1) for u, v in self.cpu_percent.items()},
            "udp_drops": dict(self.udp_drops),
            "users": per_user,
        }

    def format_table(self) -> str:
        """A human table, one row per receiver <- sender."""
        video = self.media is CallMediaType.VIDEO
        lines = [
            f"loopback: {len(self.users)} users, {self.media.name.lower()}"
            + (f" {self.width}x{self.height} @ {self.fps:g} fps" if video else "")
            + f", measured {self.seconds:.1f} s, dial to media {self.dial_ms:.0f} ms"
            + (", one process per user" if self.processes else ", one process")
            + (", through Janus" if self.sfu else ""),
            f"{'receiver':<10} {'sender':<10} {'frames':>6} {'fps':>5} "
            f"{'latency med/p95 ms':>19} {'setup ms':>8} {'audio s':>7} "
            f"{'heard Hz':>8} {'sent Hz':>7} {'dropped':>7}",
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
                f"{s.expected_hz:>7.0f} {s.frames_dropped:>7}{'' if s.heard else '  NOT HEARD'}"
            )
        if any(self.udp_drops.values()):
            lines.append("UDP datagrams the kernel dropped (receive buffer full, the process "
                         "too slow to read): " + ", ".join(
                             f"{user} {count}" for user, count in self.udp_drops.items()))
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

    def skipped(self) -> dict[str, int]:
        """Frames dropped so far per sender (the receive pipeline keeps the newest)."""
        return {user: s.video_frames_skipped for user, s in self.engine.remote_stats.items()}

    def receive_drops(self) -> dict[str, tuple[int, int]]:
        """Per sender, frames given up so far in the jitter buffer and before the decoder."""
        return {user: (s.video_frames_dropped_jitter, s.video_frames_dropped_decode)
                for user, s in self.engine.remote_stats.items()}

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
    processes: bool | None = None,
    sfu: bool = False,
) -> LoopbackReport:
    """Run one loopback call and return what every user received from every other.

    ``connect_timeout`` bounds the wait for media between every pair; pairs still silent
    after it are reported with zero frames. ``on_event`` receives every observer callback of
    every engine as a log record. ``processes`` runs each engine in its own process (default:
    when there are 3 users or more), so the run measures the stack rather than one
    interpreter's GIL; ``sfu`` starts a Janus subprocess and carries the call through it.
    """
    if users < 2:
        raise ValueError(f"users must be at least 2, got {users}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    media = CallMediaType(media)
    if media is CallMediaType.NONE:
        raise ValueError("media must be audio or video")
    resolution = Resolution(resolution)
    if processes is None:
        processes = users >= 3
    settings = _Settings(users, seconds, int(resolution), int(media), fps, connect_timeout)
    async with contextlib.AsyncExitStack() as stack:
        core = CoreConfig()
        if sfu:
            from signaling_server.janus_proc import JanusProcess

            janus = await stack.enter_async_context(JanusProcess())
            core = CoreConfig(sfu=(janus.url,))
        config = ServerConfig(port=0, sdk_app_id=DEV_SDK_APP_ID, secret_key=DEV_SECRET_KEY,
                              db=":memory:", core=core)
        server = await stack.enter_async_context(SignalingServer(config))
        if processes:
            report = await _run_processes(server.url, settings, on_event)
        else:
            report = await _run_in_process(server.url, settings, on_event)
        return dataclasses.replace(report, processes=processes, sfu=sfu)


@dataclass(frozen=True)
class _Settings:
    users: int
    seconds: float
    resolution: int
    media: int
    fps: float
    connect_timeout: float

    @property
    def names(self) -> list[str]:
        return [f"user{i}" for i in range(self.users)]

    @property
    def video(self) -> bool:
        return CallMediaType(self.media) is CallMediaType.VIDEO

    def report(self, seconds: float, dial_ms: float,
               streams: Sequence[StreamReport]) -> LoopbackReport:
        resolution = Resolution(self.resolution)
        width, height = resolution_size(resolution)
        return LoopbackReport(
            users=tuple(self.names), media=CallMediaType(self.media), resolution=resolution,
            width=width, height=height, fps=self.fps, seconds=seconds, dial_ms=dial_ms,
            streams=tuple(streams),
        )


def _participant(
    settings: _Settings, index: int, url: str, sink: EventSink | None
) -> _Participant:
    name = settings.names[index]
    resolution = Resolution(settings.resolution)
    width, height = resolution_size(resolution)
    devices = DeviceSet.virtual(
        name, width=width, height=height, fps=settings.fps, program=Tone(tone_for(index), 0.3)
    )
    person = _Participant(name, index, devices, url, sink)
    person.engine.set_video_encoder_params(VideoEncoderParams(resolution=resolution))
    person.watch([other for other in settings.names if other != name])
    return person


async def _login(person: _Participant) -> None:
    await person.engine.login(DEV_SDK_APP_ID, person.name,
                              generate_user_sig(DEV_SDK_APP_ID, DEV_SECRET_KEY, person.name))


async def _answer(person: _Participant, video: bool) -> None:
    await person.invited.wait()
    if video:
        await person.engine.open_camera()
    person.accept_time = time.time()
    await person.engine.accept()


async def _wait_media(person: _Participant, video: bool, within: float) -> None:
    waiters = [
        asyncio.ensure_future(
            person.views[other].wait_frames(1, within) if video
            else person.meters[other].started.wait()
        )
        for other in person.views
    ]
    await asyncio.wait(waiters, timeout=within)
    await _cancel_all(waiters)


async def _bytes_sent(engine: CallEngine) -> int:
    """RTP bytes sent so far on every connection of the engine's call."""
    transport = engine._media.transport
    if transport is None:
        return 0
    if isinstance(transport, SfuTransport):
        pcs = [transport.publisher_pc]
    else:
        pcs = [peer.pc for peer in transport.peers.values()]
    total = 0
    for pc in pcs:
        if pc is None:
            continue
        with contextlib.suppress(Exception):
            for stats in (await pc.getStats()).values():
                if getattr(stats, "type", "") == "outbound-rtp":
                    total += int(getattr(stats, "bytesSent", 0) or 0)
    return total


@dataclass(frozen=True)
class _Measured:
    since: float
    until: float
    streams: list[StreamReport]
    uplink_kbps: float
    cpu_percent: float
    udp_drops: int


async def _measure(
    person: _Participant, settings: _Settings, accept_times: dict[str, float | None]
) -> _Measured:
    skipped = person.skipped()
    drops = person.receive_drops()
    sent = await _bytes_sent(person.engine)
    udp = udp_receive_drops() or 0
    cpu = time.process_time()
    since = time.time()
    await asyncio.sleep(settings.seconds)
    until = time.time()
    cpu = time.process_time() - cpu
    udp = (udp_receive_drops() or 0) - udp
    sent = await _bytes_sent(person.engine) - sent
    dropped = {user: count - skipped.get(user, 0) for user, count in person.skipped().items()}
    stage_drops = {user: (_since(jitter, drops.get(user, (0, 0))[0]),
                          _since(decode, drops.get(user, (0, 0))[1]))
                   for user, (jitter, decode) in person.receive_drops().items()}
    # Let the analysers catch up on the frames of the window.
    await asyncio.gather(*(asyncio.to_thread(view.close) for view in person.views.values()))
    streams = [
        _stream_report(person, sender, since, until, accept_times, settings.video,
                       tone_for(settings.names.index(sender)), dropped.get(sender, 0),
                       stage_drops.get(sender, (0, 0)))
        for sender in person.views
    ]
    window = max(until - since, 1e-6)
    return _Measured(since, until, streams, sent * 8 / 1000 / window, 100.0 * cpu / window,
                     udp)


def _since(now: int, before: int) -> int:
    """A counter's growth over the window; one that went down restarted with a new track
    (a replaced connection), so what it counts now is all from within the window."""
    return now - before if now >= before else now


def _combine(settings: _Settings, measured: Sequence[_Measured], dial_ms: float,
             names: Sequence[str]) -> LoopbackReport:
    since = min(m.since for m in measured)
    until = max(m.until for m in measured)
    report = settings.report(until - since, dial_ms, [s for m in measured for s in m.streams])
    return dataclasses.replace(
        report,
        uplink_kbps={n: m.uplink_kbps for n, m in zip(names, measured, strict=True)},
        cpu_percent={n: m.cpu_percent for n, m in zip(names, measured, strict=True)},
        udp_drops={n: m.udp_drops for n, m in zip(names, measured, strict=True)},
    )


async def _run_in_process(
    url: str, settings: _Settings, on_event: EventSink | None
) -> LoopbackReport:
    async with contextlib.AsyncExitStack() as stack:
        people: list[_Participant] = []
        for index in range(settings.users):
            person = _participant(settings, index, url, on_event)
            stack.push_async_callback(_close_participant, person)
            people.append(person)
        await asyncio.gather(*(_login(p) for p in people))
        caller, callees = people[0], people[1:]
        if settings.video:
            await caller.engine.open_camera()
        answering = [asyncio.create_task(_answer(p, settings.video)) for p in callees]
        stack.push_async_callback(_cancel_all, answering)
        dial_time = time.time()
        await caller.engine.calls([p.name for p in callees], CallMediaType(settings.media))
        async with asyncio.timeout(settings.connect_timeout):
            await asyncio.gather(*answering)
        await asyncio.gather(*(_wait_media(p, settings.video, settings.connect_timeout)
                               for p in people))
        connected = time.time()
        accept_times = {p.name: p.accept_time for p in callees}
        measured = await asyncio.gather(*(_measure(p, settings, accept_times) for p in people))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await caller.engine.hangup()
        return _combine(settings, measured, (connected - dial_time) * 1000.0,
                        [p.name for p in people])


# ------------------------------------------------------------------ one process per engine
#
# The parent runs the server (and Janus); each child one engine. They talk over a pipe:
# child "ready" -> parent "call" (to user0) -> child "connected" (with its accept time) ->
# parent "measure" (with every accept time) -> child "report" -> parent "bye". A child also
# sends "event" records when the parent wants them.


def _child_main(conn: Connection, url: str, settings: _Settings, index: int,
                events: bool) -> None:
    asyncio.run(_child(conn, url, settings, index, events))


async def _child(conn: Connection, url: str, settings: _Settings, index: int,
                 events: bool) -> None:
    def sink(record: dict[str, Any]) -> None:
        conn.send(("event", record))

    person = _participant(settings, index, url, sink if events else None)
    try:
        await _login(person)
        if index == 0 and settings.video:
            await person.engine.open_camera()
        answering = asyncio.ensure_future(_answer(person, settings.video)) if index else None
        conn.send(("ready", None))
        message, data = await asyncio.to_thread(conn.recv)
        if message == "call":
            await person.engine.calls(list(data), CallMediaType(settings.media))
        if answering is not None:
            async with asyncio.timeout(settings.connect_timeout):
                await answering
        await _wait_media(person, settings.video, settings.connect_timeout)
        conn.send(("connected", person.accept_time))
        message, accept_times = await asyncio.to_thread(conn.recv)
        measured = await _measure(person, settings, accept_times)
        conn.send(("report", measured))
        await asyncio.to_thread(conn.recv)  # "bye"
        if index == 0:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await person.engine.hangup()
    finally:
        await _close_participant(person)
        conn.close()


async def _run_processes(
    url: str, settings: _Settings, on_event: EventSink | None
) -> LoopbackReport:
    context = multiprocessing.get_context("spawn")  # never fork a running event loop
    pipes: list[Connection] = []
    children = []
    inboxes: list[asyncio.Queue[tuple[str, Any]]] = []
    readers: list[asyncio.Task[None]] = []

    async def read(conn: Connection, inbox: asyncio.Queue[tuple[str, Any]]) -> None:
        while True:
            try:
                message = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):
                await inbox.put(("gone", None))
                return
            if message[0] == "event":
                if on_event is not None:
                    on_event(message[1])
            else:
                await inbox.put(message)

    async def expect(index: int, kind: str, within: float) -> Any:
        async with asyncio.timeout(within):
            message, data = await inboxes[index].get()
        if message != kind:
            raise RuntimeError(f"loopback user{index}: expected {kind}, got {message}")
        return data

    try:
        for index in range(settings.users):
            parent, child = context.Pipe()
            process = context.Process(
                target=_child_main, args=(child, url, settings, index, on_event is not None),
                name=f"loopback user{index}", daemon=True)
            process.start()
            child.close()
            pipes.append(parent)
            children.append(process)
            inboxes.append(asyncio.Queue())
            readers.append(asyncio.ensure_future(read(parent, inboxes[-1])))
        startup = 60.0  # each child imports aiortc, PyAV and OpenCV on a loaded machine
        for index in range(settings.users):
            await expect(index, "ready", startup)
        dial_time = time.time()
        pipes[0].send(("call", settings.names[1:]))
        for index in range(1, settings.users):
            pipes[index].send(("go", None))
        accept_times = {}
        for index in range(settings.users):
            accepted = await expect(index, "connected", 2 * settings.connect_timeout)
            if index:
                accept_times[settings.names[index]] = accepted
        connected = time.time()
        for pipe in pipes:
            pipe.send(("measure", accept_times))
        results = [await expect(i, "report", settings.seconds + 60.0)
                   for i in range(settings.users)]
        for pipe in pipes:
            pipe.send(("bye", None))
        return _combine(settings, results, (connected - dial_time) * 1000.0, settings.names)
    finally:
        for process in children:
            await asyncio.to_thread(process.join, 10.0)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join)
        await _cancel_all(readers)
        for pipe in pipes:
            pipe.close()


def _stream_report(
    person: _Participant,
    sender: str,
    since: float,
    until: float,
    accept_times: dict[str, float | None],
    video: bool,
    expected_hz: float,
    dropped: int = 0,
    stage_drops: tuple[int, int] = (0, 0),
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
        frames_dropped=dropped,
        jitter_drops=stage_drops[0],
        decode_drops=stage_drops[1],
    )


async def _close_participant(person: _Participant) -> None:
    await person.engine.close()
    await asyncio.gather(*(asyncio.to_thread(v.close) for v in person.views.values()))


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
