"""One video encoder shared by every peer, with bitrate bounds set by the project.

aiortc's senders each encode on their own, with bitrates clamped by constants in its codec
modules (VP8 250 kbit/s to 1.5 Mbit/s), so the 1080p preset's 2 Mbit/s is out of reach and a
mesh call encodes every frame once per peer. aiortc also documents a way out: a track's
``recv()`` may return an :class:`av.Packet` instead of a frame, and the sender then only
packetizes it with its codec's ``pack()``. This module builds on that:

* :class:`VideoEncoder` owns a PyAV ``libvpx`` (VP8) or ``libx264`` (H.264) codec context
  with the project's rate control: CBR at the bitrate it is given, a keyframe every
  ``keyframe_interval`` seconds of media time as a fallback, a keyframe on request, and a
  reopen (starting with a keyframe) whenever the frame size or the bitrate changes.
* :class:`VideoEncoderSession` reads frames from one source track (the camera track), encodes
  each frame once in its own single worker thread and hands the packets (pts on the 90 kHz
  RTP clock) to every subscriber.
* :class:`EncodedVideoTrack` is one peer's subscription: a ``MediaStreamTrack`` yielding
  packets. A subscriber starts, and restarts after falling behind, on a keyframe.

Bitrate: the session encodes at ``min(recommended, congestion estimate)`` where the
recommendation is the preset's bitrate (:meth:`VideoEncoderSession.set_bitrate`) and the
congestion estimate is the lowest REMB reported by any subscriber's sender (one stream must
fit the worst link). Congestion never raises the rate above the recommendation; it is floored
at ``min_bitrate`` (60 kbit/s: with adaptation the frames are small by then, and a thin link
shared with audio leaves little more).
Because neither libvpx nor libx264 (as PyAV drives them) accepts a new bitrate on an open
context, and a reopen costs a keyframe, a congestion-driven change reopens the encoder only
when it moves the rate by more than 15 %, at most every ``retune_interval`` (2 s); a preset
change, or a rate above the recommendation, applies on the next frame.

Adaptation: the session's :class:`~callclient.media.adaptation.VideoAdapter` chooses what is
sent under constrained CPU and network, the way libwebrtc does: each encode's wall time against
the frame budget (CPU overuse), the receivers' REMB and the fraction lost in their reports
(bandwidth) pick a level of a ladder of frame sizes and rates below the preset; the session
drops the frames the lower rate does not need and scales the others down in its worker thread
before encoding (:attr:`VideoEncoderSession.send_state` says what is sent and why).
``adapt=False`` sends the preset whatever happens (the bitrate still follows REMB).

Feedback: aiortc has no public API for a sender's RTCP. REMB reaches only the sender's private
encoder (clamped to aiortc's bounds) and PLI/FIR only a private flag that the packet path
never reads. :func:`watch_sender_feedback` is the single adapter over that: it wraps the
sender's ``_handle_rtcp_packet`` (the method aiortc's transport routes each RTCP packet to),
keeps aiortc's own handling (NACK, RTT) and additionally reports PLI/FIR, REMB and the fraction
lost in receiver reports. Its test
sends real RTCP over a real connection, so an aiortc change that breaks it fails loudly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import inspect
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import av
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from av.video.frame import PictureType

from callclient.media.adaptation import SendState, Step, VideoAdapter
from callclient.media.fanout import FanoutSession, PacketSubscriber

__all__ = [
    "DEFAULT_KEYFRAME_INTERVAL",
    "DEFAULT_MIN_BITRATE",
    "DEFAULT_RETUNE_INTERVAL",
    "KEYFRAME_REQUEST_INTERVAL",
    "VIDEO_CODECS",
    "EncodedVideoTrack",
    "LocalVideoStats",
    "VideoDrops",
    "VideoEncoder",
    "VideoEncoderSession",
    "watch_sender_feedback",
]

logger = logging.getLogger(__name__)

VIDEO_CODECS: Final = ("VP8", "H264")
DEFAULT_KEYFRAME_INTERVAL = 3.0
"""Seconds of media time between fallback keyframes."""
DEFAULT_MIN_BITRATE = 60_000
"""Congestion feedback never pushes the rate below this (nor above the recommendation)."""
_CLOCK_RATE = 90000
_TIME_BASE = fractions.Fraction(1, _CLOCK_RATE)
_NOMINAL_FPS = 30
_RETUNE_RATIO = 0.15
DEFAULT_RETUNE_INTERVAL = 2.0
"""Minimum seconds between two congestion-driven encoder reopens (each costs a keyframe)."""
KEYFRAME_REQUEST_INTERVAL = 1.0
"""Seconds between two keyframes a peer's PLI/FIR may ask for."""
_QUEUE_LIMIT = 30
"""Packets a subscriber may hold unread before it is paused (it resumes on a keyframe)."""


