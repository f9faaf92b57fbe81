"""The self-overload bench's instrument works: one tiny round of the 2- and 3-person calls.

It runs ``bench.overload`` for real (one process, a server and two then three engines) and
checks that every stream was measured, that the result is stamped and that the verdicts follow
the figures. It asserts nothing about the targets themselves (nor any wall-clock figure).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import BENCHES, overload


def test_overload_bench_measures_both_calls_and_judges_its_figures(tmp_path: Path) -> None:
    assert "bench.overload" in BENCHES
    assert overload.main(["--rounds", "1", "--seconds", "1.5", "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "overload.json").read_text())
    assert results["machine"]["commit"] and results["calibration"]["ms_per_frame"] > 0
    for users, streams in (("2", 2), ("3", 6)):
        (run,) = results["runs"][users]
        assert run["streams"] == streams
        assert run["streams_with_latency"] == streams, run
        assert run["latency_median_ms"] > 0 and run["fps_worst"] > 0
    three = results["summary"]["3"]
    targets = results["targets"]
    assert targets["median_met"] == (three["latency_median_ms"]["median"] <= 150.0)
    assert targets["p95_met"] == (three["latency_p95_worst_ms"]["median"] <= 300.0)
    text = (tmp_path / "overload.md").read_text()
    assert ("median ≤ 150 ms met" in text) == targets["median_met"]
