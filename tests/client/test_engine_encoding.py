"""Encoder presets in a real call: the receiver decodes exactly the preset size, live."""

from __future__ import annotations

import time
from functools import partial

import pytest

from callclient.media.base import MemoryView
from callclient.types import Resolution, ResolutionMode, VideoEncoderParams, resolution_size
from tests.helpers.engine import MakeParty, Party, connect
from tests.helpers.waits import eventually

SWITCH_LIMIT = 1.0


def received_size(view: MemoryView) -> tuple[int, int] | None:
    """(w, h) of the newest frame in a view that renders at the native size."""
    frame = view.last
    if frame is None:
        return None
    height, width = frame.image.shape[:2]
    return width, height


def shows(view: MemoryView, size: tuple[int, int]) -> bool:
    """Whether the view's newest frame has ``size``."""
    return received_size(view) == size


async def call_with_preset(
    make_party: MakeParty, codec: str, params: VideoEncoderParams
) -> tuple[Party, Party, MemoryView]:
    """alice (camera on, ``params``) in a video call with bob, who watches her natively.

    Adaptation off: on a loaded machine (or with aiortc's start-up REMB) alice would send a
    smaller size than the preset; these tests are about the preset itself (adaptation has
    its own tests, tests/media/test_adaptation.py and tests/system/test_netns_adaptation.py).
    """
    alice = await make_party("alice", video_codec=codec, video_adaptation=False)
    bob = await make_party("bob", video_codec=codec)
    alice.engine.set_video_encoder_params(params)
    await alice.engine.open_camera()
    view = MemoryView(size=None)
    bob.engine.start_remote_view("alice", view)
    await connect(alice, bob)
    await view.wait_frames(1, 10.0)
    return alice, bob, view


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_receiver_decodes_the_preset_and_follows_a_live_change(
    make_party: MakeParty, codec: str
) -> None:
    """bob decodes alice's preset size; a mid-call preset change shows within a second."""
    first = VideoEncoderParams(Resolution.RESOLUTION_640_480, ResolutionMode.PORTRAIT)
    alice, _bob, view = await call_with_preset(make_party, codec, first)
    assert received_size(view) == (480, 640)
    for params in (
        VideoEncoderParams(Resolution.RESOLUTION_960_540, ResolutionMode.LANDSCAPE),
        VideoEncoderParams(Resolution.RESOLUTION_640_360, ResolutionMode.PORTRAIT),
    ):
        wanted = resolution_size(params.resolution, params.resolution_mode)
        started = time.monotonic()
        alice.engine.set_video_encoder_params(params)
        await eventually(partial(shows, view, wanted), f"bob sees {wanted}",
                         timeout=5.0, interval=0.01)
        elapsed = time.monotonic() - started
        assert elapsed < SWITCH_LIMIT, f"{wanted} took {elapsed:.2f} s"
        count = view.count
        await view.wait_frames(count + 10, 5.0)
        assert received_size(view) == wanted


async def test_1080p_frames_arrive_at_full_size(make_party: MakeParty) -> None:
    """At 1920x1080 (2 Mbit/s, beyond aiortc's own VP8 ceiling) frames keep arriving."""
    params = VideoEncoderParams(Resolution.RESOLUTION_1920_1080, ResolutionMode.LANDSCAPE)
    _alice, _bob, view = await call_with_preset(make_party, "VP8", params)
    await view.wait_frames(view.count + 20, 10.0)
    assert received_size(view) == (1920, 1080)
