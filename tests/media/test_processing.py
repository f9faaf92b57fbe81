"""The capture processing's parts: configuration, the playout reference, the worker hand-off.

The hand-off tests substitute a recording chain for the DSP (``chain_factory``), so they can
count and order blocks, stall the worker and make it fail; the signal tests
(``test_processing_signals.py``) run the real one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from callclient.media.base import BLOCK_SAMPLES, AudioSource, Block
from callclient.media.devices import SoundDeviceMicrophone
from callclient.media.processing import (
    AudioProcessing,
    CaptureProcessor,
    PlayoutReference,
    ProcessingChain,
)
from callclient.media.tracks import MicrophoneTrack
from callclient.media.virtual import VirtualMicrophone


def numbered(value: int) -> Block:
    return np.full(BLOCK_SAMPLES, value, dtype=np.int16)


class RecordingChain:
    """Stands in for the DSP: adds 1000 to every sample and records what it was given."""

    def __init__(self, config: AudioProcessing, *, stall_every: int = 0,
                 fail_on: int | None = None) -> None:
        self.config = config
        self.stream_delay_ms = 0
        self.nears: list[int] = []
        self.fars: list[Block] = []
        self.delays: list[int] = []
        self.configs: list[AudioProcessing] = [config]
        self.thread = threading.current_thread()
        self._stall_every = stall_every
        self._fail_on = fail_on

    def configure(self, config: AudioProcessing) -> None:
        self.config = config
        self.configs.append(config)

    def process(self, near: Block, far: Block) -> Block:
        index = len(self.nears)
        self.nears.append(int(near[0]))
        self.fars.append(far.copy())
        self.delays.append(self.stream_delay_ms)
        if self._stall_every and index % self._stall_every == self._stall_every - 1:
            time.sleep(0.05)  # the worker stalls for 2.5 blocks
        if index == self._fail_on:
            raise RuntimeError("the DSP failed")
        return (near.astype(np.int32) + 1000).astype(np.int16)


def recording_factory(**options: Any) -> tuple[list[RecordingChain], Any]:
    made: list[RecordingChain] = []

    def factory(config: AudioProcessing) -> ProcessingChain:
        chain = RecordingChain(config, **options)
        made.append(chain)
        return chain  # type: ignore[return-value]

    return made, factory


class NumberedSource(AudioSource):
    """Delivers blocks filled with 0, 1, 2, ... every 5 ms (faster than real time)."""

    name = "numbered source"

    def __init__(self) -> None:
        self.count = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def read(self) -> Block:
        await asyncio.sleep(0.005)
        block = numbered(self.count)
        self.count += 1
        return block


# ------------------------------------------------------------------ configuration


def test_configuration_defaults_and_changes() -> None:
    """All stages on by default, none with off(); with_changes switches only what is given."""
    assert AudioProcessing().label() == "AEC NS AGC HPF"
    assert AudioProcessing().enabled
    assert AudioProcessing.off().label() == "off"
    assert not AudioProcessing.off().enabled
    changed = AudioProcessing().with_changes(noise_suppression=False)
    assert changed == AudioProcessing(noise_suppression=False)
    assert changed.with_changes() == changed
    assert AudioProcessing.off().with_changes(high_pass_filter=True).label() == "HPF"


def test_default_is_on_for_real_microphones_only() -> None:
    """A sounddevice microphone (acoustic) gets every stage; a virtual one, or none, none."""
    assert AudioProcessing.default_for(SoundDeviceMicrophone("any")) == AudioProcessing()
    assert AudioProcessing.default_for(VirtualMicrophone()) == AudioProcessing.off()
    assert AudioProcessing.default_for(None) == AudioProcessing.off()


def test_chain_rejects_partial_frames() -> None:
    """The DSP takes whole 10 ms frames and a reference of the same length."""
    chain = ProcessingChain(AudioProcessing())
    with pytest.raises(ValueError, match="whole 10 ms frames"):
        chain.process(np.zeros(500, np.int16), np.zeros(500, np.int16))
    with pytest.raises(ValueError, match="same length"):
        chain.process(np.zeros(960, np.int16), np.zeros(480, np.int16))
    assert chain.process(np.zeros(960, np.int16), np.zeros(960, np.int16)).shape == (960,)


# ------------------------------------------------------------------ playout reference


def test_reference_pairs_by_sample_count_through_jitter() -> None:
    """The first take pairs with the block before the one just handed over (one block of
    slack for jitter); afterwards the reference advances one block per capture block
    whatever the callbacks' timing: a block handed over one turn late is still in time."""
    reference = PlayoutReference(window=1000)
    value = iter(range(1000))
    reference.push(numbered(next(value)))  # 0
    block, lead = reference.take(BLOCK_SAMPLES)
    assert not block.any() and lead == 2 * BLOCK_SAMPLES
    taken = []
    for step in range(8):
        if step != 3:  # block 4 is handed over late, with block 5
            reference.push(numbered(next(value)))
        if step == 4:
            reference.push(numbered(next(value)))
        taken.append(int(reference.take(BLOCK_SAMPLES)[0][0]))
    assert taken == list(range(8))
    assert reference.padded == BLOCK_SAMPLES  # only the first take, before anything
    assert reference.realigned == 0
    with pytest.raises(ValueError):
        PlayoutReference(capacity=10)


