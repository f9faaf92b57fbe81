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
baseline for both group variants. Every run also reports the UDP datagrams the kernel dropped
because a participant's process read its sockets too slowly (``udp_drops``): on a machine
whose CPU the call exceeds, that is where the media is lost. Writes ``bench/results/sfu.json``,
``sfu.md`` and the 9-person call's whole report in ``sfu_nine_loopback.json``, stamped with
the commit, the machine and the calibration (:mod:`bench.machine`) measured before and after.
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

from bench.machine import calibrate, header, stamp
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
        "jitter_drops": sum(s.jitter_drops for s in report.streams),
        "decode_drops": sum(s.decode_drops for s in report.streams),
        "udp_drops": sum(report.udp_drops.values()),
    }


async def _run(users: int, sfu: bool, seconds: float, fps: float) -> dict[str, Any]:
    report = await run_loopback(users=users, seconds=seconds, fps=fps, processes=True,
                                sfu=sfu, connect_timeout=40.0)
    summary = _summary(report)
    print(f"  {users} users {'sfu ' if sfu else 'mesh'}: uplink {summary['uplink_kbps']:.0f} "
          f"kbit/s, cpu {summary['cpu_percent']:.0f} %, latency "
          f"{summary['latency_median_ms']} ms, worst {summary['worst_fps']:.1f} fps, "
          f"{summary['udp_drops']} UDP datagrams dropped", flush=True)
    return {"summary": summary, "report": report.to_dict()}


def _cpu_fit(runs: dict[str, list[dict[str, Any]]], sizes: tuple[int, ...]) -> dict[str, Any]:
    """CPU % per process = ``fixed + per_stream * received`` (least squares over the 1v1 and
    SFU runs that kept up: a run whose kernel dropped datagrams was starved, its CPU is what
    it got, not what it needed), and what that projects for 9 people receiving 8 streams."""
    points = [(users - 1, r["summary"]["cpu_percent"])
              for key, users in [("1v1", 2)] + [(f"{n}-sfu", n) for n in sizes]
              for r in runs[key] if r["summary"]["udp_drops"] == 0]
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    if len(set(xs)) < 2:
        return {"runs_used": len(points)}
    mx, my = statistics.mean(xs), statistics.mean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread
    fixed = my - slope * mx
    return {"runs_used": len(points), "fixed_percent": fixed,
            "per_received_stream_percent": slope,
            "nine_per_process_percent": fixed + 8 * slope,
            "nine_total_percent": 9 * (fixed + 8 * slope)}


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
    latency_sfu = mean(f"{sizes[0]}-sfu", "latency_median_ms")
    latency_p2p = mean(f"{sizes[0]}-mesh", "latency_median_ms")
    cpu_fit = _cpu_fit(runs, sizes)
    print("  9 users through Janus ...", flush=True)
    nine = await run_loopback(users=9, seconds=nine_seconds, fps=fps, processes=True, sfu=True,
                              connect_timeout=90.0)
    nine_summary = _summary(nine)
    return {
        "runs": runs,
        "ratios": ratios,
        "latency_sfu_minus_p2p_ms": latency_sfu - latency_p2p,
        "latency_median_ms": {"sfu": latency_sfu, "p2p": latency_p2p, "users": sizes[0]},
        "cpu_fit": cpu_fit,
        "nine": {"summary": nine_summary,
                 "fps_per_stream": {f"{s.receiver}<-{s.sender}": round(s.fps, 1)
                                    for s in nine.streams},
                 "report": nine.to_dict()},
    }


