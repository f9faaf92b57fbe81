"""CallCore failover snapshots: every change seen (take_changed_calls), the snapshot format,
export → restore round trips, and a restored core behaving as after dropped connections.

The cores here are :class:`CheckedCore`: after every input (as the cluster's leader does after
every step) it takes the changed calls and compares the full export with the previous one, so
each scenario below (and the random sequences of :class:`SnapshotMachine`) proves that no
change of a call goes unreported.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from callwire import protocol
from callwire.enums import CallRole, CallScene
from signaling_server import core as core_module
from signaling_server import sfu as sfu_module
from signaling_server.callmodel import Call, Member
from signaling_server.core import CallCore, CoreConfig, LoadProfile, Output
from signaling_server.groups import Group, GroupDirectory
from signaling_server.sfu import AllowTokens, CreateRoom, DestroyRoom, SfuRoom
from signaling_server.snapshot import (
    SNAPSHOT_VERSION,
    SnapshotError,
    call_from_snapshot,
    call_to_snapshot,
)
from tests.helpers.core import APP_ID, CoreHarness
from tests.server.test_core_invariants import USERS, CoreMachine, picks

J1 = "http://127.0.0.1:1/janus"
J2 = "http://127.0.0.1:2/janus"


class CheckedCore(CallCore):
    """A core that, after each input, checks what ``take_changed_calls`` reports against
    two full exports: every call whose snapshot differs is reported with its new snapshot,
    every call gone is reported ended, nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.previous: dict[str, dict[str, Any]] = {}
        self.last_take: tuple[dict[str, dict[str, Any]], list[str]] = ({}, [])
        self.steps = 0
        self.quiet_steps = 0
        self.spurious = 0
        """Calls reported changed whose snapshot was the same (allowed: a no-op write)."""
        self.all_ended: list[str] = []
        self.all_changed: set[str] = set()

    def check(self) -> None:
        changed, ended = self.last_take = self.take_changed_calls()
        export = self.export_calls()
        for call_id, snap in export.items():
            if snap != self.previous.get(call_id):
                assert call_id in changed, (
                    f"call {call_id} changed unreported:\n{self.previous.get(call_id)}\n{snap}")
            elif call_id in changed:
                self.spurious += 1
        for call_id, snap in changed.items():
            assert snap == export.get(call_id), f"reported call {call_id} is not as exported"
            assert json.loads(json.dumps(snap)) == snap  # JSON types only
        assert len(ended) == len(set(ended)), ended
        assert set(ended) == set(self.previous) - set(export), (ended, set(self.previous))
        self.previous = export
        self.all_ended += ended
        self.all_changed |= set(changed)
        self.steps += 1
        self.quiet_steps += not changed and not ended

    def _checked(self, outputs: list[Output]) -> list[Output]:
        self.check()
        return outputs

    def open(self, conn: int, now: float, client_ip: str = "") -> list[Output]:
        return self._checked(super().open(conn, now, client_ip))

    def receive(self, conn: int, raw: str | bytes, now: float) -> list[Output]:
        return self._checked(super().receive(conn, raw, now))

    def closed(self, conn: int, now: float) -> list[Output]:
        return self._checked(super().closed(conn, now))

    def tick(self, now: float) -> list[Output]:
        return self._checked(super().tick(now))

    def profile_loaded(self, user_id: str, nickname: str, avatar: str,
                       now: float) -> list[Output]:
        return self._checked(super().profile_loaded(user_id, nickname, avatar, now))

    def sfu_room_ready(self, call_id: str, epoch: int, now: float) -> list[Output]:
        return self._checked(super().sfu_room_ready(call_id, epoch, now))

    def sfu_room_failed(self, call_id: str, epoch: int, now: float) -> list[Output]:
        return self._checked(super().sfu_room_failed(call_id, epoch, now))

    def sfu_instance_down(self, instance: str, now: float) -> list[Output]:
        return self._checked(super().sfu_instance_down(instance, now))

    def sfu_instance_up(self, instance: str, now: float) -> list[Output]:
        return self._checked(super().sfu_instance_up(instance, now))

    def shutdown(self, now: float) -> list[Output]:
        return self._checked(super().shutdown(now))

    def restore_calls(self, snapshots: Iterable[Mapping[str, Any]],
                      now: float) -> list[Output]:
        return self._checked(super().restore_calls(snapshots, now))


def checked(h: CoreHarness) -> CheckedCore:
    assert isinstance(h.core, CheckedCore)
    return h.core


def harness(*users: str, **config: Any) -> CoreHarness:
    groups = GroupDirectory([Group("g1", "", 0.0, dict.fromkeys(
        ("alice", "bob", "carol", "dave", "erin"), 0.0))])
    h = CoreHarness(CoreConfig(**config), groups=groups, core_class=CheckedCore)
    for user in users:
        h.login(user)
    return h


