"""Voice volume during a real call: the receiver's level for the sender follows the microphone.

Two engines on loopback (no impairment), an audio call, default ``volume_interval`` (0.3 s).
The sender's virtual microphone plays tone (1 s) / silence (1 s) / tone; the receiver's
``on_user_voice_volume_changed`` level for the sender must rise above 60 in the first tone,
fall to about 0 in the silence and rise again in the second tone (a half-scale sine is -6 dB,
level 90; :mod:`callclient.media.levels` documents the mapping). Then the sender closes its
microphone and the receiver's level for it is 0 within a second and stays there.
"""

from __future__ import annotations

import time

from callclient.media.deviceset import DeviceSet
from callclient.media.virtual import Sequence, Silence, Tone, VirtualMicrophone
from callclient.observer import CallObserver
from callclient.types import CallMediaType
from tests.helpers.engine import MakeParty, Party
from tests.helpers.waits import eventually

HIGH = 60
"""A tone must read above this."""
LOW = 5
"""Silence must read at or below this."""


class Levels(CallObserver):
    """Every volume report with its arrival time (monotonic)."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, dict[str, int]]] = []

    def on_user_voice_volume_changed(self, volume_map: dict[str, int]) -> None:
        """Keep the report."""
        self.reports.append((time.monotonic(), dict(volume_map)))

    def of(self, user_id: str, since: float) -> list[tuple[float, int]]:
        """``user_id``'s level in each report since ``since``, time relative to ``since``."""
        return [(t - since, levels.get(user_id, 0)) for t, levels in self.reports if t >= since]


def first(levels: list[tuple[float, int]], after: float, check: str) -> float | None:
    """The time of the first level after ``after`` that is high (``check="high"``) or low."""
    for t, level in levels:
        if t > after and (level > HIGH if check == "high" else level <= LOW):
            return t
    return None


async def connected(make_party: MakeParty) -> tuple[Party, Levels]:
    """alice (microphone silent) calls bob, who accepts; audio flows from alice to bob."""
    alice = await make_party("alice", devices=DeviceSet.virtual("alice", program=Silence()))
    bob = await make_party("bob")
    levels = Levels()
    bob.engine.add_observer(levels)
    await alice.engine.call("bob", CallMediaType.AUDIO)
    await bob.rec.wait_for("on_call_received")
    await bob.engine.accept()
    await alice.rec.wait_for("on_call_begin")
    await eventually(
        lambda: bob.engine.remote_stats.get("alice") is not None
        and bob.engine.remote_stats["alice"].audio_blocks > 25,
        "alice's audio reaches bob",
    )
    return alice, levels


async def test_receiver_level_follows_tone_silence_tone_and_mute(make_party: MakeParty) -> None:
    """Tone/silence/tone: bob's level for alice rises > 60, falls to ~0, rises; mute: 0 in 1 s."""
    alice, levels = await connected(make_party)
    microphone = alice.devices.microphone
    assert isinstance(microphone, VirtualMicrophone)
    tone = Tone(440.0, 0.5)
    since = time.monotonic()
    microphone.set_program(Sequence(((tone, 1.0), (Silence(), 1.0), (tone, 60.0))))
    await eventually(lambda: time.monotonic() - since > 3.4, "3.4 s of programme")
    seen = levels.of("alice", since)
    trace = ", ".join(f"{t:.2f}s={level}" for t, level in seen)
    rise = first(seen, 0.0, "high")
    assert rise is not None and rise < 1.2, f"no level > {HIGH} in the first tone: {trace}"
    fall = first(seen, rise, "low")
    assert fall is not None and 1.0 < fall < 2.4, f"no level <= {LOW} in the silence: {trace}"
    again = first(seen, fall, "high")
    assert again is not None and 2.0 < again < 3.4, f"no level > {HIGH} in tone 2: {trace}"
    print(f"bob's level for alice: {trace}")

    muted = time.monotonic()
    await alice.engine.close_microphone()
    await eventually(lambda: time.monotonic() - muted > 2.0, "2 s after the mute")
    after = levels.of("alice", muted)
    trace = ", ".join(f"{t:.2f}s={level}" for t, level in after)
    zero = next((t for t, level in after if level == 0), None)
    assert zero is not None and zero <= 1.0, f"bob's level for alice not 0 within 1 s: {trace}"
    assert all(level == 0 for t, level in after if t >= zero), f"level came back: {trace}"
    print(f"after the mute: {trace}")
