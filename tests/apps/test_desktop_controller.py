"""The desktop app's controller: keys to engine calls, tones, tiles, and its call phase.

The phase is never the controller's own: it follows the engine's current call. A fake engine
(which changes its call before it fires the callback, as the engine does) checks each key's
engine call; real engine pairs on a real server check the phase through ringing, connected
and ended, both ways round.
"""

from __future__ import annotations

import asyncio

import numpy as np

from callclient.apps.desktop.controller import (
    AppConfig,
    DesktopApp,
    receiving_text,
    sending_text,
)
from callclient.apps.desktop.keys import Command
from callclient.apps.desktop.phase import Phase
from callclient.media.adaptation import SendState
from callclient.media.encoding import LocalVideoStats, VideoDrops
from callclient.media.remote import RemoteStats
from callclient.media.tones import SharedSink
from callclient.media.virtual import VirtualSpeaker
from callclient.observer import CALLBACK_NAMES, CallObserver
from callclient.types import (
    AudioDeviceInfo,
    AudioPlaybackDevice,
    CallMediaType,
    CallStatus,
    Camera,
    CameraInfo,
    FillMode,
    GroupCallInfo,
    RoomId,
    Rotation,
    VideoRenderParams,
)
from signaling_server.groups import Group
from signaling_server.server import SignalingServer
from tests.helpers.desktop import FakeEngine
from tests.helpers.engine import MakeParty, Party
from tests.helpers.servers import APP, sig
from tests.helpers.waits import T, eventually

# ---------------------------------------------------------------------------- fake engine

async def _press(app: DesktopApp, engine: FakeEngine, key: str) -> list[tuple[object, ...]]:
    before = len(engine.calls_made)
    await app.handle_key(ord(key))
    return engine.calls_made[before:]


def test_every_command_has_an_action() -> None:
    """The controller runs every command of the key table."""
    app = DesktopApp(FakeEngine(), AppConfig("alice"))
    assert set(app.actions) == set(Command)


async def test_keys_call_engine_methods() -> None:
    """Each key of a connected call calls the right engine method with the right arguments."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", call=("bob",)))
    await app.start()
    assert engine.calls_made[:2] == [("open_camera", Camera.FRONT),
                                     ("calls", ["bob"], CallMediaType.VIDEO)]
    assert app.phase is Phase.CALLING and "bob" in engine.views
    assert "Calling bob" in app.state.banner
    engine.begin()
    engine.join("bob")
    assert app.phase is Phase.CONNECTED and app.state.banner == ""
    assert app.state.tiles[0].since == 1000.0 and app.state.tiles[1].status == "connected"

    assert await _press(app, engine, "m") == [("close_microphone",)]
    assert await _press(app, engine, "m") == [("open_microphone",)]
    assert "audio AEC NS AGC HPF" in app.state.status
    assert await _press(app, engine, "n") == [("set_audio_processing", False)]
    assert "audio AEC AGC HPF" in app.state.status
    assert "noise suppression off" in app.state.status
    assert await _press(app, engine, "n") == [("set_audio_processing", True)]
    assert "noise suppression on" in app.state.status
    assert await _press(app, engine, "c") == [("close_camera",)]
    assert await _press(app, engine, "c") == [("open_camera", Camera.FRONT)]
    assert await _press(app, engine, "s") == [("switch_camera", Camera.BACK)]
    assert await _press(app, engine, "p") == [
        ("select_audio_playback_device", AudioPlaybackDevice.EARPIECE)]
    fit = VideoRenderParams(FillMode.FIT, Rotation.ROTATION_0)
    assert await _press(app, engine, "f") == [("set_video_render_params", "bob", fit)]
    assert await _press(app, engine, "o") == [
        ("set_video_render_params", "bob", VideoRenderParams(FillMode.FIT, Rotation.ROTATION_90))]
    assert await _press(app, engine, "\t") == []
    assert await _press(app, engine, "f") == [("set_video_render_params", "alice", fit)]
    assert await _press(app, engine, "v") == [("switch_call_media_type", CallMediaType.AUDIO)]
    assert not app.state.show_help
    assert await _press(app, engine, "?") == []
    assert app.state.show_help
    assert await _press(app, engine, "z") == []
    assert await _press(app, engine, "h") == [("hangup",)]
    assert app.state.tiles[1].params.fill_mode is FillMode.FIT
    app.press(ord("q"))
    assert app.quit_requested
    await app.close()


async def test_incoming_call_rings_until_accepted() -> None:
    """An incoming call shows the caller and rings through the speaker until accepted."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice"))
    await app.start()
    shared = engine.devices.speakers[AudioPlaybackDevice.SPEAKERPHONE]
    assert isinstance(shared, SharedSink)
    speaker = shared.inner
    assert isinstance(speaker, VirtualSpeaker)
    engine.ring_in("carol", CallMediaType.VIDEO)
    assert app.phase is Phase.INCOMING
    assert "carol" in app.state.banner and app.state.tiles[1].user_id == "carol"
    await eventually(lambda: speaker.played_samples >= 48000 * 0.3, "the ringtone plays")
    assert shared.owner == "tone"
    assert int(np.abs(speaker.samples()).max()) > 5000
    assert await _press(app, engine, "a") == [("accept",)]
    assert shared.owner is None and not speaker.running
    engine.begin()
    assert app.phase is Phase.CONNECTED and app.state.tiles[1].status == "connecting"
    await shared.start(lambda: np.zeros(960, np.int16))  # the engine takes the output
    assert shared.owner == "call"
    await shared.stop()
    engine.end(3.0)
    assert app.phase is Phase.IDLE and len(app.state.tiles) == 1
    assert "call ended after 00:03" in app.state.status
    await app.close()