def _check_codec(codec: str) -> str:
    name = codec.upper()
    if name not in VIDEO_CODECS:
        raise ValueError(f"video codec must be one of {VIDEO_CODECS}, not {codec!r}")
    return name


def _check_bitrate(bitrate: int) -> int:
    value = int(bitrate)
    if value <= 0:
        raise ValueError(f"bitrate must be positive, got {bitrate}")
    return value


class VideoEncoder:
    """A VP8 or H.264 encoder with bitrate, rate control and keyframes set by the project.

    Not thread-safe: use it from one thread at a time (the session uses one worker thread).
    Frames must carry pts; their time base may be anything (packets come out on 90 kHz).
    """

    def __init__(
        self, codec: str = "VP8", keyframe_interval: float = DEFAULT_KEYFRAME_INTERVAL
    ) -> None:
        if keyframe_interval <= 0:
            raise ValueError(f"keyframe_interval must be positive, got {keyframe_interval}")
        self.codec = _check_codec(codec)
        self.keyframe_interval = keyframe_interval
        self._context: av.VideoCodecContext | None = None
        self._last_keyframe: float | None = None
        self.encodes = 0
        """Frames encoded."""
        self.opens = 0
        """Codec contexts opened (the first one and every reopen)."""
        self.keyframes = 0
        """Keyframes produced."""
        self.encode_seconds = 0.0
        """Wall-clock time spent in :meth:`encode`."""

    @property
    def bit_rate(self) -> int | None:
        """The bitrate (bit/s) of the open codec context, None before the first frame."""
        if self._context is None or self._context.bit_rate is None:
            return None
        return int(self._context.bit_rate)

    @property
    def size(self) -> tuple[int, int] | None:
        """The (w, h) of the open codec context, None before the first frame."""
        if self._context is None:
            return None
        return int(self._context.width), int(self._context.height)

    def encode(
        self,
        frame: av.VideoFrame,
        bitrate: int,
        force_keyframe: bool = False,
        size: tuple[int, int] | None = None,
    ) -> list[av.Packet[Any]]:
        """Encode ``frame`` at ``bitrate`` bit/s; packets have pts on the 90 kHz clock.

        ``size`` (w, h) scales the frame first (None: as it comes). The context is
        (re)opened when the frame size or the bitrate differs from the open one; its first
        frame is a keyframe. A keyframe is also forced on request and when
        ``keyframe_interval`` seconds of media time passed since the last one.
        """
        started = time.perf_counter()
        bitrate = _check_bitrate(bitrate)
        if frame.pts is None:
            raise ValueError("frame has no pts")
        pts = round(frame.pts * (frame.time_base or _TIME_BASE) * _CLOCK_RATE)
        media_time = pts / _CLOCK_RATE
        if size is not None and size != (frame.width, frame.height):
            frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
        elif frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        context = self._context
        if context is None or self.size != (frame.width, frame.height) or (
            context.bit_rate != bitrate
        ):
            context = self._open(frame.width, frame.height, bitrate)
            force_keyframe = True
        last = self._last_keyframe
        if last is None or media_time < last or media_time - last >= self.keyframe_interval:
            force_keyframe = True
        frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
        frame.pts = pts
        frame.time_base = _TIME_BASE
        packets = list(context.encode(frame))
        for packet in packets:
            packet.time_base = _TIME_BASE
            if packet.is_keyframe:
                self.keyframes += 1
                self._last_keyframe = media_time
        self.encodes += 1
        self.encode_seconds += time.perf_counter() - started
        return packets

    def close(self) -> None:
        """Release the codec context. Idempotent; the next encode opens a new one."""
        self._context = None
        self._last_keyframe = None

    def _open(self, width: int, height: int, bitrate: int) -> av.VideoCodecContext:
        if self.codec == "VP8":
            context = av.CodecContext.create("libvpx", "w")
            options = {
                # CBR: minrate = maxrate = bit_rate, a one-second rate-control buffer.
                "minrate": str(bitrate),
                "maxrate": str(bitrate),
                "bufsize": str(bitrate),
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "static-thresh": "0",
                "undershoot-pct": "95",
                "overshoot-pct": "5",
                "noise-sensitivity": "0",
                "error-resilient": "1",
            }
            context.qmin = 2
            context.qmax = 56
        else:
            context = av.CodecContext.create("libx264", "w")
            options = {
                "preset": "veryfast",
                "tune": "zerolatency",
                "profile": "baseline",
                "maxrate": str(bitrate),
                "bufsize": str(bitrate),
                "forced-idr": "1",
                "x264-params": "nal-hrd=cbr:filler=0",
            }
        context.width = width
        context.height = height
        context.pix_fmt = "yuv420p"
        context.bit_rate = bitrate
        context.time_base = _TIME_BASE
        context.framerate = fractions.Fraction(_NOMINAL_FPS, 1)
        context.gop_size = 100_000  # keyframes come from keyframe_interval and requests
        context.options = options
        context.thread_count = _thread_count(width * height)
        context.open()
        self._context = context
        self._last_keyframe = None
        self.opens += 1
        return context


