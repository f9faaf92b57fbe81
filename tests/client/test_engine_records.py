"""query_recent_calls and delete_record_calls through the engine after real calls."""

from __future__ import annotations

from callclient.types import (
    CallMediaType,
    CallParams,
    CallResultType,
    CallRole,
    CallScene,
    RecentCallsFilter,
)
from tests.helpers.engine import MakeParty, Party, connect


async def answered_then_hung_up(alice: Party, bob: Party) -> str:
    """A connected audio call alice makes and hangs up; its call id."""
    call_id = await connect(alice, bob, CallMediaType.AUDIO)
    mark = bob.rec.mark()
    await alice.engine.hangup()
    await bob.rec.wait_for("on_call_end", start=mark)
    return call_id


async def test_records_after_calls(make_party: MakeParty) -> None:
    """An answered and a rejected call: each side's role, result type and end, newest first."""
    alice, bob = await make_party("alice"), await make_party("bob")
    answered = await answered_then_hung_up(alice, bob)

    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    rejected = await alice.engine.call("bob", CallMediaType.VIDEO)
    await bob.rec.wait_for("on_call_received", start=mark_b)
    await bob.engine.reject()
    await alice.rec.wait_for("on_call_cancelled", start=mark_a)

    mine = await alice.engine.query_recent_calls()
    assert [r.call_id for r in mine] == [rejected, answered]
    assert all(r.role is CallRole.CALLER and r.result is CallResultType.OUTGOING for r in mine)
    assert [r.call_result for r in mine] == ["reject", "normal_end"]
    assert [r.media_type for r in mine] == [CallMediaType.VIDEO, CallMediaType.AUDIO]
    assert all(r.inviter == "alice" and r.invite_list == ["bob"] for r in mine)
    assert all(r.scene is CallScene.SINGLE_CALL for r in mine)
    assert mine[0].total_time == 0

    theirs = {r.call_id: r for r in await bob.engine.query_recent_calls()}
    assert set(theirs) == {answered, rejected}
    assert theirs[answered].role is CallRole.CALLED
    assert theirs[answered].result is CallResultType.INCOMING

    outgoing = RecentCallsFilter(result_type=CallResultType.OUTGOING)
    assert [r.call_id for r in await bob.engine.query_recent_calls(outgoing)] == []


async def test_missed_call_record(make_party: MakeParty) -> None:
    """A call the callee never answers is missed for it and not_answer for both."""
    alice, bob = await make_party("alice"), await make_party("bob")
    call_id = await alice.engine.call("bob", CallMediaType.AUDIO, CallParams(timeout=1))
    await bob.rec.wait_for("on_call_cancelled")
    await alice.rec.wait_for("on_call_cancelled")
    missed = RecentCallsFilter(result_type=CallResultType.MISSED)
    records = await bob.engine.query_recent_calls(missed)
    assert [(r.call_id, r.role, r.call_result) for r in records] == [
        (call_id, CallRole.CALLED, "not_answer")
    ]


async def test_delete_records(make_party: MakeParty) -> None:
    """Deleting a record hides it from the deleter only; unknown ids are not reported deleted."""
    alice, bob = await make_party("alice"), await make_party("bob")
    first = await answered_then_hung_up(alice, bob)
    second = await answered_then_hung_up(alice, bob)

    deleted = await alice.engine.delete_record_calls([first, "no-such-call"])
    assert deleted == [first]
    assert [r.call_id for r in await alice.engine.query_recent_calls()] == [second]
    assert {r.call_id for r in await bob.engine.query_recent_calls()} == {first, second}
