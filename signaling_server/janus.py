"""The signaling server's side of Janus: rooms created and destroyed, instances watched.

:class:`SfuService` carries out the core's SFU outputs (:mod:`signaling_server.sfu`) against
each instance's HTTP API (one Janus session and one VideoRoom handle per instance; VideoRoom's
``create``, ``allowed`` and ``destroy`` are synchronous requests, answered in the HTTP reply)
and reports back through the callbacks the server gives it: a room created or failed, an
instance down (its ``info`` endpoint unanswered twice in a row) or up again. It never blocks
the event loop; every request has a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

from signaling_server.sfu import AllowTokens, CreateRoom, DestroyRoom

__all__ = ["JanusError", "JanusInstance", "SfuService"]

logger = logging.getLogger(__name__)

_REQUEST_TIMEOUT = 3.0
_HEALTH_INTERVAL = 0.5
_HEALTH_FAILURES = 2
"""Consecutive unanswered health checks before an instance counts as down (about 1 s)."""
_KEEPALIVE_EVERY = 20  # health intervals: a keepalive every 10 s (Janus expires idle sessions)


class JanusError(Exception):
    """Janus refused a request or could not be reached."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def _transaction() -> str:
    return secrets.token_hex(6)


class JanusInstance:
    """One Janus gateway's HTTP API: a session with one VideoRoom handle, made on demand."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self._handle_url: str | None = None
        self._session_url: str | None = None
        self._lock = asyncio.Lock()

    async def _post(self, url: str, message: dict[str, Any]) -> dict[str, Any]:
        message = {"transaction": _transaction(), **message}
        try:
            async with self._http.post(
                url, json=message, timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT)
            ) as response:
                data: dict[str, Any] = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise JanusError(f"{self.url}: {exc!r}") from exc
        if data.get("janus") == "error":
            error = data.get("error", {})
            raise JanusError(f"{self.url}: {error.get('reason')}", int(error.get("code", 0)))
        return data

    async def _handle(self) -> str:
        async with self._lock:
            if self._handle_url is None:
                created = await self._post(self.url, {"janus": "create"})
                self._session_url = f"{self.url}/{created['data']['id']}"
                attached = await self._post(
                    self._session_url, {"janus": "attach", "plugin": "janus.plugin.videoroom"}
                )
                self._handle_url = f"{self._session_url}/{attached['data']['id']}"
            return self._handle_url

    def forget_session(self) -> None:
        """The instance restarted (or died): a new session is made on next use."""
        self._handle_url = self._session_url = None

    async def videoroom(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous VideoRoom request; its ``plugindata.data``, or :class:`JanusError`."""
        url = await self._handle()
        try:
            reply = await self._post(url, {"janus": "message", "body": body})
        except JanusError as exc:
            if exc.code == 458:  # no such session: Janus restarted under us
                self.forget_session()
            raise
        data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
        if "error_code" in data:
            raise JanusError(f"{self.url}: {data.get('error')}", int(data["error_code"]))
        return data

    async def alive(self, keepalive: bool) -> bool:
        """Whether ``info`` answers (and the session is kept alive when asked)."""
        try:
            async with self._http.get(
                self.url + "/info", timeout=aiohttp.ClientTimeout(total=1.0)
            ) as response:
                if response.status != 200:
                    return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        if keepalive and self._session_url is not None:
            try:
                await self._post(self._session_url, {"janus": "keepalive"})
            except JanusError:
                self.forget_session()
        return True


