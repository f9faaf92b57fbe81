"""Group calls through a real Janus subprocess: media everyone to everyone, joins and leaves,
media type switch, callbacks in the mesh's order, outsiders refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callclient.janus import JanusError, JanusSession
from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Tone
from callclient.types import CallMediaType, CallParams
from signaling_server.core import CoreConfig
from signaling_server.janus_proc import JanusProcess
from signaling_server.server import SignalingServer
from tests.helpers.engine import (
    MakeParty,
    Party,
    eventually,
    frames_advance,
    recent_audio,
    sfu_transport,
    tone_levels,
)
from tests.helpers.servers import new_server
from tests.helpers.waits import T

VIDEO = CallMediaType.VIDEO
AVAILABILITY = ["on_user_audio_available", "on_user_video_available"]
CURRENT_STATE = ["on_user_video_available", "on_user_audio_available"]
# No sum, difference or third-order product of three of these lands within 100 Hz of a fourth.
TONES = {"alice": 400.0, "bob": 900.0, "carol": 1500.0, "dave": 1600.0}


@pytest.fixture
async def janus() -> AsyncIterator[JanusProcess]:
    async with JanusProcess() as process:
        yield process


@pytest.fixture
async def server(janus: JanusProcess) -> AsyncIterator[SignalingServer]:
    """The signaling server with the Janus subprocess as its SFU."""
    async with new_server(core=CoreConfig(sfu=(janus.url,))) as srv:
        yield srv


async def parties(make_party: MakeParty, *users: str) -> list[Party]:
    made = [
        await make_party(user, devices=DeviceSet.virtual(user, fps=10.0,
                                                         program=Tone(TONES[user], 0.2)))
        for user in users
    ]
    for party in made:
        await party.engine.open_camera()
    return made


async def group_ring(caller: Party, callees: list[Party]) -> str:
    ids = [p.user_id for p in callees]
    call_id = await caller.engine.calls(ids, VIDEO, CallParams(timeout=30))
    for callee in callees:
        await callee.rec.wait_for("on_call_received")
    return call_id



async def everyone_gets_everyone(members: list[Party]) -> None:
    """Each member's video advances in every other's view and each hears every other's tone."""
    views = [p.view_of(q.user_id) for p in members for q in members if p is not q]
    # Twice the usual wait: up to four engines share this process on a loaded 2-core machine,
    # and a member who just joined connects its publisher and every subscription at once.
    await asyncio.gather(*(frames_advance(view, frames=5, timeout=2 * T) for view in views))
    for party in members:
        heard = [TONES[q.user_id] for q in members if q is not party]

        def hears_all(party: Party = party, heard: list[float] = heard) -> bool:
            levels = tone_levels(recent_audio(party.speaker().samples(), 1.0), heard)
            return all(level > 0.2 for level in levels.values())

        await eventually(hears_all, f"{party.user_id} hears the tones {heard}")


async def test_three_people_through_the_sfu_in_the_mesh_order(make_party: MakeParty) -> None:
    """A 3-person call publishes once each and receives everyone through Janus; every
    callback comes in the order the mesh gives."""
    alice, bob, carol = await parties(make_party, "alice", "bob", "carol")
    await group_ring(alice, [bob, carol])
    await bob.engine.accept()
    await alice.rec.wait_names(["on_call_begin", "on_user_join", *AVAILABILITY])
    await bob.rec.wait_names(["on_call_received", "on_call_begin", "on_user_join", *AVAILABILITY])
    await carol.engine.accept()
    await carol.rec.wait_names(
        ["on_call_received", "on_call_begin",
         "on_user_join", *CURRENT_STATE, "on_user_join", *CURRENT_STATE]
    )
    await everyone_gets_everyone([alice, bob, carol])
    for party in (alice, bob, carol):
        sfu = sfu_transport(party)
        # One upload: one publisher connection with one audio and one video sender.
        assert sfu.publisher_pc is not None
        assert sorted(s.track.kind for s in sfu.publisher_pc.getSenders() if s.track) == [
            "audio", "video"]
        assert set(sfu.peers) == {"alice", "bob", "carol"} - {party.user_id}

    mark_b, mark_c = bob.rec.mark(), carol.rec.mark()
    await alice.engine.hangup()
    await bob.rec.wait_names(["on_user_leave"], start=mark_b)
    await carol.rec.wait_names(["on_user_leave"], start=mark_c)
    await frames_advance(carol.view_of("bob"))
    await frames_advance(bob.view_of("carol"))


