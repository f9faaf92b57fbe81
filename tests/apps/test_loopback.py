"""``run_loopback``: every user receives video and the tone of every other user."""

from __future__ import annotations

import json

import pytest

from callclient.apps.loopback import LoopbackReport, run_loopback, tone_for


def check_full_mesh(report: LoopbackReport, users: int, min_fps: float) -> None:
    """Each user got frames at ``min_fps``+, positive latency and the tone of every other."""
    names = [f"user{i}" for i in range(users)]
    assert report.users == tuple(names)
    assert len(report.streams) == users * (users - 1)
    for receiver in names:
        for index, sender in enumerate(names):
            if sender == receiver:
                continue
            stream = report.stream(receiver, sender)
            assert stream.frames > 0, stream
            assert stream.fps > min_fps, stream
            assert stream.latency_median_ms is not None and stream.latency_median_ms > 0
            assert stream.latency_p95_ms is not None
            assert stream.latency_p95_ms >= stream.latency_median_ms
            assert stream.stamps_read > stream.frames // 2, stream
            assert stream.setup_ms is not None and stream.setup_ms > 0
            assert stream.audio_blocks > 0
            assert stream.expected_hz == tone_for(index)
            assert stream.dominant_hz is not None
            assert abs(stream.dominant_hz - tone_for(index)) <= 10.0, stream
            assert stream.heard


async def test_two_users() -> None:
    """A 1v1 loopback: both directions carry stamped video and the other's tone."""
    report = await run_loopback(users=2, seconds=3)
    check_full_mesh(report, 2, min_fps=10)
    assert 2.9 <= report.seconds <= 4.0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["users"]["user0"]["user1"]["heard"] is True
    table = report.format_table()
    assert "user0" in table and "NOT HEARD" not in table


async def test_three_users_group_call() -> None:
    """A 3-user group call, one process per engine (the default from 3): every user receives
    every other (6 streams), and the dropped frames are counted."""
    report = await run_loopback(users=3, seconds=3)
    assert report.processes and not report.sfu
    check_full_mesh(report, 3, min_fps=10)
    assert all(s.frames_dropped >= 0 for s in report.streams)
    assert all(s.jitter_drops >= 0 and s.decode_drops >= 0 for s in report.streams)
    # Each process's kernel drops are read over the window (udpstats has the behaviour test).
    assert set(report.udp_drops) == {"user0", "user1", "user2"}
    assert all(count >= 0 for count in report.udp_drops.values())
    assert report.to_dict()["processes"] is True
    assert set(report.to_dict()["udp_drops"]) == {"user0", "user1", "user2"}


async def test_three_users_in_one_process_through_janus() -> None:
    """--one-process --sfu: the same call through a Janus subprocess, in this process."""
    report = await run_loopback(users=3, seconds=3, processes=False, sfu=True)
    assert report.sfu and not report.processes
    check_full_mesh(report, 3, min_fps=5)
    assert "through Janus" in report.format_table()


async def test_rejects_bad_arguments() -> None:
    """Fewer than two users or a non-positive duration is a ValueError."""
    with pytest.raises(ValueError, match="at least 2"):
        await run_loopback(users=1)
    with pytest.raises(ValueError, match="positive"):
        await run_loopback(seconds=0)


def test_a_counter_that_restarted_in_the_window_counts_from_its_restart() -> None:
    """Drop counters live on a track: a replaced connection's new track starts from 0, so a
    smaller value after the window is all growth within it, never a negative count."""
    from callclient.apps.loopback import _since

    assert _since(10, 4) == 6
    assert _since(3, 290) == 3
    assert _since(0, 0) == 0
