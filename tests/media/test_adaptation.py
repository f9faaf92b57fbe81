"""The video adaptation core: ladder, CPU overuse with hysteresis, bandwidth and loss levels."""

from __future__ import annotations

import pytest

from callclient.media.adaptation import (
    CPU_WINDOW,
    MIN_FPS,
    OVERUSE,
    REMB_TRUST,
    VideoAdapter,
    ladder,
)

FPS = 30.0
BUDGET = 1 / FPS


def feed(adapter: VideoAdapter, load: float, start: float, seconds: float) -> float:
    """Encodes for ``seconds``, one per frame interval sent, costing ``load`` x the budget
    at the preset (the cost scales with the pixels of the level sent)."""
    now = start
    while now < start + seconds:
        state = adapter.state
        adapter.encoded(load * BUDGET * state.width * state.height / (1280 * 720), now)
        now += 1 / state.fps
    return now


def adapter_720p(**kwargs: object) -> VideoAdapter:
    adapter = VideoAdapter(1_200_000, fps=FPS, **kwargs)  # type: ignore[arg-type]
    adapter.set_preset(1280, 720, 0.0)
    return adapter


def test_ladder_alternates_resolution_and_frame_rate_and_keeps_15_fps() -> None:
    levels = ladder(1280, 720, 30.0)
    assert (levels[0].width, levels[0].height, levels[0].fps) == (1280, 720, 30.0)
    assert (levels[1].width, levels[1].height, levels[1].fps) == (960, 540, 30.0)
    assert (levels[2].width, levels[2].height, levels[2].fps) == (960, 540, 24.0)
    rates = [level.pixel_rate() for level in levels]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    assert all(level.fps >= MIN_FPS for level in levels)
    assert all(level.width % 2 == 0 and level.height % 2 == 0 for level in levels)
    with pytest.raises(ValueError, match="positive"):
        ladder(0, 720, 30.0)


def test_overuse_steps_down_only_after_the_window_then_again_while_it_lasts() -> None:
    adapter = adapter_720p()
    now = feed(adapter, 2.5, 0.0, CPU_WINDOW * 0.8)
    assert adapter.state.level == 0  # a short burst does not degrade
    now = feed(adapter, 2.5, now, 0.8 * CPU_WINDOW)
    assert adapter.state.level == 1
    assert adapter.state.reason == "cpu"
    now = feed(adapter, 2.5, now, 10 * CPU_WINDOW)
    # 2.5x at 1280x720@30 fits once the pixel rate is below 1/2.5 x 0.85: 720x404@24.
    state = adapter.state
    assert state.level == 3 and (state.width, state.height, state.fps) == (720, 404, 24.0)
    assert OVERUSE > state.cpu_load > 0.4
    assert [(s.direction, s.reason, s.level) for s in adapter.steps] == [
        ("down", "cpu", 1), ("down", "cpu", 2), ("down", "cpu", 3)]


def test_moderate_load_holds_the_level() -> None:
    """Between underuse and overuse nothing changes (the hysteresis band)."""
    adapter = adapter_720p()
    feed(adapter, 1.3, 0.0, 60.0)  # 1.3 at the preset, 0.73 at 960x540
    assert adapter.state.level == 1
    assert len(adapter.steps) == 1


def test_headroom_steps_back_up_to_the_preset() -> None:
    adapter = adapter_720p()
    now = feed(adapter, 2.5, 0.0, 20.0)
    assert adapter.state.level == 3
    now = feed(adapter, 0.3, now, 60.0)
    state = adapter.state
    assert (state.level, state.width, state.height, state.fps) == (0, 1280, 720, 30.0)
    assert state.reason == "none"
    assert [s.direction for s in adapter.steps] == ["down"] * 3 + ["up"] * 3


def test_a_step_up_that_overloads_again_waits_longer_next_time() -> None:
    """Flip-flopping doubles the wait before the next step up."""
    adapter = adapter_720p()
    now = feed(adapter, 1.3, 0.0, 5.0)
    assert adapter.state.level == 1
    while adapter.state.level:
        now = feed(adapter, 0.5, now, 0.1)
    first_down, first_up = adapter.steps[0].at, adapter.steps[1].at
    now = feed(adapter, 1.3, now, 5.0)  # the preset is too much after all
    assert adapter.state.level == 1
    second_down = adapter.steps[2].at
    feed(adapter, 0.5, now, 60.0)
    assert adapter.state.level == 0
    second_up = adapter.steps[3].at
    # The first step up waited 3 s after its step down; after the flip, twice that.
    assert second_up - second_down >= 6.0 > first_up - first_down


def test_predicted_load_blocks_a_step_up_without_headroom() -> None:
    """Underused at the lower level but the level above would overload: stay."""
    adapter = adapter_720p()
    now = feed(adapter, 1.3, 0.0, 5.0)
    assert adapter.state.level == 1
    # 0.75 at the preset is 0.42 at 960x540 (underused) but over the headroom above.
    feed(adapter, 0.75, now, 60.0)
    assert adapter.state.level == 1


def test_frame_rate_limiter_admits_the_level_rate() -> None:
    adapter = adapter_720p()
    feed(adapter, 2.5, 0.0, 20.0)
    fps = adapter.state.fps
    assert fps < FPS
    admitted = sum(adapter.admit(i / FPS) for i in range(300))  # 10 s of 30 fps capture
    assert abs(admitted / 10.0 - fps) <= 1.5
    assert adapter.frames_dropped == 300 - admitted