async def test_mute_mode_and_reject() -> None:
    """With mute mode an incoming call does not ring; 'r' rejects it; refusals are shown."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", mute_ringtone=True))
    await app.start()
    engine.ring_in("carol", CallMediaType.AUDIO)
    await asyncio.sleep(0.2)
    shared = engine.devices.speakers[AudioPlaybackDevice.SPEAKERPHONE]
    assert isinstance(shared, SharedSink) and shared.owner is None
    assert await _press(app, engine, "r") == [("reject",)]
    engine.cancel("alice")
    assert app.phase is Phase.IDLE
    assert await _press(app, engine, "h") == []
    assert "no call" in app.state.status
    engine.refuse.add("calls")
    app2 = DesktopApp(engine, AppConfig("alice", call=("bob",)))
    await app2.perform(Command.DIAL)
    assert app2.phase is Phase.IDLE and "cannot calls" in app2.state.status
    assert len(app2.state.tiles) == 1 and "bob" not in engine.views
    await app.close()
    await app2.close()


async def test_a_call_the_engine_forgot_loses_its_tiles() -> None:
    """When the engine drops the call without a callback (hang-up of a call the server no
    longer knows), the app goes idle with it and its remote tiles go."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", call=("bob",), media_type=CallMediaType.AUDIO))
    await app.start()
    engine.begin()
    engine.join("bob")
    engine.current_call = None  # what the engine's hangup() does on CALL_NOT_FOUND
    assert await _press(app, engine, "h") == []
    assert app.phase is Phase.IDLE and "no call" in app.state.status
    assert len(app.state.tiles) == 1 and engine.views == {}
    await app.close()


async def test_close_hangs_up_and_is_idempotent() -> None:
    """Closing during a call hangs up once and leaves the engine; a second close does nothing."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", call=("bob",)))
    await app.start()
    await app.close()
    await app.close()
    assert engine.calls_made.count(("hangup",)) == 1
    assert engine.observers == []


async def test_close_rejects_an_incoming_call() -> None:
    """Closing while a call rings in rejects it instead of hanging up."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", media_type=CallMediaType.AUDIO))
    await app.start()
    engine.ring_in("carol", CallMediaType.AUDIO)
    await app.close()
    assert ("reject",) in engine.calls_made and ("hangup",) not in engine.calls_made


