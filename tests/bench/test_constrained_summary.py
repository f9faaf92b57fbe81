"""bench.constrained's summary: medians and ranges over rounds, misses, target verdicts."""

from __future__ import annotations

from typing import Any

from bench.constrained import markdown, summarize


def phase(adapt: float | None, fps: float, p95: float | None, recover: float | None,
          from_preset: bool = True) -> dict[str, Any]:
    return {"from_preset": from_preset, "adapt_s": adapt, "fps": fps, "p50_ms": p95,
            "p95_ms": p95, "longest_freeze_s": 0.1, "recover_s": recover,
            "recover_preset_s": recover}


def round_(adaptation: bool, limited: dict[str, Any], slow: dict[str, Any]) -> dict[str, Any]:
    free = {"fps": 28.0, "p50_ms": 30.0, "p95_ms": 80.0, "longest_freeze_s": 0.0}
    return {"adaptation": adaptation, "free": free, "600": limited, "300": slow,
            "min_fps_sent": 15.36 if adaptation else 30.0}


def test_medians_ranges_and_verdicts_of_the_adaptive_rounds() -> None:
    rounds = [
        round_(True, phase(1.0, 20.0, 100.0, 10.0), phase(2.0, 16.0, 200.0, 12.0)),
        round_(False, phase(0.2, 25.0, 300.0, None, False), phase(0.1, 2.0, None, None, False)),
        round_(True, phase(3.0, 18.0, 120.0, 14.0), phase(4.0, 14.0, 300.0, 20.0, False)),
        round_(True, phase(2.0, 22.0, 110.0, 12.0), phase(6.0, 12.0, 260.0, 30.0)),
    ]
    summary = summarize(rounds)
    limited = summary["adaptive"]["600"]
    assert limited["adapt_s"] == {"median": 2.0, "min": 1.0, "max": 3.0, "missing": 0,
                                  "values": [1.0, 3.0, 2.0]}
    assert limited["fps"]["median"] == 20.0 and limited["from_preset"] == 3
    assert summary["adaptive"]["300"]["from_preset"] == 2
    targets = summary["targets"]
    assert targets["600 adapt_s"].startswith("met (median 2,")
    assert "3 of 3 rounds from the preset" in targets["600 adapt_s"]
    assert targets["600 fps"].startswith("met") and targets["600 p95_ms"].startswith("met")
    # 300: fps 14 median misses >= 15; p95 260 misses <= 250; recover 20 misses <= 15.
    assert targets["300 fps"].startswith("MISSED (median 14,")
    assert targets["300 p95_ms"].startswith("MISSED (median 260,")
    assert targets["300 recover_s"].startswith("MISSED (median 20,")
    assert targets["300 adapt_s"].startswith("met (median 4,")


def test_a_figure_missing_in_one_round_is_missed_and_shown() -> None:
    rounds = [
        round_(True, phase(1.0, 20.0, 100.0, 10.0), phase(2.0, 16.0, 200.0, 12.0)),
        round_(True, phase(1.0, 20.0, 100.0, None), phase(None, 16.0, 200.0, 12.0)),
        round_(False, phase(0.2, 25.0, 300.0, None), phase(0.1, 2.0, None, None)),
    ]
    summary = summarize(rounds)
    assert summary["adaptive"]["600"]["recover_s"]["missing"] == 1
    assert summary["targets"]["600 recover_s"].startswith("MISSED (did not happen")
    assert summary["targets"]["300 adapt_s"].startswith("MISSED (did not happen")
    assert summary["off"]["300"]["p95_ms"] == {"median": None, "min": None, "max": None,
                                               "missing": 1, "values": [None]}
    results = {"rounds": 2, "window_s": 6.0, "settle_s": 2.0, "summary": summary,
               "machine": {"commit": "abc", "date": "d", "cpu_model": "cpu", "cpus": 2,
                           "load_average_1m": 1.0},
               "calibration": {"ms_per_frame": 16.0, "min": 15.0, "max": 17.0, "passes": [1]}}
    table = markdown(results)
    assert "| adaptive | 600 kbit/s | 2/2 | 1 (1-1) |" in table
    assert "10 (10-10), 1 missing" in table
    assert "| off | 300 kbit/s | 1/1 |" in table
