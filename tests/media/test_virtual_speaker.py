"""VirtualSpeaker pulls paced blocks, keeps a bounded history and writes a WAV file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np

from callclient.media.base import BLOCK_SAMPLES
from callclient.media.virtual import VirtualSpeaker


class _Counter:
    """A pull() giving block n filled with the value n."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> np.ndarray:
        self.n += 1
        return np.full(BLOCK_SAMPLES, self.n, dtype=np.int16)


async def test_pulls_paced_and_keeps_order() -> None:
    """About 25 blocks in 0.5 s, recorded in order."""
    speaker = VirtualSpeaker()
    pull = _Counter()
    await speaker.start(pull)
    await asyncio.sleep(0.5)
    await speaker.stop()
    await speaker.stop()
    assert 20 <= pull.n <= 30
    samples = speaker.samples()
    assert samples.size == pull.n * BLOCK_SAMPLES == speaker.played_samples
    assert np.array_equal(samples[::BLOCK_SAMPLES], np.arange(1, pull.n + 1))
    assert not speaker.running


async def test_ring_keeps_only_last_seconds() -> None:
    """With keep_seconds=0.1 only the newest 4800 samples remain, oldest first."""
    speaker = VirtualSpeaker(keep_seconds=0.1)
    pull = _Counter()
    await speaker.start(pull)
    await asyncio.sleep(0.3)
    await speaker.close()
    samples = speaker.samples()
    assert samples.size == 4800
    assert list(samples[::BLOCK_SAMPLES]) == list(range(pull.n - 4, pull.n + 1))


async def test_bad_pull_plays_silence() -> None:
    """A pull() that raises or returns a wrong block yields silence and is counted."""
    calls = 0

    def pull() -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            return np.ones(10, dtype=np.int16)
        return np.full(BLOCK_SAMPLES, 3, dtype=np.int16)

    speaker = VirtualSpeaker()
    await speaker.start(pull)
    await asyncio.sleep(0.1)
    await speaker.stop()
    samples = speaker.samples()
    assert speaker.pull_errors == 1
    assert not samples[:BLOCK_SAMPLES].any()
    assert np.all(samples[BLOCK_SAMPLES:] == 3)


async def test_writes_wav_decodable_by_pyav(tmp_path: Path) -> None:
    """The WAV holds exactly what was played, 48 kHz mono s16, readable by PyAV."""
    path = tmp_path / "out.wav"
    speaker = VirtualSpeaker(wav_path=path)
    await speaker.start(_Counter())
    await asyncio.sleep(0.2)
    await speaker.stop()
    await speaker.start(_Counter())  # restarting appends to the same file
    await asyncio.sleep(0.1)
    await speaker.close()
    await speaker.close()
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.rate == 48000
        assert stream.codec_context.layout.nb_channels == 1
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    assert np.array_equal(decoded, speaker.samples())
