"""The REST API: call records and the callback configuration, for the app's business backend.

Every request is ``POST /v1/{kind}/{command}`` with the query parameters ``sdkappid``,
``identifier``, ``usersig``, ``random`` and ``contenttype=json`` and a JSON object body (``{}``
when no field is needed), answered with HTTP 200 and ``{"errorCode", "errorMessage",
"requestId", "data"}``; see ``docs/rest-api.md``. Checks, in order: query parameters and
sdkappid (70001), administrator identifier (70004), userSig (70002 / 70003), rate limit per
sdkappid (70005), body parsing (70009), body fields (70001).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar

from aiohttp import web

from callwire.codes import ErrorCode
from callwire.usersig import UserSigRefused, verify_user_sig
from signaling_server.records import StoredCall, users_in_call
from signaling_server.store import CallStore, RecordWriter, StoreUnavailable
from signaling_server.webhooks import CallbackConfigError, WebhookService

__all__ = [
    "CALL_RESULTS",
    "Body",
    "HttpApi",
    "HttpApiConfig",
    "RestError",
    "RestHandler",
    "invalid",
    "record_to_wire",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CALL_RESULTS: Final[tuple[str, ...]] = (
    "normal_end",
    "cancel",
    "reject",
    "not_answer",
    "call_busy",
    "interrupt",
)
"""Values of a finished record's ``callResult`` (``""`` while the call runs)."""

MAX_PAGE: Final = 100
_MAX_RANDOM: Final = 4294967295
_MEDIA: Final = {1: "audio", 2: "video"}
_MEDIA_CODES: Final = {"audio": 1, "video": 2}
_SINGLE_CALL: Final = 2


@dataclass(frozen=True)
class HttpApiConfig:
    """Who may call the API and how often."""

    sdk_app_id: int
    secret_key: str
    admin_identifier: str = "administrator"
    rate_per_s: float = 20.0
    """Requests per second per sdkappid; the burst is one second's worth (at least 1)."""
    max_body_bytes: int = 64 * 1024


class RestError(Exception):
    """A request refused with a REST error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message


RestHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""One REST command: the request body in, the response's ``data`` out (or RestError)."""


def invalid(message: str) -> RestError:
    """A 70001 error (invalid request parameters) saying what to fix."""
    return RestError(ErrorCode.REST_INVALID_PARAMETERS, message)


def record_to_wire(call: StoredCall) -> dict[str, Any]:
    """A call record in the reference's shape; timestamps are int seconds, 0 when unset."""
    return {
        "callId": call.call_id,
        "sdkAppId": call.sdk_app_id,
        "mediaType": _MEDIA.get(call.media_type, "audio"),
        "roomId": str(call.room_id),
        "startCallTs": int(call.start_ts),
        "acceptTs": 0 if call.accept_ts is None else int(call.accept_ts),
        "endTs": 0 if call.end_ts is None else int(call.end_ts),
        "caller": call.caller,
        "totalUserNumber": users_in_call(call),
        "callType": "single" if call.scene == _SINGLE_CALL else "group",
        "callResult": call.result,
        "callees": list(call.callees),
    }


# ---------------------------------------------------------------------- body fields


class Body:
    """Typed access to a request body; every problem is a 70001 naming the field."""

    def __init__(self, data: dict[str, Any], allowed: tuple[str, ...]) -> None:
        unknown = [key for key in data if key not in allowed]
        if unknown:
            fields = ", ".join(allowed) or "none"
            raise invalid(f"unknown body field {unknown[0]!r:.64}; allowed: {fields}")
        self.data = data

    def string(self, name: str, *, required: bool = False, max_len: int = 64) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise invalid(f"body field {name!r} is required")
            return None
        if not isinstance(value, str) or not 1 <= len(value) <= max_len:
            raise invalid(f"body field {name!r} must be a string of 1..{max_len} characters")
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(f"body field {name!r} must be an integer in {low}..{high}")
        return value


