"""The media of the current call: its transport to the other members, reports and teardown.

:class:`CallMedia` carries out the media effects of the call core
(:mod:`callclient.callstate`): connect or disconnect a member's media, apply relayed
negotiation, start the call's media when it connects (speaker, microphone, the volume and
network-quality monitor) and tear everything down when it ends; and it tells the other
members what is on (``media_state``) once the call is connected. The transport is a
:class:`~callclient.mesh.PeerMesh` (one peer connection per member), or, for a call the server
put in an SFU room (``SFU_ROOM``, which arrives before any member), a
:class:`~callclient.sfu.SfuTransport` (one publisher and one subscriber connection); it is
made at the first member and dropped with the call. Both have the same methods, so
everything else (views, volumes, quality, recording taps) is the same in both.

A teardown runs in the background on what it detached at once, so a call that starts right
after is never touched by the last one's teardown.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from callclient.callstate import CallInfo
from callclient.errors import CallError, ConnectionClosedError, ErrorCode
from callclient.localmedia import LocalMedia
from callclient.media.remote import RemoteMedia
from callclient.mesh import PeerMesh
from callclient.monitor import CallMonitor
from callclient.observer import Error, Notification
from callclient.peer import PeerConfig, PeerLink
from callclient.sfu import SfuFeed, SfuTransport
from callclient.signaling import SignalingClient
from callclient.tasks import TaskOwner
from callclient.types import CallStatus, NetworkQuality
from callwire.messages import SfuRoom
from callwire.protocol import Relay

__all__ = ["CallMedia"]

logger = logging.getLogger(__name__)


class CallMedia:
    """The current call's peers, monitor and teardown, for one engine."""

    def __init__(
        self,
        local: LocalMedia,
        remote: RemoteMedia,
        tasks: TaskOwner,
        peer_config: Callable[[], PeerConfig],
        *,
        signaling: Callable[[], SignalingClient | None],
        notify: Callable[[Notification], None],
        on_unresponsive: Callable[[str], None],
        current_call: Callable[[], CallInfo | None],
        volume_interval: float,
        quality_interval: float,
    ) -> None:
        self._local = local
        self._remote = remote
        self._tasks = tasks
        self._peer_config = peer_config
        self._signaling = signaling
        self._notify = notify
        self._on_unresponsive = on_unresponsive
        self._current_call = current_call
        self.volume_interval = volume_interval
        self.quality_interval = quality_interval
        self.transport: PeerMesh | SfuTransport | None = None
        """The current call's media path (None before the first member)."""
        self.sfu_room: SfuRoom | None = None
        """The current call's SFU room, once the server gave one."""
        self.monitor: CallMonitor | None = None

    @property
    def mesh(self) -> PeerMesh | None:
        """The peer connections of a mesh call (None in an SFU call or before a member)."""
        return self.transport if isinstance(self.transport, PeerMesh) else None

    def use_sfu(self, room: SfuRoom) -> None:
        """The call's media goes through ``room`` (a higher epoch moves an SFU call there)."""
        if self.sfu_room is not None and room.epoch <= self.sfu_room.epoch:
            return
        self.sfu_room = room
        if isinstance(self.transport, SfuTransport):
            self.transport.move(room)
        elif self.transport is not None:
            logger.warning("SFU room for a call already meshed: staying peer to peer")

    # ------------------------------------------------------------------ members

    def connect(self, call_id: str, local_id: str, user_id: str) -> None:
        """Make sure media flows with ``user_id`` in call ``call_id``."""
        if self.transport is None:
            room = self.sfu_room
            if room is not None and room.call_id == call_id:
                self.transport = SfuTransport(
                    local_id, room, self._peer_config(), self._tasks,
                    audio_track=self._local.subscribe_audio,
                    video_track=self._local.subscribe_video,
                    on_track=self._remote.add_track,
                    on_unresponsive=self._on_unresponsive,
                    on_connect=self._peer_connected,
                )
            else:
                self.transport = self._new_mesh(call_id, local_id)
        self._remote.expect(user_id)
        self.transport.connect(user_id)

    def _new_mesh(self, call_id: str, local_id: str) -> PeerMesh:
        async def send(to: str, kind: str, payload: dict[str, Any]) -> None:
            signaling = self._signaling()
            if signaling is None:
                raise ConnectionClosedError("relay: not connected")
            await signaling.request("relay", callId=call_id, to=to, kind=kind,
                                    payload=payload)

        return PeerMesh(
            local_id, self._peer_config, send, self._tasks,
            audio_track=self._local.subscribe_audio,
            video_track=self._local.subscribe_video,
            on_track=self._remote.add_track,
            on_unresponsive=self._on_unresponsive,
            on_connect=self._peer_connected,
            on_failed=self._peer_failed,
            can_restart=lambda: (sig := self._signaling()) is not None and sig.connected,
        )

    def apply_relay(self, relay: Relay) -> None:
        """Hand a relayed offer, answer or candidate to its peer."""
        if self.transport is not None:
            self.transport.apply(relay)

    def disconnect(self, user_id: str) -> None:
        """Stop the media with ``user_id`` (closed in the background)."""
        consumers = self._remote.detach(user_id)
        peer = self.transport.detach(user_id) if self.transport is not None else None
        if self.monitor is not None:
            self.monitor.remove_peer(user_id)

        async def close() -> None:
            if peer is not None:
                await peer.close()
            for task in consumers:
                with contextlib.suppress(BaseException):
                    await task

        self._tasks.spawn(close(), cleanup=True, name=f"close peer {user_id}")

    def _peer_failed(self, user_id: str, reason: str) -> None:
        """ICE found no path to ``user_id``: say so (on_error) and show the link DOWN."""
        if self.monitor is not None:
            self.monitor.peer_failed(user_id)
        self._notify(Error(
            int(ErrorCode.MEDIA_CONNECT_FAIL),
            f"no media path to {user_id} ({reason}): a firewall blocks UDP and no TURN relay "
            "is reachable; configure the signaling server's --turn (TURN over TCP for "
            "UDP-hostile networks)",
        ))

    def _peer_connected(self, user_id: str, peer: PeerLink | SfuFeed) -> None:
        # An SFU member has no connection until the subscriber's is made (then again).
        if self.monitor is not None and peer.pc is not None:
            restart = isinstance(peer, PeerLink) and peer.generation > 0
            self.monitor.add_peer(user_id, peer.pc, restart=restart)

    # ------------------------------------------------------------------ reports

    def audio_muted(self, user_id: str) -> None:
        """``user_id``'s microphone closed: their volume is 0 from now on."""
        if self.monitor is not None:
            self.monitor.audio_muted(user_id)

    def uplink_reported(self, user_id: str, quality: NetworkQuality) -> None:
        """``user_id`` reported its uplink quality."""
        if self.monitor is not None:
            self.monitor.remote_reported(user_id, quality)

    # ------------------------------------------------------------------ the call

    def start(self, call_id: str, local_id: str) -> None:
        """The call connected: reports start now; devices start in the background."""
        if self.monitor is None:

            async def send_uplink(quality: NetworkQuality) -> None:
                signaling = self._signaling()
                if signaling is not None and signaling.connected:
                    await signaling.request("network_quality", callId=call_id,
                                            quality=int(quality))

            monitor = self.monitor = CallMonitor(
                local_id, self._notify, send_uplink,
                volume_interval=self.volume_interval, quality_interval=self.quality_interval,
            )
            if self.transport is not None:
                for user_id, peer in self.transport.peers.items():
                    if peer.pc is not None:
                        monitor.add_peer(user_id, peer.pc)
                    if isinstance(peer, PeerLink) and peer.failed:
                        monitor.peer_failed(user_id)
            self._local.on_local_audio = monitor.local_audio
            self._remote.meter = monitor.remote_audio
            monitor.start()
        self._tasks.spawn(self._local.start_call(self._remote.mixer.pull),
                          name="start call media")

    def end(self) -> None:
        """The call is over: detach everything now, close it in the background.

        The devices are closed afterwards unless a call started or a device was opened
        meanwhile (the local media's generation moved on).
        """
        monitor, self.monitor = self.monitor, None
        self._local.on_local_audio = None
        self._remote.meter = None
        if monitor is not None:
            # Halted now, so no volume or quality callback follows the call's end.
            self._tasks.spawn(monitor.stop(), cleanup=True, name="stop monitor")
            monitor.halt()
        mesh, self.transport = self.transport, None
        self.sfu_room = None
        consumers = self._remote.detach_all()
        speaker = self._local.detach_speaker()
        if speaker is not None:
            self._local.stopping_speaker(
                self._tasks.spawn(speaker.stop(), cleanup=True, name="stop speaker")
            )
        self._local.generation += 1
        generation = self._local.generation

        async def teardown() -> None:
            if mesh is not None:
                await mesh.close()
            for task in consumers:
                with contextlib.suppress(BaseException):
                    await task
            if generation == self._local.generation and self._current_call() is None:
                await self._local.close_devices()

        self._tasks.spawn(teardown(), cleanup=True, name="call teardown")

    async def report_state(self, camera: bool | None, microphone: bool | None) -> None:
        """Tell the other members what is on (``media_state``), once the call is connected."""
        call = self._current_call()
        signaling = self._signaling()
        if call is None or call.status is not CallStatus.ACCEPT or signaling is None:
            return
        data: dict[str, Any] = {}
        if camera is not None:
            data["camera"] = camera
        if microphone is not None:
            data["microphone"] = microphone
        try:
            await signaling.request("media_state", callId=call.call_id, **data)
        except CallError as exc:
            logger.info("media state not reported: %s", exc)
