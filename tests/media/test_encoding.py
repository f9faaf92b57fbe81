"""The shared video encoder: preset sizes and bitrates, congestion, keyframes, one encode."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    pack_remb_fci,
)

from callclient.media.encoding import (
    DEFAULT_MIN_BITRATE,
    EncodedVideoTrack,
    VideoEncoder,
    VideoEncoderSession,
    watch_sender_feedback,
)
from callclient.media.virtual import VirtualCamera
from callclient.types import (
    Resolution,
    ResolutionMode,
    resolution_bitrate_kbps,
    resolution_size,
)

T = 10.0
TIME_BASE = fractions.Fraction(1, 90000)
PRESETS = [(r, m) for r in Resolution for m in ResolutionMode]
_BACKGROUNDS: dict[tuple[int, int], np.ndarray[Any, Any]] = {}


def pattern_frame(size: tuple[int, int], index: int, fps: float = 30.0) -> av.VideoFrame:
    """Frame ``index`` of a moving virtual-camera picture at ``size``, pts on 90 kHz."""
    if size not in _BACKGROUNDS:
        _BACKGROUNDS[size] = VirtualCamera(*size).draw(0, 0.0)
    image = np.roll(_BACKGROUNDS[size], 8 * index, axis=1)
    frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
    frame.pts = round(index * 90000 / fps)
    frame.time_base = TIME_BASE
    return frame


class PatternTrack(MediaStreamTrack):
    """A fake camera track: pattern frames of a changeable size, at most ``fps`` a second."""

    kind = "video"

    def __init__(self, size: tuple[int, int] = (320, 180), fps: float = 60.0) -> None:
        super().__init__()
        self.size = size
        self.fps = fps
        self.frames = 0

    async def recv(self) -> av.VideoFrame:
        """The next frame, after 1/fps seconds."""
        if self.readyState != "live":
            raise MediaStreamError
        await asyncio.sleep(1 / self.fps)
        frame = pattern_frame(self.size, self.frames)
        self.frames += 1
        return frame


def decoder(codec: str) -> av.VideoCodecContext:
    """A decoder for the codec's packets."""
    return av.CodecContext.create("vp8" if codec == "VP8" else "h264", "r")


async def packets(track: EncodedVideoTrack, count: int) -> list[av.Packet[Any]]:
    """The next ``count`` packets of ``track``."""
    return [await asyncio.wait_for(track.recv(), T) for _ in range(count)]


async def eventually(check: Any, what: str, timeout: float = T) -> None:  # noqa: ASYNC109
    """Poll ``check()`` until true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
@pytest.mark.parametrize(("resolution", "mode"), PRESETS,
                         ids=[f"{r.name}-{m.name}" for r, m in PRESETS])
def test_decoded_size_is_exactly_the_preset(
    codec: str, resolution: Resolution, mode: ResolutionMode
) -> None:
    """Frames of a preset's size decode at exactly that size (landscape w x h, portrait h x w)."""
    size = resolution_size(resolution, mode)
    encoder = VideoEncoder(codec)
    dec = decoder(codec)
    sizes = set()
    for index in range(3):
        for packet in encoder.encode(pattern_frame(size, index), 500_000):
            sizes |= {(f.width, f.height) for f in dec.decode(packet)}
    assert sizes == {size}
    if mode is ResolutionMode.PORTRAIT:
        assert size[1] > size[0]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_configured_bitrate_is_the_recommendation_for_every_preset(codec: str) -> None:
    """Through the session, each preset encodes at its recommended rate, 2 Mbit/s at 1080p."""
    source = PatternTrack()
    session = VideoEncoderSession(source, codec, 500_000)
    track = session.subscribe()
    try:
        for resolution in Resolution:
            size = resolution_size(resolution)
            recommended = resolution_bitrate_kbps(resolution) * 1000
            source.size = size
            session.set_bitrate(recommended)
            async with asyncio.timeout(T):  # frames keep coming: bound the whole wait
                while True:
                    await track.recv()
                    if session.encoder.size == size and session.encoder.bit_rate == recommended:
                        break
            assert session.target_bitrate == recommended
        assert session.encoder.bit_rate == 2_000_000
    finally:
        await session.aclose()


