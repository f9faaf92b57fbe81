"""CallCore invariants under random sequences of requests, clock advances, disconnects and
logins by five users (hypothesis stateful testing)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from signaling_server.core import Send
from tests.helpers.core import CoreHarness

USERS = ("u0", "u1", "u2", "u3", "u4")
users = st.sampled_from(USERS)
picks = st.integers(min_value=0, max_value=10_000)
RINGING_OR_JOINED = ("ringing", "joined")


F = TypeVar("F", bound=Callable[..., None])


def someone(*states: str) -> Callable[[F], F]:
    """Precondition: some user's state in their call is one of ``states``."""

    def check(machine: CoreMachine) -> bool:
        return any(machine._state(u) in states for u in USERS)

    return precondition(check)


class CoreMachine(RuleBasedStateMachine):
    """Five users doing random (mostly valid) things; invariants checked after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.h = self._harness()
        self.call_ids: list[str] = []
        for user in USERS:
            self.h.login(user)

    # ------------------------------------------------------------------ helpers

    def _harness(self) -> CoreHarness:
        """The harness the machine drives (a subclass may give its core more checks)."""
        return CoreHarness()

    def _state(self, user: str) -> str | None:
        call_id = self.h.core.user_call(user)
        if call_id is None:
            return None
        return self.h.core.active_calls[call_id].members[user].state

    def _actor(self, pick: int, *states: str | None) -> str:
        """A logged-in user, mostly one whose state in their call is one of ``states``
        (None: in no call); sometimes anyone."""
        online = [u for u in USERS if u in self.h.user_conn] or list(USERS)
        fitting = [u for u in online if self._state(u) in states]
        pool = fitting if fitting and pick % 5 != 4 else online
        return pool[pick % len(pool)]

    def _call_id(self, user: str, pick: int) -> str:
        """Mostly the user's own call, else a recent call (maybe ended) or a bogus id."""
        current = self.h.core.user_call(user)
        if current is not None and pick % 7 != 6:
            return current
        choices = [*reversed(self.call_ids[-4:]), "no-such-call"]
        return choices[pick % len(choices)]

    def _request(self, user: str, kind: str, data: dict[str, Any]) -> dict[str, Any] | None:
        if user not in self.h.user_conn:
            return None
        return self.h.request_frame(user, kind, data)  # asserts exactly one reply, first

    def _call_request(self, pick: int, kind: str, states: tuple[str | None, ...], /,
                      **data: Any) -> None:
        user = self._actor(pick, *states)
        self._request(user, kind, {"callId": self._call_id(user, pick), **data})

    # ------------------------------------------------------------------ rules

    @rule(user=users, multi=st.booleans())
    def login(self, user: str, multi: bool) -> None:
        self.h.login(user, multiDevice=multi)

    @rule(pick=picks)
    def logout(self, pick: int) -> None:
        user = self._actor(pick, "ringing", "joined")
        if user in self.h.user_conn:
            self.h.request(user, "logout")

    @rule(pick=picks)
    def disconnect(self, pick: int) -> None:
        user = self._actor(pick, "ringing", "joined")
        if user in self.h.user_conn:
            self.h.disconnect(user)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.h.advance(seconds)

    @rule(
        pick=picks,
        callees=st.lists(users, min_size=1, max_size=4, unique=True),
        media=st.sampled_from([1, 2]),
        timeout=st.integers(min_value=1, max_value=12),
        group=st.booleans(),
    )
    def calls(self, pick: int, callees: list[str], media: int, timeout: int,
              group: bool) -> None:
        user = self._actor(pick, None)
        callees = [c for c in callees if c != user] or [c for c in USERS if c != user][:1]
        data: dict[str, Any] = {"userIDList": callees, "mediaType": media, "timeout": timeout}
        if group:
            data["groupId"] = "g1"
        reply = self._request(user, "calls", data)
        if reply is not None and reply["ok"]:
            self.call_ids.append(reply["data"]["callId"])

    @someone("ringing")
    @rule(pick=picks, kind=st.sampled_from(["accept", "accept", "join", "reject", "ignore"]))
    def answer(self, pick: int, kind: str) -> None:
        self._call_request(pick, kind, ("ringing",))

    @someone("joined")
    @rule(pick=picks, kind=st.sampled_from(["hangup", "join", "accept"]))
    def leave_or_rejoin(self, pick: int, kind: str) -> None:
        self._call_request(pick, kind, ("joined", None))

    @someone("joined")
    @rule(pick=picks, count=st.integers(min_value=1, max_value=3),
          timeout=st.integers(min_value=1, max_value=12))
    def invite(self, pick: int, count: int, timeout: int) -> None:
        user = self._actor(pick, "joined")
        call = self.h.core.active_calls.get(self.h.core.user_call(user) or "")
        outside = [u for u in USERS if call is None or u not in call.members
                   or call.members[u].state not in RINGING_OR_JOINED]
        invitees = (outside if pick % 6 else list(USERS))[:count] or [USERS[pick % 5]]
        self._request(user, "invite", {"callId": self._call_id(user, pick),
                                       "userIDList": invitees, "timeout": timeout})

    @someone("joined")
    @rule(pick=picks, media=st.sampled_from([1, 2]))
    def switch(self, pick: int, media: int) -> None:
        self._call_request(pick, "switch_media_type", ("joined",), mediaType=media)

    @someone("joined")
    @rule(pick=picks, to=users,
          kind=st.sampled_from(["offer", "answer", "candidate", "keepalive", "custom"]))
    def relay(self, pick: int, to: str, kind: str) -> None:
        user = self._actor(pick, "joined")
        call = self.h.core.active_calls.get(self.h.core.user_call(user) or "")
        peers = [u for u in USERS if call is not None and u != user and u in call.members
                 and call.members[u].state == "joined"]
        if peers and pick % 6:
            to = peers[pick % len(peers)]
        self._request(user, "relay", {"callId": self._call_id(user, pick), "to": to,
                                      "kind": kind, "payload": {"n": pick}})

    @someone("joined")
    @rule(pick=picks, camera=st.booleans(), microphone=st.booleans())
    def media_state(self, pick: int, camera: bool, microphone: bool) -> None:
        self._call_request(pick, "media_state", ("joined",), camera=camera,
                           microphone=microphone)

    @someone("joined")
    @rule(pick=picks, quality=st.integers(min_value=0, max_value=6))
    def network_quality(self, pick: int, quality: int) -> None:
        self._call_request(pick, "network_quality", ("joined",), quality=quality)

    @rule(pick=picks, nickname=st.sampled_from(["x", "y"]))
    def self_info(self, pick: int, nickname: str) -> None:
        self._request(self._actor(pick, "ringing", "joined"), "self_info",
                      {"nickname": nickname})

    # ------------------------------------------------------------------ invariants

    @invariant()
    def outputs_of_the_last_step_are_addressed_right(self) -> None:
        """Relays go to the joined member bound to that connection; call events go only to
        members of the call (as its latest record lists them)."""
        h = self.h
        records = h.records
        for out in h.last_outputs:
            if not isinstance(out, Send):
                continue
            body = json.loads(out.text)
            owner = h.conn_owner.get(out.conn)
            if body["type"] == "relay":
                call = h.core.active_calls[body["data"]["callId"]]
                member = call.members.get(owner or "")
                assert member is not None, body
                assert member.state == "joined" and member.conn == out.conn, body
                assert body["data"]["from"] != owner
            elif body["type"] == "event" and "callId" in body["data"]:
                assert owner is not None, body
                call_id = body["data"]["callId"]
                assert call_id in records, body
                assert owner in records[call_id].participants, (owner, body)

    @invariant()
    def no_stray_replies(self) -> None:
        """Every reply was the reply of a request (request_frame removed it)."""
        for conn in list(self.h.inbox):
            frames = self.h.inbox[conn]
            assert all(f.body["type"] != "reply" for f in frames), frames
            frames.clear()

    @invariant()
    def nobody_in_two_calls(self) -> None:
        """A user rings or is joined in at most one active call, and user_call agrees."""
        core = self.h.core
        for user in USERS:
            in_calls = [
                call_id
                for call_id, call in core.active_calls.items()
                if user in call.members and call.members[user].state in RINGING_OR_JOINED
            ]
            assert len(in_calls) <= 1, (user, in_calls)
            assert core.user_call(user) == (in_calls[0] if in_calls else None), (user, in_calls)

    @invariant()
    def ended_calls_have_one_final_record(self) -> None:
        """A call that left active_calls has exactly one final SaveCall (non-empty result),
        and it is the last one; an active call has none."""
        finals: dict[str, int] = {}
        last: dict[str, str] = {}
        for save in self.h.saves:
            last[save.call_id] = save.result
            if save.result:
                finals[save.call_id] = finals.get(save.call_id, 0) + 1
        for call_id in last:
            if call_id in self.h.core.active_calls:
                assert finals.get(call_id, 0) == 0, call_id
            else:
                assert finals.get(call_id) == 1, call_id
                assert last[call_id] != "", call_id
        for call_id in self.call_ids:
            assert call_id in last

    @invariant()
    def notices_name_participants(self) -> None:
        """Every webhook notice is about a participant of its call."""
        for notice in self.h.notices:
            assert notice.user_id in notice.call.participants
        self.h.notices.clear()


TestCoreInvariants = CoreMachine.TestCase
TestCoreInvariants.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
