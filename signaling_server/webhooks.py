"""Call-event webhooks: a durable outbox in the records database and an ordered HTTP sender.

:meth:`WebhookService.notice_sink` takes the core's :class:`~signaling_server.core.Notice`
outputs on the event loop and returns at once: the notice is mapped to the reference's query
and body (see ``docs/webhooks.md``) and appended to an in-memory batch. One database task
writes batches into ``webhook_outbox`` (off the loop, in a thread); only persisted rows are
sent. The sender POSTs each row to the configured URL with a total timeout (3 s), retries with
capped exponential backoff, and never sends a call's next event before the previous one was
delivered; different calls proceed in parallel, at most ``max_concurrency`` requests at a time.
Undelivered rows of a previous run are loaded and sent by :meth:`WebhookService.start`.

Delivery is at least once: a row is marked delivered after the receiver answered 2xx, so a
crash between the two (or a receiver that processes a request but answers after the timeout)
sends it again. Each request carries the row id in the ``X-Callback-Seq`` header for
de-duplication.

On a store that several server processes share (PostgreSQL: ``CallStore.shared``), rows are
stored free and each process claims whole calls' pending rows with a lease
(``lease_owner``/``lease_until``, taken under a per-call advisory lock with ``FOR UPDATE
SKIP LOCKED``): a call's rows are claimed only while no other live process holds any of them,
so each row is sent by one process, in order per call. A process renews its leases and claims
free rows (its own new ones, and those of a process that died once their lease expired) every
:attr:`WebhookSettings.claim_interval_s`, re-reading the configuration at the same time, and
frees its leases at :meth:`WebhookService.close`.

The same machinery carries more than one kind of outbox row: a :class:`Channel` names the
rows' ``kind`` and the table of the endpoint's configuration. :data:`CALLBACKS` are the
call-event webhooks; :mod:`signaling_server.push` runs a second service on the
``push`` channel for offline call pushes, with its own endpoint, order and retries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

import aiohttp
from yarl import URL

from signaling_server.core import Notice
from signaling_server.records import OutboxRow, StoredCall, users_in_call
from signaling_server.store import CallStore, RecordWriter, StoreUnavailable

__all__ = [
    "CALLBACKS",
    "EVENTS",
    "ROLES",
    "CallbackConfig",
    "CallbackConfigError",
    "Channel",
    "WebhookService",
    "WebhookSettings",
    "callback_request",
    "forbidden_target",
    "normalize_events",
    "validate_url",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

EVENTS: Final[tuple[str, ...]] = (
    "start_call",
    "call_accepted",
    "call_missed",
    "call_rejected",
    "call_busy",
    "cancel_call",
    "call_failed",
    "call_end",
    "call_interrupted",
    "receive_call",
    "accept_call",
    "not_answer_call",
    "reject_call",
    "ignore_call",
    "call_canceled",
    "invite_user",
    "join_in_group_call",
)
"""The reference's call events; a callback configuration enables a subset of them."""

ROLES: Final[tuple[str, ...]] = ("caller", "callee")
"""Values of the body's ``Role`` and prefixes of the ``command`` query parameter."""

_COMMANDS: Final = frozenset(f"{role}_{event}" for role in ROLES for event in EVENTS)
_MEDIA: Final = {1: "audio", 2: "video"}
_SINGLE_CALL: Final = 2  # CallScene.SINGLE_CALL; GROUP_CALL (0) and MULTI_CALL (1) are groups
_MAX_URL_CHARS: Final = 2048
_PRUNE_EVERY_S: Final = 3600.0
_MAX_RESPONSE_BYTES: Final = 64 * 1024
"""Of a receiver's response body, read and thrown away; the rest is never read."""


class CallbackConfigError(ValueError):
    """A callback configuration request that cannot be done (REST error 70001)."""


@dataclass(frozen=True)
class Channel:
    """One kind of outbox row: its ``kind`` column and where its endpoint is configured."""

    kind: str
    config_table: str
    filtered: bool
    """Whether the configuration's ``events`` select which rows are stored (callbacks)."""


CALLBACKS: Final = Channel("callback", "callback_config", filtered=True)
"""The call-event webhooks."""


@dataclass(frozen=True)
class CallbackConfig:
    """Where call events go and which ones; ``events`` holds event or command names."""

    url: str
    events: tuple[str, ...]
    created_ts: float
    updated_ts: float

    def enables(self, command: str, event: str) -> bool:
        """Whether a callback of ``event`` (as ``command``, e.g. callee_call_end) is sent."""
        return event in self.events or command in self.events

    def to_wire(self) -> dict[str, Any]:
        """The REST API's data object."""
        return {
            "url": self.url,
            "events": list(self.events),
            "createdTs": int(self.created_ts),
            "updatedTs": int(self.updated_ts),
        }