def call(h: CoreHarness, caller: str, *callees: str, **extra: Any) -> str:
    extra.setdefault("mediaType", 2)
    return str(h.request(caller, "calls", userIDList=list(callees), **extra)["callId"])


def changed_now(h: CoreHarness) -> set[str]:
    """The calls the last input reported changed or ended."""
    changed, ended = checked(h).last_take
    return set(changed) | set(ended)


def drain(h: CoreHarness) -> None:
    for conn in h.inbox:
        h.inbox[conn].clear()


# --------------------------------------------------------------------------- completeness


def test_one_to_one_outcomes_are_all_reported() -> None:
    """Accept, reject, cancel, timeout, busy, hangup: each step that changes a call reports
    it (CheckedCore checks every step); requests that change nothing report nothing."""
    h = harness("alice", "bob", "carol", "dave")
    core = checked(h)
    accepted = call(h, "alice", "bob")
    assert changed_now(h) == {accepted}
    h.request("dave", "ping")
    assert changed_now(h) == set()
    h.request("bob", "accept", callId=accepted)
    assert changed_now(h) == {accepted}
    busy = call(h, "carol", "bob")  # bob is busy: the call ends in the step it started
    assert changed_now(h) == set() and busy not in h.core.active_calls
    quiet: list[tuple[str, dict[str, Any]]] = [
        ("relay", {"to": "bob", "kind": "offer", "payload": {"sdp": "x"}}),
        ("network_quality", {"quality": 2}),
        ("media_state", {}),
    ]
    for kind, data in quiet:
        h.request("alice", kind, callId=accepted, **data)
        assert changed_now(h) == set(), kind
    h.request("alice", "media_state", callId=accepted, camera=False)
    assert changed_now(h) == {accepted}
    h.request("alice", "media_state", callId=accepted, camera=False)  # the same again
    assert changed_now(h) == set()
    h.request("bob", "switch_media_type", callId=accepted, mediaType=1)
    assert changed_now(h) == {accepted}
    h.request("bob", "hangup", callId=accepted)
    assert core.last_take == ({}, [accepted])

    rejected = call(h, "carol", "dave")
    h.request("dave", "reject", callId=rejected)
    assert core.last_take == ({}, [rejected])
    canceled = call(h, "carol", "dave")
    h.advance(1)
    h.request("carol", "hangup", callId=canceled)
    assert core.last_take == ({}, [canceled])
    timed_out = call(h, "carol", "dave", timeout=5)
    h.advance(4.9)
    assert timed_out in h.core.active_calls
    h.advance(0.1)
    assert timed_out not in h.core.active_calls
    ignored = call(h, "carol", "dave")
    h.request("dave", "ignore", callId=ignored)
    assert ignored not in h.core.active_calls
    assert core.spurious == 0
    assert core.quiet_steps > 0


def test_group_calls_invite_join_and_leave_are_reported() -> None:
    """A group call: mixed answers, an invitation mid-call, a group member joining
    uninvited, a re-invitation, leaving, media state: every step checked."""
    h = harness("alice", "bob", "carol", "dave", "erin")
    call_id = call(h, "alice", "bob", "carol", groupId="g1", timeout=10)
    h.request("bob", "accept", callId=call_id)
    h.request("carol", "reject", callId=call_id)
    h.request("alice", "invite", callId=call_id, userIDList=["dave"], timeout=5)
    assert changed_now(h) == {call_id}
    h.request("erin", "join_in_group_call", groupId="g1", mediaType=2)
    assert changed_now(h) == {call_id}
    h.request("alice", "invite", callId=call_id, userIDList=["carol"])
    h.request("carol", "accept", callId=call_id)
    h.request("carol", "media_state", callId=call_id, camera=True, microphone=False)
    h.request("erin", "get_group_call", groupId="g1")
    assert changed_now(h) == set()
    h.advance(6)  # dave's ring timed out
    assert h.core.active_calls[call_id].members["dave"].state == "timeout"
    h.request("erin", "hangup", callId=call_id)
    h.request("alice", "self_info", nickname="Al")  # a profile change: not call state
    assert changed_now(h) == set()
    for user in ("alice", "bob"):
        h.request(user, "hangup", callId=call_id)
    assert call_id not in h.core.active_calls
    assert checked(h).last_take == ({}, [call_id])


def test_connection_loss_grace_reconnect_kick_and_logout_are_reported() -> None:
    h = harness("alice", "bob", "carol")
    call_id = call(h, "alice", "bob", "carol")
    h.request("bob", "accept", callId=call_id)
    h.disconnect("bob")
    assert changed_now(h) == {call_id}  # bob detached: conn and grace deadline
    h.advance(1)
    h.login("bob")
    assert changed_now(h) == {call_id}  # resumed on the new connection
    h.login("bob")  # kicks the older connection: the call moves to the new one
    h.disconnect("carol")  # ringing: nothing of the call changes
    assert changed_now(h) == set()
    h.login("carol")
    h.request("carol", "logout")
    assert changed_now(h) == set()
    h.disconnect("alice")
    h.advance(3)  # alice's grace is over: she leaves; bob and the ringing carol go on
    assert h.core.active_calls[call_id].members["alice"].state == "left"
    h.request("bob", "logout")  # leaves: only carol ringing is left, the call ends
    assert call_id not in h.core.active_calls


