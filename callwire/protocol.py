"""The wire protocol: parse, validate and serialize JSON frames. No I/O.

Both the client and the server import this module, so a frame one side writes is checked by
the same rules the other side reads it with. ``docs/protocol.md`` is the prose version.

Frames are JSON objects in websocket text frames:

* request (client to server): ``{"type": T, "id": ID, "data": {...}}``; exactly one reply
  follows, with the same ``id``;
* reply: ``{"type": "reply", "id": ID, "ok": true, "data": {...}}`` or
  ``{"type": "reply", "id": ID, "ok": false, "error": {"code": N, "message": S}}``;
* event (server to client): ``{"type": "event", "event": NAME, "data": {...}}``, where NAME
  is one of :data:`EVENT_NAMES` (the reference's TUICallEvent names);
* relay (server to client): ``{"type": "relay", "data": {"callId", "from", "kind", "payload"}}``,
  what another participant of the same call sent with a ``relay`` request.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from callwire.codes import ErrorCode

__all__ = [
    "CALL_EVENTS",
    "EVENT_NAMES",
    "MAX_CALL_MEMBERS",
    "MAX_FRAME_BYTES",
    "MAX_PARTICIPANTS",
    "MAX_USER_INFO_BATCH",
    "PROTOCOL_VERSION",
    "PUSH_INFO_DEFAULTS",
    "PUSH_INFO_FIELDS",
    "RELAY_KINDS",
    "REQUEST_TYPES",
    "Event",
    "ProtocolViolation",
    "Relay",
    "Reply",
    "Request",
    "ServerFrame",
    "check_user_id",
    "encode",
    "encode_event",
    "encode_relay",
    "encode_reply_error",
    "encode_reply_ok",
    "encode_request",
    "is_compatible_version",
    "parse_request",
    "parse_server_frame",
]

PROTOCOL_VERSION: Final = "1.1"
"""``major.minor``; a server refuses a login whose major differs from its own."""

MAX_FRAME_BYTES: Final = 64 * 1024
"""Frames larger than this are refused (FRAME_TOO_LARGE) and never parsed."""

MAX_PARTICIPANTS: Final = 9
"""A call holds at most this many users, the caller included."""

MAX_CALL_MEMBERS: Final = 64
"""Distinct users one call may ever hold (ringing, joined, and those who left, rejected or
timed out, all kept for the record); inviting a 65th is refused with 4091."""

MAX_NESTING: Final = 32
"""Objects and arrays nest at most this deep in a frame (the frame object is level 1): the
server re-serializes relay payloads, which must not approach Python's recursion limit."""

MAX_ID_LENGTH: Final = 64
MAX_USER_DATA: Final = 8 * 1024
MAX_TIMEOUT_S: Final = 600
MAX_USER_INFO_BATCH: Final = 100
"""At most this many user ids per ``get_user_info`` request."""

RELAY_KINDS: Final = frozenset({"offer", "answer", "candidate", "keepalive", "custom"})

CALL_EVENTS: Final = (
    "ON_CALL_RECEIVED",
    "ON_CALL_CANCELED",
    "ON_CALL_BEGIN",
    "CALLING_END",
    "USER_ACCEPT",
    "USER_ENTER",
    "USER_LEAVE",
    "REJECT",
    "NO_RESP",
    "LINE_BUSY",
    "CALL_TYPE_CHANGED",
    "USER_VIDEO_AVAILABLE",
    "USER_AUDIO_AVAILABLE",
    "GROUP_CALL_INVITEE_LIST_UPDATE",
    "ON_USER_NETWORK_QUALITY_CHANGED",
    "USER_INFO_CHANGED",
    "SFU_ROOM",
)
"""Events about one call; each carries ``callId``."""

EVENT_NAMES: Final = frozenset(
    (*CALL_EVENTS, "SDK_READY", "KICKED_OUT", "USER_SIG_EXPIRED", "ERROR", "ICE_SERVERS")
)

# Always fullmatch: with re.match, "$" also matches before a trailing newline.
_USER_ID_RE: Final = re.compile(r"[A-Za-z0-9_@.\-]{1,64}")


