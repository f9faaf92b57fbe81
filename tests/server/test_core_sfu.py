"""CallCore with SFU instances: which calls get a room, where, who is told, faults."""

from __future__ import annotations

from typing import Any

from callwire.codes import ErrorCode
from signaling_server.core import CoreConfig
from signaling_server.sfu import AllowTokens, CreateRoom, DestroyRoom
from tests.helpers.core import CoreHarness

J1 = "http://127.0.0.1:1/janus"
J2 = "http://127.0.0.1:2/janus"


def setup(*users: str, sfu: tuple[str, ...] = (J1,), **config: Any) -> CoreHarness:
    h = CoreHarness(CoreConfig(sfu=sfu, **config))
    for user in users:
        h.login(user)
    return h


def call(h: CoreHarness, caller: str, *callees: str, **extra: Any) -> str:
    return str(h.request(caller, "calls", userIDList=list(callees), mediaType=2,
                         **extra)["callId"])


def sfu_rooms(h: CoreHarness, user: str) -> list[dict[str, Any]]:
    return [d for n, d in h.events(user) if n == "SFU_ROOM"]


def test_without_an_sfu_group_calls_stay_peer_to_peer() -> None:
    h = setup("A", "B", "C", sfu=())
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    assert h.sfu == []
    assert "SFU_ROOM" not in h.names("A") + h.names("B")


def test_one_to_one_calls_stay_peer_to_peer() -> None:
    h = setup("A", "B")
    call_id = call(h, "A", "B")
    h.request("B", "accept", callId=call_id)
    assert h.sfu == []
    assert "SFU_ROOM" not in h.names("A") + h.names("B")


def test_a_group_call_gets_a_room_and_each_member_its_own_token() -> None:
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    [create] = h.sfu
    assert isinstance(create, CreateRoom)
    assert (create.instance, create.call_id, create.epoch) == (J1, call_id, 1)
    [room_a] = sfu_rooms(h, "A")
    assert room_a == {"callId": call_id, "url": J1, "room": create.room, "pin": create.pin,
                      "token": create.tokens[0], "epoch": 1}
    assert create.tokens == (room_a["token"],)  # only the caller has joined yet
    assert len(create.secret) >= 16 and create.secret not in (create.pin, room_a["token"])

    h.request("B", "accept", callId=call_id)
    allow = h.sfu[1]
    assert isinstance(allow, AllowTokens) and allow.remove == ()
    events_b = h.events("B")
    names_b = [n for n, _ in events_b]
    # The SFU room comes before any USER_ENTER: the client must not start mesh media.
    assert names_b.index("SFU_ROOM") < names_b.index("USER_ENTER")
    room_b = next(d for n, d in events_b if n == "SFU_ROOM")
    assert allow.add == (room_b["token"],)
    assert room_b["token"] != room_a["token"]
    assert (room_b["room"], room_b["pin"]) == (room_a["room"], room_a["pin"])
    assert "SFU_ROOM" not in h.names("A")  # A's room did not change


def test_threshold_of_users_at_the_start() -> None:
    h = setup("A", "B", "C", "D", sfu_min_users=4)
    call(h, "A", "B", "C")
    assert h.sfu == []
    h.request("A", "hangup", callId=h.core.user_call("A"))
    call(h, "A", "B", "C", "D")
    assert [type(o) for o in h.sfu] == [CreateRoom]


def test_leaving_revokes_the_token_and_the_end_destroys_the_room() -> None:
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    h.request("C", "accept", callId=call_id)
    room_c = sfu_rooms(h, "C")[0]
    h.request("C", "hangup", callId=call_id)
    revoke = h.sfu[-1]
    assert isinstance(revoke, AllowTokens) and revoke.remove == (room_c["token"],)
    h.request("B", "hangup", callId=call_id)
    destroy = h.sfu[-1]
    assert isinstance(destroy, DestroyRoom)
    create = h.sfu[0]
    assert isinstance(create, CreateRoom)
    assert (destroy.instance, destroy.room, destroy.secret) == (J1, create.room, create.secret)


def test_rooms_go_to_the_least_loaded_instance() -> None:
    h = setup("A", "B", "C", "D", "E", "F", sfu=(J1, J2))
    first = call(h, "A", "B", "C")
    h.request("B", "accept", callId=first)
    call(h, "D", "E", "F")
    creates = [o for o in h.sfu if isinstance(o, CreateRoom)]
    assert [c.instance for c in creates] == [J1, J2]