def test_sfu_rooms_are_reported() -> None:
    """SFU calls: the room, its epoch, readiness, instance moves and tokens are call state."""
    h = harness("alice", "bob", "carol", "dave", sfu=(J1, J2))
    call_id = call(h, "alice", "bob", "carol")
    [create] = h.sfu
    assert isinstance(create, CreateRoom)
    h.feed(h.core.sfu_room_ready(call_id, create.epoch, h.now))
    assert changed_now(h) == {call_id}
    h.feed(h.core.sfu_room_ready(call_id, create.epoch, h.now))  # again: no change
    assert changed_now(h) == set()
    h.request("bob", "accept", callId=call_id)  # a new token
    h.feed(h.core.sfu_instance_down(create.instance, h.now))
    assert changed_now(h) == {call_id}
    room = h.core.active_calls[call_id].sfu
    assert room is not None and room.instance == J2
    h.feed(h.core.sfu_instance_up(J1, h.now))  # the room stays where it is
    assert changed_now(h) == set()
    h.feed(h.core.sfu_room_failed(call_id, room.epoch, h.now))
    assert changed_now(h) == {call_id}
    assert room.instance == J1
    h.request("bob", "hangup", callId=call_id)  # bob's token revoked
    h.request("carol", "accept", callId=call_id)
    h.request("alice", "hangup", callId=call_id)
    assert call_id not in h.core.active_calls
    assert checked(h).spurious == 0


def test_shutdown_reports_every_call_ended() -> None:
    h = harness("alice", "bob", "carol", "dave")
    first = call(h, "alice", "bob")
    second = call(h, "carol", "dave")
    h.shutdown()
    assert sorted(checked(h).all_ended) == sorted([first, second])


class SnapshotMachine(CoreMachine):
    """The invariants machine's random sequences on a CheckedCore with an SFU, plus SFU
    events and failovers (the calls restored into a fresh core; everyone's connection gone)."""

    def _harness(self) -> CoreHarness:
        return CoreHarness(CoreConfig(sfu=(J1, J2)), core_class=CheckedCore)

    @rule(pick=picks, what=st.sampled_from(["ready", "failed", "down", "up"]))
    def sfu_event(self, pick: int, what: str) -> None:
        h = self.h
        rooms = [(c.call_id, c.sfu) for c in h.core.active_calls.values() if c.sfu is not None]
        instance = (J1, J2)[pick % 2]
        if what == "down":
            h.feed(h.core.sfu_instance_down(instance, h.now))
        elif what == "up":
            h.feed(h.core.sfu_instance_up(instance, h.now))
        elif rooms:
            call_id, room = rooms[pick % len(rooms)]
            epoch = room.epoch - (pick % 3 == 2)  # sometimes a stale attempt
            if what == "ready":
                h.feed(h.core.sfu_room_ready(call_id, epoch, h.now))
            else:
                h.feed(h.core.sfu_room_failed(call_id, epoch, h.now))

    @precondition(lambda self: bool(self.h.core.active_calls))
    @rule(back=st.lists(st.sampled_from(USERS), unique=True),
          delay=st.sampled_from([0.0, 0.5, 2.0, 4.0]))
    def failover(self, back: list[str], delay: float) -> None:
        """The calls move to a fresh core; the users in ``back`` log in again ``delay``
        seconds later (the others come back later or never)."""
        h = self.h
        snapshots = [json.loads(json.dumps(s)) for s in h.core.export_calls().values()]
        before = {call_id: call.members.keys() for call_id, call in h.core.active_calls.items()}
        # The old core is gone with every connection (closed 1012 by the nodes).
        h.open_conns.clear()
        h.conn_user.clear()
        h.user_conn.clear()
        h.core = CheckedCore(h.sdk_app_id, h.core._verify_sig, h.core.config, h.core.groups)
        h.feed(h.core.restore_calls(snapshots, h.now))
        assert {c: call.members.keys() for c, call in h.core.active_calls.items()} == before
        h.advance(delay)
        for user in back:
            h.login(user)


TestSnapshotMachine = SnapshotMachine.TestCase
TestSnapshotMachine.settings = settings(max_examples=300, stateful_step_count=40,
                                        deadline=None)


# --------------------------------------------------------------------------- the format