async def test_an_outsider_can_neither_publish_nor_subscribe(
    make_party: MakeParty, janus: JanusProcess
) -> None:
    """Someone who knows the room (even its pin) but is no member is refused by Janus."""
    alice, bob, carol = await parties(make_party, "alice", "bob", "carol")
    await group_ring(alice, [bob, carol])
    await bob.engine.accept()
    await carol.engine.accept()
    await everyone_gets_everyone([alice, bob, carol])
    room = sfu_transport(alice).room
    feeds = sfu_transport(alice)._feeds
    assert set(feeds) == {"bob", "carol"}
    session = JanusSession(janus.url)
    await session.create()
    try:
        outsider = await session.attach()
        base = {"request": "join", "room": room.room, "pin": room.pin}
        for body in ({**base, "ptype": "publisher", "display": "mallory"},
                     {**base, "ptype": "publisher", "display": "mallory", "token": "guess"},
                     {**base, "ptype": "subscriber", "streams": [{"feed": feeds["bob"]}]},
                     {**base, "ptype": "subscriber", "streams": [{"feed": feeds["bob"]}],
                      "private_id": 12345}):
            with pytest.raises(JanusError) as refused:
                await outsider.request(body)
            assert refused.value.code == 433, body  # unauthorized
        # A member's token once it left: carol hangs up, her token is revoked.
        carol_token = sfu_transport(carol).room.token
        await carol.engine.hangup()
        await alice.rec.wait_for("on_user_leave", "carol")

        async def refused_now() -> bool:
            # A fresh handle each try: one that got in (before the revocation arrived) would
            # answer "already joined" from then on, never "unauthorized".
            handle = await session.attach()
            try:
                await handle.request({**base, "ptype": "publisher", "display": "carol",
                                      "token": carol_token})
            except JanusError as exc:
                return exc.code == 433
            finally:
                await handle.detach()
            return False

        for _ in range(100):  # up to ~10 s: the revocation is one HTTP request to Janus
            if await refused_now():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a member's token still admits after the member left")
    finally:
        await session.destroy()


async def test_four_people_with_a_mid_call_invite_and_a_leave(make_party: MakeParty) -> None:
    """Three talk through the SFU; bob invites dave mid-call: four, everyone to everyone;
    carol leaves: the other three keep each other's media and see her leave once."""
    alice, bob, carol, dave = await parties(make_party, "alice", "bob", "carol", "dave")
    await group_ring(alice, [bob, carol])
    await bob.engine.accept()
    await carol.engine.accept()
    await everyone_gets_everyone([alice, bob, carol])

    marks = {p.user_id: p.rec.mark() for p in (alice, bob, carol)}
    assert await bob.engine.invite_user(["dave"]) == ["dave"]
    await dave.rec.wait_for("on_call_received")
    await dave.engine.accept()
    await dave.rec.wait_names(
        ["on_call_received", "on_call_begin",
         "on_user_join", *CURRENT_STATE, "on_user_join", *CURRENT_STATE,
         "on_user_join", *CURRENT_STATE]
    )
    for party in (alice, bob, carol):
        await party.rec.wait_names(["on_user_join", *AVAILABILITY], start=marks[party.user_id])
        assert party.rec.signal(marks[party.user_id])[0].args == ("dave",)
    await everyone_gets_everyone([alice, bob, carol, dave])
    assert all(set(sfu_transport(p).peers) == {"alice", "bob", "carol", "dave"} - {p.user_id}
               for p in (alice, bob, carol, dave))

    marks = {p.user_id: p.rec.mark() for p in (alice, bob, dave)}
    await carol.engine.hangup()
    for party in (alice, bob, dave):
        await party.rec.wait_names(["on_user_leave"], start=marks[party.user_id])
        assert party.rec.signal(marks[party.user_id])[0].args == ("carol",)
        assert "carol" not in sfu_transport(party).peers
    await asyncio.gather(*(frames_advance(p.view_of(q.user_id)) for p in (alice, bob, dave)
                           for q in (alice, bob, dave) if p is not q))
    assert carol.engine.current_call is None


