"""Event semantics to the letter of the reference, through CallEngines on a real server:
who on_call_cancelled names, on_call_end on logout and kick, total_time's precision, an
invitation's userData, volumes and device changes in the events() stream, and the webhooks
the engines' calls produce."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from pathlib import Path

import pytest

from callclient.errors import InvalidParameterError
from callclient.media.devices import SystemDeviceProbe
from callclient.media.deviceset import DeviceSet
from callclient.observer import CallEvent, EventQueueObserver
from callclient.types import (
    AudioDeviceInfo,
    CallMediaType,
    CallParams,
    CallRole,
    CameraInfo,
    DeviceList,
)
from signaling_server.server import SignalingServer
from tests.helpers.engine import MakeParty, connect
from tests.helpers.waits import T, eventually
from tests.helpers.webhook_receiver import Receiver
from tests.helpers.wsclient import WsClient

AUDIO, VIDEO = CallMediaType.AUDIO, CallMediaType.VIDEO


async def next_event(stream: EventQueueObserver, web_event: str) -> CallEvent:
    """The next event of ``stream`` whose web name is ``web_event``."""
    async with asyncio.timeout(T):
        while True:
            event = await stream.next()
            if event.web_event == web_event:
                return event


async def test_callee_of_an_interrupted_call_is_cancelled_with_its_own_id(
    make_party: MakeParty, server: SignalingServer
) -> None:
    """The caller's connection dies while the call rings: after the reconnect grace the
    callee's on_call_cancelled carries the callee's own id ("abnormal interruption")."""
    bob = await make_party("bob")
    alice = await WsClient.connect(server.url)
    await alice.login("alice")
    await alice.call("calls", {"userIDList": ["bob"], "mediaType": 1})
    await bob.rec.wait_for("on_call_received")
    alice.abort()
    cancelled = await bob.rec.wait_for("on_call_cancelled", timeout=2 * T)
    assert cancelled.args == ("bob",)
    assert bob.engine.current_call is None


async def test_logout_during_a_call_ends_it(make_party: MakeParty) -> None:
    """alice logs out mid-call: on_call_end fires for her (float seconds, ms precision);
    bob sees her leave and his call end."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await connect(alice, bob, AUDIO)
    await asyncio.sleep(0.3)
    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    await alice.engine.logout()
    assert alice.rec.names(mark_a) == ["on_call_end"]
    end = alice.rec.signal(mark_a)[0]
    assert end.args[1:3] == (AUDIO, CallRole.CALLER)
    total = end.args[3]
    assert isinstance(total, float) and total > 0 and round(total, 3) == total
    await bob.rec.wait_names(["on_user_leave", "on_call_end"], start=mark_b)
    assert alice.engine.current_call is None and not alice.engine.logged_in


async def test_kicked_offline_during_a_call_ends_it_first(make_party: MakeParty) -> None:
    """bob logs in elsewhere mid-call: the old engine gets on_call_end, then
    on_kicked_offline; alice sees no leave (the new login takes the call over)."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await connect(alice, bob, AUDIO)
    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    async with await WsClient.connect(alice.engine.server_url) as bob_elsewhere:
        reply = await bob_elsewhere.login("bob")
        assert reply["activeCall"]["callId"] is not None
        await bob.rec.wait_names(["on_call_end", "on_kicked_offline"], start=mark_b)
        assert bob.rec.signal(mark_b)[0].args[2] == CallRole.CALLED
        assert bob.engine.current_call is None
        await asyncio.sleep(0.3)
        assert alice.rec.names(mark_a) == []


async def test_total_time_to_the_millisecond_and_midcall_user_data(
    make_party: MakeParty,
) -> None:
    """A hangup's on_call_end carries total_time as float seconds with ms precision, the same
    for both sides; a mid-call invitation's userData reaches the new invitee."""
    alice, bob, carol = (await make_party("alice"), await make_party("bob"),
                         await make_party("carol"))
    await connect(alice, bob, AUDIO)
    await alice.engine.invite_user(["carol"], CallParams(user_data="agenda: budget"))
    await carol.rec.wait_for("on_call_received")
    assert carol.engine.current_call is not None
    assert carol.engine.current_call.user_data == "agenda: budget"
    await carol.engine.reject()
    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    await asyncio.sleep(0.25)
    await bob.engine.hangup()
    end_a = await alice.rec.wait_for("on_call_end", start=mark_a)
    end_b = await bob.rec.wait_for("on_call_end", start=mark_b)
    total = end_a.args[3]
    assert isinstance(total, float) and total == end_b.args[3]
    assert round(total, 3) == total and total >= 0.25


async def test_volumes_are_in_the_events_stream_as_user_voice_volume(
    make_party: MakeParty,
) -> None:
    """events() carries the volume map as the web SDK's USER_VOICE_VOLUME: one level
    0..100 for each user of the call, the local one included."""
    alice, bob = await make_party("alice"), await make_party("bob")
    stream = bob.engine.events()
    await connect(alice, bob, AUDIO)
    event = await next_event(stream, "USER_VOICE_VOLUME")
    assert event.name == "on_user_voice_volume_changed"
    (volume_map,) = event.args
    assert set(volume_map) == {"alice", "bob"}
    assert all(0 <= level <= 100 for level in volume_map.values())


