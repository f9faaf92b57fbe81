"""Typed server events and replies: each parses to its dataclass; a malformed one is a
ProtocolViolation naming the event and the field, never a KeyError.

(Every event the server core sends in its own tests goes through the same parser:
``tests/helpers/core.py``.)"""

from __future__ import annotations

from typing import Any

import pytest

from callwire import messages as ev
from callwire.codes import ErrorCode
from callwire.enums import CallMediaType, NetworkQuality
from callwire.protocol import Event, ProtocolViolation

VALID: list[tuple[str, dict[str, Any], object]] = [
    ("ON_CALL_RECEIVED",
     {"callId": "c", "sponsor": "a", "userIDList": ["b"], "groupID": "g", "callMediaType": 2,
      "roomID": 5, "userData": "u", "sponsorNickname": "Al"},
     ev.OnCallReceived("c", "a", ["b"], "g", CallMediaType.VIDEO, 5, "u", "Al", "")),
    ("ON_CALL_CANCELED", {"callId": "c", "userID": "b", "reason": "timeout"},
     ev.OnCallCanceled("c", "b", "", "timeout")),
    ("ON_CALL_BEGIN", {"callId": "c", "roomID": "r", "callMediaType": 1},
     ev.OnCallBegin("c", "r", CallMediaType.AUDIO)),
    ("CALLING_END", {"callId": "c", "userID": "a", "totalTime": 12, "reason": "hangup"},
     ev.CallingEnd("c", "a", 12.0, "hangup")),
    ("USER_ENTER", {"callId": "c", "userID": "b"}, ev.UserEnter("c", "b", "", "")),
    ("USER_LEAVE", {"callId": "c", "userID": "b"}, ev.UserLeave("c", "b", "")),
    ("NO_RESP", {"callId": "c", "userIDList": ["b", "d"]}, ev.NoResp("c", ["b", "d"])),
    ("CALL_TYPE_CHANGED", {"callId": "c", "oldCallType": 2, "newCallType": 1},
     ev.CallTypeChanged("c", CallMediaType.VIDEO, CallMediaType.AUDIO, "")),
    ("USER_AUDIO_AVAILABLE", {"callId": "c", "userID": "b", "isAudioAvailable": False},
     ev.UserAudioAvailable("c", "b", False)),
    ("ON_USER_NETWORK_QUALITY_CHANGED",
     {"callId": "c", "networkQualityList": [{"userID": "b", "quality": 3}]},
     ev.OnUserNetworkQualityChanged("c", [("b", NetworkQuality.POOR)])),
    ("ERROR", {"code": 4503, "msg": "bye"}, ev.ErrorEvent(4503, "bye")),
    ("KICKED_OUT", {"userID": "a"}, ev.KickedOut("")),
]


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
def test_events_parse_to_their_dataclass(name: str, data: dict[str, Any], expected: object) -> None:
    """Each event's fields land in its dataclass; optional ones default."""
    assert ev.parse_event(Event(name, data)) == expected


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("ON_CALL_RECEIVED", {"callId": "c", "sponsor": "a", "callMediaType": 3}, "callMediaType"),
    ("ON_CALL_RECEIVED", {"callId": "c", "callMediaType": 2}, "sponsor"),
    ("ON_CALL_BEGIN", {"roomID": 1, "callMediaType": 1}, "callId"),
    ("ON_CALL_BEGIN", {"callId": "c", "roomID": [1], "callMediaType": 1}, "roomID"),
    ("USER_ENTER", {"callId": "c", "userID": ""}, "userID"),
    ("USER_ENTER", {"callId": "c", "userID": 7}, "userID"),
    ("CALLING_END", {"callId": "c", "totalTime": "long"}, "totalTime"),
    ("USER_VIDEO_AVAILABLE", {"callId": "c", "userID": "b", "isVideoAvailable": 1},
     "isVideoAvailable"),
    ("NO_RESP", {"callId": "c", "userIDList": "b"}, "userIDList"),
    ("ON_USER_NETWORK_QUALITY_CHANGED",
     {"callId": "c", "networkQualityList": [{"userID": "b", "quality": 9}]}, "quality"),
    ("GROUP_CALL_INVITEE_LIST_UPDATE", {"callId": "c"}, "userIDList"),
]


@pytest.mark.parametrize(("name", "data", "field"), MALFORMED,
                         ids=[f"{m[0]}-{m[2]}" for m in MALFORMED])
def test_malformed_events_name_the_event_and_field(name: str, data: dict[str, Any],
                                                  field: str) -> None:
    """A wrong or missing field raises ProtocolViolation (4000) naming event and field."""
    with pytest.raises(ProtocolViolation) as caught:
        ev.parse_event(Event(name, data))
    assert caught.value.code == ErrorCode.MALFORMED_FRAME
    assert name in caught.value.message and repr(field) in caught.value.message


def test_unknown_events_are_kept_not_refused() -> None:
    """A newer server's event parses to UnknownEvent with its data."""
    assert ev.parse_event(Event("FUTURE_THING", {"x": 1})) == ev.UnknownEvent(
        "FUTURE_THING", {"x": 1})


def test_replies_parse_and_refuse() -> None:
    """The replies the client reads parse to values; a malformed one names its field."""
    assert ev.parse_call_created_reply({"callId": "c", "roomID": 3}) == ev.CallCreatedReply(
        "c", 3, [])
    assert ev.parse_joined_reply(
        {"callId": "c", "roomID": "r", "callMediaType": 2, "userIDList": ["a", "b"]}
    ) == ev.JoinedReply("c", "r", CallMediaType.VIDEO, ["a", "b"])
    assert ev.parse_invited_reply({"userIDList": ["d"], "busyUserIDList": ["e"]}) == (
        ev.InvitedReply(["d"], ["e"]))
    with pytest.raises(ProtocolViolation, match="'callId'"):
        ev.parse_call_created_reply({"roomID": 3})
    with pytest.raises(ProtocolViolation, match="'callMediaType'"):
        ev.parse_joined_reply({"callId": "c"})
