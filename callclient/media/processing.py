"""Capture-path audio processing: echo cancellation, noise suppression, gain control, high-pass.

Between the microphone and the shared Opus encoder, every 20 ms block goes through WebRTC's
audio processing module (the code browsers run; Python bindings: ``pywebrtc-audio``), in
10 ms frames, in this order:

1. **high-pass filter and acoustic echo cancellation** (AEC3): what the speaker was handed is
   the far-end reference; AEC3 finds the delay to its echo itself (0..500 ms) and removes the
   echo, with its residual-echo suppressor. The high-pass filter (about 100 Hz) always runs
   with echo cancellation (the library applies it), and alone when only it is asked for;
2. **noise suppression** (WebRTC NS, strongest level: up to 21 dB on stationary noise);
3. **automatic gain control** (AGC2 adaptive digital gain, at most +30 dB, 5 dB headroom,
   6 dB/s, with its limiter): speech settles near -20 dBFS, and nothing clips.

Each stage is a separate pywebrtc object: version 0.2.0's all-in-one ``AudioProcessor`` runs
its noise suppressor before band splitting, so at 48 kHz it suppresses about 6 dB whatever the
level (measured: ``docs/audio.md``); the separate ``NoiseSuppressor`` does not have that bug.

The pieces:

* :class:`AudioProcessing` is the configuration (which stages run).
* :class:`PlayoutReference` keeps what the speaker was handed, at the moment it was handed
  over (:meth:`CaptureProcessor.tap` wraps the speaker's ``pull``), until the capture block
  it pairs with is processed. A reference that arrives after its echo ruins the cancellation;
  one that is early only costs AEC3 a longer delay to find.
* :class:`ProcessingChain` is the DSP itself, for one thread (the library's objects are not
  thread-safe), free of I/O so it can be tested on signals.
* :class:`CaptureProcessor` runs the chain off the event loop: one worker thread, fed by a
  queue bounded by blocks in flight (each block is awaited before the next is read, so one
  normally). Nothing is dropped: a block that cannot be processed (queue full, library error)
  is sent unprocessed. The microphone paces the track, so the encoder still gets one block per
  20 ms; a stalled worker only delays blocks, which the microphone's own queue holds.

With every stage off a block is returned as it came, without a thread hop (bit-exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE, AudioSource, Block

__all__ = [
    "AGC_TARGET_DBFS",
    "AudioProcessing",
    "CaptureProcessor",
    "PlayoutReference",
    "ProcessingChain",
    "ProcessingStats",
]

logger = logging.getLogger(__name__)

FRAME_SAMPLES = SAMPLE_RATE // 100
"""Samples in the 10 ms frames the library works in."""
NS_LEVEL = 3
"""WebRTC NS level 0..3 (6, 12, 18, 21 dB); 3 is the only one that gains 10 dB SNR on pink noise."""
AGC_MAX_GAIN_DB = 30.0
AGC_HEADROOM_DB = 5.0
AGC_MAX_CHANGE_DB_PER_S = 6.0
AGC_TARGET_DBFS = -20.0
"""Where the gain control settles the active level of speech (measured; AGC2 has no knob)."""
REFERENCE_MAX_BLOCKS = 25
"""20 ms blocks of playout kept for the echo canceller (what can be handed over ahead)."""
_MAX_DELAY_MS = 500
_JITTER_SAMPLES = BLOCK_SAMPLES
"""Lead kept beyond one capture block, for callbacks that run early or late."""
_RESYNC_SAMPLES = 5 * BLOCK_SAMPLES
"""A speaker this far behind the microphone stalled (it played silence meanwhile)."""


@dataclass(frozen=True)
class AudioProcessing:
    """Which stages of the capture processing run (all of them by default).

    ``AudioProcessing()`` turns everything on; :meth:`off` nothing. Echo cancellation always
    brings the high-pass filter with it.
    """

    echo_cancellation: bool = True
    noise_suppression: bool = True
    auto_gain: bool = True
    high_pass_filter: bool = True

    @classmethod
    def off(cls) -> AudioProcessing:
        """Every stage off: the microphone's blocks are sent bit-exact."""
        return cls(False, False, False, False)

    @classmethod
    def default_for(cls, microphone: AudioSource | None) -> AudioProcessing:
        """On for a microphone in a room (``acoustic``, a real device), off for virtual ones."""
        return cls() if microphone is not None and microphone.acoustic else cls.off()

    @property
    def enabled(self) -> bool:
        """Whether any stage runs."""
        return self.echo_cancellation or self.noise_suppression or self.auto_gain or (
            self.high_pass_filter
        )

    def label(self) -> str:
        """A short description: ``"AEC NS AGC HPF"`` for the stages on, ``"off"`` for none."""
        names = [
            name for name, on in (
                ("AEC", self.echo_cancellation), ("NS", self.noise_suppression),
                ("AGC", self.auto_gain), ("HPF", self.high_pass_filter),
            ) if on
        ]
        return " ".join(names) or "off"

    def with_changes(
        self,
        *,
        echo_cancellation: bool | None = None,
        noise_suppression: bool | None = None,
        auto_gain: bool | None = None,
        high_pass_filter: bool | None = None,
    ) -> AudioProcessing:
        """A copy with the stages given (not None) switched."""
        changes = {
            name: bool(value) for name, value in (
                ("echo_cancellation", echo_cancellation),
                ("noise_suppression", noise_suppression),
                ("auto_gain", auto_gain),
                ("high_pass_filter", high_pass_filter),
            ) if value is not None
        }
        return replace(self, **changes)