async def test_congestion_lowers_the_rate_and_never_raises_it_past_the_recommendation() -> None:
    """A low REMB lowers the rate; a high one restores the recommendation but never exceeds it."""
    session = VideoEncoderSession(PatternTrack(), "VP8", 1_000_000, retune_interval=0.2)
    track = session.subscribe()
    try:
        await packets(track, 2)
        assert session.encoder.bit_rate == 1_000_000
        track.report_bitrate_estimate(400_000)
        assert session.target_bitrate == 400_000
        while session.encoder.bit_rate != 400_000:
            await asyncio.wait_for(track.recv(), T)
        track.report_bitrate_estimate(5_000_000)
        assert session.target_bitrate == 1_000_000
        seen = set()
        while session.encoder.bit_rate != 1_000_000:
            await asyncio.wait_for(track.recv(), T)
            seen.add(session.encoder.bit_rate)
        for _ in range(20):
            await asyncio.wait_for(track.recv(), T)
            seen.add(session.encoder.bit_rate)
        assert max(b for b in seen if b is not None) == 1_000_000
        track.report_bitrate_estimate(10_000)
        assert session.target_bitrate == DEFAULT_MIN_BITRATE
    finally:
        await session.aclose()


async def test_congestion_reopens_are_throttled_but_preset_changes_are_not() -> None:
    """Within retune_interval a new estimate waits (no keyframe churn); a preset applies now.

    Adaptation off: with it, half the preset's rate also lowers the size, which reopens.
    """
    session = VideoEncoderSession(
        PatternTrack(), "VP8", 1_000_000, retune_interval=60.0, adapt=False
    )
    track = session.subscribe()
    try:
        await packets(track, 2)
        track.report_bitrate_estimate(500_000)
        await packets(track, 10)
        assert session.encoder.bit_rate == 1_000_000
        assert session.encoder.opens == 1
        session.set_bitrate(600_000)  # a preset change: min(600k, 500k) applies at once
        await packets(track, 2)
        assert session.encoder.bit_rate == 500_000
    finally:
        await session.aclose()


async def test_lowest_estimate_of_all_subscribers_wins() -> None:
    """With several peers, the shared stream fits the worst link; a leaving peer lifts it."""
    session = VideoEncoderSession(PatternTrack(), "VP8", 1_200_000)
    first, second = session.subscribe(), session.subscribe()
    try:
        first.report_bitrate_estimate(900_000)
        second.report_bitrate_estimate(300_000)
        assert session.target_bitrate == 300_000
        second.stop()
        assert session.target_bitrate == 900_000
    finally:
        await session.aclose()


async def test_keyframe_forced_on_request() -> None:
    """After steady delta frames, a keyframe request makes one of the next packets a keyframe."""
    session = VideoEncoderSession(PatternTrack(), "VP8", 500_000, keyframe_interval=60.0)
    track = session.subscribe()
    try:
        first = await packets(track, 6)
        assert first[0].is_keyframe
        assert not any(p.is_keyframe for p in first[1:])
        track.request_keyframe()
        after = await packets(track, 3)
        assert any(p.is_keyframe for p in after)
        assert session.keyframe_requests >= 2  # the subscription's own and this one
    finally:
        await session.aclose()