def test_snapshots_carry_every_field_of_call_member_and_room() -> None:
    """A snapshot names every dataclass field (a field added later must be carried or this
    fails) and reads back equal, with values other than the defaults."""
    room = SfuRoom("http://sfu/janus", 123, "secret", "pin", epoch=3,
                   tokens={"a": "ta", "b": "tb"}, ready=True)
    members = {
        "a": Member("a", CallRole.CALLER, "joined", 0.0, 7, True, True, False, "ua"),
        "b": Member("b", CallRole.CALLED, "ringing", 99.5, None, False, None, True, "ub"),
        "c": Member("c", CallRole.CALLED, "busy"),
    }
    original = Call("cid", 1400000001, "a", 1, "room-x", "g", "ud", CallScene.GROUP_CALL,
                    12.25, members, accept_ts=13.5, canceled=True, interrupted=True,
                    group_verified=True, sfu=room)
    snap = call_to_snapshot(original)
    assert set(snap) == {f.name for f in dataclasses.fields(Call)} | {"version"}
    assert snap["version"] == SNAPSHOT_VERSION
    for item in snap["members"]:
        assert set(item) == {f.name for f in dataclasses.fields(Member)}
    assert set(snap["sfu"]) == {f.name for f in dataclasses.fields(SfuRoom)}
    text = json.dumps(snap)
    restored = call_from_snapshot(json.loads(text))
    assert restored == original
    assert list(restored.members) == ["a", "b", "c"]
    assert call_to_snapshot(restored) == snap


def _populated(flip: bool) -> Call:
    """A call, its members and room with every field set; ``flip`` gives other values."""
    room = SfuRoom("http://sfu-b/janus" if flip else "http://sfu/janus", 2 if flip else 1,
                   "s2" if flip else "s1", "p2" if flip else "p1", epoch=5 if flip else 4,
                   tokens={"a": "t2" if flip else "t1"}, ready=flip)
    member = Member("a" if flip else "z", CallRole.CALLED if flip else CallRole.CALLER,
                    "left" if flip else "joined", 2.0 if flip else 1.0, 8 if flip else 7,
                    flip, flip, not flip, "u2" if flip else "u1")
    return Call("c2" if flip else "c1", 2 if flip else 1, "y" if flip else "x", 2 if flip else 1,
                "r2" if flip else "r1", "g2" if flip else "g1", "d2" if flip else "d1",
                CallScene.GROUP_CALL if flip else CallScene.SINGLE_CALL, 2.0 if flip else 1.0,
                {member.user_id: member}, accept_ts=2.0 if flip else None, canceled=flip,
                interrupted=flip, group_verified=flip, sfu=room)


def test_every_field_assignment_of_a_watched_call_is_reported() -> None:
    """Assigning any field of a watched call, of one of its members or of its room a new
    value calls the call's watcher once; the same value again does not; an unwatched call
    reports nothing; members and tokens added or removed are reported."""
    seen: list[str] = []
    call = _populated(False)
    other = _populated(True)
    call.watch(lambda: seen.append("changed"))
    [member] = call.members.values()
    [other_member] = other.members.values()
    assert call.sfu is not None and other.sfu is not None
    pairs: list[tuple[Any, Any, type]] = [(member, other_member, Member),
                                          (call.sfu, other.sfu, SfuRoom)]
    pairs.append((call, other, Call))  # last: it replaces the room and the members
    for target, source, kind in pairs:
        if kind is Call:  # the room was made equal to other's field by field just before
            source.sfu = SfuRoom("http://sfu-c/janus", 3, "s3", "p3", tokens={"a": "t3"})
        for f in dataclasses.fields(kind):
            seen.clear()
            setattr(target, f.name, getattr(source, f.name))
            assert seen == ["changed"], (kind.__name__, f.name)
            setattr(target, f.name, getattr(target, f.name))
            assert seen == ["changed"], (kind.__name__, f.name, "same value")
    # The members and room taken over from ``other`` report to this call now.
    seen.clear()
    call.members["a"].camera = None
    assert call.sfu is not None
    call.sfu.tokens["b"] = "tb"
    del call.sfu.tokens["b"]
    call.members["new"] = Member("new", CallRole.CALLED, "busy")
    call.members.pop("new")
    assert seen == ["changed"] * 5
    call.watch(None)
    call.members["a"].state = "joined"
    assert seen == ["changed"] * 5


def _valid() -> dict[str, Any]:
    h = harness("alice", "bob")
    call_id = call(h, "alice", "bob")
    return h.core.export_calls()[call_id]


