"""A real Redis for the tests: :class:`~signaling_server.devservices.LocalRedis`, one per
session (fixture ``redis_server``, re-exported by ``tests/conftest.py``).

A test that needs its own keys uses a database of its own or a key prefix; one that stops or
kills the server makes its own ``LocalRedis`` (the session's must stay up for the others).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from signaling_server.devservices import LocalRedis

__all__ = ["LocalRedis", "redis_server"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One ``redis-server`` for the whole test session; ``redis_server.url`` is its URL."""
    server = LocalRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()
