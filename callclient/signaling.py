"""The websocket session with the signaling server: login, requests, events, reconnect.

:class:`SignalingClient` owns one websocket at a time. Each request waits for its reply (by
``id``); events and relays go to callbacks in arrival order. When the connection drops without
the server meaning it (not kicked, userSig not expired, not closed by us), the client reconnects
with exponential backoff and logs in again with the same credentials, so a call's peer-to-peer
media can go on while signaling recovers.

It takes one server URL or several (the nodes of a cluster, any of which serves any user):
:meth:`SignalingClient.login` tries them in turn until one accepts, and each reconnect attempt
goes to the next one, so a node that died is left behind. A login refused with 4505
(``CLUSTER_UNAVAILABLE``: the cluster is electing its call owner) is retried like a failed
connect; a close with 1012 (``SERVICE_RESTART``) is reconnected at once (within 0.2 s, random,
then with the usual backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import USER_AGENT as WEBSOCKETS_USER_AGENT

from callclient.errors import (
    CallError,
    ClusterUnavailableError,
    ConnectionClosedError,
    ErrorCode,
    InvalidParameterError,
    RequestRepeatedError,
    error_for_code,
)
from callwire import protocol
from callwire.codes import FINAL_CLOSE_CODES, CloseCode
from callwire.protocol import Event, ProtocolViolation, Relay, Reply
from callwire.version import product_token

__all__ = ["Credentials", "SignalingClient", "server_urls"]

logger = logging.getLogger(__name__)

_FIRST_DELAY = 0.1
"""Seconds before the first reconnect attempt; doubled after each failure up to the maximum."""
_RESTART_JITTER = 0.2
"""After a 1012 close, the first attempt goes out within this many seconds (uniform)."""


def server_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """One URL or several as a tuple; :class:`InvalidParameterError` when there is none or an
    entry is not a string."""
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise InvalidParameterError(
            f"the signaling server URL must be a non-empty string or a non-empty sequence of "
            f"them, not {url!r}"
        )
    return urls


def _jittered(delay: float) -> float:
    return delay * (0.8 + 0.4 * random.random())


@dataclass(frozen=True)
class Credentials:
    """What a login needs; kept to log in again after a reconnect."""

    sdk_app_id: int
    user_id: str
    user_sig: str
    extra: dict[str, Any] = field(default_factory=dict)


class SignalingClient:
    """One logged-in signaling session, with requests, events and automatic reconnection.

    ``url`` is one server URL (``ws://host:port``) or several, tried in turn (see the module
    docstring); :attr:`url` is the one in use.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        on_event: Callable[[Event], None],
        on_relay: Callable[[Relay], None],
        *,
        on_reconnected: Callable[[dict[str, Any]], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        request_timeout: float = 10.0,
        reconnect: bool = True,
        max_backoff: float = 2.0,
    ) -> None:
        self.urls = server_urls(url)
        """Every server URL, in the order they are tried."""
        self._index = 0
        self._on_event = on_event
        self._on_relay = on_relay
        self._on_reconnected = on_reconnected
        self._on_disconnected = on_disconnected
        self._request_timeout = request_timeout
        self._reconnect = reconnect
        self._max_backoff = max_backoff
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[Reply]] = {}
        self._on_reply: dict[int | str, Callable[[dict[str, Any]], None]] = {}
        self._credentials: Credentials | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._connected = asyncio.Event()

    @property
    def url(self) -> str:
        """The server URL in use: the one connected to, else the one tried next."""
        return self.urls[self._index]

    @property
    def connected(self) -> bool:
        """Whether a logged-in websocket is up right now."""
        return self._connected.is_set()

    @property
    def user_id(self) -> str | None:
        """The logged-in user, if any."""
        return self._credentials.user_id if self._credentials else None

    async def login(self, credentials: Credentials) -> dict[str, Any]:
        """Connect and log in; returns the login reply data. Raises :class:`CallError`."""
        if self._closing:
            raise ConnectionClosedError("login: the signaling client is closed")
        if self._ws is not None:
            raise RequestRepeatedError("login: already logged in; log out first")
        ws, reply, early = await self._first_login(credentials)
        self._credentials = credentials
        self._ws = ws
        self._connected.set()
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"signaling-reader-{credentials.user_id}"
        )
        self._dispatch_all(early)
        return reply

    async def request(
        self,
        kind: str,
        /,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
        **data: Any,
    ) -> dict[str, Any]:
        """Send a request and wait for its reply data; an error reply raises its exception.

        ``on_reply`` runs with the reply data as soon as the reply is read, before any frame
        that follows it is dispatched: state it sets is in place for the events the request
        causes.
        """
        ws = self._ws
        if ws is None or not self._connected.is_set():
            raise ConnectionClosedError(f"{kind}: not connected to the signaling server")
        reply = await self._exchange(ws, kind, data, on_reply)
        if not reply.ok:
            raise error_for_code(reply.code, reply.message)
        return reply.data

    async def logout(self) -> None:
        """Log out and close the connection (no reconnect). Idempotent."""
        ws = self._ws
        if ws is not None and self._connected.is_set():
            with contextlib.suppress(CallError, ConnectionClosed, asyncio.TimeoutError):
                await asyncio.wait_for(self._exchange(ws, "logout", {}), 2.0)
        await self.close()

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Idempotent."""
        self._closing = True
        self._connected.clear()
        reader, self._reader = self._reader, None
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_pending("the signaling client was closed")

    # ------------------------------------------------------------------ internals

    def _next_url(self) -> None:
        self._index = (self._index + 1) % len(self.urls)

    async def _first_login(
        self, credentials: Credentials
    ) -> tuple[ClientConnection, dict[str, Any], list[protocol.ServerFrame]]:
        """Connect and log in, trying each URL in turn from the current one: an unreachable
        server or a connection lost before the reply moves on to the next URL; so does a 4505
        refusal, and when every URL refused with 4505 the round is tried again with backoff
        until the request timeout. The last error is raised when nothing accepted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout
        delay = _FIRST_DELAY
        while True:
            failures: list[tuple[str, CallError]] = []
            for _ in self.urls:
                try:
                    ws = await self._open()
                except ConnectionClosedError as exc:
                    failures.append((self.url, exc))
                    self._next_url()
                    continue
                try:
                    reply, early = await self._login_on(ws, credentials)
                except (ClusterUnavailableError, ConnectionClosedError) as exc:
                    await ws.close()
                    logger.info("login at %s failed: %s", self.url, exc)
                    failures.append((self.url, exc))
                    self._next_url()
                    continue
                except BaseException:
                    await ws.close()
                    raise
                return ws, reply, early
            unavailable = [e for _, e in failures if isinstance(e, ClusterUnavailableError)]
            pause = _jittered(delay)
            if not unavailable or loop.time() + pause > deadline:
                raise self._login_failure(failures)
            await asyncio.sleep(pause)
            delay = min(self._max_backoff, delay * 2)

    @staticmethod
    def _login_failure(failures: list[tuple[str, CallError]]) -> CallError:
        """The error of a login that no URL accepted: the last one's when there is one URL;
        with several, the last one's class and code with every URL's reason."""
        last = failures[-1][1]
        if len(failures) == 1:
            return last
        reasons = "; ".join(f"{url}: {exc.message}" for url, exc in failures)
        return type(last)(f"login: no signaling server accepted ({reasons})", last.code)

    async def _open(self) -> ClientConnection:
        try:
            return await connect(
                self.url,
                compression=None,
                max_size=2**20,
                open_timeout=self._request_timeout,
                ping_interval=5,
                ping_timeout=5,
                user_agent_header=f"{product_token('callclient')} {WEBSOCKETS_USER_AGENT}",
            )
        except InvalidURI as exc:
            raise CallError(
                f"bad server URL {self.url!r}: {exc}", ErrorCode.PARAM_INVALID
            ) from exc
        except (TimeoutError, OSError, InvalidHandshake) as exc:
            raise ConnectionClosedError(
                f"cannot reach the signaling server at {self.url}: {exc}"
            ) from exc

    async def _login_on(
        self, ws: ClientConnection, credentials: Credentials
    ) -> tuple[dict[str, Any], list[protocol.ServerFrame]]:
        """Log in on ``ws``: the reply data, and the frames that came before the reply.

        The caller dispatches those frames once it is in the logged-in state (and has handled
        the reply), so they are seen in the order they came, after the reply.
        """
        data = {
            "sdkAppId": credentials.sdk_app_id,
            "userID": credentials.user_id,
            "userSig": credentials.user_sig,
            "protocolVersion": protocol.PROTOCOL_VERSION,
            **credentials.extra,
        }
        request_id = next(self._ids)
        # Before the reader task runs, read frames here until the login reply arrives.
        early: list[protocol.ServerFrame] = []
        try:
            # The send is inside: a server may close a new connection at once (a cluster
            # node that just learned of a new leader closes with 1012): that is a lost
            # connection, retried, not an error out of the reconnect loop.
            await ws.send(protocol.encode_request("login", request_id, data))
            async with asyncio.timeout(self._request_timeout):
                while True:
                    frame = protocol.parse_server_frame(await ws.recv())
                    if isinstance(frame, Reply) and frame.id == request_id:
                        break
                    early.append(frame)
        except (ConnectionClosed, TimeoutError) as exc:
            raise ConnectionClosedError(f"login: connection lost before the reply: {exc}") from exc
        except ProtocolViolation as exc:
            raise CallError(f"login: the server sent an invalid frame: {exc}") from exc
        if not frame.ok:
            raise error_for_code(frame.code, frame.message)
        logger.info("logged in as %s (server version %s)", credentials.user_id,
                    frame.data.get("serverVersion", "not given"))
        # Events queued right behind the reply are read by the reader task in order.
        return frame.data, early

    async def _exchange(
        self,
        ws: ClientConnection,
        kind: str,
        data: dict[str, Any],
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> Reply:
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if on_reply is not None:
            self._on_reply[request_id] = on_reply
        try:
            await ws.send(protocol.encode_request(kind, request_id, data))
            return await asyncio.wait_for(future, self._request_timeout)
        except ConnectionClosed as exc:
            raise ConnectionClosedError(f"{kind}: connection lost: {exc}") from exc
        except TimeoutError as exc:
            raise ConnectionClosedError(
                f"{kind}: no reply within {self._request_timeout:g} s"
            ) from exc
        finally:
            self._pending.pop(request_id, None)
            self._on_reply.pop(request_id, None)

    def _dispatch_all(self, frames: list[protocol.ServerFrame]) -> None:
        for frame in frames:
            self._dispatch(frame)

    def _dispatch(self, frame: protocol.ServerFrame) -> None:
        if isinstance(frame, Reply):
            future = self._pending.get(frame.id) if frame.id is not None else None
            if future is not None and not future.done():
                callback = self._on_reply.pop(frame.id, None) if frame.id is not None else None
                if callback is not None and frame.ok:
                    try:
                        callback(frame.data)
                    except Exception:
                        logger.exception("reply callback failed")
                future.set_result(frame)
            elif not frame.ok:
                logger.warning("server error %s: %s", frame.code, frame.message)
            return
        try:
            if isinstance(frame, Event):
                self._on_event(frame)
            else:
                self._on_relay(frame)
        except Exception:
            logger.exception("signaling callback failed on %r", frame)

    async def _read_loop(self) -> None:
        while not self._closing:
            ws = self._ws
            if ws is None:
                return
            try:
                async for raw in ws:
                    try:
                        frame = protocol.parse_server_frame(raw)
                    except ProtocolViolation as exc:
                        logger.warning("ignoring an invalid frame from the server: %s", exc)
                        continue
                    self._dispatch(frame)
            except ConnectionClosed:
                pass
            code = ws.close_code
            self._connected.clear()
            self._fail_pending("connection to the signaling server lost")
            if self._closing:
                return
            if self._on_disconnected is not None:
                try:
                    self._on_disconnected()
                except Exception:
                    logger.exception("on_disconnected callback failed")
            if not self._reconnect or code in FINAL_CLOSE_CODES:
                self._ws = None
                return
            if not await self._reconnect_loop(restart=code == CloseCode.SERVICE_RESTART):
                return

    async def _reconnect_loop(self, *, restart: bool = False) -> bool:
        """Reconnect and log in again until it works, each attempt to the next URL, with a
        backoff that doubles after each round of the URLs; after a 1012 close (``restart``)
        the first attempt goes out at once (within :data:`_RESTART_JITTER`). False when it
        must stop (closed, userSig refused)."""
        delay = _FIRST_DELAY
        credentials = self._credentials
        assert credentials is not None
        attempt = 0
        while not self._closing:
            if attempt == 0 and restart:
                await asyncio.sleep(random.uniform(0.0, _RESTART_JITTER))
            else:
                await asyncio.sleep(_jittered(delay))
            attempt += 1
            # The backoff grows once per round of the URLs, not per attempt: a dead node
            # among live ones costs one short pause, not a doubling.
            if attempt % len(self.urls) == 0:
                delay = min(self._max_backoff, delay * 2)
            self._next_url()
            try:
                ws = await self._open()
            except CallError as exc:
                logger.info("reconnect failed: %s", exc)
                continue
            try:
                reply, early = await self._login_on(ws, credentials)
            except CallError as exc:
                await ws.close()
                if exc.code in (ErrorCode.USER_SIG_INVALID, ErrorCode.USER_SIG_EXPIRED):
                    logger.warning("cannot log in again: %s", exc)
                    self._ws = None
                    self._dispatch(Event("USER_SIG_EXPIRED", {"msg": exc.message}))
                    return False
                logger.info("re-login failed: %s", exc)
                continue
            except BaseException:  # cancelled by close(): this connection is ours to close
                await ws.close()
                raise
            self._ws = ws
            self._connected.set()
            logger.info("reconnected to %s as %s", self.url, credentials.user_id)
            if self._on_reconnected is not None:
                try:
                    self._on_reconnected(reply)
                except Exception:
                    logger.exception("on_reconnected callback failed")
            self._dispatch_all(early)
            return True
        return False

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(reason))
        self._pending.clear()