def _broken() -> list[tuple[str, Any]]:
    def edit(change: Any) -> dict[str, Any]:
        snap = _valid()
        change(snap)
        return snap

    return [
        ("not an object", ["a list"]),
        ("version", edit(lambda s: s.update(version=2))),
        ("no version", edit(lambda s: s.pop("version"))),
        ("missing field", edit(lambda s: s.pop("start_ts"))),
        ("call id type", edit(lambda s: s.update(call_id=5))),
        ("empty call id", edit(lambda s: s.update(call_id=""))),
        ("bool as int", edit(lambda s: s.update(media_type=True))),
        ("nan", edit(lambda s: s.update(start_ts=float("nan")))),
        ("scene", edit(lambda s: s.update(scene=99))),
        ("room id", edit(lambda s: s.update(room_id=[1]))),
        ("members type", edit(lambda s: s.update(members={}))),
        ("member type", edit(lambda s: s["members"].append("x"))),
        ("member state", edit(lambda s: s["members"][1].update(state="dancing"))),
        ("member role", edit(lambda s: s["members"][1].update(role=7))),
        ("member conn", edit(lambda s: s["members"][0].update(conn="1"))),
        ("member camera", edit(lambda s: s["members"][0].update(camera=1))),
        ("member twice", edit(lambda s: s["members"].append(dict(s["members"][1])))),
        ("no caller member", edit(lambda s: s.update(caller="zed"))),
        ("sfu type", edit(lambda s: s.update(sfu="room"))),
        ("sfu tokens", edit(lambda s: s.update(sfu={
            "instance": None, "room": 1, "secret": "s", "pin": "p", "epoch": 0,
            "tokens": {"a": 1}, "ready": False}))),
        ("other sdkappid", edit(lambda s: s.update(sdk_app_id=1))),
    ]


