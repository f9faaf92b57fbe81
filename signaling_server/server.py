"""The websocket layer: runs :class:`~signaling_server.core.CallCore` behind real sockets.

Each accepted websocket gets an increasing connection id. Every frame it sends goes to
:meth:`CallCore.receive`; the core's outputs are carried out in order: frames are queued on
the target connection (each connection drains its own bounded queue, so a slow reader never
stalls anyone else and is dropped once its queue overflows). The durable outputs of one
step (records, the outbox rows of its webhook notices and offline pushes, profile changes) go
to the :class:`~signaling_server.store.RecordWriter` as one unit, written in one
transaction, and that step's frames are sent only once the unit is committed: a client that
saw a call end can count on its record being on disk, whenever the server dies. Committed
outbox rows are handed to the :class:`~signaling_server.webhooks.WebhookService` (call-event
webhooks) or its second instance on the push channel (:mod:`signaling_server.push`) to
send; notices also go to an optional ``notice_sink``. Record queries and profile loads run
on the writer's reader thread, at most ``max_queries_per_conn`` per connection at a time.
One timer task calls :meth:`CallCore.tick` whenever
:meth:`CallCore.next_deadline` passes. With ``http_port`` set, the REST API
(:mod:`signaling_server.http_api`, with the groups of :mod:`signaling_server.group_api`) and
the browser client (:mod:`signaling_server.web`) listen on their own port. With ``tls`` set,
both listeners use TLS (:mod:`signaling_server.tls`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import SERVER as WEBSOCKETS_SERVER
from websockets.protocol import State

from callwire import protocol
from callwire.codes import CloseCode, ErrorCode
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.enums import CallResultType, CallRole
from callwire.usersig import verify_user_sig
from callwire.version import product_token
from signaling_server import profiles, web
from signaling_server.cluster import CONN_SHIFT, ClusterError, ClusterSettings
from signaling_server.cluster_role import ClusterRole
from signaling_server.core import (
    CallCore,
    Close,
    CoreConfig,
    LoadProfile,
    Notice,
    OfflinePush,
    Output,
    SaveCall,
    SaveProfile,
    Send,
    StoreRequest,
)
from signaling_server.group_api import GroupService, group_commands, load_groups
from signaling_server.groups import GroupDirectory
from signaling_server.http_api import Body, HttpApi, HttpApiConfig
from signaling_server.janus import SfuService
from signaling_server.push import PUSHES, push_commands, push_row
from signaling_server.records import OutboxRow, ProfileUpdate, StoredCall
from signaling_server.sfu import AllowTokens, CreateRoom, DestroyRoom
from signaling_server.spool import default_spool_path
from signaling_server.storage import open_store
from signaling_server.store import (
    CallStore,
    PendingWrite,
    RecordWriter,
    StoreBusy,
    StoreUnavailable,
)
from signaling_server.tls import ServerTls, TlsFiles
from signaling_server.webhooks import WebhookService, WebhookSettings

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_PORT",
    "NoticeSink",
    "ServerConfig",
    "SignalingServer",
]

logger = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8765

DEFAULT_DB_PATH: Final = os.path.join("data", "records.db")
"""Relative to the working directory (``data/`` is git-ignored); ``":memory:"`` keeps nothing."""

NoticeSink = Callable[[Notice], None]


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen, which sdkappid to serve, where to keep records, and resource bounds."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    """0 picks a free port; read it back from :attr:`SignalingServer.port`."""
    sdk_app_id: int = DEV_SDK_APP_ID
    secret_key: str = DEV_SECRET_KEY
    db: str = DEFAULT_DB_PATH
    """SQLite file of call records (its directory is created), or ``":memory:"``."""
    core: CoreConfig = field(default_factory=CoreConfig)
    max_size: int = 128 * 1024
    """Largest incoming message. Frames between the protocol's 64 KiB and this get the core's
    FRAME_TOO_LARGE reply and the connection stays; larger ones close it with 1009."""
    max_queue: int = 4
    """Incoming frames buffered per connection before websockets stops reading its socket.
    With ``max_size`` this bounds what one connection can make the server hold of its input:
    ``max_queue`` whole frames, one being assembled and one socket read (256 KiB), about
    (4 + 1) x 128 KiB + 256 KiB = 896 KiB (it was 9 MiB with 8 x 1 MiB)."""
    write_limit: int = 32 * 1024
    """High-water mark of each connection's transport write buffer, in bytes."""
    send_queue_limit: int = 1024 * 1024
    """Characters of outgoing frames queued for one connection before it is dropped."""
    send_timeout: float = 30.0
    """A single frame that cannot be written for this long drops the connection."""
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0
    """How long a closing handshake (and the shutdown's final frames) may take."""
    http_port: int | None = None
    """Port of the REST API on ``host`` (0 picks a free one); None serves no HTTP."""
    admin_identifier: str = "administrator"
    """The only account allowed to call the REST API."""
    rest_rate_per_s: float = 20.0
    """REST requests per second per sdkappid before error 70005."""
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    """Call-event webhook sender tunables (timeout, backoff, concurrency)."""
    tls: TlsFiles | None = None
    """Certificate and key for wss and https (reload with :meth:`SignalingServer.reload_tls`);
    None serves plain ws and http."""
    web_root: Path = web.DEFAULT_WEB_ROOT
    """The browser client's files, served on the HTTP port."""
    public_ws_url: str | None = None
    """The websocket URL browsers use when it is not this host's port (a reverse proxy)."""
    max_queries_per_conn: int = 4
    """Record queries (recent calls, deletions, user info) in flight per connection; more get
    error 4290 at once."""
    cluster: str | None = None
    """Redis URL of the cluster this node joins (``redis://host:port/db``); None: a single
    server. Needs a PostgreSQL ``db`` shared by the nodes (docs/cluster.md)."""
    node_name: str = ""
    """This node's name in logs and stats (default ``host:port``)."""
    cluster_settings: ClusterSettings = field(default_factory=ClusterSettings)
    """Lease, heartbeat and failover timings of cluster mode."""
    spool: str | None = None
    """With a PostgreSQL ``db``: the SQLite file where records wait while PostgreSQL is
    unreachable (docs/storage.md); None: ``data/spool-<hash of db>-<port>.db``."""


