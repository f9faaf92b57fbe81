"""The media path of a mesh call: one peer connection per remote member, negotiated by relay.

A :class:`PeerMesh` lives as long as one call's media. It makes a
:class:`~callclient.peer.PeerLink` for each member the call core says to connect (the lower
user id offers), hands relayed offers, answers and candidates to the right link, and sends
its own through the signaling server. A relay to a member who is reconnecting (4041) is retried
for the server's reconnect grace; one that became moot (the call ended or the member left:
4040, -1101) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import MediaStreamTrack

from callclient.errors import CallError, ErrorCode
from callclient.peer import PeerConfig, PeerLink
from callclient.tasks import TaskOwner
from callwire.protocol import Relay

__all__ = ["PeerMesh", "RelaySender"]

logger = logging.getLogger(__name__)

_RELAY_RETRY_SECONDS = 4.0
"""How long a relay to a user who is reconnecting (4041) is retried: the server's grace + 1 s."""
_RELAY_RETRY_INTERVAL = 0.25

RelaySender = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""``send(to, kind, payload)``: one ``relay`` request; raises :class:`CallError` on refusal."""


class PeerMesh:
    """The peer connections of one call, by remote user id."""

    def __init__(
        self,
        local_id: str,
        config: Callable[[], PeerConfig],
        send: RelaySender,
        tasks: TaskOwner,
        *,
        audio_track: Callable[[], MediaStreamTrack],
        video_track: Callable[[], MediaStreamTrack],
        on_track: Callable[[str, MediaStreamTrack], None],
        on_unresponsive: Callable[[str], None],
        on_connect: Callable[[str, PeerLink], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        can_restart: Callable[[], bool] = lambda: True,
    ) -> None:
        self.local_id = local_id
        self.config = config
        self._send = send
        self._tasks = tasks
        self._audio_track = audio_track
        self._video_track = video_track
        self._on_track = on_track
        self._on_unresponsive = on_unresponsive
        self._on_connect = on_connect
        self._on_failed = on_failed
        self._can_restart = can_restart
        self.peers: dict[str, PeerLink] = {}

    def connect(self, user_id: str) -> PeerLink:
        """The link with ``user_id``, made (and started) if there is none yet."""
        peer = self.peers.get(user_id)
        if peer is None:
            peer = self._make(user_id, 0)
        return peer

    def _make(self, user_id: str, generation: int) -> PeerLink:
        peer = PeerLink(
            self.local_id,
            user_id,
            self.config(),  # the ICE servers of this moment (credentials are renewed)
            lambda kind, payload: self._relay(user_id, kind, payload),
            self._audio_track(),
            self._video_track(),
            self._on_track,
            self._on_unresponsive,
            self._on_failed,
            self.restart,
            generation,
        )
        self.peers[user_id] = peer
        self._tasks.spawn(peer.start(), name=f"negotiate with {user_id}")
        if self._on_connect is not None:
            self._on_connect(user_id, peer)
        return peer

    def restart(self, user_id: str) -> None:
        """The path to ``user_id`` died: negotiate a fresh connection (signaling permitting).

        The offerer replaces its link and offers with ``restart`` = the new generation; the
        answerer asks it to (a ``keepalive`` relay with ``restart``) and replaces its own link
        when that offer comes. The call, its members and the remote media's counters stay.
        """
        peer = self.peers.get(user_id)
        if peer is None or not self._can_restart():
            return
        generation = peer.generation + 1
        if peer.offerer:
            self._replace(user_id, generation)
        else:
            self._tasks.spawn(self._relay(user_id, "keepalive", {"restart": generation}),
                              name=f"ask {user_id} to restart")

    def _replace(self, user_id: str, generation: int) -> PeerLink:
        old = self.peers.pop(user_id, None)
        logger.info("media with %s: restarting (generation %d)", user_id, generation)
        if old is not None:
            self._tasks.spawn(old.close(), cleanup=True, name=f"close old link {user_id}")
        return self._make(user_id, generation)

    def apply(self, relay: Relay) -> None:
        """Hand a relayed offer, answer or candidate to the link with its sender."""
        peer = self.peers.get(relay.sender)
        if peer is None:
            return
        restart = relay.payload.get("restart", 0)
        if not isinstance(restart, int) or isinstance(restart, bool):
            restart = 0
        if restart > peer.generation:
            if relay.kind == "offer" and not peer.offerer:
                peer = self._replace(relay.sender, restart)  # the offerer restarted
            elif relay.kind == "keepalive" and peer.offerer:
                self._replace(relay.sender, restart)  # the answerer asks for a restart
                return
        elif restart < peer.generation and relay.kind in ("offer", "answer", "candidate"):
            # Negotiation of a connection already replaced (sent before the restart crossed).
            logger.debug("stale %s from %s (generation %d) dropped", relay.kind,
                         relay.sender, restart)
            return
        self._tasks.spawn(peer.handle_relay(relay.kind, relay.payload),
                          name=f"{relay.kind} from {relay.sender}")

    def detach(self, user_id: str) -> PeerLink | None:
        """Forget the link with ``user_id``; the caller closes it."""
        return self.peers.pop(user_id, None)

    async def close(self) -> None:
        """Close every link (each close is idempotent)."""
        peers = list(self.peers.values())
        self.peers.clear()
        for peer in peers:
            with contextlib.suppress(Exception):
                await peer.close()

    async def _relay(self, to: str, kind: str, payload: dict[str, Any]) -> None:
        deadline = time.monotonic() + _RELAY_RETRY_SECONDS
        while True:
            try:
                await self._send(to, kind, payload)
                return
            except CallError as exc:
                if exc.code in (ErrorCode.CALL_NOT_FOUND, ErrorCode.PERMISSION_DENIED):
                    # The call ended or the user left while negotiating: moot.
                    logger.debug("%s relay to %s dropped: %s", kind, to, exc)
                    return
                if exc.code != ErrorCode.USER_OFFLINE or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(_RELAY_RETRY_INTERVAL)  # reconnecting: retry