class ProtocolViolation(Exception):
    """A frame broke the protocol; ``request_id`` is set when the frame had a usable id."""

    def __init__(self, code: int, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.request_id = request_id


# --------------------------------------------------------------------------- field checks

Check = Callable[[Any], str | None]
"""Returns None when the value is fine, else the reason it is not (a sentence fragment)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(max_len: int, min_len: int = 0) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if not min_len <= len(value) <= max_len:
            return f"must be {min_len}..{max_len} characters long"
        return None

    return check


def check_user_id(value: Any) -> str | None:
    """Why ``value`` is not a valid user id (1..64 of ``A-Z a-z 0-9 _ @ . -``), or None."""
    if not isinstance(value, str):
        return "must be a string"
    if not _USER_ID_RE.fullmatch(value):
        return "must be 1..64 characters of letters, digits, '_', '@', '.', '-'"
    return None


def _int_range(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if not _is_int(value):
            return "must be an integer"
        if not low <= value <= high:
            return f"must be between {low} and {high}"
        return None

    return check


def _one_of(*choices: int) -> Check:
    def check(value: Any) -> str | None:
        if not _is_int(value) or value not in choices:
            return f"must be one of {', '.join(str(c) for c in choices)}"
        return None

    return check


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    return None if finite else "must be a finite number"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be an object"


def _user_list(max_items: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return "must be a non-empty list of user ids"
        if len(value) > max_items:
            return f"must hold at most {max_items} user ids"
        for item in value:
            reason = check_user_id(item)
            if reason:
                return f"holds {item!r}, which {reason}"
        if len(set(value)) != len(value):
            return "must not repeat a user id"
        return None

    return check


def _id_list(value: Any) -> str | None:
    if not isinstance(value, list) or not value or len(value) > 100:
        return "must be a list of 1..100 call ids"
    for item in value:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_ID_LENGTH:
            return "must hold call ids (strings of 1..64 characters)"
    return None


def _room_id(value: Any) -> str | None:
    if not isinstance(value, dict):
        return 'must be an object {"intRoomId": int, "strRoomId": str}'
    int_id = value.get("intRoomId", 0)
    str_id = value.get("strRoomId", "")
    if not _is_int(int_id) or not 0 <= int_id <= 4294967294:
        return "intRoomId must be an integer in 0..4294967294"
    if not isinstance(str_id, str) or len(str_id) > MAX_ID_LENGTH:
        return "strRoomId must be a string of at most 64 characters"
    if set(value) - {"intRoomId", "strRoomId"}:
        return "may only hold intRoomId and strRoomId"
    return None


def _relay_kind(value: Any) -> str | None:
    if not isinstance(value, str) or value not in RELAY_KINDS:
        return f"must be one of {', '.join(sorted(RELAY_KINDS))}"
    return None


PUSH_INFO_FIELDS: Final[Mapping[str, Check]] = {
    "title": _string(256),
    "desc": _string(1024),
    "ignoreIOSBadge": _boolean,
    "iOSSound": _string(256),
    "androidSound": _string(256),
    "androidOPPOChannelID": _string(128),
    "androidVIVOClassification": _one_of(0, 1),
    "androidXiaoMiChannelID": _string(128),
    "androidFCMChannelID": _string(128),
    "androidHuaWeiCategory": _string(128),
    "isDisablePush": _boolean,
    "iOSPushType": _one_of(0, 1),
}
"""The fields of an ``offlinePushInfo`` object (TUIOfflinePushInfo), each optional."""

PUSH_INFO_DEFAULTS: Final[Mapping[str, Any]] = {
    "title": "",
    "desc": "",
    "ignoreIOSBadge": False,
    "iOSSound": "",
    "androidSound": "",
    "androidOPPOChannelID": "",
    "androidVIVOClassification": 1,
    "androidXiaoMiChannelID": "",
    "androidFCMChannelID": "",
    "androidHuaWeiCategory": "",
    "isDisablePush": False,
    "iOSPushType": 0,
}
"""The value of each ``offlinePushInfo`` field left out (the reference's defaults: VIVO
classification 1 "system message", iOS push type 0 APNs, push on)."""


def _push_info(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be an object of TUIOfflinePushInfo fields"
    for key, item in value.items():
        check = PUSH_INFO_FIELDS.get(key)
        if check is None:
            return f"has an unknown field {key!r:.40}; known: {', '.join(PUSH_INFO_FIELDS)}"
        reason = check(item)
        if reason:
            return f"field {key!r} {reason}"
    return None


@dataclass(frozen=True)
class _Field:
    check: Check
    required: bool = True


_CALL_ID = _Field(_string(MAX_ID_LENGTH, 1))
_GROUP_ID = _Field(_string(MAX_ID_LENGTH, 1))
_MEDIA_TYPE = _Field(_one_of(1, 2))
_PUSH_INFO = _Field(_push_info, required=False)

REQUEST_TYPES: Final[Mapping[str, Mapping[str, _Field]]] = {
    "login": {
        "sdkAppId": _Field(_int_range(1, 2**53)),
        "userID": _Field(check_user_id),
        "userSig": _Field(_string(4096, 1)),
        "protocolVersion": _Field(_string(16, 1)),
        "multiDevice": _Field(_boolean, required=False),
        "nickname": _Field(_string(64), required=False),
        "avatar": _Field(_string(1024), required=False),
        "platform": _Field(_string(32), required=False),
    },
    "logout": {},
    "ping": {},
    "calls": {
        "userIDList": _Field(_user_list(MAX_PARTICIPANTS - 1)),
        "mediaType": _MEDIA_TYPE,
        "roomId": _Field(_room_id, required=False),
        "timeout": _Field(_int_range(1, MAX_TIMEOUT_S), required=False),
        "userData": _Field(_string(MAX_USER_DATA), required=False),
        "groupId": _Field(_string(MAX_ID_LENGTH), required=False),
        "offlinePushInfo": _PUSH_INFO,
    },
    "accept": {"callId": _CALL_ID},
    "reject": {"callId": _CALL_ID},
    "ignore": {"callId": _CALL_ID},
    "hangup": {"callId": _CALL_ID},
    "invite": {
        "callId": _CALL_ID,
        "userIDList": _Field(_user_list(MAX_PARTICIPANTS - 1)),
        "timeout": _Field(_int_range(1, MAX_TIMEOUT_S), required=False),
        "userData": _Field(_string(MAX_USER_DATA), required=False),
        "offlinePushInfo": _PUSH_INFO,
    },
    "join": {"callId": _CALL_ID},
    "join_in_group_call": {
        "groupId": _GROUP_ID,
        "roomId": _Field(_room_id, required=False),
        "mediaType": _MEDIA_TYPE,
    },
    "get_group_call": {"groupId": _GROUP_ID},
    "switch_media_type": {"callId": _CALL_ID, "mediaType": _MEDIA_TYPE},
    "media_state": {
        "callId": _CALL_ID,
        "camera": _Field(_boolean, required=False),
        "microphone": _Field(_boolean, required=False),
    },
    "network_quality": {"callId": _CALL_ID, "quality": _Field(_int_range(0, 6))},
    "self_info": {
        "nickname": _Field(_string(64)),
        "avatar": _Field(_string(1024), required=False),
    },
    "get_user_info": {"userIDList": _Field(_user_list(MAX_USER_INFO_BATCH))},
    "multi_device": {"enable": _Field(_boolean)},
    "relay": {
        "callId": _CALL_ID,
        "to": _Field(check_user_id),
        "kind": _Field(_relay_kind),
        "payload": _Field(_object),
    },
    "query_recent_calls": {
        "begin": _Field(_number, required=False),
        "end": _Field(_number, required=False),
        "resultType": _Field(_int_range(0, 3), required=False),
        "limit": _Field(_int_range(1, 500), required=False),
    },
    "delete_record_calls": {"callIds": _Field(_id_list)},
}
"""Every request type and its ``data`` fields; unknown fields are refused."""


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Request:
    """A validated client request."""

    type: str
    id: int | str
    data: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """The server's answer to one request: ``ok`` with ``data``, or an error code and message."""

    id: int | str | None
    ok: bool
    data: dict[str, Any]
    code: int = 0
    message: str = ""


@dataclass(frozen=True)
class Event:
    """A server event with a reference event name."""

    name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Relay:
    """A message relayed from another participant of the same call."""

    call_id: str
    sender: str
    kind: str
    payload: dict[str, Any]


ServerFrame = Reply | Event | Relay


def _valid_request_id(value: Any) -> TypeGuard[int | str]:
    if _is_int(value):
        return bool(-(2**53) <= value <= 2**53)
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH


def _frame_bytes(raw: str | bytes) -> int:
    # A str holds at most 4 UTF-8 bytes per character: encode only when it could matter.
    if isinstance(raw, str) and len(raw) * 4 > MAX_FRAME_BYTES:
        return len(raw.encode("utf-8", "surrogatepass"))
    return len(raw)


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity; JSON (RFC 8259) has no such values,
    # and echoing them in a relay would send other clients a frame they cannot parse.
    raise ValueError(f"{name} is not a JSON value")


_SURROGATE: Final = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
"""A UTF-16 surrogate, escaped or not: a lone one survives parsing and cannot be sent back
(or stored) as UTF-8, so frames holding one are checked after parsing."""


def _readable_id(value: Any) -> int | str | None:
    """The request id of a parsed frame refused as a whole, when it can be sent back."""
    request_id = value.get("id") if isinstance(value, dict) else None
    if not _valid_request_id(request_id):
        return None
    if isinstance(request_id, str):
        try:
            request_id.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return request_id


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        level += 1
        deepest = max(deepest, level)
        if level <= MAX_NESTING:
            stack.extend((child, level) for child in item)
    return deepest


def _load_object(raw: str | bytes) -> dict[str, Any]:
    size = _frame_bytes(raw)
    if size > MAX_FRAME_BYTES:
        raise ProtocolViolation(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {size} bytes is larger than the {MAX_FRAME_BYTES}-byte limit",
        )
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ProtocolViolation(
            ErrorCode.MALFORMED_FRAME, f"frame is not valid JSON: {reason}"
        ) from exc
    # Both checks cost nothing for ordinary frames: str.count and a regex search in C.
    if text.count("{") + text.count("[") > MAX_NESTING and _depth(value) > MAX_NESTING:
        raise ProtocolViolation(
            ErrorCode.MALFORMED_FRAME,
            f"frame nests objects and arrays deeper than {MAX_NESTING} levels",
            _readable_id(value),
        )
    if _SURROGATE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolViolation(
                ErrorCode.MALFORMED_FRAME,
                "frame holds a lone UTF-16 surrogate (\\ud800-\\udfff)",
                _readable_id(value),
            ) from exc
    if not isinstance(value, dict):
        raise ProtocolViolation(
            ErrorCode.MALFORMED_FRAME,
            f"frame must be a JSON object, not {type(value).__name__}",
        )
    return value


def parse_request(raw: str | bytes) -> Request:
    """Parse and validate one client frame, or raise :class:`ProtocolViolation`.

    The violation carries the frame's ``id`` whenever one could be read, so the reply can
    name the request it refuses.
    """
    frame = _load_object(raw)
    request_id = frame.get("id")
    if not _valid_request_id(request_id):
        raise ProtocolViolation(
            ErrorCode.PARAM_INVALID,
            'request needs an "id": an integer or a string of 1..64 characters',
        )
    kind = frame.get("type")
    fields = REQUEST_TYPES.get(kind) if isinstance(kind, str) else None
    if fields is None or not isinstance(kind, str):
        raise ProtocolViolation(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown request type {kind!r}; known types: {', '.join(sorted(REQUEST_TYPES))}",
            request_id,
        )
    data = frame.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolViolation(
            ErrorCode.PARAM_INVALID, f'{kind}: "data" must be an object', request_id
        )
    unknown = set(data) - set(fields)
    if unknown:
        raise ProtocolViolation(
            ErrorCode.PARAM_INVALID,
            f"{kind}: unknown field(s) {', '.join(sorted(unknown))}",
            request_id,
        )
    for name, spec in fields.items():
        if name not in data:
            if spec.required:
                raise ProtocolViolation(
                    ErrorCode.PARAM_INVALID, f"{kind}: missing field {name!r}", request_id
                )
            continue
        reason = spec.check(data[name])
        if reason:
            raise ProtocolViolation(
                ErrorCode.PARAM_INVALID, f"{kind}: field {name!r} {reason}", request_id
            )
    return Request(kind, request_id, data)


def parse_server_frame(raw: str | bytes) -> ServerFrame:
    """Parse one server frame (reply, event or relay), or raise :class:`ProtocolViolation`."""
    frame = _load_object(raw)
    kind = frame.get("type")
    data = frame.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolViolation(ErrorCode.MALFORMED_FRAME, '"data" must be an object')
    if kind == "reply":
        request_id = frame.get("id")
        if request_id is not None and not _valid_request_id(request_id):
            raise ProtocolViolation(ErrorCode.MALFORMED_FRAME, "reply has an invalid id")
        if frame.get("ok") is True:
            return Reply(request_id, True, data)
        error = frame.get("error")
        if (
            not isinstance(error, dict)
            or not _is_int(error.get("code"))
            or not isinstance(error.get("message"), str)
        ):
            raise ProtocolViolation(
                ErrorCode.MALFORMED_FRAME, 'error reply needs "error": {"code", "message"}'
            )
        return Reply(request_id, False, {}, int(error["code"]), str(error["message"]))
    if kind == "event":
        name = frame.get("event")
        if not isinstance(name, str) or not name:
            raise ProtocolViolation(ErrorCode.MALFORMED_FRAME, "event without a name")
        return Event(name, data)
    if kind == "relay":
        call_id, sender, relay_kind = data.get("callId"), data.get("from"), data.get("kind")
        payload = data.get("payload")
        if not (
            isinstance(call_id, str)
            and isinstance(sender, str)
            and isinstance(relay_kind, str)
            and isinstance(payload, dict)
        ):
            raise ProtocolViolation(
                ErrorCode.MALFORMED_FRAME, "relay needs callId, from, kind and payload"
            )
        return Relay(call_id, sender, relay_kind, payload)
    raise ProtocolViolation(ErrorCode.UNKNOWN_TYPE, f"unknown server frame type {kind!r}")


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Made once: ``json.dumps`` with options would build a new encoder for every frame."""


def _dump(frame: dict[str, Any]) -> str:
    return _ENCODER.encode(frame)


def encode(frame: dict[str, Any]) -> str:
    """Serialize any frame compactly."""
    return _dump(frame)


def encode_request(kind: str, request_id: int | str, data: Mapping[str, Any]) -> str:
    """Serialize a client request."""
    return _dump({"type": kind, "id": request_id, "data": dict(data)})


def encode_reply_ok(request_id: int | str | None, data: Mapping[str, Any] | None = None) -> str:
    """Serialize a success reply."""
    return _dump({"type": "reply", "id": request_id, "ok": True, "data": dict(data or {})})


def encode_reply_error(request_id: int | str | None, code: int, message: str) -> str:
    """Serialize an error reply."""
    return _dump(
        {
            "type": "reply",
            "id": request_id,
            "ok": False,
            "error": {"code": int(code), "message": message},
        }
    )


def encode_event(name: str, data: Mapping[str, Any]) -> str:
    """Serialize a server event."""
    return _dump({"type": "event", "event": name, "data": dict(data)})


def encode_relay(call_id: str, sender: str, kind: str, payload: Mapping[str, Any]) -> str:
    """Serialize a relayed message as the recipient sees it."""
    return _dump(
        {
            "type": "relay",
            "data": {"callId": call_id, "from": sender, "kind": kind, "payload": dict(payload)},
        }
    )


def is_compatible_version(version: str) -> bool:
    """Whether a peer's ``major.minor`` protocol version shares our major version."""
    major = version.split(".", 1)[0]
    return major == PROTOCOL_VERSION.split(".", 1)[0]