class _Gate:
    """The frames of one step, held until its records are committed (or the first attempt
    failed): :meth:`SignalingServer._persist` makes one, the writer's ``on_attempted`` opens
    it on the event loop, and every peer holding frames behind it sends them."""

    __slots__ = ("_waiter", "open", "peers")

    def __init__(self) -> None:
        self.open = False
        self.peers: list[_Pumped] = []
        self._waiter: asyncio.Future[None] | None = None

    def release(self) -> None:
        """Open the gate: the peers send what was held behind it."""
        self.open = True
        peers, self.peers = self.peers, []
        for peer in peers:
            peer.pump()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Return once the gate is open."""
        if self.open:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)


class _Pumped(Protocol):
    """Something holding frames behind a gate: pumped when it opens."""

    def pump(self) -> None: ...


class _GateJoin:
    """Opens ``joined`` once every gate it waits on is open (records and snapshots)."""

    __slots__ = ("gates", "joined")

    def __init__(self, joined: _Gate, gates: Sequence[_Gate]) -> None:
        self.joined = joined
        self.gates = gates
        for gate in gates:
            gate.peers.append(self)

    def pump(self) -> None:
        if all(gate.open for gate in self.gates):
            self.joined.release()


class _Peer:
    """One websocket: its bounded outgoing queue, drained by a writer task while non-empty.

    The writer task exists only while there is something to send, so an idle connection
    costs no task; while the peer reads promptly, frames skip the queue altogether. A
    :class:`_Gate` in the queue holds everything behind it until it opens (:meth:`pump`).
    """

    __slots__ = ("_close", "_queue", "_queued", "_server", "conn_id", "dropped", "writer", "ws")

    def __init__(self, server: SignalingServer, conn_id: int, ws: ServerConnection) -> None:
        self._server = server
        self.conn_id = conn_id
        self.ws = ws
        self._queue: collections.deque[str | _Gate] = collections.deque()
        self._queued = 0
        self._close: tuple[int, str] | None = None
        self.writer: asyncio.Task[None] | None = None
        self.dropped = False

    def send(self, text: str) -> None:
        """Send or queue a frame; overflowing the queue drops the connection."""
        self.send_many((text,))

    def send_many(self, texts: Sequence[str]) -> None:
        """Send or queue frames, in order; overflowing the queue drops the connection.

        With nothing queued, the connection open and the socket's write buffer under
        ``write_limit``, the frames are written at once, all in one socket write (framed by
        websockets' Sans-I/O protocol): no writer task, no await, one system call. Otherwise
        they wait in the queue (behind a gate, or for the writer task, which honours flow
        control).
        """
        if self._close is not None or self.dropped:
            return
        if self.writer is None and not self._queue and self._writable():
            self._write_now(texts)
            return
        for text in texts:
            self._queue.append(text)
            self._queued += len(text)
        if self._queued > self._server.config.send_queue_limit:
            self.drop("its outgoing queue overflowed (it does not read)")
            return
        self.pump()

    def gate(self, gate: _Gate) -> None:
        """Hold every frame sent from now on until ``gate`` opens, in order."""
        if self._close is not None or self.dropped or gate.open:
            return
        self._queue.append(gate)
        gate.peers.append(self)

    def close(self, code: int, reason: str) -> None:
        """Close after every frame queued so far has been sent."""
        if self._close is not None or self.dropped:
            return
        self._close = (code, reason)
        self.pump()

    def drop(self, why: str) -> None:
        """Abort the connection at once, discarding whatever is queued."""
        if self.dropped:
            return
        self.dropped = True
        logger.warning("connection %d dropped: %s", self.conn_id, why)
        self._queue.clear()
        self._queued = 0
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()
        self.ws.transport.abort()

    def pump(self) -> None:
        """Send what the queue allows: the frames up to the first gate still closed, at once
        while the socket takes them, else through the writer task; then the close."""
        queue = self._queue
        while not self.dropped and self.writer is None:
            while queue and isinstance(queue[0], _Gate) and queue[0].open:
                queue.popleft()
            if queue and isinstance(queue[0], _Gate):
                return  # waiting for a commit; the gate pumps again when it opens
            if queue and self._writable():
                texts: list[str] = []
                while queue and isinstance(text := queue[0], str):
                    queue.popleft()
                    self._queued -= len(text)
                    texts.append(text)
                self._write_now(texts)
                continue
            if queue or (self._close is not None and self.ws.protocol.state is State.OPEN):
                self.writer = asyncio.get_running_loop().create_task(
                    self._write(), name=f"signaling-writer-{self.conn_id}"
                )
                self._server._tasks.add(self.writer)
                self.writer.add_done_callback(self._server._tasks.discard)
            return

    def _writable(self) -> bool:
        ws = self.ws
        return (ws.protocol.state is State.OPEN
                and ws.transport.get_write_buffer_size() <= self._server.config.write_limit)

    def _write_now(self, texts: Sequence[str]) -> None:
        ws = self.ws
        try:
            for text in texts:
                ws.protocol.send_text(text.encode())
            ws.transport.write(b"".join(ws.protocol.data_to_send()))
        except Exception as exc:  # as websockets does when a write fails: abort
            self.drop(f"frames could not be written: {exc!r}")

    async def _write(self) -> None:
        timeout = self._server.config.send_timeout
        queue = self._queue
        try:
            while queue:
                item = queue[0]
                if isinstance(item, _Gate):
                    if not item.open:
                        return  # the gate pumps again when it opens
                    queue.popleft()
                    continue
                queue.popleft()
                self._queued -= len(item)
                async with asyncio.timeout(timeout):
                    await self.ws.send(item)
            if self._close is not None:
                await self.ws.close(*self._close)
        except ConnectionClosed:
            pass  # the connection handler sees the closing and tells the core
        except TimeoutError:
            self.drop(f"a frame could not be written within {timeout} s")
        finally:
            self.writer = None


class SignalingServer:
    """The signaling websocket server: ``await start()`` ... ``await stop()``, or ``async with``.

    Every webhook :class:`~signaling_server.core.Notice` goes to :attr:`webhooks` (which sends
    the enabled events to the configured callback URL) and then to ``notice_sink`` if given (on
    the event loop; it must not block).
    """

    def __init__(self, config: ServerConfig, notice_sink: NoticeSink | None = None) -> None:
        self.config = config
        self.notice_sink = notice_sink
        self.groups = GroupDirectory()
        """The groups (loaded at start, changed by the REST API), read by the core."""
        self.core = CallCore(config.sdk_app_id, self._verify_sig, config.core, self.groups)
        self._ws_server: Server | None = None
        self._writer: RecordWriter | None = None
        self._store: CallStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queries: collections.Counter[int] = collections.Counter()
        self._last_unit: PendingWrite | None = None
        self.webhooks: WebhookService | None = None
        """The call-event webhook service, once started."""
        self.pushes: WebhookService | None = None
        """The offline push service (the push channel of the outbox), once started."""
        self.http_api: HttpApi | None = None
        """The REST API and the browser client, once started with ``http_port`` set."""
        self.tls: ServerTls | None = None
        """The listeners' TLS context, once started with ``tls`` set."""
        self._peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._rearm = asyncio.Event()
        self._armed: float | None = None
        self._port: int | None = None
        self._started = False
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.sfu: SfuService | None = None
        """The Janus client carrying out the core's room outputs (with ``core.sfu`` set)."""
        self.cluster: ClusterRole | None = None
        """This node's part in a cluster (``config.cluster`` set), once started."""
        self._conn_base = 0

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        """The bound port (the real one when the config asked for 0)."""
        if self._port is None:
            raise RuntimeError("server is not started")
        return self._port

    @property
    def http_port(self) -> int:
        """The REST API's bound port; RuntimeError when it is not running."""
        if self.http_api is None:
            raise RuntimeError("the REST API is not running (ServerConfig.http_port is None)")
        return self.http_api.port

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS) of the listening socket."""
        return f"{'wss' if self.config.tls else 'ws'}://{self._host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://host:port/`` (``https://`` with TLS) of the REST API and browser client."""
        return f"{'https' if self.config.tls else 'http'}://{self._host}:{self.http_port}/"

    @property
    def _host(self) -> str:
        host = self.config.host
        return f"[{host}]" if ":" in host else host

    def reload_tls(self) -> None:
        """Load the certificate and key files again for new connections (SIGHUP).

        Raises :class:`~signaling_server.tls.TlsError` and keeps the current ones if they do
        not load; does nothing without TLS.
        """
        if self.tls is not None:
            self.tls.reload()

    @property
    def records(self) -> RecordWriter:
        """The record writer (counters in :meth:`RecordWriter.stats`); RuntimeError before
        :meth:`start`."""
        if self._writer is None:
            raise RuntimeError("server is not started")
        return self._writer

    @property
    def connection_count(self) -> int:
        """Open websocket connections."""
        return len(self._peers)

    async def start(self) -> None:
        """Open the record store (ending calls a crash left open) and bind the socket."""
        if self._started:
            raise RuntimeError("server already started")
        self._started = True
        if self.config.tls is not None:
            try:
                self.tls = ServerTls(self.config.tls)
            except BaseException:
                self._stopped.set()
                raise
        context = self.tls.context if self.tls is not None else None
        self._loop = asyncio.get_running_loop()
        spool = self.config.spool or default_spool_path(self.config.db, self.config.port)
        store = await asyncio.to_thread(open_store, self.config.db, spool=spool)
        self._store = store
        self._writer = RecordWriter(store, on_attempted=self._units_attempted)
        self.core.store_unavailable = self._writer.unavailable  # new calls refused (4506)
        try:
            cfg = self.config
            self.webhooks = WebhookService(
                store, cfg.sdk_app_id, cfg.webhooks, writer=self._writer
            )
            await self.webhooks.start()
            self.pushes = WebhookService(
                store, cfg.sdk_app_id, cfg.webhooks, writer=self._writer, channel=PUSHES
            )
            await self.pushes.start()
            if cfg.core.sfu:
                self.sfu = SfuService(
                    cfg.core.sfu,
                    room_ready=lambda c, e: self._core_step(
                        lambda: self.core.sfu_room_ready(c, e, time.time())),
                    room_failed=lambda c, e: self._core_step(
                        lambda: self.core.sfu_room_failed(c, e, time.time())),
                    instance_down=lambda i: self._core_step(
                        lambda: self.core.sfu_instance_down(i, time.time())),
                    instance_up=lambda i: self._core_step(
                        lambda: self.core.sfu_instance_up(i, time.time())),
                )
                await self.sfu.start()
            for group in await self._writer.run_read(load_groups, store, cfg.sdk_app_id):
                self.groups.put(group)
            if cfg.cluster:
                await self._join_cluster(cfg.cluster)
            else:
                await self._interrupt_open_calls(time.time())
            if cfg.http_port is not None:
                cluster = self.cluster
                groups = GroupService(
                    store, cfg.sdk_app_id, self.groups, writer=self._writer,
                    on_change=cluster.link.announce_groups if cluster is not None else None,
                )
                self.http_api = HttpApi(
                    HttpApiConfig(
                        cfg.sdk_app_id, cfg.secret_key, cfg.admin_identifier, cfg.rest_rate_per_s
                    ),
                    store,
                    self.webhooks,
                    writer=self._writer,
                    extra_commands={**group_commands(groups), **push_commands(self.pushes),
                                    "server/get_stats": self._rest_stats},
                )
                web.install(self.http_api.app, self._web_client())
                await self.http_api.start(cfg.host, cfg.http_port, ssl_context=context)
            # No permessage-deflate: its per-connection zlib state costs far more memory
            # (hundreds of KiB) than the small JSON frames would save; 10,000 idle
            # connections should cost at most about 20 KiB each.
            self._ws_server = await serve(
                self._handle,
                cfg.host,
                cfg.port,
                compression=None,
                max_size=cfg.max_size,
                max_queue=cfg.max_queue,
                write_limit=cfg.write_limit,
                ping_interval=cfg.ping_interval,
                ping_timeout=cfg.ping_timeout,
                close_timeout=cfg.close_timeout,
                server_header=f"{product_token('signaling-server')} {WEBSOCKETS_SERVER}",
                ssl=context,
                logger=logging.getLogger(f"{__name__}.ws"),
            )
        except BaseException:
            await self._close_services()
            self._stopped.set()
            raise
        self._port = int(self._ws_server.sockets[0].getsockname()[1])
        if self.cluster is not None and not self.config.node_name:
            self.cluster.link.name = f"{self.config.host}:{self._port}"
        self._timer = asyncio.get_running_loop().create_task(
            self._run_timer(), name="signaling-timer"
        )
        logger.info("listening on %s", self.url)

    async def stop(self) -> None:
        """End calls as interrupted, close every connection, flush and close the records.

        Idempotent; concurrent callers all wait for the same shutdown.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(
                self._stop(), name="signaling-stop"
            )
        await asyncio.shield(self._stop_task)

    async def serve_forever(self) -> None:
        """Start if needed and serve until :meth:`stop`; cancelling it stops the server."""
        if not self._started:
            await self.start()
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def __aenter__(self) -> SignalingServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    def _web_client(self) -> web.WebClient:
        cfg = self.config
        dev = web.dev_login_allowed(cfg.secret_key, cfg.host)
        return web.WebClient(
            cfg.sdk_app_id,
            lambda: self.port,
            secure=cfg.tls is not None,
            root=cfg.web_root,
            public_ws_url=cfg.public_ws_url,
            dev_secret_key=cfg.secret_key if dev else None,
            sfu_urls=tuple(cfg.core.sfu),
        )

    def _verify_sig(self, user_sig: str, user_id: str, now: float) -> float:
        cfg = self.config
        return verify_user_sig(user_sig, cfg.sdk_app_id, cfg.secret_key, user_id, now).expires_at

    async def _stop(self) -> None:
        self._stopping = True
        try:
            if self._ws_server is not None:
                self._ws_server.server.close()  # stop accepting; connections stay for now
                if self.cluster is not None:
                    # The calls go on: the other nodes (or the next one started) carry them.
                    for peer in list(self._peers.values()):
                        peer.close(CloseCode.SERVICE_RESTART,
                                   "node stopping; reconnect to another node")
                else:
                    self._execute(self.core.shutdown(time.time()))
                last = self._last_unit
                if last is not None:  # the shutdown's records first: its frames wait for them
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.config.close_timeout):
                            await last.token.wait()
                writers = [p.writer for p in self._peers.values() if p.writer is not None]
                if writers:
                    await asyncio.wait(writers, timeout=self.config.close_timeout)
                self._ws_server.close()
                await self._ws_server.wait_closed()
            for peer in list(self._peers.values()):
                peer.drop("server stopped")
            tasks = [t for t in self._tasks if not t.done()]
            if self._timer is not None:
                tasks.append(self._timer)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.cluster is not None:
                await self.cluster.close()
        finally:
            await self._close_services()
            self._stopped.set()
            logger.info("stopped")

    async def _close_services(self) -> None:
        """After signaling stopped: REST API, then the webhook outbox (flushed, so the final
        notices are on disk) and its sender, then the record writer and its store."""
        try:
            if self.sfu is not None:
                await self.sfu.close()  # after the shutdown's DestroyRoom outputs
            if self.http_api is not None:
                await self.http_api.stop()
            if self.webhooks is not None:
                await self.webhooks.close()
            if self.pushes is not None:
                await self.pushes.close()
        finally:
            if self._writer is not None:
                await self._writer.close()

    async def _handle(self, ws: ServerConnection) -> None:
        if self._stopping:
            await ws.close(1001, "server shutting down")
            return
        conn_id = self._conn_base + next(self._ids)
        peer = _Peer(self, conn_id, ws)
        self._peers[conn_id] = peer
        address = ws.remote_address
        client_ip = str(address[0]) if isinstance(address, tuple) and address else ""
        if logger.isEnabledFor(logging.DEBUG) and ws.request is not None:
            logger.debug("connection %d from %s (%s)", conn_id, client_ip,
                         ws.request.headers.get("User-Agent", "no User-Agent"))
        cluster = self.cluster
        if cluster is not None:
            cluster.open(conn_id, client_ip)
        else:
            self._execute(self.core.open(conn_id, time.time(), client_ip))
        try:
            async for message in ws:
                # Binary frames go to the core as they are; its parser refuses anything
                # that is not a JSON object (MALFORMED_FRAME).
                if cluster is not None:
                    cluster.frame(conn_id, message)
                else:
                    self._execute(self.core.receive(conn_id, message, time.time()))
        except ConnectionClosed:
            pass
        finally:
            self._peers.pop(conn_id, None)
            if peer.writer is not None:
                peer.writer.cancel()
            if cluster is not None:
                cluster.closed(conn_id)
            else:
                self._execute(self.core.closed(conn_id, time.time()))

    # ------------------------------------------------------------------ cluster mode

    async def _join_cluster(self, url: str) -> None:
        """Join the cluster on Redis at ``url``: take a node index (connection ids carry it)."""
        if not self.config.db.startswith(("postgresql://", "postgres://")):
            raise ClusterError(
                "--cluster needs the nodes to share their records: give --db a "
                "postgresql:// URL (see docs/cluster.md)")
        cfg = self.config
        role = ClusterRole(self, url, cfg.node_name or f"{cfg.host}:{cfg.port}",
                           cfg.cluster_settings)
        await role.start()
        self.cluster = role
        self._conn_base = role.link.index << CONN_SHIFT

    def _core_input(self, op: list[Any]) -> None:
        """One connection operation (local or forwarded by another node) into the core."""
        kind, conn = op[0], int(op[1])
        now = time.time()
        if kind == "f":
            self._execute(self.core.receive(conn, str(op[2]), now))
        elif kind == "o":
            self._execute(self.core.open(conn, now, str(op[2])))
        elif kind == "c":
            self._execute(self.core.closed(conn, now))
        elif kind == "b":
            self._execute(self.core.receive(conn, b"", now))

    def _core_step(self, step: Callable[[], list[Output]]) -> None:
        """Run a core input that is not a connection's (SFU, profiles) where it may run."""
        if self.cluster is not None and not self.cluster.leading:
            return
        self._execute(step())

    def _send_text(self, conn: int, text: str) -> None:
        """Send one frame to a connection of this node or, on the leader, of another."""
        peer = self._peers.get(conn)
        if peer is not None:
            peer.send(text)
        elif self.cluster is not None and (remote := self.cluster.remote(conn)):
            remote.put([conn, [text], None, ""])

    def _close_local(self, conn: int, code: int, reason: str) -> None:
        peer = self._peers.get(conn)
        if peer is not None:
            peer.close(code, reason)

    def _deliver_local(self, conn: int, texts: Sequence[str], code: int | None,
                       reason: str) -> None:
        """Frames (and a close) the leader routed to a connection of this node."""
        peer = self._peers.get(conn)
        if peer is None:
            return
        if texts:
            peer.send_many(texts)
        if code:
            peer.close(code, reason)

    def _new_core(self) -> CallCore:
        core = CallCore(self.config.sdk_app_id, self._verify_sig, self.config.core, self.groups)
        if self._writer is not None:
            core.store_unavailable = self._writer.unavailable  # new calls refused (4506)
        return core

    def _adopt_core(self, snapshots: list[dict[str, Any]]) -> None:
        """This node leads now: a fresh core with the calls of the snapshots (synchronous,
        so no input reaches the core before them)."""
        self.core = self._new_core()
        self._execute(self.core.restore_calls(snapshots, time.time()))
        self.core.take_changed_calls()
        self._rearm_timer()

    def _drop_core(self) -> None:
        """This node no longer leads: forget its calls (the new leader has them)."""
        self.core = self._new_core()
        self._rearm_timer()

    def _snapshot_all(self) -> None:
        """Store every call's snapshot again (after Redis lost them)."""
        cluster = self.cluster
        if cluster is None or not cluster.core_epoch:
            return
        self.core.take_changed_calls()
        cluster.link.snapshot(self.core.export_calls(), [], lambda: None, replace=True)

    async def _reload_groups(self, group_ids: list[str]) -> None:
        """Read groups another node changed back from the store."""
        writer, store = self._writer, self._store
        if writer is None or store is None or writer.closed:
            return
        try:
            groups = await writer.run_read(load_groups, store, self.config.sdk_app_id)
        except Exception:
            logger.exception("groups %s could not be reloaded", group_ids)
            return
        found = {g.group_id: g for g in groups}
        for group_id in group_ids:
            group = found.get(group_id)
            if group is None:
                self.groups.remove(group_id)
            else:
                self.groups.put(group)

    def _rearm_timer(self) -> None:
        self._rearm.set()

    def _execute(self, outputs: list[Output]) -> None:
        """Carry out the core's outputs in order, then re-arm the timer if needed.

        The durable outputs go to the writer as one unit first; every frame of this step
        waits behind that unit's commit (:meth:`_Peer.gate`, so later frames to the same
        connection stay behind it too). The frames for one connection are gathered and handed
        over together (one socket write), before that connection's Close if there is one; the
        order of the frames on each connection is the core's.
        """
        unit = self._persist(outputs)
        gate: _Gate | None = unit.token if unit is not None else None
        cluster = self.cluster
        if cluster is not None and cluster.leading:
            changed, ended = self.core.take_changed_calls()
            if changed or ended:
                stored = _Gate()
                cluster.link.snapshot(changed, ended, stored.release)
                if gate is None:
                    gate = stored
                else:
                    gate = _Gate()
                    _GateJoin(gate, (unit.token, stored))  # type: ignore[union-attr]
        frames: dict[int, list[str]] = {}
        for out in outputs:
            if isinstance(out, Send):
                pending = frames.get(out.conn)
                if pending is None:
                    frames[out.conn] = [out.text]
                else:
                    pending.append(out.text)
            elif isinstance(out, Close):
                peer = self._peers.get(out.conn)
                pending = frames.pop(out.conn, None)
                if peer is not None:
                    if gate is not None:
                        peer.gate(gate)
                    if pending:
                        peer.send_many(pending)
                    peer.close(out.code, out.reason)
                elif cluster is not None and (remote := cluster.remote(out.conn)):
                    if gate is not None:
                        remote.gate(out.conn, gate)
                    remote.put([out.conn, pending or [], int(out.code), out.reason])
            elif isinstance(out, StoreRequest):
                self._store_request(out)
            elif isinstance(out, Notice):
                self._deliver_notice(out)
            elif isinstance(out, LoadProfile):
                self._spawn(self._load_profile(out), f"signaling-profile-{out.user_id}")
            elif isinstance(out, CreateRoom | AllowTokens | DestroyRoom) and self.sfu:
                self.sfu.execute(out)
        for conn, texts in frames.items():
            peer = self._peers.get(conn)
            if peer is not None:
                if gate is not None:
                    peer.gate(gate)
                peer.send_many(texts)
            elif cluster is not None and (remote := cluster.remote(conn)):
                if gate is not None:
                    remote.gate(conn, gate)
                remote.put([conn, texts, None, ""])
        if self.core.next_deadline() != self._armed:
            self._rearm.set()

    def _persist(self, outputs: Sequence[Output]) -> PendingWrite | None:
        """Submit the step's records, outbox rows and profile changes as one unit, its
        :class:`_Gate` as the token; None if there is nothing to store."""
        calls: list[StoredCall] = []
        rows: list[tuple[WebhookService, OutboxRow]] = []
        changes: list[ProfileUpdate] = []
        for out in outputs:
            if isinstance(out, SaveCall):
                calls.append(out.call)
            elif isinstance(out, Notice):
                if self.webhooks is not None and (row := self.webhooks.notice_row(out)):
                    rows.append((self.webhooks, row))
            elif isinstance(out, OfflinePush):
                if self.pushes is not None and (row := push_row(self.pushes, out)):
                    rows.append((self.pushes, row))
            elif isinstance(out, SaveProfile):
                changes.append(ProfileUpdate(
                    out.sdk_app_id, out.user_id, out.nickname, out.avatar, time.time()
                ))
        if not calls and not rows and not changes:
            return None
        writer = self._writer
        if writer is None or writer.closed:
            logger.error("calls %s and %d outbox row(s) not stored: the record writer is "
                         "closed", [c.call_id for c in calls], len(rows))
            return None
        unit = writer.submit_unit(calls, [row for _, row in rows], changes, token=_Gate())
        if rows:
            unit.committed.add_done_callback(functools.partial(self._outbox_committed, rows))
        self._last_unit = unit
        return unit

    def _units_attempted(self, units: list[PendingWrite]) -> None:
        """On the writer thread, once per batch: open the batch's gates on the loop."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._open_gates, [u.token for u in units])

    @staticmethod
    def _open_gates(gates: list[_Gate | None]) -> None:
        for gate in gates:
            if gate is not None:
                gate.release()

    def _outbox_committed(
        self,
        rows: list[tuple[WebhookService, OutboxRow]],
        committed: concurrent.futures.Future[list[int]],
    ) -> None:
        """On the writer thread: hand the committed rows to their services, on the loop."""
        if committed.exception() is not None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the next run sends them
            self._loop.call_soon_threadsafe(self._adopt, rows, committed.result())

    @staticmethod
    def _adopt(rows: list[tuple[WebhookService, OutboxRow]], ids: list[int]) -> None:
        for (service, row), row_id in zip(rows, ids, strict=True):
            service.adopt(row, row_id)

    async def _interrupt_open_calls(self, now: float, keep: set[str] | None = None) -> None:
        """End the calls the last run left open (it died without a stop) as ``interrupt``,
        with their ``call_interrupted`` notices in the same transaction; ``keep``: calls
        that go on (adopted by a new cluster leader).

        The record does not say who was still connected when it died; the caller and every
        invitee who had answered were in the call.
        """
        assert self._writer is not None and self._store is not None
        calls = await self._writer.run_read(self._store.open_calls)
        if keep:
            calls = [call for call in calls if call.call_id not in keep]
        if not calls:
            return
        outputs: list[Output] = []
        for call in calls:
            call.result, call.end_ts = "interrupt", now
            outputs.append(SaveCall(call))
            for user_id, outcome in call.participants.items():
                caller = outcome.role == CallRole.CALLER
                if caller or outcome.result_type == CallResultType.INCOMING:
                    outputs.append(Notice(
                        "call_interrupted", user_id, "caller" if caller else "called", call,
                        now, client_ip="", platform="",
                    ))
        unit = self._persist(outputs)
        for out in outputs:
            if isinstance(out, Notice):
                self._deliver_notice(out)
        if unit is not None:
            await unit.token.wait()
        if unit is not None and not unit.attempted.result():
            logger.error("the %d call(s) left open by the last run are not marked interrupted "
                         "yet: the record store is failing (retrying)", len(calls))
        logger.info("%d call(s) left open by the last run interrupted", len(calls))

    def _deliver_notice(self, notice: Notice) -> None:
        """Give a notice to ``notice_sink`` (the webhook's row is stored by :meth:`_persist`)."""
        if self.notice_sink is None:
            return
        try:
            self.notice_sink(notice)
        except Exception:
            logger.exception("notice sink failed on %s for %s", notice.event, notice.user_id)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _store_request(self, req: StoreRequest) -> None:
        """Run a record query unless the connection has too many in flight (4290 then)."""
        if self._queries[req.conn] >= self.config.max_queries_per_conn:
            self._reply_busy(req, f"{self.config.max_queries_per_conn} record queries are in "
                             "flight on this connection; wait for their replies, then retry")
            return
        self._queries[req.conn] += 1
        self._spawn(self._run_store_request(req), f"signaling-store-{req.conn}")

    def _reply_busy(self, req: StoreRequest, message: str) -> None:
        self._send_text(req.conn, protocol.encode_reply_error(
            req.request_id, ErrorCode.SERVER_BUSY, f"{req.op}: {message}"
        ))

    async def _run_store_request(self, req: StoreRequest) -> None:
        writer, store = self._writer, self._store
        assert writer is not None and store is not None
        params = req.params
        try:
            if req.op == "recent_calls":
                records = await writer.run_read(
                    store.recent_calls,
                    req.sdk_app_id,
                    req.user_id,
                    params.get("begin"),
                    params.get("end"),
                    params.get("resultType"),
                    params.get("limit", 100),
                )
                text = protocol.encode_reply_ok(req.request_id, {"records": records})
            elif req.op == "delete_calls":
                deleted = await writer.run_query(
                    store.delete_calls, req.sdk_app_id, req.user_id, list(params["callIds"])
                )
                text = protocol.encode_reply_ok(req.request_id, {"deleted": deleted})
            elif req.op == "user_info":
                users = await writer.run_read(
                    profiles.user_info_reply, store, req.sdk_app_id, params["userIDList"],
                    params["known"],
                )
                text = protocol.encode_reply_ok(req.request_id, users)
            else:
                raise ValueError(f"unknown store operation {req.op!r}")
        except asyncio.CancelledError:
            raise
        except StoreBusy:
            self._reply_busy(req, "the record store is busy; retry in a moment")
            return
        except StoreUnavailable as exc:
            text = protocol.encode_reply_error(
                req.request_id, ErrorCode.STORE_UNAVAILABLE, f"{req.op}: {exc}"
            )
        except Exception:
            logger.exception("record query %s for %s failed", req.op, req.user_id)
            text = protocol.encode_reply_error(
                req.request_id, ErrorCode.INTERNAL, f"{req.op}: the record store failed"
            )
        finally:
            self._queries[req.conn] -= 1
            if self._queries[req.conn] <= 0:
                del self._queries[req.conn]
        self._send_text(req.conn, text)

    async def _load_profile(self, out: LoadProfile) -> None:
        """Load a stored profile and hand it to the core."""
        writer, store = self._writer, self._store
        if writer is None or writer.closed or store is None:
            return
        try:
            found = await writer.run_read(
                profiles.load_profiles, store, out.sdk_app_id, [out.user_id]
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("profile of %s could not be loaded", out.user_id)
            return
        nickname, avatar = found.get(out.user_id, ("", ""))
        self._core_step(lambda: self.core.profile_loaded(out.user_id, nickname, avatar,
                                                         time.time()))

    async def _rest_stats(self, data: dict[str, Any]) -> dict[str, Any]:
        """REST ``server/get_stats``: the record writer's counters, webhooks pending."""
        Body(data, ())
        writer = self._writer
        return {
            "store": writer.stats().to_wire() if writer is not None else {},
            "webhooksPending": self.webhooks.pending if self.webhooks is not None else 0,
            "pushesPending": self.pushes.pending if self.pushes is not None else 0,
            "connections": self.connection_count,
            **({"cluster": self.cluster.info()} if self.cluster is not None else {}),
        }

    async def _run_timer(self) -> None:
        """Sleep until the core's next deadline (re-armed by :meth:`_execute`), then tick."""
        while True:
            deadline = self.core.next_deadline()
            self._armed = deadline
            self._rearm.clear()
            if deadline is None:
                await self._rearm.wait()
                continue
            delay = deadline - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._rearm.wait()
                        continue
            if self.cluster is not None and not self.cluster.leading:
                await self._rearm.wait()  # frozen (or no longer leading): no state changes
                continue
            try:
                outputs = self.core.tick(time.time())
            except Exception:  # a core bug must not stop every later timeout
                logger.exception("call core tick failed")
                continue
            self._execute(outputs)
