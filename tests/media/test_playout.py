"""The adaptive playout buffer: prefetch, concealment, adaptation of the depth, the cap."""

from __future__ import annotations

import numpy as np
import pytest

from callclient.media.base import BLOCK_SAMPLES
from callclient.media.mixer import Mixer
from callclient.media.playout import PlayoutBuffer


def _block(value: int) -> np.ndarray:
    return np.full(BLOCK_SAMPLES, value, dtype=np.int16)


def _level(block: np.ndarray | None) -> int:
    return 0 if block is None else int(np.abs(block.astype(np.int32)).max())


def test_prefetch_then_in_order() -> None:
    """Nothing plays before ``prefetch`` blocks are queued; then blocks play in order."""
    buffer = PlayoutBuffer(6, prefetch=2)
    buffer.push(_block(1))
    assert buffer.pull() is None
    buffer.push(_block(2))
    assert [_level(buffer.pull()) for _ in range(2)] == [1, 2]
    assert buffer.playing


def test_underrun_conceals_with_a_fading_copy_then_stops() -> None:
    """A missing block is replaced by the last one, fading, not by silence; after the
    concealment runs out the stream stops and prefetches again."""
    gains = (0.8, 0.4)
    buffer = PlayoutBuffer(6, prefetch=1, conceal_gains=gains)
    buffer.push(_block(1000))
    assert _level(buffer.pull()) == 1000
    assert [_level(buffer.pull()) for _ in range(3)] == [800, 400, 0]
    assert buffer.concealed == 2
    assert not buffer.playing


def test_known_loss_is_concealed_in_place_without_shifting() -> None:
    """push_missing() keeps the lost block's slot: the next block plays at its own turn."""
    buffer = PlayoutBuffer(6, prefetch=2)
    buffer.push(_block(100))
    buffer.push(_block(200))
    buffer.push_missing(1)
    buffer.push(_block(400))
    levels = [_level(buffer.pull()) for _ in range(4)]
    assert levels[:2] == [100, 200]
    assert 0 < levels[2] < 200  # concealed from block 200
    assert levels[3] == 400
    assert buffer.late == 0 and buffer.target == 0


def test_lost_block_reported_after_its_turn_is_not_waited_for() -> None:
    """An underrun followed by a loss report: the slot was concealed, no delay is added."""
    buffer = PlayoutBuffer(6, prefetch=1)
    buffer.push(_block(100))
    assert _level(buffer.pull()) == 100
    assert 0 < _level(buffer.pull()) < 100  # underrun: concealed
    buffer.push_missing(1)  # it was lost
    buffer.push(_block(300))
    assert _level(buffer.pull()) == 300
    assert buffer.late == 0 and buffer.target == 0 and buffer.skipped == 1


def test_late_block_grows_the_target_depth() -> None:
    """A block arriving after its turn was concealed is played late and the target grows."""
    buffer = PlayoutBuffer(6, prefetch=1)
    buffer.push(_block(100))
    buffer.pull()
    buffer.pull()  # underrun
    buffer.push(_block(200))  # the late block itself
    assert buffer.late == 1 and buffer.target == 1
    assert _level(buffer.pull()) == 200


def test_steady_surplus_shrinks_to_the_target() -> None:
    """Blocks that always arrive with spare blocks ahead: the spare is merged away."""
    buffer = PlayoutBuffer(8, prefetch=4, window=10)
    for value in range(4):
        buffer.push(_block(value + 1))
    depths = []
    for value in range(4, 200):
        buffer.pull()
        buffer.push(_block(value % 1000 + 1))
        depths.append(len(buffer))
    assert buffer.merged >= 3
    assert depths[-1] == buffer.target + 1 == 1
    # The merge is a cross-fade, not a cut: never louder than its parts, no zero block.
    assert buffer.concealed == 0


def test_target_relaxes_after_a_calm_period() -> None:
    """After ``relax_pulls`` pulls without a late block the target decays again."""
    buffer = PlayoutBuffer(6, prefetch=1, relax_pulls=20)
    buffer.push(_block(1))
    buffer.pull()
    buffer.pull()
    buffer.push(_block(2))
    assert buffer.target == 1
    for _ in range(25):
        buffer.push(_block(3))
        buffer.pull()
    assert buffer.target == 0


@pytest.mark.parametrize("max_blocks", [2, 6])
def test_never_grows_beyond_the_cap(max_blocks: int) -> None:
    """However many blocks arrive unpulled, at most max_blocks stay queued."""
    buffer = PlayoutBuffer(max_blocks, prefetch=1, max_target=max_blocks - 1)
    for value in range(50):
        buffer.push(_block(value))
        buffer.push_missing(1)
        assert len(buffer) <= max_blocks
    assert buffer.dropped > 0


def test_adaptive_mixer_mixes_and_conceals() -> None:
    """The engine's mixer: per-user playout buffers, gains, loss reports."""
    mixer = Mixer(6, adaptive=True)
    for user, value in (("a", 100), ("b", 10)):
        mixer.push(user, _block(value))
        mixer.push(user, _block(value))
    mixer.set_gain("b", 0.5)
    assert np.all(mixer.pull() == 105)
    mixer.push_missing("a", 1)
    mixer.push("a", _block(300))
    out = mixer.pull()  # a: second block, b: second block
    assert np.all(out == 105)
    out = mixer.pull()  # a: concealed (known loss), b: concealed (underrun)
    assert 0 < int(out[0]) < 105
    assert np.all(mixer.pull()[0] >= 300)
    assert mixer.queued("a") == 0
    playout = mixer.playout("a")
    assert playout is not None and playout.concealed == 1
    mixer.remove("a")
    assert mixer.playout("a") is None


def test_plain_mixer_ignores_loss_reports() -> None:
    """push_missing() is a no-op for a plain FIFO mixer."""
    mixer = Mixer()
    mixer.push_missing("a", 3)
    assert mixer.users == []
