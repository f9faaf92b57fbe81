"""The capture processing on real signals: echo, noise and gain, with the issue's numbers.

Speech is espeak-ng (:mod:`tests.helpers.speech`); the echo comes from a simulated room whose
speaker is fed through the engine's speaker path (:mod:`tests.helpers.room`,
:mod:`tests.helpers.pipeline`), so the echo canceller's reference is exactly what the speaker
was handed. Every signal is deterministic: the figures are the same on every run (those
quoted in ``docs/audio.md`` come from these tests).
"""

from __future__ import annotations

import numpy as np
import pytest

from callclient.media.processing import AGC_TARGET_DBFS, AudioProcessing
from tests.helpers.audio_metrics import (
    FS,
    active_level_db,
    active_mask,
    corr,
    erle_db,
    find_lag,
    level_db,
)
from tests.helpers.pipeline import through_processor, through_room
from tests.helpers.room import Room
from tests.helpers.speech import (
    echo_scenario,
    noisy_speech,
    room_ir,
    set_active_level,
    speech,
    to_int16,
)

ERLE_TARGET_DB = 25.0
DOUBLE_TALK_CORR = 0.8
SNR_GAIN_DB = 10.0
SPEECH_KEPT_DB = 3.0
GAIN_WITHIN_DB = 6.0

NS_ONLY = AudioProcessing(echo_cancellation=False, auto_gain=False)
"""Noise suppression and its high-pass filter: the stage the noise figures are about."""


def _window(x: np.ndarray, start: float, end: float, lag: int = 0) -> np.ndarray:
    return x[round(start * FS) + lag : round(end * FS) + lag]


async def _echo_run(delay_ms: float, atten_db: float, processing: AudioProcessing) -> dict[
    str, float
]:
    scenario = echo_scenario(delay_ms, atten_db)
    room = Room(room_ir(seed=7), delay_ms, atten_db, near=scenario.near, realtime=False)
    out, processor = await through_room(scenario.far, room, processing)
    echo = np.concatenate(room.echo)
    near = scenario.near[: out.size]
    start, end = scenario.segments["double_talk"]
    lag = find_lag(_window(near, start, end), _window(out, start, end))
    stats = processor.stats
    result = {
        "erle": erle_db(echo, out, *scenario.segments["far_only"], lag),
        "erle_after": erle_db(echo, out, *scenario.segments["far_only_again"], lag),
        "double_talk": corr(_window(near, start, end), _window(out, start, end, lag)),
        "lag_ms": lag * 1000 / FS,
        "discarded": stats.reference["discarded"],
        "padded": stats.reference["padded"],
        "realigned": stats.reference["realigned"],
        "blocks": stats.blocks,
        "sent": out.size,
    }
    print(f"echo {delay_ms:g} ms {atten_db:g} dB {processing.label()}: {result}")
    return result


@pytest.mark.parametrize("delay_ms", [40.0, 120.0, 200.0])
async def test_echo_cancelled_and_double_talk_kept(delay_ms: float) -> None:
    """Echo 40..200 ms late, 12 dB down through a room: ERLE >= 25 dB after 2 s of far-end
    speech and again after double talk; the near end keeps >= 0.8 correlation in double talk;
    every block was processed against exactly the blocks the speaker played."""
    result = await _echo_run(delay_ms, -12.0, AudioProcessing())
    assert result["erle"] >= ERLE_TARGET_DB, result
    assert result["erle_after"] >= ERLE_TARGET_DB, result
    assert result["double_talk"] >= DOUBLE_TALK_CORR, result
    assert result["blocks"] * 960 == result["sent"], result
    # The speaker's blocks were paired in order from the first (the first capture block,
    # before anything was played, has silence), never moved.
    assert result["discarded"] == result["realigned"] == 0, result
    assert result["padded"] <= 2 * 960, result


async def test_loud_echo_is_cancelled() -> None:
    """Echo only 6 dB below the far end (as loud as a talker 6 dB away): ERLE >= 25 dB."""
    result = await _echo_run(120.0, -6.0, AudioProcessing())
    assert result["erle"] >= ERLE_TARGET_DB, result
    assert result["erle_after"] >= ERLE_TARGET_DB, result


async def test_without_processing_the_echo_is_sent() -> None:
    """The control: processing off sends the microphone as it is (ERLE about 0 dB)."""
    result = await _echo_run(120.0, -12.0, AudioProcessing.off())
    assert abs(result["erle"]) < 1.0, result
    assert result["double_talk"] > 0.9, result


