"""What a server node does in a cluster: lead (run the call core) or forward to the leader.

:class:`ClusterRole` sits between :class:`~signaling_server.server.SignalingServer` and
:class:`~signaling_server.cluster.ClusterLink`. Every local connection is *bound* to the epoch
of the leader it was opened with (or *pending* while no leader is known: its first frames
wait, at most ``pending_limit`` of them); when the leader changes, the connections bound to an
older epoch are closed with 1012 (``SERVICE_RESTART``): the new leader's core never saw them,
and the clients reconnect and resume their calls. While the node cannot reach Redis (or the
leader is frozen), requests get error 4505 (``CLUSTER_UNAVAILABLE``) at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from callwire import protocol
from callwire.codes import CloseCode, ErrorCode
from signaling_server.cluster import ClusterLink, ClusterSettings, LeaderView, node_of

if TYPE_CHECKING:
    from signaling_server.server import SignalingServer, _Gate

__all__ = ["ClusterRole"]

logger = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE: Final = (
    "the cluster's coordination service (Redis) or its call owner is unreachable; "
    "retry in a moment"
)
RESTART_REASON: Final = "cluster call owner changed; reconnect"


class _HeldFrames:
    """Frames and a close for one connection of another node, held behind the gates of
    their steps (records committed, snapshots stored); :meth:`pump` sends what is free."""

    __slots__ = ("_link", "_owner", "conn", "queue")

    def __init__(self, owner: _RemoteNode, conn: int) -> None:
        self._owner = owner
        self._link = owner.link
        self.conn = conn
        self.queue: collections.deque[_Gate | list[Any]] = collections.deque()

    def pump(self) -> None:
        queue = self.queue
        while queue:
            head = queue[0]
            if isinstance(head, list):
                queue.popleft()
                self._link.route(self._owner.node, head)
            elif head.open:
                queue.popleft()
            else:
                return
        if self._owner.held.get(self.conn) is self:
            del self._owner.held[self.conn]


class _RemoteNode:
    """On the leader: what goes to one other node's connections. As for a local
    connection, a connection's frames wait for the gates of their steps, and only that
    connection's: a slow commit for one call does not hold the relays of another."""

    __slots__ = ("held", "link", "node")

    def __init__(self, link: ClusterLink, node: int) -> None:
        self.link = link
        self.node = node
        self.held: dict[int, _HeldFrames] = {}

    def gate(self, conn: int, gate: _Gate) -> None:
        """Hold what is sent to ``conn`` from now on until ``gate`` opens."""
        if gate.open:
            return
        held = self.held.get(conn)
        if held is None:
            held = self.held[conn] = _HeldFrames(self, conn)
        elif held.queue and held.queue[-1] is gate:
            return
        held.queue.append(gate)
        gate.peers.append(held)

    def put(self, op: list[Any]) -> None:
        """Send ``[conn, texts, close_code, reason]`` now, or behind that connection's
        gates."""
        held = self.held.get(int(op[0]))
        if held is None:
            self.link.route(self.node, op)
            return
        held.queue.append(op)
        held.pump()