def test_periodic_keyframe_every_interval_of_media_time() -> None:
    """Without requests, a keyframe comes every keyframe_interval seconds of media time."""
    encoder = VideoEncoder("VP8", keyframe_interval=1.0)
    keys = []
    for index in range(95):  # 30 fps: 0 .. 3.13 s
        for packet in encoder.encode(pattern_frame((320, 180), index), 300_000):
            if packet.is_keyframe:
                keys.append(index)
    assert keys == [0, 30, 60, 90]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_size_change_mid_stream_reopens_with_a_keyframe(codec: str) -> None:
    """When the source's frame size changes, the next packet is a keyframe of the new size."""
    source = PatternTrack((320, 180))
    session = VideoEncoderSession(source, codec, 500_000, keyframe_interval=60.0)
    track = session.subscribe()
    dec = decoder(codec)
    try:
        for packet in await packets(track, 5):
            dec.decode(packet)
        opens = session.encoder.opens
        source.size = (180, 320)
        async with asyncio.timeout(T):  # frames keep coming: bound the whole wait
            while True:
                packet = await track.recv()
                frames = dec.decode(packet)
                if session.encoder.size == (180, 320):
                    break
        assert packet.is_keyframe
        assert [(f.width, f.height) for f in frames] == [(180, 320)]
        assert session.encoder.opens == opens + 1
    finally:
        await session.aclose()


async def test_one_encode_per_frame_with_three_subscribers() -> None:
    """Three subscribers get the very same packets, and each frame is encoded exactly once."""
    source = PatternTrack(fps=100.0)
    session = VideoEncoderSession(source, "VP8", 500_000)
    tracks = [session.subscribe() for _ in range(3)]
    try:
        received = await asyncio.gather(*(packets(t, 30) for t in tracks))
        for track in tracks:
            track.stop()  # the pump finishes the frame in hand, then waits for demand
        await eventually(lambda: session.encoder.encodes == source.frames, "pump idle")
        await asyncio.sleep(0.1)
        assert session.encoder.encodes == source.frames
        starts = [r[0] for r in received]
        assert all(p.is_keyframe for p in starts)
        # Aligned on the last keyframe every subscriber saw, they hold identical objects.
        common = set(map(id, received[0]))
        for other in received[1:]:
            common &= set(map(id, other))
        assert len(common) >= 20
        assert session.encoder.encodes <= max(len(r) for r in received) + 5
    finally:
        await session.aclose()


async def test_late_subscriber_starts_on_a_keyframe() -> None:
    """A subscriber joining a running stream gets a keyframe first (one is forced for it)."""
    session = VideoEncoderSession(PatternTrack(), "VP8", 500_000, keyframe_interval=60.0)
    first = session.subscribe()
    try:
        await packets(first, 10)
        late = session.subscribe()
        got = await packets(late, 2)
        assert got[0].is_keyframe
        assert not got[1].is_keyframe
    finally:
        await session.aclose()


async def test_subscriber_left_unread_is_paused_and_resumes_on_a_keyframe() -> None:
    """A subscriber that stops reading stops receiving; reading again resumes on a keyframe."""
    session = VideoEncoderSession(PatternTrack(fps=200.0), "VP8", 300_000, keyframe_interval=60.0)
    reader, idle = session.subscribe(), session.subscribe()
    try:
        await packets(idle, 1)
        await packets(reader, 45)
        assert not idle.active
        assert idle.pauses == 1
        resumed = await packets(idle, 1)
        assert resumed[0].is_keyframe
    finally:
        await session.aclose()


async def test_close_ends_subscribers_and_is_idempotent() -> None:
    """aclose() ends every subscriber's recv() and can be called twice."""
    source = PatternTrack()
    session = VideoEncoderSession(source, "VP8", 500_000)
    track = session.subscribe()
    await packets(track, 2)
    await session.aclose()
    await session.aclose()
    with pytest.raises(MediaStreamError):
        await track.recv()
    with pytest.raises(RuntimeError):
        session.subscribe()
    assert source.readyState == "live"  # the session never stops its source


async def test_source_end_ends_subscribers() -> None:
    """When the source track ends, subscribers' recv() raises MediaStreamError."""
    source = PatternTrack()
    session = VideoEncoderSession(source, "VP8", 500_000)
    track = session.subscribe()
    try:
        await packets(track, 2)
        source.stop()
        with pytest.raises(MediaStreamError):
            for _ in range(10):
                await asyncio.wait_for(track.recv(), T)
    finally:
        await session.aclose()


