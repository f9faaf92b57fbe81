"""Group calls through three and four CallEngines: callbacks in order, invites, full mesh media."""

from __future__ import annotations

import asyncio

from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Tone
from callclient.types import CallMediaType, CallParams, CallRole, CallStatus
from tests.helpers.engine import (
    MakeParty,
    Party,
    eventually,
    frames_advance,
    recent_audio,
    tone_levels,
)

VIDEO = CallMediaType.VIDEO
AVAILABILITY = ["on_user_audio_available", "on_user_video_available"]
"""About a member who just joined: its microphone, then its camera, as it reports them."""
CURRENT_STATE = ["on_user_video_available", "on_user_audio_available"]
"""What a late joiner learns about each member already joined (protocol order: video, audio)."""


async def three(make_party: MakeParty) -> tuple[Party, Party, Party]:
    """alice, bob and carol logged in."""
    return (await make_party("alice"), await make_party("bob"), await make_party("carol"))


async def group_ring(caller: Party, callees: list[Party], ring_s: int = 30) -> str:
    """``caller`` group-calls ``callees``; returns the call id once every callee rings."""
    ids = [p.user_id for p in callees]
    call_id = await caller.engine.calls(ids, VIDEO, CallParams(timeout=ring_s))
    for callee in callees:
        event = await callee.rec.wait_for("on_call_received")
        assert event.args == (caller.user_id, ids, "", VIDEO)
    return call_id


async def test_one_accepts_one_rejects(make_party: MakeParty) -> None:
    """B accepts, C rejects: A and B connect and both hear of C's reject; A's hangup ends it."""
    alice, bob, carol = await three(make_party)
    await group_ring(alice, [bob, carol])

    await bob.engine.accept()
    await alice.rec.wait_names(["on_call_begin", "on_user_join", *AVAILABILITY])
    await bob.rec.wait_names(["on_call_received", "on_call_begin", "on_user_join", *AVAILABILITY])
    assert alice.rec.find("on_user_join", "bob") is not None
    assert bob.rec.find("on_user_join", "alice") is not None
    assert carol.rec.names() == ["on_call_received"], "a ringing invitee hears of no accept"

    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    await carol.engine.reject()
    await carol.rec.wait_names(["on_call_received", "on_call_cancelled"])
    assert carol.rec.signal()[-1].args == ("carol",)
    await alice.rec.wait_names(["on_user_reject"], start=mark_a)
    await bob.rec.wait_names(["on_user_reject"], start=mark_b)
    assert alice.rec.signal()[-1].args == ("carol",) == bob.rec.signal()[-1].args
    call = alice.engine.current_call
    assert call is not None and call.status is CallStatus.ACCEPT, "two joined: the call goes on"

    await alice.engine.hangup()
    await alice.rec.wait_names(["on_user_reject", "on_call_end"], start=mark_a)
    await bob.rec.wait_names(["on_user_reject", "on_user_leave", "on_call_end"], start=mark_b)
    leave, end = bob.rec.signal()[-2:]
    assert leave.args == ("alice",)
    assert end.args[1:3] == (VIDEO, CallRole.CALLED)


async def test_one_accepts_one_times_out(make_party: MakeParty) -> None:
    """C does not answer: A and B get on_user_no_response(C); C's invitation is cancelled."""
    alice, bob, carol = await three(make_party)
    await group_ring(alice, [bob, carol], ring_s=2)
    await bob.engine.accept()
    await alice.rec.wait_names(
        ["on_call_begin", "on_user_join", *AVAILABILITY, "on_user_no_response"]
    )
    await bob.rec.wait_names(
        ["on_call_received", "on_call_begin", "on_user_join", *AVAILABILITY,
         "on_user_no_response"]
    )
    assert alice.rec.signal()[-1].args == ("carol",) == bob.rec.signal()[-1].args
    await carol.rec.wait_names(["on_call_received", "on_call_cancelled"])
    assert carol.rec.signal()[-1].args == ("carol",)
    assert carol.engine.current_call is None
    assert alice.engine.current_call is not None


