"""What the video encoder sends under constrained CPU and network: an I/O-free controller.

libwebrtc (every browser) keeps latency bounded on a slow machine or a thin path by sending
less: its *overuse detector* compares encode time with the frame interval and its bandwidth
estimate caps the bitrate; under "balanced" degradation it then lowers frame rate and
resolution in turn, and climbs back when there is headroom. :class:`VideoAdapter` does the
same for :class:`~callclient.media.encoding.VideoEncoderSession`, fed with numbers only (no
clock of its own, no codec), so its decisions are tested exactly:

* **ladder**: level 0 is the preset (the camera's size and frame rate); each level below
  alternates a resolution step (x0.75 of the side) and a frame-rate step (x0.8), the frame
  rate never below :data:`MIN_FPS` (15). :func:`ladder` lists it.
* **CPU**: each encode reports its wall time (which includes time the process was starved
  of CPU, the case of a loaded machine). The load is the smoothed encode time over the
  frame budget (1 / fps sent). Above :data:`OVERUSE` (0.85) for :data:`CPU_WINDOW` seconds
  the CPU level steps down; below :data:`UNDERUSE` (0.45) for as long, with the load the
  level above would have (scaled by its pixel rate) under :data:`HEADROOM` (0.7), it steps
  up. A step up that is undone within :data:`FLIP_WINDOW` doubles the wait before the next
  one (up to 60 s), so the controller does not oscillate.
* **bandwidth**: the target bitrate (the preset's, capped by the receivers' REMB and the
  loss controller) picks the highest level whose need fits: a level needs the preset's
  bitrate scaled by its pixel rate to the power 0.75 (VP8's rate grows slower than its
  pixel count) times :data:`BITRATE_FILL` (0.6). Going up needs 1.25x that need for
  :data:`BITRATE_HOLD` seconds, then goes to the highest level that allows.
* **loss** (GCC's loss-based controller, RFC draft-ietf-rmcat-gcc): a fraction lost above
  10 % cuts the loss-based rate by ``1 - loss / 2``; below 2 % it grows 8 % a second, never
  above the preset's bitrate.
* **probing above a stale REMB**: aiortc's receiver-side estimator (the REMB it sends)
  only grows additively, by a few kbit/s a second, once it has cut: after a congestion
  episode it would hold the stream near the old bottleneck for minutes. So REMB is trusted
  as a ceiling for :data:`REMB_TRUST` (3 s) after it *fell*; after that, with no loss, the
  rate probes above it, 8 % a second and 25 % a second once past 1.5x the rate of the last
  cut (the path has clearly cleared). A new fall of REMB (or, while probing, a jump of more
  than 10 % to a value below the probe), or loss, ends the probe at once.

The level sent is the lower of the CPU and bandwidth levels; the *reason* names which
limits it ("cpu", "bandwidth", both, or "none" at the preset). Every change is recorded as a
:class:`Step`. ``enabled=False`` keeps the preset whatever happens (the bitrate still follows
REMB and loss, without probing above REMB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BITRATE_FILL",
    "BITRATE_HOLD",
    "CPU_WINDOW",
    "FLIP_WINDOW",
    "HEADROOM",
    "MIN_FPS",
    "OVERUSE",
    "REMB_TRUST",
    "UNDERUSE",
    "Level",
    "SendState",
    "Step",
    "VideoAdapter",
    "ladder",
]

MIN_FPS: Final = 15.0
"""The frame rate is never lowered below this (nor below the preset's own, if lower)."""
OVERUSE: Final = 0.85
"""Encode time / frame budget above which the CPU is overused (libwebrtc's 85 %)."""
UNDERUSE: Final = 0.45
"""Encode time / frame budget below which there may be room to step up."""
HEADROOM: Final = 0.7
"""A step up needs the load predicted at the level above to stay below this."""
CPU_WINDOW: Final = 1.5
"""Seconds a load must persist before the CPU level changes."""
FLIP_WINDOW: Final = 10.0
"""A step down this soon after a step up doubles the wait before the next step up."""
BITRATE_FILL: Final = 0.6
"""The share of the preset's bitrate (scaled by pixel rate^0.75) a level needs."""
BITRATE_HOLD: Final = 3.0
"""Seconds the bitrate must allow a higher level before the bandwidth level steps up."""
REMB_TRUST: Final = 3.0
"""Seconds a fall of the receivers' estimate caps the rate before probing above it."""
_REMB_FALL = 0.95
_REMB_JUMP = 0.10
_PROBE_GROWTH = 0.08
_PROBE_FAST_GROWTH = 0.25
_PROBE_FAST_ABOVE = 1.5
_BITRATE_UP_MARGIN = 1.25
_SMOOTHING = 0.25
"""Weight of a new encode-time sample in the moving average."""
_UP_WAIT = 3.0
_UP_WAIT_MAX = 60.0
_LOSS_HIGH = 0.10
_LOSS_LOW = 0.02
_SIDE_STEP = 0.75
_FPS_STEP = 0.8
_MIN_SIDE = 90
_MAX_LEVELS = 12


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: the frame size and rate sent."""

    width: int
    height: int
    fps: float

    def pixel_rate(self) -> float:
        """Pixels per second."""
        return self.width * self.height * self.fps


@dataclass(frozen=True)
class SendState:
    """What the encoder sends now, and why."""

    width: int
    height: int
    fps: float
    bitrate: int
    """The target bitrate (bit/s) of the encoder."""
    level: int
    """0 = the preset; higher = degraded further."""
    reason: str
    """"none", "cpu", "bandwidth" or "cpu+bandwidth"."""
    cpu_load: float
    """Smoothed encode time / frame budget (0 before the first encode)."""
    estimate: int | None = None
    """The receivers' lowest bitrate estimate (REMB), None before one."""
    fraction_lost: float | None = None
    """The last fraction lost reported (0..1), None before a report."""


@dataclass(frozen=True)
class Step:
    """One change of the level sent."""

    at: float
    """The caller's clock (seconds)."""
    level: int
    width: int
    height: int
    fps: float
    reason: str
    """What changed: "cpu" or "bandwidth" (or "preset")."""
    direction: str
    """"down" or "up"."""


def _even(value: float) -> int:
    return max(2, round(value / 2.0) * 2)


def ladder(width: int, height: int, fps: float) -> list[Level]:
    """The levels from the preset (index 0) down: resolution and frame-rate steps in turn."""
    if width <= 0 or height <= 0 or fps <= 0:
        raise ValueError(f"the preset must be positive, got {width}x{height} at {fps} fps")
    floor = min(fps, MIN_FPS)
    levels = [Level(width, height, fps)]
    scale, rate = 1.0, fps
    while len(levels) < _MAX_LEVELS:
        resize = len(levels) % 2 == 1
        if resize and min(width, height) * scale * _SIDE_STEP >= _MIN_SIDE:
            scale *= _SIDE_STEP
        elif rate * _FPS_STEP >= floor - 1e-9:
            rate *= _FPS_STEP
        elif min(width, height) * scale * _SIDE_STEP >= _MIN_SIDE:
            scale *= _SIDE_STEP
        else:
            break
        levels.append(Level(_even(width * scale), _even(height * scale), round(rate, 2)))
    return levels


class VideoAdapter:
    """Chooses the frame size, rate and bitrate sent from encode load, REMB and loss.

    Feed it with :meth:`encoded` (each encode's wall time), :meth:`set_estimate` (the
    receivers' bitrate estimate) and :meth:`report_loss` (fraction lost from receiver
    reports), each with the caller's clock; read :attr:`state`. :meth:`admit` is the frame
    rate limiter: whether a frame captured at ``pts`` seconds should be encoded.
    """

    def __init__(
        self, bitrate: int, *, fps: float = 30.0, enabled: bool = True, min_bitrate: int = 1
    ) -> None:
        if bitrate <= 0:
            raise ValueError(f"bitrate must be positive, got {bitrate}")
        self.enabled = enabled
        self.min_bitrate = min_bitrate
        self._preset_bitrate = bitrate
        self._nominal_fps = fps
        self._levels: list[Level] = []
        self._preset: tuple[int, int] | None = None
        self._cpu_level = 0
        self._bw_level = 0
        self._load = 0.0
        self._over_since: float | None = None
        self._under_since: float | None = None
        self._last_cpu_change = -math.inf
        self._last_up: float | None = None
        self._up_wait = _UP_WAIT
        self._estimate: int | None = None
        self._loss_rate: float | None = None
        self._loss_at: float | None = None
        self._bw_up_since: float | None = None
        self._remb_fell_at: float | None = None
        self._last_loss: float | None = None
        self._loss_at_high: float | None = None
        self._cut_rate: float | None = None
        self._probe: float | None = None
        self._probe_at: float | None = None
        self._last_pts: float | None = None
        self.steps: list[Step] = []
        """Every level change, oldest first."""
        self.frames_dropped = 0
        """Frames :meth:`admit` refused (the frame-rate limiter)."""

    # ------------------------------------------------------------------ inputs

    def set_preset(self, width: int, height: int, now: float) -> None:
        """The size of the frames the camera delivers (the preset); a new one restarts."""
        if self._preset == (width, height):
            return
        self._preset = (width, height)
        self._levels = ladder(width, height, self._nominal_fps)
        self._cpu_level = self._bw_level = 0
        self._load = 0.0
        self._over_since = self._under_since = None
        self._last_pts = None
        self._bw_level = self._bandwidth_level(now, initial=True)
        if self._bw_level:
            self._record(now, "bandwidth", "down")

    def set_bitrate(self, bitrate: int, now: float) -> None:
        """A new preset bitrate (bit/s)."""
        if bitrate <= 0:
            raise ValueError(f"bitrate must be positive, got {bitrate}")
        self._preset_bitrate = bitrate
        if self._loss_rate is not None:
            self._loss_rate = min(self._loss_rate, float(bitrate))
        self._update_bandwidth(now)

    def set_estimate(self, estimate: int | None, now: float) -> None:
        """The lowest bitrate estimate (bit/s) of the receivers (REMB), None without one."""
        previous = self._estimate
        if estimate is not None and previous is None:
            # The first estimate is a start-up measure of what arrived, not a sign of
            # congestion: a ceiling, probed above at once.
            self._cut(float(estimate))
        elif estimate is not None and previous is not None and (
            estimate < _REMB_FALL * previous
            # While probing, a new value below the probe (aiortc's overuse answer is 0.85x
            # the incoming rate, which can be above its stale value): a ceiling again.
            or (self._probe is not None and estimate < self._probe
                and abs(estimate - previous) > _REMB_JUMP * previous)
        ):
            self._remb_fell_at = now
            self._cut(float(estimate))
        self._estimate = estimate
        self._update_probe(now)
        self._update_bandwidth(now)

    def report_loss(self, fraction: float, now: float) -> None:
        """A receiver report's fraction of packets lost (0..1) since its previous report."""
        self._last_loss = fraction
        rate = self._loss_rate if self._loss_rate is not None else float(self.bitrate)
        elapsed = 1.0 if self._loss_at is None else min(max(now - self._loss_at, 0.0), 2.0)
        self._loss_at = now
        if fraction > _LOSS_HIGH:
            rate *= 1.0 - 0.5 * fraction
            self._loss_at_high = now
            self._cut(rate)
        elif fraction < _LOSS_LOW:
            rate *= (1.0 + self._growth(rate)) ** elapsed
        self._loss_rate = min(max(rate, float(self.min_bitrate)), float(self._preset_bitrate))
        self._update_bandwidth(now)

    def encoded(self, seconds: float, now: float) -> None:
        """One frame took ``seconds`` (wall time) to encode at the current level."""
        if not self._levels:
            return
        budget = 1.0 / self._levels[self.level].fps
        sample = max(seconds, 0.0) / budget
        self._load = sample if self._load == 0.0 else (
            (1 - _SMOOTHING) * self._load + _SMOOTHING * sample
        )
        if not self.enabled:
            return
        self._update_probe(now)
        self._update_bandwidth(now)  # a raised estimate is acted on without a new report
        self._over_since = (self._over_since or now) if self._load > OVERUSE else None
        self._under_since = (self._under_since or now) if self._load < UNDERUSE else None
        if now - self._last_cpu_change < CPU_WINDOW:
            return
        if self._over_since is not None and now - self._over_since >= CPU_WINDOW:
            if self._cpu_level < len(self._levels) - 1:
                self._cpu_down(now)
        elif (
            self._under_since is not None
            and now - self._under_since >= CPU_WINDOW
            and self._cpu_level > 0
            and now - self._last_cpu_change >= self._up_wait
            and self._predicted_load(self._cpu_level - 1) < HEADROOM
        ):
            self._cpu_up(now)

    def admit(self, pts: float) -> bool:
        """Whether the frame captured at ``pts`` seconds is encoded (the frame-rate limit)."""
        if not self._levels:
            return True
        interval = 1.0 / self._levels[self.level].fps
        due = self._last_pts  # when the next frame is due
        # Frames are due every interval (a quarter of one early is close enough: capture
        # jitter); a new source (the clock went back) or a long gap restarts the schedule.
        if due is None or pts < due - 2 * interval or pts > due + interval:
            self._last_pts = pts + interval
            return True
        if pts >= due - 0.25 * interval:
            self._last_pts = due + interval
            return True
        self.frames_dropped += 1
        return False

    # ------------------------------------------------------------------ outputs

    @property
    def level(self) -> int:
        """The level sent: the lower of the CPU and the bandwidth levels."""
        return max(self._cpu_level, self._bw_level) if self.enabled else 0

    @property
    def bitrate(self) -> int:
        """The encoder's target bitrate (bit/s): the preset's, capped by REMB and loss."""
        return self.bitrate_with(self._estimate)

    def bitrate_with(self, estimate: int | None) -> int:
        """:attr:`bitrate` if the receivers' estimate were ``estimate``."""
        rate = float(self._preset_bitrate)
        if estimate is not None:
            ceiling = float(estimate)
            if self._probe is not None:
                ceiling = max(ceiling, self._probe)
            rate = min(rate, max(ceiling, float(self.min_bitrate)))
        if self._loss_rate is not None:
            rate = min(rate, self._loss_rate)
        return max(1, int(rate))

    @property
    def state(self) -> SendState:
        """What is sent now and why."""
        bitrate = self.bitrate
        if not self._levels:
            return SendState(0, 0, self._nominal_fps, bitrate, 0, "none", 0.0,
                             self._estimate, self._last_loss)
        level = self._levels[self.level]
        reasons = []
        if self.enabled and self._cpu_level and self._cpu_level == self.level:
            reasons.append("cpu")
        if self.enabled and self._bw_level and self._bw_level == self.level:
            reasons.append("bandwidth")
        return SendState(
            level.width, level.height, level.fps, bitrate, self.level,
            "+".join(reasons) or "none", round(self._load, 3), self._estimate,
            self._last_loss,
        )

    # ------------------------------------------------------------------ internals

    def _growth(self, rate: float) -> float:
        """The growth a second of a probing rate: faster once well past the last cut."""
        if self._cut_rate is not None and rate > _PROBE_FAST_ABOVE * self._cut_rate:
            return _PROBE_FAST_GROWTH
        return _PROBE_GROWTH

    def _cut(self, rate: float) -> None:
        self._cut_rate = rate
        self._probe = self._probe_at = None

    def _update_probe(self, now: float) -> None:
        estimate = self._estimate
        if not self.enabled or estimate is None or estimate >= self._preset_bitrate:
            self._probe = self._probe_at = None  # switched off: REMB rules, as it always did
            return
        recent = [t for t in (self._remb_fell_at, self._loss_at_high) if t is not None]
        if recent and now - max(recent) < REMB_TRUST:
            self._probe, self._probe_at = None, now
            return
        base = self._probe if self._probe is not None else float(estimate)
        elapsed = 0.0 if self._probe_at is None else min(max(now - self._probe_at, 0.0), 1.0)
        self._probe = min(base * (1.0 + self._growth(base)) ** elapsed,
                          float(self._preset_bitrate))
        self._probe_at = now

    def _predicted_load(self, level: int) -> float:
        here, there = self._levels[self.level], self._levels[level]
        # Encode time grows with pixels per frame; the budget shrinks with the frame rate.
        per_frame = (there.width * there.height) / (here.width * here.height)
        return self._load * per_frame * there.fps / here.fps

    def _cpu_down(self, now: float) -> None:
        if self._last_up is not None and now - self._last_up < FLIP_WINDOW:
            self._up_wait = min(self._up_wait * 2, _UP_WAIT_MAX)
        before = self.level
        self._cpu_level += 1
        self._after_cpu_change(now)
        if self.level != before:
            self._record(now, "cpu", "down")

    def _cpu_up(self, now: float) -> None:
        before = self.level
        self._cpu_level -= 1
        self._last_up = now
        self._after_cpu_change(now)
        if self.level != before:
            self._record(now, "cpu", "up")

    def _after_cpu_change(self, now: float) -> None:
        self._last_cpu_change = now
        self._over_since = self._under_since = None
        # The average was measured at the old level; restart it from the prediction.
        self._load = 0.0

    def _need(self, level: int) -> float:
        preset, this = self._levels[0], self._levels[level]
        share: float = (this.pixel_rate() / preset.pixel_rate()) ** 0.75
        return self._preset_bitrate * BITRATE_FILL * share

    def _bandwidth_level(self, now: float, initial: bool = False) -> int:
        rate = self.bitrate
        fits = next(
            (i for i in range(len(self._levels)) if self._need(i) <= rate), len(self._levels) - 1
        )
        if fits >= self._bw_level or initial:
            self._bw_up_since = None
            return fits
        # Going up: the rate must allow the level above with a margin, for a while.
        if self._need(self._bw_level - 1) * _BITRATE_UP_MARGIN > rate:
            self._bw_up_since = None
            return self._bw_level
        if self._bw_up_since is None:
            self._bw_up_since = now
        if now - self._bw_up_since >= BITRATE_HOLD:
            self._bw_up_since = now
            # Every level the rate now allows with the margin, not one at a time.
            return next(i for i in range(self._bw_level)
                        if self._need(i) * _BITRATE_UP_MARGIN <= rate)
        return self._bw_level

    def _update_bandwidth(self, now: float) -> None:
        if not self._levels or not self.enabled:
            return
        before, bw_before = self.level, self._bw_level
        self._bw_level = self._bandwidth_level(now)
        if self.level != before:
            self._record(now, "bandwidth", "down" if self._bw_level > bw_before else "up")

    def _record(self, now: float, reason: str, direction: str) -> None:
        level = self._levels[self.level]
        self.steps.append(
            Step(now, self.level, level.width, level.height, level.fps, reason, direction)
        )
