"""A small protocol client for the server tests: requests by id, an ordered event queue.

Waiting methods take a ``timeout`` argument (ruff's ASYNC109 is silenced for them) so a
test reads ``await alice.expect("USER_ENTER", timeout=2)``.

"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callwire import protocol
from callwire.protocol import Event, Relay, Reply
from tests.helpers.servers import APP, sig

__all__ = ["Closed", "WsClient"]

@dataclass(frozen=True)
class Closed:
    """How the connection ended, as the client saw it."""

    code: int | None
    reason: str


class WsClient:
    """One websocket to the server; a reader task sorts replies, events and relays."""

    def __init__(self, ws: ClientConnection, name: str = "") -> None:
        self.ws = ws
        self.name = name
        self.user_id: str | None = None
        self.login_reply: dict[str, Any] = {}
        """The data of the last successful :meth:`login`."""
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[Reply]] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.relays: asyncio.Queue[Relay] = asyncio.Queue()
        self.unmatched: asyncio.Queue[Reply] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, url: str, name: str = "", **kwargs: Any) -> WsClient:
        """Open a websocket to ``url``."""
        ws = await connect(url, compression=None, **kwargs)
        return cls(ws, name)

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the websocket and stop the reader."""
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def stop_reading(self) -> None:
        """Stop reading frames, as a stuck client would; the socket fills up."""
        self._reader.cancel()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self._reader.cancel()
        self.ws.transport.abort()

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                frame = protocol.parse_server_frame(message)
                if isinstance(frame, Reply):
                    future = self._pending.pop(frame.id, None) if frame.id is not None else None
                    if future is not None and not future.done():
                        future.set_result(frame)
                    else:
                        self.unmatched.put_nowait(frame)
                elif isinstance(frame, Event):
                    self.events.put_nowait(frame)
                else:
                    self.relays.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    # ------------------------------------------------------------------ requests

    async def send_raw(self, frame: str | bytes) -> None:
        """Send any frame as it is."""
        await self.ws.send(frame)

    async def raw_request(
        self, frame: str | bytes, request_id: int | str, timeout: float = 5.0  # noqa: ASYNC109
    ) -> Reply:
        """Send a hand-made frame and wait for the reply carrying ``request_id``."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self.ws.send(frame)
        async with asyncio.timeout(timeout):
            return await future

    async def request(
        self, kind: str, data: dict[str, Any] | None = None, timeout: float = 5.0  # noqa: ASYNC109
    ) -> Reply:
        """Send a request and return its reply, ok or not."""
        request_id = next(self._ids)
        return await self.raw_request(
            protocol.encode_request(kind, request_id, data or {}), request_id, timeout
        )

    async def call(self, kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request that must succeed; return the reply's data."""
        reply = await self.request(kind, data)
        assert reply.ok, f"{self.name}: {kind} failed: [{reply.code}] {reply.message}"
        return reply.data

    async def login(
        self, user_id: str, user_sig: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Log in (with a fresh test userSig by default) and consume SDK_READY."""
        data = {
            "sdkAppId": APP,
            "userID": user_id,
            "userSig": user_sig if user_sig is not None else sig(user_id),
            "protocolVersion": protocol.PROTOCOL_VERSION,
            **extra,
        }
        reply = await self.call("login", data)
        await self.expect("SDK_READY")
        self.login_reply = reply
        self.user_id = user_id
        self.name = self.name or user_id
        return reply

    # ------------------------------------------------------------------ events

    def _arrived(self) -> list[str]:
        names = []
        while not self.events.empty():
            names.append(self.events.get_nowait().name)
        return names

    async def expect(self, name: str, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event must be ``name``; return its data, else fail listing what came."""
        try:
            async with asyncio.timeout(timeout):
                event = await self.events.get()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {name} within {timeout} s; nothing else arrived either"
            ) from None
        if event.name != name:
            rest = self._arrived()
            raise AssertionError(
                f"{self.name}: expected {name}, got {event.name} {event.data}; "
                f"then {rest or 'nothing'}"
            )
        return event.data

    async def expect_relay(self, timeout: float = 5.0) -> Relay:  # noqa: ASYNC109
        """The next relayed message."""
        async with asyncio.timeout(timeout):
            return await self.relays.get()

    async def no_more_events(self, wait: float = 0.2) -> None:
        """Fail if any event arrives within ``wait`` seconds (or is already queued)."""
        await asyncio.sleep(wait)
        assert self.events.empty(), f"{self.name}: unexpected events {self._arrived()}"

    async def closed(self, timeout: float = 5.0) -> Closed:  # noqa: ASYNC109
        """Wait for the server to close the connection; its close code and reason."""
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
        rcvd = self.ws.close_code
        return Closed(rcvd, self.ws.close_reason or "")
