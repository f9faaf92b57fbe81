"""Cluster mode: several server nodes on one Redis, one call core among them.

The nodes elect a *leader* through a Redis lease (``SET NX PX``, renewed by a compare-and-expire
script; each new lease takes a new *epoch* from a Redis counter). The leader runs the one
:class:`~signaling_server.core.CallCore` of the cluster; every node (the leader too) accepts
websockets. A node forwards what its connections do (open, frames, close) to the leader on the
``core`` channel and carries out the frames and closes the leader routes back on its own
``node:<index>`` channel. Connection ids are unique in the cluster: the node's index (a Redis
counter) in the high 32 bits.

After every core step that changed a call, the leader writes those calls' snapshots to the
``calls`` hash before the step's frames go out (:meth:`ClusterLink.snapshot`, fenced by the
lease); a node taking over reads them back and restores the calls.

This module is the Redis side: :class:`ClusterLink` (leases, channels, snapshots, heartbeats,
reconnection). The decisions it does not make itself go to the server through
:class:`ClusterHandler`. See docs/cluster.md for the protocol and its failure modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from callwire.extras import require
from signaling_server.urls import redact_url

__all__ = [
    "CONN_SHIFT",
    "ClusterError",
    "ClusterHandler",
    "ClusterLink",
    "ClusterSettings",
    "LeaderView",
    "node_of",
]

logger = logging.getLogger(__name__)

CONN_SHIFT: Final = 32
"""A connection id is ``node_index << CONN_SHIFT | local_number``."""


def node_of(conn: int) -> int:
    """The index of the node holding connection ``conn``."""
    return conn >> CONN_SHIFT


@dataclass(frozen=True)
class ClusterSettings:
    """Timings of the cluster protocol."""

    lease_s: float = 2.0
    """The leader's lease: a leader that stops renewing is replaced this long after."""
    renew_s: float = 0.4
    """How often the leader renews its lease and the others look for a leader."""
    heartbeat_s: float = 0.5
    """How often every node says it is alive."""
    node_timeout_s: float = 2.0
    """A node silent this long is dead to the leader: its connections are closed in the core."""
    rejoin_wait_s: float = 3.0
    """After its Redis connection came back, a node that was not the leader waits this long
    before taking an empty lease: the leader of before the outage gets it back first."""
    publish_retry_s: float = 2.0
    """How long a batch that Redis failed to take is retried before it counts as unheard
    (its connections then start over with 1012)."""


class ClusterError(Exception):
    """Redis is unreachable or refuses the cluster's commands; ``message`` says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class LeaderView:
    """Who holds the lease, as last read: ``node`` and ``epoch`` (0: nobody)."""

    node: int
    epoch: int
    name: str

    @staticmethod
    def parse(raw: bytes | str | None) -> LeaderView | None:
        """The lease value ``"<index>|<epoch>|<name>"``; None for no (or a garbled) lease."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split("|", 2)
        try:
            return LeaderView(int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else "")
        except (ValueError, IndexError):
            logger.error("ignoring a garbled cluster lease %r", text)
            return None


class ClusterHandler(Protocol):
    """What the server does when the cluster tells it something (all on the event loop)."""

    def cluster_lead(self, epoch: int, snapshots: list[dict[str, Any]]) -> None:
        """This node now holds the lease (``snapshots``: the calls to adopt), before any
        input reaches it."""

    async def cluster_led(self) -> None:
        """After the others were told: the records of open calls not adopted are ended."""

    def cluster_follow(self, view: LeaderView | None) -> None:
        """The leader is (now) ``view``, not this node; None: nobody holds the lease."""

    def cluster_inputs(self, node: int, epoch: int, ops: list[list[Any]]) -> None:
        """On the leader: connection operations forwarded by ``node``."""

    def cluster_outputs(self, epoch: int, ops: list[list[Any]]) -> None:
        """Frames and closes the leader routes to this node's connections."""

    def cluster_node_dead(self, node: int) -> None:
        """On the leader: ``node`` stopped its heartbeats."""

    def cluster_resync(self) -> None:
        """Close this node's connections with 1012: what they were sent may have been lost
        (its subscription broke)."""

    def cluster_groups_changed(self, group_ids: list[str]) -> None:
        """Groups changed through some node's REST API: reload them."""

    def cluster_frozen(self, frozen: bool) -> None:
        """The leader could not renew its lease for longer than the lease (True), or can
        again (False): while frozen it must not change any state."""

    def cluster_snapshot_all(self) -> None:
        """On the leader: store every call's snapshot again (:meth:`ClusterLink.snapshot`
        with ``replace``)."""