class PlayoutReference:
    """What the speaker was handed, kept for the echo canceller; thread-safe.

    :meth:`push` runs where the speaker pulls (a sound card callback or the loop), at the
    moment a block is handed over; every sample gets the next *playout index*. :meth:`take`
    gives the worker the reference for one capture block: the samples from a read index that
    advances exactly as many samples as the microphone delivers, so the pairing follows the
    two devices' clocks, not the moments their callbacks happen to run (sound cards hand
    over blocks in bursts). Samples not handed over yet at their turn are silence (counted in
    :attr:`padded`; if they come later they are skipped, :attr:`discarded`).

    The *lead* (samples handed over and not yet taken) is how old the reference is when its
    capture block is processed; it must stay below the echo path's delay. The read index is
    set at the first take so the lead is two blocks (one for the capture block, one for the
    callbacks' jitter), then moved only when over ``window`` takes (1 s) the lead either ran
    short (jitter larger than planned: the reference is moved back by the shortfall) or never
    came down to three blocks (a backlog: moved forward to two); or at once when the speaker
    fell more than :data:`_RESYNC_SAMPLES` behind (it stalled and played silence) or ran
    ``capacity`` ahead (nothing was taken meanwhile).
    """

    def __init__(
        self, capacity: int = REFERENCE_MAX_BLOCKS * BLOCK_SAMPLES, window: int = 50
    ) -> None:
        if capacity < 2 * BLOCK_SAMPLES:
            raise ValueError(f"capacity must be >= {2 * BLOCK_SAMPLES}, got {capacity}")
        self.capacity = capacity
        self.window = window
        self._lock = threading.Lock()
        self._ring = np.zeros(capacity, dtype=np.int16)
        self._written = 0
        self._read: int | None = None
        self._takes = 0
        self._least_lead = 0
        self.pushed = 0
        """Samples handed over by the speaker."""
        self.discarded = 0
        """Samples handed over but never given (too late, or skipped by a realignment)."""
        self.padded = 0
        """Samples of silence given because the speaker had not handed them over in time."""
        self.realigned = 0
        """Times the read index was moved."""

    @property
    def queued(self) -> int:
        """Samples handed over and not taken yet (the lead; 0 before the first take)."""
        with self._lock:
            return self._written - self._read if self._read is not None else 0

    def push(self, block: Block) -> None:
        """Keep a block that was just handed to the speaker."""
        samples = np.asarray(block, dtype=np.int16).reshape(-1)[-self.capacity :]
        with self._lock:
            start = self._written % self.capacity
            first = min(samples.size, self.capacity - start)
            self._ring[start : start + first] = samples[:first]
            self._ring[: samples.size - first] = samples[first:]
            self._written += samples.size
            self.pushed += samples.size

    def take(self, count: int) -> tuple[Block, int]:
        """The reference for ``count`` capture samples, and the lead before taking."""
        with self._lock:
            if self._read is None:
                self._read = self._written - count - _JITTER_SAMPLES
            lead = self._written - self._read
            if lead < -_RESYNC_SAMPLES or lead > self.capacity - count:
                # The speaker stalled (it played silence meanwhile), or nothing was taken
                # for long (the microphone was closed): pair with what was just handed over.
                self._move(self._written - count - _JITTER_SAMPLES)
                lead = self._written - self._read
            out = np.zeros(count, dtype=np.int16)
            first = max(self._read, 0, self._written - self.capacity)
            last = min(self._read + count, self._written)
            if last > first:
                out[first - self._read : last - self._read] = self._ring[
                    np.arange(first, last) % self.capacity
                ]
            given = max(0, last - first)
            self.padded += count - given
            self._read += count
            self._least_lead = lead if self._takes == 0 else min(self._least_lead, lead)
            self._takes += 1
            if self._takes >= self.window:
                self._takes = 0
                if self._least_lead < count:  # ran short: take the reference from earlier
                    self._move(self._read - (count - self._least_lead))
                elif self._least_lead >= count + 2 * _JITTER_SAMPLES:  # a standing backlog
                    self._move(self._read + self._least_lead - count - _JITTER_SAMPLES)
        return out, lead

    def _move(self, read: int) -> None:
        """Set the read index (lock held); skipped samples count as discarded."""
        assert self._read is not None
        if read > self._read:
            self.discarded += min(read, self._written) - min(self._read, self._written)
        self._read = max(read, self._written - self.capacity)
        self.realigned += 1

    def clear(self) -> None:
        """Forget what was handed over (the output stopped or changed); realign at once."""
        with self._lock:
            self._read = None
            self._written = 0
            self._takes = 0


