"""PeerLink pairs in one process, their relays handed straight to each other (no server).

Each side sends what the engine sends: the shared Opus and VP8 encoder tracks of a virtual
microphone and camera (:mod:`callclient.media.audio_encoding`, :mod:`callclient.media.encoding`).
A relay is delivered the way the engine delivers one, as a new ``handle_relay`` task per
message, in the order sent. Waits are for states, frames and callbacks; the liveness test
waits for keepalive ticks, never for an amount of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import psutil
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

import callclient.peer
from callclient.liveness import packets_received
from callclient.media.analysis import dominant_frequency
from callclient.media.audio_encoding import AudioEncoderSession
from callclient.media.encoding import VideoEncoderSession
from callclient.media.tracks import CameraTrack, MicrophoneTrack, audio_frame_to_mono
from callclient.media.virtual import Tone, VirtualCamera, VirtualMicrophone
from callclient.peer import PeerConfig, PeerLink, is_offerer
from tests.helpers.waits import T, eventually

SIZE = (160, 96)
TONES = {"alice": 600.0, "bob": 900.0}
LIVENESS = PeerConfig(keepalive_interval=0.1, dead_after=2.0)
"""Pings every 0.1 s; 2 s of silence (20 pings) is unresponsive, far above any loop stall."""


def udp_sockets() -> int:
    """UDP sockets this process has open."""
    return len(psutil.Process().net_connections(kind="udp"))


class Media:
    """One user's virtual microphone and camera behind the shared encoders, as the engine has."""

    def __init__(self, user_id: str) -> None:
        self.mic = VirtualMicrophone(Tone(TONES[user_id], 0.5))
        self.camera = VirtualCamera(*SIZE, fps=15)
        self.mic_track = MicrophoneTrack(self.mic)
        self.camera_track = CameraTrack(self.camera, size=SIZE)
        self.audio = AudioEncoderSession(self.mic_track)
        self.video = VideoEncoderSession(self.camera_track, "VP8", 200_000)

    async def start(self) -> None:
        await self.mic.start()
        await self.camera.start()

    async def aclose(self) -> None:
        await self.audio.aclose()
        await self.video.aclose()
        self.mic_track.stop()
        await self.camera_track.aclose()
        await self.mic.stop()
        await self.camera.stop()


Transform = Callable[[str, dict[str, Any]], list[tuple[str, dict[str, Any]]]]
"""Turns one relay into the relays delivered instead (to strip or trickle candidates)."""


@dataclass
class Side:
    """One PeerLink and what it reported and sent."""

    user_id: str
    link: PeerLink = field(init=False)
    tracks: list[tuple[str, MediaStreamTrack]] = field(default_factory=list)
    unresponsive: list[str] = field(default_factory=list)
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def track(self, kind: str) -> MediaStreamTrack:
        """The remote track of ``kind`` this side was given."""
        found = [track for _, track in self.tracks if track.kind == kind]
        assert len(found) == 1, self.tracks
        return found[0]


class Wire:
    """Delivers each side's relays to the other as the engine does: one task per relay."""

    def __init__(self) -> None:
        self.sides: dict[str, Side] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.transform: Transform = lambda kind, payload: [(kind, payload)]
        self.hold: asyncio.Event | None = None
        """When set to an unset event, ``send_relay`` waits for it (a slow server)."""
        self.held = asyncio.Event()
        """Set when a ``send_relay`` starts waiting on ``hold``."""

    def sender(self, from_id: str, to_id: str) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
        async def send_relay(kind: str, payload: dict[str, Any]) -> None:
            self.sides[from_id].sent.append((kind, payload))
            if self.hold is not None:
                self.held.set()
                await self.hold.wait()
            for out_kind, out_payload in self.transform(kind, payload):
                target = self.sides[to_id].link
                self.tasks.append(asyncio.ensure_future(target.handle_relay(out_kind, out_payload)))

        return send_relay

    def add(
        self,
        user_id: str,
        remote_id: str,
        media: Media | None,
        config: PeerConfig,
    ) -> Side:
        side = Side(user_id)
        side.link = PeerLink(
            user_id,
            remote_id,
            config,
            self.sender(user_id, remote_id),
            media.audio.subscribe() if media else None,
            media.video.subscribe() if media else None,
            lambda remote, track: side.tracks.append((remote, track)),
            side.unresponsive.append,
        )
        self.sides[user_id] = side
        return side

    def check_relays(self) -> None:
        """Every relay delivered so far was handled without an error."""
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"handle_relay failed: {task.exception()!r}")


