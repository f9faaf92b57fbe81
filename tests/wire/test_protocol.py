"""Property-based fuzzing of the wire-protocol parser (``callwire.protocol``).

Whatever arrives, ``parse_request`` and ``parse_server_frame`` either return a frame or raise
:class:`~callwire.protocol.ProtocolViolation`, never another exception; whatever they
accept can be sent on as strict JSON in UTF-8 (no NaN, no lone surrogate, shallow nesting);
valid frames round-trip through the encoders. Example counts are bounded so the module runs in
a few seconds.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callclient.errors import ErrorCode
from callwire import protocol
from callwire.protocol import Event, ProtocolViolation, Relay, Reply, Request

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Parser = Callable[[str | bytes], Any]
PARSERS: list[Parser] = [protocol.parse_request, protocol.parse_server_frame]

# --------------------------------------------------------------------------- strategies

user_ids = st.from_regex(r"[A-Za-z0-9_@.\-]{1,64}", fullmatch=True)
call_ids = st.text(min_size=1, max_size=64)
request_ids = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53), st.text(min_size=1, max_size=64)
)
# Every code point, lone surrogates included (hypothesis leaves category Cs out by default).
any_char = st.characters(codec=None, exclude_categories=())
wild_text = st.text(alphabet=any_char, max_size=40)
wild_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_scalars = st.one_of(st.none(), st.booleans(), wild_numbers, wild_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(wild_text, inner, max_size=4)
    ),
    max_leaves=20,
)
plain_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**53), max_value=2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
user_lists = st.lists(user_ids, min_size=1, max_size=8, unique=True)
media_types = st.sampled_from([1, 2])
timeouts = st.integers(min_value=1, max_value=600)
group_ids = st.text(min_size=1, max_size=64)
room_ids = st.fixed_dictionaries(
    {},
    optional={
        "intRoomId": st.integers(min_value=0, max_value=4294967294),
        "strRoomId": st.text(max_size=64),
    },
)
push_infos = st.fixed_dictionaries(
    {},
    optional={
        "title": st.text(max_size=50),
        "desc": st.text(max_size=100),
        "ignoreIOSBadge": st.booleans(),
        "iOSSound": st.text(max_size=20),
        "androidSound": st.text(max_size=20),
        "androidOPPOChannelID": st.text(max_size=20),
        "androidVIVOClassification": st.sampled_from([0, 1]),
        "androidXiaoMiChannelID": st.text(max_size=20),
        "androidFCMChannelID": st.text(max_size=20),
        "androidHuaWeiCategory": st.text(max_size=20),
        "isDisablePush": st.booleans(),
        "iOSPushType": st.sampled_from([0, 1]),
    },
)

VALID_DATA: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "login": st.fixed_dictionaries(
        {
            "sdkAppId": st.integers(min_value=1, max_value=2**53),
            "userID": user_ids,
            "userSig": st.text(min_size=1, max_size=200),
            "protocolVersion": st.sampled_from(["1.0", "1.7", "2.0"]),
        },
        optional={
            "multiDevice": st.booleans(),
            "nickname": st.text(max_size=64),
            "avatar": st.text(max_size=100),
            "platform": st.text(max_size=32),
        },
    ),
    "logout": st.just({}),
    "ping": st.just({}),
    "calls": st.fixed_dictionaries(
        {"userIDList": user_lists, "mediaType": media_types},
        optional={
            "roomId": room_ids,
            "timeout": timeouts,
            "userData": st.text(max_size=200),
            "groupId": st.text(max_size=64),
            "offlinePushInfo": push_infos,
        },
    ),
    **{
        kind: st.fixed_dictionaries({"callId": call_ids})
        for kind in ("accept", "reject", "ignore", "hangup", "join")
    },
    "invite": st.fixed_dictionaries(
        {"callId": call_ids, "userIDList": user_lists},
        optional={"timeout": timeouts, "userData": st.text(max_size=200),
                  "offlinePushInfo": push_infos},
    ),
    "join_in_group_call": st.fixed_dictionaries(
        {"groupId": group_ids, "mediaType": media_types}, optional={"roomId": room_ids}
    ),
    "get_group_call": st.fixed_dictionaries({"groupId": group_ids}),
    "get_user_info": st.fixed_dictionaries(
        {"userIDList": st.lists(user_ids, min_size=1, max_size=100, unique=True)}
    ),
    "switch_media_type": st.fixed_dictionaries({"callId": call_ids, "mediaType": media_types}),
    "media_state": st.fixed_dictionaries(
        {"callId": call_ids}, optional={"camera": st.booleans(), "microphone": st.booleans()}
    ),
    "network_quality": st.fixed_dictionaries(
        {"callId": call_ids, "quality": st.integers(min_value=0, max_value=6)}
    ),
    "self_info": st.fixed_dictionaries(
        {"nickname": st.text(max_size=64)}, optional={"avatar": st.text(max_size=100)}
    ),
    "multi_device": st.fixed_dictionaries({"enable": st.booleans()}),
    "relay": st.fixed_dictionaries(
        {
            "callId": call_ids,
            "to": user_ids,
            "kind": st.sampled_from(sorted(protocol.RELAY_KINDS)),
            "payload": st.dictionaries(st.text(max_size=8), plain_json, max_size=4),
        }
    ),
    "query_recent_calls": st.fixed_dictionaries(
        {},
        optional={
            "begin": st.one_of(st.integers(0, 2**40), st.floats(0, 1e12)),
            "end": st.one_of(st.integers(0, 2**40), st.floats(0, 1e12)),
            "resultType": st.integers(min_value=0, max_value=3),
            "limit": st.integers(min_value=1, max_value=500),
        },
    ),
    "delete_record_calls": st.fixed_dictionaries(
        {"callIds": st.lists(call_ids, min_size=1, max_size=100)}
    ),
}


def test_every_request_type_has_a_valid_strategy() -> None:
    """The fuzzer knows every request type the protocol defines (none is left unfuzzed)."""
    assert set(VALID_DATA) == set(protocol.REQUEST_TYPES)


valid_requests = st.sampled_from(sorted(VALID_DATA)).flatmap(
    lambda kind: st.tuples(st.just(kind), request_ids, VALID_DATA[kind])
)


def _mutate_value(draw: st.DrawFn, value: Any) -> Any:
    """One random structural change somewhere in ``value``."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        copy = dict(value)
        how = draw(st.sampled_from(["delete", "replace", "recurse", "add"]))
        if how == "delete":
            del copy[key]
        elif how == "replace":
            copy[key] = draw(json_values)
        elif how == "recurse":
            copy[key] = _mutate_value(draw, copy[key])
        else:
            copy[draw(wild_text)] = draw(json_values)
        return copy
    if isinstance(value, list) and value and draw(st.booleans()):
        index = draw(st.integers(0, len(value) - 1))
        copy_list = list(value)
        copy_list[index] = draw(st.one_of(json_values, st.just(_mutate_value(draw, value[index]))))
        return copy_list
    return draw(
        st.one_of(
            json_values,
            st.just([value]),  # one more level of nesting
            st.just({"x": value}),
            st.just(str(value)),  # a type swap
            st.just(not value) if isinstance(value, bool) else st.just(-1),
        )
    )


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A valid request with one or more mutations, serialized the way Python's json would
    (NaN and Infinity literals and lone surrogates included); sometimes also cut or spliced."""
    kind, request_id, data = draw(valid_requests)
    frame: Any = {"type": kind, "id": request_id, "data": data}
    for _ in range(draw(st.integers(1, 3))):
        frame = _mutate_value(draw, frame)
    text = json.dumps(frame, ensure_ascii=draw(st.booleans()))
    cut = draw(st.sampled_from(["none", "none", "truncate", "splice", "wrap"]))
    if cut == "truncate" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif cut == "splice" and text:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(alphabet=any_char, max_size=5)) + text[at:]
    elif cut == "wrap":
        depth = draw(st.integers(1, 3000))
        text = '{"type":"relay","id":1,"data":' + "[" * depth + text + "]" * depth + "}"
    return text


# --------------------------------------------------------------------------- helpers


def strict(value: Any) -> None:
    """``value`` serializes as strict JSON in UTF-8 with no recursion trouble."""
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def parse_only_violations(parser: Parser, raw: str | bytes) -> Any:
    """Run ``parser``; a ProtocolViolation is fine (returned), anything else fails the test."""
    try:
        frame = parser(raw)
    except ProtocolViolation as exc:
        assert isinstance(exc.code, int)
        assert exc.request_id is None or isinstance(exc.request_id, int | str)
        return exc
    if isinstance(frame, Request | Reply | Event):
        strict(frame.data)
    elif isinstance(frame, Relay):
        strict(frame.payload)
    return frame


def deep_stack(levels: int, then: Callable[[], str]) -> str:
    """Call ``then`` with ``levels`` more Python frames on the stack."""
    if levels == 0:
        return then()
    return deep_stack(levels - 1, then)


# --------------------------------------------------------------------------- properties


@FAST
@given(raw=st.one_of(st.text(alphabet=any_char, max_size=300), st.binary(max_size=300)))
def test_arbitrary_text_and_bytes_only_raise_protocol_violation(raw: str | bytes) -> None:
    """Random text (surrogates included) and bytes: a frame or ProtocolViolation, nothing else."""
    for parser in PARSERS:
        parse_only_violations(parser, raw)


@FAST
@given(value=json_values)
def test_arbitrary_json_documents_only_raise_protocol_violation(value: Any) -> None:
    """Any JSON document Python can write (NaN, huge numbers, surrogates): no other exception."""
    raw = json.dumps(value)
    for parser in PARSERS:
        parse_only_violations(parser, raw)


@SLOW
@given(raw=mutated_frames())
def test_mutated_valid_frames_only_raise_protocol_violation(raw: str) -> None:
    """Valid requests with fields deleted, retyped, added, nested, cut or spliced."""
    for parser in PARSERS:
        result = parse_only_violations(parser, raw)
        if isinstance(result, ProtocolViolation) and result.code == ErrorCode.PARAM_INVALID:
            # A field was refused: the message names the request type or the id.
            assert result.message


@FAST
@given(request=valid_requests)
def test_valid_requests_round_trip(request: tuple[str, int | str, dict[str, Any]]) -> None:
    """``encode_request`` then ``parse_request`` gives back the same request, bytes too."""
    kind, request_id, data = request
    text = protocol.encode_request(kind, request_id, data)
    for raw in (text, text.encode("utf-8")):
        parsed = protocol.parse_request(raw)
        assert parsed == Request(kind, request_id, data)


@FAST
@given(
    request_id=st.one_of(st.none(), request_ids),
    data=st.dictionaries(st.text(max_size=8), plain_json, max_size=4),
    code=st.integers(min_value=-(2**31), max_value=2**31),
    message=st.text(max_size=50),
    name=st.sampled_from(sorted(protocol.EVENT_NAMES)),
    sender=user_ids,
    kind=st.sampled_from(sorted(protocol.RELAY_KINDS)),
    call_id=call_ids,
)
def test_server_frames_round_trip(
    request_id: int | str | None,
    data: dict[str, Any],
    code: int,
    message: str,
    name: str,
    sender: str,
    kind: str,
    call_id: str,
) -> None:
    """Replies (ok and error), events and relays survive encode then ``parse_server_frame``."""
    parse = protocol.parse_server_frame
    assert parse(protocol.encode_reply_ok(request_id, data)) == Reply(request_id, True, data)
    assert parse(protocol.encode_reply_error(request_id, code, message)) == Reply(
        request_id, False, {}, code, message
    )
    assert parse(protocol.encode_event(name, data)) == Event(name, data)
    assert parse(protocol.encode_relay(call_id, sender, kind, data)) == Relay(
        call_id, sender, kind, data
    )


WRONG_VALUES: list[Any] = [None, True, 0, -1, 1.5, 2**64, "", "x", [], ["offer"], {}, {"a": 1}]
FIELDS = [(kind, name) for kind, fields in protocol.REQUEST_TYPES.items() for name in fields]

VALID_EXAMPLE: dict[str, dict[str, Any]] = {
    "login": {"sdkAppId": 1400000001, "userID": "alice", "userSig": "sig",
              "protocolVersion": "1.0"},
    "logout": {},
    "ping": {},
    "calls": {"userIDList": ["bob"], "mediaType": 1},
    **{kind: {"callId": "c1"} for kind in ("accept", "reject", "ignore", "hangup", "join")},
    "invite": {"callId": "c1", "userIDList": ["bob"]},
    "join_in_group_call": {"groupId": "g1", "mediaType": 2},
    "get_group_call": {"groupId": "g1"},
    "get_user_info": {"userIDList": ["bob"]},
    "switch_media_type": {"callId": "c1", "mediaType": 2},
    "media_state": {"callId": "c1"},
    "network_quality": {"callId": "c1", "quality": 2},
    "self_info": {"nickname": "Al"},
    "multi_device": {"enable": True},
    "relay": {"callId": "c1", "to": "bob", "kind": "offer", "payload": {}},
    "query_recent_calls": {},
    "delete_record_calls": {"callIds": ["c1"]},
}
"""One valid ``data`` per request type: the start of each case, so only the target changes."""


def test_valid_examples_are_valid() -> None:
    for kind, data in VALID_EXAMPLE.items():
        assert protocol.parse_request(json.dumps({"type": kind, "id": 1, "data": data}))
    assert set(VALID_EXAMPLE) == set(protocol.REQUEST_TYPES)


@pytest.mark.parametrize(("kind", "name"), FIELDS, ids=[f"{k}.{n}" for k, n in FIELDS])
def test_every_field_with_every_json_type(kind: str, name: str) -> None:
    """Each field of each request type set to a value of every JSON type, in an otherwise
    valid frame (a list for the relay ``kind`` used to raise TypeError: unhashable type):
    the request is accepted with that very value, or refused naming that field. Every field
    refuses some of the values (each case reaches the field it is about)."""
    refused = 0
    for value in WRONG_VALUES:
        data = {**VALID_EXAMPLE[kind], name: value}
        raw = json.dumps({"type": kind, "id": 1, "data": data})
        result = parse_only_violations(protocol.parse_request, raw)
        if isinstance(result, ProtocolViolation):
            refused += 1
            assert result.request_id == 1
            assert result.code == ErrorCode.PARAM_INVALID
            assert f"field {name!r}" in result.message, (value, result.message)
        else:
            assert result.data[name] == value
    assert refused > 0


_AFFIXES = ["\n", "\r\n", "\r", " ", "\t", "\x00", "\u2028", "\x85", "é", "/", "\ufeff"]
near_user_ids = st.tuples(
    st.from_regex(r"[A-Za-z0-9_@.\-]{1,62}", fullmatch=True),
    st.sampled_from(_AFFIXES),
    st.sampled_from(["suffix", "prefix", "inside"]),
).map(lambda t: {"suffix": t[0] + t[1], "prefix": t[1] + t[0],
                 "inside": t[0][:1] + t[1] + t[0][1:]}[t[2]])
"""Valid user ids (at most 62 characters, so the length stays valid) with one character that
is not allowed: a trailing newline ("alice\n" passed ``re.match(r"^...$")``), before, after or
inside."""


@FAST
@given(bad=near_user_ids)
def test_user_id_with_a_stray_character_is_refused_everywhere(bad: str) -> None:
    """Every field holding a user id refuses it, naming the field."""
    cases = {
        "login": ("userID", {**VALID_EXAMPLE["login"], "userID": bad}),
        "relay": ("to", {**VALID_EXAMPLE["relay"], "to": bad}),
        "calls": ("userIDList", {**VALID_EXAMPLE["calls"], "userIDList": ["bob", bad]}),
        "invite": ("userIDList", {**VALID_EXAMPLE["invite"], "userIDList": [bad]}),
        "get_user_info": ("userIDList", {"userIDList": [bad]}),
    }
    for kind, (name, data) in cases.items():
        with pytest.raises(ProtocolViolation) as info:
            protocol.parse_request(json.dumps({"type": kind, "id": 1, "data": data}))
        assert info.value.code == ErrorCode.PARAM_INVALID
        assert f"field {name!r}" in info.value.message
    assert protocol.check_user_id(bad) is not None


# --------------------------------------------------------------------------- decided edge cases

RELAY_PREFIX = '{"type":"relay","id":7,"data":{"callId":"c","to":"bob","kind":"custom","payload":'


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("NaN id", '{"type":"ping","id":NaN}'),
        ("NaN in a relay payload", RELAY_PREFIX + '{"x":NaN}}}'),
        ("Infinity as begin", '{"type":"query_recent_calls","id":1,"data":{"begin":Infinity}}'),
        ("-Infinity as end", '{"type":"query_recent_calls","id":1,"data":{"end":-Infinity}}'),
        ("lone surrogate nickname", '{"type":"self_info","id":1,"data":{"nickname":"\\udc00"}}'),
        ("lone surrogate in a payload", RELAY_PREFIX + '{"sdp":"a\\ud800b"}}}'),
        ("payload nested 40 deep", RELAY_PREFIX + "[" * 40 + "]" * 40 + "}}"),
        ("array nested 50,000 deep", "[" * 50_000 + "]" * 50_000),
        ("object nested 5,000 deep", '{"a":' * 5000 + "1" + "}" * 5000),
        ("invalid UTF-8 bytes", b'{"type":"ping","id":1,"data":{"x":"\xff"}}'),
    ],
)
def test_non_strict_json_is_malformed(name: str, raw: str | bytes) -> None:
    """Decision: NaN/Infinity literals, lone surrogates and deep nesting are refused (4000 or
    4002 when also too large): Python reads them, but they cannot be sent on to a browser
    (JSON.parse refuses NaN, UTF-8 cannot carry a lone surrogate) nor stored in SQLite, and
    re-serializing deep nesting overflows Python's recursion limit."""
    for parser in PARSERS:
        with pytest.raises(ProtocolViolation) as info:
            parser(raw)
        assert info.value.code in (ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE), name


