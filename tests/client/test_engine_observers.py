"""Observers: one that raises is logged and harms nothing; engine.events() is an async iterator."""

from __future__ import annotations

import asyncio
import logging

import pytest

from callclient.observer import CallEvent, CallObserver
from callclient.types import CallMediaType, CallRole, RoomId
from tests.helpers.engine import MakeParty
from tests.helpers.waits import T


class Exploding(CallObserver):
    """An observer whose every callback it implements raises."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_call_received(
        self, caller_id: str, callee_id_list: list[str], group_id: str,
        call_media_type: CallMediaType,
    ) -> None:
        self.calls.append("on_call_received")
        raise RuntimeError("boom in on_call_received")

    def on_call_begin(
        self, room_id: RoomId, call_media_type: CallMediaType, call_role: CallRole
    ) -> None:
        self.calls.append("on_call_begin")
        raise ValueError("boom in on_call_begin")


async def test_raising_observer_is_logged_and_harmless(
    make_party: MakeParty, caplog: pytest.LogCaptureFixture
) -> None:
    """An observer that raises is logged; observers after it still get called; the call works."""
    alice = await make_party("alice")
    bob = await make_party("bob")
    exploding = Exploding()
    # Put the exploding observer first, before bob's recorder.
    bob.engine.remove_observer(bob.rec)
    bob.engine.add_observer(exploding)
    bob.engine.add_observer(bob.rec)

    with caplog.at_level(logging.ERROR, logger="callclient.engine"):
        await alice.engine.call("bob", CallMediaType.AUDIO)
        await bob.rec.wait_for("on_call_received")
        await bob.engine.accept()
        await bob.rec.wait_for("on_call_begin")
        await alice.rec.wait_for("on_call_begin")
        await alice.engine.hangup()
        await bob.rec.wait_for("on_call_end")

    assert exploding.calls == ["on_call_received", "on_call_begin"]
    raised = [r for r in caplog.records if "raised in" in r.getMessage()]
    assert [r.exc_info[1].__class__ for r in raised if r.exc_info] == [RuntimeError, ValueError]
    assert "on_call_received" in raised[0].getMessage()
    assert bob.rec.names()[:2] == ["on_call_received", "on_call_begin"]
    assert bob.engine.current_call is None and bob.engine.logged_in


async def test_events_async_iterator(make_party: MakeParty) -> None:
    """engine.events() yields CallEvent records in order and ends when the engine closes."""
    alice = await make_party("alice")
    bob = await make_party("bob")
    events = bob.engine.events()
    seen: list[CallEvent] = []

    async def consume() -> None:
        async for event in events:
            seen.append(event)
            if event.name == "on_call_received":
                await bob.engine.accept()
            elif event.name == "on_call_begin":
                await bob.engine.hangup()

    consumer = asyncio.create_task(consume())
    await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_for("on_call_end")
    await bob.engine.close()
    await asyncio.wait_for(consumer, T)  # the iteration ended with the engine

    names = [e.name for e in seen]
    assert names == bob.rec.names(noise=True)
    assert names[:2] == ["on_call_received", "on_call_begin"]
    assert names[-1] == "on_call_end"
    assert seen[0].args == ("alice", ["bob"], "", CallMediaType.AUDIO)
    assert seen[-1].args[1:3] == (CallMediaType.AUDIO, CallRole.CALLED)
    await alice.rec.wait_for("on_call_end")


async def test_no_report_follows_the_end_of_the_call(make_party: MakeParty) -> None:
    """Volume and quality reports stop with on_call_end: none comes after it."""
    alice = await make_party("alice", volume_interval=0.05, quality_interval=0.2)
    bob = await make_party("bob", volume_interval=0.05, quality_interval=0.2)
    await alice.engine.call("bob", CallMediaType.VIDEO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    await alice.rec.wait_for("on_user_voice_volume_changed")
    await bob.rec.wait_for("on_user_network_quality_changed")
    await alice.engine.hangup()
    for party in (alice, bob):
        await party.rec.wait_for("on_call_end")
    await asyncio.sleep(0.5)  # ten volume intervals, two quality intervals
    for party in (alice, bob):
        names = [e.name for e in party.rec.events]
        after = names[names.index("on_call_end") + 1:]
        assert after == [], f"{party.user_id}: {after}"