@dataclass
class Pair:
    """alice and bob, each with a PeerLink to the other over one Wire."""

    wire: Wire
    alice: Side
    bob: Side
    media: dict[str, Media]

    async def start(self) -> None:
        await asyncio.gather(self.alice.link.start(), self.bob.link.start())

    async def connected(self) -> None:
        for side in (self.alice, self.bob):
            try:
                await asyncio.wait_for(side.link.connected.wait(), 3 * T)
            except TimeoutError:
                pytest.fail(f"{side.user_id} not connected: {side.link.pc.connectionState}")
        self.wire.check_relays()


MakePair = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def make_pair() -> AsyncIterator[MakePair]:
    """Make alice<->bob pairs (``media=False`` for none); every link and device closed after."""
    pairs: list[Pair] = []

    async def make(config: PeerConfig | None = None, media: bool = True) -> Pair:
        config = config or PeerConfig()
        devices = {user: Media(user) for user in ("alice", "bob")} if media else {}
        for item in devices.values():
            await item.start()
        wire = Wire()
        alice = wire.add("alice", "bob", devices.get("alice"), config)
        bob = wire.add("bob", "alice", devices.get("bob"), config)
        pair = Pair(wire, alice, bob, devices)
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        await asyncio.gather(pair.alice.link.close(), pair.bob.link.close())
        for task in pair.wire.tasks:
            task.cancel()
        await asyncio.gather(*pair.wire.tasks, return_exceptions=True)
        for item in pair.media.values():
            await item.aclose()


async def recv(track: MediaStreamTrack, what: str) -> Any:
    """The next frame of ``track``."""
    try:
        return await asyncio.wait_for(track.recv(), T)
    except TimeoutError:
        pytest.fail(f"no {what} frame within {T:g} s")


async def tone_of(track: MediaStreamTrack) -> float:
    """The dominant frequency of about a second of ``track`` (after its first 0.2 s)."""
    blocks = []
    for _ in range(60):
        frame = await recv(track, "audio")
        assert isinstance(frame, av.AudioFrame)
        blocks.append(audio_frame_to_mono(frame))
    return dominant_frequency(np.concatenate(blocks[10:]))


def link_tasks(side: Side) -> list[asyncio.Task[Any]]:
    """The running tasks of ``side``'s link (named after its two users)."""
    suffix = f"{side.link.local_id}->{side.link.remote_id}"
    return [t for t in asyncio.all_tasks() if t.get_name().endswith(suffix) and not t.done()]


def without_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """``sdp`` without its candidates, and those candidates as trickle payloads."""
    lines: list[str] = []
    candidates: list[dict[str, Any]] = []
    index = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        if line.startswith("a=candidate:"):
            candidates.append({"candidate": line.removeprefix("a="), "sdpMLineIndex": index})
        elif line != "a=end-of-candidates":
            lines.append(line)
    mids = [line.removeprefix("a=mid:") for line in lines if line.startswith("a=mid:")]
    for candidate in candidates:
        candidate["sdpMid"] = mids[candidate["sdpMLineIndex"]]
    return "\r\n".join(lines) + "\r\n", candidates


# --------------------------------------------------------------------------- negotiation


async def test_the_lower_user_id_offers_and_media_flows_both_ways(make_pair: MakePair) -> None:
    """alice (lower) sends the only offer, bob the only answer; each gets the other's audio and
    video tracks through ``on_track``, and they carry the other's tone and picture."""
    assert is_offerer("alice", "bob") and not is_offerer("bob", "alice")
    pair = await make_pair()
    assert pair.alice.link.offerer and not pair.bob.link.offerer
    await pair.start()
    await pair.connected()
    assert [kind for kind, _ in pair.alice.sent if kind != "candidate"] == ["offer"]
    assert [kind for kind, _ in pair.bob.sent if kind != "candidate"] == ["answer"]
    offer = pair.alice.sent[0][1]
    assert offer["type"] == "offer" and "a=candidate:" in offer["sdp"]
    for side, remote in ((pair.alice, "bob"), (pair.bob, "alice")):
        assert sorted((r, t.kind) for r, t in side.tracks) == [(remote, "audio"), (remote, "video")]
        assert abs(await tone_of(side.track("audio")) - TONES[remote]) < 15.0
        frame = await recv(side.track("video"), "video")
        assert isinstance(frame, av.VideoFrame)
        assert (frame.width, frame.height) == SIZE
    assert pair.alice.unresponsive == pair.bob.unresponsive == []