def test_bandwidth_lowers_bitrate_first_then_resolution_and_recovers() -> None:
    adapter = adapter_720p()
    adapter.set_estimate(900_000, 1.0)  # 0.75 of the preset: bitrate only
    assert adapter.state.level == 0 and adapter.bitrate == 900_000
    adapter.set_estimate(600_000, 2.0)
    state = adapter.state
    assert state.level >= 1 and state.reason == "bandwidth" and state.bitrate == 600_000
    adapter.set_estimate(300_000, 3.0)
    low = adapter.state
    assert low.level > state.level and low.fps >= 15 and low.width * low.height < 960 * 540
    adapter.set_estimate(5_000_000, 4.0)
    assert adapter.state.level == low.level  # not at once: the rate must hold
    now = 4.0
    while adapter.state.level and now < 60:
        now += 0.5
        adapter.set_estimate(5_000_000, now)
    assert adapter.state.level == 0 and adapter.bitrate == 1_200_000
    assert now - 4.0 <= 15.0  # back within the test plan's bound
    directions = [s.direction for s in adapter.steps]
    assert "down" in directions and directions[-1] == "up"


def test_loss_cuts_the_rate_and_clean_reports_restore_it() -> None:
    adapter = adapter_720p()
    for second in range(1, 6):
        adapter.report_loss(0.3, float(second))
    assert adapter.bitrate < 0.5 * 1_200_000
    assert adapter.state.level >= 1 and "bandwidth" in adapter.state.reason
    now = 6.0
    while adapter.bitrate < 1_200_000 and now < 60:
        adapter.report_loss(0.0, now)
        now += 1.0
    assert adapter.bitrate == 1_200_000
    feed(adapter, 0.1, now, 20.0)
    assert adapter.state.level == 0


def test_moderate_loss_holds_the_rate() -> None:
    adapter = adapter_720p()
    adapter.report_loss(0.3, 1.0)
    rate = adapter.bitrate
    for second in range(2, 10):
        adapter.report_loss(0.05, float(second))
    assert adapter.bitrate == rate


def test_cpu_and_bandwidth_together_take_the_lower_level_and_name_both() -> None:
    adapter = adapter_720p()
    adapter.set_estimate(600_000, 0.0)
    assert adapter.state.level == 1 and adapter.state.reason == "bandwidth"
    now = feed(adapter, 2.5, 0.0, 2.5)  # overused at the bandwidth's level too
    assert adapter.state.level == 1 and adapter.state.reason == "cpu+bandwidth"
    feed(adapter, 2.5, now, 20.0)
    assert adapter.state.level == 3 and adapter.state.reason == "cpu"


def test_disabled_keeps_the_preset_but_follows_remb() -> None:
    adapter = adapter_720p(enabled=False)
    adapter.set_estimate(300_000, 1.0)
    feed(adapter, 2.0, 0.0, 10.0)
    state = adapter.state
    assert (state.width, state.height, state.fps, state.reason) == (1280, 720, 30.0, "none")
    assert state.bitrate == 300_000
    assert adapter.steps == []
    assert all(adapter.admit(i / FPS) for i in range(30))


def test_a_new_preset_restarts_from_its_top() -> None:
    adapter = adapter_720p()
    feed(adapter, 2.5, 0.0, 20.0)
    assert adapter.state.level > 0
    adapter.set_preset(640, 360, 50.0)
    assert (adapter.state.width, adapter.state.height, adapter.state.level) == (640, 360, 0)


def test_a_stale_low_estimate_is_probed_above_and_a_new_fall_ends_the_probe() -> None:
    """aiortc's REMB recovers by a few kbit/s a second: after REMB_TRUST without a fall the
    rate probes above it (8 %/s, then 25 %/s) back to the preset; a fall cuts at once."""
    adapter = adapter_720p()
    adapter.set_estimate(1_200_000, -1.0)
    adapter.set_estimate(300_000, 0.0)  # a fall: congestion
    now = 0.0
    while now < REMB_TRUST - 0.1:
        now += 0.1
        adapter.set_estimate(300_000 + int(now * 5000), now)  # creeping up, as aiortc does
    assert adapter.bitrate <= 320_000
    rates = []
    while adapter.bitrate < 1_200_000 and now < 60:
        now += 0.1
        adapter.set_estimate(300_000 + int(now * 5000), now)
        rates.append(adapter.bitrate)
    assert adapter.bitrate == 1_200_000
    assert now <= 20.0  # the "back within 15 s of the lift", plus the trust time
    assert rates == sorted(rates)
    adapter.set_estimate(500_000, now + 0.1)  # congestion again: REMB falls
    assert adapter.bitrate == 500_000
    adapter.set_estimate(500_000, now + 1.0)
    assert adapter.bitrate == 500_000  # trusted again for REMB_TRUST


def test_loss_blocks_probing() -> None:
    adapter = adapter_720p()
    adapter.set_estimate(1_200_000, -1.0)
    adapter.set_estimate(300_000, 0.0)
    for second in range(1, 20):
        adapter.report_loss(0.2, float(second))
        adapter.set_estimate(300_000, float(second))
    assert adapter.bitrate <= 300_000
