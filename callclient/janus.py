"""A client of the Janus gateway's HTTP API: one session, plugin handles, events by long poll.

What :mod:`callclient.sfu` needs from Janus and no more: create a session, attach
``janus.plugin.videoroom`` handles, send a plugin message and get its answer (Janus answers
synchronous requests in the HTTP reply and asynchronous ones, those with a JSEP, by an event
carrying the same transaction), and receive the events no request asked for (a publisher
arrived or left, a re-offer) through :attr:`JanusHandle.on_event`. A long poll reads the
session's events; a failed poll or keepalive reports the session lost once
(:attr:`JanusSession.on_lost`): the gateway died or the network to it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["JanusError", "JanusHandle", "JanusSession"]

logger = logging.getLogger(__name__)

_REQUEST_TIMEOUT = 10.0
_KEEPALIVE_INTERVAL = 15.0


class JanusError(Exception):
    """Janus refused a request (``code`` is Janus's, e.g. 426 no such room) or was unreachable."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


JsepEvent = tuple[dict[str, Any], dict[str, Any] | None]
"""A plugin event's ``plugindata.data`` and its ``jsep`` (an SDP offer or answer) if any."""


class JanusHandle:
    """One plugin handle of a :class:`JanusSession`."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.id = handle_id
        self.url = f"{session.url}/{handle_id}"
        self.on_event: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None
        """Events no request is waiting for: ``(data, jsep)``."""

    async def request(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> JsepEvent:
        """Send a plugin message; its answer ``(data, jsep)``, or :class:`JanusError`."""
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        transaction = secrets.token_hex(8)
        waiter: asyncio.Future[JsepEvent] = asyncio.get_running_loop().create_future()
        self.session.waiting[transaction] = waiter
        try:
            reply = await self.session.post(self.url, message, transaction)
            if reply.get("janus") == "success":  # a synchronous request
                result: JsepEvent = (reply.get("plugindata", {}).get("data", {}),
                                     reply.get("jsep"))
            else:  # "ack": the answer comes as an event with the same transaction
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    result = await waiter
        finally:
            self.session.waiting.pop(transaction, None)
        data = result[0]
        if "error_code" in data:
            raise JanusError(f"{body.get('request')}: {data.get('error')}",
                             int(data["error_code"]))
        return result

    async def detach(self) -> None:
        """Detach the handle (best effort)."""
        with contextlib.suppress(JanusError):
            await self.session.post(self.url, {"janus": "detach"})


class JanusSession:
    """A Janus session over HTTP: ``await create()``, handles, ``await destroy()``."""

    def __init__(self, root_url: str) -> None:
        self.root_url = root_url.rstrip("/")
        self.url = ""
        self.on_lost: Callable[[], None] | None = None
        """Called once when polling or a keepalive fails (the gateway is gone)."""
        self.waiting: dict[str, asyncio.Future[JsepEvent]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._handles: dict[int, JanusHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = False
        self._closed = False

    async def post(
        self, url: str, message: dict[str, Any], transaction: str | None = None
    ) -> dict[str, Any]:
        """One request of the API; Janus's ``error`` replies raise :class:`JanusError`."""
        if self._http is None:
            raise JanusError("session closed")
        message = {**message, "transaction": transaction or secrets.token_hex(8)}
        try:
            async with self._http.post(
                url, json=message, timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT)
            ) as response:
                data: dict[str, Any] = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise JanusError(f"{url}: {exc!r}") from exc
        if data.get("janus") == "error":
            error = data.get("error", {})
            raise JanusError(str(error.get("reason")), int(error.get("code", 0)))
        return data

    async def create(self) -> None:
        """Open the session and start reading its events."""
        self._http = aiohttp.ClientSession()
        try:
            created = await self.post(self.root_url, {"janus": "create"})
        except BaseException:
            await self._http.close()
            self._http = None
            raise
        self.url = f"{self.root_url}/{created['data']['id']}"
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll(), name=f"janus poll {self.url}"),
                       loop.create_task(self._keepalive(), name=f"janus keepalive {self.url}")]

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> JanusHandle:
        """A new handle on ``plugin``."""
        attached = await self.post(self.url, {"janus": "attach", "plugin": plugin})
        handle = JanusHandle(self, int(attached["data"]["id"]))
        self._handles[handle.id] = handle
        return handle

    async def destroy(self) -> None:
        """Stop reading, destroy the session (best effort) and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            if self.url and not self._lost:
                with contextlib.suppress(JanusError):
                    async with asyncio.timeout(2.0):
                        await self.post(self.url, {"janus": "destroy"})
            await self._http.close()
            self._http = None
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(JanusError("session closed"))

    def _lose(self, why: str) -> None:
        if self._lost or self._closed:
            return
        self._lost = True
        logger.info("janus session %s lost: %s", self.url, why)
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(JanusError(f"janus session lost: {why}"))
        if self.on_lost is not None:
            self.on_lost()

    async def _poll(self) -> None:
        assert self._http is not None
        while True:
            try:
                async with self._http.get(
                    self.url, params={"maxev": "10"},
                    timeout=aiohttp.ClientTimeout(total=40.0),
                ) as response:
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self._lose(repr(exc))
                return
            for message in body if isinstance(body, list) else [body]:
                if isinstance(message, dict) and message.get("janus") == "error":
                    self._lose(str(message.get("error")))
                    return
                if isinstance(message, dict):
                    self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("janus")
        if kind in ("keepalive", "ack", "webrtcup", "media", "slowlink", "trickle"):
            return
        if kind == "hangup":
            logger.info("janus hung up handle %s: %s", message.get("sender"),
                        message.get("reason"))
            return
        if kind != "event":
            return
        data = message.get("plugindata", {}).get("data", {})
        jsep = message.get("jsep")
        waiter = self.waiting.get(str(message.get("transaction", "")))
        if waiter is not None and not waiter.done():
            waiter.set_result((data, jsep))
            return
        handle = self._handles.get(int(message.get("sender", 0)))
        if handle is not None and handle.on_event is not None:
            try:
                handle.on_event(data, jsep)
            except Exception:
                logger.exception("janus event handler failed")

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(_KEEPALIVE_INTERVAL)
            try:
                await self.post(self.url, {"janus": "keepalive"})
            except JanusError as exc:
                self._lose(str(exc))
                return