def test_malformed_snapshots_are_skipped_with_a_logged_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each broken snapshot is skipped (logged); the good ones of the batch are adopted."""
    broken = _broken()
    good = _valid()
    h = harness()
    with caplog.at_level(logging.ERROR, logger="signaling_server.core"):
        h.feed(h.core.restore_calls([b for _, b in broken] + [good], h.now))
    assert list(h.core.active_calls) == [good["call_id"]]
    skipped = [r for r in caplog.records if "call snapshot skipped" in r.getMessage()]
    assert len(skipped) == len(broken)
    assert all(r.exc_info is None for r in skipped)  # each a SnapshotError, none a crash
    # A call already here, or a user already in another call, clashes.
    again = dict(good)
    clash = json.loads(json.dumps(good))
    clash["call_id"] = "other"
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="signaling_server.core"):
        h.feed(h.core.restore_calls([again, clash], h.now))
    assert list(h.core.active_calls) == [good["call_id"]]
    messages = [r.getMessage() for r in caplog.records]
    assert any("already in progress" in m for m in messages), messages
    assert any("already in call" in m for m in messages), messages


@pytest.mark.parametrize(("label", "snap"), _broken())
def test_reading_a_malformed_snapshot_raises_snapshot_error(label: str, snap: Any) -> None:
    if label == "other sdkappid":
        call_from_snapshot(snap)  # well formed; refused by the core, not the reader
        return
    with pytest.raises(SnapshotError):
        call_from_snapshot(snap)


# --------------------------------------------------------------------------- round trip


def _mixed_calls() -> CoreHarness:
    """Calls in many states at once: connected, ringing, a group with a detached member and
    media state, an SFU room ready and one still being created."""
    h = harness("alice", "bob", "carol", "dave", "erin", "fred", "gina", "hank",
                sfu=(J1,), sfu_min_users=3)
    one = call(h, "alice", "bob", roomId={"strRoomId": "r1"}, groupId="g1")
    h.request("bob", "accept", callId=one)
    h.request("bob", "media_state", callId=one, camera=True)
    call(h, "carol", "dave", mediaType=1, timeout=20)  # ringing
    group = call(h, "erin", "fred", "gina", userData="x")  # an SFU room
    h.feed(h.core.sfu_room_ready(group, 1, h.now))
    h.request("fred", "accept", callId=group)
    h.request("gina", "reject", callId=group)
    h.advance(2)
    h.disconnect("fred")  # detached, in grace
    call(h, "hank", "x1", "x2")  # an SFU room not ready yet; offline invitees
    h.advance(1)
    return h


def test_export_restore_export_round_trip() -> None:
    """Restored calls export as they were, but for the documented changes: every joined
    member unbound (conn None) in a grace from the restore; ringing deadlines kept; a room
    not ready yet re-created (epoch + 1)."""
    h = _mixed_calls()
    original = h.core.export_calls()
    h2 = harness(sfu=(J1,), sfu_min_users=3)
    h2.now = h.now + 0.5
    outputs = h2.feed(h2.core.restore_calls(json.loads(json.dumps(list(original.values()))),
                                            h2.now))
    again = h2.core.export_calls()
    assert list(again) == list(original)
    expected = json.loads(json.dumps(original))
    for snap in expected.values():
        for member in snap["members"]:
            if member["state"] == "joined":
                member["conn"] = None
                member["deadline"] = h2.now + 3.0
        room = snap["sfu"]
        if room is not None and not room["ready"]:
            room["epoch"] += 1
    assert again == expected
    # Restored calls are reported changed at once (the new leader writes them back).
    assert checked(h2).all_changed == set(original)
    # The ready room's tokens are allowed again; the other is destroyed and created anew.
    ready = next(s["sfu"] for s in original.values() if s["sfu"] and s["sfu"]["ready"])
    pending = next(s["sfu"] for s in original.values() if s["sfu"] and not s["sfu"]["ready"])
    assert [o for o in outputs if not isinstance(o, LoadProfile)] == [
        AllowTokens(J1, ready["room"], ready["secret"], add=tuple(ready["tokens"].values())),
        DestroyRoom(J1, pending["room"], pending["secret"]),
        CreateRoom(J1, next(c for c, s in original.items() if s["sfu"] is pending),
                   pending["epoch"] + 1, pending["room"], pending["secret"], pending["pin"],
                   tuple(pending["tokens"].values()), protocol.MAX_PARTICIPANTS),
    ]
    # Each user in a call has their profile read (what the others are shown of them).
    assert sorted(o.user_id for o in outputs if isinstance(o, LoadProfile)) == [
        "alice", "bob", "carol", "dave", "erin", "fred", "hank", "x1", "x2"]
    # Busy and grouped as before.
    for user in ("alice", "bob", "carol", "dave", "erin", "fred", "hank", "x1"):
        assert h2.core.user_call(user) == h.core.user_call(user), user
    assert h2.core.user_call("gina") is None


# --------------------------------------------------------------------------- failover


class Chance:
    """Stands in for ``uuid`` and ``secrets`` in the core and the SFU rooms: the same values
    for the same action in both twins (new call ids, room ids, tokens)."""

    def __init__(self) -> None:
        self.counter = itertools.count()

    def reset(self, seed: int) -> None:
        self.counter = itertools.count(seed * 1000)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=next(self.counter))

    def randbelow(self, n: int) -> int:
        return next(self.counter) % n

    def token_urlsafe(self, n: int) -> str:
        return f"token-{next(self.counter)}"


class Twins:
    """The same call state twice: ``dropped`` is the original core where every connection
    dropped at once, ``restored`` a fresh core that adopted the original's snapshots at that
    moment. Every action goes to both; what the users, the records and the webhooks see
    afterwards must be the same."""

    def __init__(self, h: CoreHarness, monkeypatch: pytest.MonkeyPatch, **config: Any) -> None:
        self.chance = Chance()
        self.actions = itertools.count(1)
        for module in (core_module, sfu_module):
            if hasattr(module, "uuid"):
                monkeypatch.setattr(module, "uuid", self.chance)
            monkeypatch.setattr(module, "secrets", self.chance)
        snapshots = json.loads(json.dumps(list(h.core.export_calls().values())))
        self.dropped = h
        self.restored = harness(**config)
        self.restored.now = h.now
        self.restored.profiles = dict(h.profiles)  # the shared profile store
        for conn in sorted(h.open_conns):
            h.disconnect(conn)
        self.restore_outputs = self.restored.feed(
            self.restored.core.restore_calls(snapshots, h.now))
        drain(h)
        self.saves_before = len(h.saves)
        self.notices_before = len(h.notices)

    @property
    def both(self) -> tuple[CoreHarness, CoreHarness]:
        return self.dropped, self.restored

    def same(self, what: str, fn: Any) -> Any:
        seed = next(self.actions)
        results = []
        for h in self.both:
            self.chance.reset(seed)
            results.append(fn(h))
        a, b = results
        assert a == b, f"{what}: dropped {a!r} != restored {b!r}"
        return a

    def login(self, user: str) -> dict[str, Any]:
        reply: dict[str, Any] = self.same(f"login {user}", lambda h: h.login(user))
        return reply

    def request(self, user: str, kind: str, /, **data: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self.same(kind, lambda h: h.request(user, kind, **data))
        return reply

    def events(self, user: str) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = self.same(
            f"events of {user}", lambda h: h.events(user))
        return events

    def advance(self, seconds: float) -> None:
        def advance(h: CoreHarness) -> None:
            h.advance(seconds)  # its outputs name connections, which differ

        self.same(f"advance {seconds}", advance)

    def records(self) -> list[Any]:
        """The records saved since the split (the same in both)."""
        saves: list[Any] = self.same("records", lambda h: h.saves[
            self.saves_before if h is self.dropped else 0:])
        return saves

    def notices(self) -> list[Any]:
        notices: list[Any] = self.same("notices", lambda h: h.notices[
            self.notices_before if h is self.dropped else 0:])
        return notices


def test_failover_of_a_call_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both users log in again on new connections: the same resume as after a reconnect
    (activeCall), the call goes on (media state, relay), the hangup ends it with the same
    record; the peer saw nothing of the failover."""
    h = harness("alice", "bob", "carol")
    call_id = call(h, "alice", "bob", roomId={"intRoomId": 42})
    h.advance(2)
    h.request("bob", "accept", callId=call_id)
    h.request("alice", "media_state", callId=call_id, camera=False)
    h.advance(10)
    t = Twins(h, monkeypatch)
    assert t.restore_outputs == [LoadProfile(APP_ID, "alice"), LoadProfile(APP_ID, "bob")]
    t.advance(1)
    reply = t.login("alice")
    assert reply["activeCall"] == {
        "callId": call_id, "roomID": 42, "callMediaType": 2, "callRole": "caller",
        "userIDList": ["alice", "bob"], "startTime": h.records[call_id].accept_ts,
    }
    t.advance(1)
    assert t.login("bob")["activeCall"]["callRole"] == "called"
    assert t.events("alice") == [] and t.events("bob") == []
    t.advance(10)  # well past the grace: nobody is removed
    assert t.events("alice") == [] and t.events("bob") == []
    t.request("alice", "relay", callId=call_id, to="bob", kind="offer", payload={"sdp": "v"})
    assert t.events("bob") == [("relay", {"callId": call_id, "from": "alice",
                                          "kind": "offer", "payload": {"sdp": "v"}})]
    t.login("carol")
    t.request("carol", "calls", userIDList=["bob"], mediaType=1)  # bob is busy
    assert [n for n, _ in t.events("carol")] == ["LINE_BUSY", "ON_CALL_CANCELED"]
    t.request("bob", "hangup", callId=call_id)
    assert [n for n, _ in t.events("alice")] == ["USER_LEAVE", "CALLING_END"]
    records = t.records()
    final = [r for r in records if r.call_id == call_id]
    assert [r.result for r in final] == ["normal_end"]
    assert final[0].end_ts == final[0].accept_ts + 22
    assert [n.event for n in t.notices() if n.call.call_id == call_id] == ["call_end",
                                                                           "call_end"]
    assert call_id not in t.restored.core.active_calls


