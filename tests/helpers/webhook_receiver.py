"""A real HTTP callback receiver on 127.0.0.1 that records every request it gets.

It can be stopped and started again on the same port (the receiver "down" for a while), made
to answer with another status, or made to hang before answering.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["Received", "Receiver"]


@dataclass(frozen=True)
class Received:
    """One callback as it arrived."""

    path: str
    query: dict[str, str]
    body: dict[str, Any]
    raw_body: bytes
    headers: dict[str, str]
    at: float

    @property
    def command(self) -> str:
        """The ``command`` query parameter."""
        return self.query["command"]

    @property
    def seq(self) -> int:
        """The outbox row id the sender puts in ``X-Callback-Seq``."""
        return int(self.headers["X-Callback-Seq"])


class Receiver:
    """Records callbacks; ``status`` is the answer, ``hang_s`` delays answers (tests set both)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        self.hang_s = 0.0
        self.hang_count = 0
        """How many of the next requests hang for ``hang_s`` (they are recorded first)."""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._app = app

    @property
    def url(self) -> str:
        """The callback URL to configure."""
        return f"http://127.0.0.1:{self.port}/callback"

    async def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        runner = web.AppRunner(self._app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening: callbacks are refused until the next start."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        item = Received(
            request.path, dict(request.query), json.loads(raw), raw, dict(request.headers),
            time.monotonic(),
        )
        async with self._arrived:
            self.received.append(item)
            self._arrived.notify_all()
        if self.hang_count > 0:
            self.hang_count -= 1
            await asyncio.sleep(self.hang_s)
        return web.json_response({"ActionStatus": "OK", "ErrorCode": 0}, status=self.status)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:  # noqa: ASYNC109
        """Wait until at least ``count`` callbacks arrived; all of them."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    def commands(self, call_id: str | None = None) -> list[str]:
        """Commands received, in arrival order, optionally for one call."""
        return [r.command for r in self.received if call_id in (None, r.body["CallId"])]