def test_reference_realigns_after_backlog_shortage_and_stall() -> None:
    """A lead that stayed at three blocks or more for a window is cut back to two; one that
    ran short is made up by taking from earlier; a stalled speaker restarts the pairing at
    once; clear() pairs the next takes with what is handed over next."""
    reference = PlayoutReference(window=10)
    value = iter(range(10_000))

    def push() -> int:
        number = next(value)
        reference.push(numbered(number))
        return number

    def take() -> int:
        return int(reference.take(BLOCK_SAMPLES)[0][0])

    push()
    pairs = [(push(), take()) for _ in range(10)]
    assert all(taken == pushed - 1 for pushed, taken in pairs[1:])  # one block of slack
    assert reference.realigned == 0 and reference.queued == BLOCK_SAMPLES
    push(), push()  # a burst: from now on two blocks more than planned wait
    pairs = [(push(), take()) for _ in range(10)]
    assert all(taken == pushed - 3 for pushed, taken in pairs)
    assert reference.realigned == 1 and reference.queued == BLOCK_SAMPLES  # cut back
    pushed, taken = push(), take()
    assert taken == pushed - 1
    for _ in range(9):
        push(), take()
    for _ in range(10):  # every block comes after its turn: silence is given
        take()
        take()
        push()
    assert reference.realigned >= 2
    for _ in range(8):  # the speaker stalls for 8 capture blocks (more than 5 behind)
        take()
    realigned = reference.realigned
    assert realigned >= 3
    pushed = push()
    assert take() in (pushed - 1, pushed)  # paired with what came just before or after
    reference.clear()
    reference.push(numbered(500))
    reference.push(numbered(501))
    assert take() == 500
    assert take() == 501


# ------------------------------------------------------------------ hand-off


async def test_off_returns_the_block_itself_without_a_worker() -> None:
    """With every stage off, process() is the identity (bit-exact) and starts no thread."""
    made, factory = recording_factory()
    processor = CaptureProcessor(AudioProcessing.off(), chain_factory=factory)
    block = numbered(5)
    assert await processor.process(block) is block
    assert not made
    assert processor.stats.blocks == 0
    await processor.aclose()


async def test_every_block_processed_in_order_in_the_worker_despite_stalls() -> None:
    """300 source blocks through a MicrophoneTrack whose worker stalls 50 ms every 20 blocks:
    300 frames, in order, each processed once, in the worker thread, pts 960 apart."""
    made, factory = recording_factory(stall_every=20)
    processor = CaptureProcessor(AudioProcessing(), chain_factory=factory)
    track = MicrophoneTrack(NumberedSource())
    track.process = processor.process
    sent = []
    pts = []
    for _ in range(300):
        frame = await track.recv()
        sent.append(int(frame.to_ndarray().reshape(-1)[0]))
        pts.append(frame.pts)
    track.stop()
    await processor.aclose()
    assert sent == [1000 + k for k in range(300)]
    assert made[0].nears == list(range(300))
    assert made[0].thread is not threading.main_thread()
    assert np.all(np.diff(pts) == BLOCK_SAMPLES)
    stats = processor.stats
    assert (stats.blocks, stats.unprocessed) == (300, 0)
    assert stats.hold_seconds_max >= 0.05  # the stalls were waited for, not skipped


async def test_a_failing_block_is_sent_unprocessed_and_processing_goes_on() -> None:
    """The DSP raising on block 3: block 3 goes out as it came, the others processed."""
    _, factory = recording_factory(fail_on=3)
    processor = CaptureProcessor(AudioProcessing(), chain_factory=factory)
    out = [int((await processor.process(numbered(k)))[0]) for k in range(6)]
    await processor.aclose()
    assert out == [1000, 1001, 1002, 3, 1004, 1005]
    assert processor.stats.unprocessed == 1


async def test_reference_is_what_the_speaker_pulled_and_delay_follows_devices() -> None:
    """The tap hands every pulled block to the chain, one per capture block, in order; the
    delay hint is the device latency read at each block minus the reference's wait."""
    latency = [0.05]
    made, factory = recording_factory()
    processor = CaptureProcessor(AudioProcessing(), delay=lambda: latency[0],
                                 chain_factory=factory)
    pulls = iter(range(100, 200))
    pull = processor.tap(lambda: numbered(next(pulls)))
    for k in range(4):
        assert pull()[0] == 100 + k  # the speaker gets the block unchanged
        await processor.process(numbered(k))
    latency[0] = 0.12  # the output changed (an earpiece with a longer buffer)
    pull()
    pull()  # two blocks handed over before the next capture: 20 ms waited in the reference
    await processor.process(numbered(4))
    await processor.aclose()
    chain = made[0]
    # One block of slack: each capture block pairs with the block before the newest.
    assert [int(far[0]) for far in chain.fars] == [0, 100, 101, 102, 103]
    assert chain.delays[:4] == [10, 10, 10, 10]  # 50 ms - two blocks (40 ms) waiting
    assert chain.delays[4] == 60  # 120 ms - three blocks (60 ms) waiting
    assert processor.stats.delay_ms == 60


async def test_stages_switch_in_the_worker_and_the_reference_stops_with_aec() -> None:
    """configure() reaches the chain at the next block; without echo cancellation nothing
    is kept for it; all off bypasses the worker."""
    made, factory = recording_factory()
    processor = CaptureProcessor(AudioProcessing(), chain_factory=factory)
    pull = processor.tap(lambda: numbered(7))
    pull()
    await processor.process(numbered(0))
    processor.configure(AudioProcessing(echo_cancellation=False))
    pull()
    assert processor.reference.queued == 0
    await processor.process(numbered(1))
    processor.configure(AudioProcessing.off())
    assert (await processor.process(numbered(2)))[0] == 2
    await processor.aclose()
    await processor.aclose()  # idempotent
    assert made[0].configs == [AudioProcessing(), AudioProcessing(echo_cancellation=False)]
    assert int(made[0].fars[1][0]) == 0  # no reference kept without echo cancellation
    processor.configure(AudioProcessing())
    assert (await processor.process(numbered(3)))[0] == 3  # closed: sent as it came