class ClusterRole:
    """A node's part in the cluster (see the module docstring)."""

    def __init__(self, server: SignalingServer, url: str, name: str,
                 settings: ClusterSettings | None = None, pending_limit: int = 64) -> None:
        self.server = server
        self.link = ClusterLink(url, server.config.sdk_app_id, name, self, settings)
        self.pending_limit = pending_limit
        self.bound: dict[int, int] = {}
        """Local connection -> the epoch of the leader it was opened with."""
        self.pending: dict[int, list[list[Any]]] = {}
        """Local connections opened while no leader was known -> their operations so far."""
        self.core_epoch = 0
        """The epoch of the core this node runs (0: it does not lead)."""
        self.remote_conns: dict[int, set[int]] = {}
        """On the leader: node -> its connections the core knows."""
        self._remote: dict[int, _RemoteNode] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ state

    @property
    def leading(self) -> bool:
        """This node runs the cluster's core and may change its state now."""
        return self.core_epoch != 0 and self.link.epoch == self.core_epoch \
            and not self.link.frozen

    def info(self) -> dict[str, Any]:
        """For ``server/get_stats``: this node, the leader, the bus."""
        leader = self.link.leader
        return {
            "node": self.link.index, "name": self.link.name, "leading": self.leading,
            "leader": leader.name if leader else None, "epoch": leader.epoch if leader else 0,
            "busUp": self.link.bus_up, "frozen": self.link.frozen,
            "remoteConnections": sum(len(c) for c in self.remote_conns.values()),
            **self.link.stats,
        }

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.close()

    # ------------------------------------------------------------------ local connections

    def open(self, conn: int, client_ip: str) -> None:
        """A local websocket opened."""
        op = ["o", conn, client_ip]
        if self.leading:
            self.bound[conn] = self.core_epoch
            self.server._core_input(op)
            return
        leader = self.link.leader
        if leader is not None and self.link.bus_up and not self.core_epoch:
            self.bound[conn] = leader.epoch
            self.link.forward(op, self._unheard)
            return
        self.pending[conn] = [op]

    def frame(self, conn: int, message: str | bytes) -> None:
        """A frame from a local websocket."""
        op: list[Any] = ["b", conn] if isinstance(message, bytes | bytearray) \
            else ["f", conn, message]
        held = self.pending.get(conn)
        if held is not None:
            if len(held) >= self.pending_limit or not self.link.bus_up:
                self._unavailable(conn, message)
            else:
                held.append(op)
            return
        epoch = self.bound.get(conn)
        if epoch is None:
            return
        if epoch == self.core_epoch:
            if self.leading:
                self.server._core_input(op)
            else:
                self._unavailable(conn, message)  # frozen: no state may change
            return
        if not self.link.bus_up:
            self._unavailable(conn, message)
            return
        self.link.forward(op, self._unheard)

    def closed(self, conn: int) -> None:
        """A local websocket closed."""
        if self.pending.pop(conn, None) is not None:
            return
        epoch = self.bound.pop(conn, None)
        if epoch is None:
            return
        if epoch == self.core_epoch:
            self.server._core_input(["c", conn])
        elif self.link.bus_up:
            self.link.forward(["c", conn], None)

    def _unavailable(self, conn: int, message: str | bytes) -> None:
        """Answer a request that cannot reach the leader now with 4505."""
        request_id: Any = None
        if isinstance(message, str):
            try:
                request_id = json.loads(message).get("id")
            except (ValueError, AttributeError):
                request_id = None
        if request_id is None:
            return
        self.server._send_text(conn, protocol.encode_reply_error(
            request_id, ErrorCode.CLUSTER_UNAVAILABLE, UNAVAILABLE_MESSAGE))

    def _unheard(self, ops: list[list[Any]]) -> None:
        """No leader received these: their connections start over (1012)."""
        for conn in {int(op[1]) for op in ops if op[0] != "c"}:
            if conn in self.bound and self.bound[conn] != self.core_epoch:
                self._restart(conn)

    def _restart(self, conn: int) -> None:
        self.bound.pop(conn, None)
        self.server._close_local(conn, CloseCode.SERVICE_RESTART, RESTART_REASON)

    # ------------------------------------------------------------------ routing (leader)

    def remote(self, conn: int) -> _RemoteNode | None:
        """The other node holding ``conn``; None when it is this node's."""
        node = node_of(conn)
        if node == self.link.index:
            return None
        remote = self._remote.get(node)
        if remote is None:
            remote = self._remote[node] = _RemoteNode(self.link, node)
        return remote

    # ------------------------------------------------------------------ ClusterHandler

    def cluster_lead(self, epoch: int, snapshots: list[dict[str, Any]]) -> None:
        self.core_epoch = epoch
        self.remote_conns.clear()
        self._remote.clear()
        self.server._adopt_core(snapshots)
        for conn, bound in list(self.bound.items()):
            if bound != epoch:
                self._restart(conn)
        self._flush_pending(epoch, leading=True)
        logger.info("leading as epoch %d", epoch)

    async def cluster_led(self) -> None:
        core = self.server.core
        await self.server._interrupt_open_calls(time.time(), keep=set(core.active_calls))

    def cluster_follow(self, view: LeaderView | None) -> None:
        if view is not None and view.node == self.link.index and self.core_epoch:
            # This node took its lease again with a new epoch (Redis restarted): same core.
            for conn, bound in self.bound.items():
                if bound == self.core_epoch:
                    self.bound[conn] = view.epoch
            self.core_epoch = view.epoch  # the link stores every snapshot again
            return
        if self.core_epoch and not self.link.epoch:
            dropped = self.core_epoch
            self.core_epoch = 0
            self.remote_conns.clear()
            self._remote.clear()
            self.server._drop_core()
            for conn, bound in list(self.bound.items()):
                if bound == dropped:
                    self._restart(conn)
        if view is None:
            return
        for conn, bound in list(self.bound.items()):
            if bound < view.epoch:
                self._restart(conn)
        self._flush_pending(view.epoch, leading=False)

    def _flush_pending(self, epoch: int, leading: bool) -> None:
        pending, self.pending = self.pending, {}
        for conn, ops in pending.items():
            self.bound[conn] = epoch
            for op in ops:
                if leading:
                    self.server._core_input(op)
                else:
                    self.link.forward(op, self._unheard)

    def cluster_inputs(self, node: int, epoch: int, ops: list[list[Any]]) -> None:
        if epoch != self.core_epoch or not self.leading:
            return
        conns = self.remote_conns.setdefault(node, set())
        self.link.node_seen(node)
        for op in ops:
            conn = int(op[1])
            if node_of(conn) != node:
                continue
            if op[0] == "o":
                conns.add(conn)
            elif op[0] == "c":
                conns.discard(conn)
            elif conn not in conns:
                continue  # a connection this core never saw opened
            self.server._core_input(op)

    def cluster_outputs(self, epoch: int, ops: list[list[Any]]) -> None:
        for conn, texts, code, reason in ops:
            if self.bound.get(int(conn)) != epoch:
                continue  # opened with another leader (or gone)
            self.server._deliver_local(int(conn), texts, code, reason)

    def cluster_node_dead(self, node: int) -> None:
        for conn in sorted(self.remote_conns.pop(node, ())):
            self.server._core_input(["c", conn])

    def cluster_resync(self) -> None:
        for conn, bound in list(self.bound.items()):
            if bound != self.core_epoch:
                self._restart(conn)

    def cluster_groups_changed(self, group_ids: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(
            self.server._reload_groups(group_ids), name="cluster-groups")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cluster_frozen(self, frozen: bool) -> None:
        self.server._rearm_timer()

    def cluster_snapshot_all(self) -> None:
        self.server._snapshot_all()