@dataclass(frozen=True)
class WebhookSettings:
    """Tunables of the sender."""

    timeout_s: float = 3.0
    """Total time allowed for one POST, connection included."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    """Retry delays double from the initial one up to this cap (with up to 20 % jitter)."""
    max_concurrency: int = 16
    """Requests in flight at once, over all calls."""
    close_grace_s: float = 1.0
    """How long :meth:`WebhookService.close` lets requests in flight finish (callbacks waiting
    for a retry are left for the next run at once)."""
    retention_s: float = 7 * 86400.0
    """Delivered and discarded rows older than this are deleted from the outbox."""
    max_attempts: int = 3000
    max_age_s: float = 86400.0
    """A row not delivered after this many attempts, or this long after it was stored, is
    marked ``discarded`` (logged, counted in :meth:`WebhookService.delivery_stats`). With the
    30 s backoff cap, 3,000 attempts are about a day: the age is what usually ends it."""
    max_loaded: int = 2000
    """Pending rows held in memory (and per-call sender tasks) at most; the rest wait in the
    outbox table and are read in pages of this size as the loaded ones finish."""
    lease_s: float = 30.0
    claim_interval_s: float = 2.0
    """Shared store only: how long a claim of a call's rows lasts unless renewed, and how often
    leases are renewed, free rows claimed and the configuration re-read."""
    allow_private_targets: bool = False
    """Whether endpoints may be on loopback, private, link-local or other non-public addresses
    (``--webhook-allow-private``). Off, such URLs are refused when configured and every
    connection is checked again at the socket (a name that later resolves to one fails)."""


def validate_url(url: Any) -> str:
    """``url`` if it is an absolute http(s) URL, else CallbackConfigError."""
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        raise CallbackConfigError(f"url must be a string of 1..{_MAX_URL_CHARS} characters")
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise CallbackConfigError(f"url {url!r:.100} is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CallbackConfigError(f"url {url!r:.100} must be an absolute http:// or https:// URL")
    return url


def forbidden_target(address: str) -> str | None:
    """Why an endpoint at IP ``address`` is refused without ``allow_private_targets``
    (``"loopback"``, ``"private"``, ...), or None for a public address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                       ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                       ("private", ip.is_private)):
        if flag:
            return kind
    return None if ip.is_global else "reserved"


async def _check_target(url: str) -> None:
    """Refuse ``url`` when its host is, or resolves to, a non-public address.

    A name that does not resolve now is accepted: each delivery checks the address it
    connects to (:func:`_public_socket`), which also defeats a name re-pointed later.
    """
    host = URL(url).host
    assert host is not None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host.strip("[]"), None, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        logger.warning("webhook host %s does not resolve now (%s); checked at each delivery",
                       host, exc)
        return
    for info in infos:
        address = str(info[4][0])
        reason = forbidden_target(address)
        if reason is not None:
            raise CallbackConfigError(
                f"url {url!r:.100} points to a {reason} address ({address}); callbacks go to "
                "public addresses unless the server runs with --webhook-allow-private"
            )


def _public_socket(addr_info: Any) -> socket.socket:
    """aiohttp's socket factory: a socket only for a public address (no SSRF into the
    server's own network, whatever a name resolves to at the time)."""
    family, kind, proto, _, sockaddr = addr_info
    reason = forbidden_target(str(sockaddr[0]))
    if reason is not None:
        raise OSError(errno.EACCES, f"{sockaddr[0]} is a {reason} address; webhooks go to "
                      "public addresses (--webhook-allow-private allows others)")
    return socket.socket(family=family, type=kind, proto=proto)


def normalize_events(events: Any) -> tuple[str, ...]:
    """Known event names (both roles) or commands (``caller_call_end``), deduplicated.

    None means every event.
    """
    if events is None:
        return EVENTS
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise CallbackConfigError("events must be a list of event names")
    unknown = [e for e in events if e not in EVENTS and e not in _COMMANDS]
    if unknown:
        raise CallbackConfigError(
            f"unknown event(s) {', '.join(map(repr, unknown[:5]))}; known: {', '.join(EVENTS)}"
            " (or a command such as caller_call_end)"
        )
    return tuple(dict.fromkeys(events))


def _ts(value: float | None) -> int:
    return 0 if value is None else int(value)


def _call_result(call: StoredCall) -> str:
    # "CallResult field shows all types only for one-on-one calls, group chat only has
    # normal_end" (the reference): a finished group call is normal_end whatever happened.
    if call.result and call.scene != _SINGLE_CALL:
        return "normal_end"
    return call.result


