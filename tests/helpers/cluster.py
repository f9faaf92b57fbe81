"""A cluster of signaling-server nodes in the test process, on a real Redis and PostgreSQL.

:class:`Cluster` starts ``size`` :class:`SignalingServer` nodes joined on one Redis database
(``--cluster``) and one PostgreSQL database; its :attr:`Cluster.url` hands out the nodes' URLs
round-robin, so tests written for one server spread their clients over the nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from signaling_server.cluster import ClusterSettings
from signaling_server.core import CoreConfig
from signaling_server.devservices import LocalRedis
from signaling_server.server import SignalingServer
from tests.helpers.servers import server_config

__all__ = ["FAST", "Cluster", "cluster_redis", "fresh_redis_db", "running_cluster"]

FAST = ClusterSettings(lease_s=1.0, renew_s=0.2, heartbeat_s=0.25, node_timeout_s=1.0,
                       rejoin_wait_s=1.5)
"""Cluster timings for tests: failover within about a second."""


class Cluster:
    """Started nodes sharing a Redis and a PostgreSQL database."""

    def __init__(self, nodes: list[SignalingServer]) -> None:
        self.nodes = nodes
        self._next = itertools.cycle(range(len(nodes)))

    @property
    def url(self) -> str:
        """The next node's URL (round-robin over the nodes still running)."""
        for _ in range(len(self.nodes)):
            node = self.nodes[next(self._next)]
            if node._ws_server is not None and not node._stopping:
                return node.url
        raise RuntimeError("no node of the cluster is running")

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def leader(self) -> SignalingServer | None:
        """The node that leads now, if any."""
        for node in self.nodes:
            if node.cluster is not None and node.cluster.leading:
                return node
        return None

    async def wait_leader(self, within_s: float = 10.0) -> SignalingServer:
        """The leading node once every running node knows it."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader.cluster is not None:
                epoch = leader.cluster.core_epoch
                if all(n.cluster is not None and n.cluster.link.leader is not None
                       and n.cluster.link.leader.epoch == epoch
                       for n in self.nodes if not n._stopping):
                    return leader
            await asyncio.sleep(0.05)
        raise TimeoutError("no cluster leader")


@asynccontextmanager
async def running_cluster(
    redis_url: str, db: str, size: int = 3, core: CoreConfig | None = None,
    settings: ClusterSettings = FAST, **overrides: Any,
) -> AsyncIterator[Cluster]:
    """``size`` started nodes (the first leads), stopped at the end."""
    nodes = [
        SignalingServer(server_config(db, core, cluster=redis_url, node_name=f"node{i + 1}",
                                      cluster_settings=settings, **overrides))
        for i in range(size)
    ]
    started: list[SignalingServer] = []
    try:
        for node in nodes:
            await node.start()
            started.append(node)
            if len(started) == 1:
                await Cluster(started).wait_leader()
        cluster = Cluster(nodes)
        await cluster.wait_leader()
        yield cluster
    finally:
        for node in reversed(started):
            await node.stop()


_dbs = itertools.count(1)


def fresh_redis_db(server: LocalRedis, number: int) -> str:
    """The URL of database ``number`` of ``server``, emptied."""
    import redis as redis_sync

    url = server.url.rsplit("/", 1)[0] + f"/{number}"
    client = redis_sync.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def cluster_redis(redis_server: LocalRedis) -> str:
    """A Redis database of the session's server for one test (1..15 in turn, flushed)."""
    return fresh_redis_db(redis_server, next(_dbs) % 15 + 1)