async def _connected_pair(track: MediaStreamTrack) -> tuple[
    RTCPeerConnection, RTCPeerConnection, RTCRtpSender
]:
    """Two in-process peer connections, the first sending ``track``."""
    sender_pc, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    sender = sender_pc.addTrack(track)
    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)
    return sender_pc, receiver_pc, sender


async def test_feedback_adapter_sees_real_pli_and_remb_over_the_wire() -> None:
    """PLI and REMB sent over a real connection reach watch_sender_feedback's callbacks.

    This guards the one reach into aiortc internals: if aiortc stops routing RTCP to
    ``RTCRtpSender._handle_rtcp_packet``, this test fails.
    """
    session = VideoEncoderSession(PatternTrack(), "VP8", 500_000)
    track = session.subscribe()
    sender_pc, receiver_pc, sender = await _connected_pair(track)
    keyframe_requests: list[bool] = []
    estimates: list[int] = []
    watch_sender_feedback(sender, lambda: keyframe_requests.append(True), estimates.append)
    try:
        await eventually(lambda: track.packets_sent > 3, "packets flow")
        stats = await sender.getStats()
        ssrc = next(s.ssrc for s in stats.values() if s.type == "outbound-rtp")
        # The remote receiver sends the RTCP (its own PLI/REMB timing is not controllable).
        receiver = receiver_pc.getReceivers()[0]
        await receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=ssrc))
        remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                              fci=pack_remb_fci(777_000, [ssrc]))
        await receiver._send_rtcp(remb)
        await eventually(lambda: keyframe_requests and 777_000 in estimates,
                         "PLI and REMB observed")
    finally:
        await sender_pc.close()
        await receiver_pc.close()
        await session.aclose()


async def test_attached_track_forwards_pli_to_the_shared_encoder() -> None:
    """attach_sender: a PLI from the remote forces a keyframe in the shared encoder."""
    session = VideoEncoderSession(PatternTrack(), "VP8", 500_000, keyframe_interval=60.0)
    track = session.subscribe()
    sender_pc, receiver_pc, sender = await _connected_pair(track)
    track.attach_sender(sender)
    try:
        await eventually(lambda: track.packets_sent > 3, "packets flow")
        before = session.keyframe_requests
        keyframes = session.encoder.keyframes
        stats = await sender.getStats()
        ssrc = next(s.ssrc for s in stats.values() if s.type == "outbound-rtp")
        receiver = receiver_pc.getReceivers()[0]
        await receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=ssrc))
        await eventually(lambda: session.keyframe_requests > before, "PLI reached the session")
        await eventually(lambda: session.encoder.keyframes > keyframes, "keyframe encoded")
    finally:
        await sender_pc.close()
        await receiver_pc.close()
        await session.aclose()


async def test_receiver_report_loss_reaches_the_feedback_adapter_over_the_wire() -> None:
    """A receiver report's fraction lost about this sender reaches ``on_loss`` (0..1)."""
    session = VideoEncoderSession(PatternTrack(), "VP8", 500_000)
    track = session.subscribe()
    sender_pc, receiver_pc, sender = await _connected_pair(track)
    losses: list[float] = []
    watch_sender_feedback(sender, lambda: None, lambda _bitrate: None, losses.append)
    try:
        await eventually(lambda: track.packets_sent > 3, "packets flow")
        stats = await sender.getStats()
        ssrc = next(s.ssrc for s in stats.values() if s.type == "outbound-rtp")
        receiver = receiver_pc.getReceivers()[0]
        report = RtcpReceiverInfo(ssrc=ssrc, fraction_lost=64, packets_lost=10,
                                  highest_sequence=100, jitter=0, lsr=0, dlsr=0)
        other = RtcpReceiverInfo(ssrc=ssrc ^ 1, fraction_lost=255, packets_lost=10,
                                 highest_sequence=100, jitter=0, lsr=0, dlsr=0)
        await receiver._send_rtcp(RtcpRrPacket(ssrc=1, reports=[report, other]))
        await eventually(lambda: 0.25 in losses, "the fraction lost observed")
        assert losses == [0.25]  # the other SSRC's block is not this sender's
    finally:
        await sender_pc.close()
        await receiver_pc.close()
        await session.aclose()