# Scripts run atomically in Redis. KEYS[1] is always the lease key.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[1])
if e <= floor then e = floor + 1; redis.call('SET', KEYS[2], e) end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. e .. '|' .. ARGV[3], 'PX', ARGV[4])
return e
"""
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
if v then return -1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]); return 1 end
return 0
"""
_SNAPSHOT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
local n = tonumber(ARGV[3])
local i = 4
for k = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
while i <= #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]); i = i + 1 end
return 1
"""
_FLOOR = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

_BUS_ERRORS: tuple[type[BaseException], ...] = (OSError,)


class _Outlet:
    """Operations for one channel, published in order by one task, in batches."""

    def __init__(self, link: ClusterLink, channel: str, header: dict[str, Any]) -> None:
        self._link = link
        self.channel = channel
        self.header = header
        self.ops: list[list[Any]] = []
        self.task: asyncio.Task[None] | None = None
        self.on_unheard: Any = None
        """Called with the ops of a batch nobody received (PUBLISH counted no subscriber)."""

    def put(self, op: list[Any]) -> None:
        self.ops.append(op)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"cluster-publish-{self.channel}"
            )
            self._link._tasks.add(self.task)
            self.task.add_done_callback(self._link._tasks.discard)

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # one batch per loop iteration
            while self.ops:
                batch, self.ops = self.ops, []
                message = json.dumps({**self.header, "ops": batch}, separators=(",", ":"))
                heard = await self._publish(message)
                self._link.stats["published"] += 1
                if not heard and self.on_unheard is not None:
                    self.on_unheard(batch)
        finally:
            self.task = None

    async def _publish(self, message: str) -> int:
        """PUBLISH, retried for ``publish_retry_s`` while Redis fails (after a restart each
        pooled connection fails once): a batch is not lost to a stale connection, and the
        batches stay in order. The number of subscribers that received it (0: given up)."""
        give_up = time.monotonic() + self._link.settings.publish_retry_s
        while True:
            try:
                return int(await self._link._redis.publish(self.channel, message))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._link._bus_failed(f"publish to {self.channel}: {exc!r}")
                if time.monotonic() >= give_up:
                    return 0
                await asyncio.sleep(0.05)


class ClusterLink:
    """This node's membership of a cluster on Redis (see the module docstring).

    ``await start()`` connects, takes a node index and starts the loops; ``await close()``
    stops them (and frees the lease if this node holds it). Raises :class:`ClusterError` at
    start when Redis cannot be reached.
    """

    def __init__(
        self,
        url: str,
        sdk_app_id: int,
        name: str,
        handler: ClusterHandler,
        settings: ClusterSettings | None = None,
    ) -> None:
        self.url = url
        self.name = name.replace("|", "/")
        self.settings = settings or ClusterSettings()
        self._handler = handler
        self._prefix = f"callserver:{sdk_app_id}:"
        self.index = 0
        """This node's index (its connection ids' high bits), once started."""
        self.epoch = 0
        """The epoch of this node's lease while it leads; 0 otherwise."""
        self.leader: LeaderView | None = None
        """The leader as last seen (this node while it leads)."""
        self.bus_up = False
        self.frozen = False
        self.stats: dict[str, int] = {"published": 0, "received": 0, "snapshots": 0}
        self._max_epoch = 0
        self._last_renew = 0.0
        self._contend_after = 0.0
        self._seen: dict[int, float] = {}
        self._bus_since = 0.0
        self._outlets: dict[str, _Outlet] = {}
        self._snap_queue: list[tuple[dict[str, dict[str, Any]], list[str], Any, bool]] = []
        self._snap_task: asyncio.Task[None] | None = None
        self._full_snapshot_needed = False
        self._listener_lost = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._core_listener: asyncio.Task[None] | None = None
        self._closed = False
        redis_asyncio = require("redis.asyncio", extra="cluster", feature="--cluster")
        self._redis: Any = redis_asyncio.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=None, health_check_interval=0,
        )
        self._scripts = {
            name: self._redis.register_script(src)
            for name, src in (("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE),
                              ("snapshot", _SNAPSHOT),
                              ("floor", _FLOOR))
        }
        exceptions = require("redis.exceptions", extra="cluster", feature="--cluster")
        global _BUS_ERRORS
        _BUS_ERRORS = (OSError, exceptions.ConnectionError, exceptions.TimeoutError)

    # ------------------------------------------------------------------ keys

    def key(self, name: str) -> str:
        """A Redis key or channel of this cluster."""
        return self._prefix + name

    def _lease_value(self) -> str:
        return f"{self.index}|{self.epoch}|{self.name}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, take a node index, start the heartbeat, election and listener loops."""
        try:
            self.index = int(await self._redis.incr(self.key("node_seq")))
        except _BUS_ERRORS as exc:
            raise ClusterError(
                f"cannot reach Redis at {self.safe_url}: {exc}; check that redis-server runs "
                "and the --cluster URL's host, port and database"
            ) from exc
        self.bus_up = True
        self._bus_since = time.monotonic()
        for loop, label in ((self._listen, "listen"), (self._elect, "elect"),
                            (self._heartbeat, "heartbeat")):
            self._spawn(loop(), f"cluster-{label}")
        logger.info("cluster node %d (%s) on %s", self.index, self.name, self.safe_url)

    async def close(self) -> None:
        """Stop the loops and free this node's lease (the next leader takes over at once).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.epoch:
            with contextlib.suppress(Exception):
                await self._flush_snapshots()
                await self._scripts["release"](
                    keys=[self.key("leader")], args=[self._lease_value()])
        for outlet in self._outlets.values():
            if outlet.task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(outlet.task), 1.0)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    @property
    def safe_url(self) -> str:
        """The Redis URL with any password shown as ``***``."""
        return redact_url(self.url)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ sending

    def forward(self, op: list[Any], on_unheard: Any) -> None:
        """Send a connection operation to the leader (batched with others of this loop
        iteration); ``on_unheard(ops)`` runs when no leader was listening."""
        epoch = self.leader.epoch if self.leader is not None else 0
        outlet = self._outlet("core", {"n": self.index, "e": epoch})
        outlet.header["e"] = epoch
        outlet.on_unheard = on_unheard
        outlet.put(op)

    def route(self, node: int, op: list[Any]) -> None:
        """On the leader: a ``[conn, texts, close_code, reason]`` operation for ``node``."""
        self._outlet(f"node:{node}", {"e": self.epoch}).put(op)

    def announce_groups(self, group_ids: Sequence[str]) -> None:
        """Tell every node (this one included) that these groups changed."""
        self._outlet("control", {"t": "groups", "n": self.index}).put(list(group_ids))

    def _outlet(self, name: str, header: dict[str, Any]) -> _Outlet:
        outlet = self._outlets.get(name)
        if outlet is None:
            outlet = self._outlets[name] = _Outlet(self, self.key(name), header)
        elif name != "core":
            outlet.header.update(header)
        return outlet

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, changed: Mapping[str, dict[str, Any]], ended: Sequence[str],
                 done: Any, *, replace: bool = False) -> None:
        """On the leader: store the changed calls' snapshots and forget the ended ones, in
        order with earlier calls; ``done()`` runs once they are written (or failed).
        ``replace``: ``changed`` is every call; the stored snapshots become exactly those."""
        self._snap_queue.append((dict(changed), list(ended), done, replace))
        if self._snap_task is None:
            self._snap_task = self._spawn(self._write_snapshots(), "cluster-snapshot")

    async def _write_snapshots(self) -> None:
        try:
            while self._snap_queue:
                queue, self._snap_queue = self._snap_queue, []
                changed: dict[str, dict[str, Any]] = {}
                ended: set[str] = set()
                replace = False
                for part, gone, _, full in queue:
                    if full:  # supersedes everything before it
                        changed, ended, replace = {}, set(), True
                    for call_id in gone:
                        changed.pop(call_id, None)
                        ended.add(call_id)
                    for call_id, snap in part.items():
                        ended.discard(call_id)
                        changed[call_id] = snap
                await self._store_snapshots(changed, sorted(ended), replace)
                for _, _, done, _ in queue:
                    done()
        finally:
            self._snap_task = None

    async def _store_snapshots(self, changed: Mapping[str, dict[str, Any]], ended: list[str],
                               replace: bool) -> None:
        """One fenced script: store ``changed`` (all of them with ``replace``), drop
        ``ended``; a lost lease steps down, a failure asks for a full rewrite."""
        if not self.epoch:
            return
        args: list[Any] = [self._lease_value(), int(replace), len(changed)]
        for call_id, snap in changed.items():
            args += [call_id, json.dumps(snap, separators=(",", ":"))]
        args += ended
        try:
            ok = await self._scripts["snapshot"](
                keys=[self.key("leader"), self.key("calls")], args=args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._full_snapshot_needed = True
            self._bus_failed(f"snapshot: {exc!r}")
            return
        self.stats["snapshots"] += 1
        if not ok:
            logger.warning("cluster lease lost while storing call snapshots")
            self._step_down()

    async def _flush_snapshots(self) -> None:
        while self._snap_task is not None:
            await asyncio.shield(self._snap_task)

    # ------------------------------------------------------------------ loops

    def _bus_failed(self, why: str) -> None:
        if self.bus_up:
            logger.warning("cluster bus (Redis at %s) lost: %s", self.safe_url, why)
        self.bus_up = False

    def _bus_back(self, resubscribed: bool = False) -> None:
        """A command succeeded (or, ``resubscribed``, the listener subscribed again)."""
        if not self.bus_up:
            logger.warning("cluster bus (Redis at %s) is back", self.safe_url)
            self.bus_up = True
            self._bus_since = time.monotonic()
            self._contend_after = time.monotonic() + self.settings.rejoin_wait_s
        if resubscribed and self._listener_lost:
            self._listener_lost = False
            # What this node was sent while it was not subscribed is lost: its clients
            # resynchronise (only then: a failed command loses nothing sent to this node).
            self._handler.cluster_resync()

    async def _listen(self) -> None:
        """Receive this node's channel and the control channel, reconnecting after errors."""
        channels = [self.key(f"node:{self.index}"), self.key("control")]
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                self._bus_back(resubscribed=True)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:
                self._listener_lost = True
                self._bus_failed(f"subscription: {exc!r}")
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.2)

    async def _listen_core(self) -> None:
        """On the leader: receive the connection operations of every node."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.key("core"))
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    self.stats["received"] += 1
                    body = json.loads(message["data"])
                    node = int(body["n"])
                    self._seen[node] = time.monotonic()
                    self._handler.cluster_inputs(node, int(body["e"]), body["ops"])
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:
                if not isinstance(exc, _BUS_ERRORS):
                    logger.exception("cluster input handling failed")
                else:
                    self._bus_failed(f"core subscription: {exc!r}")
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.2)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        self.stats["received"] += 1
        try:
            body = json.loads(data)
            if channel.endswith(b":control"):
                self._control(body)
            else:
                epoch = int(body["e"])
                if self.leader is not None and epoch < self.leader.epoch:
                    return  # a deposed leader's
                self._handler.cluster_outputs(epoch, body["ops"])
        except Exception:
            logger.exception("a cluster message on %r could not be handled", channel)

    def _control(self, body: dict[str, Any]) -> None:
        kind = body.get("t")
        node = int(body.get("n", 0))
        self._seen[node] = time.monotonic()
        if kind == "hb":
            epoch = int(body.get("e", 0))
            if epoch and (self.leader is None or epoch > self.leader.epoch) and not self.epoch:
                self._follow(LeaderView(node, epoch, str(body.get("name", ""))))
        elif kind == "groups":
            for ids in body.get("ops", []):
                self._handler.cluster_groups_changed([str(g) for g in ids])

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            message = json.dumps({"t": "hb", "n": self.index, "name": self.name,
                                  "e": self.epoch})
            try:
                await self._redis.publish(self.key("control"), message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._bus_failed(f"heartbeat: {exc!r}")
                continue
            if self.epoch and not self.frozen:
                self._check_nodes()

    def _check_nodes(self) -> None:
        """On the leader: nodes silent beyond ``node_timeout_s`` are dead (judged only after
        this node's own bus has been up that long)."""
        now = time.monotonic()
        timeout = self.settings.node_timeout_s
        if not self.bus_up or now - self._bus_since < timeout:
            return
        for node, seen in list(self._seen.items()):
            if node != self.index and now - seen > timeout:
                del self._seen[node]
                logger.warning("cluster node %d silent for %.1f s: its connections are gone",
                               node, now - seen)
                self._handler.cluster_node_dead(node)

    def node_seen(self, node: int) -> None:
        """On the leader: ``node`` has connections (it is watched from now on)."""
        self._seen.setdefault(node, time.monotonic())

    async def _elect(self) -> None:
        """Hold or watch the lease, every ``renew_s``."""
        while True:
            try:
                await self._elect_once()
            except asyncio.CancelledError:
                raise
            except _BUS_ERRORS as exc:
                self._bus_failed(f"lease: {exc!r}")
                self._check_freeze()
            except Exception:
                logger.exception("cluster election step failed")
            await asyncio.sleep(self.settings.renew_s)

    def _check_freeze(self) -> None:
        if self.epoch and not self.frozen and \
                time.monotonic() - self._last_renew > self.settings.lease_s:
            logger.warning("cluster lease not renewed for %.1f s: frozen until Redis answers",
                           time.monotonic() - self._last_renew)
            self.frozen = True
            self._handler.cluster_frozen(True)

    async def _elect_once(self) -> None:
        lease_ms = int(self.settings.lease_s * 1000)
        leader_key, epoch_key = self.key("leader"), self.key("epoch")
        if self.epoch:
            held = int(await self._scripts["renew"](
                keys=[leader_key], args=[self._lease_value(), lease_ms]))
            self._bus_back()
            if held == 1:
                self._renewed()
                return
            if held == -1:
                logger.warning("cluster lease taken by another node")
                self._step_down()
                return
            # The lease is gone (Redis restarted, or it expired while nobody took it): take it
            # again at once, with a new epoch, and store every call again.
            epoch = int(await self._scripts["acquire"](
                keys=[leader_key, epoch_key],
                args=[max(self._max_epoch, self.epoch), self.index, self.name, lease_ms]))
            if not epoch:
                self._step_down()
                return
            await self._scripts["floor"](keys=[self.key("node_seq")], args=[self.index])
            self.epoch = self._max_epoch = epoch
            self.leader = LeaderView(self.index, epoch, self.name)
            self._full_snapshot_needed = True
            logger.warning("cluster lease taken again as epoch %d", epoch)
            self._renewed()
            self._handler.cluster_follow(self.leader)
            return
        view = LeaderView.parse(await self._redis.get(leader_key))
        self._bus_back()
        if view is not None:
            self._max_epoch = max(self._max_epoch, view.epoch)
            if self.leader is None or view.epoch != self.leader.epoch:
                self._follow(view)
            return
        if self.leader is not None:
            self._follow(None)
        if time.monotonic() < self._contend_after:
            return
        epoch = int(await self._scripts["acquire"](
            keys=[leader_key, epoch_key],
            args=[self._max_epoch, self.index, self.name, lease_ms]))
        if not epoch:
            return
        await self._scripts["floor"](keys=[self.key("node_seq")], args=[self.index])
        self.epoch = self._max_epoch = epoch
        self.leader = LeaderView(self.index, epoch, self.name)
        self._renewed()
        raw = await self._redis.hgetall(self.key("calls"))
        snapshots: list[dict[str, Any]] = []
        for call_id, text in raw.items():
            try:
                snapshots.append(json.loads(text))
            except ValueError:
                logger.error("ignoring the garbled snapshot of call %r", call_id)
        self._seen.clear()
        logger.warning("cluster node %d leads as epoch %d (%d call(s) to adopt)",
                       self.index, epoch, len(snapshots))
        self._handler.cluster_lead(epoch, snapshots)
        self._core_listener = self._spawn(self._listen_core(), "cluster-core")
        # Tell the others at once: they close what was bound to the old leader, and the
        # clients' next logins reach this one.
        await self._redis.publish(self.key("control"), json.dumps(
            {"t": "hb", "n": self.index, "name": self.name, "e": epoch}))
        await self._handler.cluster_led()

    def _renewed(self) -> None:
        self._last_renew = time.monotonic()
        if self.frozen:
            self.frozen = False
            logger.warning("cluster lease renewed: unfrozen")
            self._handler.cluster_frozen(False)
        if self._full_snapshot_needed:
            # A snapshot write failed (or Redis lost them all): store every call again.
            self._full_snapshot_needed = False
            self._handler.cluster_snapshot_all()

    def _follow(self, view: LeaderView | None) -> None:
        if view is not None:
            self._max_epoch = max(self._max_epoch, view.epoch)
        self.leader = view
        self._handler.cluster_follow(view)

    def _step_down(self) -> None:
        if not self.epoch:
            return
        logger.warning("cluster node %d no longer leads (epoch %d)", self.index, self.epoch)
        self.epoch = 0
        self.frozen = False
        if self._core_listener is not None:
            self._core_listener.cancel()
            self._core_listener = None
        self._snap_queue_done()
        self.leader = None
        self._handler.cluster_follow(None)

    def _snap_queue_done(self) -> None:
        queue, self._snap_queue = self._snap_queue, []
        for _, _, done, _ in queue:
            done()
