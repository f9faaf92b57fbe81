"""1v1 calls through two CallEngines: every flow's observer callbacks, in order, on both sides."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from callclient.media.analysis import tone_present
from callclient.types import CallMediaType, CallParams, CallRole, CallStatus
from tests.helpers.engine import MakeParty, Party, frames_advance, recent_audio
from tests.helpers.waits import eventually

VIDEO = CallMediaType.VIDEO
AUDIO = CallMediaType.AUDIO


async def ring(
    caller: Party, callee: Party, media: CallMediaType = VIDEO, ring_s: int = 30
) -> str:
    """``caller`` calls ``callee`` (ringing ``ring_s`` s); the call id once the callee rings."""
    call_id = await caller.engine.call(callee.user_id, media, CallParams(timeout=ring_s))
    event = await callee.rec.wait_for("on_call_received")
    assert event.args == (caller.user_id, [callee.user_id], "", media)
    assert callee.engine.current_call is not None
    assert callee.engine.current_call.call_id == call_id
    return call_id


async def test_accepted_call_then_callee_hangs_up(make_party: MakeParty) -> None:
    """Accept then callee hangup: both sides see begin, join, media state, leave/end in order."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await alice.engine.open_camera()
    await bob.engine.open_camera()
    call_id = await ring(alice, bob)
    assert alice.engine.current_call is not None
    assert alice.engine.current_call.status is CallStatus.WAITING

    await bob.engine.accept()
    joined = [
        "on_call_begin", "on_user_join", "on_user_audio_available", "on_user_video_available",
    ]
    await alice.rec.wait_names(joined)
    await bob.rec.wait_names(["on_call_received", *joined])
    begin_a = alice.rec.find("on_call_begin")
    begin_b = bob.rec.find("on_call_begin")
    assert begin_a is not None and begin_b is not None
    assert begin_a.args[1:] == (VIDEO, CallRole.CALLER)
    assert begin_b.args[1:] == (VIDEO, CallRole.CALLED)
    assert begin_a.args[0] == begin_b.args[0], "both sides must be in the same room"
    assert alice.rec.find("on_user_join", "bob") is not None
    assert bob.rec.find("on_user_join", "alice") is not None
    assert alice.rec.find("on_user_video_available", "bob", True) is not None
    assert bob.rec.find("on_user_audio_available", "alice", True) is not None
    call = alice.engine.current_call
    assert call is not None and call.call_id == call_id and call.status is CallStatus.ACCEPT

    # Media really flows both ways.
    await frames_advance(alice.view_of("bob"))
    await frames_advance(bob.view_of("alice"))

    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    await bob.engine.hangup()
    await alice.rec.wait_names(["on_user_leave", "on_call_end"], start=mark_a)
    await bob.rec.wait_names(["on_call_end"], start=mark_b)
    assert alice.rec.signal(mark_a)[0].args == ("bob",)
    end_a = alice.rec.signal()[-1].args
    end_b = bob.rec.signal()[-1].args
    assert end_a[1:3] == (VIDEO, CallRole.CALLER)
    assert end_b[1:3] == (VIDEO, CallRole.CALLED)
    # The call lasted at least as long as the frames took to advance above, and both sides
    # count the same call (their clocks start at their own ON_CALL_BEGIN: within 5 s).
    assert 0 < end_a[3] < 600 and 0 < end_b[3] < 600
    assert abs(end_a[3] - end_b[3]) < 5
    assert alice.engine.current_call is None
    assert bob.engine.current_call is None