def test_failover_of_a_ringing_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The invitee logging in gets the invitation again (the same as after a dropped
    connection: the caller's nickname too, though the caller has not logged in again yet);
    the caller comes back within the grace; the ring timeout fires once, at the original
    deadline."""
    h = harness("bob")
    h.login("alice", nickname="Alice")
    call_id = call(h, "alice", "bob", mediaType=1, timeout=20)
    start = h.now
    h.advance(5)
    t = Twins(h, monkeypatch)
    t.advance(1)
    t.login("bob")
    [(name, invitation)] = t.events("bob")
    assert name == "ON_CALL_RECEIVED" and invitation["callId"] == call_id
    assert invitation["timeout"] == 20
    assert invitation["sponsorNickname"] == "Alice"
    t.advance(1)
    assert t.login("alice")["activeCall"]["callId"] == call_id
    t.advance(12.9)
    assert t.events("alice") == [] and call_id in t.restored.core.active_calls
    t.advance(0.2)
    assert [n for n, _ in t.events("alice")] == ["NO_RESP", "ON_CALL_CANCELED"]
    assert [n for n, _ in t.events("bob")] == ["ON_CALL_CANCELED"]
    assert [r.result for r in t.records() if r.result] == ["not_answer"]
    t.advance(30)
    timeouts = [n for n in t.notices() if n.event == "not_answer_call"]
    assert [n.event_time for n in timeouts] == [start + 20]
    assert t.events("alice") == [] and t.events("bob") == []


def test_failover_ringing_call_accepted_after_the_caller_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness("alice", "bob")
    call_id = call(h, "alice", "bob")
    t = Twins(h, monkeypatch)
    t.login("alice")
    t.login("bob")
    assert [n for n, _ in t.events("bob")] == ["ON_CALL_RECEIVED"]
    t.request("bob", "accept", callId=call_id)
    assert [n for n, _ in t.events("alice")] == ["USER_ACCEPT", "ON_CALL_BEGIN", "USER_ENTER"]
    t.advance(30)
    assert call_id in t.restored.core.active_calls


def test_failover_member_who_never_returns_is_removed_after_the_grace_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group call: two come back, one never does: after the grace the others get
    USER_LEAVE(offline) once, the same notices and record as after a dropped connection;
    a caller who never returns to a ringing call interrupts it."""
    h = harness("alice", "bob", "carol", "dave", "erin")
    group = call(h, "alice", "bob", "carol")
    h.request("bob", "accept", callId=group)
    h.request("carol", "accept", callId=group)
    ringing = call(h, "dave", "erin")
    h.advance(5)
    t = Twins(h, monkeypatch)
    t.advance(1)
    t.login("alice")
    t.login("bob")
    t.login("erin")
    assert [n for n, _ in t.events("erin")] == ["ON_CALL_RECEIVED"]
    t.advance(1.9)
    assert t.events("alice") == [] and t.events("erin") == []
    t.advance(0.1)
    assert t.events("alice") == [("USER_LEAVE", {"callId": group, "userID": "carol",
                                                 "reason": "offline"})]
    assert [(n, d["reason"]) for n, d in t.events("erin")] == [
        ("ON_CALL_CANCELED", "interrupted")]
    assert [n for n, _ in t.events("bob")] == ["USER_LEAVE"]
    t.advance(30)
    assert t.events("alice") == [] and t.events("bob") == []
    notices = [(n.event, n.user_id) for n in t.notices()]
    assert notices.count(("call_interrupted", "carol")) == 1
    assert [r.result for r in t.records() if r.result] == ["interrupt"]  # the ringing call
    assert group in t.restored.core.active_calls
    t.request("alice", "hangup", callId=group)
    assert [r.result for r in t.records() if r.result] == ["interrupt", "interrupt"]
    assert ringing not in t.restored.core.active_calls


def test_failover_of_an_sfu_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SFU call restored: each member's login brings the room back (SFU_ROOM, same
    epoch and token), the room's tokens are allowed again."""
    h = harness("alice", "bob", "carol", sfu=(J1,))
    call_id = call(h, "alice", "bob", "carol")
    h.feed(h.core.sfu_room_ready(call_id, 1, h.now))
    h.request("bob", "accept", callId=call_id)
    t = Twins(h, monkeypatch, sfu=(J1,))
    room = t.restored.core.active_calls[call_id].sfu
    assert room is not None
    assert [o for o in t.restore_outputs if not isinstance(o, LoadProfile)] == [
        AllowTokens(J1, room.room, room.secret, add=tuple(room.tokens.values()))]
    t.login("alice")
    t.login("bob")
    [sfu_room] = [d for n, d in t.events("bob") if n == "SFU_ROOM"]
    assert sfu_room["epoch"] == 1 and sfu_room["token"] == room.tokens["bob"]
    t.login("carol")
    assert [n for n, _ in t.events("carol")] == ["ON_CALL_RECEIVED"]
    t.request("carol", "accept", callId=call_id)
    t.request("alice", "hangup", callId=call_id)
    t.request("bob", "hangup", callId=call_id)  # carol is left alone: the call ends
    assert [r.result for r in t.records() if r.result] == ["normal_end"]
    assert t.restored.sfu[-1] == DestroyRoom(J1, room.room, room.secret)