async def test_echo_canceller_follows_a_new_echo_path() -> None:
    """The speaker moves at 8 s (another room response, 60 -> 150 ms, -12 -> -6 dB): ERLE is
    >= 25 dB again from 2 s after the change."""
    far = speech("far", -26.0, seconds=16.0)
    room = Room(room_ir(seed=7), 60.0, -12.0, realtime=False)
    switch_block = round(8.0 / 0.02)

    def move(index: int, processor: object) -> None:
        if index == switch_block:
            room.set_path(room_ir(seed=21), 150.0, -6.0)

    out, _ = await through_room(far, room, AudioProcessing(), every_block=move)
    echo = np.concatenate(room.echo)
    before = erle_db(echo, out, 2.0, 8.0)
    after = erle_db(echo, out, 10.0, 16.0)
    print(f"echo path change: ERLE {before:.1f} dB before, {after:.1f} dB 2 s after")
    assert before >= ERLE_TARGET_DB, (before, after)
    assert after >= ERLE_TARGET_DB, (before, after)


async def _snr(kind: str, processing: AudioProcessing) -> dict[str, float]:
    """SNR improvement by phase inversion (Hagerman), over the speech frames after 2 s."""
    clean, noise = noisy_speech(kind)
    plus = await through_processor(clean + noise, processing)
    minus = await through_processor(clean - noise, processing)
    speech_out, noise_out = (plus + minus) / 2, (plus - minus) / 2
    lag = find_lag(clean, speech_out)
    n = speech_out.size - lag
    clean, noise = clean[:n], noise[:n]
    speech_out, noise_out = speech_out[lag : lag + n], noise_out[lag : lag + n]
    mask = active_mask(clean)
    lead = mask.copy()
    mask[: round(2.0 * 100)] = False
    lead[:] = False
    lead[10:200] = True  # the noise-only lead-in, after the processors' first 100 ms
    snr_in = level_db(clean, mask) - level_db(noise, mask)
    snr_out = level_db(speech_out, mask) - level_db(noise_out, mask)
    result = {
        "snr_in": snr_in,
        "improvement": snr_out - snr_in,
        "speech_change": level_db(speech_out, mask) - level_db(clean, mask),
        "leak": level_db(speech_out, lead) - level_db(noise_out, lead),
    }
    print(f"noise {kind} {processing.label()}: {result}")
    return result


@pytest.mark.parametrize("kind", ["white", "pink", "hum"])
async def test_noise_suppression_gains_10_db_snr_and_keeps_speech(kind: str) -> None:
    """Speech in white, pink or 100 Hz hum noise at 5 dB SNR: the noise suppressor gains
    >= 10 dB SNR and changes the speech level by at most 3 dB."""
    result = await _snr(kind, NS_ONLY)
    assert abs(result["snr_in"] - 5.0) < 0.01, result
    # The phase-inversion split is valid: no speech is found in the noise-only lead-in.
    assert result["leak"] < -30.0, result
    assert result["improvement"] >= SNR_GAIN_DB, result
    assert abs(result["speech_change"]) <= SPEECH_KEPT_DB, result


async def test_whole_chain_gains_10_db_snr_on_pink_noise() -> None:
    """The default chain (echo, noise, gain) on the hardest noise still gains >= 10 dB."""
    result = await _snr("pink", AudioProcessing())
    assert result["leak"] < -30.0, result
    assert result["improvement"] >= SNR_GAIN_DB, result


async def test_quiet_speech_is_brought_to_the_target_level() -> None:
    """Speech at -40 dBFS comes out within 6 dB of the gain control's target (-20 dBFS)
    once it has settled (the last 10 of 30 s)."""
    clean = set_active_level(speech("near", -26.0, seconds=30.0), -40.0)
    out = await through_processor(clean, AudioProcessing())
    mask = active_mask(clean)
    settled = level_db(out[20 * FS :], mask[2000:])
    assert abs(active_level_db(clean) - -40.0) < 0.01
    print(f"gain: -40 dBFS speech settles at {settled:.1f} dBFS")
    assert abs(settled - AGC_TARGET_DBFS) <= GAIN_WITHIN_DB, settled


async def test_full_scale_speech_does_not_clip() -> None:
    """Speech peaking at 0 dBFS: not one sample of the output reaches full scale."""
    loud = speech("near", -26.0, seconds=30.0)
    loud /= np.max(np.abs(loud))
    assert np.max(np.abs(to_int16(loud).astype(np.int32))) == 32767
    out = to_int16(await through_processor(loud, AudioProcessing()))
    clipped = int(np.sum(np.abs(out.astype(np.int32)) >= 32767))
    print(f"gain: 0 dBFS peak speech, {clipped} samples clipped, peak "
          f"{20 * np.log10(np.max(np.abs(out.astype(np.int32))) / 32767):.2f} dBFS")
    assert clipped == 0
    assert np.max(np.abs(out.astype(np.int32))) < 32767 * 10 ** (-0.1 / 20)