def _load_library() -> Any:
    import pywebrtc_audio

    return pywebrtc_audio


class ProcessingChain:
    """The DSP of the capture path; use it from one thread only.

    :meth:`process` takes microphone samples and the far-end reference of the same length
    (any multiple of 10 ms) and returns the processed samples. :meth:`configure` switches
    stages; a stage switched on starts from a fresh state.
    """

    def __init__(self, config: AudioProcessing, sample_rate: int = SAMPLE_RATE) -> None:
        self._lib = _load_library()
        self.sample_rate = sample_rate
        self.config = AudioProcessing.off()
        self._front: Any = None
        self._ns: Any = None
        self._agc: Any = None
        self._delay_ms = 0
        self.configure(config)

    @property
    def stream_delay_ms(self) -> int:
        """The echo canceller's delay hint: playout handed over -> its echo processed."""
        return self._delay_ms

    @stream_delay_ms.setter
    def stream_delay_ms(self, value: int) -> None:
        self._delay_ms = max(0, min(_MAX_DELAY_MS, int(value)))
        if self._front is not None and self.config.echo_cancellation:
            self._front.stream_delay_ms = self._delay_ms

    def configure(self, config: AudioProcessing) -> None:
        """Run the stages ``config`` asks for from the next frame on."""
        lib, rate, old = self._lib, self.sample_rate, self.config
        front = (config.echo_cancellation, config.high_pass_filter or config.echo_cancellation)
        if front != (old.echo_cancellation, old.high_pass_filter or old.echo_cancellation):
            if config.echo_cancellation:
                self._front = lib.AudioProcessor(
                    sample_rate=rate, echo_cancellation=True, high_pass_filter=True,
                    stream_delay_ms=self._delay_ms,
                )
            elif config.high_pass_filter:
                self._front = lib.AudioProcessor(sample_rate=rate, high_pass_filter=True)
            else:
                self._front = None
        if config.noise_suppression != old.noise_suppression:
            self._ns = lib.NoiseSuppressor(rate, level=NS_LEVEL) if config.noise_suppression \
                else None
        if config.auto_gain != old.auto_gain:
            self._agc = lib.GainController(
                rate, max_gain_db=AGC_MAX_GAIN_DB, headroom_db=AGC_HEADROOM_DB,
                max_gain_change_db_per_second=AGC_MAX_CHANGE_DB_PER_S,
            ) if config.auto_gain else None
        self.config = config

    def process(self, near: Block, far: Block) -> Block:
        """Process one stretch of microphone samples against what the speaker played."""
        if near.size % FRAME_SAMPLES or far.shape != near.shape:
            raise ValueError(
                f"expected whole 10 ms frames and a reference of the same length, got "
                f"{near.size} microphone and {far.size} reference samples"
            )
        out: Block = near
        if self._front is not None:
            out = self._front.process(out, far) if self.config.echo_cancellation \
                else self._front.process(out)
        if self._ns is not None:
            out = self._ns.process(out)
        if self._agc is not None:
            out = self._agc.process(out)
        return out


@dataclass
class ProcessingStats:
    """Counters of a :class:`CaptureProcessor` (read on the loop)."""

    blocks: int = 0
    """Blocks processed by the worker."""
    unprocessed: int = 0
    """Blocks sent as they came because the worker could not take or process them."""
    cpu_seconds: float = 0.0
    """Worker thread CPU time spent processing."""
    hold_seconds_total: float = 0.0
    """Sum over blocks of the time from hand-off to result (what processing adds)."""
    hold_seconds_max: float = 0.0
    delay_ms: int = 0
    """The echo canceller's current delay hint."""
    reference: dict[str, int] = field(default_factory=dict)
    """The playout reference's counters (pushed, discarded, padded samples; realignments)."""