def callback_request(notice: Notice) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``(command, query, body)`` of the callback for a core notice; see docs/webhooks.md."""
    call: StoredCall = notice.call
    role = "caller" if notice.role == "caller" else "callee"
    command = f"{role}_{notice.event}"
    query = {
        "sdkappid": str(call.sdk_app_id),
        "command": command,
        "contenttype": "json",
        "clientip": notice.client_ip,
        "optplatform": notice.platform,
    }
    body = {
        "UserId": notice.user_id,
        "RoomId": str(call.room_id),
        "TotalNum": users_in_call(call),
        "MediaType": _MEDIA.get(call.media_type, "audio"),
        "CallType": "single" if call.scene == _SINGLE_CALL else "group",
        "CallId": call.call_id,
        "Role": role,
        "Event": notice.event,
        "CallResult": _call_result(call),
        "EventTime": int(notice.event_time),
        "StartCallTs": _ts(call.start_ts),
        "AcceptTs": _ts(call.accept_ts),
        "EndTs": _ts(call.end_ts),
    }
    return command, query, body


# ---------------------------------------------------------------------- rows and SQL


@dataclass
class _Row:
    id: int
    sdk_app_id: int
    call_id: str
    command: str
    query: dict[str, str]
    body: bytes
    attempts: int
    next_attempt_at: float
    expires_at: float | None = None
    """A row still undelivered then is discarded (an offline push for a call that no longer
    rings); None: never."""
    created_at: float = 0.0


@dataclass
class _Batch:
    inserts: list[OutboxRow] = field(default_factory=list)
    done: list[tuple[str, float, int, str, int]] = field(default_factory=list)
    retries: list[tuple[int, float, str, int]] = field(default_factory=list)
    prune_before: float | None = None

    def __bool__(self) -> bool:
        return bool(self.inserts or self.done or self.retries or self.prune_before is not None)


def _write_batch(store: CallStore, batch: _Batch) -> list[_Row]:
    rows: list[_Row] = []
    with store.transaction() as conn:
        for new in batch.inserts:
            row_id = int(conn.execute(
                "INSERT INTO webhook_outbox (sdk_app_id, call_id, command, query, body, "
                "created_at, next_attempt_at, kind, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (new.sdk_app_id, new.call_id, new.command, new.query, new.body,
                 new.created_at, new.created_at, new.kind, new.expires_at),
            ).fetchone()[0])
            rows.append(
                _Row(row_id, new.sdk_app_id, new.call_id, new.command,
                     json.loads(new.query), new.body.encode("utf-8"), 0, new.created_at,
                     new.expires_at, new.created_at)
            )
        conn.executemany(
            "UPDATE webhook_outbox SET outcome = ?, done_at = ?, attempts = ?, last_error = ? "
            "WHERE id = ?",
            batch.done,
        )
        conn.executemany(
            "UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? "
            "WHERE id = ? AND outcome = ''",
            batch.retries,
        )
        if batch.prune_before is not None:
            conn.execute(
                "DELETE FROM webhook_outbox WHERE outcome <> '' AND done_at < ?",
                (batch.prune_before,),
            )
    return rows


def _config_from_row(row: Any) -> CallbackConfig | None:
    if row is None:
        return None
    return CallbackConfig(
        row["url"], tuple(json.loads(row["events"])), row["created_ts"], row["updated_ts"]
    )


def _row_of(r: Any) -> _Row:
    return _Row(r["id"], r["sdk_app_id"], r["call_id"], r["command"], json.loads(r["query"]),
                r["body"].encode("utf-8"), r["attempts"], r["next_attempt_at"],
                r["expires_at"], r["created_at"])


def _load_page(store: CallStore, kind: str, after_id: int, limit: int) -> list[_Row]:
    """Up to ``limit`` undelivered rows of ``kind`` with an id above ``after_id``, by id."""
    with store.locked() as conn:
        return [
            _row_of(r)
            for r in conn.execute(
                "SELECT * FROM webhook_outbox WHERE outcome = '' AND kind = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (kind, after_id, limit),
            ).fetchall()
        ]


_DB_NOW: Final = "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"


def _claim_page(
    store: CallStore, kind: str, owner: str, limit: int, lease_s: float
) -> tuple[list[_Row], bool]:
    """Shared store: lease to ``owner`` the pending rows of calls that have free rows (never
    leased, or their lease expired) and no row leased to another live process; about
    ``limit`` rows, by call in the order of their first row, each call's rows by id. Also
    whether more calls may wait. Lease times are the database server's clock, one clock for
    every process whatever their machines' clocks say."""
    rows: list[_Row] = []
    with store.transaction() as conn:
        now = float(conn.execute(_DB_NOW).fetchone()[0])
        calls = conn.execute(
            "SELECT sdk_app_id, call_id, MIN(id) AS first_id FROM webhook_outbox "
            "WHERE outcome = '' AND kind = ? AND (lease_owner = '' OR lease_until < ?) "
            "GROUP BY sdk_app_id, call_id ORDER BY first_id LIMIT ?",
            (kind, now, limit),
        ).fetchall()
        for call in calls:
            if len(rows) >= limit:
                return rows, True
            app, call_id = call["sdk_app_id"], call["call_id"]
            # One claimer per call at a time (try: never waits, so never deadlocks); its
            # rows locked by another transaction are skipped, not waited for.
            if not conn.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(?, 0))",
                                (f"webhook_outbox:{kind}:{app}:{call_id}",)).fetchone()[0]:
                continue
            if conn.execute(
                "SELECT 1 FROM webhook_outbox WHERE sdk_app_id = ? AND call_id = ? AND kind = ? "
                "AND outcome = '' AND lease_owner NOT IN ('', ?) AND lease_until >= ? LIMIT 1",
                (app, call_id, kind, owner, now),
            ).fetchone() is not None:
                continue  # another process sends this call's rows: they stay in its order
            claimed = conn.execute(
                "UPDATE webhook_outbox SET lease_owner = ?, lease_until = ? WHERE id IN ("
                "SELECT id FROM webhook_outbox WHERE sdk_app_id = ? AND call_id = ? AND kind = ? "
                "AND outcome = '' ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING *",
                (owner, now + lease_s, app, call_id, kind),
            ).fetchall()
            rows += sorted((_row_of(r) for r in claimed), key=lambda r: r.id)
    return rows, len(calls) >= limit