async def test_trickled_candidates_and_end_of_candidates_are_applied(
    make_pair: MakePair, caplog: pytest.LogCaptureFixture
) -> None:
    """Descriptions stripped of their candidates, the candidates relayed one by one after them,
    then an empty candidate: both sides connect on the trickled candidates alone, each applied
    after the description relayed before it (their tasks run concurrently, as in the engine)."""
    pair = await make_pair()
    trickled: list[dict[str, Any]] = []

    def trickle(kind: str, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if kind not in ("offer", "answer"):
            return [(kind, payload)]
        sdp, candidates = without_candidates(payload["sdp"])
        assert candidates
        trickled.extend(candidates)
        end = {"candidate": "", "sdpMid": candidates[0]["sdpMid"], "sdpMLineIndex": 0}
        return [(kind, {**payload, "sdp": sdp}),
                *(("candidate", c) for c in candidates), ("candidate", end)]

    pair.wire.transform = trickle
    with caplog.at_level(logging.WARNING, logger="aiortc"):
        await pair.start()
        await pair.connected()
    assert trickled
    assert "without remote description" not in caplog.text
    for side, remote in ((pair.alice, "bob"), (pair.bob, "alice")):
        assert abs(await tone_of(side.track("audio")) - TONES[remote]) < 15.0


async def test_end_of_candidates_without_any_candidate_fails_the_connection(
    make_pair: MakePair,
) -> None:
    """Descriptions without candidates followed by only an end-of-candidates: ICE has nothing
    to try and both connections fail, instead of waiting for candidates forever."""
    pair = await make_pair(media=False)

    def strip(kind: str, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if kind not in ("offer", "answer"):
            return [(kind, payload)]
        sdp, candidates = without_candidates(payload["sdp"])
        end = {"candidate": "", "sdpMid": candidates[0]["sdpMid"], "sdpMLineIndex": 0}
        return [(kind, {**payload, "sdp": sdp}), ("candidate", end)]

    pair.wire.transform = strip
    await pair.start()
    for side in (pair.alice, pair.bob):
        pc = side.link.pc
        await eventually(lambda pc=pc: pc.connectionState == "failed",
                         f"{side.user_id}'s connection failed", timeout=3 * T)
    pair.wire.check_relays()
    assert not pair.alice.link.connected.is_set()


async def test_the_configured_video_codec_is_offered_first(make_pair: MakePair) -> None:
    """``PeerConfig.video_codec`` comes first on the video line of the offer (rtx after it)."""
    pair = await make_pair(PeerConfig(video_codec="H264"), media=False)
    await pair.start()
    await pair.connected()
    sdp = pair.alice.sent[0][1]["sdp"]
    video = sdp[sdp.index("m=video"):]
    first = video.splitlines()[0].split()[3]
    assert f"a=rtpmap:{first} H264/90000" in video


async def test_bad_relays_are_refused_and_unknown_kinds_ignored(make_pair: MakePair) -> None:
    """An offer or answer without an sdp string is a ValueError; other kinds do nothing."""
    pair = await make_pair(media=False)
    link = pair.bob.link
    with pytest.raises(ValueError, match="offer without an sdp string"):
        await link.handle_relay("offer", {"type": "offer"})
    with pytest.raises(ValueError, match="answer without an sdp string"):
        await link.handle_relay("answer", {"sdp": 5})
    await link.handle_relay("custom", {"anything": 1})
    assert link.pc.signalingState == "stable"
    assert pair.bob.sent == []


# --------------------------------------------------------------------------- liveness


async def keepalive_channel(side: Side) -> Any:
    """``side``'s keepalive data channel once open (the only place its pings show)."""
    link = side.link
    await eventually(lambda: link._channel is not None and link._channel.readyState == "open",
                     f"{side.user_id}'s keepalive channel open")
    return link._channel


class Ticks:
    """Counts the keepalive pings a link's data channel sends: one per liveness check."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.sent = 0
        real_send = channel.send

        def send(data: Any) -> None:
            self.sent += 1
            real_send(data)

        channel.send = send  # type: ignore[method-assign]

    async def wait(self, count: int) -> None:
        """Wait for ``count`` more pings (liveness checks) from this link."""
        target = self.sent + count
        await eventually(lambda: self.sent >= target, f"{count} keepalive pings", timeout=3 * T)


class Outage:
    """Drops every datagram a peer connection sends (media, RTCP, DTLS, data channels).

    A test-only reach into aiortc: each ICE transport sends through its ``_send`` attribute
    (the aioice connection's ``send``); if that changes, this fails at once.
    """

    def __init__(self, pc: Any) -> None:
        self.down = False
        transports = {t.sender.transport.transport for t in pc.getTransceivers()}
        if pc.sctp is not None:
            transports.add(pc.sctp.transport.transport)
        assert transports
        for ice in transports:
            real_send = ice._send
            assert callable(real_send), "aiortc's RTCIceTransport has no _send any more"

            async def send(data: bytes, real_send: Any = real_send) -> None:
                if not self.down:
                    await real_send(data)

            ice._send = send


async def test_a_silent_peer_is_reported_once_and_responsive_again_after(
    make_pair: MakePair,
) -> None:
    """Nothing arrives from bob: alice reports bob unresponsive once, however long the silence;
    when packets come again bob is responsive, and a second silence is reported again."""
    pair = await make_pair(LIVENESS, media=False)
    await pair.start()
    await pair.connected()
    alice_ticks = Ticks(await keepalive_channel(pair.alice))
    await keepalive_channel(pair.bob)
    outage = Outage(pair.bob.link.pc)
    await alice_ticks.wait(3)
    assert not pair.alice.link.unresponsive
    outage.down = True
    await eventually(lambda: pair.alice.unresponsive == ["bob"], "alice reports bob",
                     timeout=3 * T)
    assert pair.alice.link.unresponsive
    await alice_ticks.wait(30)  # 3 s more of alice's checks, well past dead_after again
    assert pair.alice.unresponsive == ["bob"]
    outage.down = False
    await eventually(lambda: not pair.alice.link.unresponsive, "bob responsive again")
    outage.down = True
    await eventually(lambda: pair.alice.unresponsive == ["bob", "bob"], "a second report",
                     timeout=3 * T)
    assert pair.bob.unresponsive == []  # alice's packets never stopped


async def test_a_keepalive_relay_counts_as_hearing_the_peer(make_pair: MakePair) -> None:
    """A ``keepalive`` relay (allowed by the protocol) makes an unresponsive peer responsive."""
    pair = await make_pair(LIVENESS, media=False)
    await pair.start()
    await pair.connected()
    await keepalive_channel(pair.bob)
    Outage(pair.bob.link.pc).down = True
    await eventually(lambda: pair.alice.unresponsive == ["bob"], "alice reports bob",
                     timeout=3 * T)
    await pair.alice.link.handle_relay("keepalive", {})
    assert not pair.alice.link.unresponsive


async def test_a_peer_without_the_keepalive_channel_is_heard_through_its_media() -> None:
    """A client that offers audio and video but no data channel (as a browser following only
    the media rules may): its media and RTCP keep it heard over many ``dead_after`` periods;
    once it closes, it is reported unresponsive, once."""
    aaron = RTCPeerConnection()
    aaron.addTrack(AudioStreamTrack())
    aaron.addTransceiver("video", direction="recvonly")
    unresponsive: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def to_aaron(kind: str, payload: dict[str, Any]) -> None:
        if kind == "answer":
            await aaron.setRemoteDescription(RTCSessionDescription(payload["sdp"], "answer"))

    media = Media("bob")
    await media.start()
    bob = PeerLink("bob", "aaron", LIVENESS, to_aaron, media.audio.subscribe(),
                   media.video.subscribe(), lambda user, track: None, unresponsive.append)
    try:
        assert not bob.offerer
        await bob.start()
        await aaron.setLocalDescription(await aaron.createOffer())
        offer = aaron.localDescription
        tasks.append(asyncio.ensure_future(
            bob.handle_relay("offer", {"sdp": offer.sdp, "type": "offer"})))
        await asyncio.wait_for(bob.connected.wait(), 3 * T)
        assert bob._channel is None  # no keepalive channel on this connection
        checks = int(3 * LIVENESS.dead_after / LIVENESS.keepalive_interval)
        before = bob.created
        await eventually(lambda: bob.liveness.last_heard is not None
                         and bob.liveness.last_heard > before + 3 * LIVENESS.dead_after,
                         f"{checks} checks hearing aaron", timeout=6 * T)
        assert unresponsive == []
        assert await packets_received(bob.pc) > checks  # aiortc's counter, over a real link
        await aaron.close()
        await eventually(lambda: unresponsive == ["aaron"], "bob reports aaron", timeout=3 * T)
    finally:
        await bob.close()
        await aaron.close()
        await media.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_closed_data_channel_is_reported_unresponsive(make_pair: MakePair) -> None:
    """bob closes the keepalive channel: alice hears nothing more and reports bob, once."""
    pair = await make_pair(LIVENESS, media=False)
    await pair.start()
    await pair.connected()
    alice_channel = await keepalive_channel(pair.alice)
    bob_channel = await keepalive_channel(pair.bob)
    bob_channel.close()
    await eventually(lambda: alice_channel.readyState == "closed", "alice's end closed too")
    await eventually(lambda: pair.alice.unresponsive == ["bob"], "alice reports bob",
                     timeout=3 * T)
    assert pair.alice.link.unresponsive


# --------------------------------------------------------------------------- close


async def test_close_is_idempotent_and_releases_every_udp_socket(make_pair: MakePair) -> None:
    """Connected links hold UDP sockets; closing both (twice) frees them all, ends their
    tasks, and leaves the shared encoders (the links only unsubscribe)."""
    before = udp_sockets()
    pair = await make_pair()
    await pair.start()
    await pair.connected()
    assert udp_sockets() > before
    assert link_tasks(pair.alice) and link_tasks(pair.bob)
    for side in (pair.alice, pair.bob):
        await side.link.close()
        await side.link.close()
        assert side.link.pc.connectionState == "closed"
        assert not link_tasks(side)
    await eventually(lambda: udp_sockets() == before, f"back to {before} UDP sockets")
    for media in pair.media.values():
        assert media.audio.subscribers == 0 and media.video.subscribers == 0
    await pair.alice.link.handle_relay("offer", {"sdp": "v=0"})  # ignored once closed


async def test_closing_the_offerer_while_it_gathers_sends_nothing_and_leaks_nothing(
    make_pair: MakePair,
) -> None:
    """close() while start() is making the offer: start returns quietly, no offer goes out
    after close() was called, and every UDP socket it opened is closed."""
    before = udp_sockets()
    pair = await make_pair(media=False)
    start = asyncio.ensure_future(pair.alice.link.start())
    await asyncio.sleep(0)  # start() runs up to its first wait: gathering candidates
    await pair.alice.link.close()
    await asyncio.wait_for(start, T)
    assert pair.alice.sent == []
    assert not link_tasks(pair.alice)
    await pair.bob.link.close()
    await eventually(lambda: udp_sockets() == before, f"back to {before} UDP sockets")


async def test_closing_the_answerer_while_it_answers_sends_nothing_and_leaks_nothing(
    make_pair: MakePair,
) -> None:
    """bob closed while handling alice's offer: no answer goes out, no UDP socket is left."""
    before = udp_sockets()
    pair = await make_pair(media=False)
    pair.wire.transform = lambda kind, payload: []  # keep the offer from bob; handed over below
    await pair.alice.link.start()
    offer = pair.alice.sent[0][1]
    await pair.bob.link.start()
    answering = asyncio.ensure_future(pair.bob.link.handle_relay("offer", offer))
    await asyncio.sleep(0)  # handling the offer, up to its first wait
    await pair.bob.link.close()
    await asyncio.wait_for(answering, T)
    assert pair.bob.sent == []
    await pair.alice.link.close()
    await eventually(lambda: udp_sockets() == before, f"back to {before} UDP sockets")


async def test_close_waits_for_a_sending_negotiation_then_releases_its_sockets(
    make_pair: MakePair,
) -> None:
    """close() while the offer is being relayed waits for the relay, then closes; a relay
    that never returns is given up on after a bounded wait."""
    before = udp_sockets()
    pair = await make_pair(media=False)
    pair.wire.hold = asyncio.Event()
    start = asyncio.ensure_future(pair.alice.link.start())
    await asyncio.wait_for(pair.wire.held.wait(), T)
    closing = asyncio.ensure_future(pair.alice.link.close())
    await asyncio.sleep(0)
    assert not closing.done()  # waiting for the negotiation, which holds the sockets
    pair.wire.hold.set()
    await asyncio.wait_for(asyncio.gather(start, closing), T)
    assert pair.alice.link.pc.connectionState == "closed"
    assert not link_tasks(pair.alice)
    await pair.bob.link.close()
    await eventually(lambda: udp_sockets() == before, f"back to {before} UDP sockets")


async def test_close_gives_up_on_a_relay_that_never_returns(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A negotiation stuck in ``send_relay`` delays close() only for its bounded wait."""
    monkeypatch.setattr(callclient.peer, "_CLOSE_WAIT", 0.2)
    before = udp_sockets()
    pair = await make_pair(media=False)
    pair.wire.hold = asyncio.Event()  # never set
    start = asyncio.ensure_future(pair.alice.link.start())
    await asyncio.wait_for(pair.wire.held.wait(), T)
    await asyncio.wait_for(pair.alice.link.close(), T)
    assert pair.alice.link.pc.connectionState == "closed"
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    await pair.bob.link.close()
    await eventually(lambda: udp_sockets() == before, f"back to {before} UDP sockets")