class FakeProbe:
    """Devices a test plugs in and out."""

    def __init__(self) -> None:
        self.listing = DeviceList([CameraInfo(0, "/dev/video0", "built-in camera")],
                                  [AudioDeviceInfo(0, "built-in mic", "ALSA", 1, 48000.0, True)],
                                  [AudioDeviceInfo(1, "speakers", "ALSA", 2, 48000.0, True)])
        self.reads = 0

    def fingerprint(self) -> Hashable:
        return (tuple(self.listing.cameras), tuple(self.listing.microphones))

    def list(self) -> DeviceList:
        self.reads += 1
        return self.listing


async def test_device_changes_are_in_the_events_stream_as_deviced_updated(
    make_party: MakeParty,
) -> None:
    """A camera plugged in while logged in: the engine's watcher reads the full list once
    for the change (not at every poll) and the events() stream gets DEVICED_UPDATED with
    the reference's fields; an engine without a probe (virtual devices) watches nothing."""
    probe = FakeProbe()
    devices = DeviceSet.virtual("alice")
    devices.probe = probe
    alice = await make_party("alice", login=False, devices=devices, device_watch_interval=0.02)
    stream = alice.engine.events()
    await alice.login()
    await eventually(lambda: probe.reads == 1, "the watcher read the list at start")
    await asyncio.sleep(0.2)  # ~10 polls of an unchanged fingerprint
    assert probe.reads == 1
    usb = CameraInfo(2, "/dev/video2", "USB camera")
    probe.listing = DeviceList([*probe.listing.cameras, usb], probe.listing.microphones,
                               probe.listing.speakers)
    event = await next_event(stream, "DEVICED_UPDATED")
    microphones, cameras, current_mic, current_camera, speakers, current_speaker = event.args
    assert cameras == [CameraInfo(0, "/dev/video0", "built-in camera"), usb]
    assert [m.name for m in microphones] == ["built-in mic"] and speakers[0].name == "speakers"
    assert (current_mic, current_camera, current_speaker) == ("", "", "")
    assert probe.reads == 2
    virtual = await make_party("bob")
    assert virtual.engine.devices.probe is None


async def test_the_system_probe_sees_a_camera_node_appear(tmp_path: Path) -> None:
    """The system probe's fingerprint is the device node names: a new video node changes it
    and the list then has the camera (read through the same path as /dev/video*)."""
    probe = SystemDeviceProbe(dev=str(tmp_path))
    before = probe.fingerprint()
    assert probe.fingerprint() == before
    (tmp_path / "video5").touch()
    assert probe.fingerprint() != before
    listing = await asyncio.to_thread(probe.list)
    assert [c.path for c in listing.cameras] == [str(tmp_path / "video5")]
    assert listing.cameras[0].index == 5


@pytest.fixture
async def hooks(server: SignalingServer) -> AsyncIterator[Receiver]:
    """A callback receiver configured for every event on the test server."""
    r = Receiver()
    await r.start()
    assert server.webhooks is not None
    await server.webhooks.create_config(r.url)
    yield r
    await r.stop()


async def test_webhooks_of_engine_calls(
    make_party: MakeParty, server: SignalingServer, hooks: Receiver
) -> None:
    """call_failed for a call that cannot start; invite_user names the inviter, before the
    invitee's receive_call; TotalNum counts the caller, who answered and who rings."""
    alice, bob, carol = (await make_party("alice"), await make_party("bob"),
                         await make_party("carol"))
    with pytest.raises(InvalidParameterError, match="cannot call yourself"):
        await alice.engine.call("alice", AUDIO)
    (failed,) = await hooks.wait_for(1)
    assert (failed.command, failed.body["UserId"], failed.body["TotalNum"]) == (
        "caller_call_failed", "alice", 1)
    assert failed.body["EndTs"] > 0

    call_id = await connect(alice, bob, AUDIO)
    await bob.engine.invite_user(["carol"])
    await carol.rec.wait_for("on_call_received")
    await carol.engine.reject()
    await alice.engine.hangup()
    await bob.rec.wait_for("on_call_end")
    assert server.webhooks is not None
    await eventually(lambda: "caller_call_end" in hooks.commands(call_id) and
                     "callee_call_end" in hooks.commands(call_id), "the call_end callbacks")
    got = [r for r in hooks.received if r.body["CallId"] == call_id]
    assert [(r.command, r.body["UserId"], r.body["TotalNum"]) for r in got] == [
        ("caller_start_call", "alice", 2),
        ("callee_receive_call", "bob", 2),
        ("callee_accept_call", "bob", 2),
        ("caller_call_accepted", "alice", 2),
        ("callee_invite_user", "bob", 2),
        ("callee_receive_call", "carol", 3),
        ("callee_reject_call", "carol", 2),
        ("caller_call_rejected", "alice", 2),
        ("caller_call_end", "alice", 2),
        ("callee_call_end", "bob", 2),
    ]
    assert {r.body["CallResult"] for r in got[-2:]} == {"normal_end"}