def _thread_count(pixels: int) -> int:
    """Encoder threads: more for bigger frames, never more than the spare CPUs."""
    wanted = 4 if pixels >= 1920 * 1080 else 3 if pixels >= 1280 * 720 else 2
    return max(1, min(wanted, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class VideoDrops:
    """Frames dropped on the send side of the video, per stage (counts since the start)."""

    capture: int
    """Captured frames replaced by a newer one before the encoder took one (newest wins)."""
    rate_limit: int
    """Frames the adaptation's lower frame rate did not need."""
    send: int
    """Packets dropped for subscribers (peers) that fell behind, resumed on a keyframe."""


@dataclass(frozen=True)
class LocalVideoStats:
    """The local video sent: what, why, the adaptation steps taken and the frames dropped."""

    sending: SendState
    steps: tuple[Step, ...]
    drops: VideoDrops
    frames_encoded: int
    keyframes: int
    """Keyframes encoded (the first, requested ones, periodic ones, and one per reopen)."""
    reopens: int
    """Encoder (re)opens: a size or bitrate change (each costs a keyframe)."""
    adaptation: bool
    """Whether frame rate and size adapt (False: the preset is always sent)."""


class VideoEncoderSession(FanoutSession["EncodedVideoTrack"]):
    """Encodes the frames of ``source`` once and hands the packets to every subscriber.

    The session reads ``source`` only while some subscriber is reading; each frame read is
    encoded exactly once in a dedicated worker thread, whatever the number of subscribers.
    ``codec`` must be the codec the peers negotiate (``PeerConfig.video_codec``); ``bitrate``
    is the recommendation (bit/s); ``keyframe_interval`` the fallback keyframe period in
    seconds of media time; ``min_bitrate`` the floor of congestion-driven rates;
    ``retune_interval`` the least time between congestion-driven reopens; ``adapt`` whether
    frame rate and size follow CPU and bandwidth (see the module docstring) and ``fps`` the
    preset's frame rate. The session never stops ``source``: its owner does.
    """

    kind = "video encoder"

    def __init__(
        self,
        source: MediaStreamTrack,
        codec: str = "VP8",
        bitrate: int = 500_000,
        *,
        keyframe_interval: float = DEFAULT_KEYFRAME_INTERVAL,
        min_bitrate: int = DEFAULT_MIN_BITRATE,
        retune_interval: float = DEFAULT_RETUNE_INTERVAL,
        adapt: bool = True,
        fps: float = _NOMINAL_FPS,
    ) -> None:
        super().__init__()
        if retune_interval < 0:
            raise ValueError(f"retune_interval must not be negative, got {retune_interval}")
        self.source = source
        self.retune_interval = retune_interval
        self.encoder = VideoEncoder(codec, keyframe_interval)
        self.min_bitrate = _check_bitrate(min_bitrate)
        self._recommended = _check_bitrate(bitrate)
        self.adapter = VideoAdapter(
            self._recommended, fps=fps, enabled=adapt, min_bitrate=self.min_bitrate
        )
        """Chooses the frame size, rate and bitrate sent (see the module docstring)."""
        self._applied: int | None = None
        self._applied_at = 0.0
        self._preset_changed = False
        self._keyframe_wanted = False
        self._demand = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="video-encoder"
        )
        self.keyframe_requests = 0
        """Keyframe requests received (from subscribers, their senders or the API)."""
        self._send_drops = 0

    @property
    def codec(self) -> str:
        """"VP8" or "H264"."""
        return self.encoder.codec

    @property
    def recommended_bitrate(self) -> int:
        """The preset's bitrate in bit/s: the ceiling of the encoded rate."""
        return self._recommended

    @property
    def congestion_estimate(self) -> int | None:
        """The lowest bitrate estimate (bit/s) any subscriber reported, None without one."""
        estimates = [s.bitrate_estimate for s in self._subscribers if s.bitrate_estimate]
        return min(estimates) if estimates else None

    @property
    def target_bitrate(self) -> int:
        """``min(recommended, congestion estimate, loss-based rate)``, floored at
        ``min_bitrate``."""
        return self.adapter.bitrate_with(self.congestion_estimate)

    @property
    def send_state(self) -> SendState:
        """What is sent now (size, frame rate, bitrate) and the reason it is below the preset."""
        return self.adapter.state

    @property
    def adaptation_steps(self) -> list[Step]:
        """Every change of the size or rate sent, oldest first."""
        return list(self.adapter.steps)

    @property
    def drops(self) -> VideoDrops:
        """Frames dropped per stage of the send path."""
        skipped = getattr(self.source, "frames_skipped", 0)
        return VideoDrops(
            capture=int(skipped) if isinstance(skipped, int) else 0,
            rate_limit=self.adapter.frames_dropped,
            send=self._send_drops + sum(s.packets_dropped for s in self._subscribers),
        )

    @property
    def stats(self) -> LocalVideoStats:
        """:attr:`send_state`, :attr:`adaptation_steps` and :attr:`drops` together."""
        return LocalVideoStats(
            self.send_state, tuple(self.adapter.steps), self.drops, self.encoder.encodes,
            self.encoder.keyframes, self.encoder.opens, self.adapter.enabled,
        )

    def set_bitrate(self, bitrate: int) -> None:
        """Set the recommended bitrate (bit/s); it applies from the next frame on."""
        self._recommended = _check_bitrate(bitrate)
        self.adapter.set_bitrate(self._recommended, time.monotonic())
        self._preset_changed = True

    def _report_loss(self) -> None:
        # One stream must fit the worst link: the highest recent loss of any subscriber.
        losses = [s.fraction_lost for s in self._subscribers if s.fraction_lost is not None]
        if losses:
            self.adapter.report_loss(max(losses), time.monotonic())

    def request_keyframe(self) -> None:
        """Make the next encoded frame a keyframe."""
        self.keyframe_requests += 1
        self._keyframe_wanted = True

    def _new_subscriber(self) -> EncodedVideoTrack:
        # Its packets start with a keyframe: it requests one when it becomes active.
        return EncodedVideoTrack(self)

    async def aclose(self) -> None:
        """Stop every subscriber, the pump task and the worker thread. Idempotent."""
        if not await self._stop_fanout():
            return
        # Queued behind any encode still running in the worker, so it never races it.
        await asyncio.get_running_loop().run_in_executor(self._executor, self.encoder.close)
        self._executor.shutdown(wait=False)

    # -------------------------------------------------------------- subscriber callbacks

    def _activated(self, track: EncodedVideoTrack) -> None:
        self.request_keyframe()
        self._demand.set()
        if self._pump is None and not self._closed:
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name="video encoder session"
            )

    def _unsubscribe(self, track: EncodedVideoTrack) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(track)
            self._send_drops += track.packets_dropped
        self._update_demand()

    def _update_demand(self) -> None:
        if any(s.active for s in self._subscribers):
            self._demand.set()
        else:
            self._demand.clear()

    # -------------------------------------------------------------- pump

    def _encode(
        self, frame: av.VideoFrame, bitrate: int, force: bool, size: tuple[int, int]
    ) -> tuple[list[av.Packet[Any]], float]:
        """In the worker: encode, and the wall time it took (scaling included)."""
        started = time.perf_counter()
        packets = self.encoder.encode(frame, bitrate, force, size)
        return packets, time.perf_counter() - started

    def _next_bitrate(self, now: float, resized: bool) -> int:
        target = self.target_bitrate
        applied = self._applied
        if (
            applied is None
            or self._preset_changed
            or resized  # the encoder reopens anyway: take the current target with it
            or applied > self._recommended
            or (
                abs(target - applied) > _RETUNE_RATIO * applied
                and now - self._applied_at >= self.retune_interval
            )
        ):
            if applied != target:
                self._applied_at = now
            self._applied = applied = target
            self._preset_changed = False
        return applied

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._demand.wait()
                frame = await self.source.recv()
                if not isinstance(frame, av.VideoFrame):
                    raise TypeError(f"video source gave {type(frame).__name__}, not a frame")
                now = time.monotonic()
                adapter = self.adapter
                adapter.set_preset(frame.width, frame.height, now)
                adapter.set_estimate(self.congestion_estimate, now)
                if frame.pts is not None and not adapter.admit(
                    float(frame.pts * (frame.time_base or _TIME_BASE))
                ):
                    continue
                state = adapter.state
                size = (state.width, state.height)
                bitrate = self._next_bitrate(now, self.encoder.size not in (None, size))
                force = self._keyframe_wanted
                self._keyframe_wanted = False
                packets, seconds = await loop.run_in_executor(
                    self._executor, self._encode, frame, bitrate, force, size
                )
                adapter.encoded(seconds, time.monotonic())
                for packet in packets:
                    for track in list(self._subscribers):
                        track._offer(packet)
        except MediaStreamError:
            logger.info("video source ended; ending %d subscribers", len(self._subscribers))
        except Exception:
            logger.exception("video encoder session failed")
        self._pump = None
        for track in list(self._subscribers):
            track.stop()