# ---------------------------------------------------------------------------- real engines


class PhaseProbe(CallObserver):
    """Registered after the app: at each callback, the app's phase and published status."""

    def __init__(self, app: DesktopApp) -> None:
        self.app = app
        self.seen: list[tuple[str, Phase, CallStatus, str]] = []


def _probing(name: str) -> object:
    def probe(self: PhaseProbe, *args: object) -> None:
        call = self.app.engine.current_call
        status = call.status if call is not None else CallStatus.NONE
        self.seen.append((name, self.app.phase, status, self.app.state.status.split(" | ")[1]))

    return probe


for _name in CALLBACK_NAMES:
    setattr(PhaseProbe, _name, _probing(_name))


def _phases(probe: PhaseProbe, *names: str) -> list[tuple[str, Phase, CallStatus, str]]:
    return [entry for entry in probe.seen if entry[0] in names]


async def _app(party: Party, config: AppConfig) -> tuple[DesktopApp, PhaseProbe]:
    app = DesktopApp(party.engine, config)
    probe = PhaseProbe(app)
    await app.start()
    party.engine.add_observer(probe)  # after the app, so it sees what the app published
    return app, probe


async def test_outgoing_call_phase_follows_the_engine(make_party: MakeParty) -> None:
    """Alice's app calls bob: calling while it rings, connected when bob accepts, idle when
    bob hangs up, and the published status says the same at every callback."""
    alice, bob = await make_party("alice"), await make_party("bob")
    app, probe = await _app(alice, AppConfig("alice", call=("bob",),
                                             media_type=CallMediaType.AUDIO))
    call = alice.engine.current_call
    assert call is not None and call.status is CallStatus.WAITING
    assert app.phase is Phase.CALLING and "Calling bob" in app.state.banner
    await bob.rec.wait_for("on_call_received", "alice")
    await bob.engine.accept()
    await alice.rec.wait_for("on_user_join", "bob")
    await eventually(lambda: _phases(probe, "on_user_join") != [], "the probe saw bob join")
    assert app.phase is Phase.CONNECTED
    assert app.state.tiles[1].status == "connected" and app.state.tiles[0].since is not None
    # The tile details name the media path once ICE chose it (host pair: one machine); the
    # state is rebuilt at the next volume or quality report.
    await eventually(lambda: app.state.tiles[1].path != "", "a media path in bob's tile")
    assert app.state.tiles[1].path == "host -> host over udp"
    await bob.engine.hangup()
    await alice.rec.wait_for("on_call_end")
    await eventually(lambda: _phases(probe, "on_call_end") != [], "the probe saw the end")
    assert _phases(probe, "on_call_begin", "on_user_join", "on_call_end") == [
        ("on_call_begin", Phase.CONNECTED, CallStatus.ACCEPT, "connected"),
        ("on_user_join", Phase.CONNECTED, CallStatus.ACCEPT, "connected"),
        ("on_call_end", Phase.IDLE, CallStatus.NONE, "idle"),
    ]
    assert app.phase is Phase.IDLE and len(app.state.tiles) == 1
    assert "call ended after" in app.state.status
    await app.close()


