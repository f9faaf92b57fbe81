"""Group calls through the SFU (issue 13) against the mesh and a 1v1 call, in the same run.

Every measurement is ``callclient loopback`` (virtual devices, stamped frames, one process
per engine unless said otherwise), repeated in alternating windows so machine load hits every
variant alike:

* **uplink**: kbit/s of RTP each participant sends (every connection), in a 4- and a 6-person
  call through Janus and in mesh, divided by a 1v1 call's (target SFU <= 1.15x; mesh ~N-1x);
* **CPU**: each participant process's CPU (% of one core), 4 people through Janus and in mesh,
  divided by a 1v1 call's (target SFU <= 1.5);
* **latency**: glass-to-glass median through Janus minus peer to peer, 3 people (target
  <= +10 ms);
* **9 people**: a 9-person call through Janus, one process each: fps of every one of the 72
  streams (target: all delivered, worst >= 10 fps at 640x360) and whether each tone was heard.

The 1v1 call is always peer to peer (the server keeps 1v1 calls off the SFU), so it is the
baseline for both group variants. Writes ``bench/results/sfu.json`` and ``sfu.md``.
Run: ``python -m bench.sfu [--quick]``; ``make bench`` runs it too. Missed targets are reported,
not failures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from callclient.apps.loopback import LoopbackReport, run_loopback

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summary(report: LoopbackReport) -> dict[str, Any]:
    latencies = [s.latency_median_ms for s in report.streams if s.latency_median_ms is not None]
    return {
        "users": len(report.users),
        "sfu": report.sfu,
        "uplink_kbps": statistics.mean(report.uplink_kbps.values()),
        "cpu_percent": statistics.mean(report.cpu_percent.values()),
        "latency_median_ms": _median(latencies),
        "worst_fps": min(s.fps for s in report.streams),
        "streams": len(report.streams),
        "delivered": sum(1 for s in report.streams if s.frames > 0),
        "heard": sum(1 for s in report.streams if s.heard),
        "dropped": sum(s.frames_dropped for s in report.streams),
    }


async def _run(users: int, sfu: bool, seconds: float, fps: float) -> dict[str, Any]:
    report = await run_loopback(users=users, seconds=seconds, fps=fps, processes=True,
                                sfu=sfu, connect_timeout=40.0)
    summary = _summary(report)
    print(f"  {users} users {'sfu ' if sfu else 'mesh'}: uplink {summary['uplink_kbps']:.0f} "
          f"kbit/s, cpu {summary['cpu_percent']:.0f} %, latency "
          f"{summary['latency_median_ms']} ms, worst {summary['worst_fps']:.1f} fps", flush=True)
    return {"summary": summary, "report": report.to_dict()}


async def _bench(rounds: int, seconds: float, nine_seconds: float, fps: float,
                 sizes: tuple[int, ...]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    variants = [("1v1", 2, False)] + [
        (f"{n}-{kind}", n, kind == "sfu") for n in sizes for kind in ("sfu", "mesh")]
    for _ in range(rounds):  # alternating windows: every variant once per round
        for key, users, sfu in variants:
            runs.setdefault(key, []).append(await _run(users, sfu, seconds, fps))

    def mean(key: str, field: str) -> float:
        values = [r["summary"][field] for r in runs[key] if r["summary"][field] is not None]
        return statistics.mean(values) if values else float("nan")

    base_up, base_cpu = mean("1v1", "uplink_kbps"), mean("1v1", "cpu_percent")
    ratios = {
        key: {"uplink_vs_1v1": mean(key, "uplink_kbps") / base_up,
              "cpu_vs_1v1": mean(key, "cpu_percent") / base_cpu}
        for key in runs if key != "1v1"
    }
    latency_delta = (mean(f"{sizes[0]}-sfu", "latency_median_ms")
                     - mean(f"{sizes[0]}-mesh", "latency_median_ms"))
    print("  9 users through Janus ...", flush=True)
    nine = await run_loopback(users=9, seconds=nine_seconds, fps=fps, processes=True, sfu=True,
                              connect_timeout=90.0)
    nine_summary = _summary(nine)
    return {
        "runs": runs,
        "ratios": ratios,
        "latency_sfu_minus_p2p_ms": latency_delta,
        "nine": {"summary": nine_summary,
                 "fps_per_stream": {f"{s.receiver}<-{s.sender}": round(s.fps, 1)
                                    for s in nine.streams},
                 "report": nine.to_dict()},
    }


def _markdown(result: dict[str, Any]) -> str:
    load = result["load_average"]
    lines = [f"# SFU benchmark (commit {result['commit']}, {result['when']})", "",
             f"{result['settings']}; load average {load['before'][0]:.1f} before, "
             f"{load['after'][0]:.1f} after, on {load['cpus']} CPUs (the calibration: a "
             "load far above the CPU count starves every process, and the figures with it)",
             "",
             "| variant | uplink ÷ 1v1 | CPU ÷ 1v1 | target |", "|---|---|---|---|"]
    for key, ratio in result["ratios"].items():
        target = "uplink ≤ 1.15, CPU ≤ 1.5" if key.endswith("sfu") else "(mesh: ≈ N-1)"
        lines.append(f"| {key} | {ratio['uplink_vs_1v1']:.2f} | {ratio['cpu_vs_1v1']:.2f} | "
                     f"{target} |")
    nine = result["nine"]["summary"]
    lines += ["", f"Latency through Janus - peer to peer (median of stream medians): "
              f"{result['latency_sfu_minus_p2p_ms']:+.1f} ms (target ≤ +10 ms)", "",
              f"9 people through Janus: {nine['delivered']}/{nine['streams']} streams "
              f"delivered, worst {nine['worst_fps']:.1f} fps, {nine['heard']}/{nine['streams']} "
              f"tones heard, {nine['dropped']} frames dropped, CPU per process "
              f"{nine['cpu_percent']:.0f} %"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write ``bench/results/sfu.json`` and ``sfu.md``."""
    parser = argparse.ArgumentParser(prog="python -m bench.sfu", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round, shorter windows")
    parser.add_argument("--fps", type=float, default=10.0,
                        help="camera frame rate (default 10: what 9 processes on 2 cores "
                        "can encode and decode)")
    args = parser.parse_args(argv)
    rounds, seconds, nine_seconds = (1, 4.0, 6.0) if args.quick else (2, 6.0, 10.0)
    sizes = (3, 4) if args.quick else (3, 4, 6)
    started = time.time()
    load_before = os.getloadavg()
    result = asyncio.run(_bench(rounds, seconds, nine_seconds, args.fps, sizes))
    result["load_average"] = {"before": load_before, "after": os.getloadavg(),
                              "cpus": os.cpu_count()}
    result.update(
        commit=_commit(), when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        settings=f"640x360 @ {args.fps:g} fps, {rounds} alternating round(s) of "
        f"{seconds:g} s windows, one process per participant, sizes {sizes}",
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sfu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / "sfu.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