def _encode_cursor(call: StoredCall) -> str:
    raw = json.dumps([call.start_ts, call.call_id], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        start, call_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise invalid("cursor is not a nextCursor returned by this API") from None
    if (
        isinstance(start, bool)
        or not isinstance(start, int | float)
        or not isinstance(call_id, str)
    ):
        raise invalid("cursor is not a nextCursor returned by this API")
    return float(start), call_id


# ---------------------------------------------------------------------- the application

class HttpApi:
    """The aiohttp application of the REST API, started on its own port."""

    def __init__(
        self,
        config: HttpApiConfig,
        store: CallStore,
        webhooks: WebhookService | None = None,
        *,
        writer: RecordWriter | None = None,
        extra_commands: Mapping[str, RestHandler] | None = None,
    ) -> None:
        if config.rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.config = config
        self.store = store
        self.webhooks = webhooks
        self._writer = writer
        self._buckets: dict[int, tuple[float, float]] = {}  # sdkappid -> (tokens, when)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._commands: dict[str, RestHandler] = {
            "records/get_record_by_callId": self._get_record_by_call_id,
            "records/get_records": self._get_records,
            "callback/create_config": self._create_config,
            "callback/get_config": self._get_config,
            "callback/update_config": self._update_config,
            "callback/delete_config": self._delete_config,
            **(extra_commands or {}),
        }
        self.app = web.Application(client_max_size=config.max_body_bytes)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    @property
    def port(self) -> int:
        """The port listened on (useful after starting on port 0)."""
        if self._port is None:
            raise RuntimeError("HTTP API is not started")
        return self._port

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` (0: any free port), over TLS with ``ssl_context``."""
        if self._runner is not None:
            raise RuntimeError("HTTP API already started")
        runner = web.AppRunner(self.app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.info("REST API listening on %s:%d", host, self._port)

    async def stop(self) -> None:
        """Stop listening and finish open requests; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            logger.debug("REST API stopped")

    # ------------------------------------------------------------------ request pipeline

    async def _handle(self, request: web.Request) -> web.Response:
        request_id = secrets.token_hex(16)
        try:
            data = await self._process(request)
        except RestError as exc:
            payload = {"errorCode": exc.code, "errorMessage": exc.message,
                       "requestId": request_id, "data": {}}
        except StoreUnavailable as exc:  # PostgreSQL unreachable: records wait in the spool
            payload = {"errorCode": int(ErrorCode.STORE_UNAVAILABLE), "errorMessage": str(exc),
                       "requestId": request_id, "data": {}}
        except Exception:
            logger.exception("REST request %s %s failed", request_id, request.path)
            payload = {"errorCode": int(ErrorCode.INTERNAL),
                       "errorMessage": "internal server error; retry later",
                       "requestId": request_id, "data": {}}
        else:
            payload = {"errorCode": 0, "errorMessage": "Success", "requestId": request_id,
                       "data": data}
        return web.json_response(payload, headers={"X-Request-Id": request_id})

    async def _process(self, request: web.Request) -> dict[str, Any]:
        path = request.path.strip("/")
        if path.startswith("v1/"):
            path = path[3:]
        command = self._commands.get(path)
        if command is None:
            raise invalid(
                f"unknown API {request.path!r:.100}; known: "
                + ", ".join(f"/v1/{name}" for name in self._commands)
            )
        if request.method != "POST":
            raise invalid(f"{request.method} is not supported: the REST API only takes POST")
        self._authenticate(request)
        self._take_token(self.config.sdk_app_id)
        body = await self._read_body(request)
        return await command(body)

    def _authenticate(self, request: web.Request) -> None:
        query = request.query
        for name in ("sdkappid", "identifier", "usersig", "random", "contenttype"):
            if not query.get(name):
                raise invalid(f"query parameter {name!r} is missing")
        sdkappid, random_text = query["sdkappid"], query["random"]
        if not sdkappid.isdecimal() or len(sdkappid) > 20:
            raise invalid(f"sdkappid {sdkappid!r:.40} is not a number")
        if int(sdkappid) != self.config.sdk_app_id:
            raise invalid(f"sdkappid {sdkappid} is not served here")
        if (
            not random_text.isdecimal()
            or len(random_text) > 10
            or int(random_text) > _MAX_RANDOM
        ):
            raise invalid(f"random must be an integer in 0..{_MAX_RANDOM}")
        if query["contenttype"] != "json":
            raise invalid("contenttype must be json")
        identifier = query["identifier"]
        if identifier != self.config.admin_identifier:
            raise RestError(
                ErrorCode.NOT_ADMINISTRATOR,
                f"{identifier!r:.80} is not the administrator account of this app",
            )
        try:
            verify_user_sig(
                query["usersig"], self.config.sdk_app_id, self.config.secret_key, identifier
            )
        except UserSigRefused as exc:
            raise RestError(exc.code, exc.message) from None

    def _take_token(self, sdk_app_id: int) -> None:
        rate = self.config.rate_per_s
        burst = max(1.0, rate)
        now = time.monotonic()
        tokens, last = self._buckets.get(sdk_app_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[sdk_app_id] = (tokens, now)
            raise RestError(
                ErrorCode.RATE_LIMITED,
                f"request frequency limited: at most {rate:g} requests/s per sdkappid",
            )
        self._buckets[sdk_app_id] = (tokens - 1.0, now)

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RestError(
                ErrorCode.BODY_UNPARSEABLE,
                f"request body exceeds {self.config.max_body_bytes} bytes",
            ) from None
        if not raw.strip():
            raise RestError(
                ErrorCode.BODY_UNPARSEABLE,
                "request body is empty; send {} when the API needs no field",
            )
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RestError(ErrorCode.BODY_UNPARSEABLE, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise RestError(ErrorCode.BODY_UNPARSEABLE, "request body must be a JSON object")
        return data

    async def _read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._writer is not None:
            return await self._writer.run_read(fn, *args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _require_webhooks(self) -> WebhookService:
        if self.webhooks is None:
            raise invalid("call-event webhooks are not enabled on this server")
        return self.webhooks

    # ------------------------------------------------------------------ records

    async def _get_record_by_call_id(self, data: dict[str, Any]) -> dict[str, Any]:
        body = Body(data, ("callId",))
        call_id = body.string("callId", required=True)
        assert call_id is not None
        call = await self._read(self.store.get_call, self.config.sdk_app_id, call_id)
        if call is None:
            raise invalid(f"no call record with callId {call_id!r}")
        return record_to_wire(call)

    async def _get_records(self, data: dict[str, Any]) -> dict[str, Any]:
        body = Body(
            data, ("startTs", "endTs", "userId", "callResult", "mediaType", "limit", "cursor")
        )
        start = body.integer("startTs", 0, 2**53)
        end = body.integer("endTs", 0, 2**53)
        if start is not None and end is not None and end < start:
            raise invalid("endTs must not be before startTs")
        user_id = body.string("userId")
        call_result = body.string("callResult", max_len=32)
        if call_result is not None and call_result not in CALL_RESULTS:
            raise invalid(f"callResult must be one of {', '.join(CALL_RESULTS)}")
        media = body.string("mediaType", max_len=16)
        if media is not None and media not in _MEDIA_CODES:
            raise invalid("mediaType must be audio or video")
        limit = body.integer("limit", 1, MAX_PAGE) or MAX_PAGE
        cursor = data.get("cursor", "")
        if not isinstance(cursor, str) or len(cursor) > 512:
            raise invalid("cursor must be the nextCursor string of the previous page")
        after = _decode_cursor(cursor) if cursor else None
        calls = await self._read(
            self.store.find_calls,
            self.config.sdk_app_id,
            begin=start,
            end=end,
            user_id=user_id,
            call_result=call_result,
            media_type=None if media is None else _MEDIA_CODES[media],
            after=after,
            limit=limit + 1,
        )
        more = len(calls) > limit
        page = calls[:limit]
        return {
            "records": [record_to_wire(call) for call in page],
            "nextCursor": _encode_cursor(page[-1]) if more else "",
        }

    # ------------------------------------------------------------------ callback configuration

    async def _create_config(self, data: dict[str, Any]) -> dict[str, Any]:
        webhooks = self._require_webhooks()
        Body(data, ("url", "events"))
        if "url" not in data:
            raise invalid("body field 'url' is required")
        try:
            config = await webhooks.create_config(data["url"], data.get("events"))
        except CallbackConfigError as exc:
            raise invalid(str(exc)) from None
        return config.to_wire()

    async def _get_config(self, data: dict[str, Any]) -> dict[str, Any]:
        webhooks = self._require_webhooks()
        Body(data, ())
        config = await webhooks.get_config()
        if config is None:
            return {}
        return {**config.to_wire(), "delivery": await webhooks.delivery_stats()}

    async def _update_config(self, data: dict[str, Any]) -> dict[str, Any]:
        webhooks = self._require_webhooks()
        Body(data, ("url", "events"))
        try:
            config = await webhooks.update_config(data.get("url"), data.get("events"))
        except CallbackConfigError as exc:
            raise invalid(str(exc)) from None
        return config.to_wire()

    async def _delete_config(self, data: dict[str, Any]) -> dict[str, Any]:
        webhooks = self._require_webhooks()
        Body(data, ())
        return {"deleted": await webhooks.delete_config()}