async def test_all_accept_and_leave_one_by_one(make_party: MakeParty) -> None:
    """Three joined: a late joiner learns of both others; the call ends when one remains."""
    alice, bob, carol = await three(make_party)
    await bob.engine.open_camera()
    await group_ring(alice, [bob, carol])
    await bob.engine.accept()
    await alice.rec.wait_names(["on_call_begin", "on_user_join", *AVAILABILITY])
    await bob.rec.wait_names(["on_call_received", "on_call_begin", "on_user_join", *AVAILABILITY])

    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    await carol.engine.accept()
    # The joiner learns of each joined member and its media state, then hears of nothing else.
    await carol.rec.wait_names(
        ["on_call_received", "on_call_begin",
         "on_user_join", *CURRENT_STATE, "on_user_join", *CURRENT_STATE]
    )
    assert [e.args[0] for e in carol.rec.events if e.name == "on_user_join"] == ["alice", "bob"]
    await alice.rec.wait_names(["on_user_join", *AVAILABILITY], start=mark_a)
    await bob.rec.wait_names(["on_user_join", *AVAILABILITY], start=mark_b)
    assert alice.rec.signal(mark_a)[0].args == ("carol",) == bob.rec.signal(mark_b)[0].args

    # The caller leaves: two are still joined, so the call goes on.
    mark_b, mark_c = bob.rec.mark(), carol.rec.mark()
    await alice.engine.hangup()
    await alice.rec.wait_for("on_call_end", start=mark_a)
    await bob.rec.wait_names(["on_user_leave"], start=mark_b)
    await carol.rec.wait_names(["on_user_leave"], start=mark_c)
    assert bob.engine.current_call is not None and carol.engine.current_call is not None

    await frames_advance(carol.view_of("bob"))

    await bob.engine.hangup()
    await bob.rec.wait_names(["on_user_leave", "on_call_end"], start=mark_b)
    await carol.rec.wait_names(["on_user_leave", "on_user_leave", "on_call_end"], start=mark_c)
    assert carol.rec.signal()[-2].args == ("bob",)
    assert carol.engine.current_call is None


async def test_invite_mid_call_then_join_by_call_id(make_party: MakeParty) -> None:
    """A 1v1 call invites C, who joins by call id: everyone meets C and C's video arrives."""
    alice, bob, carol = await three(make_party)
    await carol.engine.open_camera()
    call_id = await alice.engine.call("bob", VIDEO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    await alice.rec.wait_names(["on_call_begin", "on_user_join", *AVAILABILITY])
    await bob.rec.wait_names(["on_call_received", "on_call_begin", "on_user_join", *AVAILABILITY])

    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    invited = await bob.engine.invite_user(["carol"])
    assert invited == ["carol"]
    received = await carol.rec.wait_for("on_call_received")
    assert received.args == ("alice", ["bob", "carol"], "", VIDEO)

    await carol.engine.join(call_id)
    await carol.rec.wait_names(
        ["on_call_received", "on_call_begin",
         "on_user_join", *CURRENT_STATE, "on_user_join", *CURRENT_STATE]
    )
    begin = carol.rec.find("on_call_begin")
    assert begin is not None and begin.args[1:] == (VIDEO, CallRole.CALLED)
    for member, mark in ((alice, mark_a), (bob, mark_b)):
        await member.rec.wait_names(["on_user_join", *AVAILABILITY], start=mark)
        assert member.rec.signal(mark)[0].args == ("carol",)
        assert member.rec.find("on_user_video_available", "carol", True, start=mark) is not None
    await frames_advance(alice.view_of("carol"))
    await frames_advance(bob.view_of("carol"))


async def test_four_people_everyone_receives_everyone(make_party: MakeParty) -> None:
    """Four in a mesh: each gets every other's video (counters advance) and audio (tones)."""
    # No sum, difference or third-order product of three of these lands within 100 Hz of the
    # fourth, so codec distortion cannot fake a user hearing its own tone.
    tones = {"alice": 400.0, "bob": 900.0, "carol": 1500.0, "dave": 1600.0}
    parties = [
        await make_party(
            user, devices=DeviceSet.virtual(user, fps=10.0, program=Tone(freq, 0.2))
        )
        for user, freq in tones.items()
    ]
    caller, callees = parties[0], parties[1:]
    for party in parties:
        await party.engine.open_camera()
    await group_ring(caller, callees)
    for callee in callees:
        await callee.engine.accept()
    views = {
        (p.user_id, q.user_id): p.view_of(q.user_id)
        for p in parties for q in parties if p is not q
    }
    for party in parties:

        def sees_all_join(party: Party = party) -> bool:
            joined = {e.args[0] for e in party.rec.events if e.name == "on_user_join"}
            return joined == {q.user_id for q in parties if q is not party}

        await eventually(sees_all_join, f"{party.user_id} sees all three others join")
    await asyncio.gather(*(frames_advance(view, frames=5) for view in views.values()))

    for party in parties:
        heard = [tones[q.user_id] for q in parties if q is not party]

        def hears_all(party: Party = party, heard: list[float] = heard) -> bool:
            levels = tone_levels(recent_audio(party.speaker().samples(), 1.0), heard)
            return all(level > 0.2 for level in levels.values())

        await eventually(hears_all, f"{party.user_id} hears the tones {heard}")
        stats = party.engine.remote_stats
        assert set(stats) == {q.user_id for q in parties if q is not party}
        assert all(s.audio_blocks > 0 and s.video_frames > 0 for s in stats.values())

    # A whole window of steady mixing (no stream start-up in it): nobody hears its own tone.
    await asyncio.sleep(1.0)
    for party in parties:
        freq = tones[party.user_id]
        own = tone_levels(recent_audio(party.speaker().samples(), 1.0), [freq])[freq]
        assert own < 0.05, f"{party.user_id} hears its own tone (level {own:.3f})"