def _renew_leases(store: CallStore, kind: str, owner: str, lease_s: float) -> None:
    with store.transaction() as conn:
        conn.execute(
            f"UPDATE webhook_outbox SET lease_until = ({_DB_NOW}) + ? WHERE lease_owner = ? "
            "AND kind = ? AND outcome = ''",
            (lease_s, owner, kind),
        )


def _release_leases(store: CallStore, kind: str, owner: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            "UPDATE webhook_outbox SET lease_owner = '', lease_until = 0 WHERE lease_owner = ? "
            "AND kind = ? AND outcome = ''",
            (owner, kind),
        )


def _stats(store: CallStore, kind: str) -> dict[str, Any]:
    with store.locked() as conn:
        counts = dict(conn.execute(
            "SELECT outcome, COUNT(*) FROM webhook_outbox WHERE kind = ? "
            "AND outcome IN ('', 'discarded') GROUP BY outcome", (kind,)
        ).fetchall())
        last = conn.execute(
            "SELECT call_id, command, attempts, last_error, done_at FROM webhook_outbox "
            "WHERE kind = ? AND outcome = 'discarded' ORDER BY done_at DESC, id DESC LIMIT 1",
            (kind,),
        ).fetchone()
    return {
        "pending": int(counts.get("", 0)),
        "discarded": int(counts.get("discarded", 0)),
        "lastDiscarded": {} if last is None else {
            "callId": last["call_id"], "command": last["command"],
            "attempts": last["attempts"], "error": last["last_error"],
            "discardedTs": int(last["done_at"] or 0),
        },
    }


def _save_config(
    store: CallStore, sdk_app_id: int, op: str, url: str | None, events: tuple[str, ...] | None,
    now: float, table: str = CALLBACKS.config_table,
) -> CallbackConfig | None:
    """Create, update or delete the configuration in one transaction; the result."""
    with store.transaction() as conn:
        current = _config_from_row(
            conn.execute(f"SELECT * FROM {table} WHERE sdk_app_id = ?", (sdk_app_id,)).fetchone()
        )
        if op == "delete":
            conn.execute(f"DELETE FROM {table} WHERE sdk_app_id = ?", (sdk_app_id,))
            return current
        if op == "create":
            if current is not None:
                raise CallbackConfigError(
                    "a callback configuration already exists; use update_config or delete_config"
                )
            assert url is not None and events is not None
            config = CallbackConfig(url, events, now, now)
        else:
            if current is None:
                raise CallbackConfigError("no callback configuration exists; use create_config")
            config = CallbackConfig(
                url if url is not None else current.url,
                events if events is not None else current.events,
                current.created_ts,
                now,
            )
        conn.execute(
            f"INSERT INTO {table} (sdk_app_id, url, events, created_ts, updated_ts) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sdk_app_id) DO UPDATE SET url = excluded.url, "
            "events = excluded.events, updated_ts = excluded.updated_ts",
            (sdk_app_id, config.url, json.dumps(list(config.events)), config.created_ts,
             config.updated_ts),
        )
        return config


# ---------------------------------------------------------------------- the service


