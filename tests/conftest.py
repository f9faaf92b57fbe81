"""Fixtures every test folder shares: a real signaling server, and engines closed at the end.

Helpers live in :mod:`tests.helpers`: credentials and servers (:mod:`~tests.helpers.servers`),
engine parties and waits (:mod:`~tests.helpers.engine`), a real PostgreSQL and the ``db``
fixture that runs a test on both record back ends (:mod:`~tests.helpers.postgres`), a real
Redis (:mod:`~tests.helpers.redis`), a raw protocol client (:mod:`~tests.helpers.wsclient`),
the server core harness (:mod:`~tests.helpers.core`).
Fixtures that need the system (PulseAudio) are in ``tests/system/conftest.py``.

The server is made per test: it starts in about 2 ms with an in-memory store, and a fresh one
keeps tests from seeing each other's users and records.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from signaling_server.server import SignalingServer
from tests.helpers.cluster import cluster_redis
from tests.helpers.engine import MakeParty, Party, Recorder
from tests.helpers.postgres import db, own_postgres, postgres
from tests.helpers.redis import redis_server
from tests.helpers.servers import new_server

__all__ = ["cluster_redis", "db", "make_party", "own_postgres", "postgres", "redis_server",
           "server"]


@pytest.fixture
async def server() -> AsyncIterator[SignalingServer]:
    """A running server with an in-memory record store (about 2 ms to start, so per test)."""
    async with new_server() as srv:
        yield srv


@pytest.fixture
async def make_party(server: SignalingServer) -> AsyncIterator[MakeParty]:
    """Make a :class:`Party` on ``server`` (logged in unless ``login=False``); all are closed.

    Its devices are ``DeviceSet.virtual(user_id)`` unless ``devices`` is given.
    """
    made: list[Party] = []

    async def make(
        user_id: str,
        *,
        login: bool = True,
        devices: DeviceSet | None = None,
        **engine_kwargs: Any,
    ) -> Party:
        if devices is None:
            devices = DeviceSet.virtual(user_id)
        engine = CallEngine(server.url, devices=devices, **engine_kwargs)
        party = Party(user_id, engine, Recorder(user_id))
        made.append(party)
        engine.add_observer(party.rec)
        if login:
            await party.login()
        return party

    yield make
    await asyncio.gather(*(p.engine.close() for p in made))