def test_a_caller_invited_back_after_leaving_is_restored() -> None:
    """The caller left and was invited back (their member is now a called one ringing):
    still a valid call to restore (found by SnapshotMachine)."""
    h = harness("alice", "bob", "carol")
    call_id = call(h, "alice", "bob", "carol")
    h.request("bob", "accept", callId=call_id)
    h.request("carol", "accept", callId=call_id)
    h.request("alice", "hangup", callId=call_id)
    h.request("bob", "invite", callId=call_id, userIDList=["alice"])
    snap = h.core.export_calls()[call_id]
    assert snap["caller"] == "alice"
    assert snap["members"][0]["role"] == int(CallRole.CALLED)
    h2 = harness()
    h2.feed(h2.core.restore_calls([snap], h2.now))
    assert list(h2.core.active_calls) == [call_id]
    h2.login("alice")
    assert h2.names("alice") == ["ON_CALL_RECEIVED"]


def test_restored_room_waiting_for_an_instance_is_placed() -> None:
    """A room whose instance died and that waits for one is placed at once in the new core
    (its pool counts every instance up); the call goes on."""
    h = harness("alice", "bob", "carol", sfu=(J1,))
    call_id = call(h, "alice", "bob", "carol")
    h.feed(h.core.sfu_room_ready(call_id, 1, h.now))
    h.request("bob", "accept", callId=call_id)
    h.feed(h.core.sfu_instance_down(J1, h.now))
    snap = h.core.export_calls()[call_id]
    assert snap["sfu"]["instance"] is None and snap["sfu"]["epoch"] == 1
    h2 = harness(sfu=(J1,))
    outputs = h2.feed(h2.core.restore_calls([snap], h2.now))
    [create] = [o for o in outputs if not isinstance(o, LoadProfile)]
    assert isinstance(create, CreateRoom)
    assert (create.instance, create.epoch, create.room) == (J1, 2, snap["sfu"]["room"])
    assert sorted(create.tokens) == sorted(snap["sfu"]["tokens"].values())
    h2.login("alice")
    h2.login("bob")
    h2.advance(30)  # past sfu_wait_s: the placed call does not end
    assert call_id in h2.core.active_calls


def test_failover_keeps_busy_and_group_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restored members are busy for other callers before they log in again, and a group's
    call is still the group's call (get_group_call, join_in_group_call)."""
    h = harness("alice", "bob", "carol", "dave")
    call_id = call(h, "alice", "bob", groupId="g1")
    h.request("bob", "accept", callId=call_id)
    t = Twins(h, monkeypatch)
    t.login("carol")
    t.request("carol", "calls", userIDList=["alice"], mediaType=1)
    assert [n for n, _ in t.events("carol")] == ["LINE_BUSY", "ON_CALL_CANCELED"]
    got = t.request("carol", "get_group_call", groupId="g1")
    assert got["call"]["callId"] == call_id
    t.login("alice")
    t.login("dave")
    t.request("dave", "join_in_group_call", groupId="g1", mediaType=2)
    assert [n for n, _ in t.events("alice")] == ["USER_ENTER"]