async def test_switching_to_audio_in_an_sfu_call(make_party: MakeParty) -> None:
    """switch_call_media_type(AUDIO) reaches everyone in the mesh's order; audio goes on."""
    alice, bob, carol = await parties(make_party, "alice", "bob", "carol")
    await group_ring(alice, [bob, carol])
    await bob.engine.accept()
    await carol.engine.accept()
    await everyone_gets_everyone([alice, bob, carol])
    marks = {p.user_id: p.rec.mark() for p in (alice, bob, carol)}
    await bob.engine.switch_call_media_type(CallMediaType.AUDIO)
    for party in (alice, bob, carol):
        others = [q for q in ("alice", "bob", "carol") if q != party.user_id]
        await party.rec.wait_names(
            ["on_call_media_type_changed", "on_user_video_available",
             "on_user_video_available"], start=marks[party.user_id])
        signal = party.rec.signal(marks[party.user_id])
        assert signal[0].args == (VIDEO, CallMediaType.AUDIO)
        assert sorted(e.args for e in signal[1:3]) == [(u, False) for u in others]
        call = party.engine.current_call
        assert call is not None and call.media_type is CallMediaType.AUDIO
    for party in (alice, bob, carol):
        heard = [TONES[q] for q in ("alice", "bob", "carol") if q != party.user_id]

        def hears_all(party: Party = party, heard: list[float] = heard) -> bool:
            levels = tone_levels(recent_audio(party.speaker().samples(), 1.0), heard)
            return all(level > 0.2 for level in levels.values())

        await eventually(hears_all, f"{party.user_id} still hears {heard}")


async def test_the_bot_records_every_participant_of_an_sfu_call(
    make_party: MakeParty, server: SignalingServer, tmp_path: Path
) -> None:
    """A recording bot in a 3-person SFU call: one MP4 (stamped frames, in order) and one WAV
    (the sender's tone) per other participant."""
    from callclient.apps.bot import Bot, BotConfig
    from tests.apps.test_bot import decoded_stamps, wav_samples

    bot = Bot(BotConfig("bob", server.url, auto_accept=True, record=tmp_path), lambda r: None)
    await bot.start()
    try:
        alice, carol = await parties(make_party, "alice", "carol")
        await alice.engine.calls(["bob", "carol"], VIDEO, CallParams(timeout=30))
        await carol.rec.wait_for("on_call_received")
        await carol.engine.accept()
        await everyone_gets_everyone([alice, carol])
        await asyncio.gather(frames_advance(alice.view_of("bob")),
                             frames_advance(carol.view_of("bob")))
        await asyncio.sleep(2.0)
        await alice.engine.hangup()
        await carol.engine.hangup()
        await carol.rec.wait_for("on_call_end")
    finally:
        await bot.close()
    for user in ("alice", "carol"):
        counters = decoded_stamps(tmp_path / f"{user}.mp4")
        assert len(counters) >= 5 and counters == sorted(counters), (user, counters[:5])
        rate, samples = wav_samples(tmp_path / f"{user}.wav")
        middle = samples[samples.size // 2 - rate // 4: samples.size // 2 + rate // 4]
        levels = tone_levels(middle, [TONES[user]])
        assert levels[TONES[user]] > 0.5, (user, levels)
