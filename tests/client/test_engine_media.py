"""Device operations in the middle of a call, seen from the other side's media and callbacks."""

from __future__ import annotations

import asyncio

import numpy as np

from callclient.callstate import MEDIA_STATE_GRACE
from callclient.media.analysis import dominant_frequency, rms_dbfs, tone_present
from callclient.media.base import MemoryView
from callclient.media.pattern import read_stamp
from callclient.media.virtual import Tone, VirtualMicrophone
from callclient.types import AudioPlaybackDevice, CallMediaType, Camera
from tests.helpers.engine import (
    MakeParty,
    Party,
    connect,
    eventually,
    frames_advance,
    recent_audio,
)

SPEAKERPHONE = AudioPlaybackDevice.SPEAKERPHONE
EARPIECE = AudioPlaybackDevice.EARPIECE


async def pair(make_party: MakeParty) -> tuple[Party, Party]:
    """alice (camera on) in a connected video call with bob."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await alice.engine.open_camera()
    await connect(alice, bob)
    return alice, bob


def label_region(view: MemoryView) -> np.ndarray:
    """The top-left corner where the virtual camera draws its label, as float."""
    frame = view.last
    assert frame is not None
    return frame.image[:40, :200].astype(np.float64)


async def test_tone_arrives_with_its_frequency(make_party: MakeParty) -> None:
    """The callee's speaker plays the caller's microphone tone at its frequency."""
    alice, bob = await make_party("alice"), await make_party("bob")
    microphone = alice.devices.microphone
    assert isinstance(microphone, VirtualMicrophone)
    microphone.set_program(Tone(660.0, 0.3))
    await connect(alice, bob, CallMediaType.AUDIO)
    await eventually(
        lambda: tone_present(recent_audio(bob.speaker().samples()), 660.0),
        "a 660 Hz tone on bob's speaker",
    )
    # Once a whole window holds the tone (no leading silence), its pitch is exact.
    await eventually(
        lambda: abs(dominant_frequency(recent_audio(bob.speaker().samples())) - 660.0) < 2.0,
        "bob's speaker at 660 +- 2 Hz",
    )


async def test_select_playback_device_mid_call(make_party: MakeParty) -> None:
    """Switching to the earpiece moves the tone there; the speakerphone stops playing."""
    _, bob = await pair(make_party)
    speakerphone, earpiece = bob.speaker(SPEAKERPHONE), bob.speaker(EARPIECE)
    await eventually(
        lambda: tone_present(recent_audio(speakerphone.samples()), 440.0),
        "the tone on bob's speakerphone",
    )
    assert earpiece.played_samples == 0

    await bob.engine.select_audio_playback_device(EARPIECE)
    stopped_at = speakerphone.played_samples
    await eventually(
        lambda: earpiece.played_samples >= 48000
        and tone_present(recent_audio(earpiece.samples()), 440.0),
        "the tone on bob's earpiece",
    )
    assert speakerphone.played_samples == stopped_at, "the speakerphone still plays"

    await bob.engine.select_audio_playback_device(SPEAKERPHONE)
    await eventually(
        lambda: speakerphone.played_samples >= stopped_at + 48000
        and tone_present(recent_audio(speakerphone.samples()), 440.0),
        "the tone back on bob's speakerphone",
    )


async def test_switch_camera_mid_call(make_party: MakeParty) -> None:
    """After switch_camera the frames keep coming, from the back camera (new counter, label)."""
    alice, bob = await pair(make_party)
    view = bob.view_of("alice")
    _, front_count = await frames_advance(view, frames=30)
    front = label_region(view)
    await view.wait_frames(view.count + 5, 10.0)
    noise = np.abs(label_region(view) - front).mean()

    await alice.engine.switch_camera(Camera.BACK)
    # The back camera numbers its frames from 0: the counter restarts below the front's.
    await eventually(
        lambda: (view.last is not None and (s := read_stamp(view.last.image)) is not None
                 and s[0] < front_count // 2),
        "a frame from the back camera (counter restarted)",
    )
    await frames_advance(view)
    back = label_region(view)
    assert np.abs(back - front).mean() > 5 * noise + 2.0, "the label did not change"
    assert bob.rec.find("on_user_video_available", "alice", False) is None, (
        "switching cameras must not report the video as unavailable"
    )


async def test_close_and_open_camera(make_party: MakeParty) -> None:
    """close_camera: the other side gets video unavailable; open_camera: available, frames."""
    alice, bob = await pair(make_party)
    assert bob.rec.find("on_user_video_available", "alice", True) is not None
    mark = bob.rec.mark()
    await alice.engine.close_camera()
    await bob.rec.wait_names(["on_user_video_available"], start=mark)
    assert bob.rec.signal(mark)[0].args == ("alice", False)

    await alice.engine.open_camera()
    await bob.rec.wait_names(["on_user_video_available", "on_user_video_available"], start=mark)
    assert bob.rec.signal()[-1].args == ("alice", True)
    await frames_advance(bob.view_of("alice"))


async def test_close_and_open_microphone(make_party: MakeParty) -> None:
    """close_microphone: audio unavailable and silence; open_microphone: available, tone."""
    alice, bob = await pair(make_party)
    speaker = bob.speaker()
    await eventually(lambda: tone_present(recent_audio(speaker.samples()), 440.0), "the tone")
    mark = bob.rec.mark()
    await alice.engine.close_microphone()
    await bob.rec.wait_names(["on_user_audio_available"], start=mark)
    assert bob.rec.signal(mark)[0].args == ("alice", False)
    await eventually(
        lambda: rms_dbfs(recent_audio(speaker.samples())) < -60.0, "silence on bob's speaker"
    )

    await alice.engine.open_microphone()
    await bob.rec.wait_names(["on_user_audio_available", "on_user_audio_available"], start=mark)
    assert bob.rec.signal()[-1].args == ("alice", True)
    await eventually(lambda: tone_present(recent_audio(speaker.samples()), 440.0), "the tone")


async def test_switch_video_to_audio(make_party: MakeParty) -> None:
    """switch_call_media_type(AUDIO): both get the change; cameras close, video unavailable."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await alice.engine.open_camera()
    await bob.engine.open_camera()
    await connect(alice, bob)
    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    await bob.engine.switch_call_media_type(CallMediaType.AUDIO)
    for me, other, mark in ((alice, bob, mark_a), (bob, alice, mark_b)):
        await me.rec.wait_names(
            ["on_call_media_type_changed", "on_user_video_available"], start=mark
        )
        assert me.rec.signal(mark)[0].args == (CallMediaType.VIDEO, CallMediaType.AUDIO)
        assert me.rec.signal(mark)[1].args == (other.user_id, False)
        call = me.engine.current_call
        assert call is not None and call.media_type is CallMediaType.AUDIO
    # Audio goes on.
    await eventually(
        lambda: tone_present(recent_audio(alice.speaker().samples()), 440.0), "the tone"
    )


