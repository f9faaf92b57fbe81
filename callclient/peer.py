"""One RTCPeerConnection per remote participant: negotiation, remote tracks, liveness.

The offer rule is deterministic: the user whose id sorts lower offers, the other answers, so
two peers never offer to each other at once (docs/protocol.md, "Media negotiation"). aiortc
gathers every ICE candidate before ``setLocalDescription`` returns, so the SDP sent is complete;
candidates a remote client trickles are added in the order relayed, after the description
relayed before them; an empty one signals the end of candidates.

aiortc has no transient "disconnected" state, so liveness is checked here
(:mod:`callclient.liveness`): every ``keepalive_interval`` the datagrams received on the
connection are counted (media, RTCP, data channels), and the offerer opens a ``keepalive``
data channel on which each side sends a small ping, so a connection without media stays
heard; a client that does not speak that channel is heard through its media and RTCP.
Silence for ``dead_after`` seconds reports the peer as unresponsive, once per silence; the
next packet makes it responsive again. Whether a silence means the user left is the engine's
decision (the server knows better while signaling is up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import candidate_from_sdp

from callclient.icepath import prefer_direct
from callclient.liveness import Liveness, packets_received
from callclient.media.audio_encoding import EncodedAudioTrack
from callclient.media.encoding import EncodedVideoTrack
from callclient.media.receive import AiortcInternalsChanged, install_low_latency_buffers

__all__ = ["IceServer", "PeerConfig", "PeerLink", "is_offerer"]

logger = logging.getLogger(__name__)

KEEPALIVE_LABEL = "keepalive"

_CLOSE_WAIT = 5.0
"""Seconds :meth:`PeerLink.close` waits for a negotiation in progress before closing anyway."""


def is_offerer(local_id: str, remote_id: str) -> bool:
    """The side whose user id sorts lower sends the offer."""
    return local_id < remote_id


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class PeerConfig:
    """Media settings shared by every peer connection of an engine."""

    ice_servers: list[IceServer] = field(default_factory=list)
    relay_only: bool = False
    """ICE transport policy ``relay``: only TURN candidates (tests, benchmarks, privacy)."""
    video_codec: str = "VP8"
    keepalive_interval: float = 1.0
    dead_after: float = 4.0
    restart_after: float = 2.0
    """A connected link whose path has carried nothing for this long (media, RTCP, the
    keepalive channel; not relays through the server) is restarted (``on_restart``): a fresh
    peer connection, negotiated again, while signaling is up (docs/protocol.md, "Media
    restart")."""
    connect_timeout: float = 20.0
    """A link not connected this long after it started is reported failed (``on_failed``):
    aioice itself gives up on a pair only after ~31 s of STUN retransmissions, and a relayed
    setup over a slow path takes a few seconds (TURN probe, relay checks 1.5 s later)."""


SendRelay = Callable[[str, dict[str, Any]], Awaitable[None]]


class PeerLink:
    """The media connection with one remote user of the current call."""

    def __init__(
        self,
        local_id: str,
        remote_id: str,
        config: PeerConfig,
        send_relay: SendRelay,
        audio_track: MediaStreamTrack | None,
        video_track: MediaStreamTrack | None,
        on_track: Callable[[str, MediaStreamTrack], None],
        on_unresponsive: Callable[[str], None],
        on_failed: Callable[[str, str], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        generation: int = 0,
    ) -> None:
        self.local_id = local_id
        self.generation = generation
        """0 for the first connection with this user, +1 for each restart."""
        self._on_restart = on_restart
        self.remote_id = remote_id
        self.config = config
        self._send_relay = send_relay
        self._audio_track = audio_track
        self._video_track = video_track
        self._on_track = on_track
        self._on_unresponsive = on_unresponsive
        self._on_failed = on_failed
        self.failed = False
        """Whether ICE found no path (reported once through ``on_failed``)."""
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(s.urls, s.username, s.credential) for s in config.ice_servers
                ],
                iceTransportPolicy=(
                    RTCIceTransportPolicy.RELAY if config.relay_only else RTCIceTransportPolicy.ALL
                ),
            )
        )
        self.pc.on("track", self._track)
        self.pc.on("datachannel", self._datachannel)
        self.pc.on("connectionstatechange", self._state_changed)
        self._channel: RTCDataChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._negotiating = asyncio.Lock()
        self._closed = False
        self.liveness = Liveness(config.dead_after)
        self._path = Liveness(config.restart_after)
        """Silence of the media path itself, for restarts (relays do not count)."""
        self._packets = 0
        self.created = time.monotonic()
        self.connected = asyncio.Event()

    @property
    def unresponsive(self) -> bool:
        """Whether the peer is silent right now (reported through ``on_unresponsive``)."""
        return self.liveness.silent

    @property
    def _prefers_direct(self) -> bool:
        """Relay pairs wait for direct ones (:func:`~callclient.icepath.prefer_direct`) except
        on a restart (the direct path just died: the first path that works wins) and with
        ``relay_only`` (there is nothing else)."""
        return not self.generation and not self.config.relay_only

    @property
    def offerer(self) -> bool:
        """Whether this side sends the offer."""
        return is_offerer(self.local_id, self.remote_id)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name} {self.local_id}->{self.remote_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("peer task %s failed: %r", task.get_name(), task.exception())

    def _add_local_tracks(self) -> None:
        for kind, track in (("audio", self._audio_track), ("video", self._video_track)):
            if track is not None:
                sender = self.pc.addTrack(track)
                if isinstance(track, EncodedVideoTrack):
                    track.attach_sender(sender)  # PLI/FIR and REMB reach the shared encoder
            elif not any(t.kind == kind for t in self.pc.getTransceivers()):
                self.pc.addTransceiver(kind, direction="recvonly")
        self._prefer_codec()

    def _prefer_codec(self) -> None:
        wanted = f"video/{self.config.video_codec}".lower()
        codecs = RTCRtpSender.getCapabilities("video").codecs
        preferred = [c for c in codecs if c.mimeType.lower() == wanted]
        if not preferred:
            return
        # rtx must follow the codecs it repairs; keep it after the chosen codec.
        preferred += [c for c in codecs if c.mimeType.lower() == "video/rtx"]
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.setCodecPreferences(preferred)

    async def start(self) -> None:
        """Begin: the offerer sends an offer; the answerer waits for one."""
        if self.offerer:
            self._open_channel(self.pc.createDataChannel(KEEPALIVE_LABEL))
            self._add_local_tracks()
            async with self._negotiating:
                if self._closed:
                    return
                try:
                    offer = await self.pc.createOffer()
                    if self._prefers_direct:
                        prefer_direct(self.pc)
                    await self.pc.setLocalDescription(offer)
                    if self._closed:
                        return  # closed while gathering: the remote must not get an offer
                    await self._send_description()
                except Exception:
                    if self._closed:
                        return  # closed meanwhile: the failure is the close's doing
                    raise
        if not self._closed:
            self._spawn(self._keepalive_loop(), "keepalive")
            self._spawn(self._connect_watch(), "connect watch")

    async def _connect_watch(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), self.config.connect_timeout)
        except TimeoutError:
            self._fail(f"not connected within {self.config.connect_timeout:g} s")

    def _fail(self, reason: str) -> None:
        if self.failed or self._closed or self.connected.is_set():
            return
        self.failed = True
        logger.warning("no media path to %s: %s", self.remote_id, reason)
        if self._on_failed is not None:
            self._on_failed(self.remote_id, reason)

    async def _send_description(self) -> None:
        description = self.pc.localDescription
        payload: dict[str, Any] = {"sdp": description.sdp, "type": description.type}
        if self.generation:
            payload["restart"] = self.generation
        await self._send_relay(description.type, payload)

    async def handle_relay(self, kind: str, payload: dict[str, Any]) -> None:
        """Apply an offer, answer or candidate relayed from the remote user."""
        if self._closed:
            return
        if kind == "offer":
            sdp = payload.get("sdp")
            if not isinstance(sdp, str):
                raise ValueError("offer without an sdp string")
            async with self._negotiating:
                if self._closed:
                    return
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
                if not self.pc.getSenders() or all(s.track is None for s in self.pc.getSenders()):
                    self._add_local_tracks()
                answer = await self.pc.createAnswer()
                if self._prefers_direct:
                    prefer_direct(self.pc)
                await self.pc.setLocalDescription(answer)
                if self._closed:
                    return  # closed while gathering: no answer from a closed link
                await self._send_description()
        elif kind == "answer":
            sdp = payload.get("sdp")
            if not isinstance(sdp, str):
                raise ValueError("answer without an sdp string")
            async with self._negotiating:
                if self._closed:
                    return
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        elif kind == "candidate":
            text = payload.get("candidate")
            candidate = None  # an empty candidate: end of candidates
            if text:
                candidate = candidate_from_sdp(str(text).removeprefix("candidate:"))
                candidate.sdpMid = payload.get("sdpMid")
                candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
            # Relays are handled in concurrent tasks: the lock (first come, first served)
            # applies a candidate after the description relayed before it, as ICE requires.
            async with self._negotiating:
                if self._closed:
                    return
                await self.pc.addIceCandidate(candidate)
        elif kind == "keepalive":
            self._heard()

    def _track(self, track: MediaStreamTrack) -> None:
        # aiortc fires "track" in setRemoteDescription, before connecting: no media yet.
        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is track:
                install_low_latency_buffers(transceiver.receiver, track.kind)
        self._on_track(self.remote_id, track)

    def _datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == KEEPALIVE_LABEL:
            self._open_channel(channel)

    def _open_channel(self, channel: RTCDataChannel) -> None:
        self._channel = channel

        @channel.on("message")
        def heard(message: Any) -> None:
            self._heard()
            self._path.heard(time.monotonic())

    def _heard(self) -> None:
        if self.liveness.heard(time.monotonic()):
            logger.info("peer %s responsive again", self.remote_id)

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        logger.debug("peer %s connection state %s", self.remote_id, state)
        if state == "connected":
            self.liveness.connected(time.monotonic())
            self._path.connected(time.monotonic())
            self.connected.set()
        elif state == "failed":
            self._fail("ICE failed: every candidate pair was tried")

    async def _keepalive_loop(self) -> None:
        interval = self.config.keepalive_interval
        steady = 0  # ticks in a row that woke on time
        while not self._closed:
            slept_at = time.monotonic()
            await asyncio.sleep(interval)
            # A loop stalled by a loaded machine has datagrams waiting unread: the path only
            # looks silent. Restarts are decided on two punctual ticks in a row.
            steady = steady + 1 if time.monotonic() - slept_at < 1.5 * interval else 0
            channel = self._channel
            if channel is not None and channel.readyState == "open":
                with contextlib.suppress(Exception):
                    channel.send(b"p")
            if not self.liveness.started:
                continue  # still connecting: negotiation has its own timeouts
            try:
                received = await packets_received(self.pc)
            except AiortcInternalsChanged:
                raise
            except Exception:  # closing under us
                logger.debug("statistics of %s unavailable", self.remote_id, exc_info=True)
                continue
            if received > self._packets:
                self._packets = received
                self._heard()
                self._path.heard(time.monotonic())
            if steady >= 2 and self._path.check(time.monotonic()) \
                    and self._on_restart is not None:
                logger.info("path to %s silent for %.1f s: restarting its media",
                            self.remote_id, self.config.restart_after)
                self._on_restart(self.remote_id)
            if self.liveness.check(time.monotonic()):
                logger.info("peer %s silent for %.1f s", self.remote_id, self.config.dead_after)
                self._on_unresponsive(self.remote_id)

    async def close(self) -> None:
        """Close the peer connection and cancel its tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for track in (self._audio_track, self._video_track):
            if isinstance(track, EncodedVideoTrack | EncodedAudioTrack):
                track.stop()  # this link's subscription: leave the shared encoder
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # A negotiation in progress may be gathering ICE candidates: closing the connection
        # under it leaks the UDP sockets it opens afterwards. Let it finish first.
        try:
            async with asyncio.timeout(_CLOSE_WAIT), self._negotiating:
                await self.pc.close()
        except TimeoutError:
            logger.warning("peer %s: negotiation still running at close", self.remote_id)
            await self.pc.close()