class SfuService:
    """Carries out the core's room outputs on the configured instances and watches them."""

    def __init__(
        self,
        instances: tuple[str, ...],
        *,
        room_ready: Callable[[str, int], None],
        room_failed: Callable[[str, int], None],
        instance_down: Callable[[str], None],
        instance_up: Callable[[str], None],
    ) -> None:
        self.instances = instances
        self._room_ready = room_ready
        self._room_failed = room_failed
        self._instance_down = instance_down
        self._instance_up = instance_up
        self._http: aiohttp.ClientSession | None = None
        self._janus: dict[str, JanusInstance] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self.down: set[str] = set()
        """Instances reported down (by a failed room or the watcher), until they answer."""

    async def start(self) -> None:
        """Open the HTTP client and start watching every instance."""
        self._http = aiohttp.ClientSession()
        for url in self.instances:
            self._janus[url] = JanusInstance(url, self._http)
            self._watchers.append(asyncio.get_running_loop().create_task(
                self._watch(url), name=f"sfu-watch {url}"))

    async def close(self) -> None:
        """Stop watching and wait for requests in flight (bounded by their timeouts)."""
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def execute(self, out: CreateRoom | AllowTokens | DestroyRoom) -> None:
        """Carry out one output in the background, after the earlier ones for its room."""
        key = (out.instance, out.room)
        before = self._last.get(key)
        task = asyncio.get_running_loop().create_task(self._after(before, out),
                                                      name=f"sfu {out!r:.60}")
        self._last[key] = task
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if self._last.get(key) is task:
                del self._last[key]

        task.add_done_callback(done)

    async def _after(
        self, before: asyncio.Task[None] | None, out: CreateRoom | AllowTokens | DestroyRoom
    ) -> None:
        if before is not None:
            await asyncio.wait([before])  # its failure is its own; ours runs regardless
        await self._run(out)

    async def _run(self, out: CreateRoom | AllowTokens | DestroyRoom) -> None:
        janus = self._janus.get(out.instance)
        if janus is None:
            logger.error("no SFU instance %s configured", out.instance)
            return
        if isinstance(out, CreateRoom):
            try:
                await janus.videoroom({
                    "request": "create", "room": out.room, "secret": out.secret,
                    "pin": out.pin, "allowed": list(out.tokens), "is_private": True,
                    "require_pvtid": True, "publishers": out.publishers,
                    "audiocodec": "opus", "videocodec": "vp8,h264",
                    "notify_joining": False, "permanent": False,
                })
            except JanusError as exc:
                logger.warning("call %s: room not created on %s: %s", out.call_id,
                               out.instance, exc)
                self.down.add(out.instance)  # the core counts it down; the watcher revives it
                self._room_failed(out.call_id, out.epoch)
                return
            logger.info("call %s: room %d on %s", out.call_id, out.room, out.instance)
            self._room_ready(out.call_id, out.epoch)
        elif isinstance(out, AllowTokens):
            for action, tokens in (("add", out.add), ("remove", out.remove)):
                if tokens:
                    try:
                        await janus.videoroom({"request": "allowed", "room": out.room,
                                               "secret": out.secret, "action": action,
                                               "allowed": list(tokens)})
                    except JanusError as exc:
                        logger.info("room %d: tokens not %sed: %s", out.room, action, exc)
        else:
            try:
                await janus.videoroom({"request": "destroy", "room": out.room,
                                       "secret": out.secret})
            except JanusError as exc:
                logger.info("room %d not destroyed: %s", out.room, exc)

    async def _watch(self, url: str) -> None:
        janus = self._janus[url]
        failures = 0
        beat = 0
        while True:
            beat += 1
            ok = await janus.alive(keepalive=beat % _KEEPALIVE_EVERY == 0)
            if ok:
                failures = 0
                if url in self.down:
                    self.down.discard(url)
                    janus.forget_session()
                    logger.warning("SFU %s is up", url)
                    self._report(self._instance_up, url)
            else:
                failures += 1
                if failures >= _HEALTH_FAILURES and url not in self.down:
                    self.down.add(url)
                    janus.forget_session()
                    logger.warning("SFU %s is down", url)
                    self._report(self._instance_down, url)
            await asyncio.sleep(_HEALTH_INTERVAL)

    @staticmethod
    def _report(callback: Callable[[str], None], url: str) -> None:
        try:
            callback(url)
        except Exception:
            logger.exception("SFU state callback failed for %s", url)
