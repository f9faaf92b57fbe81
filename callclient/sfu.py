"""The media path of a call through an SFU: one publisher connection, one subscriber connection.

:class:`SfuTransport` stands beside :class:`~callclient.mesh.PeerMesh` with the same methods
the call media uses (``connect``, ``detach``, ``apply``, ``close``, ``peers``), for a call the
server put in a Janus VideoRoom (``SFU_ROOM``, docs/protocol.md "Group media through an SFU").
It publishes this user's one audio and one video stream (the same encoded tracks a peer link
sends: one encode, one upload) and subscribes, on one multistream connection, to the feeds of
the members the call core connected; a member's tracks are the subscriber's transceivers
whose Janus stream has their user id as ``feed_display``, handed to ``on_track`` once per
(mid, user) even when Janus reuses an m-line for someone else.

Liveness works as in the mesh: each member's feed is counted by the packets its receivers got;
one silent for ``dead_after`` is reported through ``on_unresponsive`` (once per silence). A
new room (:meth:`SfuTransport.move`, a higher epoch) or a lost Janus session starts over:
close both connections, publish and subscribe again; members stay connected for the call.
A subscriber connection that fails on its own (aioice closes it when six consent checks in a
row go unanswered: a receiver too starved to read its socket loses their replies with its
media) is replaced: a new subscriber handle joins with every wanted feed, the publisher stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)

from callclient.janus import JanusError, JanusHandle, JanusSession
from callclient.liveness import Liveness
from callclient.media.audio_encoding import EncodedAudioTrack
from callclient.media.encoding import EncodedVideoTrack
from callclient.media.receive import connect_receivers, install_low_latency_buffers
from callclient.peer import PeerConfig
from callclient.tasks import TaskOwner
from callwire.messages import SfuRoom
from callwire.protocol import Relay

__all__ = ["SfuFeed", "SfuTransport"]

logger = logging.getLogger(__name__)

_JOIN_RETRY_SECONDS = 8.0
"""How long a join refused as "no such room" (426) or "token not allowed" (433) is retried:
the server creates the room and adds the token while its events travel."""
_JOIN_RETRY_INTERVAL = 0.2
_RESTART_DELAY = 0.5
"""Pause before publishing again after the Janus session was lost."""
_CONNECT_WAIT = 10.0
"""How long a re-offer waits for the subscriber connection's first negotiation to connect."""
_RESUBSCRIBE_DELAY = 0.5
"""Pause before replacing a subscriber connection that failed."""
_NO_ROOM = 426
_UNAUTHORIZED = 433


@dataclass
class SfuFeed:
    """What the transport knows of one member: for the monitor (``pc``) and liveness."""

    user_id: str
    transport: SfuTransport
    liveness: Liveness
    packets: int = 0
    mids: set[str] = field(default_factory=set)

    @property
    def pc(self) -> RTCPeerConnection | None:
        """The subscriber connection the member's media arrives on (shared by all)."""
        return self.transport.subscriber_pc

    async def close(self) -> None:
        """The member left: stop subscribing to their feed."""
        self.transport.forget(self.user_id)


def _rtc_config(config: PeerConfig) -> RTCConfiguration:
    # max-bundle: with aiortc's default (balanced), a video m-line after the first in one
    # offer is put on a transport that the bundling then discards, and never receives.
    return RTCConfiguration(
        iceServers=[RTCIceServer(s.urls, s.username, s.credential) for s in config.ice_servers],
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
    )