class EncodedVideoTrack(PacketSubscriber):
    """One peer's subscription to a :class:`VideoEncoderSession`: yields encoded packets.

    Give it to ``RTCPeerConnection.addTrack`` and then pass the returned sender to
    :meth:`attach_sender`, so that the sender's PLI/FIR and REMB reach the session.
    It becomes active on its first ``recv()`` (the session then forces a keyframe and starts
    encoding). A subscriber that leaves more than 30 packets unread is paused and its
    packets dropped; its next ``recv()`` resumes it from a fresh keyframe.
    """

    kind = "video"

    def __init__(self, session: VideoEncoderSession) -> None:
        super().__init__(session)
        self._video_session = session
        self._need_keyframe = True
        self.bitrate_estimate: int | None = None
        """The last REMB estimate (bit/s) from this track's sender, None before one."""
        self.pauses = 0
        """Times the track fell too far behind and was paused."""
        self.packets_dropped = 0
        """Packets dropped because the track fell behind (its pauses)."""
        self._last_request: float | None = None
        self.keyframe_requests_ignored = 0
        """PLI/FIR that came too soon after the previous one."""
        self.fraction_lost: float | None = None
        """The fraction of packets lost (0..1) in the last receiver report, None before one."""

    def _activate(self) -> None:
        self._need_keyframe = True
        super()._activate()

    def attach_sender(self, sender: RTCRtpSender) -> None:
        """Route ``sender``'s keyframe requests and bitrate estimates to the session."""
        watch_sender_feedback(
            sender, self.request_keyframe, self.report_bitrate_estimate, self.report_loss
        )

    def request_keyframe(self) -> None:
        """Ask the shared encoder for a keyframe (what a PLI or FIR does).

        At most one a :data:`KEYFRAME_REQUEST_INTERVAL`: on a lossy link every keyframe
        (several times a delta frame's size) loses packets again, and answering each PLI
        would turn it into a storm of keyframes.
        """
        if self.readyState != "live":
            return
        now = time.monotonic()
        if self._last_request is not None and now - self._last_request < (
            KEYFRAME_REQUEST_INTERVAL
        ):
            self.keyframe_requests_ignored += 1
            return
        self._last_request = now
        self._video_session.request_keyframe()

    def report_bitrate_estimate(self, bitrate: int) -> None:
        """Record the receiver's bitrate estimate (what a REMB does)."""
        self.bitrate_estimate = max(int(bitrate), 1)

    def report_loss(self, fraction: float) -> None:
        """Record a receiver report's fraction lost (0..1) and let the session adapt."""
        self.fraction_lost = min(max(float(fraction), 0.0), 1.0)
        if self.readyState == "live":
            self._video_session._report_loss()

    def _offer(self, packet: av.Packet[Any]) -> None:
        if not self._active:
            return
        if self._need_keyframe:
            if not packet.is_keyframe:
                return
            self._need_keyframe = False
        if len(self._queue) >= _QUEUE_LIMIT:
            self.pauses += 1
            self.packets_dropped += len(self._queue) + 1
            self._queue.clear()
            self._active = False
            self._video_session._update_demand()
            return
        self._push(packet)


