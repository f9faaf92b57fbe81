"""Mixer: sums users with gain, saturates, bounds each queue and is thread-safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from callclient.media.base import BLOCK_SAMPLES
from callclient.media.mixer import Mixer


def _block(value: int) -> np.ndarray:
    return np.full(BLOCK_SAMPLES, value, dtype=np.int16)


def test_silence_when_empty() -> None:
    """With nothing queued, pull returns a silent int16 block of 960 samples."""
    out = Mixer().pull()
    assert out.dtype == np.int16
    assert out.shape == (BLOCK_SAMPLES,)
    assert not out.any()


def test_sums_users_block_by_block() -> None:
    """Each pull mixes the next block of every user; an empty queue contributes silence."""
    mixer = Mixer()
    mixer.push("a", _block(100))
    mixer.push("a", _block(200))
    mixer.push("b", _block(-30))
    assert np.all(mixer.pull() == 70)
    assert np.all(mixer.pull() == 200)
    assert np.all(mixer.pull() == 0)


def test_saturates_instead_of_wrapping() -> None:
    """Sums beyond int16 clip at 32767 / -32768."""
    mixer = Mixer()
    for user in ("a", "b", "c"):
        mixer.push(user, _block(20000))
    assert np.all(mixer.pull() == 32767)
    for user in ("a", "b"):
        mixer.push(user, _block(-30000))
    assert np.all(mixer.pull() == -32768)


def test_gain() -> None:
    """Per-user gain scales that user only; gain 0 mutes; out-of-range gain is rejected."""
    mixer = Mixer()
    mixer.set_gain("a", 0.5)
    mixer.set_gain("b", 0.0)
    mixer.push("a", _block(1001))
    mixer.push("b", _block(5000))
    mixer.push("c", _block(7))
    assert np.all(mixer.pull() == 500 + 7)  # rint(500.5) is 500 (half to even)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        mixer.set_gain("a", 1.5)


def test_drops_oldest_when_full() -> None:
    """A full queue drops its oldest block: the newest max_blocks remain, latency is bounded."""
    mixer = Mixer(max_blocks=3)
    for value in range(1, 6):
        mixer.push("a", _block(value))
    assert mixer.dropped == 2
    assert mixer.queued("a") == 3
    assert [int(mixer.pull()[0]) for _ in range(4)] == [3, 4, 5, 0]


def test_remove_forgets_queue_and_gain() -> None:
    """remove() drops the queued blocks and resets the gain."""
    mixer = Mixer()
    mixer.set_gain("a", 0.25)
    mixer.push("a", _block(400))
    mixer.remove("a")
    mixer.remove("nobody")
    assert mixer.users == []
    assert not mixer.pull().any()
    assert mixer.gain("a") == 1.0


def test_rejects_wrong_blocks() -> None:
    """Blocks of the wrong dtype or length are refused."""
    mixer = Mixer()
    with pytest.raises(ValueError, match="int16"):
        mixer.push("a", np.zeros(BLOCK_SAMPLES, dtype=np.float32))
    with pytest.raises(ValueError, match="960"):
        mixer.push("a", np.zeros(480, dtype=np.int16))


def test_concurrent_push_and_pull() -> None:
    """Threads pushing and pulling at once lose nothing: pushed == mixed + dropped + queued."""
    mixer = Mixer(max_blocks=10)
    users = [f"u{i}" for i in range(4)]
    pushes_per_user = 3000
    stop = threading.Event()
    pulled: list[int] = []

    def producer(user: str) -> None:
        for _ in range(pushes_per_user):
            mixer.push(user, _block(1))

    def consumer() -> None:
        while not stop.is_set():
            block = mixer.pull()
            assert 0 <= int(block[0]) <= len(users)
            assert np.all(block == block[0])
            pulled.append(int(block[0]))

    consumers = [threading.Thread(target=consumer) for _ in range(2)]
    producers = [threading.Thread(target=producer, args=(user,)) for user in users]
    for thread in consumers + producers:
        thread.start()
    for thread in producers:
        thread.join()
    stop.set()
    for thread in consumers:
        thread.join()
    assert mixer.pushed == len(users) * pushes_per_user
    assert mixer.pushed == mixer.mixed + mixer.dropped + mixer.queued()
    assert sum(pulled) == mixer.mixed  # every mixed block added exactly 1 to one pull
    assert all(mixer.queued(user) <= 10 for user in users)