async def test_incoming_call_phase_follows_the_engine(make_party: MakeParty) -> None:
    """Bob calls alice's app: incoming (ringing) until 'a', connected, idle after 'h'."""
    alice, bob = await make_party("alice"), await make_party("bob")
    app, probe = await _app(alice, AppConfig("alice", media_type=CallMediaType.AUDIO))
    assert app.phase is Phase.IDLE
    await bob.engine.call("alice", CallMediaType.AUDIO)
    await alice.rec.wait_for("on_call_received", "bob")
    await eventually(lambda: _phases(probe, "on_call_received") != [], "the probe saw the ring")
    assert app.phase is Phase.INCOMING and "from bob" in app.state.banner
    shared = alice.devices.speakers[AudioPlaybackDevice.SPEAKERPHONE]
    assert isinstance(shared, SharedSink)
    await eventually(lambda: shared.owner == "tone", "the ringtone plays")
    await app.handle_key(ord("a"))
    await alice.rec.wait_for("on_call_begin")
    await eventually(lambda: _phases(probe, "on_call_begin") != [], "the probe saw the begin")
    assert app.phase is Phase.CONNECTED
    await app.handle_key(ord("h"))
    await bob.rec.wait_for("on_call_end")
    await alice.rec.wait_for("on_call_end")
    await eventually(lambda: app.phase is Phase.IDLE, "alice's app went idle")
    assert _phases(probe, "on_call_received", "on_call_begin", "on_call_end") == [
        ("on_call_received", Phase.INCOMING, CallStatus.WAITING, "incoming"),
        ("on_call_begin", Phase.CONNECTED, CallStatus.ACCEPT, "connected"),
        ("on_call_end", Phase.IDLE, CallStatus.NONE, "idle"),
    ]
    await app.close()


async def test_cancel_while_ringing_and_close_during_a_call(make_party: MakeParty) -> None:
    """'h' while the call rings cancels it for bob and the app goes idle; a second call,
    connected, is hung up by closing the app."""
    alice, bob = await make_party("alice"), await make_party("bob")
    app, probe = await _app(alice, AppConfig("alice", call=("bob",),
                                             media_type=CallMediaType.AUDIO))
    await bob.rec.wait_for("on_call_received", "alice")
    await app.handle_key(ord("h"))
    await bob.rec.wait_for("on_call_cancelled")
    await alice.rec.wait_for("on_call_cancelled")
    await eventually(lambda: app.phase is Phase.IDLE, "alice's app went idle")
    assert _phases(probe, "on_call_cancelled") == [
        ("on_call_cancelled", Phase.IDLE, CallStatus.NONE, "idle")]
    assert len(app.state.tiles) == 1 and "call cancelled" in app.state.status

    mark = bob.rec.mark()
    await app.handle_key(ord("d"))
    await bob.rec.wait_for("on_call_received", "alice", start=mark)
    await bob.engine.accept()
    await alice.rec.wait_for("on_user_join", "bob")
    assert app.phase is Phase.CONNECTED
    await app.close()
    await bob.rec.wait_for("on_call_end", start=mark, timeout=T)
    assert alice.engine.current_call is None


async def test_tiles_and_banner_show_nicknames() -> None:
    """Tiles, the incoming banner and the local tile name users by nickname once the engine
    knows one, and follow a change."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", media_type=CallMediaType.AUDIO))
    await app.start()
    engine.learn("alice", "Alice")
    engine.learn("carol", "Carol C.")
    engine.ring_in("carol", CallMediaType.AUDIO)
    assert "from Carol C." in app.state.banner
    assert [t.name for t in app.state.tiles] == ["Alice (me)", "Carol C."]
    engine.learn("carol", "Caroline")
    assert app.state.tiles[1].name == "Caroline"
    await app.close()


async def test_join_key_when_the_group_has_a_call() -> None:
    """With a group id, an idle app asks whether the group has a call; when it has one the
    banner offers 'j', which joins it with the call's media type; a non-member is told."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", group_id="team", group_poll_s=0.02,
                                       media_type=CallMediaType.AUDIO))
    await app.start()
    assert await _press(app, engine, "j") == []
    assert "no call in progress" in app.state.status
    info = GroupCallInfo("team", "c9", RoomId(7), CallMediaType.AUDIO, "bob", ["bob", "carol"],
                         1000.0)
    engine.learn("bob", "Bob")
    engine.group_calls["team"] = info
    await eventually(lambda: "[j] join" in app.state.banner, "the banner offers to join")
    assert app.state.banner.startswith("Group team has a call with Bob, carol")
    assert await _press(app, engine, "j") == [
        ("join_in_group_call", RoomId(7), "team", CallMediaType.AUDIO)]
    engine.begin()
    assert app.phase is Phase.CONNECTED and "[j] join" not in app.state.banner
    asks = engine.group_asks
    await asyncio.sleep(0.1)
    assert engine.group_asks == asks, "a connected app does not ask"
    await app.close()
    outsider = FakeEngine()
    outsider.refuse.add("group_call_in_progress")
    app = DesktopApp(outsider, AppConfig("alice", group_id="team", group_poll_s=0.02))
    await app.start()
    await eventually(lambda: "not a member" in app.state.status, "the app says why")
    await app.close()