async def test_caller_hangs_up_connected_audio_call(make_party: MakeParty) -> None:
    """An audio call the caller hangs up: the tone arrives, then leave/end for the callee."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await ring(alice, bob, AUDIO)
    await bob.engine.accept()
    joined = ["on_call_begin", "on_user_join", "on_user_audio_available",
              "on_user_video_available"]
    await alice.rec.wait_names(joined)
    await bob.rec.wait_names(["on_call_received", *joined])
    # Nobody opened a camera: video is reported unavailable, audio available.
    assert alice.rec.find("on_user_video_available", "bob", False) is not None
    assert bob.rec.find("on_user_audio_available", "alice", True) is not None

    speaker = bob.speaker()
    await _wait_tone(speaker.samples, 440.0)

    mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
    await alice.engine.hangup()
    await alice.rec.wait_names(["on_call_end"], start=mark_a)
    await bob.rec.wait_names(["on_user_leave", "on_call_end"], start=mark_b)
    assert bob.rec.signal(mark_b)[0].args == ("alice",)
    assert bob.rec.signal()[-1].args[1:3] == (AUDIO, CallRole.CALLED)


async def _wait_tone(samples: Callable[[], npt.NDArray[np.int16]], freq: float) -> None:
    await eventually(
        lambda: tone_present(recent_audio(samples()), freq),
        f"a {freq:g} Hz tone on the speaker",
    )


async def test_callee_rejects(make_party: MakeParty) -> None:
    """Reject: the caller gets on_user_reject then on_call_cancelled(itself)."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await ring(alice, bob)
    await bob.engine.reject()
    await alice.rec.wait_names(["on_user_reject", "on_call_cancelled"])
    assert alice.rec.signal()[0].args == ("bob",)
    assert alice.rec.signal()[1].args == ("alice",)
    await bob.rec.wait_names(["on_call_received", "on_call_cancelled"])
    assert bob.rec.signal()[1].args == ("bob",)
    assert alice.engine.current_call is None and bob.engine.current_call is None


async def test_callee_ignores(make_party: MakeParty) -> None:
    """Ignore: the caller sees the line busy then cancelled; the callee is cancelled too."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await ring(alice, bob)
    await bob.engine.ignore()
    await alice.rec.wait_names(["on_user_line_busy", "on_call_cancelled"])
    assert alice.rec.signal()[0].args == ("bob",)
    assert alice.rec.signal()[1].args == ("alice",)
    await bob.rec.wait_names(["on_call_received", "on_call_cancelled"])
    assert bob.rec.signal()[1].args == ("bob",)


async def test_callee_busy(make_party: MakeParty) -> None:
    """Calling a user whose phone already rings: line busy, cancelled; the callee sees nothing."""
    alice, bob, carol = [await make_party(u) for u in ("alice", "bob", "carol")]
    await ring(alice, bob)
    await carol.engine.call("bob", VIDEO)
    await carol.rec.wait_names(["on_user_line_busy", "on_call_cancelled"])
    assert carol.rec.signal()[0].args == ("bob",)
    assert carol.rec.signal()[1].args == ("carol",)
    assert carol.engine.current_call is None
    assert bob.rec.names() == ["on_call_received"]
    call = bob.engine.current_call
    assert call is not None and call.caller == "alice", "bob's ringing call is untouched"


async def test_callee_does_not_answer(make_party: MakeParty) -> None:
    """No answer within the timeout: no response then cancelled; the callee is cancelled."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await ring(alice, bob, ring_s=1)
    await alice.rec.wait_names(["on_user_no_response", "on_call_cancelled"])
    assert alice.rec.signal()[0].args == ("bob",)
    assert alice.rec.signal()[1].args == ("alice",)
    await bob.rec.wait_names(["on_call_received", "on_call_cancelled"])
    assert bob.rec.signal()[1].args == ("bob",)


async def test_caller_cancels(make_party: MakeParty) -> None:
    """The caller hangs up while ringing: both get on_call_cancelled with the caller's id."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await ring(alice, bob)
    await alice.engine.hangup()
    await alice.rec.wait_names(["on_call_cancelled"])
    assert alice.rec.signal()[0].args == ("alice",)
    await bob.rec.wait_names(["on_call_received", "on_call_cancelled"])
    assert bob.rec.signal()[1].args == ("alice",)
    assert alice.engine.current_call is None and bob.engine.current_call is None


async def test_new_call_after_one_ends(make_party: MakeParty) -> None:
    """Two calls in a row between the same engines both connect and carry video."""
    alice, bob = await make_party("alice"), await make_party("bob")
    await bob.engine.open_camera()
    for _ in range(2):
        mark_a, mark_b = alice.rec.mark(), bob.rec.mark()
        await alice.engine.call("bob", VIDEO)
        await bob.rec.wait_for("on_call_received", start=mark_b)
        view = alice.view_of("bob")
        await bob.engine.accept()
        await alice.rec.wait_for("on_call_begin", start=mark_a)
        await frames_advance(view)
        await alice.engine.hangup()
        await bob.rec.wait_for("on_call_end", start=mark_b)
        await alice.rec.wait_for("on_call_end", start=mark_a)
        # The call's end closes the devices; reopen for the next call.
        await bob.engine.open_camera()