async def test_low_estimate_scales_the_frames_down_and_a_clear_path_restores_them() -> None:
    """REMB at a quarter of the preset: smaller frames (reason bandwidth); then back."""
    source = PatternTrack(size=(1280, 720), fps=30.0)
    session = VideoEncoderSession(source, "VP8", 1_200_000)
    track = session.subscribe()
    try:
        await packets(track, 2)
        assert session.encoder.size == (1280, 720)
        track.report_bitrate_estimate(300_000)
        await eventually(lambda: session.encoder.size is not None
                         and session.encoder.size[0] < 1280, "frames scaled down")
        state = session.send_state
        # The first estimate is a start-up ceiling, probed above from the start (+8 %/s).
        assert "bandwidth" in state.reason and 300_000 <= state.bitrate < 400_000
        assert state.fps >= 15
        dec = decoder("VP8")
        sizes = set()
        for packet in await packets(track, 20):
            sizes |= {(f.width, f.height) for f in dec.decode(packet)}
        assert (state.width, state.height) in sizes
        track.report_bitrate_estimate(5_000_000)

        async def read() -> None:
            while True:
                await track.recv()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            # 3 s per step up, several steps. A loaded machine may hold a CPU level: only
            # the bandwidth's part of the reason must be gone.
            await eventually(lambda: "bandwidth" not in session.send_state.reason,
                             "the bandwidth level lifted", timeout=30.0)
        finally:
            reader.cancel()
        state = session.send_state
        if state.reason == "none":
            assert (state.width, state.height, state.fps) == (1280, 720, 30.0)
        assert [s.direction for s in session.adaptation_steps][-1] == "up"
    finally:
        await session.aclose()


class SlowEncoder(VideoEncoder):
    """Encodes take 2 frame budgets at 1280x720 (in proportion to the pixels): overuse."""

    def encode(self, frame: av.VideoFrame, bitrate: int, force_keyframe: bool = False,
               size: tuple[int, int] | None = None) -> list[av.Packet[Any]]:
        packets = super().encode(frame, bitrate, force_keyframe, size)
        width, height = size or (frame.width, frame.height)
        time.sleep(2.0 / 30 * width * height / (1280 * 720))
        return packets


@pytest.mark.parametrize("adapt", [True, False], ids=["adaptation-on", "adaptation-off"])
async def test_an_encoder_slower_than_the_frame_budget_degrades_the_stream(adapt: bool) -> None:
    """Encode time above the budget steps frame size and rate down (reason cpu), never
    below 15 fps; switched off, the same encoder keeps the preset."""
    source = PatternTrack(size=(1280, 720), fps=30.0)
    session = VideoEncoderSession(source, "VP8", 1_200_000, adapt=adapt)
    session.encoder = SlowEncoder("VP8")
    track = session.subscribe()
    received: list[av.Packet[Any]] = []

    async def read() -> None:
        while True:
            received.append(await track.recv())

    reader = asyncio.get_running_loop().create_task(read())
    try:
        if adapt:
            await eventually(lambda: len(session.adaptation_steps) >= 2,
                             "two degradation steps", timeout=30.0)
            steps = session.adaptation_steps
            assert all(s.reason == "cpu" and s.direction == "down" for s in steps[:2])
            assert steps[1].width * steps[1].height * steps[1].fps < 1280 * 720 * 30
            assert session.send_state.reason == "cpu" and session.send_state.fps >= 15
        else:
            await eventually(lambda: len(received) >= 40, "40 packets")  # > 2 s of overuse
            assert session.adaptation_steps == []
            assert session.encoder.size == (1280, 720)
            assert session.send_state.cpu_load > 1.0  # measured all the same
    finally:
        reader.cancel()
        await session.aclose()