def test_huge_and_non_finite_numbers_in_number_fields() -> None:
    """A ``begin`` too large for a float is PARAM_INVALID, not an overflow in the store."""
    huge = "1" + "0" * 400
    with pytest.raises(ProtocolViolation) as info:
        protocol.parse_request(f'{{"type":"query_recent_calls","id":1,"data":{{"begin":{huge}}}}}')
    assert info.value.code == ErrorCode.PARAM_INVALID
    assert info.value.request_id == 1
    ok = protocol.parse_request('{"type":"query_recent_calls","id":1,"data":{"begin":1e308}}')
    assert math.isfinite(ok.data["begin"])


def test_deepest_accepted_payload_reencodes_on_a_deep_stack() -> None:
    """The deepest payload the parser accepts can be relayed even from deep in the server's
    call stack (a 900-deep payload used to raise RecursionError there)."""
    for depth in range(1, 1000):  # bounded: a parser that never refuses fails, not hangs
        try:
            protocol.parse_request(RELAY_PREFIX + '{"a":' * depth + "1" + "}" * depth + "}}")
        except ProtocolViolation:
            break
    else:
        pytest.fail("a payload nested 1,000 deep was accepted")
    deepest = depth - 1
    assert deepest == protocol.MAX_NESTING - 2  # frame and data are levels 1 and 2
    payload = protocol.parse_request(
        RELAY_PREFIX + '{"a":' * deepest + "1" + "}" * deepest + "}}"
    ).data["payload"]
    levels = sys.getrecursionlimit() - 300
    text = deep_stack(levels, lambda: protocol.encode_relay("c", "alice", "custom", payload))
    assert protocol.parse_server_frame(text) == Relay("c", "alice", "custom", payload)


def test_valid_surrogate_pairs_are_accepted() -> None:
    """An escaped surrogate *pair* is one ordinary character (an emoji) and is fine."""
    request = protocol.parse_request(
        '{"type":"self_info","id":1,"data":{"nickname":"hi \\ud83d\\ude00"}}'
    )
    assert request.data["nickname"] == "hi \U0001f600"