async def test_device_changes_are_shown_and_listed() -> None:
    """A device list change is shown in the status bar and listed under the key help."""
    engine = FakeEngine()
    app = DesktopApp(engine, AppConfig("alice", media_type=CallMediaType.AUDIO))
    await app.start()
    engine.plug([CameraInfo(0, "/dev/video0", "USB camera")],
                [AudioDeviceInfo(2, "USB mic", "ALSA", 1, 48000.0, False)])
    assert "devices changed: 1 camera(s), 1 microphone(s), 0 speaker(s)" in app.state.status
    assert "cameras: USB camera" in app.state.help_lines
    assert "microphones: USB mic" in app.state.help_lines
    await app.close()


async def test_join_a_groups_call_from_the_app(
    make_party: MakeParty, server: SignalingServer
) -> None:
    """Real engines: bob group-calls carol in "team"; alice's app (a member) offers 'j' with
    their nicknames, and 'j' joins: connected, a tile for each of them."""
    server.groups.put(Group("team", "Team", 0.0, dict.fromkeys(["alice", "bob", "carol"], 0.0)))
    alice, carol = await make_party("alice"), await make_party("carol")
    bob = await make_party("bob", login=False)
    await bob.engine.login(APP, "bob", sig("bob"), nickname="Bob")
    app, _ = await _app(alice, AppConfig("alice", group_id="team", group_poll_s=0.05,
                                         media_type=CallMediaType.AUDIO))
    await bob.engine.group_call("team", ["carol"], CallMediaType.AUDIO)
    await carol.rec.wait_for("on_call_received")
    await carol.engine.accept()
    await eventually(lambda: "[j] join" in app.state.banner, "alice's app offers to join")
    await alice.engine.get_users_info(["bob"])
    await eventually(lambda: "Bob, carol" in app.state.banner, "the banner names them")
    await app.handle_key(ord("j"))
    await alice.rec.wait_for("on_user_join", "carol")
    await eventually(lambda: len(app.state.tiles) == 3, "a tile per member")
    assert app.phase is Phase.CONNECTED
    assert [t.name for t in app.state.tiles[1:]] == ["Bob", "carol"]
    await app.close()


def test_tiles_say_what_video_is_sent_and_why_and_what_arrives() -> None:
    """The local tile names the adapted size, rate, bitrate and reason; a remote one what
    arrives."""
    sending = SendState(960, 540, 24.0, 640_000, 2, "cpu", 0.9)
    stats = LocalVideoStats(sending, (), VideoDrops(0, 0, 0), 10, 1, 1, True)
    assert sending_text(stats) == "sending 960x540 24 fps 640 kbit/s (cpu limited)"
    at_preset = LocalVideoStats(SendState(1280, 720, 30.0, 1_200_000, 0, "none", 0.3), (),
                                VideoDrops(0, 0, 0), 10, 1, 1, True)
    assert sending_text(at_preset) == "sending 1280x720 30 fps 1200 kbit/s"
    assert sending_text(None) == ""
    assert receiving_text(RemoteStats(video_width=640, video_height=360, video_fps=23.6)) == (
        "640x360 24 fps")
    assert receiving_text(RemoteStats()) == ""