async def test_media_of_a_peer_that_never_reports_its_state_counts_as_available(
    make_party: MakeParty,
) -> None:
    """alice's engine never sends media_state (as a client that does not implement it):
    bob still gets alice's audio and video as available, once each, from the media itself,
    and nothing of the kind for his own report-sending side is duplicated at alice's."""
    alice, bob = await make_party("alice"), await make_party("bob")

    async def no_report(camera: bool | None, microphone: bool | None) -> None:
        return None

    alice.engine._media.report_state = no_report  # type: ignore[method-assign]
    await alice.engine.open_camera()
    await bob.engine.open_camera()
    await alice.engine.call("bob", CallMediaType.VIDEO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    await bob.rec.wait_for("on_user_video_available", "alice", True)
    await bob.rec.wait_for("on_user_audio_available", "alice", True)
    await alice.rec.wait_for("on_user_video_available", "bob", True)
    await frames_advance(bob.view_of("alice"))
    await asyncio.sleep(MEDIA_STATE_GRACE + 0.5)  # every inference has had its chance
    for me, other in ((bob, "alice"), (alice, "bob")):
        for name in ("on_user_video_available", "on_user_audio_available"):
            seen = [e.args for e in me.rec.events if e.name == name]
            assert seen == [(other, True)], (me.user_id, name, seen)
