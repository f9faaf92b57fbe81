"""Self-overload: a 3-person call in one process, against a 2-person call in the same run.

``callclient loopback --users 3 --one-process`` puts three engines (three encoders, six
decoders, the server) into one interpreter: on this 2-core machine more work than the
process's one GIL-bound core can do. Overload must drop frames, never queue them: the issue's
target is a median glass-to-glass latency <= 150 ms and p95 <= 300 ms, with the frames dropped
reported. The baseline is the 2-person call in one process (which fits), measured in
alternating rounds (2, 3, 2, 3, ...). Each round is a fresh loopback call (640x360 @ 30 fps,
the loopback's defaults); per round the median over streams of the stream medians and the
worst stream p95; the table shows the median and range over rounds.

Run: ``python -m bench.overload [--rounds N] [--seconds S] [--output-dir D]`` or ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from bench.machine import calibrate, header, stamp
from callclient.apps.loopback import LoopbackReport, run_loopback

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MEDIAN_MS = 150.0
TARGET_P95_MS = 300.0


def _round(report: LoopbackReport) -> dict[str, Any]:
    """One call's figures: latency over streams, fps, frames dropped (newest wins)."""
    medians = [s.latency_median_ms for s in report.streams if s.latency_median_ms is not None]
    p95s = [s.latency_p95_ms for s in report.streams if s.latency_p95_ms is not None]
    return {
        "streams": len(report.streams),
        "streams_with_latency": len(medians),
        "latency_median_ms": round(statistics.median(medians), 1) if medians else None,
        "latency_p95_worst_ms": round(max(p95s), 1) if p95s else None,
        "fps_worst": round(min(s.fps for s in report.streams), 1),
        "fps_median": round(statistics.median(s.fps for s in report.streams), 1),
        "frames_dropped": sum(s.frames_dropped for s in report.streams),
        "decode_drops": sum(s.decode_drops for s in report.streams),
        "cpu_percent": round(max(report.cpu_percent.values()), 1) if report.cpu_percent else None,
    }


def _summary(rounds: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [r[key] for r in rounds if r[key] is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(values), 1), "min": min(values),
            "max": max(values)}


async def measure(rounds: int, seconds: float) -> dict[str, Any]:
    """Alternating rounds of the 2- and 3-person one-process calls."""
    runs: dict[str, list[dict[str, Any]]] = {"2": [], "3": []}
    for index in range(rounds):
        for users in (2, 3):
            report = await run_loopback(users=users, seconds=seconds, processes=False)
            figures = _round(report)
            runs[str(users)].append(figures)
            print(f"round {index + 1} users {users}: {json.dumps(figures)}", flush=True)
    keys = ("latency_median_ms", "latency_p95_worst_ms", "fps_worst", "fps_median",
            "frames_dropped", "cpu_percent")
    summary = {users: {key: _summary(items, key) for key in keys}
               for users, items in runs.items()}
    three = summary["3"]
    median = three["latency_median_ms"]["median"]
    p95 = three["latency_p95_worst_ms"]["median"]
    return {
        "rounds": rounds, "seconds": seconds, "resolution": "640x360", "fps": 30,
        "runs": runs, "summary": summary,
        "targets": {
            "median_ms": TARGET_MEDIAN_MS, "p95_ms": TARGET_P95_MS,
            "median_met": median is not None and median <= TARGET_MEDIAN_MS,
            "p95_met": p95 is not None and p95 <= TARGET_P95_MS,
        },
    }


def render_md(results: dict[str, Any]) -> str:
    """The markdown table of :func:`measure`'s results."""
    s, t = results["summary"], results["targets"]

    def cell(users: str, key: str) -> str:
        v = s[users][key]
        return "-" if v["median"] is None else f"{v['median']:g} ({v['min']:g}-{v['max']:g})"

    lines = [
        "# Self-overload: 3 engines in one process vs 2 (bench.overload)", "",
        header(results), "",
        f"640x360 @ 30 fps, {results['rounds']} alternating rounds of {results['seconds']:g} s "
        "windows, one process (`callclient loopback --one-process`); median (range) over rounds",
        "",
        "| users | g2g median ms | worst-stream p95 ms | worst fps | median fps | frames dropped "
        "| CPU % |",
        "|---|---|---|---|---|---|---|",
    ]
    for users in ("2", "3"):
        lines.append(f"| {users} | " + " | ".join(cell(users, k) for k in (
            "latency_median_ms", "latency_p95_worst_ms", "fps_worst", "fps_median",
            "frames_dropped", "cpu_percent")) + " |")
    lines += ["", f"Targets (3 users): median ≤ {t['median_ms']:g} ms "
              f"{'met' if t['median_met'] else 'MISSED'}, p95 ≤ {t['p95_ms']:g} ms "
              f"{'met' if t['p95_met'] else 'MISSED'}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print and write ``bench/results/overload.{json,md}``."""
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1 and --seconds > 0")
    calibration = calibrate()
    results = stamp(asyncio.run(measure(args.rounds, args.seconds)), calibration)
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "overload.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render_md(results)
    (out / "overload.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