def test_an_instance_down_moves_its_calls_without_anyone_leaving() -> None:
    h = setup("A", "B", "C", sfu=(J1, J2))
    call_id = call(h, "A", "B", "C")
    for user in ("B", "C"):
        h.request(user, "accept", callId=call_id)
    tokens = {u: sfu_rooms(h, u)[0]["token"] for u in ("A", "B", "C")}
    h.core.sfu_room_ready(call_id, 1, h.now)
    h.feed(h.core.sfu_instance_down(J1, h.now))
    move = h.sfu[-1]
    assert isinstance(move, CreateRoom)
    assert (move.instance, move.epoch) == (J2, 2)
    assert sorted(move.tokens) == sorted(tokens.values())
    for user in ("A", "B", "C"):
        events = h.events(user)
        assert [n for n, _ in events] == ["SFU_ROOM"]  # no USER_LEAVE, no end
        assert events[0][1]["url"] == J2 and events[0][1]["epoch"] == 2
        assert events[0][1]["token"] == tokens[user]


def test_the_only_instance_down_then_up_recreates_the_room_there() -> None:
    h = setup("A", "B", "C", sfu_wait_s=10.0)
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    h.core.sfu_room_ready(call_id, 1, h.now)
    h.events("A")
    h.events("B")
    h.feed(h.core.sfu_instance_down(J1, h.now))
    assert [o.epoch for o in h.sfu if isinstance(o, CreateRoom)] == [1]  # nowhere to go
    assert h.names("A") == [] and h.names("B") == []
    h.advance(5)
    h.feed(h.core.sfu_instance_up(J1, h.now))
    recreate = h.sfu[-1]
    assert isinstance(recreate, CreateRoom) and (recreate.instance, recreate.epoch) == (J1, 2)
    assert h.names("A") == ["SFU_ROOM"] and h.names("B") == ["SFU_ROOM"]
    h.advance(10)  # the wait timer finds a room: nothing ends
    assert h.core.user_call("A") == call_id


def test_no_instance_back_in_time_ends_the_call_with_sfu_unavailable() -> None:
    h = setup("A", "B", "C", sfu_wait_s=10.0)
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    h.core.sfu_room_ready(call_id, 1, h.now)
    h.events("A")
    h.events("B")
    h.events("C")
    h.feed(h.core.sfu_instance_down(J1, h.now))
    h.advance(10)
    for user in ("A", "B"):
        events = h.events(user)
        assert [n for n, _ in events] == ["ERROR", "CALLING_END"]
        assert events[0][1]["code"] == ErrorCode.SFU_UNAVAILABLE
        assert events[1][1]["reason"] == "interrupted"
    assert [n for n, _ in h.events("C")] == ["ERROR", "ON_CALL_CANCELED"]
    assert h.core.user_call("A") is None
    assert h.records[call_id].result == "interrupt"


def test_a_room_that_cannot_be_created_at_the_start_ends_the_call_at_once() -> None:
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.events("B")
    h.feed(h.core.sfu_room_failed(call_id, 1, h.now))
    events = h.events("A")
    assert [n for n, _ in events] == ["SFU_ROOM", "ERROR", "ON_CALL_CANCELED"]
    assert events[1][1]["code"] == ErrorCode.SFU_UNAVAILABLE
    assert "--sfu" in events[1][1]["msg"]
    assert [n for n, _ in h.events("B")] == ["ERROR", "ON_CALL_CANCELED"]
    assert h.core.user_call("A") is None and h.core.user_call("B") is None


def test_a_failed_room_tries_the_other_instance_first() -> None:
    h = setup("A", "B", "C", sfu=(J1, J2))
    call_id = call(h, "A", "B", "C")
    h.events("A")
    h.feed(h.core.sfu_room_failed(call_id, 1, h.now))
    retry = h.sfu[-1]
    assert isinstance(retry, CreateRoom) and (retry.instance, retry.epoch) == (J2, 2)
    assert [d["epoch"] for d in sfu_rooms(h, "A")] == [2]
    # A late failure of the first attempt changes nothing.
    h.feed(h.core.sfu_room_failed(call_id, 1, h.now))
    assert h.sfu[-1] is retry


def test_a_member_who_reconnects_is_told_the_room_again() -> None:
    h = setup("A", "B", "C")
    call_id = call(h, "A", "B", "C")
    h.request("B", "accept", callId=call_id)
    room_b = sfu_rooms(h, "B")[0]
    h.disconnect("B")
    h.login("B")
    assert sfu_rooms(h, "B") == [room_b]