class WebhookService:
    """The outbox, the callback configuration and the sender of one sdkappid.

    Database work runs on ``writer``'s thread when given (ordered after call records), else in
    ``asyncio.to_thread``; either way under the store's lock, never on the event loop. Close
    this service before the writer or the store.
    """

    def __init__(
        self,
        store: CallStore,
        sdk_app_id: int,
        settings: WebhookSettings | None = None,
        *,
        writer: RecordWriter | None = None,
        channel: Channel = CALLBACKS,
    ) -> None:
        self.store = store
        self.sdk_app_id = sdk_app_id
        self.channel = channel
        self.settings = settings or WebhookSettings()
        if self.settings.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.settings.max_loaded < 1 or self.settings.max_attempts < 1:
            raise ValueError("max_loaded and max_attempts must be at least 1")
        self._writer = writer
        self._shared = bool(getattr(store, "shared", False))
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._held: set[int] = set()  # ids of rows in memory or whose outcome is not written
        self.delivered = 0  # rows delivered by this process
        self.failed_attempts = 0  # POSTs that failed and will be retried
        self.skipped = 0  # notices not enqueued: no configuration or event disabled
        self.discarded = 0  # rows given up by this process (see WebhookSettings.max_attempts)
        # Paging: every pending row with an id up to _loaded_through is in memory (queued or
        # being sent); while _backlog, rows above it wait in the table for _db_loop to read.
        self._loaded = 0
        self._loaded_through = 0
        self._backlog = True
        self._config: CallbackConfig | None = None
        self._config_loaded = False
        self._started = False
        self._closing: asyncio.Future[None] | None = None
        self._batch = _Batch()
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._db_wake = asyncio.Event()
        self._db_task: asyncio.Task[None] | None = None
        self._queues: dict[tuple[int, str], collections.deque[_Row]] = {}
        self._workers: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._kick = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._last_prune = 0.0
        self._sending = True  # False once close cancelled the workers
        self._draining = False  # closing: no new attempt starts

    # ------------------------------------------------------------------ lifecycle

    @property
    def config(self) -> CallbackConfig | None:
        """The callback configuration as last loaded or changed (None: nothing is sent)."""
        return self._config

    @property
    def pending(self) -> int:
        """Rows in memory not delivered yet, plus notices not persisted yet (rows still in the
        table beyond :attr:`WebhookSettings.max_loaded` are not counted)."""
        return sum(len(q) for q in self._queues.values()) + len(self._batch.inserts)

    @property
    def loaded(self) -> int:
        """Pending rows held in memory (at most :attr:`WebhookSettings.max_loaded`)."""
        return self._loaded

    async def delivery_stats(self) -> dict[str, Any]:
        """``{"pending", "discarded", "lastDiscarded"}`` from the outbox table (discarded rows
        are kept for :attr:`WebhookSettings.retention_s`); shown by the configuration API."""
        await self.flush()
        return await self._run_db(_stats, self.store, self.channel.kind)

    async def start(self) -> None:
        """Load the configuration and undelivered rows of a previous run; start sending."""
        if self._started:
            return
        if self._closing is not None:
            raise RuntimeError("webhook service is closed")
        self._started = True
        self._config = await self._run_db(
            _load_config_only, self.store, self.sdk_app_id, self.channel.config_table
        )
        self._config_loaded = True
        early, self._batch.inserts = self._batch.inserts, []
        for new in early:  # notices that arrived before start: filter them now
            if self._enabled(new.command, _event_of(new.command)):
                self._batch.inserts.append(new)
            else:
                self.skipped += 1
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
            connector=aiohttp.TCPConnector(
                limit=self.settings.max_concurrency,
                socket_factory=None if self.settings.allow_private_targets else _public_socket,
            ),
            headers={"User-Agent": "signaling-server-webhooks/1"},
        )
        # Rows of a previous run are read by the outbox task, a page at a time.
        self._db_task = asyncio.create_task(self._db_loop(), name="webhook-outbox")
        self._db_wake.set()

    def notice_sink(self, notice: Notice) -> None:
        """Queue the callback of a core notice when its event is enabled; never blocks."""
        command, query, body = callback_request(notice)
        self.enqueue(notice.call.sdk_app_id, notice.call.call_id, command, notice.event,
                     query, body)

    def notice_row(self, notice: Notice) -> OutboxRow | None:
        """The outbox row of a core notice's callback, or None when it is not sent.

        For a caller that stores the row itself, in the transaction of the record it belongs
        to (:meth:`RecordWriter.submit_unit`), then hands it back with :meth:`adopt`.
        """
        command, query, body = callback_request(notice)
        return self.outbox_row(notice.call.sdk_app_id, notice.call.call_id, command,
                               notice.event, query, body)

    def outbox_row(
        self,
        sdk_app_id: int,
        call_id: str,
        command: str,
        event: str,
        query: dict[str, str],
        body: dict[str, Any],
        expires_at: float | None = None,
    ) -> OutboxRow | None:
        """The row of one request of this channel, or None when no endpoint is configured,
        ``event`` is not enabled or the service is closed (counted in :attr:`skipped`)."""
        if self._closing is not None:
            logger.warning("%s %s of call %s after close: dropped",
                           self.channel.kind, command, call_id)
            return None
        if self._config_loaded and not self._enabled(command, event):
            self.skipped += 1
            return None
        return OutboxRow(
            sdk_app_id,
            call_id,
            command,
            json.dumps(query, separators=(",", ":")),
            json.dumps(body, separators=(",", ":"), ensure_ascii=False),
            time.time(),
            self.channel.kind,
            expires_at,
        )

    def adopt(self, row: OutboxRow, row_id: int) -> None:
        """Send a row someone else committed (see :meth:`notice_row`) as row ``row_id``.

        After :meth:`close` it is left in the outbox for the next run.
        """
        if self._closing is not None or not self._started:
            return
        # Through the same door as rows this service stored: behind a backlog they are read
        # from the table in order (and not held twice in memory).
        self._take_new_rows([_Row(row_id, row.sdk_app_id, row.call_id, row.command,
                                  json.loads(row.query), row.body.encode("utf-8"), 0,
                                  row.created_at, row.expires_at, row.created_at)])

    def enqueue(
        self,
        sdk_app_id: int,
        call_id: str,
        command: str,
        event: str,
        query: dict[str, str],
        body: dict[str, Any],
        expires_at: float | None = None,
    ) -> None:
        """Queue one request of this channel for ``call_id`` (in order after the call's earlier
        ones) unless no endpoint is configured or ``event`` is not enabled; never blocks."""
        row = self.outbox_row(sdk_app_id, call_id, command, event, query, body, expires_at)
        if row is not None:
            self._batch.inserts.append(row)
            self._db_wake.set()

    def _enabled(self, command: str, event: str) -> bool:
        config = self._config
        if config is None:
            return False
        return not self.channel.filtered or config.enables(command, event)

    async def flush(self) -> None:
        """Wait until every notice given so far, and every delivery result, is on disk."""
        if self._db_task is None or self._db_task.done():
            if self._batch:
                await self._write(self._take_batch())
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(waiter)
        self._db_wake.set()
        await waiter

    async def close(self) -> None:
        """Persist what is queued, let deliveries finish briefly, stop; idempotent."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            if self._started:
                await self.flush()
                self._draining = True
                self._wake_retries()
                workers = list(self._workers.values())
                if workers and self.settings.close_grace_s > 0:
                    await asyncio.wait(workers, timeout=self.settings.close_grace_s)
                self._sending = False
                for task in self._workers.values():
                    task.cancel()
                await asyncio.gather(*self._workers.values(), return_exceptions=True)
                await self.flush()
                if self._db_task is not None:
                    self._db_task.cancel()
                    await asyncio.gather(self._db_task, return_exceptions=True)
                if self._shared:
                    try:  # the rows left are free at once for the other processes
                        await self._run_db(_release_leases, self.store, self.channel.kind,
                                           self._owner)
                    except Exception:
                        logger.exception("could not free the %s outbox leases; they expire "
                                         "in %g s", self.channel.kind, self.settings.lease_s)
                if self._session is not None:
                    await self._session.close()
            elif self._batch.inserts:
                logger.warning("%d webhook(s) dropped: service never started",
                               len(self._batch.inserts))
        finally:
            self._closing.set_result(None)
        logger.debug("webhook service closed; %d row(s) left for the next run", self.pending)

    # ------------------------------------------------------------------ configuration

    async def create_config(self, url: Any, events: Any = None) -> CallbackConfig:
        """Create the configuration; CallbackConfigError if one exists or input is invalid."""
        checked = await self._validate_target(url)
        config = await self._change("create", checked, normalize_events(events))
        assert config is not None
        return config

    async def get_config(self) -> CallbackConfig | None:
        """The configuration as stored (re-read from the database)."""
        config = await self._run_db(
            _load_config_only, self.store, self.sdk_app_id, self.channel.config_table
        )
        self._config = config
        return config

    async def update_config(self, url: Any = None, events: Any = None) -> CallbackConfig:
        """Change the URL and/or the events; CallbackConfigError if none exists."""
        if url is None and events is None:
            raise CallbackConfigError("update_config needs url or events")
        config = await self._change(
            "update",
            None if url is None else await self._validate_target(url),
            None if events is None else normalize_events(events),
        )
        assert config is not None
        return config

    async def _validate_target(self, url: Any) -> str:
        checked = validate_url(url)
        if not self.settings.allow_private_targets:
            await _check_target(checked)
        return checked

    async def delete_config(self) -> bool:
        """Delete the configuration (nothing is sent any more); whether one existed."""
        return await self._change("delete", None, None) is not None

    async def _change(
        self, op: str, url: str | None, events: tuple[str, ...] | None
    ) -> CallbackConfig | None:
        result = await self._run_db(
            _save_config, self.store, self.sdk_app_id, op, url, events, time.time(),
            self.channel.config_table,
        )
        self._config = None if op == "delete" else result
        self._wake_retries()  # waiting retries try the new configuration now
        logger.info("%s configuration %sd", self.channel.kind, op)
        return result

    # ------------------------------------------------------------------ database task

    async def _run_db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._writer is not None:
            return await self._writer.run_query(fn, *args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _take_batch(self) -> _Batch:
        batch, self._batch = self._batch, _Batch()
        now = time.time()
        if now - self._last_prune >= _PRUNE_EVERY_S:
            self._last_prune = now
            batch.prune_before = now - self.settings.retention_s
        return batch

    async def _write(self, batch: _Batch) -> list[_Row]:
        rows = await self._run_db(_write_batch, self.store, batch)
        for done in batch.done:  # a claim can no longer return them as pending
            self._held.discard(done[4])
        return rows

    async def _db_loop(self) -> None:
        next_tick = time.monotonic() + self.settings.claim_interval_s
        while True:
            if self._shared:
                # On a deadline, not on idleness: a busy outbox renews its leases too.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._db_wake.wait(),
                                           max(0.0, next_tick - time.monotonic()))
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.settings.claim_interval_s
                    try:
                        await self._shared_tick()
                    except Exception as exc:
                        _log_db_failure("webhook outbox lease renewal failed; retrying", exc)
            else:
                await self._db_wake.wait()
            self._db_wake.clear()
            waiters, self._flush_waiters = self._flush_waiters, []
            batch = self._take_batch()
            try:
                rows = await self._write(batch) if batch else []
            except Exception as exc:
                _log_db_failure("webhook outbox write failed; retrying in 1 s", exc)
                self._merge_back(batch)
                self._flush_waiters[:0] = waiters
                await asyncio.sleep(1.0)
                self._db_wake.set()
                continue
            self._take_new_rows(rows)
            try:
                await self._load_pages()
            except Exception as exc:
                _log_db_failure("webhook outbox read failed; retrying in 1 s", exc)
                self._flush_waiters[:0] = waiters
                await asyncio.sleep(1.0)
                self._db_wake.set()
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _shared_tick(self) -> None:
        """Shared store: renew this process's leases, re-read the configuration (another
        process may have changed it), and look for free rows."""
        if self._held:
            await self._run_db(_renew_leases, self.store, self.channel.kind, self._owner,
                               self.settings.lease_s)
        before = self._config
        self._config = await self._run_db(
            _load_config_only, self.store, self.sdk_app_id, self.channel.config_table
        )
        if self._config != before:
            self._wake_retries()
        self._backlog = True

    def _take_new_rows(self, rows: list[_Row]) -> None:
        """Dispatch rows just stored, unless older ones wait in the table (then they are read
        in order with those) or memory holds ``max_loaded`` already. On a shared store, rows
        are only sent once claimed: the outbox task claims them next."""
        if self._shared:
            if rows:
                self._backlog = True
                self._db_wake.set()
            return
        for row in rows:
            if self._backlog or self._loaded >= self.settings.max_loaded:
                self._backlog = True
                return
            self._loaded_through = max(self._loaded_through, row.id)
            self._dispatch(row)

    async def _load_pages(self) -> None:
        """While rows wait in the table, read them into the free half of ``max_loaded``."""
        cap = self.settings.max_loaded
        while self._backlog and self._sending and not self._draining:
            room = cap - self._loaded
            if room < max(1, cap // 2) and self._loaded > 0:
                return  # read again once half the loaded rows are done
            if self._shared:
                claimed, more = await self._run_db(
                    _claim_page, self.store, self.channel.kind, self._owner, room,
                    self.settings.lease_s,
                )
                for row in claimed:
                    if row.id not in self._held:  # held already when our lease had lapsed
                        self._dispatch(row)
                self._backlog = more
                continue
            page = await self._run_db(
                _load_page, self.store, self.channel.kind, self._loaded_through, room
            )
            if page and self._loaded_through == 0:
                logger.info("undelivered %s row(s) from a previous run: sending them",
                            self.channel.kind)
            for row in page:
                self._loaded_through = row.id
                self._dispatch(row)
            if len(page) < room:
                self._backlog = False

    def _merge_back(self, batch: _Batch) -> None:
        self._batch.inserts[:0] = batch.inserts
        self._batch.done[:0] = batch.done
        self._batch.retries[:0] = batch.retries

    # ------------------------------------------------------------------ sender

    def _wake_retries(self) -> None:
        self._kick.set()
        self._kick = asyncio.Event()

    def _dispatch(self, row: _Row) -> None:
        key = (row.sdk_app_id, row.call_id)
        self._held.add(row.id)
        self._loaded += 1
        self._queues.setdefault(key, collections.deque()).append(row)
        if key not in self._workers and self._sending:
            self._workers[key] = asyncio.create_task(
                self._call_worker(key), name=f"webhook:{row.call_id}"
            )

    async def _call_worker(self, key: tuple[int, str]) -> None:
        """Deliver one call's rows strictly in order."""
        queue = self._queues[key]
        try:
            while queue:
                try:
                    if not await self._deliver(queue[0]):
                        return  # closing: the row stays pending for the next run
                except Exception:  # pragma: no cover - a bug; keep the row and go on later
                    logger.exception("webhook %d failed unexpectedly", queue[0].id)
                    await asyncio.sleep(self.settings.backoff_max_s)
                    continue
                queue.popleft()  # held until its outcome is written (see _write)
                self._loaded -= 1
                if self._backlog and self._loaded <= self.settings.max_loaded // 2:
                    self._db_wake.set()  # room for the next page
        finally:
            if not queue:
                self._queues.pop(key, None)
            self._workers.pop(key, None)

    async def _deliver(self, row: _Row) -> bool:
        """Send one row until it is delivered (True) or the service is closing (False)."""
        while True:
            delay = row.next_attempt_at - time.time()
            if delay > 0 and not self._draining:
                kick = self._kick
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), delay)
            if self._draining and row.next_attempt_at > time.time():
                return False
            config = self._config
            if config is None:
                self._finish(row, "discarded", f"no {self.channel.kind} configuration")
                return True
            if row.expires_at is not None and time.time() >= row.expires_at:
                self._finish(row, "discarded", "expired before it could be delivered")
                return True
            given_up = self._given_up(row)
            if given_up is not None:
                self.discarded += 1
                logger.warning(
                    "%s %d (%s) of call %s discarded: %s (%d discarded by this process)",
                    self.channel.kind, row.id, row.command, row.call_id, given_up,
                    self.discarded)
                self._finish(row, "discarded", given_up)
                return True
            async with self._semaphore:
                if self._draining and row.attempts > 0:
                    return False
                error = await self._post(config.url, row)
            row.attempts += 1
            if error is None:
                self.delivered += 1
                self._finish(row, "delivered", "")
                return True
            self.failed_attempts += 1
            backoff = min(
                self.settings.backoff_max_s,
                self.settings.backoff_initial_s * 2 ** min(row.attempts - 1, 30),
            ) * random.uniform(0.8, 1.0)
            row.next_attempt_at = time.time() + backoff
            logger.info("webhook %d (%s) attempt %d failed: %s; retry in %.1f s",
                        row.id, row.command, row.attempts, error, backoff)
            self._batch.retries.append((row.attempts, row.next_attempt_at, error[:500], row.id))
            self._db_wake.set()

    def _given_up(self, row: _Row) -> str | None:
        """Why ``row`` is not tried again (attempt or age cap), or None."""
        cfg = self.settings
        if row.attempts >= cfg.max_attempts:
            return f"not delivered in {row.attempts} attempts (max_attempts)"
        age = time.time() - row.created_at
        if row.attempts > 0 and age >= cfg.max_age_s:
            return f"not delivered within {age:.0f} s, {row.attempts} attempts (max_age_s)"
        return None

    def _finish(self, row: _Row, outcome: str, error: str) -> None:
        self._batch.done.append((outcome, time.time(), row.attempts, error, row.id))
        self._db_wake.set()

    async def _post(self, url: str, row: _Row) -> str | None:
        """POST one row; None on a 2xx answer, else what went wrong."""
        assert self._session is not None
        try:
            target = URL(url).update_query(row.query)
            async with self._session.post(
                target,
                data=row.body,
                headers={"Content-Type": "application/json; charset=utf-8",
                         "X-Callback-Seq": str(row.id)},
                allow_redirects=False,  # a redirect could point anywhere, our network too
            ) as response:
                # Only the status matters; a bounded read lets a short body keep the
                # connection reusable, a longer one is dropped with the connection.
                await response.content.read(_MAX_RESPONSE_BYTES)
                if 200 <= response.status < 300:
                    return None
                if 300 <= response.status < 400:
                    return f"HTTP {response.status}: redirects are not followed"
                return f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {self.settings.timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"


def _log_db_failure(what: str, exc: Exception) -> None:
    """Log a failed outbox database step: one line while the database is unreachable (the
    record writer says so once, and spools the records), else with the traceback."""
    if isinstance(exc, StoreUnavailable):
        logger.warning("%s: %s", what, exc)
    else:
        logger.error("%s", what, exc_info=exc)


def _event_of(command: str) -> str:
    return command.split("_", 1)[1]


def _load_config_only(
    store: CallStore, sdk_app_id: int, table: str = CALLBACKS.config_table
) -> CallbackConfig | None:
    with store.locked() as conn:
        row = conn.execute(f"SELECT * FROM {table} WHERE sdk_app_id = ?", (sdk_app_id,)).fetchone()
    return _config_from_row(row)
