"""The stack bench's instrument works: a tiny run of call setup and 360p two-way video.

It runs ``bench.stack`` for real (server, two engine processes, two bare aiortc processes) with
2 alternating windows per configuration (1 call each for setup, 2 s of 360p video), and checks
that both sides were measured in every window (positive latencies, frames received) and that
the result carries the commit, the machine and the calibration. It asserts nothing about the
targets (and nothing on wall-clock figures).
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from bench import BENCHES, stack


def test_stack_bench_quick_measures_stack_and_baseline(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children()}
    status = stack.main([
        "--scenarios", "setup,video360", "--seconds", "2", "--warmup", "0.5",
        "--setup-calls", "2", "--repeats", "2", "--output-dir", str(tmp_path),
    ])
    assert status == 0
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["machine"]["commit"] and results["machine"]["cpu_model"]
    assert results["calibration"]["ms_per_frame"] > 0
    assert len(results["calibration"]["passes"]) == 3
    setup = results["scenarios"]["setup"]
    for side in ("stack", "baseline"):
        assert len(setup[side]) == 2  # two alternating windows
        for window in setup[side]:
            assert window["failed"] == 0
            assert all(ms > 0 for ms in window["setup_ms"])
        assert len(results["scenarios"]["video360"][side]) == 2
        for run in results["scenarios"]["video360"][side]:
            assert len(run["streams"]) == 2  # two-way
            for stream in run["streams"]:
                assert stream["frames"] > 0
                assert stream["fps"] > 0
                assert stream["stamps_read"] > 0
                assert all(ms > 0 for ms in stream["latency_ms"])
            assert run["latency_ms"]["median"] > 0
            assert run["audio_ms"]["n"] > 0 and run["audio_ms"]["median"] > 0
            assert all(cpu > 0 for cpu in run["cpu_app"])
    table = (tmp_path / "latest.md").read_text()
    assert "| metric | stack | baseline | ratio | target | met? |" in table
    assert "calibration: VP8 720p encode" in table and results["machine"]["commit"] in table
    assert (tmp_path / "latency.png").stat().st_size > 0
    # Every process the bench started has ended. Direct children only: a service another test
    # left running for the session (the test PostgreSQL) forks workers of its own meanwhile.
    after = {p.pid for p in psutil.Process().children()}
    assert after <= before, [psutil.Process(pid).cmdline() for pid in after - before]


def test_stack_bench_is_registered() -> None:
    assert "bench.stack" in BENCHES