@dataclass
class _Job:
    near: Block
    config: AudioProcessing
    device_latency: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Block]
    submitted: float


def _resolve(future: asyncio.Future[Block], result: Block) -> None:
    if not future.done():
        future.set_result(result)


class CaptureProcessor:
    """Runs the :class:`ProcessingChain` on the microphone's blocks in a worker thread.

    ``delay()`` gives the device latencies in seconds (the speaker's output latency plus the
    microphone's input latency, as sounddevice reports them), read for every block so a new
    output device is followed at once. Wrap the speaker's pull with :meth:`tap`; give
    :meth:`process` to the microphone track. :meth:`aclose` stops the worker (idempotent).
    ``chain_factory`` makes the chain in the worker thread (tests substitute one).
    """

    def __init__(
        self,
        config: AudioProcessing,
        *,
        delay: Callable[[], float] | None = None,
        max_in_flight: int = 4,
        chain_factory: Callable[[AudioProcessing], ProcessingChain] = ProcessingChain,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._config = config
        self._delay = delay if delay is not None else (lambda: 0.0)
        self.max_in_flight = max_in_flight
        self._chain_factory = chain_factory
        self.reference = PlayoutReference()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._closed = False
        self._failures = 0
        self._stats = ProcessingStats()

    @property
    def config(self) -> AudioProcessing:
        """The stages that run now."""
        return self._config

    def configure(self, config: AudioProcessing) -> None:
        """Switch stages from the next block on (the worker rebuilds only what changed)."""
        if not config.echo_cancellation:
            self.reference.clear()
        self._config = config

    @property
    def stats(self) -> ProcessingStats:
        """A snapshot of the counters."""
        stats = replace(self._stats)
        stats.reference = {
            "pushed": self.reference.pushed,
            "discarded": self.reference.discarded,
            "padded": self.reference.padded,
            "realigned": self.reference.realigned,
        }
        return stats

    def tap(self, pull: Callable[[], Block]) -> Callable[[], Block]:
        """``pull`` that also keeps each block it returns as the echo canceller's reference."""

        def tapped() -> Block:
            block = pull()
            if self._config.echo_cancellation and isinstance(block, np.ndarray):
                self.reference.push(block)
            return block

        return tapped

    def playout_changed(self) -> None:
        """The output started, stopped or changed: what it was handed before is stale."""
        self.reference.clear()

    async def process(self, block: Block) -> Block:
        """The processed block (the block itself when every stage is off). Never raises."""
        config = self._config
        if not config.enabled:
            return block
        if self._closed or self._in_flight >= self.max_in_flight:
            self._stats.unprocessed += 1
            return block
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Block] = loop.create_future()
        try:
            latency = float(self._delay())
        except Exception:
            latency = 0.0
        self._ensure_thread()
        self._in_flight += 1
        self._jobs.put(_Job(block, config, latency, loop, future, time.perf_counter()))
        try:
            return await asyncio.shield(future)
        finally:
            self._in_flight -= 1

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="audio processing", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        chain: ProcessingChain | None = None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            result = job.near
            start = time.thread_time()
            try:
                if chain is None:
                    chain = self._chain_factory(job.config)
                elif chain.config != job.config:
                    chain.configure(job.config)
                far, depth = self.reference.take(job.near.size)
                chain.stream_delay_ms = round(
                    job.device_latency * 1000.0 - depth * 1000.0 / SAMPLE_RATE
                )
                result = chain.process(job.near, far)
                self._stats.blocks += 1
                self._stats.delay_ms = chain.stream_delay_ms
            except Exception:
                self._stats.unprocessed += 1
                self._failures += 1
                if self._failures == 1 or self._failures % 500 == 0:
                    logger.exception("audio processing failed (%d times); sending the "
                                     "microphone unprocessed", self._failures)
            held = time.perf_counter() - job.submitted
            self._stats.cpu_seconds += time.thread_time() - start
            self._stats.hold_seconds_total += held
            self._stats.hold_seconds_max = max(self._stats.hold_seconds_max, held)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                job.loop.call_soon_threadsafe(_resolve, job.future, result)

    async def aclose(self) -> None:
        """Stop the worker after the blocks in flight. Idempotent."""
        if self._closed:
            return
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join, 5.0)
