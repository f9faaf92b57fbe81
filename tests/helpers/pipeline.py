"""Push test signals through the capture processing as the engine runs it.

:func:`through_room` plays far-end speech through the speaker path (a :class:`Mixer`, the
processor's :meth:`~callclient.media.processing.CaptureProcessor.tap`, a :class:`Room`'s
speaker) and reads the room's microphone through a
:class:`~callclient.media.tracks.MicrophoneTrack` with the processor attached, faster than
real time. :func:`through_processor` feeds a microphone signal straight to a processor.
Both return the processed signal as float (full scale 1.0).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from callclient.media.base import BLOCK_SAMPLES
from callclient.media.mixer import Mixer
from callclient.media.processing import AudioProcessing, CaptureProcessor
from callclient.media.tracks import MicrophoneTrack
from tests.helpers.audio_metrics import to_float
from tests.helpers.room import Room
from tests.helpers.speech import to_int16

__all__ = ["through_processor", "through_room"]

Signal = npt.NDArray[np.float64]


async def through_room(
    far: Signal,
    room: Room,
    processing: AudioProcessing,
    *,
    every_block: Callable[[int, CaptureProcessor], None] | None = None,
) -> tuple[Signal, CaptureProcessor]:
    """Play ``far`` in ``room`` and return what the processed microphone track sent.

    ``every_block(index, processor)`` runs before each block (to switch things mid-way).
    """
    processor = CaptureProcessor(processing)
    mixer = Mixer(max_blocks=4)
    await room.speaker.start(processor.tap(mixer.pull))
    await room.microphone.start()
    track = MicrophoneTrack(room.microphone)
    track.process = processor.process
    samples = to_int16(far)
    out: list[npt.NDArray[np.int16]] = []
    try:
        for index in range(samples.size // BLOCK_SAMPLES):
            if every_block is not None:
                every_block(index, processor)
            mixer.push("far", samples[index * BLOCK_SAMPLES : (index + 1) * BLOCK_SAMPLES])
            frame = await track.recv()
            out.append(frame.to_ndarray().reshape(-1).astype(np.int16))
    finally:
        track.stop()
        await room.microphone.stop()
        await room.speaker.stop()
        await processor.aclose()
    return to_float(np.concatenate(out)), processor


async def through_processor(signal: Signal, processing: AudioProcessing) -> Signal:
    """``signal`` as a microphone (no far end) through a fresh processor."""
    processor = CaptureProcessor(processing)
    samples = to_int16(signal)
    out = []
    try:
        for index in range(samples.size // BLOCK_SAMPLES):
            block = samples[index * BLOCK_SAMPLES : (index + 1) * BLOCK_SAMPLES]
            out.append(await processor.process(block))
    finally:
        await processor.aclose()
    return to_float(np.concatenate(out))