class SfuTransport:
    """The call's connections with its SFU room, and the members subscribed to."""

    def __init__(
        self,
        local_id: str,
        room: SfuRoom,
        config: PeerConfig,
        tasks: TaskOwner,
        *,
        audio_track: Callable[[], MediaStreamTrack],
        video_track: Callable[[], MediaStreamTrack],
        on_track: Callable[[str, MediaStreamTrack], None],
        on_unresponsive: Callable[[str], None],
        on_connect: Callable[[str, SfuFeed], None] | None = None,
    ) -> None:
        self.local_id = local_id
        self.room = room
        self.config = config
        self._tasks = tasks
        self._audio_track = audio_track
        self._video_track = video_track
        self._on_track = on_track
        self._on_unresponsive = on_unresponsive
        self._on_connect = on_connect
        self.peers: dict[str, SfuFeed] = {}
        """The members this side subscribes to, by user id (what the call core connected)."""
        self.publisher_pc: RTCPeerConnection | None = None
        self.subscriber_pc: RTCPeerConnection | None = None
        self.published = asyncio.Event()
        """Set once this user's stream is published in the current room."""
        self._subscriber: JanusHandle | None = None
        self._private_id: int | None = None
        self._feeds: dict[str, int] = {}  # user id -> Janus feed id (publisher id)
        self._subscribed: set[int] = set()  # feed ids in the subscriber connection
        self._mid_user: dict[str, str] = {}  # subscriber mid -> user whose track it carries
        self._dirty = asyncio.Event()
        self._moved = asyncio.Event()
        self._subscriber_settled = asyncio.Event()
        """Set once the subscriber connection left "connecting" (a re-offer waits for it)."""
        self._subscriber_failed = asyncio.Event()
        """Set when the current subscriber connection failed or closed by itself."""
        self.resubscribes = 0
        """Subscriber connections replaced after they failed (in every room)."""
        self._lock = asyncio.Lock()
        """One negotiation of the subscriber connection at a time."""
        self._closed = False
        self._run_task: asyncio.Task[None] | None = tasks.spawn(
            self._run(), name=f"sfu {local_id} room {room.room}")

    # ------------------------------------------------------------------ the mesh's methods

    def connect(self, user_id: str) -> SfuFeed:
        """Subscribe to ``user_id``'s feed (as soon as it is published)."""
        feed = self.peers.get(user_id)
        if feed is None:
            feed = self.peers[user_id] = SfuFeed(user_id, self, Liveness(self.config.dead_after))
            if self._on_connect is not None:
                self._on_connect(user_id, feed)
            self._dirty.set()
        return feed

    def apply(self, relay: Relay) -> None:
        """Nothing is relayed in an SFU call (a mesh client's stray message is ignored)."""
        logger.debug("relay %s from %s ignored: the call uses the SFU", relay.kind, relay.sender)

    def detach(self, user_id: str) -> SfuFeed | None:
        """Forget ``user_id``; closing what is returned unsubscribes from their feed."""
        return self.peers.pop(user_id, None)

    def forget(self, user_id: str) -> None:
        """Stop receiving ``user_id`` (after :meth:`detach`)."""
        self.peers.pop(user_id, None)
        for mid, user in list(self._mid_user.items()):
            if user == user_id:
                del self._mid_user[mid]
        self._dirty.set()

    async def close(self) -> None:
        """Leave the room: both connections and the Janus session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.peers.clear()
        await self._stop_run()

    # ------------------------------------------------------------------ room changes

    def move(self, room: SfuRoom) -> None:
        """The call moved to another room (higher epoch): publish and subscribe there."""
        if self._closed or room.epoch <= self.room.epoch:
            return
        logger.info("call moved to room %d on %s", room.room, room.url)
        self.room = room
        self._moved.set()

    async def _stop_run(self) -> None:
        task, self._run_task = self._run_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # ------------------------------------------------------------------ the session

    async def _run(self) -> None:
        """Publish and subscribe in the current room, again whenever it moves or is lost."""
        while not self._closed:
            room = self.room
            self._moved.clear()
            session = JanusSession(room.url)
            lost = asyncio.Event()
            session.on_lost = lost.set
            attempt = asyncio.ensure_future(self._session_round(session, lost))
            moved = asyncio.ensure_future(self._moved.wait())
            try:
                # A move interrupts whatever the attempt is doing (even a join being retried).
                await asyncio.wait([attempt, moved], return_when=asyncio.FIRST_COMPLETED)
                if attempt.done():
                    attempt.result()
            except (JanusError, OSError) as exc:
                logger.warning("sfu %s: %s", room.url, exc)
            finally:
                for task in (attempt, moved):
                    task.cancel()
                await asyncio.gather(attempt, moved, return_exceptions=True)
                await self._teardown(session)
            if self.room is room and not self._closed:
                # Lost or refused: start over in the same room after a pause (the server
                # moves the call when its instance is gone for good).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RESTART_DELAY):
                        await self._moved.wait()

    async def _session_round(self, session: JanusSession, lost: asyncio.Event) -> None:
        await session.create()
        self._subscriber_failed.clear()
        publisher = await session.attach()
        publisher.on_event = self._publisher_event
        await self._publish(publisher)
        self._subscriber = await session.attach()
        self._subscriber.on_event = self._subscriber_event
        self._dirty.set()
        waits = [asyncio.ensure_future(lost.wait()),
                 asyncio.ensure_future(self._subscribe_loop()),
                 asyncio.ensure_future(self._liveness_loop()),
                 asyncio.ensure_future(self._resubscribe_loop(session))]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _teardown(self, session: JanusSession) -> None:
        pcs = [pc for pc in (self.publisher_pc, self.subscriber_pc) if pc is not None]
        self.publisher_pc = self.subscriber_pc = None
        self._subscriber = None
        self._private_id = None
        for feed in self.peers.values():
            feed.packets = 0  # the counters were the closed connection's
            feed.mids.clear()
        self._feeds.clear()
        self._subscribed.clear()
        self._mid_user.clear()
        for pc in pcs:
            for sender in pc.getSenders():
                if isinstance(sender.track, EncodedVideoTrack | EncodedAudioTrack):
                    sender.track.stop()  # leave the shared encoder
            with contextlib.suppress(Exception):
                await pc.close()
        await session.destroy()

    async def _join(
        self, handle: JanusHandle, body: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        deadline = time.monotonic() + _JOIN_RETRY_SECONDS
        while True:
            try:
                return await handle.request(body)
            except JanusError as exc:
                if exc.code not in (_NO_ROOM, _UNAUTHORIZED) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(_JOIN_RETRY_INTERVAL)

    async def _publish(self, handle: JanusHandle) -> None:
        joined, _ = await self._join(handle, {
            "request": "join", "ptype": "publisher", "room": self.room.room,
            "pin": self.room.pin, "token": self.room.token, "display": self.local_id,
        })
        self._private_id = int(joined["private_id"])
        self._learn_publishers(joined.get("publishers", []))
        pc = self.publisher_pc = RTCPeerConnection(_rtc_config(self.config))
        for track in (self._audio_track(), self._video_track()):
            sender = pc.addTrack(track)
            if isinstance(track, EncodedVideoTrack):
                track.attach_sender(sender)  # PLI/FIR and REMB from Janus reach the encoder
        self._prefer_codec(pc)
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription
        _, jsep = await handle.request(
            {"request": "configure", "audio": True, "video": True},
            {"type": offer.type, "sdp": offer.sdp, "trickle": False},
        )
        if jsep is None:
            raise JanusError("configure: no answer from Janus")
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], jsep["type"]))
        self.published.set()

    def _prefer_codec(self, pc: RTCPeerConnection) -> None:
        wanted = f"video/{self.config.video_codec}".lower()
        codecs = RTCRtpSender.getCapabilities("video").codecs
        preferred = [c for c in codecs if c.mimeType.lower() == wanted]
        if preferred:
            preferred += [c for c in codecs if c.mimeType.lower() == "video/rtx"]
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(preferred)

    # ------------------------------------------------------------------ who publishes

    def _learn_publishers(self, publishers: list[dict[str, Any]]) -> None:
        for publisher in publishers:
            display, feed = publisher.get("display"), publisher.get("id")
            if isinstance(display, str) and isinstance(feed, int) and display != self.local_id:
                self._feeds[display] = feed
        self._dirty.set()

    def _publisher_event(self, data: dict[str, Any], jsep: dict[str, Any] | None) -> None:
        if "publishers" in data:
            self._learn_publishers(data["publishers"])
        for key in ("unpublished", "leaving"):
            gone = data.get(key)
            if isinstance(gone, int):
                for user, feed in list(self._feeds.items()):
                    if feed == gone:
                        del self._feeds[user]
                self._subscribed.discard(gone)
                self._dirty.set()

    # ------------------------------------------------------------------ the subscriber

    def _subscriber_event(self, data: dict[str, Any], jsep: dict[str, Any] | None) -> None:
        # Janus re-offers on its own when a subscribed publisher goes away.
        if jsep is not None and jsep.get("type") == "offer":

            async def answer() -> None:
                async with self._lock:
                    handle = self._subscriber
                    try:
                        await self._answer(data, jsep)
                    except JanusError as exc:
                        if handle is self._subscriber and not self._closed:
                            raise
                        # The session or handle went away meanwhile (left, moved, replaced).
                        logger.info("%s: re-offer not answered: %s", self.local_id, exc)

            self._tasks.spawn(answer(), name="sfu re-offer")

    async def _subscribe_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            async with self._lock:
                await self._reconcile()

    async def _reconcile(self) -> None:
        handle = self._subscriber
        if handle is None or self._private_id is None:
            return
        wanted = {self._feeds[u] for u in self.peers if u in self._feeds}
        add = sorted(wanted - self._subscribed)
        published = set(self._feeds.values())
        # Feeds no longer published went with their publisher (Janus re-offers by itself);
        # feeds still published by someone no longer connected are unsubscribed.
        drop = sorted((self._subscribed - wanted) & published)
        self._subscribed &= published
        if self.subscriber_pc is None:
            if not add:
                return
            data, jsep = await self._join(handle, {
                "request": "join", "ptype": "subscriber", "room": self.room.room,
                "pin": self.room.pin, "private_id": self._private_id,
                "streams": [{"feed": f} for f in add],
            })
            self._subscribed.update(add)
            pc = self.subscriber_pc = RTCPeerConnection(_rtc_config(self.config))
            settled = self._subscriber_settled = asyncio.Event()

            @pc.on("connectionstatechange")
            def state_changed() -> None:
                if pc.connectionState not in ("new", "connecting"):
                    settled.set()
                if pc.connectionState in ("failed", "closed") and pc is self.subscriber_pc:
                    logger.info("%s: subscriber connection %s", self.local_id,
                                pc.connectionState)
                    self._subscriber_failed.set()

            for user_id, feed in self.peers.items():
                if self._on_connect is not None:
                    self._on_connect(user_id, feed)  # the monitor watches the new connection
            await self._answer(data, jsep)
            return
        if add:
            self._subscribed.update(add)
            data, jsep = await handle.request(
                {"request": "subscribe", "streams": [{"feed": f} for f in add]})
            await self._answer(data, jsep)
        if drop:
            self._subscribed.difference_update(drop)
            data, jsep = await handle.request(
                {"request": "unsubscribe", "streams": [{"feed": f} for f in drop]})
            await self._answer(data, jsep)

    async def _answer(self, data: dict[str, Any], jsep: dict[str, Any] | None) -> None:
        pc, handle = self.subscriber_pc, self._subscriber
        if pc is None or handle is None or jsep is None:
            return
        renegotiation = pc.remoteDescription is not None
        if renegotiation and pc.connectionState != "connected":
            # Let the first negotiation connect: the new receivers can only be started (and
            # their streams routed to them, not to an older one) on a connected transport.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CONNECT_WAIT):
                    await self._subscriber_settled.wait()
        if pc is not self.subscriber_pc or pc.signalingState == "closed":
            return  # torn down (call left or moved) while waiting: nothing to answer
        streams = data.get("streams")
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], jsep["type"]))
        if isinstance(streams, list):
            self._map_streams(streams)
        await pc.setLocalDescription(await pc.createAnswer())
        if renegotiation and pc.connectionState == "connected":
            # Start the new receivers before Janus sends to them.
            await connect_receivers(pc)
        answer = pc.localDescription
        await handle.request({"request": "start"},
                             {"type": answer.type, "sdp": answer.sdp, "trickle": False})

    def _map_streams(self, streams: list[dict[str, Any]]) -> None:
        pc = self.subscriber_pc
        if pc is None:
            return
        by_mid: dict[str, RTCRtpTransceiver] = {
            t.mid: t for t in pc.getTransceivers() if t.mid is not None}
        for stream in streams:
            mid = str(stream.get("mid"))
            user = stream.get("feed_display")
            active = stream.get("active", True) and stream.get("type") in ("audio", "video")
            if not active or not isinstance(user, str):
                self._mid_user.pop(mid, None)
                continue
            transceiver = by_mid.get(mid)
            if transceiver is None or transceiver.receiver.track is None:
                continue
            if self._mid_user.get(mid) == user:
                continue
            self._mid_user[mid] = user
            logger.debug("%s: mid %s carries %s", self.local_id, mid, user)
            feed = self.peers.get(user)
            if feed is None:
                continue
            feed.mids.add(mid)
            track = transceiver.receiver.track
            install_low_latency_buffers(transceiver.receiver, track.kind, wait_keyframe=True)
            self._on_track(user, track)

    async def _resubscribe_loop(self, session: JanusSession) -> None:
        while True:
            await self._subscriber_failed.wait()
            await asyncio.sleep(_RESUBSCRIBE_DELAY)
            self._subscriber_failed.clear()
            await self._resubscribe(session)

    async def _resubscribe(self, session: JanusSession) -> None:
        """Replace the failed subscriber connection: a new handle joins with every feed."""
        async with self._lock:
            pc, handle = self.subscriber_pc, self._subscriber
            if pc is None or pc.connectionState not in ("failed", "closed"):
                return
            self.resubscribes += 1
            logger.info("%s: subscribing again (the connection %s)", self.local_id,
                        pc.connectionState)
            self.subscriber_pc = None
            self._subscribed.clear()
            self._mid_user.clear()
            for feed in self.peers.values():
                feed.packets = 0
                feed.mids.clear()
            self._subscriber = await session.attach()
            self._subscriber.on_event = self._subscriber_event
        with contextlib.suppress(Exception):
            await pc.close()
        if handle is not None:
            await handle.detach()  # Janus drops the old subscriber with its handle
        self._dirty.set()

    # ------------------------------------------------------------------ liveness

    async def _liveness_loop(self) -> None:
        interval = self.config.keepalive_interval
        while True:
            await asyncio.sleep(interval)
            pc = self.subscriber_pc
            if pc is None:
                continue
            counts = await self._packets_by_user(pc)
            now = time.monotonic()
            for user_id, feed in list(self.peers.items()):
                received = counts.get(user_id)
                if not received:
                    # Not subscribed, or the member's own publisher still connecting: the
                    # silence clock starts at their first packet.
                    continue
                feed.liveness.connected(now)
                if received > feed.packets:
                    feed.packets = received
                    if feed.liveness.heard(now):
                        logger.info("feed of %s responsive again", user_id)
                if feed.liveness.check(now):
                    logger.info("feed of %s silent for %.1f s", user_id, self.config.dead_after)
                    self._on_unresponsive(user_id)

    async def _packets_by_user(self, pc: RTCPeerConnection) -> dict[str, int]:
        counts: dict[str, int] = {}
        for transceiver in pc.getTransceivers():
            user = self._mid_user.get(str(transceiver.mid))
            if user is None:
                continue
            try:
                report = await transceiver.receiver.getStats()
            except Exception:  # closing under us
                continue
            packets = sum(int(getattr(s, "packetsReceived", 0) or 0) for s in report.values()
                          if getattr(s, "type", "") == "inbound-rtp")
            counts[user] = counts.get(user, 0) + packets
        return counts