def watch_sender_feedback(
    sender: RTCRtpSender,
    on_keyframe_request: Callable[[], None],
    on_bitrate_estimate: Callable[[int], None],
    on_loss: Callable[[float], None] | None = None,
) -> None:
    """Report ``sender``'s incoming PLI/FIR, REMB and loss, keeping aiortc's own handling.

    ``on_loss`` gets the fraction lost (0..1) of each receiver report block about this
    sender's SSRC.

    This is the project's only reach into aiortc internals: aiortc routes every RTCP packet
    for a sender to ``sender._handle_rtcp_packet(packet)`` and exposes the feedback nowhere
    else (REMB goes to its private, clamped encoder; PLI/FIR to a private flag). The wrapper
    is installed on this one sender instance only; watching the same sender again replaces
    the callbacks. Raises ``RuntimeError`` if aiortc no longer has that entry point.
    """
    handler = getattr(sender, "_handle_rtcp_packet", None)
    if handler is None or not inspect.iscoroutinefunction(handler):
        raise RuntimeError(
            "aiortc.RTCRtpSender no longer has an async _handle_rtcp_packet(packet); "
            "callclient.media.encoding.watch_sender_feedback must be updated"
        )
    original: Callable[[AnyRtcpPacket], Coroutine[Any, Any, None]] = getattr(
        handler, "_callclient_original", handler
    )

    async def handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        await original(packet)
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            ssrc = getattr(sender, "_ssrc", None)
            if on_loss is not None:
                for report in packet.reports:
                    if report.ssrc == ssrc:
                        on_loss(report.fraction_lost / 256.0)
            return
        if not isinstance(packet, RtcpPsfbPacket):
            return
        if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_keyframe_request()
        elif packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, _ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return  # an application-layer message that is not REMB
            on_bitrate_estimate(bitrate)

    handle_rtcp_packet._callclient_original = original  # type: ignore[attr-defined]
    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]