def _markdown(result: dict[str, Any]) -> str:
    load = result["load_average"]
    after = result["calibration_after"]
    lines = [f"# SFU benchmark ({result['when']})", "",
             f"{header(result)}; after the run {after['ms_per_frame']} ms/frame.", "",
             f"{result['settings']}; load average {load['before'][0]:.1f} before, "
             f"{load['after'][0]:.1f} after, on {load['cpus']} CPUs (a load far above the "
             "CPU count starves every process, and the figures with it)",
             "",
             "| variant | uplink ÷ 1v1 | CPU ÷ 1v1 | CPU % per process | worst fps "
             "| UDP dropped | target |", "|---|---|---|---|---|---|---|"]
    runs = result["runs"]

    def cell(key: str, field: str, digits: int = 0) -> str:
        values = [r["summary"][field] for r in runs[key] if r["summary"][field] is not None]
        return " / ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v)
                          for v in values)

    lines.append(f"| 1v1 (p2p) | 1 | 1 | {cell('1v1', 'cpu_percent')} | "
                 f"{cell('1v1', 'worst_fps', 1)} | {cell('1v1', 'udp_drops')} | baseline |")
    for key, ratio in result["ratios"].items():
        target = "uplink ≤ 1.15, CPU ≤ 1.5" if key.endswith("sfu") else "(mesh: ≈ N-1)"
        lines.append(f"| {key} | {ratio['uplink_vs_1v1']:.2f} | {ratio['cpu_vs_1v1']:.2f} | "
                     f"{cell(key, 'cpu_percent')} | {cell(key, 'worst_fps', 1)} | "
                     f"{cell(key, 'udp_drops')} | {target} |")
    nine = result["nine"]["summary"]
    medians = result["latency_median_ms"]
    fit = result["cpu_fit"]
    lines += ["", "CPU % per process, worst fps and UDP dropped: one figure per round.", ""]
    if "fixed_percent" in fit:
        lines += [f"CPU per process (least squares over the {fit['runs_used']} 1v1 and SFU "
                  "runs without kernel drops): "
                  f"{fit['fixed_percent']:.1f} % + {fit['per_received_stream_percent']:.1f} % "
                  f"per received stream; projected for 9 people: "
                  f"{fit['nine_per_process_percent']:.0f} % each, "
                  f"{fit['nine_total_percent']:.0f} % of one core in all (Janus not counted), "
                  f"against {100 * (load['cpus'] or 1)} % on this machine", ""]
    lines += [f"Latency through Janus - peer to peer, {medians['users']} people (median of "
              f"stream medians): {result['latency_sfu_minus_p2p_ms']:+.1f} ms "
              f"({medians['sfu']:.1f} vs {medians['p2p']:.1f} ms; target ≤ +10 ms)", "",
              f"9 people through Janus: {nine['delivered']}/{nine['streams']} streams "
              f"delivered, worst {nine['worst_fps']:.1f} fps, {nine['heard']}/{nine['streams']} "
              f"tones heard, {nine['dropped']} frames dropped, CPU per process "
              f"{nine['cpu_percent']:.0f} %, {nine['udp_drops']} UDP datagrams dropped by the "
              f"kernel (receive buffers full), {nine['jitter_drops']} incomplete frames given "
              f"up, {nine['decode_drops']} frames not decoded"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write ``bench/results/sfu.json`` and ``sfu.md``."""
    parser = argparse.ArgumentParser(prog="python -m bench.sfu", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round, shorter windows")
    parser.add_argument("--fps", type=float, default=10.0,
                        help="camera frame rate (default 10: what 9 processes on 2 cores "
                        "can encode and decode)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite sfu.md from sfu.json (derived figures recomputed)")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((RESULTS / "sfu.json").read_text())
        sizes = tuple(int(k.split("-")[0]) for k in result["runs"] if k.endswith("-sfu"))
        result["cpu_fit"] = _cpu_fit(result["runs"], sizes)
        (RESULTS / "sfu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (RESULTS / "sfu.md").write_text(_markdown(result))
        print(_markdown(result))
        return 0
    rounds, seconds, nine_seconds = (1, 4.0, 6.0) if args.quick else (2, 6.0, 10.0)
    sizes = (3, 4) if args.quick else (3, 4, 6)
    started = time.time()
    calibration = calibrate()  # before the run, while nothing of it loads the machine
    load_before = os.getloadavg()
    result = asyncio.run(_bench(rounds, seconds, nine_seconds, args.fps, sizes))
    result["load_average"] = {"before": load_before, "after": os.getloadavg(),
                              "cpus": os.cpu_count()}
    stamp(result, calibration)
    result["calibration_after"] = calibrate()  # the machine may have changed meanwhile
    result.update(
        commit=_commit(), when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        settings=f"640x360 @ {args.fps:g} fps, {rounds} alternating round(s) of "
        f"{seconds:g} s windows, one process per participant, sizes {sizes}",
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sfu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / "sfu.md").write_text(_markdown(result))
    (RESULTS / "sfu_nine_loopback.json").write_text(
        json.dumps(result["nine"]["report"], indent=2) + "\n")
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
